//! Route matching: host, then path, then method, headers and query.
//!
//! Runs per request. Precedence (documented in `docs/routing.md`):
//! 1. host: exact name, then wildcards (`*.example.com`, longest suffix first), then routes
//!    with no host; a more specific host table that has no matching route falls through;
//! 2. path within a host table: exact, then template (`/users/{id}`), then prefix (longest
//!    first), then regular expression (configuration order);
//! 3. among routes with the same path: higher `priority`, then more conditions
//!    (methods, headers, query), then configuration order. The first whose conditions hold wins.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use regex::Regex;

use crate::route::CompiledRoute;

/// The outcome of a successful match.
#[derive(Debug)]
pub struct RouteMatch<'r> {
    /// The route.
    pub route: &'r Arc<CompiledRoute>,
    /// Values captured by `{name}` template segments.
    pub params: Vec<(Arc<str>, String)>,
}

/// The request facts routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// Host without port, as sent (any case).
    pub host: Option<&'a str>,
    /// Path, without query.
    pub path: &'a str,
    /// Query string, if any.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// An error building the router (a template clash).
#[derive(Debug, thiserror::Error)]
#[error("path `{path}` of route `{route}` clashes with another route's template: {reason}")]
pub struct RouterError {
    /// Route whose path could not be added.
    pub route: Arc<str>,
    /// The path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// All routes, indexed for matching.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<Box<str>, HostTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard_hosts: Vec<(Box<str>, HostTable)>,
    any_host: HostTable,
}

#[derive(Debug, Default)]
struct HostTable {
    exact: HashMap<Box<str>, Candidates>,
    templates: matchit::Router<usize>,
    template_candidates: Vec<(Box<str>, Candidates)>,
    /// Longest prefix first.
    prefixes: Vec<(Box<str>, Candidates)>,
    regexes: Vec<(Regex, Arc<CompiledRoute>)>,
}

type Candidates = Vec<Arc<CompiledRoute>>;

/// Path pattern kinds, parsed from route paths.
enum PathPattern<'p> {
    Exact(&'p str),
    Prefix(&'p str),
    Template(&'p str),
    Regex(&'p str),
}

fn classify(path: &str) -> PathPattern<'_> {
    if let Some(pattern) = path.strip_prefix('~') {
        PathPattern::Regex(pattern)
    } else if let Some(prefix) = path.strip_suffix('*') {
        PathPattern::Prefix(prefix)
    } else if path.contains('{') {
        PathPattern::Template(path)
    } else {
        PathPattern::Exact(path)
    }
}

/// Collects routes, then builds a [`Router`].
#[derive(Default)]
pub struct RouterBuilder {
    entries: Vec<(Arc<CompiledRoute>, Vec<String>, Vec<String>)>,
}

impl RouterBuilder {
    /// Adds `route` for `hosts` (empty: any) and `paths`.
    pub fn add(&mut self, route: Arc<CompiledRoute>, hosts: &[String], paths: &[String]) {
        self.entries.push((route, hosts.iter().map(|host| host.to_ascii_lowercase()).collect(), paths.to_vec()));
    }

    /// Indexes every route. Fails on template clashes or invalid regexes, naming the route.
    pub fn build(self) -> Result<Router, RouterError> {
        let mut router = Router::default();
        let mut wildcard: HashMap<Box<str>, HostTable> = HashMap::new();
        let mut grouped: Vec<(Option<String>, Arc<CompiledRoute>, &str)> = Vec::new();
        for (route, hosts, paths) in &self.entries {
            for path in paths {
                if hosts.is_empty() {
                    grouped.push((None, route.clone(), path));
                }
                for host in hosts {
                    grouped.push((Some(host.clone()), route.clone(), path));
                }
            }
        }
        for (host, route, path) in grouped {
            let table = match host {
                None => &mut router.any_host,
                Some(host) => match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.into()).or_default(),
                    None => router.exact_hosts.entry(host.into()).or_default(),
                },
            };
            table.add(route, path)?;
        }
        router.wildcard_hosts = wildcard.into_iter().collect();
        router.wildcard_hosts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        for table in router.tables_mut() {
            table.finish()?;
        }
        Ok(router)
    }
}

impl Router {
    /// The route for a request, or `None` (404).
    pub fn find<'r>(&'r self, request: &RequestFacts<'_>) -> Option<RouteMatch<'r>> {
        if let Some(host) = request.host {
            let lowered;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = host.to_ascii_lowercase();
                lowered.as_str()
            } else {
                host
            };
            if let Some(found) = self.exact_hosts.get(host).and_then(|table| table.find(request)) {
                return Some(found);
            }
            for (suffix, table) in &self.wildcard_hosts {
                // `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(found) = table.find(request) {
                        return Some(found);
                    }
                }
            }
        }
        self.any_host.find(request)
    }

    /// Number of host tables, for diagnostics.
    pub fn host_count(&self) -> usize {
        self.exact_hosts.len() + self.wildcard_hosts.len() + 1
    }

    fn tables_mut(&mut self) -> impl Iterator<Item = &mut HostTable> {
        self.exact_hosts
            .values_mut()
            .chain(self.wildcard_hosts.iter_mut().map(|(_, table)| table))
            .chain(std::iter::once(&mut self.any_host))
    }
}

impl HostTable {
    fn add(&mut self, route: Arc<CompiledRoute>, path: &str) -> Result<(), RouterError> {
        match classify(path) {
            PathPattern::Exact(exact) => self.exact.entry(exact.into()).or_default().push(route),
            PathPattern::Prefix(prefix) => match self.prefixes.iter_mut().find(|(p, _)| &**p == prefix) {
                Some((_, candidates)) => candidates.push(route),
                None => self.prefixes.push((prefix.into(), vec![route])),
            },
            PathPattern::Template(template) => {
                match self.template_candidates.iter_mut().find(|(t, _)| &**t == template) {
                    Some((_, candidates)) => candidates.push(route),
                    None => {
                        let index = self.template_candidates.len();
                        self.templates.insert(template, index).map_err(|err| RouterError {
                            route: route.id.clone(),
                            path: template.to_owned(),
                            reason: err.to_string(),
                        })?;
                        self.template_candidates.push((template.into(), vec![route]));
                    }
                }
            }
            PathPattern::Regex(pattern) => {
                let regex = Regex::new(pattern).map_err(|err| RouterError {
                    route: route.id.clone(),
                    path: path.to_owned(),
                    reason: err.to_string(),
                })?;
                self.regexes.push((regex, route));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), RouterError> {
        let order = |a: &Arc<CompiledRoute>, b: &Arc<CompiledRoute>| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| b.conditions.specificity().cmp(&a.conditions.specificity()))
                .then_with(|| a.order.cmp(&b.order))
        };
        for candidates in self.exact.values_mut() {
            candidates.sort_by(order);
        }
        for (_, candidates) in &mut self.template_candidates {
            candidates.sort_by(order);
        }
        for (_, candidates) in &mut self.prefixes {
            candidates.sort_by(order);
        }
        self.prefixes.sort_by_key(|prefix| std::cmp::Reverse(prefix.0.len()));
        self.regexes.sort_by(|a, b| order(&a.1, &b.1));
        Ok(())
    }

    fn find<'r>(&'r self, request: &RequestFacts<'_>) -> Option<RouteMatch<'r>> {
        let holds =
            |route: &&Arc<CompiledRoute>| route.conditions.matches(request.method, request.headers, request.query);
        if let Some(route) = self.exact.get(request.path).and_then(|candidates| candidates.iter().find(holds)) {
            return Some(RouteMatch { route, params: Vec::new() });
        }
        if let Ok(found) = self.templates.at(request.path) {
            if let Some((_, candidates)) = self.template_candidates.get(*found.value) {
                if let Some(route) = candidates.iter().find(holds) {
                    let params = found.params.iter().map(|(key, value)| (Arc::from(key), value.to_owned())).collect();
                    return Some(RouteMatch { route, params });
                }
            }
        }
        for (prefix, candidates) in &self.prefixes {
            if request.path.starts_with(&**prefix) || is_prefix_root(request.path, prefix) {
                if let Some(route) = candidates.iter().find(holds) {
                    return Some(RouteMatch { route, params: Vec::new() });
                }
            }
        }
        self.regexes
            .iter()
            .find(|(regex, route)| regex.is_match(request.path) && holds(&route))
            .map(|(_, route)| RouteMatch { route, params: Vec::new() })
    }
}

/// `/api/*` also matches `/api` itself, as users expect.
fn is_prefix_root(path: &str, prefix: &str) -> bool {
    prefix.len() > 1 && prefix.ends_with('/') && path == &prefix[..prefix.len() - 1]
}

#[cfg(test)]
mod tests;

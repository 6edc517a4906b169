//! The runtime form of a route: compiled match conditions, path rewrite, upstream, pipeline.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::metrics::traffic::RouteMetrics;
use crate::pipeline::Pipeline;
use crate::upstream::CompiledUpstream;

/// A route ready to serve: everything parsed and resolved at compile time.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route id.
    pub id: Arc<str>,
    /// The service the route belongs to, if any.
    pub service: Option<Arc<str>>,
    /// Conditions beyond host and path.
    pub conditions: Conditions,
    /// Higher wins among routes matching the same path.
    pub priority: i32,
    /// Position in the configuration, the last tie-breaker.
    pub order: usize,
    /// Where requests go; `None` when a terminal policy always answers.
    pub upstream: Option<Arc<CompiledUpstream>>,
    /// Upstream path rewrite.
    pub rewrite: Option<PathRewrite>,
    /// The route's policies, resolved from global, service, policy sets and route.
    pub pipeline: Pipeline,
    /// Its request metrics, bound at compile time; `None` when requests are not counted.
    pub metrics: Option<RouteMetrics>,
}

/// Method, header and query conditions; all must hold.
#[derive(Debug, Default)]
pub struct Conditions {
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// Header conditions.
    pub headers: Vec<ValueCondition<HeaderName>>,
    /// Query parameter conditions.
    pub query: Vec<ValueCondition<String>>,
}

/// A condition on one named value.
#[derive(Debug)]
pub struct ValueCondition<N> {
    /// Header or parameter name.
    pub name: N,
    /// What the value must satisfy.
    pub rule: ValueRule,
    /// Negates the rule.
    pub invert: bool,
}

/// How a value is tested.
#[derive(Debug)]
pub enum ValueRule {
    /// Equal to this.
    Exact(String),
    /// Matches this expression.
    Regex(Regex),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

impl ValueRule {
    fn holds(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (ValueRule::Present(expected), value) => value.is_some() == *expected,
            (ValueRule::Exact(expected), Some(value)) => value == expected.as_bytes(),
            (ValueRule::Regex(regex), Some(value)) => std::str::from_utf8(value).is_ok_and(|text| regex.is_match(text)),
            (_, None) => false,
        }
    }
}

impl Conditions {
    /// Conditions beyond method: how specific they are, for ordering candidates.
    pub fn specificity(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// True when the request satisfies every condition.
    pub fn matches(&self, method: &Method, headers: &HeaderMap, query: Option<&str>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        let headers_hold = self.headers.iter().all(|condition| {
            let value = headers.get(&condition.name).map(|value| value.as_bytes());
            condition.rule.holds(value) != condition.invert
        });
        headers_hold
            && self.query.iter().all(|condition| {
                let value = query.and_then(|query| query_value(query, &condition.name));
                condition.rule.holds(value.as_deref().map(str::as_bytes)) != condition.invert
            })
    }
}

/// The (percent-decoded) value of the first query parameter named `name`.
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        index += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Derives the upstream path from the request path.
#[derive(Debug, Default)]
pub struct PathRewrite {
    /// Regex and replacement, applied first.
    pub regex: Option<(Regex, String)>,
    /// Removed from the start when present.
    pub strip_prefix: Option<String>,
    /// Put in front.
    pub add_prefix: Option<String>,
}

impl PathRewrite {
    /// The rewritten path (query untouched by the caller).
    pub fn apply<'p>(&self, path: &'p str) -> Cow<'p, str> {
        let mut current = Cow::Borrowed(path);
        if let Some((regex, replacement)) = &self.regex {
            if let Cow::Owned(rewritten) = regex.replace(&current, replacement.as_str()) {
                current = Cow::Owned(rewritten);
            }
        }
        if let Some(prefix) = &self.strip_prefix {
            if let Some(rest) = current.strip_prefix(prefix.as_str()) {
                let rest = if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") };
                current = Cow::Owned(rest);
            }
        }
        if let Some(prefix) = &self.add_prefix {
            let joined = match (prefix.ends_with('/'), current.starts_with('/')) {
                (true, true) => format!("{}{}", prefix, &current[1..]),
                (false, false) => format!("{prefix}/{current}"),
                _ => format!("{prefix}{current}"),
            };
            current = Cow::Owned(joined);
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_then_adds_prefixes() {
        let rewrite = PathRewrite { regex: None, strip_prefix: Some("/demo".into()), add_prefix: Some("/v2".into()) };
        assert_eq!(rewrite.apply("/demo/hello"), "/v2/hello");
        assert_eq!(rewrite.apply("/demo"), "/v2/");
        assert_eq!(rewrite.apply("/other"), "/v2/other");
    }

    #[test]
    fn rewrites_with_a_regex_and_captures() {
        let rewrite = PathRewrite {
            regex: Some((Regex::new("^/users/([0-9]+)$").expect("regex"), "/accounts/$1".into())),
            ..PathRewrite::default()
        };
        assert_eq!(rewrite.apply("/users/42"), "/accounts/42");
        assert_eq!(rewrite.apply("/users/x"), "/users/x");
    }

    #[test]
    fn matches_decoded_query_values() {
        let conditions = Conditions {
            query: vec![ValueCondition { name: "q".into(), rule: ValueRule::Exact("a b".into()), invert: false }],
            ..Conditions::default()
        };
        let headers = HeaderMap::new();
        assert!(conditions.matches(&Method::GET, &headers, Some("x=1&q=a%20b")));
        assert!(!conditions.matches(&Method::GET, &headers, Some("q=ab")));
        assert!(!conditions.matches(&Method::GET, &headers, None));
    }
}

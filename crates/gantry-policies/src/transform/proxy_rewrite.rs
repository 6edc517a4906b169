#![doc = include_str!("proxy_rewrite.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `proxy_rewrite`. Give at least one of `uri`, `regex_uri`, `method`, `host` and
/// `keep_query: false`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The path (and optionally query) sent upstream instead of the request's, such as
    /// `/v2/orders` or `/search?source=gateway`. Not together with `regex_uri`.
    #[serde(default)]
    pub uri: Option<String>,
    /// A regular expression matched against the request's path and the replacement for its
    /// first match: `$1`, `${1}`, `$name` or `${name}` insert captures, `$$` a dollar sign. A
    /// path the expression does not match goes upstream unchanged.
    #[serde(default)]
    pub regex_uri: Option<[String; 2]>,
    /// Whether the request's query string goes upstream too. When the new URI has a query of
    /// its own, the request's is appended after it.
    #[serde(default = "default_keep_query")]
    pub keep_query: bool,
    /// The upstream request's method, such as `POST`.
    #[serde(default)]
    pub method: Option<String>,
    /// The upstream request's `Host` header (`host` or `host:port`).
    #[serde(default)]
    pub host: Option<String>,
}

fn default_keep_query() -> bool {
    true
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let changes_nothing = self.uri.is_none() && self.regex_uri.is_none() && self.keep_query;
        if changes_nothing && self.method.is_none() && self.host.is_none() {
            errors.push(
                path.clone(),
                "give at least one of `uri`, `regex_uri`, `method`, `host` and `keep_query: false`",
            );
        }
        if self.uri.is_some() && self.regex_uri.is_some() {
            errors.push(path.key("regex_uri"), "give `uri` or `regex_uri`, not both");
        }
    }
}

/// Factory of the `proxy_rewrite` policy.
#[derive(Debug)]
pub struct ProxyRewrite;

impl PolicyFactory for ProxyRewrite {
    const NAME: &'static str = "proxy_rewrite";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("proxy_rewrite.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let target = match (&config.uri, &config.regex_uri) {
            (Some(uri), _) => parse_fixed_uri(uri, &path.key("uri"), &mut errors).map(Target::Fixed),
            (None, Some([pattern, replacement])) => {
                compile_regex_uri(pattern, replacement, &path.key("regex_uri"), &mut errors)
            }
            (None, None) => None,
        };
        let method = config.method.as_deref().and_then(|method| {
            let parsed = Method::from_bytes(method.as_bytes()).ok().filter(|_| !method.is_empty());
            if parsed.is_none() {
                errors.push(path.key("method"), format!("`{method}` is not an HTTP method"));
            }
            parsed
        });
        let host = config.host.as_deref().and_then(|host| {
            let parsed = host
                .parse::<Authority>()
                .ok()
                .filter(|authority| authority.as_str() == host && !host.contains('@'))
                .and_then(|_| HeaderValue::from_str(host).ok());
            if parsed.is_none() {
                errors.push(path.key("host"), format!("`{host}` is not a host name or `host:port`"));
            }
            parsed
        });
        errors
            .into_result(Arc::new(CompiledProxyRewrite { target, keep_query: config.keep_query, method, host })
                as Arc<dyn Policy>)
    }
}

/// The path and query a fixed `uri` names, checked to be a valid origin-form target.
fn parse_fixed_uri(uri: &str, path: &FieldPath, errors: &mut ConfigErrors) -> Option<PathAndQuery> {
    let parsed = uri.starts_with('/').then(|| PathAndQuery::try_from(uri).ok()).flatten();
    if parsed.is_none() {
        errors.push(path.clone(), format!("`{uri}` is not a path starting with `/` (with an optional query)"));
    }
    parsed
}

fn compile_regex_uri(pattern: &str, replacement: &str, path: &FieldPath, errors: &mut ConfigErrors) -> Option<Target> {
    let regex = match Regex::new(pattern) {
        Ok(regex) => regex,
        Err(err) => {
            errors.push(path.index(0), format!("invalid regular expression: {err}"));
            return None;
        }
    };
    for reference in capture_references(replacement) {
        let known = match reference.parse::<usize>() {
            Ok(index) => index < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|name| name == reference),
        };
        if !known {
            errors.push(path.index(1), format!("`${reference}` names no capture group of the expression"));
        }
    }
    if !replacement.starts_with('/') && !replacement.starts_with('$') {
        errors.push(path.index(1), "the replacement must start with `/` or a capture");
        return None;
    }
    Some(Target::Regex { regex, replacement: replacement.to_owned() })
}

/// The capture groups a replacement refers to, read as the `regex` crate reads them: `$$` is a
/// dollar sign, `${name}` a name up to `}`, `$name` the longest run of letters, digits and `_`.
fn capture_references(replacement: &str) -> Vec<&str> {
    let mut references = Vec::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                references.push(&braced[..end]);
                rest = &braced[end + 1..];
            }
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if end > 0 {
                references.push(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    references
}

/// Where the upstream path comes from.
#[derive(Debug)]
enum Target {
    Fixed(PathAndQuery),
    Regex { regex: Regex, replacement: String },
}

/// Runs per request: everything is parsed at build time; a request costs one regex match at
/// most and one path allocation when the path changes.
struct CompiledProxyRewrite {
    target: Option<Target>,
    keep_query: bool,
    method: Option<Method>,
    host: Option<HeaderValue>,
}

impl CompiledProxyRewrite {
    /// The upstream path and query, or `None` to leave the request's to the data plane (and
    /// the route's `rewrite`). `Err` is a path a capture made invalid.
    fn upstream_path(&self, request: &RequestParts) -> Result<Option<PathAndQuery>, String> {
        let client_query = request.uri.query().filter(|_| self.keep_query);
        let (path, own_query) = match &self.target {
            None if self.keep_query => return Ok(None),
            None => (request.uri.path().to_owned(), None),
            Some(Target::Fixed(fixed)) if client_query.is_none() => return Ok(Some(fixed.clone())),
            Some(Target::Fixed(fixed)) => (fixed.path().to_owned(), fixed.query()),
            Some(Target::Regex { regex, replacement }) => {
                let path = request.uri.path();
                if !regex.is_match(path) {
                    return if self.keep_query { Ok(None) } else { Ok(Some(path_only(path)?)) };
                }
                let rewritten = regex.replace(path, replacement.as_str()).into_owned();
                let rewritten = if rewritten.starts_with('/') { rewritten } else { format!("/{rewritten}") };
                (rewritten, None)
            }
        };
        let text = match (own_query, client_query) {
            (Some(own), Some(client)) => format!("{path}?{own}&{client}"),
            (Some(query), None) | (None, Some(query)) => format!("{path}?{query}"),
            (None, None) => path,
        };
        PathAndQuery::try_from(text).map(Some).map_err(|err| format!("the rewritten path is invalid: {err}"))
    }
}

fn path_only(path: &str) -> Result<PathAndQuery, String> {
    PathAndQuery::try_from(path).map_err(|err| format!("the path is invalid: {err}"))
}

impl Policy for CompiledProxyRewrite {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        match self.upstream_path(request) {
            Ok(Some(path)) => exchange.upstream_path = Some(path),
            Ok(None) => {}
            Err(detail) => {
                let problem = gantry_policy_api::problem::problem_response(
                    http::StatusCode::BAD_REQUEST,
                    "bad-request",
                    "Bad Request",
                    Some(&detail),
                );
                return Hook::Done(Flow::Respond(problem));
            }
        }
        if let Some(method) = &self.method {
            request.method = method.clone();
        }
        if let Some(host) = &self.host {
            request.headers.insert(HOST, host.clone());
        }
        Hook::Done(Flow::Continue)
    }
}

#[cfg(test)]
mod tests;

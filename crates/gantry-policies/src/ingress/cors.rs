#![doc = include_str!("cors.md")]

use std::collections::HashSet;
use std::sync::Arc;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

/// The Private Network Access request header of a preflight.
static REQUEST_PRIVATE_NETWORK: HeaderName = HeaderName::from_static("access-control-request-private-network");
/// The Private Network Access answer of a preflight.
static ALLOW_PRIVATE_NETWORK: HeaderName = HeaderName::from_static("access-control-allow-private-network");

/// Settings of `cors`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Origins whose pages may read responses: exact origins (`https://app.example.com`),
    /// patterns with `*` as the leftmost host labels or as the port (`https://*.example.com`,
    /// `http://localhost:*`), or `*` alone for any origin.
    pub allow_origins: Vec<String>,
    /// Methods a page may use beyond GET, HEAD and POST (which the Fetch standard always
    /// allows), or `*` alone for any method.
    #[serde(default = "default_allow_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a page may send beyond the CORS-safelisted ones, or `*` alone for any
    /// header (the preflight's list is then echoed, so `Authorization` is covered too).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers a page may read beyond the CORS-safelisted ones, or `*` alone for
    /// any (not with `allow_credentials`, as the Fetch standard then reads `*` as a name).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether pages may send cookies and HTTP authentication and read the responses
    /// (`Access-Control-Allow-Credentials: true`). Not with `*` in `allow_origins`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer (`Access-Control-Max-Age`, whole
    /// seconds); browsers cap it (2 hours in Chromium). None: the browser's default (5 s).
    #[serde(default)]
    pub max_age: Option<Duration>,
    /// Whether public pages may call this route on a private network address: answers
    /// `Access-Control-Allow-Private-Network: true` to preflights that ask for it.
    #[serde(default)]
    pub allow_private_network: bool,
}

fn default_allow_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(str::to_owned).to_vec()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.allow_origins.is_empty() {
            errors.push(path.key("allow_origins"), "give at least one origin, or `*` for any");
        }
        for (field, list) in [
            ("allow_origins", &self.allow_origins),
            ("allow_methods", &self.allow_methods),
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            if list.len() > 1 {
                if let Some(at) = list.iter().position(|entry| entry.trim() == "*") {
                    errors.push(path.key(field).index(at), "`*` stands for every value: give it alone");
                }
            }
        }
        if self.allow_credentials {
            // Fetch refuses `Access-Control-Allow-Origin: *` with credentials, and reflecting
            // every origin instead would let any website read this route's answers with its
            // visitors' cookies: the very leak the rule exists to prevent.
            if let Some(at) = self.allow_origins.iter().position(|entry| entry.trim() == "*") {
                errors.push(
                    path.key("allow_origins").index(at),
                    "`*` cannot be used with `allow_credentials`: list the origins (patterns such as `https://*.example.com` work)",
                );
            }
            if let Some(at) = self.expose_headers.iter().position(|entry| entry.trim() == "*") {
                errors.push(
                    path.key("expose_headers").index(at),
                    "with `allow_credentials`, browsers read `*` as a header name: list the headers",
                );
            }
        }
    }
}

/// Factory of the `cors` policy.
#[derive(Debug)]
pub struct Cors;

impl PolicyFactory for Cors {
    const NAME: &'static str = "cors";
    // Before identity: a preflight carries no credentials (Fetch never sends them with one),
    // so it must be answered before any identity policy refuses it; and the response hook of
    // an early policy sees every later policy's answer (a 401), which a page must be able to read.
    const STAGE: Stage = Stage::Ingress;
    const DOCS: &'static str = include_str!("cors.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let origins = OriginSet::parse(&config.allow_origins, &path.key("allow_origins"), &mut errors);
        let methods = parse_methods(&config.allow_methods, &path.key("allow_methods"), &mut errors);
        let headers = NameList::parse(&config.allow_headers, &path.key("allow_headers"), &mut errors);
        let exposed = NameList::parse(&config.expose_headers, &path.key("expose_headers"), &mut errors);
        errors.into_result(())?;
        let allow_methods = match &methods {
            Methods::Any => None,
            Methods::Listed(list) => joined(list.iter().map(Method::as_str)),
        };
        let max_age = config.max_age.map(|age| HeaderValue::from(age.get().as_secs()));
        Ok(Arc::new(CompiledCors {
            answers_any_origin: origins.any && !config.allow_credentials,
            origins,
            methods,
            allow_methods,
            allow_headers: match &headers {
                NameList::Any => None,
                NameList::Listed(names) => joined(names.iter().map(String::as_str)),
            },
            headers,
            expose_headers: match &exposed {
                NameList::Any => Some(HeaderValue::from_static("*")),
                NameList::Listed(names) => joined(names.iter().map(String::as_str)),
            },
            allow_credentials: config.allow_credentials,
            max_age,
            allow_private_network: config.allow_private_network,
        }))
    }
}

/// Origins allowed, parsed once: a hash set of exact origins and a short list of patterns.
#[derive(Debug, Default)]
struct OriginSet {
    any: bool,
    /// Serialized as browsers send them: lower case, no default port.
    exact: HashSet<String>,
    patterns: Vec<OriginPattern>,
}

/// `scheme://*.suffix[:port]` or `scheme://host:*`.
#[derive(Debug, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: HostRule,
    port: PortRule,
}

#[derive(Debug, PartialEq, Eq)]
enum HostRule {
    Exact(String),
    /// Any host of one or more labels followed by this suffix, which starts with a dot.
    Below(String),
}

#[derive(Debug, PartialEq, Eq)]
enum PortRule {
    /// The scheme's default port, which browsers leave out of the origin.
    Default,
    Exact(u16),
    Any,
}

impl OriginSet {
    fn parse(entries: &[String], path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut set = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.trim();
            if entry == "*" {
                set.any = true;
                continue;
            }
            match parse_origin_entry(entry) {
                Ok(
                    pattern @ OriginPattern {
                        host: HostRule::Exact(_),
                        port: PortRule::Default | PortRule::Exact(_),
                        ..
                    },
                ) => {
                    set.exact.insert(pattern.serialized());
                }
                Ok(pattern) => set.patterns.push(pattern),
                Err(reason) => errors.push(path.index(index), reason),
            }
        }
        set
    }

    /// Whether `origin`, as a browser sent it, is allowed. No allocation unless the origin
    /// has upper-case letters, which browsers never send.
    fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any {
            return true;
        }
        let Ok(origin) = origin.to_str() else { return false };
        let lowered;
        let origin = if origin.bytes().any(|byte| byte.is_ascii_uppercase()) {
            lowered = origin.to_ascii_lowercase();
            lowered.as_str()
        } else {
            origin
        };
        if self.exact.contains(origin) {
            return true;
        }
        if self.patterns.is_empty() {
            return false;
        }
        let Some((scheme, host, port)) = split_origin(origin) else { return false };
        self.patterns.iter().any(|pattern| pattern.matches(scheme, host, port))
    }
}

impl OriginPattern {
    fn matches(&self, scheme: &str, host: &str, port: Option<&str>) -> bool {
        let host_matches = match &self.host {
            HostRule::Exact(exact) => host == exact,
            HostRule::Below(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        };
        let port_matches = match self.port {
            PortRule::Any => true,
            PortRule::Default => port.is_none(),
            PortRule::Exact(expected) => port.and_then(|port| port.parse::<u16>().ok()) == Some(expected),
        };
        scheme == self.scheme && host_matches && port_matches
    }

    /// The origin as a browser serializes it; only for exact entries.
    fn serialized(&self) -> String {
        let host = match &self.host {
            HostRule::Exact(host) | HostRule::Below(host) => host,
        };
        match self.port {
            PortRule::Exact(port) => format!("{}://{host}:{port}", self.scheme),
            PortRule::Default | PortRule::Any => format!("{}://{host}", self.scheme),
        }
    }
}

/// Parses `scheme://host[:port]`, where the host may start with `*.` and the port may be `*`.
fn parse_origin_entry(entry: &str) -> Result<OriginPattern, String> {
    if entry.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is the origin of sandboxed pages and local files, which any site can make: it cannot be allowed"
                .to_owned(),
        );
    }
    let lowered = entry.to_ascii_lowercase();
    let Some((scheme, rest)) = lowered.split_once("://") else {
        return Err(format!(
            "`{entry}` is not an origin: write `scheme://host[:port]`, such as `https://app.example.com`"
        ));
    };
    let scheme_is_valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'));
    if !scheme_is_valid {
        return Err(format!("`{entry}` has no valid scheme"));
    }
    if let Some(at) = rest.find(['/', '?', '#']) {
        return Err(format!("an origin has no path: write `{}://{}`", scheme, &rest[..at]));
    }
    if rest.contains('@') {
        return Err(format!("an origin has no user name: `{entry}`"));
    }
    let (host, port) = split_host_port(rest).ok_or_else(|| format!("`{entry}` has no valid host and port"))?;
    let port = match port {
        None => PortRule::Default,
        Some("*") => PortRule::Any,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if Some(port) == default_port(scheme) => PortRule::Default,
            Ok(port) => PortRule::Exact(port),
            Err(_) => return Err(format!("`{port}` is not a port: use 0 to 65535, or `*` for any")),
        },
    };
    let host = match host.strip_prefix("*.") {
        Some(suffix) => {
            if !is_host(suffix) || suffix.starts_with('[') {
                return Err(format!(
                    "`{entry}`: `*` stands for the leftmost labels of a domain name, as in `https://*.example.com`"
                ));
            }
            HostRule::Below(format!(".{suffix}"))
        }
        // Browsers serialize IPv6 hosts compressed (`[::1]`), so the entry is too.
        None if host.starts_with('[') && is_host(host) => {
            let inner = host.trim_start_matches('[').trim_end_matches(']');
            let address: std::net::Ipv6Addr = inner.parse().map_err(|_| format!("`{entry}` has no valid host"))?;
            HostRule::Exact(format!("[{address}]"))
        }
        None if is_host(host) => HostRule::Exact(host.to_owned()),
        None => {
            return Err(format!("`{entry}`: `*` may only stand for the leftmost labels of the host (`https://*.example.com`) or for the port"));
        }
    };
    Ok(OriginPattern { scheme: scheme.to_owned(), host, port })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A lower-case domain name, IPv4 address or bracketed IPv6 address.
fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        })
}

/// `host` and the text after its port colon, if any; IPv6 hosts keep their brackets.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => rest.strip_prefix(':').map(|port| (host, Some(port))),
        };
    }
    Some(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// A request's `Origin` as scheme, host and port; `None` for anything a browser would not
/// send (a path, a user name, characters outside a host name), so that no such text can
/// reach a pattern's suffix check.
fn split_origin(origin: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, rest) = origin.split_once("://")?;
    let (host, port) = split_host_port(rest)?;
    let port_is_valid = port.is_none_or(|port| !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()));
    (is_host(host) && port_is_valid).then_some((scheme, host, port))
}

/// Methods allowed by a preflight.
#[derive(Debug)]
enum Methods {
    Any,
    Listed(Vec<Method>),
}

fn parse_methods(entries: &[String], path: &FieldPath, errors: &mut ConfigErrors) -> Methods {
    if entries.iter().any(|entry| entry.trim() == "*") {
        return Methods::Any;
    }
    let mut methods = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match Method::from_bytes(entry.trim().as_bytes()) {
            Ok(method) if !methods.contains(&method) => methods.push(method),
            Ok(_) => {}
            Err(_) => errors.push(path.index(index), format!("`{entry}` is not a method name")),
        }
    }
    Methods::Listed(methods)
}

/// Header names (lower case), or any.
#[derive(Debug)]
enum NameList {
    Any,
    Listed(Vec<String>),
}

impl NameList {
    fn parse(entries: &[String], path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        if entries.iter().any(|entry| entry.trim() == "*") {
            return Self::Any;
        }
        let mut names: Vec<String> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let name = entry.trim().to_ascii_lowercase();
            if !is_token(name.as_bytes()) {
                errors.push(path.index(index), format!("`{entry}` is not a header name"));
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        Self::Listed(names)
    }

    fn allows(&self, name: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Listed(names) => names.iter().any(|listed| listed.as_bytes().eq_ignore_ascii_case(name)),
        }
    }
}

/// An RFC 9110 token (method and header name syntax).
fn is_token(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(byte))
}

/// `a, b, c` as a header value; `None` for no items.
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let text = items.collect::<Vec<_>>().join(", ");
    // Items are tokens, checked when parsed, so the value is always valid.
    (!text.is_empty()).then(|| HeaderValue::from_str(&text).ok()).flatten()
}

/// What the request hook left for the response hook, in the exchange's extensions.
#[derive(Clone, Debug)]
enum CorsExchange {
    /// A preflight this policy answered; its answer is complete.
    Preflight,
    /// An actual request from an allowed origin, to be named in the response.
    Allowed(HeaderValue),
}

/// Runs per request: one header lookup for requests without `Origin`; a hash lookup (and a
/// pattern scan) for those with one; an extension insert only for allowed origins that are
/// reflected.
struct CompiledCors {
    origins: OriginSet,
    /// `*` without credentials: the same headers on every response, and no `Vary: Origin`.
    answers_any_origin: bool,
    methods: Methods,
    /// `Access-Control-Allow-Methods` for a listed set; the requested method is echoed for `*`.
    allow_methods: Option<HeaderValue>,
    headers: NameList,
    /// `Access-Control-Allow-Headers` for a listed set; the requested headers are echoed for `*`.
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    allow_credentials: bool,
    max_age: Option<HeaderValue>,
    allow_private_network: bool,
}

impl CompiledCors {
    /// Answers a preflight: 204 with the allowing headers, or 403 saying what was refused.
    fn answer_preflight(&self, request: &RequestParts, origin: &HeaderValue) -> PolicyResponse {
        if !self.origins.allows(origin) {
            return refused("the origin is not allowed");
        }
        let requested_method = request.headers.get(ACCESS_CONTROL_REQUEST_METHOD);
        let Some(method) = requested_method.and_then(|value| Method::from_bytes(value.as_bytes()).ok()) else {
            return refused("Access-Control-Request-Method is not a method name");
        };
        let method_allowed = match &self.methods {
            Methods::Any => true,
            // Fetch never asks a preflight's permission for a CORS-safelisted method.
            Methods::Listed(list) => is_safelisted_method(&method) || list.contains(&method),
        };
        if !method_allowed {
            return refused(&format!("the method {method} is not allowed"));
        }
        let requested_headers = request.headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS);
        for value in &requested_headers {
            for name in value.as_bytes().split(|byte| *byte == b',').map(<[u8]>::trim_ascii) {
                if name.is_empty() {
                    continue;
                }
                if !is_token(name) {
                    return refused("Access-Control-Request-Headers is not a list of header names");
                }
                if !self.headers.allows(name) {
                    let name = String::from_utf8_lossy(name);
                    return refused(&format!("the request header {name} is not allowed"));
                }
            }
        }

        let mut response = PolicyResponse::new(bytes::Bytes::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.name_origin(headers, origin);
        let allow_methods = match &self.allow_methods {
            Some(listed) => Some(listed.clone()),
            None => requested_method.cloned(),
        };
        if let Some(value) = allow_methods {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        match &self.allow_headers {
            Some(listed) => {
                headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, listed.clone());
            }
            // `*` echoes what was asked: with credentials Fetch reads `*` as a name, and it
            // never covers `Authorization`.
            None => {
                for value in &requested_headers {
                    headers.append(ACCESS_CONTROL_ALLOW_HEADERS, value.clone());
                }
            }
        }
        if let Some(max_age) = &self.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        let asks_private_network = request
            .headers
            .get(&REQUEST_PRIVATE_NETWORK)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        // Not allowed: the answer simply lacks the header, which leaves the browser's decision
        // to its own Private Network Access mode rather than failing the whole preflight.
        if asks_private_network && self.allow_private_network {
            headers.insert(&ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
        }
        response
    }

    /// `Access-Control-Allow-Origin` (and `-Credentials`) of a preflight from an allowed `origin`.
    fn name_origin(&self, headers: &mut http::HeaderMap, origin: &HeaderValue) {
        if self.answers_any_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            return;
        }
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        add_vary_origin(headers);
    }
}

fn is_safelisted_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::POST)
}

/// The answer to a preflight that asks for more than is allowed. A browser fails any preflight
/// without an ok status, so 403 costs the page nothing more than a 204 without CORS headers
/// would, and it is counted and says why in the browser's network panel.
fn refused(detail: &str) -> PolicyResponse {
    problem_response(StatusCode::FORBIDDEN, "cors-preflight-refused", "CORS preflight refused", Some(detail))
}

/// Adds `Vary: Origin` unless the response already varies by origin (or by everything).
fn add_vary_origin(headers: &mut http::HeaderMap) {
    let varies = headers.get_all(VARY).iter().any(|value| {
        value
            .as_bytes()
            .split(|byte| *byte == b',')
            .map(<[u8]>::trim_ascii)
            .any(|token| token == b"*" || token.eq_ignore_ascii_case(b"origin"))
    });
    if !varies {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}

impl Policy for CompiledCors {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: true, log: false }
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(origin) = request.headers.get(ORIGIN) else {
            return Hook::Done(Flow::Continue);
        };
        // Fetch's preflight: OPTIONS with the method the page wants to use. A plain OPTIONS
        // request (without that header) is an actual request like any other.
        if request.method == Method::OPTIONS && request.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            let answer = self.answer_preflight(request, origin);
            tracing::debug!(status = answer.status().as_u16(), "cors preflight answered");
            exchange.extensions.insert(CorsExchange::Preflight);
            return answer.into();
        }
        if !self.answers_any_origin && self.origins.allows(origin) {
            exchange.extensions.insert(CorsExchange::Allowed(origin.clone()));
        }
        Hook::Done(Flow::Continue)
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        // Removed, not read: an exchange whose extensions end up empty sends its body unwrapped.
        let state = exchange.extensions.remove::<CorsExchange>();
        if matches!(state, Some(CorsExchange::Preflight)) {
            return;
        }
        let headers = &mut response.headers;
        // The policy alone decides what a page may read: what the upstream said about CORS is
        // replaced or dropped, so it can neither widen the policy nor send a header twice.
        if self.answers_any_origin {
            // The same for every request, with an `Origin` or not, so caches may share it.
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        } else if let Some(CorsExchange::Allowed(origin)) = state {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if self.allow_credentials {
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            } else {
                headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            }
            add_vary_origin(headers);
        } else {
            for name in [ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_EXPOSE_HEADERS] {
                headers.remove(name);
            }
            // The answer differs by origin even when it names none: a cache must not serve
            // this one to a page of an allowed origin (Fetch, "CORS protocol and HTTP caches").
            add_vary_origin(headers);
            return;
        }
        match &self.expose_headers {
            Some(expose) => headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()),
            None => headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS),
        };
    }
}

#[cfg(test)]
mod tests;

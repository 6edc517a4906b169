#![doc = include_str!("redirect.md")]

use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::{HeaderValue, HOST, LOCATION};
use http::uri::Authority;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `redirect`. Give exactly one of `http_to_https: true` and `uri`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Redirect requests that arrived without TLS to the same host, path and query over
    /// HTTPS; requests that arrived over TLS go on.
    #[serde(default)]
    pub http_to_https: bool,
    /// Port of the HTTPS address, when not 443 (only with `http_to_https`).
    #[serde(default)]
    pub https_port: Option<u16>,
    /// Target of every request, with placeholders `$scheme`, `$host`, `$uri` (path),
    /// `$args` (query, without `?`) and `$request_uri` (path and query); `${host}` also works
    /// and `$$` is a literal `$`.
    #[serde(default)]
    pub uri: Option<String>,
    /// Status of the redirect: 301, 302, 303, 307 or 308.
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    302
}

const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

// Every check needs the parsed values, so `build` (which compiles) makes them all.
impl Validate for Config {}

/// Factory of the `redirect` policy.
#[derive(Debug)]
pub struct Redirect;

impl PolicyFactory for Redirect {
    const NAME: &'static str = "redirect";
    const STAGE: Stage = Stage::Ingress;
    const DOCS: &'static str = include_str!("redirect.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(ConfigErrors::collect(|errors| compile(&config, path, errors))?))
    }
}

/// Checks `config` and parses its target; complete only when nothing was added to `errors`.
fn compile(config: &Config, path: &FieldPath, errors: &mut ConfigErrors) -> CompiledRedirect {
    let status = match StatusCode::from_u16(config.status) {
        Ok(status) if REDIRECT_STATUSES.contains(&config.status) => status,
        _ => {
            errors.push(
                path.key("status"),
                format!("{} is not a redirect status: use 301, 302, 303, 307 or 308", config.status),
            );
            StatusCode::FOUND
        }
    };
    let target = match (config.http_to_https, &config.uri) {
        (true, Some(_)) => {
            errors.push(path.key("uri"), "give `http_to_https: true` or `uri`, not both");
            Target::Https { port: None }
        }
        (true, None) => Target::Https { port: https_port_suffix(config.https_port, path, errors) },
        (false, Some(uri)) => {
            if config.https_port.is_some() {
                errors.push(path.key("https_port"), "`https_port` goes with `http_to_https: true`");
            }
            match Template::parse(uri) {
                Ok(template) => Target::Template(template),
                Err(reason) => {
                    errors.push(path.key("uri"), reason);
                    Target::Template(Template::default())
                }
            }
        }
        (false, None) => {
            errors.push(path.clone(), "give `http_to_https: true` or a `uri` to redirect to");
            Target::Https { port: None }
        }
    };
    CompiledRedirect { status, target }
}

/// The `:port` put after the host of an HTTPS redirect; none for the default port.
fn https_port_suffix(port: Option<u16>, path: &FieldPath, errors: &mut ConfigErrors) -> Option<Box<str>> {
    match port {
        Some(0) => {
            errors.push(path.key("https_port"), "must be a port from 1 to 65535");
            None
        }
        Some(443) | None => None,
        Some(port) => Some(format!(":{port}").into()),
    }
}

/// Runs per request: builds one `Location` string, nothing else is parsed.
#[derive(Debug)]
struct CompiledRedirect {
    status: StatusCode,
    target: Target,
}

#[derive(Debug)]
enum Target {
    /// `https://` + host + port suffix + path and query.
    Https { port: Option<Box<str>> },
    /// A fixed target with placeholders.
    Template(Template),
}

impl Policy for CompiledRedirect {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    // `http_to_https` lets TLS requests through to the upstream; a fixed target answers all.
    fn answers_every_request(&self) -> bool {
        matches!(self.target, Target::Template(_))
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let location = match &self.target {
            Target::Https { .. } if exchange.is_tls => return Hook::Done(Flow::Continue),
            Target::Https { port } => {
                let Some(host) = request_host(request) else {
                    return missing_host().into();
                };
                let port = port.as_deref().unwrap_or("");
                let path = path_and_query(request);
                let mut location = String::with_capacity(8 + host.len() + port.len() + path.len());
                location.push_str("https://");
                location.push_str(host);
                location.push_str(port);
                location.push_str(path);
                location
            }
            Target::Template(template) => match template.render(request, exchange.is_tls) {
                Some(location) => location,
                None => return missing_host().into(),
            },
        };
        match HeaderValue::from_maybe_shared(Bytes::from(location)) {
            Ok(location) => {
                let mut response = PolicyResponse::new(Bytes::new());
                *response.status_mut() = self.status;
                response.headers_mut().insert(LOCATION, location);
                response.into()
            }
            // Every piece comes from the configuration (checked at load) or from the parsed
            // request line and Host header, so this is a gateway bug, not a client error.
            Err(_) => problem_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "redirect-target-invalid",
                "Redirect target invalid",
                Some("the redirect target is not a valid Location header value"),
            )
            .into(),
        }
    }
}

/// The host the client asked for, without the port: from the request target (HTTP/2
/// `:authority`, absolute-form) or else the `Host` header.
fn request_host(request: &RequestParts) -> Option<&str> {
    if let Some(authority) = request.uri.authority() {
        return Some(authority.host()).filter(|host| !host.is_empty());
    }
    let value = request.headers.get(HOST)?.to_str().ok()?;
    host_of(value)
}

/// The host part of a `Host` header value (`example.com:8080` → `example.com`, `[::1]:80` →
/// `[::1]`), or `None` when it is not a valid authority.
fn host_of(value: &str) -> Option<&str> {
    // A Host header is `host[:port]` (RFC 9110 §7.2); user information has no place in it.
    if value.contains('@') {
        return None;
    }
    let authority: Authority = value.parse().ok()?;
    // The host is then a prefix of `value`: borrow it from there rather than from the parsed
    // copy, which is dropped here.
    value.get(..authority.host().len()).filter(|host| !host.is_empty())
}

fn path_and_query(request: &RequestParts) -> &str {
    request.uri.path_and_query().map_or("/", |path| path.as_str())
}

fn missing_host() -> PolicyResponse {
    problem_response(
        StatusCode::BAD_REQUEST,
        "missing-host",
        "Missing host",
        Some("the request names no host (no Host header), so it cannot be redirected"),
    )
}

/// A redirect target: literal text and placeholders, parsed once.
#[derive(Debug, Default)]
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Var(Var),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Scheme,
    Host,
    Uri,
    Args,
    RequestUri,
}

impl Var {
    const ALL: [(&'static str, Var); 5] = [
        ("scheme", Var::Scheme),
        ("host", Var::Host),
        ("uri", Var::Uri),
        ("args", Var::Args),
        ("request_uri", Var::RequestUri),
    ];
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the redirect target cannot be empty".to_owned());
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            literal.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
                continue;
            }
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let close = braced.find('}').ok_or("unclosed `${` in the redirect target")?;
                (&braced[..close], &braced[close + 1..])
            } else {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            let var = Var::ALL.iter().find(|(known, _)| *known == name).map(|(_, var)| *var).ok_or_else(|| {
                format!(
                    "unknown placeholder `${name}`: use $scheme, $host, $uri, $args or $request_uri (`$$` for a literal `$`, `${{uri}}` before letters)"
                )
            })?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal).into()));
            }
            pieces.push(Piece::Var(var));
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal.into()));
        }
        for piece in &pieces {
            if let Piece::Text(text) = piece {
                if HeaderValue::from_str(text).is_err() || text.contains(char::is_whitespace) {
                    return Err("the redirect target may hold only visible ASCII characters: percent-encode the rest"
                        .to_owned());
                }
            }
        }
        Ok(Self { pieces })
    }

    /// The target for `request`, or `None` when it needs a host and the request names none.
    fn render(&self, request: &RequestParts, is_tls: bool) -> Option<String> {
        let mut out = String::with_capacity(64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(Var::Scheme) => out.push_str(if is_tls { "https" } else { "http" }),
                Piece::Var(Var::Host) => out.push_str(request_host(request)?),
                Piece::Var(Var::Uri) => out.push_str(request.uri.path()),
                Piece::Var(Var::Args) => out.push_str(request.uri.query().unwrap_or("")),
                Piece::Var(Var::RequestUri) => out.push_str(path_and_query(request)),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests;

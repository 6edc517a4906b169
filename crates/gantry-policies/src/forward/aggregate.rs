#![doc = include_str!("aggregate.md")]

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::subrequest::{subrequests, Subrequest, SubrequestError, SubrequestResult};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Settings of `aggregate`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The subrequests, sent all at once; at least one.
    pub requests: Vec<RequestConfig>,
    /// How the answers are combined: `object` (each under its request's `name`) or `deep`
    /// (JSON objects merged into one, in the order of `requests`).
    #[serde(default)]
    pub merge: Merge,
    /// Largest response body read from each subrequest, in bytes; a longer one is a failure.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Deadline of the whole aggregate, from the first subrequest sent; more than 0. A
    /// subrequest still running then has failed.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

/// One subrequest of `aggregate`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Key of the answer in the merged object (`merge: object`) and in failure reports; unique.
    pub name: String,
    /// Id of the upstream the subrequest goes to.
    pub upstream: String,
    /// Path and optional query sent upstream, a template: `{name}` inserts the route's path
    /// parameter `name`, `{query.name}` the client's query parameter `name`, `{consumer}` the
    /// recognised consumer's id; each value is percent-encoded.
    pub path: String,
    /// Method of the subrequest, sent without a body.
    #[serde(default = "default_method")]
    pub method: String,
    /// Client request headers copied onto the subrequest (`authorization`, `accept-language`).
    #[serde(default)]
    pub headers: Vec<String>,
    /// A required subrequest that fails fails the aggregate with 502; an optional one gives
    /// `null` (and is listed in `X-Aggregate-Partial`).
    #[serde(default = "default_required")]
    pub required: bool,
    /// Time limit of this subrequest, at most the aggregate's `timeout` (the default).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

/// How `aggregate` combines the answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// `{"<name>": <answer>, ...}`: any JSON answer; a failed optional one is `null`.
    #[default]
    Object,
    /// The answers, each a JSON object, merged key by key in order: a later value replaces an
    /// earlier one, except two objects, which are merged the same way.
    Deep,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_required() -> bool {
    true
}

/// The response header listing the optional subrequests that failed.
pub const PARTIAL_HEADER: &str = "x-aggregate-partial";

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.requests.is_empty() {
            errors.push(path.key("requests"), "list at least one subrequest");
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be at least 1");
        }
        let total = self.timeout.get();
        if total.is_zero() {
            errors.push(path.key("timeout"), "must be more than 0");
        }
        let mut names = HashSet::new();
        for (index, request) in self.requests.iter().enumerate() {
            let at = path.key("requests").index(index);
            if request.name.is_empty() {
                errors.push(at.key("name"), "must not be empty");
            } else if !names.insert(request.name.as_str()) {
                errors.push(at.key("name"), format!("`{}` names another subrequest too", request.name));
            }
            if let Some(timeout) = request.timeout.map(Duration::get) {
                if timeout.is_zero() {
                    errors.push(at.key("timeout"), "must be more than 0");
                } else if timeout > total {
                    errors.push(
                        at.key("timeout"),
                        format!(
                            "must be at most the aggregate's `timeout` ({total:?}), the deadline of all subrequests"
                        ),
                    );
                }
            }
        }
    }
}

/// Factory of the `aggregate` policy.
#[derive(Debug)]
pub struct Aggregate;

impl PolicyFactory for Aggregate {
    const NAME: &'static str = "aggregate";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("aggregate.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let total = config.timeout.get();
        let max_body_bytes = usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX);
        let compiled = ConfigErrors::collect(|errors| {
            let requests = config
                .requests
                .iter()
                .enumerate()
                .map(|(index, request)| compile_request(request, &path.key("requests").index(index), context, errors))
                .collect::<Vec<_>>();
            requests
                .into_iter()
                .zip(&config.requests)
                .map(|(compiled, request)| {
                    let timeout = request.timeout.map_or(total, Duration::get).min(total);
                    CompiledRequest { timeout, ..compiled }
                })
                .collect::<Vec<_>>()
        })?;
        Ok(Arc::new(CompiledAggregate { requests: compiled, merge: config.merge, max_body_bytes }))
    }
}

fn compile_request(
    request: &RequestConfig,
    path: &FieldPath,
    context: &BuildContext<'_>,
    errors: &mut ConfigErrors,
) -> CompiledRequest {
    if !context.spec.upstreams.iter().any(|upstream| upstream.id == request.upstream) {
        let known: Vec<&str> = context.spec.upstreams.iter().map(|upstream| upstream.id.as_str()).collect();
        errors.push(
            path.key("upstream"),
            format!("unknown upstream `{}`; configured upstreams: {}", request.upstream, known.join(", ")),
        );
    }
    let method = Method::from_bytes(request.method.as_bytes()).unwrap_or_else(|_| {
        errors.push(path.key("method"), format!("`{}` is not an HTTP method", request.method));
        Method::GET
    });
    let mut headers = Vec::with_capacity(request.headers.len());
    for (index, name) in request.headers.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => headers.push(name),
            Err(_) => errors.push(path.key("headers").index(index), format!("`{name}` is not a header name")),
        }
    }
    let template = PathTemplate::parse(&request.path).unwrap_or_else(|reason| {
        errors.push(path.key("path"), reason);
        PathTemplate(Vec::new())
    });
    CompiledRequest {
        name: Arc::from(request.name.as_str()),
        upstream: Arc::from(request.upstream.as_str()),
        method,
        template,
        headers,
        required: request.required,
        timeout: std::time::Duration::ZERO,
    }
}

/// A path template, split once at load.
#[derive(Debug, PartialEq)]
struct PathTemplate(Vec<Piece>);

#[derive(Debug, PartialEq)]
enum Piece {
    Literal(String),
    PathParam(String),
    QueryParam(String),
    Consumer,
}

/// Every byte but the unreserved ones (RFC 3986 §2.3) is encoded, so a value stays one path
/// segment or one query value whatever it holds.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

impl PathTemplate {
    fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("`{template}` does not start with `/`"));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("`{template}` has a `}}` without its `{{`"));
            }
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| format!("`{template}` has a `{{` without its `}}`"))?;
            let name = &after[..close];
            let is_name = |text: &str| {
                !text.is_empty()
                    && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
            };
            let piece = match name.strip_prefix("query.") {
                Some(query) if is_name(query) => Piece::QueryParam(query.to_owned()),
                None if name == "consumer" => Piece::Consumer,
                None if is_name(name) => Piece::PathParam(name.to_owned()),
                _ => {
                    return Err(format!(
                        "`{{{name}}}` is not a placeholder: use `{{param}}`, `{{query.param}}` or `{{consumer}}`"
                    ))
                }
            };
            pieces.push(piece);
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        let parsed = Self(pieces);
        // A placeholder becomes encoded text, so the template is valid when a sample value is.
        let sample: String = parsed
            .0
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.as_str(),
                _ => "x",
            })
            .collect();
        http::uri::PathAndQuery::try_from(sample.as_str())
            .map_err(|err| format!("`{template}` is not a valid path and query: {err}"))?;
        Ok(parsed)
    }

    /// The path and query for this request, or which value it lacks.
    fn render(&self, request: &RequestParts, exchange: &Exchange) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::PathParam(name) => {
                    let raw = exchange
                        .path_params
                        .iter()
                        .find(|(param, _)| **param == **name)
                        .map(|(_, value)| value.as_str())
                        .ok_or_else(|| format!("the route's path has no parameter `{name}`"))?;
                    // The router captures the path as received, still encoded.
                    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
                    out.extend(utf8_percent_encode(&decoded, VALUE));
                }
                Piece::QueryParam(name) => {
                    let value = request
                        .uri
                        .query()
                        .and_then(|query| {
                            form_urlencoded::parse(query.as_bytes())
                                .find(|(key, _)| key == name)
                                .map(|(_, value)| value)
                        })
                        .ok_or_else(|| format!("the request has no query parameter `{name}`"))?;
                    out.extend(utf8_percent_encode(&value, VALUE));
                }
                Piece::Consumer => {
                    let consumer = exchange.consumer().ok_or("no consumer was recognised")?;
                    out.extend(utf8_percent_encode(&consumer.id, VALUE));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct CompiledRequest {
    name: Arc<str>,
    upstream: Arc<str>,
    method: Method,
    template: PathTemplate,
    headers: Vec<HeaderName>,
    required: bool,
    timeout: std::time::Duration,
}

/// Runs per request: renders the subrequests, sends them at once and merges their answers.
#[derive(Debug)]
struct CompiledAggregate {
    requests: Vec<CompiledRequest>,
    merge: Merge,
    max_body_bytes: usize,
}

type Pending = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

impl CompiledAggregate {
    fn subrequest(&self, spec: &CompiledRequest, request: &RequestParts, exchange: &Exchange) -> Pending {
        let Some(sender) = subrequests(exchange) else {
            return Box::pin(std::future::ready(Err("subrequests are not available here".to_owned())));
        };
        let path_and_query = match spec.template.render(request, exchange) {
            Ok(rendered) => rendered,
            Err(reason) => return Box::pin(std::future::ready(Err(reason))),
        };
        let mut builder = http::Request::builder().method(spec.method.clone()).uri(path_and_query);
        if let Some(headers) = builder.headers_mut() {
            for name in &spec.headers {
                for value in request.headers.get_all(name) {
                    headers.append(name.clone(), value.clone());
                }
            }
            if !headers.contains_key(ACCEPT) {
                headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            }
        }
        let head = match builder.body(()) {
            Ok(request) => request.into_parts().0,
            Err(err) => {
                let reason = format!("the subrequest cannot be built: {err}");
                return Box::pin(std::future::ready(Err(reason)));
            }
        };
        let sent =
            sender.send(Subrequest { upstream: spec.upstream.clone(), head, max_body_bytes: self.max_body_bytes });
        let timeout = spec.timeout;
        let merge = self.merge;
        Box::pin(async move {
            let answered =
                tokio::time::timeout(timeout, sent).await.map_err(|_| format!("no answer within {timeout:?}"))?;
            read_answer(answered, merge)
        })
    }

    fn answer(&self, outcomes: Vec<Result<Value, String>>) -> PolicyResponse {
        let mut failed_optional = Vec::new();
        let mut merged = Map::new();
        for (spec, outcome) in self.requests.iter().zip(outcomes) {
            match outcome {
                Ok(value) => match (self.merge, value) {
                    (Merge::Object, value) => {
                        merged.insert(spec.name.to_string(), value);
                    }
                    (Merge::Deep, Value::Object(object)) => deep_merge(&mut merged, object),
                    // `read_answer` let only objects through.
                    (Merge::Deep, _) => {}
                },
                Err(reason) if spec.required => {
                    tracing::debug!(subrequest = &*spec.name, upstream = &*spec.upstream, reason = %reason, "required subrequest failed");
                    let detail =
                        format!("required subrequest `{}` (upstream `{}`) failed: {reason}", spec.name, spec.upstream);
                    return problem_response(StatusCode::BAD_GATEWAY, "aggregate-failed", "Bad Gateway", Some(&detail));
                }
                Err(reason) => {
                    tracing::debug!(subrequest = &*spec.name, upstream = &*spec.upstream, reason = %reason, "optional subrequest failed");
                    if self.merge == Merge::Object {
                        merged.insert(spec.name.to_string(), Value::Null);
                    }
                    failed_optional.push(&*spec.name);
                }
            }
        }
        let body = serde_json::to_vec(&Value::Object(merged)).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = PolicyResponse::new(body.into());
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !failed_optional.is_empty() {
            // Names are configuration text; one that is no header value only loses the header.
            if let Ok(value) = HeaderValue::from_str(&failed_optional.join(", ")) {
                response.headers_mut().insert(PARTIAL_HEADER, value);
            }
        }
        response
    }
}

/// The JSON of a whole answer, or why it does not count as one.
fn read_answer(answered: SubrequestResult, merge: Merge) -> Result<Value, String> {
    let response = answered.map_err(|err: SubrequestError| err.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the upstream answered {}", response.status()));
    }
    let value: Value =
        serde_json::from_slice(response.body()).map_err(|err| format!("the answer is not JSON: {err}"))?;
    if merge == Merge::Deep && !value.is_object() {
        return Err("the answer is not a JSON object, which `merge: deep` needs".to_owned());
    }
    Ok(value)
}

/// Merges `from` into `into`: two objects under one key merge, anything else is replaced.
fn deep_merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Object(existing)), Value::Object(incoming)) => deep_merge(existing, incoming),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Waits for every pending subrequest, polling them together so they run at once.
async fn join_all(mut pending: Vec<Pending>) -> Vec<Result<Value, String>> {
    let mut outcomes: Vec<Option<Result<Value, String>>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut waiting = false;
        for (future, outcome) in pending.iter_mut().zip(outcomes.iter_mut()) {
            if outcome.is_none() {
                match future.as_mut().poll(context) {
                    Poll::Ready(ready) => *outcome = Some(ready),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outcomes.into_iter().map(|outcome| outcome.unwrap_or_else(|| Err("not run".to_owned()))).collect()
}

impl Policy for CompiledAggregate {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn answers_every_request(&self) -> bool {
        true
    }

    fn sends_subrequests(&self) -> bool {
        true
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        // Rendered and sent now: the futures own what they need, the hook's borrows end here.
        let pending: Vec<Pending> = self.requests.iter().map(|spec| self.subrequest(spec, request, exchange)).collect();
        Hook::Wait(Box::pin(async move { Flow::Respond(self.answer(join_all(pending).await)) }))
    }
}

#[cfg(test)]
mod tests;

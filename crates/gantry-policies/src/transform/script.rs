#![doc = include_str!("script.md")]

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rhai::packages::{Package, StandardPackage};
use rhai::{CallFnOptions, Dynamic, Engine, ImmutableString, Map, Scope, AST};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `script`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Rhai script: it defines `fn on_request()`, `fn on_response()` or both.
    pub source: String,
    /// Most operations (roughly, evaluated expressions) one hook call may run.
    #[serde(default = "default_max_operations")]
    pub max_operations: u64,
    /// Longest wall-clock time one hook call may run.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Longest string a script may build, in bytes.
    #[serde(default = "default_max_string_size")]
    pub max_string_size: usize,
    /// Most items of an array a script may build.
    #[serde(default = "default_max_collection_size")]
    pub max_array_size: usize,
    /// Most entries of a map a script may build.
    #[serde(default = "default_max_collection_size")]
    pub max_map_size: usize,
    /// Deepest nesting of function calls.
    #[serde(default = "default_max_call_levels")]
    pub max_call_levels: usize,
    /// Deepest nesting of expressions, in the script's top level and in its functions.
    #[serde(default = "default_max_expr_depth")]
    pub max_expr_depth: usize,
    /// What a script that fails or exceeds a limit does to the request: `fail_closed` answers
    /// 500, `fail_open` lets it go on as if the hook had not run.
    #[serde(default)]
    pub on_error: OnError,
}

/// What a failing script does to the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Answered with a 500 problem.
    #[default]
    FailClosed,
    /// Goes on unchanged.
    FailOpen,
}

fn default_max_operations() -> u64 {
    100_000
}

fn default_timeout() -> Duration {
    Duration::from_millis(20)
}

fn default_max_string_size() -> usize {
    64 * 1024
}

fn default_max_collection_size() -> usize {
    1024
}

fn default_max_call_levels() -> usize {
    16
}

fn default_max_expr_depth() -> usize {
    64
}

/// Hook calls longer than this are refused at load: the data-plane thread runs them.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.source.trim().is_empty() {
            errors.push(path.key("source"), "must not be empty");
        }
        let timeout = self.timeout.get();
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            errors.push(path.key("timeout"), "must be more than 0 and at most 1s");
        }
        let limits = [
            ("max_operations", self.max_operations == 0),
            ("max_string_size", self.max_string_size == 0),
            ("max_array_size", self.max_array_size == 0),
            ("max_map_size", self.max_map_size == 0),
            ("max_call_levels", self.max_call_levels == 0),
            ("max_expr_depth", self.max_expr_depth == 0),
        ];
        for (name, zero) in limits {
            if zero {
                errors.push(path.key(name), "must be more than 0");
            }
        }
    }
}

/// Factory of the `script` policy.
#[derive(Debug)]
pub struct Script;

impl PolicyFactory for Script {
    const NAME: &'static str = "script";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("script.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let engine = sandboxed_engine(&config);
        let ast = match engine.compile(&config.source) {
            Ok(ast) => ast,
            Err(err) => {
                let position = err.position();
                let at = match (position.line(), position.position()) {
                    (Some(line), Some(column)) => format!("line {line}, column {column}: "),
                    (Some(line), None) => format!("line {line}: "),
                    _ => String::new(),
                };
                errors.push(path.key("source"), format!("{at}{}", err.err_type()));
                return Err(errors);
            }
        };
        let mut on_request = false;
        let mut on_response = false;
        for function in ast.iter_functions() {
            let hook = match function.name {
                "on_request" => &mut on_request,
                "on_response" => &mut on_response,
                _ => continue,
            };
            if function.params.is_empty() {
                *hook = true;
            } else {
                errors.push(
                    path.key("source"),
                    format!("`fn {}` takes no parameters: the request or response is `this`", function.name),
                );
            }
        }
        if !on_request && !on_response && errors.is_empty() {
            errors.push(path.key("source"), "define `fn on_request()`, `fn on_response()` or both");
        }
        errors.into_result(Arc::new(CompiledScript {
            engine,
            ast: Arc::new(ast),
            on_request,
            on_response,
            timeout: config.timeout.get(),
            on_error: config.on_error,
        }) as Arc<dyn Policy>)
    }
}

thread_local! {
    /// When the hook call running on this thread must stop. The engine's progress callback has
    /// no per-call state, and a call runs on one thread from start to end.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How often, in operations, the clock is read: reading it every operation would cost more
/// than most scripts.
const CLOCK_EVERY: u64 = 256;

/// An engine with no access to files, the network, modules or `eval`, and with every limit of
/// `config`.
fn sandboxed_engine(config: &Config) -> Engine {
    // `new_raw` has no packages and no `print` output; only the standard library's pure
    // functions (strings, arrays, maps, maths) are added.
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    engine.disable_symbol("eval");
    engine
        .set_max_operations(config.max_operations)
        .set_max_string_size(config.max_string_size)
        .set_max_array_size(config.max_array_size)
        .set_max_map_size(config.max_map_size)
        .set_max_call_levels(config.max_call_levels)
        .set_max_expr_depths(config.max_expr_depth, config.max_expr_depth)
        .set_max_variables(1024)
        .set_max_functions(256);
    engine.on_progress(|operations| {
        if operations % CLOCK_EVERY != 0 {
            return None;
        }
        let deadline = DEADLINE.with(Cell::get)?;
        (Instant::now() >= deadline).then(|| Dynamic::from("the script ran past its timeout"))
    });
    engine
}

/// Runs per request: the engine and the compiled script are built once, at load.
struct CompiledScript {
    engine: Engine,
    ast: Arc<AST>,
    on_request: bool,
    on_response: bool,
    timeout: std::time::Duration,
    on_error: OnError,
}

/// Why a hook call gave nothing usable.
type ScriptError = String;

fn headers_map(headers: &HeaderMap) -> Map {
    let mut map = Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers.get_all(name).iter().filter_map(|value| value.to_str().ok()).collect();
        map.insert(name.as_str().into(), Dynamic::from(values.join(", ")));
    }
    map
}

fn text(value: Option<&str>) -> Dynamic {
    value.map_or(Dynamic::UNIT, |value| Dynamic::from(value.to_owned()))
}

/// Applies the script's changes to `this.headers`: a name it removed goes, a name whose value
/// it set or changed is replaced.
fn apply_headers(before: &Map, after: &Dynamic, headers: &mut HeaderMap) -> Result<(), ScriptError> {
    let after = after.read_lock::<Map>().ok_or_else(|| "`this.headers` must stay a map".to_owned())?;
    for name in before.keys() {
        if !after.contains_key(name) {
            headers.remove(name.as_str());
        }
    }
    for (name, value) in after.iter() {
        let value = value
            .clone()
            .into_immutable_string()
            .map_err(|kind| format!("header `{name}`: the value is {kind}, not a string"))?;
        if before.get(name).and_then(|old| old.clone().into_immutable_string().ok()).as_ref() == Some(&value) {
            continue;
        }
        let header = HeaderName::try_from(name.as_str()).map_err(|_| format!("`{name}` is not a header name"))?;
        let value = HeaderValue::try_from(value.as_str()).map_err(|_| format!("header `{name}`: invalid value"))?;
        headers.insert(header, value);
    }
    Ok(())
}

/// The answer a hook returned: `#{status: 403, headers: #{...}, body: "..."}`.
fn answer_from(value: &Map) -> Result<PolicyResponse, ScriptError> {
    let status = value
        .get("status")
        .and_then(|status| status.as_int().ok())
        .and_then(|status| u16::try_from(status).ok())
        .and_then(|status| StatusCode::from_u16(status).ok())
        .filter(|status| !status.is_informational())
        .ok_or("an answer needs a `status` from 200 to 599")?;
    let body = match value.get("body") {
        None => String::new(),
        Some(body) if body.is_unit() => String::new(),
        Some(body) => {
            body.clone().into_string().map_err(|kind| format!("the answer's `body` is {kind}, not a string"))?
        }
    };
    let mut response = PolicyResponse::new(bytes::Bytes::from(body));
    *response.status_mut() = status;
    if let Some(headers) = value.get("headers") {
        apply_headers(&Map::new(), headers, response.headers_mut())?;
    }
    if !response.headers().contains_key(CONTENT_TYPE) && !response.body().is_empty() {
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    let length = response.body().len();
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

fn error_problem() -> PolicyResponse {
    problem_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "script-error",
        "Internal Server Error",
        Some("the route's script failed"),
    )
}

impl CompiledScript {
    /// Calls `name` with `this` bound to `subject`, within the limits and the timeout.
    fn call(&self, name: &str, subject: &mut Dynamic) -> Result<Dynamic, ScriptError> {
        DEADLINE.with(|deadline| deadline.set(Some(Instant::now() + self.timeout)));
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true).bind_this_ptr(subject);
        let result = self.engine.call_fn_with_options::<Dynamic>(options, &mut Scope::new(), &self.ast, name, ());
        DEADLINE.with(|deadline| deadline.set(None));
        result.map_err(|err| err.to_string())
    }

    fn run_request(
        &self,
        request: &mut RequestParts,
        exchange: &mut Exchange,
    ) -> Result<Option<PolicyResponse>, ScriptError> {
        let headers = headers_map(&request.headers);
        let mut this = Map::new();
        this.insert("method".into(), Dynamic::from(request.method.as_str().to_owned()));
        this.insert("path".into(), Dynamic::from(request.uri.path().to_owned()));
        this.insert("query".into(), text(request.uri.query()));
        this.insert("headers".into(), Dynamic::from_map(headers.clone()));
        this.insert("consumer".into(), text(exchange.consumer().map(|consumer| &*consumer.id)));
        this.insert("client_ip".into(), Dynamic::from(exchange.client_addr.ip().to_string()));
        this.insert("route".into(), Dynamic::from(exchange.route_id.to_string()));
        let mut subject = Dynamic::from_map(this);
        let returned = self.call("on_request", &mut subject)?;
        if let Some(answer) = returned.read_lock::<Map>() {
            return answer_from(&answer).map(Some);
        }
        if !returned.is_unit() {
            return Err(format!("`on_request` returned {}; return nothing or an answer map", returned.type_name()));
        }
        let this = subject.read_lock::<Map>().ok_or("`this` must stay a map")?;
        let mut changed = request.headers.clone();
        apply_headers(&headers, this.get("headers").unwrap_or(&Dynamic::UNIT), &mut changed)?;
        let path = this.get("path").and_then(|path| path.clone().into_immutable_string().ok());
        let query = this.get("query").map(|query| query.clone().into_immutable_string().ok());
        let path = path.ok_or("`this.path` must stay a string")?;
        let query: Option<ImmutableString> = query.flatten();
        if path.as_str() != request.uri.path() || query.as_deref() != request.uri.query() {
            if !path.starts_with('/') {
                return Err(format!("`this.path` `{path}` does not start with `/`"));
            }
            let target = match &query {
                Some(query) if !query.is_empty() => format!("{path}?{query}"),
                _ => path.to_string(),
            };
            let target = PathAndQuery::try_from(target).map_err(|err| format!("`this.path`: {err}"))?;
            exchange.upstream_path = Some(target);
        }
        request.headers = changed;
        Ok(None)
    }

    fn run_response(&self, response: &mut ResponseParts, exchange: &Exchange) -> Result<(), ScriptError> {
        let headers = headers_map(&response.headers);
        let mut this = Map::new();
        this.insert("status".into(), Dynamic::from_int(i64::from(response.status.as_u16())));
        this.insert("headers".into(), Dynamic::from_map(headers.clone()));
        this.insert("consumer".into(), text(exchange.consumer().map(|consumer| &*consumer.id)));
        this.insert("route".into(), Dynamic::from(exchange.route_id.to_string()));
        let mut subject = Dynamic::from_map(this);
        // `on_response` cannot answer: what it returns is ignored.
        let _ignored = self.call("on_response", &mut subject)?;
        let this = subject.read_lock::<Map>().ok_or("`this` must stay a map")?;
        let mut changed = response.headers.clone();
        apply_headers(&headers, this.get("headers").unwrap_or(&Dynamic::UNIT), &mut changed)?;
        response.headers = changed;
        Ok(())
    }
}

impl Policy for CompiledScript {
    fn hooks(&self) -> Hooks {
        Hooks { request: self.on_request, response: self.on_response, log: false }
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        match self.run_request(request, exchange) {
            Ok(Some(answer)) => Hook::Done(Flow::Respond(answer)),
            Ok(None) => Hook::Done(Flow::Continue),
            Err(err) => {
                tracing::warn!(route = %exchange.route_id, hook = "on_request", error = %err, "script failed");
                match self.on_error {
                    OnError::FailClosed => Hook::Done(Flow::Respond(error_problem())),
                    OnError::FailOpen => Hook::Done(Flow::Continue),
                }
            }
        }
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Err(err) = self.run_response(response, exchange) else { return };
        tracing::warn!(route = %exchange.route_id, hook = "on_response", error = %err, "script failed");
        if self.on_error == OnError::FailClosed {
            let (head, body) = error_problem().into_parts();
            response.status = head.status;
            response.headers = head.headers;
            response.headers.remove(TRANSFER_ENCODING);
            response.headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            replace_response_body(exchange, body);
        }
    }
}

#![doc = include_str!("mock_response.md")]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::transform::header_ops::parse_header_map;

/// Settings of `mock_response`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Status of the response, from 200 to 599.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Response headers, name to value (literal text).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body as text, sent as `text/plain; charset=utf-8` unless `headers` sets a
    /// `content-type`. Give `body` or `json`, not both.
    #[serde(default)]
    pub body: Option<String>,
    /// Response body as any YAML value, sent as JSON with `content-type: application/json`
    /// unless `headers` sets a `content-type`.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Time to wait before answering, to imitate a slow upstream (`"250ms"`).
    #[serde(default)]
    pub delay: Option<Duration>,
}

fn default_status() -> u16 {
    200
}

// Every check needs the parsed values, so `build` (which compiles) makes them all.
impl Validate for Config {}

/// Factory of the `mock_response` policy.
#[derive(Debug)]
pub struct MockResponse;

impl PolicyFactory for MockResponse {
    const NAME: &'static str = "mock_response";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("mock_response.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(ConfigErrors::collect(|errors| compile(&config, path, errors))?))
    }
}

/// Checks `config` and builds the response once; complete only when nothing was added to
/// `errors`. `circuit_breaker` builds its fallback answer with it too.
pub(crate) fn compile(config: &Config, path: &FieldPath, errors: &mut ConfigErrors) -> CompiledMockResponse {
    let status = match StatusCode::from_u16(config.status) {
        Ok(status) if (200..=599).contains(&config.status) => status,
        _ => {
            errors.push(path.key("status"), format!("{} is not a final status: use 200 to 599", config.status));
            StatusCode::OK
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in parse_header_map(&config.headers, &path.key("headers"), errors) {
        headers.insert(name, value);
    }
    let (body, content_type) = match (&config.body, &config.json) {
        (Some(_), Some(_)) => {
            errors.push(path.key("json"), "give `body` or `json`, not both");
            (Bytes::new(), None)
        }
        (Some(text), None) => (Bytes::from(text.clone()), Some("text/plain; charset=utf-8")),
        (None, Some(value)) => match serde_json::to_vec(value) {
            Ok(json) => (Bytes::from(json), Some("application/json")),
            Err(err) => {
                errors.push(path.key("json"), format!("cannot be written as JSON: {err}"));
                (Bytes::new(), None)
            }
        },
        (None, None) => (Bytes::new(), None),
    };
    // RFC 9110 §15.3.5 and §15.4.5: these responses end at the header section.
    let forbids_body = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if forbids_body && (config.body.is_some() || config.json.is_some()) {
        let field = if config.body.is_some() { "body" } else { "json" };
        errors.push(path.key(field), format!("a {} response has no body", status.as_u16()));
    }
    if let Some(content_type) = content_type {
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
    }
    let delay = config.delay.map(Duration::get).filter(|delay| !delay.is_zero());
    CompiledMockResponse { status, headers, body, delay }
}

/// Runs per request: clones a pre-built response (reference-counted body).
#[derive(Debug)]
pub(crate) struct CompiledMockResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Option<std::time::Duration>,
}

impl CompiledMockResponse {
    /// The response, ready to send.
    pub(crate) fn response(&self) -> PolicyResponse {
        let mut response = PolicyResponse::new(self.body.clone());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

impl Policy for CompiledMockResponse {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn answers_every_request(&self) -> bool {
        true
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, _: &'a mut Exchange) -> Hook<'a> {
        match self.delay {
            None => self.response().into(),
            Some(delay) => Hook::Wait(Box::pin(async move {
                tokio::time::sleep(delay).await;
                Flow::Respond(self.response())
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<MockResponse>()
    }

    fn respond(settings: &str) -> PolicyResponse {
        let policy = build_policy(entry(), settings).expect("valid settings");
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        match run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:5000")) {
            Flow::Respond(response) => response,
            Flow::Continue => panic!("a mock always answers"),
        }
    }

    #[test]
    fn answers_200_with_an_empty_body_by_default() {
        let response = respond("");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_empty());
        assert!(response.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn answers_with_the_configured_status_headers_and_text_body() {
        let response = respond("status: 418\nheaders: {X-Mock: 'yes'}\nbody: I am a teapot");
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(response.headers()["x-mock"], "yes");
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(response.body(), "I am a teapot");
    }

    #[test]
    fn serializes_a_yaml_value_as_json() {
        let response = respond("json:\n  id: 7\n  tags: [a, b]\n  ok: true");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json body");
        assert_eq!(body, serde_json::json!({"id": 7, "tags": ["a", "b"], "ok": true}));
    }

    #[test]
    fn keeps_a_configured_content_type() {
        let response = respond("headers: {Content-Type: application/vnd.api+json}\njson: {data: []}");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/vnd.api+json");
    }

    #[test]
    fn answers_the_same_response_every_time() {
        let policy = build_policy(entry(), "body: same").expect("valid settings");
        for _ in 0..2 {
            let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
            let Flow::Respond(response) = run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:1")) else {
                panic!("a mock always answers");
            };
            assert_eq!(response.body(), "same");
        }
    }

    #[tokio::test]
    async fn waits_for_the_delay_before_answering() {
        let policy = build_policy(entry(), "delay: 30ms\nstatus: 503").expect("valid settings");
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        let mut exchange = exchange_from("10.0.0.1:5000");
        let started = std::time::Instant::now();
        let hook = policy.on_request(&mut request, &mut exchange);
        assert!(matches!(hook, Hook::Wait(_)), "a delayed mock must not answer at once");
        let Flow::Respond(response) = hook.resolve().await else { panic!("a mock always answers") };
        assert!(started.elapsed() >= std::time::Duration::from_millis(30));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn answers_at_once_without_a_delay() {
        let policy = build_policy(entry(), "delay: 0s").expect("valid settings");
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        let mut exchange = exchange_from("10.0.0.1:1");
        let hook = policy.on_request(&mut request, &mut exchange);
        assert!(matches!(hook, Hook::Done(Flow::Respond(_))));
    }

    #[test]
    fn answers_every_request_in_the_forward_stage() {
        assert_eq!(entry().stage, Stage::Forward);
        let policy = build_policy(entry(), "").expect("valid");
        assert_eq!(policy.hooks(), Hooks::REQUEST);
        assert!(policy.answers_every_request());
    }

    #[test]
    fn rejects_body_and_json_together_at_the_json_path() {
        let errors = build_policy_error(entry(), "body: text\njson: {a: 1}");
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].mock_response.json");
    }

    #[test]
    fn rejects_an_informational_status() {
        let errors = build_policy_error(entry(), "status: 101");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].mock_response.status");
    }

    #[test]
    fn rejects_a_body_on_a_204() {
        let errors = build_policy_error(entry(), "status: 204\nbody: nope");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].mock_response.body");
    }

    #[test]
    fn rejects_a_bad_header_name_at_its_path() {
        let errors = build_policy_error(entry(), "headers: {'x y': z}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].mock_response.headers.x y");
    }

    #[test]
    fn rejects_a_bad_delay_at_its_path() {
        let errors = build_policy_error(entry(), "delay: 5");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].mock_response.delay");
    }
}

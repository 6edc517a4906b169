#![doc = include_str!("request_size_limit.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::header::CONTENT_LENGTH;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `request_size_limit`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest request body accepted, in bytes (more than 0). A larger body is answered with 413.
    pub max_body_bytes: u64,
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.max_body_bytes == 0 {
            errors
                .push(path.key("max_body_bytes"), "must be more than 0 (to refuse bodies, use a route `methods` list)");
        }
    }
}

/// Factory of the `request_size_limit` policy.
#[derive(Debug)]
pub struct RequestSizeLimit;

impl PolicyFactory for RequestSizeLimit {
    const NAME: &'static str = "request_size_limit";
    const STAGE: Stage = Stage::Traffic;
    const DOCS: &'static str = include_str!("request_size_limit.md");
    type Config = Config;

    fn build(config: Config, _: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(CompiledRequestSizeLimit { max_body_bytes: config.max_body_bytes }))
    }
}

/// Runs per request: reads one header, allocates only to deny.
struct CompiledRequestSizeLimit {
    max_body_bytes: u64,
}

impl Policy for CompiledRequestSizeLimit {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        // The HTTP engine has already rejected a malformed or conflicting Content-Length, so an
        // unreadable one here can only be absent; the streamed-body limit still applies.
        let declared = request
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok());
        if let Some(length) = declared.filter(|length| *length > self.max_body_bytes) {
            tracing::debug!(content_length = length, max_body_bytes = self.max_body_bytes, "request body too large");
            let detail = format!("the request body is {length} bytes; at most {} are accepted", self.max_body_bytes);
            return problem_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request-body-too-large",
                "Request body too large",
                Some(&detail),
            )
            .into();
        }
        // A chunked body declares no length: the data plane counts it as it streams and cuts it
        // off with 413 past the limit, without buffering it.
        exchange.limit_request_body(self.max_body_bytes);
        Hook::Done(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<RequestSizeLimit>()
    }

    fn post(content_length: Option<&str>) -> RequestParts {
        let mut builder = http::Request::post("/upload");
        if let Some(length) = content_length {
            builder = builder.header(CONTENT_LENGTH, length);
        }
        request_parts(builder.body(()).expect("request"))
    }

    #[test]
    fn answers_413_at_once_when_content_length_exceeds_the_limit() {
        let policy = build_policy(entry(), "max_body_bytes: 1024").expect("valid settings");
        let mut exchange = exchange_from("10.0.0.1:5000");
        let Flow::Respond(response) = run_request(&*policy, &mut post(Some("1025")), &mut exchange) else {
            panic!("a 1025-byte body must be refused");
        };
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
        assert_eq!(body["type"], "https://gantry.dev/problems/request-body-too-large");
        assert_eq!(body["detail"], "the request body is 1025 bytes; at most 1024 are accepted");
    }

    #[test]
    fn lets_a_body_at_the_limit_through_and_sets_the_streaming_limit() {
        let policy = build_policy(entry(), "max_body_bytes: 1024").expect("valid settings");
        let mut exchange = exchange_from("10.0.0.1:5000");
        let flow = run_request(&*policy, &mut post(Some("1024")), &mut exchange);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(exchange.request_body_limit, Some(1024));
    }

    #[test]
    fn limits_a_chunked_body_without_content_length() {
        let policy = build_policy(entry(), "max_body_bytes: 10").expect("valid settings");
        let mut exchange = exchange_from("10.0.0.1:5000");
        let flow = run_request(&*policy, &mut post(None), &mut exchange);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(exchange.request_body_limit, Some(10));
    }

    #[test]
    fn keeps_a_tighter_limit_set_by_an_earlier_policy() {
        let policy = build_policy(entry(), "max_body_bytes: 1000").expect("valid settings");
        let mut exchange = exchange_from("10.0.0.1:5000");
        exchange.limit_request_body(100);
        run_request(&*policy, &mut post(None), &mut exchange);
        assert_eq!(exchange.request_body_limit, Some(100));
    }

    #[test]
    fn rejects_a_zero_limit_at_its_path() {
        let errors = build_policy_error(entry(), "max_body_bytes: 0");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].request_size_limit.max_body_bytes");
    }

    #[test]
    fn rejects_settings_without_a_limit() {
        let errors = build_policy_error(entry(), "");
        assert!(errors.0[0].message.contains("max_body_bytes"), "{errors}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].request_size_limit");
    }

    #[test]
    fn rejects_a_negative_limit_at_its_path() {
        let errors = build_policy_error(entry(), "max_body_bytes: -1");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].request_size_limit.max_body_bytes");
    }

    #[test]
    fn implements_only_the_request_hook() {
        let policy = build_policy(entry(), "max_body_bytes: 1").expect("valid settings");
        assert_eq!(policy.hooks(), Hooks::REQUEST);
    }
}

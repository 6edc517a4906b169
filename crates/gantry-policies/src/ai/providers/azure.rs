//! Azure OpenAI: OpenAI's bodies, answers and streams, at Azure's paths. A deployment is
//! addressed as `/openai/deployments/{deployment}/chat/completions?api-version={version}`
//! (and `/completions`, `/embeddings`), or, with `api_version: v1`, through the v1 API at
//! `/openai/v1/chat/completions` with the model in the body and no `api-version`. The key
//! goes in `api-key`. Azure's content filter results (`prompt_filter_results`,
//! `content_filter_results`, `finish_reason: content_filter`) and its filter errors (`code:
//! content_filter` with `innererror`) reach the client as Azure sent them.

use gantry_config::{ConfigErrors, FieldPath};
use http::header::HeaderName;
use http::StatusCode;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai::OpenAi;
use super::{Adapter, ChatRequest, Operation, Provider, StreamTranslator, TargetInfo};

/// The `api-version` used when the target names none: the latest generally available one.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The `api_version` that selects the v1 API.
const V1: &str = "v1";

/// A path segment keeps unreserved characters only (RFC 3986).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The `azure` settings of a target.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// The `api-version` query parameter of the deployments API, or `v1` for the v1 API
    /// (`/openai/v1/...`, the target's `model` in the body, no `api-version`).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The deployment name; the target's `model` when absent. Not used by the v1 API.
    #[serde(default)]
    pub deployment: Option<String>,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_owned()
}

/// Where an Azure target's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureApi {
    /// `/deployments/{deployment}/...?api-version={api_version}`, both already encoded.
    Deployment { deployment: String, api_version: String },
    /// `/v1/...`.
    V1,
}

impl AzureApi {
    /// The API of an `azure_openai` target, from its `azure` settings (defaults when absent).
    pub fn of(config: Option<&AzureConfig>, model: &str) -> Self {
        let api_version = config.map_or(DEFAULT_API_VERSION, |config| config.api_version.as_str());
        if api_version == V1 {
            return AzureApi::V1;
        }
        let deployment = config.and_then(|config| config.deployment.as_deref()).unwrap_or(model);
        AzureApi::Deployment {
            deployment: utf8_percent_encode(deployment, SEGMENT).to_string(),
            api_version: utf8_percent_encode(api_version, SEGMENT).to_string(),
        }
    }
}

/// Checks a target's `azure` settings.
pub fn validate(provider: Provider, config: Option<&AzureConfig>, at: &FieldPath, errors: &mut ConfigErrors) {
    let Some(config) = config else {
        return;
    };
    let at = at.key("azure");
    if provider != Provider::AzureOpenai {
        errors.push(at, "only a target with `provider: azure_openai` takes `azure`");
        return;
    }
    let version = &config.api_version;
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        errors.push(at.key("api_version"), format!("`{version}` is not an API version (like `2024-10-21` or `v1`)"));
    }
    if config.deployment.as_deref().is_some_and(str::is_empty) {
        errors.push(at.key("deployment"), "must not be empty");
    }
}

/// The Azure OpenAI format.
#[derive(Debug)]
pub struct AzureOpenAi;

impl Adapter for AzureOpenAi {
    fn serves(&self, _operation: Operation) -> bool {
        true
    }

    fn path(&self, target: &TargetInfo, operation: Operation, _streamed: bool) -> String {
        let suffix = match operation {
            Operation::Chat => "chat/completions",
            Operation::Completion => "completions",
            Operation::Embeddings => "embeddings",
        };
        match target.azure.as_ref().unwrap_or(&AzureApi::V1) {
            AzureApi::Deployment { deployment, api_version } => {
                format!("{}/deployments/{deployment}/{suffix}?api-version={api_version}", target.base_path)
            }
            AzureApi::V1 => format!("{}/v1/{suffix}", target.base_path),
        }
    }

    fn auth(&self, key: &str) -> (HeaderName, String) {
        (HeaderName::from_static("api-key"), key.to_owned())
    }

    fn request(
        &self,
        target: &TargetInfo,
        operation: Operation,
        request: &ChatRequest,
        streamed: bool,
    ) -> Result<Vec<u8>, String> {
        // The deployments API ignores `model`; the v1 API needs it (the deployment's name).
        OpenAi.request(target, operation, request, streamed)
    }

    fn response(&self, target: &TargetInfo, operation: Operation, body: &[u8]) -> Result<Value, String> {
        OpenAi.response(target, operation, body)
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
        error(status, body)
    }

    fn stream(&self, target: &TargetInfo, operation: Operation) -> Box<dyn StreamTranslator> {
        OpenAi.stream(target, operation)
    }
}

/// Azure's error object passes on whole (its `code`, `param` and `innererror` with the
/// content filter's verdict), with a `type` added where Azure leaves it out or null.
pub fn error(status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some(Value::Object(mut error)) = parsed.and_then(|mut body| body.get_mut("error").map(Value::take)) else {
        return super::openai_error_from(status, body, &["error", "message"], &["error", "type"]);
    };
    if !error.get("message").is_some_and(Value::is_string) {
        let message = format!("the provider answered {status}");
        error.insert("message".to_owned(), Value::String(message));
    }
    if !error.get("type").is_some_and(Value::is_string) {
        let kind = match error.get("code").and_then(Value::as_str) {
            Some("content_filter") => "invalid_request_error",
            _ => crate::ai::openai::error_kind(status),
        };
        error.insert("type".to_owned(), json!(kind));
    }
    (status, json!({ "error": error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(azure: AzureApi) -> TargetInfo {
        let mut target = TargetInfo::for_tests(Provider::AzureOpenai, "gpt-4o-mini");
        target.azure = Some(azure);
        target
    }

    #[test]
    fn deployment_paths_carry_the_api_version() {
        let config: AzureConfig = serde_json::from_value(json!({"deployment": "prod gpt/4o"})).expect("config");
        let deployed = target(AzureApi::of(Some(&config), "gpt-4o-mini"));
        assert_eq!(
            AzureOpenAi.path(&deployed, Operation::Chat, false),
            "/openai/deployments/prod%20gpt%2F4o/chat/completions?api-version=2024-10-21"
        );
        let by_model = target(AzureApi::of(None, "gpt-4o-mini"));
        assert_eq!(
            AzureOpenAi.path(&by_model, Operation::Embeddings, false),
            "/openai/deployments/gpt-4o-mini/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            AzureOpenAi.path(&by_model, Operation::Completion, true),
            "/openai/deployments/gpt-4o-mini/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn the_v1_api_has_no_api_version_and_names_the_model_in_the_body() {
        let config: AzureConfig = serde_json::from_value(json!({"api_version": "v1"})).expect("config");
        let v1 = target(AzureApi::of(Some(&config), "gpt-4o-mini"));
        assert_eq!(AzureOpenAi.path(&v1, Operation::Chat, true), "/openai/v1/chat/completions");
        let request: ChatRequest =
            serde_json::from_str(r#"{"model":"alias","stream":true,"messages":[]}"#).expect("json");
        let sent: Value =
            serde_json::from_slice(&AzureOpenAi.request(&v1, Operation::Chat, &request, true).expect("body"))
                .expect("json");
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(sent["stream_options"]["include_usage"], true, "Azure streams report usage when asked");
    }

    #[test]
    fn keys_go_in_api_key() {
        let (name, value) = AzureOpenAi.auth("k-1");
        assert_eq!((name.as_str(), value.as_str()), ("api-key", "k-1"));
    }

    #[test]
    fn content_filter_errors_pass_on_with_their_verdict() {
        // Azure's documented answer to a prompt its filter blocks.
        let body = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}}}"#;
        let (status, answer) = error(StatusCode::BAD_REQUEST, body);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"]["code"], "content_filter");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        assert_eq!(answer["error"]["innererror"]["content_filter_result"]["hate"]["filtered"], true);
        assert!(answer["error"]["message"].as_str().is_some_and(|message| message.contains("content management")));
        let (status, answer) = error(StatusCode::TOO_MANY_REQUESTS, b"not json");
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(answer["error"]["message"].is_string());
    }

    #[test]
    fn filtered_stream_chunks_pass_on_as_they_are() {
        let mut stream = AzureOpenAi.stream(&target(AzureApi::V1), Operation::Chat);
        // Azure's first chunk carries the prompt's filter results and no choices.
        let prompt_results = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}]});
        assert_eq!(stream.event("message", &prompt_results.to_string()), vec![prompt_results]);
        let filtered = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter",
                "content_filter_results": {"violence": {"filtered": true, "severity": "medium"}}}]});
        assert_eq!(stream.event("message", &filtered.to_string()), vec![filtered]);
    }

    #[test]
    fn settings_are_checked() {
        let mut errors = ConfigErrors::default();
        let bad: AzureConfig =
            serde_json::from_value(json!({"api_version": "2024-10-21&x=1", "deployment": ""})).expect("config");
        let at = FieldPath::root().key("targets").index(0);
        validate(Provider::AzureOpenai, Some(&bad), &at, &mut errors);
        validate(Provider::Openai, Some(&bad), &at, &mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        assert!(text.contains("azure.api_version"), "{text}");
        assert!(text.contains("azure.deployment"), "{text}");
        assert!(text.contains("only a target with `provider: azure_openai`"), "{text}");
        assert!(serde_json::from_value::<AzureConfig>(json!({"version": "v1"})).is_err(), "unknown fields are refused");
    }
}

#![doc = include_str!("body_transform.md")]

mod json_path;
mod operations;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestBody, RequestParts,
    ResponseParts, Stage, Validate,
};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

pub use operations::{FilterAction, FilterOp, MapValuesOp, MoveOp, Operation, PutOp, RenameOp};

use self::operations::{Facts, Operations};
use crate::validate::MediaTypes;

/// Settings of `body_transform`. Give `request`, `response` or both.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Operations applied, in order, to JSON request bodies before they go upstream.
    #[serde(default)]
    pub request: Vec<Operation>,
    /// Operations applied, in order, to JSON upstream response bodies before they go to the
    /// client.
    #[serde(default)]
    pub response: Vec<Operation>,
    /// Largest body transformed, in bytes: a longer request body is answered with 413, a
    /// longer response body with 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// What happens to a request body that is not JSON: `pass` (unchanged) or `reject` (415).
    #[serde(default)]
    pub non_json_request: NonJson,
}

/// What happens to a request body that is not JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NonJson {
    /// Forwarded unchanged.
    #[default]
    Pass,
    /// Answered with 415.
    Reject,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.request.is_empty() && self.response.is_empty() {
            errors.push(path.clone(), "give `request` or `response` operations, or both");
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
    }
}

/// Factory of the `body_transform` policy.
#[derive(Debug)]
pub struct BodyTransform;

impl PolicyFactory for BodyTransform {
    const NAME: &'static str = "body_transform";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("body_transform.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let request = Operations::compile(&config.request, true, &path.key("request"), &mut errors);
        let response = Operations::compile(&config.response, false, &path.key("response"), &mut errors);
        let json_types =
            MediaTypes::parse(&["application/json".to_owned(), "application/*+json".to_owned()], path, &mut errors);
        errors.into_result(Arc::new(CompiledBodyTransform {
            request,
            response,
            max_body_bytes: config.max_body_bytes,
            non_json_request: config.non_json_request,
            json_types,
        }) as Arc<dyn Policy>)
    }
}

/// Runs per request: paths, templates and patterns are compiled at build time; a body is
/// parsed once, changed in place and written once.
struct CompiledBodyTransform {
    request: Operations,
    response: Operations,
    max_body_bytes: u64,
    non_json_request: NonJson,
    json_types: MediaTypes,
}

/// A response body this policy rewrote, waiting for the response hook to send it, with the
/// status and content type it was made for: a response another policy put in its place after
/// the body was read is not given it.
struct TransformedResponse {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

// `Extensions` needs `Clone`; the body is shared, not copied.
impl Clone for TransformedResponse {
    fn clone(&self) -> Self {
        Self { status: self.status, content_type: self.content_type.clone(), body: self.body.clone() }
    }
}

fn has_body(request: &RequestParts) -> bool {
    request.headers.contains_key(TRANSFER_ENCODING)
        || request
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok())
            .is_some_and(|length| length.trim() != "0")
}

fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_ENCODING).is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

impl CompiledBodyTransform {
    fn transforms_request(&self, request: &RequestParts) -> bool {
        !self.request.is_empty() && self.json_types.matches(&request.headers) && !is_encoded(&request.headers)
    }

    fn transform_request(&self, request: &mut RequestParts, exchange: &mut Exchange) -> Option<PolicyResponse> {
        let body = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
        if body.is_empty() {
            return None;
        }
        let mut document: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(document) => document,
            Err(err) => {
                let detail = format!("the request body is not valid JSON: {err}");
                return Some(problem_response(StatusCode::BAD_REQUEST, "invalid-json", "Bad Request", Some(&detail)));
            }
        };
        let facts = Facts { exchange, headers: Some(&request.headers) };
        self.request.apply(&mut document, &facts);
        let rewritten = match serde_json::to_vec(&document) {
            Ok(bytes) => Bytes::from(bytes),
            Err(err) => {
                tracing::warn!(route = %exchange.route_id, error = %err, "transformed request body not written");
                return None;
            }
        };
        request.headers.insert(CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
        request.headers.remove(TRANSFER_ENCODING);
        exchange.extensions.insert(RequestBody(rewritten));
        None
    }
}

impl Policy for CompiledBodyTransform {
    fn hooks(&self) -> Hooks {
        Hooks { request: !self.request.is_empty(), response: !self.response.is_empty(), log: false }
    }

    fn reads_request_body(&self) -> bool {
        !self.request.is_empty()
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        self.transforms_request(request).then_some(self.max_body_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if self.transforms_request(request) {
            if let Some(answer) = self.transform_request(request, exchange) {
                return answer.into();
            }
        } else if self.non_json_request == NonJson::Reject && has_body(request) {
            let detail = "this route transforms JSON request bodies; send `Content-Type: application/json` \
                          without a `Content-Encoding`";
            return problem_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Media Type",
                Some(detail),
            )
            .into();
        }
        Hook::Done(Flow::Continue)
    }

    fn reads_response_body(&self) -> bool {
        !self.response.is_empty()
    }

    fn response_body_limit(&self, response: &ResponseParts, _: &Exchange) -> Option<u64> {
        let transforms =
            !self.response.is_empty() && self.json_types.matches(&response.headers) && !is_encoded(&response.headers);
        transforms.then_some(self.max_body_bytes)
    }

    fn on_response_body(
        &self,
        response: &ResponseParts,
        body: &Bytes,
        exchange: &mut Exchange,
    ) -> Option<PolicyResponse> {
        if body.is_empty() {
            return None;
        }
        let mut document: serde_json::Value = match serde_json::from_slice(body) {
            Ok(document) => document,
            Err(err) => {
                // The upstream's answer is passed on as it came: the client may make sense of it.
                tracing::debug!(route = %exchange.route_id, error = %err, "response body is not JSON; not transformed");
                return None;
            }
        };
        self.response.apply(&mut document, &Facts { exchange, headers: None });
        match serde_json::to_vec(&document) {
            Ok(bytes) => {
                let content_type = response.headers.get(CONTENT_TYPE).cloned();
                let transformed = TransformedResponse { status: response.status, content_type, body: bytes.into() };
                exchange.extensions.insert(transformed);
            }
            Err(err) => {
                tracing::warn!(route = %exchange.route_id, error = %err, "transformed response body not written")
            }
        }
        None
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Some(transformed) = exchange.extensions.remove::<TransformedResponse>() else { return };
        if transformed.status != response.status
            || transformed.content_type.as_ref() != response.headers.get(CONTENT_TYPE)
        {
            return;
        }
        response.headers.insert(CONTENT_LENGTH, HeaderValue::from(transformed.body.len()));
        response.headers.remove(TRANSFER_ENCODING);
        replace_response_body(exchange, transformed.body);
    }
}

//! The plumbing shared by policies that rewrite JSON request and response bodies
//! (`body_transform`, `jolt`): which bodies are JSON, reading them within a size limit,
//! answering bodies that are not JSON, and handing a rewritten response body to the response
//! hook. Each policy only says how a parsed document changes.

use bytes::Bytes;
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    Exchange, Flow, Hook, Hooks, Policy, PolicyResponse, RequestBody, RequestParts, ResponseParts,
};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::validate::MediaTypes;

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

/// How one policy changes parsed JSON bodies.
pub(crate) trait JsonRewrite: Send + Sync + 'static {
    fn rewrites_request(&self) -> bool;
    fn rewrites_response(&self) -> bool;
    fn rewrite_request(&self, document: &mut serde_json::Value, request: &RequestParts, exchange: &Exchange);
    fn rewrite_response(&self, document: &mut serde_json::Value, exchange: &Exchange);
}

/// A policy that parses JSON bodies, lets `rewrite` change them and writes them back once.
pub(crate) struct JsonBodyPolicy<R> {
    pub(crate) rewrite: R,
    pub(crate) max_body_bytes: u64,
    pub(crate) non_json_request: NonJson,
    pub(crate) json_types: MediaTypes,
}

impl<R> JsonBodyPolicy<R> {
    pub(crate) fn new(
        rewrite: R,
        max_body_bytes: u64,
        non_json_request: NonJson,
        path: &gantry_config::FieldPath,
        errors: &mut gantry_config::ConfigErrors,
    ) -> Self {
        let json_types =
            MediaTypes::parse(&["application/json".to_owned(), "application/*+json".to_owned()], path, errors);
        Self { rewrite, max_body_bytes, non_json_request, json_types }
    }
}

/// A response body rewritten by a policy, waiting for the response hook to send it, with the
/// status and content type it was made for: a response another policy put in its place after
/// the body was read is not given it. Keyed by the policy's rewrite type, so two such policies
/// on one route do not take each other's bodies.
struct RewrittenResponse<R> {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    rewrite: std::marker::PhantomData<fn() -> R>,
}

// `Extensions` needs `Clone`; the body is shared, not copied.
impl<R> Clone for RewrittenResponse<R> {
    fn clone(&self) -> Self {
        Self {
            status: self.status,
            content_type: self.content_type.clone(),
            body: self.body.clone(),
            rewrite: std::marker::PhantomData,
        }
    }
}

pub(crate) fn has_body(request: &RequestParts) -> bool {
    request.headers.contains_key(TRANSFER_ENCODING)
        || request
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok())
            .is_some_and(|length| length.trim() != "0")
}

pub(crate) fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_ENCODING).is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

impl<R: JsonRewrite> JsonBodyPolicy<R> {
    fn transforms_request(&self, request: &RequestParts) -> bool {
        self.rewrite.rewrites_request() && self.json_types.matches(&request.headers) && !is_encoded(&request.headers)
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
        self.rewrite.rewrite_request(&mut document, request, exchange);
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

impl<R: JsonRewrite> Policy for JsonBodyPolicy<R> {
    fn hooks(&self) -> Hooks {
        Hooks { request: self.rewrite.rewrites_request(), response: self.rewrite.rewrites_response(), log: false }
    }

    fn reads_request_body(&self) -> bool {
        self.rewrite.rewrites_request()
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
        self.rewrite.rewrites_response()
    }

    fn response_body_limit(&self, response: &ResponseParts, _: &Exchange) -> Option<u64> {
        let transforms = self.rewrite.rewrites_response()
            && self.json_types.matches(&response.headers)
            && !is_encoded(&response.headers);
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
        self.rewrite.rewrite_response(&mut document, exchange);
        match serde_json::to_vec(&document) {
            Ok(bytes) => {
                let content_type = response.headers.get(CONTENT_TYPE).cloned();
                let rewritten = RewrittenResponse::<R> {
                    status: response.status,
                    content_type,
                    body: bytes.into(),
                    rewrite: std::marker::PhantomData,
                };
                exchange.extensions.insert(rewritten);
            }
            Err(err) => {
                tracing::warn!(route = %exchange.route_id, error = %err, "transformed response body not written")
            }
        }
        None
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Some(rewritten) = exchange.extensions.remove::<RewrittenResponse<R>>() else { return };
        if rewritten.status != response.status || rewritten.content_type.as_ref() != response.headers.get(CONTENT_TYPE)
        {
            return;
        }
        response.headers.insert(CONTENT_LENGTH, HeaderValue::from(rewritten.body.len()));
        response.headers.remove(TRANSFER_ENCODING);
        replace_response_body(exchange, rewritten.body);
    }
}

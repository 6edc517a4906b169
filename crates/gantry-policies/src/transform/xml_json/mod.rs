//! What `json_to_xml` and `xml_to_json` share: the mapping, and the runtime that converts
//! request and response bodies of one media type into the other.

pub(crate) mod mapping;

use bytes::Bytes;
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    Exchange, Flow, Hook, Hooks, Policy, PolicyResponse, RequestBody, RequestParts, ResponseParts,
};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderValue, StatusCode};

use self::mapping::Mapping;
use crate::validate::MediaTypes;

/// Which way a policy converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    JsonToXml,
    XmlToJson,
}

/// A built `json_to_xml` or `xml_to_json` policy.
pub(crate) struct Conversion {
    pub(crate) direction: Direction,
    pub(crate) mapping: Mapping,
    pub(crate) request: bool,
    pub(crate) response: bool,
    pub(crate) max_body_bytes: u64,
    /// The media types converted.
    pub(crate) from: MediaTypes,
    /// The `Content-Type` of a converted body.
    pub(crate) to: HeaderValue,
}

/// A response body this policy converted, waiting for the response hook, with the status and
/// content type it was made from: a response another policy put in its place is left alone.
#[derive(Clone)]
struct ConvertedResponse {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_ENCODING).is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

impl Conversion {
    fn convert(&self, body: &[u8]) -> Result<Bytes, String> {
        match self.direction {
            Direction::XmlToJson => {
                let value = mapping::xml_to_json(body, &self.mapping)?;
                serde_json::to_vec(&value).map(Bytes::from).map_err(|err| err.to_string())
            }
            Direction::JsonToXml => {
                let value: serde_json::Value =
                    serde_json::from_slice(body).map_err(|err| format!("not valid JSON: {err}"))?;
                mapping::json_to_xml(&value, &self.mapping).map(Bytes::from)
            }
        }
    }

    fn source_name(&self) -> &'static str {
        match self.direction {
            Direction::XmlToJson => "XML",
            Direction::JsonToXml => "JSON",
        }
    }

    fn converts(&self, headers: &http::HeaderMap) -> bool {
        self.from.matches(headers) && !is_encoded(headers)
    }
}

impl Policy for Conversion {
    fn hooks(&self) -> Hooks {
        Hooks { request: self.request, response: self.response, log: false }
    }

    fn reads_request_body(&self) -> bool {
        self.request
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        (self.request && self.converts(&request.headers)).then_some(self.max_body_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if !self.converts(&request.headers) {
            return Hook::Done(Flow::Continue);
        }
        let Some(RequestBody(body)) = exchange.extensions.get::<RequestBody>() else {
            return Hook::Done(Flow::Continue);
        };
        if body.is_empty() {
            return Hook::Done(Flow::Continue);
        }
        match self.convert(body) {
            Ok(converted) => {
                request.headers.insert(CONTENT_TYPE, self.to.clone());
                request.headers.insert(CONTENT_LENGTH, HeaderValue::from(converted.len()));
                request.headers.remove(TRANSFER_ENCODING);
                exchange.extensions.insert(RequestBody(converted));
                Hook::Done(Flow::Continue)
            }
            Err(reason) => {
                let detail = format!("the {} request body cannot be converted: {reason}", self.source_name());
                problem_response(StatusCode::BAD_REQUEST, "body-not-convertible", "Bad Request", Some(&detail)).into()
            }
        }
    }

    fn reads_response_body(&self) -> bool {
        self.response
    }

    fn response_body_limit(&self, response: &ResponseParts, _: &Exchange) -> Option<u64> {
        (self.response && self.converts(&response.headers)).then_some(self.max_body_bytes)
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
        match self.convert(body) {
            Ok(converted) => {
                let content_type = response.headers.get(CONTENT_TYPE).cloned();
                exchange.extensions.insert(ConvertedResponse {
                    status: response.status,
                    content_type,
                    body: converted,
                });
                None
            }
            Err(reason) => {
                tracing::warn!(route = %exchange.route_id, %reason, "upstream response body not converted");
                let detail = format!("the upstream's {} response body cannot be converted", self.source_name());
                Some(problem_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream-body-not-convertible",
                    "Bad Gateway",
                    Some(&detail),
                ))
            }
        }
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Some(converted) = exchange.extensions.remove::<ConvertedResponse>() else { return };
        if converted.status != response.status || converted.content_type.as_ref() != response.headers.get(CONTENT_TYPE)
        {
            return;
        }
        response.headers.insert(CONTENT_TYPE, self.to.clone());
        response.headers.insert(CONTENT_LENGTH, HeaderValue::from(converted.body.len()));
        response.headers.remove(TRANSFER_ENCODING);
        replace_response_body(exchange, converted.body);
    }
}

#[cfg(test)]
mod tests;

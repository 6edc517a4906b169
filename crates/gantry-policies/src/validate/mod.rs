//! Validate-stage policies: checking what a request carries (its body's shape and size,
//! its parameters against a schema) before it goes upstream, after every transformation.
//!
//! Policies that check a body ask the data plane for it through
//! [`Policy::request_body_limit`](gantry_policy_api::Policy::request_body_limit), bounded by
//! their own size limit, and find it in the exchange as a [`RequestBody`].

pub mod json_schema;
pub mod json_threat_protection;
pub mod openapi_validation;
pub(crate) mod schema;
pub mod xml_threat_protection;
pub mod xsd;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::PROBLEM_JSON;
use gantry_policy_api::{Exchange, PolicyResponse, RequestBody, RequestParts};
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::StatusCode;

/// Media types a policy applies to: exact (`application/json`) or by structured-syntax
/// suffix (`application/*+json`), compared without parameters and case-insensitively.
#[derive(Clone, Debug, Default)]
pub(crate) struct MediaTypes {
    exact: Vec<String>,
    /// `(type/, +suffix)` of each `type/*+suffix` pattern.
    suffixed: Vec<(String, String)>,
}

impl MediaTypes {
    /// Parses `patterns`, reporting each malformed one at its index below `path`.
    pub(crate) fn parse(patterns: &[String], path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut types = Self::default();
        for (index, pattern) in patterns.iter().enumerate() {
            let pattern = pattern.trim().to_ascii_lowercase();
            let Some((kind, subtype)) = pattern.split_once('/') else {
                errors.push(path.index(index), format!("`{pattern}` is not a media type (`type/subtype`)"));
                continue;
            };
            let is_token = |text: &str| {
                !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            if let Some(suffix) = subtype.strip_prefix("*+") {
                if is_token(kind) && is_token(suffix) {
                    types.suffixed.push((format!("{kind}/"), format!("+{suffix}")));
                    continue;
                }
            } else if is_token(kind) && is_token(subtype) {
                types.exact.push(pattern);
                continue;
            }
            errors.push(
                path.index(index),
                format!("`{pattern}` is not a media type: write `type/subtype` or `type/*+suffix`"),
            );
        }
        types
    }

    /// Whether the request's `Content-Type` is one of these types.
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        let Some(media_type) = media_type(headers) else { return false };
        self.exact.iter().any(|exact| media_type.eq_ignore_ascii_case(exact))
            || self.suffixed.iter().any(|(kind, suffix)| {
                media_type.len() > kind.len() + suffix.len()
                    && media_type[..kind.len()].eq_ignore_ascii_case(kind)
                    && media_type[media_type.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            })
    }
}

/// The media type of `Content-Type`, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next().unwrap_or_default().trim();
    (!media_type.is_empty()).then_some(media_type)
}

/// The body length the request declares, if it declares one.
pub(crate) fn declared_length(request: &RequestParts) -> Option<u64> {
    request.headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// How much of this request's body a validating policy with this bound asks for: the bound,
/// unless the declared length already exceeds it, so that body is refused from the head alone
/// and never read.
pub(crate) fn body_limit(request: &RequestParts, max_body_bytes: u64) -> Option<u64> {
    declared_length(request).is_none_or(|length| length <= max_body_bytes).then_some(max_body_bytes)
}

/// The refusal of a body longer than `max_body_bytes`: by its declared length, or by what was
/// read (another policy may have asked for more of it than this one accepts).
pub(crate) fn oversized(request: &RequestParts, body: Option<&Bytes>, max_body_bytes: u64) -> Option<Exceeded> {
    let too_long = |length: &u64| *length > max_body_bytes;
    let length =
        declared_length(request).filter(too_long).or_else(|| body.map(|body| body.len() as u64).filter(too_long))?;
    Some(body_too_large(length, max_body_bytes))
}

/// The body the data plane read for this request because a policy asked for it.
pub(crate) fn request_body(exchange: &Exchange) -> Option<&Bytes> {
    exchange.extensions.get::<RequestBody>().map(|body| &body.0)
}

/// An RFC 9457 problem response with extension members beside the standard ones.
pub(crate) fn problem_with(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> PolicyResponse {
    let mut document = serde_json::Map::new();
    document.insert("type".into(), format!("https://gantry.dev/problems/{code}").into());
    document.insert("title".into(), title.into());
    document.insert("status".into(), status.as_u16().into());
    document.insert("detail".into(), detail.into());
    document.extend(extensions);
    let body = serde_json::to_vec(&document).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = PolicyResponse::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// A limit of a threat-protection policy that a body went past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exceeded {
    /// The setting's name (`max_depth`).
    pub(crate) limit: &'static str,
    /// Its configured value.
    pub(crate) allowed: u64,
    /// What went past it, for the problem's detail.
    pub(crate) detail: String,
}

impl Exceeded {
    /// The answer for a body past this limit: 413 for its size, 400 for its structure, with
    /// the limit named in the problem's `limit` member.
    pub(crate) fn response(&self, code: &str, title: &str) -> PolicyResponse {
        let (status, code, title) = if self.limit == "max_body_bytes" {
            (StatusCode::PAYLOAD_TOO_LARGE, "request-body-too-large", "Content Too Large")
        } else {
            (StatusCode::BAD_REQUEST, code, title)
        };
        let mut extensions = serde_json::Map::new();
        extensions.insert("limit".into(), self.limit.into());
        extensions.insert("allowed".into(), self.allowed.into());
        problem_with(status, code, title, &self.detail, extensions)
    }
}

/// A body too large for `max_body_bytes`.
pub(crate) fn body_too_large(length: u64, max_body_bytes: u64) -> Exceeded {
    Exceeded {
        limit: "max_body_bytes",
        allowed: max_body_bytes,
        detail: format!("the request body is {length} bytes; at most {max_body_bytes} are accepted"),
    }
}

/// Reports a limit of 0 at `path`: every such limit must let something through.
pub(crate) fn require_positive(value: u64, path: FieldPath, errors: &mut ConfigErrors) {
    if value == 0 {
        errors.push(path, "must be more than 0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(patterns: &[&str]) -> MediaTypes {
        let patterns: Vec<String> = patterns.iter().map(|pattern| (*pattern).to_owned()).collect();
        let mut errors = ConfigErrors::default();
        let types = MediaTypes::parse(&patterns, &FieldPath::root().key("content_types"), &mut errors);
        assert!(errors.is_empty(), "{errors}");
        types
    }

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).expect("header value"));
        headers
    }

    #[test]
    fn matches_exact_types_and_suffixes_without_parameters_or_case() {
        let json = types(&["application/json", "application/*+json"]);
        assert!(json.matches(&content_type("application/json")));
        assert!(json.matches(&content_type("Application/JSON; charset=utf-8")));
        assert!(json.matches(&content_type("application/problem+json")));
        assert!(!json.matches(&content_type("application/+json")));
        assert!(!json.matches(&content_type("text/json")));
        assert!(!json.matches(&content_type("application/jsonx")));
        assert!(!json.matches(&HeaderMap::new()));
    }

    #[test]
    fn rejects_patterns_that_are_not_media_types_at_their_index() {
        let patterns = vec!["application/json".to_owned(), "json".to_owned(), "*/*".to_owned()];
        let mut errors = ConfigErrors::default();
        MediaTypes::parse(&patterns, &FieldPath::root().key("content_types"), &mut errors);
        let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
        assert_eq!(paths, ["content_types[1]", "content_types[2]"]);
    }
}

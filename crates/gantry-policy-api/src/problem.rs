//! RFC 9457 problem documents: the JSON body of every error the gateway itself produces.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use serde::Serialize;

use crate::PolicyResponse;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    /// A stable identifier of the kind of problem (`https://gantry.dev/problems/<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary, the same for every occurrence of this kind.
    pub title: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

/// A problem response with status `status`, stable `code` (e.g. `ip-denied`), title and detail.
pub fn problem_response(status: StatusCode, code: &str, title: &str, detail: Option<&str>) -> PolicyResponse {
    let problem =
        Problem { kind: format!("https://gantry.dev/problems/{code}"), title, status: status.as_u16(), detail };
    let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = PolicyResponse::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_type_title_status_and_detail() {
        let response = problem_response(StatusCode::FORBIDDEN, "ip-denied", "Forbidden", Some("10.0.0.1 is denied"));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["type"], "https://gantry.dev/problems/ip-denied");
        assert_eq!(body["status"], 403);
        assert_eq!(body["detail"], "10.0.0.1 is denied");
    }
}

//! What identity and access policies answer, in one shape: RFC 9457 problem documents with the
//! status and `WWW-Authenticate` challenge the HTTP RFCs ask for.
//!
//! 401 means "who are you?" and must carry a challenge (RFC 9110 §15.5.2); 403 means "I know
//! who you are, and no" (RFC 9110 §15.5.4). Details never echo a presented secret.

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, StatusCode};

use crate::problem::problem_response;
use crate::PolicyResponse;

/// 401 with the challenge `challenge` (`Basic realm="gantry"`, `Bearer`, `ApiKey`).
///
/// `code` is the problem's stable type (`missing-credentials`, `invalid-credentials`,
/// `invalid-token`), `detail` says what was wrong without repeating what the client sent.
pub fn unauthorized(challenge: &str, code: &str, detail: &str) -> PolicyResponse {
    let mut response = problem_response(StatusCode::UNAUTHORIZED, code, "Unauthorized", Some(detail));
    // A challenge built from settings that are not a valid header value is left out rather than
    // failing the denial; settings are checked when the policy is built.
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}

/// 403 for a recognised client that may not make this request.
pub fn forbidden(code: &str, detail: &str) -> PolicyResponse {
    problem_response(StatusCode::FORBIDDEN, code, "Forbidden", Some(detail))
}

/// The value of a `realm` parameter, quoted as RFC 9110 §11.2 asks (`"` and `\\` escaped).
pub fn quoted(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        if matches!(character, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_carries_the_challenge_and_a_problem_body() {
        let response = unauthorized(&format!("Basic realm={}", quoted("api")), "missing-credentials", "no key");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic realm=\"api\"");
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
        assert_eq!(body["type"], "https://gantry.dev/problems/missing-credentials");
        assert_eq!(body["detail"], "no key");
    }

    #[test]
    fn quotes_and_escapes_realms() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}

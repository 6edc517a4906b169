//! Admin API authentication: the first layer every admin request passes. The key comes in
//! `X-Api-Key` or `Authorization: Bearer`, and is compared in constant time. Only the
//! liveness and readiness probes are open.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Method};
use subtle::ConstantTimeEq;

use super::{AdminError, AdminState};

/// Header carrying the key (the alternative to `Authorization: Bearer`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// Paths answered without a key, for `GET` and `HEAD`: probes must work before anyone
/// configures the prober with a secret.
pub const OPEN_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Middleware: passes requests carrying the configured key, answers 401 otherwise.
pub async fn require_api_key(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let is_probe =
        matches!(*request.method(), Method::GET | Method::HEAD) && OPEN_PATHS.contains(&request.uri().path());
    if is_probe || presented_key(request.headers()).is_some_and(|key| key_matches(state.api_key(), key)) {
        Ok(next.run(request).await)
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// The key a request carries: `X-Api-Key`, else the credentials of a `Bearer` authorization.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(key) = headers.get(API_KEY_HEADER) {
        return Some(key.as_bytes());
    }
    let authorization = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, credentials) = authorization.split_at(authorization.iter().position(|b| *b == b' ')?);
    // RFC 9110 section 11.1: the scheme is case-insensitive.
    scheme.eq_ignore_ascii_case(b"bearer").then(|| credentials.trim_ascii())
}

/// Constant-time comparison, so response timing does not reveal how much of a guess was
/// right. Only the length can leak, and the length of a generated key is public anyway.
fn key_matches(expected: &[u8], presented: &[u8]) -> bool {
    expected.ct_eq(presented).into()
}

/// A new random key: 32 bytes from the operating system's CSPRNG, as 64 hex characters.
pub fn generate_api_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("valid header value"));
        headers
    }

    #[test]
    fn reads_the_key_from_x_api_key_or_a_bearer_authorization() {
        assert_eq!(presented_key(&headers("x-api-key", "k1")), Some(&b"k1"[..]));
        assert_eq!(presented_key(&headers("authorization", "Bearer k2")), Some(&b"k2"[..]));
        assert_eq!(presented_key(&headers("authorization", "bearer   k3 ")), Some(&b"k3"[..]));
        assert_eq!(presented_key(&headers("authorization", "Basic azQ=")), None);
        assert_eq!(presented_key(&headers("authorization", "Bearer")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn matches_only_the_exact_key() {
        assert!(key_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!key_matches(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!key_matches(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!key_matches(b"0123456789abcdef", b""));
    }

    #[test]
    fn generates_distinct_64_hex_character_keys() {
        let first = generate_api_key().expect("random bytes");
        let second = generate_api_key().expect("random bytes");
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }
}

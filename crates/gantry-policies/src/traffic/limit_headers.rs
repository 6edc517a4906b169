//! The headers that tell clients about a limit, shared by `rate_limit` and `quota`: the IETF
//! `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) and the
//! older `X-RateLimit-*` ones.
//!
//! The IETF fields are structured-field lists, so every limit a request met is added to them
//! (a rate limit and a quota on one route both show) rather than one replacing another.
//!
//! Runs per admitted request: the `RateLimit` value is written without the formatting
//! machinery.

use gantry_state::Decision;
use http::{HeaderMap, HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;

/// Which limit headers responses carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
    Legacy,
    /// Both sets.
    Both,
    /// None (a refusal still carries `Retry-After`).
    None,
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The names of the three `X-RateLimit-*` headers of one kind of limit.
#[derive(Clone, Debug)]
pub struct LegacyNames {
    /// The limit.
    pub limit: HeaderName,
    /// Units remaining.
    pub remaining: HeaderName,
    /// Seconds until the allowance is full again.
    pub reset: HeaderName,
}

impl LegacyNames {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    pub const PLAIN: LegacyNames = LegacyNames {
        limit: HeaderName::from_static("x-ratelimit-limit"),
        remaining: HeaderName::from_static("x-ratelimit-remaining"),
        reset: HeaderName::from_static("x-ratelimit-reset"),
    };
}

/// One limit as its headers describe it.
#[derive(Clone, Debug)]
pub struct LimitHeaders {
    /// The limit's name in the IETF fields.
    pub label: String,
    /// `"<label>";q=<limit>;w=<window seconds>`.
    pub policy: HeaderValue,
    /// Units per window, for the legacy headers.
    pub limit: u64,
    /// The legacy headers' names.
    pub legacy: LegacyNames,
}

impl LimitHeaders {
    /// The headers of a limit named `label` of `limit` units per `window_seconds`.
    pub fn new(label: &str, limit: u64, window_seconds: u64, legacy: LegacyNames) -> Self {
        let policy = HeaderValue::from_str(&format!("\"{label}\";q={limit};w={}", window_seconds.max(1)))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        Self { label: label.to_owned(), policy, limit, legacy }
    }

    /// The headers `style` asks for, describing `decision`.
    pub fn for_decision(&self, style: HeaderStyle, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        let reset = whole_seconds(decision.reset_after);
        let mut headers = Vec::new();
        if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
            // `"<name>";r=<remaining>;t=<reset>`.
            let mut state = Vec::with_capacity(self.label.len() + 48);
            state.push(b'"');
            state.extend_from_slice(self.label.as_bytes());
            state.extend_from_slice(b"\";r=");
            push_decimal(&mut state, decision.remaining);
            state.extend_from_slice(b";t=");
            push_decimal(&mut state, reset);
            headers.push((RATELIMIT_POLICY, self.policy.clone()));
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
                headers.push((RATELIMIT, value));
            }
        }
        if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both) {
            headers.push((self.legacy.limit.clone(), HeaderValue::from(self.limit)));
            headers.push((self.legacy.remaining.clone(), HeaderValue::from(decision.remaining)));
            headers.push((self.legacy.reset.clone(), HeaderValue::from(reset)));
        }
        headers
    }
}

/// Adds limit headers to `to`: list members to the IETF fields already there, and the
/// single-valued legacy ones in place of any earlier value.
pub fn add_headers(to: &mut HeaderMap, headers: Vec<(HeaderName, HeaderValue)>) {
    for (name, value) in headers {
        if name == RATELIMIT || name == RATELIMIT_POLICY {
            to.append(name, value);
        } else {
            to.insert(name, value);
        }
    }
}

/// Appends `number` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut number: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Seconds, rounded up: a client that waits this long is never early.
pub fn whole_seconds(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn decision(remaining: u64, reset_after: Duration) -> Decision {
        Decision { allowed: true, remaining, reset_after, retry_after: Duration::ZERO }
    }

    #[test]
    fn writes_numbers_in_decimal() {
        for number in [0, 7, 10, 4_096, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, number);
            assert_eq!(out, number.to_string().into_bytes());
        }
    }

    #[test]
    fn rounds_seconds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::from_millis(3_001)), 4);
    }

    #[test]
    fn lists_every_limit_in_the_ietf_fields_and_keeps_one_legacy_value() {
        let per_minute = LimitHeaders::new("default", 60, 60, LegacyNames::PLAIN);
        let per_day = LimitHeaders::new("quota", 1000, 86_400, LegacyNames::PLAIN);
        let mut headers = HeaderMap::new();
        add_headers(&mut headers, per_minute.for_decision(HeaderStyle::Both, &decision(59, Duration::from_secs(60))));
        add_headers(&mut headers, per_day.for_decision(HeaderStyle::Both, &decision(10, Duration::from_millis(1500))));
        let all = |name: &str| headers.get_all(name).iter().map(|v| v.to_str().expect("ascii")).collect::<Vec<_>>();
        assert_eq!(all("ratelimit-policy"), ["\"default\";q=60;w=60", "\"quota\";q=1000;w=86400"]);
        assert_eq!(all("ratelimit"), ["\"default\";r=59;t=60", "\"quota\";r=10;t=2"]);
        assert_eq!(all("x-ratelimit-remaining"), ["10"], "a single value: the last limit's");
    }

    #[test]
    fn writes_nothing_for_none() {
        let limit = LimitHeaders::new("default", 1, 1, LegacyNames::PLAIN);
        assert!(limit.for_decision(HeaderStyle::None, &decision(0, Duration::from_secs(1))).is_empty());
    }
}

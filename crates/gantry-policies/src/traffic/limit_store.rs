//! Where the counting limits of the traffic stage (`rate_limit`, `quota`) keep their counters,
//! how their keys are named, and what they do when the store fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gantry_config::error::Segment;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{BuildContext, PolicyResponse};
use gantry_state::{CounterStore, StoreError, StoreMetrics};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Where counters are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process: exact, free, and per process.
    #[default]
    Memory,
    /// In `node.stores.redis`: one limit for every gateway process, one round trip per request.
    Redis,
}

impl StoreKind {
    /// The store of this kind in `context`, or an error at `path` when it is not configured.
    pub fn select(
        self,
        context: &BuildContext<'_>,
        path: &FieldPath,
        errors: &mut ConfigErrors,
    ) -> Option<Arc<dyn CounterStore>> {
        match self {
            StoreKind::Memory => Some(context.stores.memory()),
            StoreKind::Redis => {
                let redis = context.stores.redis();
                if redis.is_none() {
                    errors.push(path.clone(), "`redis` needs `node.stores.redis` in the node settings");
                }
                redis
            }
        }
    }
}

/// What to do when the store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through uncounted (fail open): a store outage does not become an API outage.
    #[default]
    Allow,
    /// Refuse the request with 503 (fail closed): no request passes uncounted.
    Deny,
}

impl OnStoreError {
    /// The action's name in metrics and logs.
    pub fn action(self) -> &'static str {
        match self {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

/// A policy's answer to store failures: counted in `gantry_store_errors_total`, logged at most
/// once per [`WARN_EVERY`], then let through or refused with 503 as configured.
pub struct StoreFailures {
    policy: &'static str,
    on_store_error: OnStoreError,
    metrics: StoreMetrics,
    /// The problem type and detail of the 503.
    problem: &'static str,
    detail: &'static str,
    last_warning: AtomicU64,
    suppressed: AtomicU64,
}

/// Least time between two warnings about store failures of one policy.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

static PROCESS_START: LazyLock<Instant> = LazyLock::new(Instant::now);

impl StoreFailures {
    /// Failures of `policy`, whose 503 has the problem type `problem` and `detail`.
    pub fn new(
        policy: &'static str,
        on_store_error: OnStoreError,
        metrics: StoreMetrics,
        problem: &'static str,
        detail: &'static str,
    ) -> Self {
        Self {
            policy,
            on_store_error,
            metrics,
            problem,
            detail,
            last_warning: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Counts and logs the failure of `store`; `None` lets the request through, `Some` is the
    /// refusal to send.
    pub fn handle(&self, store: &'static str, error: &StoreError) -> Option<PolicyResponse> {
        let action = self.on_store_error.action();
        self.metrics.count_error(self.policy, store, action);
        self.warn(error, action);
        match self.on_store_error {
            OnStoreError::Allow => None,
            OnStoreError::Deny => {
                let mut response = problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    self.problem,
                    "Service Unavailable",
                    Some(self.detail),
                );
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
                Some(response)
            }
        }
    }

    fn warn(&self, error: &StoreError, action: &'static str) {
        let now = u64::try_from(PROCESS_START.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last_warning.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        let due = last == 0 || now.saturating_sub(last) >= every;
        if due && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                policy = self.policy,
                error = %error,
                action,
                suppressed,
                "rate limit store failed; applying on_store_error"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where a policy is attached, without its position in the list (`routes[orders].rate_limit`),
/// so its counters keep their name when policies are added before it.
pub fn attachment(path: &FieldPath) -> String {
    let mut kept = FieldPath::root();
    let mut after_policies = false;
    for segment in path.segments() {
        match segment {
            Segment::Index { id: None, .. } if after_policies => {}
            Segment::Key(key) => kept = kept.key(key),
            Segment::Index { index, id: Some(id) } => kept = kept.item(*index, id),
            Segment::Index { index, id: None } => kept = kept.index(*index),
        }
        after_policies = matches!(segment, Segment::Key(key) if key.ends_with("policies"));
    }
    kept.to_string()
}

/// Checks a limit's `name`, which goes into headers and store keys.
pub fn check_name(name: Option<&str>, path: &FieldPath, errors: &mut ConfigErrors) {
    if let Some(name) = name {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            errors.push(path.clone(), "use 1 to 64 printable ASCII characters without spaces, `\"` or `\\`");
        }
    }
}

/// `prefix` followed by a request's key bytes as text. Keys go to Redis and logs as text; a
/// long one (a header's value) is digested so a client cannot make Gantry store kilobytes per
/// key.
pub fn store_key(prefix: &str, bytes: &[u8]) -> String {
    let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut key = String::with_capacity(prefix.len() + 4 + bytes.len().min(48) * 4 / 3);
    key.push_str(prefix);
    if bytes.len() > 48 {
        engine.encode_string(Sha256::digest(bytes), &mut key);
    } else {
        engine.encode_string(bytes, &mut key);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_counters_after_the_attachment_without_list_positions() {
        let path = FieldPath::root().key("routes").item(3, "orders").key("policies").index(2).key("rate_limit");
        assert_eq!(attachment(&path), "routes[orders].policies.rate_limit");
        let global = FieldPath::root().key("global_policies").index(0).key("rate_limit");
        assert_eq!(attachment(&global), "global_policies.rate_limit");
    }

    #[test]
    fn digests_long_keys_and_keeps_short_ones_readable_apart() {
        let short = store_key("p:", b"alice");
        assert_eq!(short, "p:YWxpY2U");
        let long = store_key("p:", &[b'x'; 4_000]);
        assert_eq!(long.len(), "p:".len() + 43, "a SHA-256 digest, not 4 kB: {long}");
        assert_ne!(long, store_key("p:", &[b'y'; 4_000]));
    }
}

//! Counters of the data plane, exposed in the Prometheus text format by the admin listener.
//!
//! Updated inline with atomics; a label set is looked up only on the paths that count (a
//! policy's answer), never on every forwarded request. The counters live outside the snapshot,
//! so a reload resets none of them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `gantry_policy_answers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyAnswerLabels {
    policy: &'static str,
    status: u16,
}

/// The data plane's metrics. Cheap to clone: clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct GatewayMetrics {
    policy_answers: Family<PolicyAnswerLabels, Counter>,
}

impl GatewayMetrics {
    /// Counters registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gantry_policy_answers",
            "Requests a policy answered itself instead of forwarding (denials such as 401, 403 and 429, mocks, redirects), by policy and status",
            metrics.policy_answers.clone(),
        );
        metrics
    }

    /// Counts a request that `policy` answered with `status`.
    pub fn count_policy_answer(&self, policy: &'static str, status: http::StatusCode) {
        self.policy_answers.get_or_create(&PolicyAnswerLabels { policy, status: status.as_u16() }).inc();
    }

    /// How many requests `policy` answered with `status` so far.
    pub fn policy_answers(&self, policy: &'static str, status: u16) -> u64 {
        self.policy_answers.get_or_create(&PolicyAnswerLabels { policy, status }).get()
    }
}

//! Counters of the data plane, exposed in the Prometheus text format by the admin listener.
//!
//! Updated inline with atomics. Request metrics ([`traffic`]) are pre-bound handles held by
//! compiled routes and endpoints; a label set is looked up only on the paths that count
//! something rarer (a policy's answer, a mirrored request), never on every forwarded request.
//! The counters live outside the snapshot, so a reload resets none of them.

pub mod ai;
pub mod histogram;
pub mod traffic;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use ai::AiMetrics;
pub use traffic::TrafficMetrics;

/// Labels of `gantry_policy_answers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyAnswerLabels {
    policy: &'static str,
    status: u16,
}

/// Labels of `gantry_mirror_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    upstream: String,
    outcome: &'static str,
}

/// What became of a mirrored copy of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// The mirror upstream answered, whatever the status.
    Answered,
    /// The mirror upstream could not be reached, failed, or did not answer in time.
    Failed,
    /// Not sent: its policy's copies in flight were at their bound.
    Dropped,
    /// Not sent: the body was larger than its policy copies, or was not read to its end.
    Skipped,
}

impl MirrorOutcome {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            MirrorOutcome::Answered => "answered",
            MirrorOutcome::Failed => "failed",
            MirrorOutcome::Dropped => "dropped",
            MirrorOutcome::Skipped => "skipped",
        }
    }
}

/// The data plane's metrics. Cheap to clone: clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct GatewayMetrics {
    policy_answers: Family<PolicyAnswerLabels, Counter>,
    mirror_requests: Family<MirrorLabels, Counter>,
    traffic: Arc<TrafficMetrics>,
    ai: Arc<AiMetrics>,
}

impl GatewayMetrics {
    /// Counters registered in `registry`, with the request metrics of `traffic` (the ones the
    /// control plane binds to routes and endpoints).
    pub fn register(registry: &mut Registry, traffic: Arc<TrafficMetrics>) -> Self {
        registry.register_collector(Box::new(traffic.clone()));
        let metrics = Self { traffic, ..Self::default() };
        registry.register_collector(Box::new(metrics.ai.clone()));
        registry.register(
            "gantry_policy_answers",
            "Requests a policy answered itself instead of forwarding (denials such as 401, 403 and 429, mocks, redirects), by policy and status",
            metrics.policy_answers.clone(),
        );
        registry.register(
            "gantry_mirror_requests",
            "Copies of requests for a mirror upstream (request_mirror), by mirror upstream and outcome: answered, failed, dropped (too many in flight) or skipped (body too large or incomplete)",
            metrics.mirror_requests.clone(),
        );
        metrics
    }

    /// The request metrics.
    pub fn traffic(&self) -> &TrafficMetrics {
        &self.traffic
    }

    /// What AI exchanges used.
    pub fn ai(&self) -> &AiMetrics {
        &self.ai
    }

    /// Counts a request that `policy` answered with `status`.
    pub fn count_policy_answer(&self, policy: &'static str, status: http::StatusCode) {
        self.policy_answers.get_or_create(&PolicyAnswerLabels { policy, status: status.as_u16() }).inc();
    }

    /// How many requests `policy` answered with `status` so far.
    pub fn policy_answers(&self, policy: &'static str, status: u16) -> u64 {
        self.policy_answers.get_or_create(&PolicyAnswerLabels { policy, status }).get()
    }

    /// Counts a copy of a request for mirror upstream `upstream` that ended as `outcome`.
    pub fn count_mirror(&self, upstream: &str, outcome: MirrorOutcome) {
        let labels = MirrorLabels { upstream: upstream.to_owned(), outcome: outcome.label() };
        self.mirror_requests.get_or_create(&labels).inc();
    }

    /// How many copies for `upstream` ended as `outcome` so far.
    pub fn mirror_requests(&self, upstream: &str, outcome: MirrorOutcome) -> u64 {
        self.mirror_requests
            .get_or_create(&MirrorLabels { upstream: upstream.to_owned(), outcome: outcome.label() })
            .get()
    }
}

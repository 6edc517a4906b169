//! Upstreams at run time: endpoints, their shared state, load balancing, clients and health.
//!
//! A [`CompiledUpstream`] belongs to one snapshot. What must survive a reload lives in
//! [`UpstreamStates`], keyed by upstream id and endpoint address: endpoint health and load
//! ([`EndpointState`]), the connection pools ([`client::UpstreamClient`]), bulkheads
//! ([`bulkhead::Bulkhead`]) and retry budgets ([`retry_budget::RetryBudget`]).

pub mod balancer;
pub mod bulkhead;
pub mod client;
pub mod health;
pub mod retry_budget;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gantry_config::UpstreamScheme;
use http::uri::Authority;
use http::{Method, StatusCode};

pub use balancer::Balancer;
pub use client::UpstreamClient;

/// One endpoint of a compiled upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same, parsed for URIs.
    pub authority: Authority,
    /// Load-balancing weight.
    pub weight: u32,
    /// Health and load, shared across snapshots.
    pub state: Arc<EndpointState>,
    /// Its request metrics, bound at compile time; `None` when requests are not counted.
    pub metrics: Option<Arc<crate::metrics::traffic::EndpointSeries>>,
    /// Its connection pool in the upstream's client, found on first use.
    pub pool: OnceLock<Arc<client::EndpointPool>>,
}

impl Endpoint {
    /// Its connection pool in `client`, the client of its upstream.
    pub fn pool(&self, client: &UpstreamClient) -> Result<&Arc<client::EndpointPool>, client::SendError> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = client.pool_for(&self.address)?;
        Ok(self.pool.get_or_init(|| pool))
    }
}

/// Health and load of one endpoint; outlives snapshots.
#[derive(Debug)]
pub struct EndpointState {
    /// Requests in flight to this endpoint.
    pub in_flight: AtomicU32,
    /// Verdict of active health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Consecutive failures of real traffic (passive checks).
    pub consecutive_failures: AtomicU32,
    /// Passive ejection end, in milliseconds since [`clock_origin`]; 0 when not ejected.
    pub ejected_until_ms: AtomicU64,
    /// Peak-EWMA of response latency in microseconds, as `f64` bits.
    pub latency_ewma_bits: AtomicU64,
    /// Last EWMA update, in microseconds since [`clock_origin`].
    pub latency_updated_us: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            latency_ewma_bits: AtomicU64::new(0f64.to_bits()),
            latency_updated_us: AtomicU64::new(0),
        }
    }
}

/// The instant all endpoint timestamps count from.
pub fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn millis_since_origin(now: Instant) -> u64 {
    now.saturating_duration_since(clock_origin()).as_millis() as u64
}

/// How long latency samples take to fade from the EWMA.
const EWMA_DECAY: Duration = Duration::from_secs(10);

impl EndpointState {
    /// True when the endpoint may receive traffic: healthy and not ejected.
    pub fn is_available(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= millis_since_origin(now)
    }

    /// Records a request's outcome for passive health checking.
    pub fn record_outcome(&self, failed: bool, passive: Option<&PassiveHealth>, now: Instant) {
        if !failed {
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let Some(passive) = passive else { return };
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= passive.max_failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let until = millis_since_origin(now) + passive.ejection.as_millis() as u64;
            self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
            tracing::warn!(
                failures,
                ejection_ms = passive.ejection.as_millis() as u64,
                "endpoint ejected after consecutive failures"
            );
        }
    }

    /// Folds a latency sample into the peak-EWMA.
    pub fn record_latency(&self, latency: Duration, now: Instant) {
        let now_us = now.saturating_duration_since(clock_origin()).as_micros() as u64;
        let sample = latency.as_micros() as f64;
        let previous = f64::from_bits(self.latency_ewma_bits.load(Ordering::Relaxed));
        let last = self.latency_updated_us.swap(now_us, Ordering::Relaxed);
        let elapsed = now_us.saturating_sub(last) as f64;
        let next = if sample > previous {
            // Peak sensitivity: a slow response counts at once; recovery is gradual.
            sample
        } else {
            let weight = (-elapsed / EWMA_DECAY.as_micros() as f64).exp();
            previous * weight + sample * (1.0 - weight)
        };
        self.latency_ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The current latency estimate in microseconds.
    pub fn latency_ewma(&self) -> f64 {
        f64::from_bits(self.latency_ewma_bits.load(Ordering::Relaxed))
    }
}

/// Counts one exchange in flight to an endpoint for as long as it lives: from sending the
/// request until the response body ends, since a long download or stream keeps the endpoint
/// busy (least-connections and EWMA read the count). A guard rather than a decrement after an
/// `await`: when the client goes away mid-exchange, dropping the guard still releases it.
/// It also holds the request's bulkhead slot, which is taken for as long.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<EndpointState>,
    slot: Option<bulkhead::BulkheadSlot>,
}

impl InFlight {
    /// Counts an exchange with the endpoint whose state is `state`.
    pub fn enter(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { state: state.clone(), slot: None }
    }

    /// Keeps `slot` taken until the exchange ends.
    pub fn hold(&mut self, slot: Option<bulkhead::BulkheadSlot>) {
        self.slot = slot;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Passive health-check settings.
#[derive(Clone, Debug)]
pub struct PassiveHealth {
    /// Consecutive failures before ejection.
    pub max_failures: u32,
    /// Ejection time.
    pub ejection: Duration,
    /// Statuses counted as failures.
    pub failure_statuses: Vec<StatusCode>,
}

/// Retry settings.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// First backoff; doubles each retry.
    pub backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Statuses worth a retry.
    pub on_statuses: Vec<StatusCode>,
    /// Retryable methods; empty means the idempotent ones.
    pub methods: Vec<Method>,
    /// Caps retries at a share of recent traffic; `None` when unbounded.
    pub budget: Option<Arc<retry_budget::RetryBudget>>,
}

impl RetryPolicy {
    /// True when requests with `method` may be retried.
    pub fn allows_method(&self, method: &Method) -> bool {
        if self.methods.is_empty() {
            method.is_idempotent()
        } else {
            self.methods.contains(method)
        }
    }

    /// The wait before retry number `retry` (1-based), with ±50 % jitter against herds.
    pub fn backoff_for(&self, retry: u32) -> Duration {
        let base = self.backoff.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let capped = base.min(self.max_backoff);
        capped.mul_f64(0.5 + fastrand::f64())
    }
}

/// Time limits.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Connection establishment.
    pub connect: Duration,
    /// Request sent to response head.
    pub read: Duration,
    /// Whole exchange across retries.
    pub total: Option<Duration>,
}

/// What goes in the upstream request's `Host`.
#[derive(Clone, Debug)]
pub enum HostHeader {
    /// The client's.
    Pass,
    /// The endpoint's `host:port`.
    Endpoint,
    /// A fixed value.
    Rewrite(http::HeaderValue),
}

/// An upstream ready to serve.
#[derive(Debug)]
pub struct CompiledUpstream {
    /// Upstream id.
    pub id: Arc<str>,
    /// Protocol to the endpoints.
    pub scheme: UpstreamScheme,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Selection algorithm.
    pub balancer: Balancer,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryPolicy,
    /// Passive health checking.
    pub passive: Option<PassiveHealth>,
    /// Active health checking.
    pub active: Option<health::ActiveHealthCheck>,
    /// Host header rule.
    pub host_header: HostHeader,
    /// Pooled client.
    pub client: UpstreamClient,
    /// Bounds on requests in flight and waiting; `None` when unbounded.
    pub bulkhead: Option<Arc<bulkhead::Bulkhead>>,
    /// Counts of bulkhead refusals and denied retries; `None` when requests are not counted
    /// or the upstream has neither `limits` nor a retry budget.
    pub metrics: Option<Arc<crate::metrics::traffic::UpstreamSeries>>,
}

impl CompiledUpstream {
    /// `http` or `https`, for upstream URIs.
    pub fn uri_scheme(&self) -> &'static str {
        match self.scheme {
            UpstreamScheme::Https => "https",
            UpstreamScheme::Http | UpstreamScheme::H2c => "http",
        }
    }
}

/// `(upstream id, endpoint address)`.
pub type EndpointKey = (Arc<str>, Arc<str>);

/// Upstream state that outlives snapshots: endpoint states, pooled clients, bulkheads and
/// retry budgets.
///
/// Compiling a candidate only looks state up: what it finds is reused, what is missing or
/// built for other settings is made fresh for the candidate alone. Only [`UpstreamStates::adopt`],
/// called once a snapshot is live, changes what is kept, so a candidate that is refused leaves
/// no trace and a later reload back to the running settings still finds their counters.
#[derive(Debug, Default)]
pub struct UpstreamStates {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    endpoints: HashMap<EndpointKey, Arc<EndpointState>>,
    clients: HashMap<Arc<str>, UpstreamClient>,
    bulkheads: HashMap<Arc<str>, Arc<bulkhead::Bulkhead>>,
    retry_budgets: HashMap<Arc<str>, Arc<retry_budget::RetryBudget>>,
}

impl UpstreamStates {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state of endpoint `address` of upstream `upstream`: the live one, or a fresh one.
    pub fn endpoint(&self, upstream: &Arc<str>, address: &Arc<str>) -> Arc<EndpointState> {
        self.kept().endpoints.get(&(upstream.clone(), address.clone())).cloned().unwrap_or_default()
    }

    /// The pooled client of `upstream`: the live one while its settings stay the same, else a
    /// new one.
    pub fn client(
        &self,
        upstream: &Arc<str>,
        settings: client::ClientSettings,
    ) -> Result<UpstreamClient, client::ClientError> {
        if let Some(client) = self.kept().clients.get(upstream) {
            if *client.settings() == settings {
                return Ok(client.clone());
            }
        }
        UpstreamClient::new(&settings)
    }

    /// The bulkhead of `upstream`, with the requests it counts, while its settings stay the
    /// same. A changed bulkhead starts empty: requests holding slots of the old one finish
    /// uncounted by the new one.
    pub fn bulkhead(&self, upstream: &Arc<str>, settings: bulkhead::BulkheadSettings) -> Arc<bulkhead::Bulkhead> {
        match self.kept().bulkheads.get(upstream) {
            Some(existing) if existing.settings() == settings => existing.clone(),
            _ => Arc::new(bulkhead::Bulkhead::new(settings)),
        }
    }

    /// The retry budget of `upstream`, with its counts, while its settings stay the same.
    pub fn retry_budget(
        &self,
        upstream: &Arc<str>,
        settings: retry_budget::RetryBudgetSettings,
    ) -> Arc<retry_budget::RetryBudget> {
        match self.kept().retry_budgets.get(upstream) {
            Some(existing) if existing.settings() == settings => existing.clone(),
            _ => Arc::new(retry_budget::RetryBudget::new(settings)),
        }
    }

    /// Keeps exactly the state of the upstreams that are now live, and forgets the rest.
    pub fn adopt<'u>(&self, live: impl IntoIterator<Item = &'u CompiledUpstream>) {
        let mut kept = Kept::default();
        for upstream in live {
            for endpoint in &upstream.endpoints {
                kept.endpoints.insert((upstream.id.clone(), endpoint.address.clone()), endpoint.state.clone());
            }
            kept.clients.insert(upstream.id.clone(), upstream.client.clone());
            if let Some(bulkhead) = &upstream.bulkhead {
                kept.bulkheads.insert(upstream.id.clone(), bulkhead.clone());
            }
            if let Some(budget) = &upstream.retry.budget {
                kept.retry_budgets.insert(upstream.id.clone(), budget.clone());
            }
        }
        *self.kept() = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_max_consecutive_failures_and_returns_after_the_ejection() {
        let state = EndpointState::default();
        let passive = PassiveHealth { max_failures: 2, ejection: Duration::from_secs(5), failure_statuses: vec![] };
        let now = Instant::now();
        state.record_outcome(true, Some(&passive), now);
        assert!(state.is_available(now));
        state.record_outcome(true, Some(&passive), now);
        assert!(!state.is_available(now));
        assert!(state.is_available(now + Duration::from_secs(6)));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let state = EndpointState::default();
        let passive = PassiveHealth { max_failures: 2, ejection: Duration::from_secs(5), failure_statuses: vec![] };
        let now = Instant::now();
        state.record_outcome(true, Some(&passive), now);
        state.record_outcome(false, Some(&passive), now);
        state.record_outcome(true, Some(&passive), now);
        assert!(state.is_available(now));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            on_statuses: vec![],
            methods: vec![],
            budget: None,
        };
        let second = policy.backoff_for(2);
        assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(300), "{second:?}");
        assert!(policy.backoff_for(10) <= Duration::from_millis(450));
        assert!(policy.allows_method(&Method::GET));
        assert!(!policy.allows_method(&Method::POST));
    }
}

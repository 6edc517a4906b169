//! Upstreams: endpoints, load balancing, health checks, timeouts, retries and TLS.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::Duration;

/// A group of endpoints serving the same thing.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Unique id, referenced by routes and services.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Endpoints as `host:port`, or `{address, weight}`.
    pub endpoints: Vec<EndpointSpec>,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub scheme: UpstreamScheme,
    /// How an endpoint is chosen for each request.
    #[serde(default)]
    pub load_balancer: LoadBalancerSpec,
    /// Connect, read and total time limits.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Retries of failed requests.
    #[serde(default)]
    pub retries: RetrySpec,
    /// Bulkhead: bounds on requests in flight to the upstream and waiting for a slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<UpstreamLimitsSpec>,
    /// Active and passive health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// TLS settings for `https` upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
    /// The `Host` header sent upstream.
    #[serde(default)]
    pub host_header: HostHeaderSpec,
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_max_idle_connections")]
    pub max_idle_connections: usize,
    /// How long an idle upstream connection is kept.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

fn default_max_idle_connections() -> usize {
    256
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

/// One endpoint of an upstream.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `host:port`; `host` may be an IP address or a name resolved when connecting.
    pub address: String,
    /// Relative share of traffic for weighted load balancing (0 takes none).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "default_weight")]
            weight: u32,
        }
        struct EndpointVisitor;
        impl<'de> Visitor<'de> for EndpointVisitor {
            type Value = EndpointSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`host:port` or `{address: host:port, weight: N}`")
            }

            fn visit_str<E: de::Error>(self, address: &str) -> Result<EndpointSpec, E> {
                Ok(EndpointSpec { address: address.to_owned(), weight: default_weight() })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec { address: full.address, weight: full.weight })
            }
        }
        deserializer.deserialize_any(EndpointVisitor)
    }
}

/// Protocol spoken to an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamScheme {
    /// HTTP/1.1 over TCP.
    #[default]
    Http,
    /// HTTP/1.1 or HTTP/2 (by ALPN) over TLS.
    Https,
    /// HTTP/2 over cleartext TCP (gRPC without TLS).
    H2c,
}

/// Load-balancing algorithm.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerSpec {
    /// Each endpoint in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin: endpoints get shares in proportion to their weights.
    WeightedRoundRobin,
    /// The endpoint with the fewest requests in flight (ties broken by weight).
    LeastConnections,
    /// Peak-EWMA: the lower expected latency of two randomly chosen endpoints.
    Ewma,
    /// The same key always goes to the same endpoint (ketama ring; few keys move when endpoints change).
    ConsistentHash(HashKeySpec),
}

/// What a consistent hash is computed on.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashKeySpec {
    /// The value of this request header.
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
}

/// Time limits for one upstream request.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// Establishing a connection (TCP and TLS).
    #[serde(default = "default_connect_timeout")]
    pub connect: Duration,
    /// From sending the request to the response headers.
    #[serde(default = "default_read_timeout")]
    pub read: Duration,
    /// Whole exchange with the upstream, across retries, up to the response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Duration>,
}

impl Default for TimeoutsSpec {
    fn default() -> Self {
        Self { connect: default_connect_timeout(), read: default_read_timeout(), total: None }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Retries of failed upstream requests. Only idempotent methods (GET, HEAD, OPTIONS, PUT,
/// DELETE, TRACE) are retried unless `methods` says otherwise, and only requests whose body
/// is empty, since a streamed body cannot be sent twice.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first try (0: never retry).
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Wait before the first retry; doubles for each further one, with jitter.
    #[serde(default = "default_retry_backoff")]
    pub backoff: Duration,
    /// Upper bound on one wait.
    #[serde(default = "default_retry_max_backoff")]
    pub max_backoff: Duration,
    /// Upstream statuses that count as failures worth a retry (connect errors and timeouts always do).
    #[serde(default = "default_retry_statuses")]
    pub on_statuses: Vec<u16>,
    /// Methods that may be retried. Empty: the idempotent ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Caps retries at a share of the upstream's recent traffic, so failures cannot multiply load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
}

/// A retry budget: within a sliding window of the last 10 seconds, retries are allowed while
/// `retries ≤ ratio × requests + min_per_second × 10`. Requests count first tries only.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries allowed per request, from 0 to 1 (0.2: one retry for every five requests).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Retries per second allowed whatever the traffic, so a quiet upstream can still be retried.
    #[serde(default = "default_budget_min_per_second")]
    pub min_per_second: f64,
}

fn default_budget_ratio() -> f64 {
    0.2
}

fn default_budget_min_per_second() -> f64 {
    10.0
}

/// Bounds on the traffic one upstream takes at a time (a bulkhead). They hold across all of
/// its endpoints, as Envoy's per-cluster circuit breakers do.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamLimitsSpec {
    /// Requests in flight to the upstream at once, from sending the first try to the response
    /// body's end (retries of a request use its slot).
    pub max_requests: u32,
    /// Requests that may wait for a slot when all are taken; more are refused at once.
    #[serde(default)]
    pub max_pending: u32,
    /// How long a request waits for a slot before it is refused.
    #[serde(default = "default_pending_timeout")]
    pub pending_timeout: Duration,
}

fn default_pending_timeout() -> Duration {
    Duration::from_secs(1)
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: default_retry_attempts(),
            backoff: default_retry_backoff(),
            max_backoff: default_retry_max_backoff(),
            on_statuses: default_retry_statuses(),
            methods: Vec::new(),
            budget: None,
        }
    }
}

fn default_retry_attempts() -> u32 {
    1
}

fn default_retry_backoff() -> Duration {
    Duration::from_millis(25)
}

fn default_retry_max_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_retry_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}

/// Health checking of endpoints.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Periodic probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthCheckSpec>,
    /// Ejection after consecutive failures of real traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealthCheckSpec>,
}

/// Periodic HTTP probes of every endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthCheckSpec {
    /// Path probed with GET.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Time between probes of one endpoint.
    #[serde(default = "default_probe_interval")]
    pub interval: Duration,
    /// Time limit of one probe.
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy endpoint healthy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a healthy endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Statuses that count as healthy. Empty: 200–399.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub healthy_statuses: Vec<u16>,
}

fn default_probe_path() -> String {
    "/".to_owned()
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

/// Ejects an endpoint after consecutive failures of real requests.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthCheckSpec {
    /// Consecutive failures (connect errors, timeouts, `failure_statuses`) that eject an endpoint.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// How long an ejected endpoint receives no traffic.
    #[serde(default = "default_ejection")]
    pub ejection: Duration,
    /// Upstream statuses that count as failures.
    #[serde(default = "default_retry_statuses")]
    pub failure_statuses: Vec<u16>,
}

fn default_max_failures() -> u32 {
    5
}

fn default_ejection() -> Duration {
    Duration::from_secs(30)
}

/// TLS towards the upstream.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// PEM bundle of CAs that sign the upstream's certificate. Default: the Mozilla roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Name sent in SNI and checked against the certificate. Default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The `Host` header sent upstream.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostHeaderSpec {
    /// The client's `Host`, unchanged.
    #[default]
    Pass,
    /// The chosen endpoint's `host:port`.
    Endpoint,
    /// This value.
    Rewrite(String),
}

//! Request metrics per route, upstream endpoint and consumer.
//!
//! Runs per request, so nothing is looked up by label then: each compiled route holds its
//! [`RouteMetrics`] and each endpoint its [`EndpointSeries`], resolved once when the snapshot is
//! compiled, and a request adds to their atomics (the status class is an array index). Series
//! are kept by [`TrafficMetrics`] in tables of weak references keyed by their labels, so a
//! reload that keeps a route id (and its service) hands the new snapshot the same counters,
//! and the series of a removed route disappear once no snapshot holds it. The one lookup by
//! name is a consumer's, and only when `node.metrics.consumer_label` asks for consumers: a map
//! built at compile time for configured consumers, then a bounded table for consumers that
//! tokens describe, then `(other)`.
//!
//! [`TrafficMetrics`] is a prometheus-client [`Collector`]: the exposition reads the live
//! series at each scrape and renders them through prometheus-client's encoder.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use gantry_config::MetricsSpec;
use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::histogram::{Buckets, LatencyHistogram};
use crate::upstream::EndpointState;

/// The `status_class` label values; a status counts at index `status / 100 - 1`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The label of requests counted together once `max_consumers` consumers have their own series.
/// Configured consumer ids cannot contain parentheses.
pub const OTHER_CONSUMERS: &str = "(other)";

/// The index of `status`'s class in [`STATUS_CLASSES`]. Statuses 600–999, which `http` accepts
/// but no specification defines, count as 5xx.
#[inline]
fn status_class(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, STATUS_CLASSES.len()) - 1
}

/// One counter per status class.
#[derive(Debug, Default)]
struct StatusCounts([AtomicU64; STATUS_CLASSES.len()]);

impl StatusCounts {
    #[inline]
    fn count(&self, status: StatusCode) {
        self.0[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, class: usize) -> u64 {
        self.0[class].load(Ordering::Relaxed)
    }

    fn by_class(&self) -> BTreeMap<&'static str, u64> {
        STATUS_CLASSES.iter().enumerate().map(|(index, class)| (*class, self.get(index))).collect()
    }
}

/// Counted requests as the status page shows them.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestSummary {
    /// Requests counted.
    pub requests: u64,
    /// Of which, by status class.
    pub status_classes: BTreeMap<&'static str, u64>,
    /// Time to the response head; `None` before the first request.
    pub duration: Option<LatencySummary>,
}

/// A latency distribution in milliseconds, estimated from its histogram buckets.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Mean (exact: from the sum).
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl LatencySummary {
    fn of(histogram: &LatencyHistogram) -> Option<Self> {
        let count = histogram.count();
        let millis = |quantile: f64| histogram.quantile(quantile).map(|seconds| seconds * 1000.0);
        Some(Self {
            mean_ms: histogram.sum() * 1000.0 / count as f64,
            p50_ms: millis(0.5)?,
            p90_ms: millis(0.9)?,
            p99_ms: millis(0.99)?,
        })
    }
}

/// The series of one route (and its service), shared by every snapshot that has the route.
#[derive(Debug)]
pub struct RouteSeries {
    route: Arc<str>,
    service: Option<Arc<str>>,
    requests: StatusCounts,
    duration: LatencyHistogram,
    overhead: LatencyHistogram,
    request_body_bytes: AtomicU64,
    response_body_bytes: AtomicU64,
}

impl RouteSeries {
    /// Counts a request answered with `status` after `duration` (to the response head), of
    /// which the upstream took `upstream` when the request was forwarded.
    #[inline]
    pub fn record(&self, status: StatusCode, duration: Duration, upstream: Option<Duration>) {
        self.requests.count(status);
        self.duration.observe(duration);
        if let Some(upstream) = upstream {
            self.overhead.observe(duration.saturating_sub(upstream));
        }
    }

    /// Adds request body bytes read from a client.
    #[inline]
    pub fn count_request_body(&self, bytes: u64) {
        if bytes > 0 {
            self.request_body_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Adds response body bytes passed to a client.
    #[inline]
    pub fn count_response_body(&self, bytes: u64) {
        if bytes > 0 {
            self.response_body_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Requests counted in `class` (`"2xx"`).
    pub fn requests(&self, class: &str) -> u64 {
        STATUS_CLASSES.iter().position(|own| *own == class).map_or(0, |index| self.requests.get(index))
    }

    /// The route's requests and latency so far.
    pub fn summary(&self) -> RequestSummary {
        let status_classes = self.requests.by_class();
        RequestSummary {
            requests: status_classes.values().sum(),
            status_classes,
            duration: LatencySummary::of(&self.duration),
        }
    }

    /// The time the gateway itself spent on forwarded requests.
    pub fn overhead(&self) -> Option<LatencySummary> {
        LatencySummary::of(&self.overhead)
    }

    /// Request and response body bytes so far.
    pub fn body_bytes(&self) -> (u64, u64) {
        (self.request_body_bytes.load(Ordering::Relaxed), self.response_body_bytes.load(Ordering::Relaxed))
    }
}

/// Why a try at an endpoint got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection could not be made.
    Connect,
    /// No response head in time.
    Timeout,
    /// The exchange broke (reset, protocol error).
    Exchange,
}

impl UpstreamFailure {
    const ALL: [UpstreamFailure; 3] = [UpstreamFailure::Connect, UpstreamFailure::Timeout, UpstreamFailure::Exchange];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Exchange => "exchange",
        }
    }
}

/// The series of one upstream endpoint, shared by every snapshot that has it.
#[derive(Debug)]
pub struct EndpointSeries {
    upstream: Arc<str>,
    endpoint: Arc<str>,
    /// Read at scrape time for the health and in-flight gauges.
    state: Arc<EndpointState>,
    responses: StatusCounts,
    failures: [AtomicU64; UpstreamFailure::ALL.len()],
    duration: LatencyHistogram,
}

impl EndpointSeries {
    /// Counts a try the endpoint answered with `status` after `duration` (to the response head).
    #[inline]
    pub fn record_response(&self, status: StatusCode, duration: Duration) {
        self.responses.count(status);
        self.duration.observe(duration);
    }

    /// Counts a try that got no response.
    #[inline]
    pub fn record_failure(&self, failure: UpstreamFailure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The endpoint's answered tries so far.
    pub fn summary(&self) -> RequestSummary {
        let status_classes = self.responses.by_class();
        RequestSummary {
            requests: status_classes.values().sum(),
            status_classes,
            duration: LatencySummary::of(&self.duration),
        }
    }

    /// Tries that got no response, by reason.
    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        UpstreamFailure::ALL
            .iter()
            .map(|failure| (failure.label(), self.failures[*failure as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// The refusals of one upstream's bulkhead and retry budget, shared by every snapshot that has
/// the upstream. Only upstreams with `limits` or a retry budget have one.
#[derive(Debug)]
pub struct UpstreamSeries {
    upstream: Arc<str>,
    overloaded: AtomicU64,
    retries_denied: AtomicU64,
}

impl UpstreamSeries {
    /// Counts a request the bulkhead refused.
    pub fn count_overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry the budget did not allow.
    pub fn count_retry_denied(&self) {
        self.retries_denied.fetch_add(1, Ordering::Relaxed);
    }
}

/// The requests of one consumer.
#[derive(Debug)]
pub struct ConsumerSeries {
    consumer: Arc<str>,
    requests: StatusCounts,
}

impl ConsumerSeries {
    fn new(consumer: Arc<str>) -> Arc<Self> {
        Arc::new(Self { consumer, requests: StatusCounts::default() })
    }
}

/// Consumers counted apart, as one snapshot sees them: the configured ones (resolved at
/// compile time), those tokens describe (admitted while there is room), and the rest.
#[derive(Debug)]
pub struct ConsumerTable {
    configured: HashMap<Arc<str>, Arc<ConsumerSeries>>,
    described: Arc<DescribedConsumers>,
    other: Arc<ConsumerSeries>,
}

impl ConsumerTable {
    /// Counts a request of `consumer` answered with `status`.
    pub fn count(&self, consumer: &str, status: StatusCode) {
        match self.configured.get(consumer) {
            Some(series) => series.requests.count(status),
            None => self.described.count(consumer, status, &self.other),
        }
    }
}

/// Consumers not in the configuration (a token's subject), each counted apart while fewer than
/// `capacity` are; shared by every snapshot.
#[derive(Debug, Default)]
struct DescribedConsumers {
    series: RwLock<HashMap<Arc<str>, Arc<ConsumerSeries>>>,
    capacity: AtomicUsize,
}

impl DescribedConsumers {
    fn count(&self, consumer: &str, status: StatusCode, other: &ConsumerSeries) {
        if let Some(series) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(consumer) {
            series.requests.count(status);
            return;
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = series.get(consumer) {
            known.requests.count(status);
        } else if series.len() < self.capacity.load(Ordering::Relaxed) {
            let id: Arc<str> = consumer.into();
            let created = ConsumerSeries::new(id.clone());
            created.requests.count(status);
            series.insert(id, created);
        } else {
            other.requests.count(status);
        }
    }
}

/// What a compiled route holds: its series, and the consumer table of its snapshot when
/// consumers are counted.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// The route's series.
    pub series: Arc<RouteSeries>,
    /// Consumers, when `node.metrics.consumer_label` is on.
    pub consumers: Option<Arc<ConsumerTable>>,
}

impl RouteMetrics {
    /// Counts a request: see [`RouteSeries::record`]; `consumer` is who it came from, if known.
    #[inline]
    pub fn record(&self, status: StatusCode, duration: Duration, upstream: Option<Duration>, consumer: Option<&str>) {
        self.series.record(status, duration, upstream);
        if let (Some(consumers), Some(consumer)) = (&self.consumers, consumer) {
            consumers.count(consumer, status);
        }
    }
}

type RouteKey = (Arc<str>, Option<Arc<str>>);
type EndpointKey = (Arc<str>, Arc<str>);

/// The process's request metrics: settings, the live series, and the collector exposing them.
/// Outlives snapshots; the control plane resolves each snapshot's handles here.
#[derive(Debug)]
pub struct TrafficMetrics {
    enabled: bool,
    consumer_label: bool,
    max_consumers: usize,
    duration_buckets: Arc<Buckets>,
    overhead_buckets: Arc<Buckets>,
    /// Requests no route matched (or refused before routing).
    unmatched: StatusCounts,
    routes: Mutex<HashMap<RouteKey, Weak<RouteSeries>>>,
    endpoints: Mutex<HashMap<EndpointKey, Weak<EndpointSeries>>>,
    upstreams: Mutex<HashMap<Arc<str>, Weak<UpstreamSeries>>>,
    configured_consumers: Mutex<HashMap<Arc<str>, Weak<ConsumerSeries>>>,
    described_consumers: Arc<DescribedConsumers>,
    other_consumers: Arc<ConsumerSeries>,
}

impl Default for TrafficMetrics {
    fn default() -> Self {
        Self::new(&MetricsSpec::default())
    }
}

impl TrafficMetrics {
    /// Metrics as `spec` asks (validated: buckets increase, `max_consumers` is at least 1).
    pub fn new(spec: &MetricsSpec) -> Self {
        let bounds = |list: &[gantry_config::Duration]| Buckets::new(&list.iter().map(|d| d.get()).collect::<Vec<_>>());
        Self {
            enabled: spec.enabled,
            consumer_label: spec.enabled && spec.consumer_label,
            max_consumers: spec.max_consumers,
            duration_buckets: bounds(&spec.duration_buckets),
            overhead_buckets: bounds(&spec.overhead_buckets),
            unmatched: StatusCounts::default(),
            routes: Mutex::default(),
            endpoints: Mutex::default(),
            upstreams: Mutex::default(),
            configured_consumers: Mutex::default(),
            described_consumers: Arc::default(),
            other_consumers: ConsumerSeries::new(OTHER_CONSUMERS.into()),
        }
    }

    /// Metrics that count nothing (`node.metrics.enabled: false`, and `gantry validate`).
    pub fn disabled() -> Self {
        Self::new(&MetricsSpec { enabled: false, ..MetricsSpec::default() })
    }

    /// Whether requests are counted.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The handles for route `id` of `service`: the series it had before when one is still
    /// alive, else a new one. `None` when requests are not counted.
    pub fn route(
        &self,
        id: &Arc<str>,
        service: Option<&str>,
        consumers: Option<Arc<ConsumerTable>>,
    ) -> Option<RouteMetrics> {
        if !self.enabled {
            return None;
        }
        let key: RouteKey = (id.clone(), service.map(Arc::from));
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let series = match routes.get(&key).and_then(Weak::upgrade) {
            Some(alive) => alive,
            None => {
                let created = Arc::new(RouteSeries {
                    route: key.0.clone(),
                    service: key.1.clone(),
                    requests: StatusCounts::default(),
                    duration: LatencyHistogram::new(self.duration_buckets.clone()),
                    overhead: LatencyHistogram::new(self.overhead_buckets.clone()),
                    request_body_bytes: AtomicU64::new(0),
                    response_body_bytes: AtomicU64::new(0),
                });
                routes.retain(|_, series| series.strong_count() > 0);
                routes.insert(key, Arc::downgrade(&created));
                created
            }
        };
        Some(RouteMetrics { series, consumers })
    }

    /// The series of endpoint `address` of upstream `upstream`, whose shared state is `state`.
    /// `None` when requests are not counted.
    pub fn endpoint(
        &self,
        upstream: &Arc<str>,
        address: &Arc<str>,
        state: &Arc<EndpointState>,
    ) -> Option<Arc<EndpointSeries>> {
        if !self.enabled {
            return None;
        }
        let key: EndpointKey = (upstream.clone(), address.clone());
        let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        // An endpoint removed and added again has new state; its series starts over with it.
        if let Some(alive) =
            endpoints.get(&key).and_then(Weak::upgrade).filter(|alive| Arc::ptr_eq(&alive.state, state))
        {
            return Some(alive);
        }
        let created = Arc::new(EndpointSeries {
            upstream: upstream.clone(),
            endpoint: address.clone(),
            state: state.clone(),
            responses: StatusCounts::default(),
            failures: Default::default(),
            duration: LatencyHistogram::new(self.duration_buckets.clone()),
        });
        endpoints.retain(|_, series| series.strong_count() > 0);
        endpoints.insert(key, Arc::downgrade(&created));
        Some(created)
    }

    /// The series of upstream `id`: the one it had before when still alive, else a new one.
    /// `None` when requests are not counted.
    pub fn upstream(&self, id: &Arc<str>) -> Option<Arc<UpstreamSeries>> {
        if !self.enabled {
            return None;
        }
        let mut upstreams = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(alive) = upstreams.get(id).and_then(Weak::upgrade) {
            return Some(alive);
        }
        let created = Arc::new(UpstreamSeries {
            upstream: id.clone(),
            overloaded: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
        });
        upstreams.retain(|_, series| series.strong_count() > 0);
        upstreams.insert(id.clone(), Arc::downgrade(&created));
        Some(created)
    }

    /// The consumer table of a snapshot whose configured consumers are `configured`, in
    /// configuration order: the first `max_consumers` are counted apart, keeping the series
    /// they had; tokens' consumers may take the places left. `None` unless consumers are counted.
    pub fn consumer_table<'c>(&self, configured: impl IntoIterator<Item = &'c str>) -> Option<Arc<ConsumerTable>> {
        if !self.consumer_label {
            return None;
        }
        let mut known = self.configured_consumers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut described = self.described_consumers.series.write().unwrap_or_else(PoisonError::into_inner);
        let mut table = HashMap::new();
        for id in configured.into_iter().take(self.max_consumers) {
            let id: Arc<str> = id.into();
            // A consumer first seen in a token and now configured keeps its count.
            let series = known
                .get(&id)
                .and_then(Weak::upgrade)
                .or_else(|| described.remove(&id))
                .unwrap_or_else(|| ConsumerSeries::new(id.clone()));
            table.insert(id, series);
        }
        known.clear();
        known.extend(table.iter().map(|(id, series)| (id.clone(), Arc::downgrade(series))));
        let room = self.max_consumers - table.len();
        self.described_consumers.capacity.store(room, Ordering::Relaxed);
        if described.len() > room {
            let excess: Vec<Arc<str>> = described.keys().skip(room).cloned().collect();
            for id in excess {
                described.remove(&id);
            }
        }
        Some(Arc::new(ConsumerTable {
            configured: table,
            described: self.described_consumers.clone(),
            other: self.other_consumers.clone(),
        }))
    }

    /// Counts a request no route matched, or one refused before routing.
    #[inline]
    pub fn count_unmatched(&self, status: StatusCode) {
        if self.enabled {
            self.unmatched.count(status);
        }
    }

    /// Requests no route matched, or refused before routing, by status class.
    pub fn unmatched(&self) -> BTreeMap<&'static str, u64> {
        self.unmatched.by_class()
    }

    fn live_routes(&self) -> Vec<Arc<RouteSeries>> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<Arc<RouteSeries>> = routes.values().filter_map(Weak::upgrade).collect();
        live.sort_by(|a, b| (&a.route, &a.service).cmp(&(&b.route, &b.service)));
        live
    }

    fn live_upstreams(&self) -> Vec<Arc<UpstreamSeries>> {
        let upstreams = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<Arc<UpstreamSeries>> = upstreams.values().filter_map(Weak::upgrade).collect();
        live.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        live
    }

    fn live_endpoints(&self) -> Vec<Arc<EndpointSeries>> {
        let endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<Arc<EndpointSeries>> = endpoints.values().filter_map(Weak::upgrade).collect();
        live.sort_by(|a, b| (&a.upstream, &a.endpoint).cmp(&(&b.upstream, &b.endpoint)));
        live
    }

    /// Per consumer id, its counts by status class. A consumer present in two tables at once
    /// (configured by a reload while an older snapshot still counts it as described) is one
    /// series, so the exposition never repeats a label set.
    fn consumer_counts(&self) -> BTreeMap<Arc<str>, [u64; STATUS_CLASSES.len()]> {
        let mut counts: BTreeMap<Arc<str>, [u64; STATUS_CLASSES.len()]> = BTreeMap::new();
        let mut add = |series: &ConsumerSeries| {
            let entry = counts.entry(series.consumer.clone()).or_default();
            for (class, total) in entry.iter_mut().enumerate() {
                *total += series.requests.get(class);
            }
        };
        for series in
            self.configured_consumers.lock().unwrap_or_else(PoisonError::into_inner).values().filter_map(Weak::upgrade)
        {
            add(&series);
        }
        for series in self.described_consumers.series.read().unwrap_or_else(PoisonError::into_inner).values() {
            add(series);
        }
        add(&self.other_consumers);
        counts
    }
}

/// `route` and, when the route belongs to one, `service`.
fn route_labels(series: &RouteSeries) -> Vec<(&'static str, &str)> {
    let mut labels = vec![("route", &*series.route)];
    if let Some(service) = &series.service {
        labels.push(("service", service));
    }
    labels
}

fn endpoint_labels(series: &EndpointSeries) -> Vec<(&'static str, &str)> {
    vec![("upstream", &*series.upstream), ("endpoint", &*series.endpoint)]
}

fn with_label<'a>(
    mut labels: Vec<(&'static str, &'a str)>,
    name: &'static str,
    value: &'a str,
) -> Vec<(&'static str, &'a str)> {
    labels.push((name, value));
    labels
}

fn encode_counter(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &Vec<(&'static str, &str)>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(family.encode_family(labels)?)
}

fn encode_gauge(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &Vec<(&'static str, &str)>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(family.encode_family(labels)?)
}

impl Collector for TrafficMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.enabled {
            return Ok(());
        }
        self.encode_routes(&mut encoder)?;
        self.encode_endpoints(&mut encoder)?;
        self.encode_upstreams(&mut encoder)?;
        if self.consumer_label {
            self.encode_consumers(&mut encoder)?;
        }
        Ok(())
    }
}

impl TrafficMetrics {
    fn encode_routes(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let routes = self.live_routes();
        let mut family = encoder.encode_descriptor(
            "gantry_requests",
            "Requests answered, by route (and service) and status class; requests no route matched have no route label.",
            None,
            MetricType::Counter,
        )?;
        for (class, label) in STATUS_CLASSES.iter().enumerate() {
            encode_counter(&mut family, &vec![("status_class", *label)], self.unmatched.get(class))?;
        }
        for series in &routes {
            for (class, label) in STATUS_CLASSES.iter().enumerate() {
                let labels = with_label(route_labels(series), "status_class", label);
                encode_counter(&mut family, &labels, series.requests.get(class))?;
            }
        }
        if routes.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "gantry_request_duration",
            "Time from a request's arrival to its response head, by route.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for series in &routes {
            series.duration.encode(family.encode_family(&route_labels(series))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "gantry_gateway_overhead",
            "Time a forwarded request spent in the gateway rather than waiting for the upstream's response head (request duration minus the answering try's upstream duration), by route.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for series in &routes {
            series.overhead.encode(family.encode_family(&route_labels(series))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "gantry_request_body",
            "Request body bytes read from clients (forwarded or read by policies), by route.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for series in &routes {
            encode_counter(&mut family, &route_labels(series), series.request_body_bytes.load(Ordering::Relaxed))?;
        }
        let mut family = encoder.encode_descriptor(
            "gantry_response_body",
            "Response body bytes passed to clients, by route.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for series in &routes {
            encode_counter(&mut family, &route_labels(series), series.response_body_bytes.load(Ordering::Relaxed))?;
        }
        Ok(())
    }

    fn encode_endpoints(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let endpoints = self.live_endpoints();
        if endpoints.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_responses",
            "Tries an upstream endpoint answered, by status class.",
            None,
            MetricType::Counter,
        )?;
        for series in &endpoints {
            for (class, label) in STATUS_CLASSES.iter().enumerate() {
                let labels = with_label(endpoint_labels(series), "status_class", label);
                encode_counter(&mut family, &labels, series.responses.get(class))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_failures",
            "Tries that got no response from an upstream endpoint, by reason: connect, timeout or exchange (reset, protocol error).",
            None,
            MetricType::Counter,
        )?;
        for series in &endpoints {
            for failure in UpstreamFailure::ALL {
                let labels = with_label(endpoint_labels(series), "reason", failure.label());
                encode_counter(&mut family, &labels, series.failures[failure as usize].load(Ordering::Relaxed))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_duration",
            "Time from sending a try to an upstream endpoint to its response head.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for series in &endpoints {
            series.duration.encode(family.encode_family(&endpoint_labels(series))?)?;
        }
        let now = Instant::now();
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_endpoint_available",
            "1 when an upstream endpoint receives traffic (healthy by its active checks and not ejected by passive ones), 0 otherwise.",
            None,
            MetricType::Gauge,
        )?;
        for series in &endpoints {
            encode_gauge(&mut family, &endpoint_labels(series), i64::from(series.state.is_available(now)))?;
        }
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_endpoint_in_flight",
            "Exchanges with an upstream endpoint in progress, from sending the request to the response body's end.",
            None,
            MetricType::Gauge,
        )?;
        for series in &endpoints {
            let in_flight = series.state.in_flight.load(Ordering::Relaxed);
            encode_gauge(&mut family, &endpoint_labels(series), i64::from(in_flight))?;
        }
        Ok(())
    }

    fn encode_upstreams(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let upstreams = self.live_upstreams();
        if upstreams.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_overloaded",
            "Requests refused with 503 upstream-overloaded by an upstream's limits (bulkhead), without calling it.",
            None,
            MetricType::Counter,
        )?;
        for series in &upstreams {
            encode_counter(
                &mut family,
                &vec![("upstream", &*series.upstream)],
                series.overloaded.load(Ordering::Relaxed),
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "gantry_upstream_retries_denied",
            "Retries an upstream's retry budget did not allow; the failing try's answer went to the client.",
            None,
            MetricType::Counter,
        )?;
        for series in &upstreams {
            let denied = series.retries_denied.load(Ordering::Relaxed);
            encode_counter(&mut family, &vec![("upstream", &*series.upstream)], denied)?;
        }
        Ok(())
    }

    fn encode_consumers(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "gantry_consumer_requests",
            "Requests of recognised consumers, by consumer and status class; past node.metrics.max_consumers consumers, the rest count as (other).",
            None,
            MetricType::Counter,
        )?;
        for (consumer, counts) in self.consumer_counts() {
            for (class, label) in STATUS_CLASSES.iter().enumerate() {
                encode_counter(&mut family, &vec![("consumer", &*consumer), ("status_class", *label)], counts[class])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! The access log: one structured record per request, written by sinks off the request path.
//!
//! The request path only builds an owned [`AccessRecord`] and does a `try_send` into each
//! sink's bounded queue. Every sink runs on a thread of its own (a single-threaded runtime),
//! where records are serialized and written or sent in batches. A sink that falls behind, or
//! whose destination is down, fills its own queue: its records are then dropped and counted
//! (`gantry_access_log_dropped_total{sink}`), never waited for, and the other sinks go on.

mod elasticsearch;
mod file;
mod http_sink;
mod otlp;
mod record;
mod sink;
mod syslog;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gantry_config::{AccessLogField, AccessLogSpec};
use gantry_policy_api::ai::AiUsage;
use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

pub use record::RecordFormat;
pub use trace::{trace_context, TraceContext};

/// One request's record, owned so it can cross to the sinks' threads.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub time: SystemTime,
    /// Request id.
    pub request_id: Arc<str>,
    /// W3C trace id of the request, set from [`trace_context`].
    pub trace_id: Option<[u8; 16]>,
    /// W3C span id of the request, set from [`trace_context`].
    pub span_id: Option<[u8; 8]>,
    /// Matched route.
    pub route_id: Option<Arc<str>>,
    /// The matched route's service.
    pub service_id: Option<Arc<str>>,
    /// Recognised consumer.
    pub consumer_id: Option<Arc<str>>,
    /// Client address.
    pub client: SocketAddr,
    /// Method.
    pub method: Method,
    /// Path and query as received.
    pub uri: Uri,
    /// HTTP version.
    pub version: http::Version,
    /// `Host` header, or the HTTP/2 authority.
    pub host: Option<HeaderValue>,
    /// `User-Agent` header.
    pub user_agent: Option<HeaderValue>,
    /// Status sent.
    pub status: u16,
    /// Request body length the client declared.
    pub bytes_received: Option<u64>,
    /// Response body length, when known at the response head.
    pub bytes_sent: Option<u64>,
    /// Time to the response head.
    pub duration: Duration,
    /// Endpoint that answered.
    pub upstream_addr: Option<Arc<str>>,
    /// Upstream time to response head.
    pub upstream_duration: Option<Duration>,
    /// The configured request headers the request had, in configuration order.
    pub request_headers: Vec<(HeaderName, HeaderValue)>,
    /// The configured response headers the response had, in configuration order.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// What an AI exchange used, once its answer was complete; `None` for other requests.
    pub ai: Option<Arc<AiUsage>>,
}

impl AccessRecord {
    /// Gives the record its own copies of what it took from the request and response heads.
    /// Parsed heads are slices of their connection's read buffer, so a record waiting in a
    /// sink's queue would keep that whole buffer alive until the sink writes it, and the
    /// connection would read on into new ones: 17 MB more with 50 busy connections and a
    /// request target other than `/` (which is not a slice).
    fn detach(&mut self) {
        self.uri = owned_uri(&self.uri);
        for value in self.host.iter_mut().chain(self.user_agent.iter_mut()) {
            *value = owned_value(value);
        }
        for (_, value) in self.request_headers.iter_mut().chain(self.response_headers.iter_mut()) {
            *value = owned_value(value);
        }
    }
}

fn owned_value(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(mut owned) => {
            owned.set_sensitive(value.is_sensitive());
            owned
        }
        Err(_) => value.clone(),
    }
}

fn owned_uri(uri: &Uri) -> Uri {
    if uri.authority().is_none() {
        match uri.path_and_query().map(http::uri::PathAndQuery::as_str) {
            // `/` and `*` are parsed into values that own nothing shared.
            Some("/" | "*") | None => return uri.clone(),
            Some(origin) => {
                if let Ok(owned) = http::uri::PathAndQuery::try_from(origin) {
                    return Uri::from(owned);
                }
            }
        }
    }
    Uri::try_from(uri.to_string()).unwrap_or_else(|_| uri.clone())
}

/// What a record takes from the request head, taken before the request moves on.
#[derive(Debug, Default)]
pub struct RequestFacts {
    /// Trace context, from [`trace_context`].
    pub trace: Option<TraceContext>,
    /// `Host` or authority, when logged.
    pub host: Option<HeaderValue>,
    /// `User-Agent`, when logged.
    pub user_agent: Option<HeaderValue>,
    /// Declared body length, when logged.
    pub bytes_received: Option<u64>,
    /// The configured request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Labels of the per-sink access log counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// The per-sink counters, shared by the request path (drops) and the sink threads.
#[derive(Clone, Debug, Default)]
struct SinkCounters {
    dropped: Family<SinkLabels, Counter>,
    written: Family<SinkLabels, Counter>,
    failed: Family<SinkLabels, Counter>,
}

/// One sink's queue, as the request path sees it.
#[derive(Clone, Debug)]
struct SinkQueue {
    sender: mpsc::Sender<Arc<AccessRecord>>,
    dropped: Counter,
}

/// The sending side of the access log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    queues: Arc<[SinkQueue]>,
    format: Arc<RecordFormat>,
    counters: SinkCounters,
}

impl AccessLog {
    /// Starts one thread per sink of `spec`. Fails when a sink cannot start (a file that
    /// cannot be opened, a thread that cannot be spawned).
    pub fn start(spec: &AccessLogSpec) -> Result<Self, String> {
        let format = Arc::new(RecordFormat::new(spec)?);
        let counters = SinkCounters::default();
        let mut queues = Vec::new();
        for sink in spec.all_sinks() {
            let labels = SinkLabels { sink: sink.name().to_owned() };
            let (sender, receiver) = mpsc::channel(sink.queue().capacity.max(1));
            let dropped = counters.dropped.get_or_create(&labels).clone();
            let tally = sink::Tally {
                written: counters.written.get_or_create(&labels).clone(),
                failed: counters.failed.get_or_create(&labels).clone(),
            };
            sink::start(&sink, receiver, format.clone(), tally)
                .map_err(|err| format!("access log sink `{}`: {err}", sink.name()))?;
            queues.push(SinkQueue { sender, dropped });
        }
        Ok(Self { queues: queues.into(), format, counters })
    }

    /// Takes what the record needs from a request head: only what the fields log.
    pub fn request_facts(&self, uri: &Uri, headers: &HeaderMap) -> RequestFacts {
        let wants = &self.format.wants;
        RequestFacts {
            trace: if wants.trace { trace_context(headers) } else { None },
            host: if wants.host {
                match uri.authority() {
                    Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                    None => headers.get(HOST).cloned(),
                }
            } else {
                None
            },
            user_agent: if wants.user_agent { headers.get(USER_AGENT).cloned() } else { None },
            bytes_received: if wants.bytes_received {
                headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok())
            } else {
                None
            },
            headers: pick_headers(&self.format.request_headers, headers),
        }
    }

    /// The configured response headers `headers` has.
    pub fn response_headers(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        pick_headers(&self.format.response_headers, headers)
    }

    /// Queues a record for every sink; a sink whose queue is full drops it and counts it.
    pub fn emit(&self, mut record: AccessRecord) {
        record.detach();
        let record = Arc::new(record);
        for queue in self.queues.iter() {
            if queue.sender.try_send(record.clone()).is_err() {
                queue.dropped.inc();
            }
        }
    }

    /// Records dropped so far, all sinks together.
    pub fn dropped(&self) -> u64 {
        self.queues.iter().map(|queue| queue.dropped.get()).sum()
    }

    /// Registers the per-sink counters in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "gantry_access_log_dropped",
            "Access log records a sink dropped because it had fallen behind and its queue was full",
            self.counters.dropped.clone(),
        );
        registry.register(
            "gantry_access_log_written",
            "Access log records a sink wrote or delivered",
            self.counters.written.clone(),
        );
        registry.register(
            "gantry_access_log_failed",
            "Access log records a sink gave up on: a write that failed, a batch refused or still failing after its retries, items a _bulk answer rejected",
            self.counters.failed.clone(),
        );
    }
}

fn pick_headers(names: &[HeaderName], headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    if names.is_empty() {
        return Vec::new();
    }
    let mut picked = Vec::new();
    for name in names {
        for value in headers.get_all(name) {
            picked.push((name.clone(), value.clone()));
        }
    }
    picked
}

/// Which request facts the configured fields need, so the request path takes no more.
#[derive(Debug, Default)]
struct Wants {
    trace: bool,
    host: bool,
    user_agent: bool,
    bytes_received: bool,
}

impl Wants {
    fn of(fields: &[AccessLogField]) -> Self {
        Self {
            trace: fields.iter().any(|field| matches!(field, AccessLogField::TraceId | AccessLogField::SpanId)),
            host: fields.contains(&AccessLogField::Host),
            user_agent: fields.contains(&AccessLogField::UserAgent),
            bytes_received: fields.contains(&AccessLogField::BytesReceived),
        }
    }
}

#[cfg(test)]
mod tests;

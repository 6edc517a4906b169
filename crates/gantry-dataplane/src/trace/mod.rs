//! Distributed tracing (`node.tracing`): the caller's trace context (W3C `traceparent` or B3)
//! is continued, passed to the upstream, and a sampled request's spans (the server span, one
//! per policy stage that ran, the upstream call) are exported over OTLP.
//!
//! Runs per request, only when tracing is configured: without `node.tracing` the gateway holds
//! no [`Tracer`] and nothing here runs. An unsampled request reads the caller's context and
//! passes it to the upstream (writing `traceparent` only for a new trace or a B3 caller),
//! nothing more. A sampled one records plain values
//! ([`record`]) and hands them to a bounded queue; the exporter thread (`export`) builds the
//! OTLP messages and sends them, so export never makes a request wait.

pub mod context;
mod export;
pub mod record;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::{HeaderMap, Request};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

pub use context::{Format, RemoteParent, Sampler, SpanId, TraceId};
pub use export::TraceMetrics;
use gantry_config::TracingSpec;
use record::{FinishedTrace, RequestFacts};
pub use record::{ServerOutcome, SpanRecorder, UpstreamSpan};

/// Starts request traces and queues the sampled ones for export. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracer {
    sampler: Sampler,
    queue: mpsc::UnboundedSender<FinishedTrace>,
    /// Spans waiting in `queue`; bounded by `max_queue`.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    metrics: TraceMetrics,
}

impl Tracer {
    /// Starts the exporter thread for `spec`.
    pub fn start(spec: &TracingSpec) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = export::new_metrics();
        export::spawn(spec, receiver, queued.clone(), metrics.clone())?;
        Ok(Self {
            sampler: Sampler::new(spec.sampler.ratio, spec.sampler.parent_based),
            queue,
            queued,
            max_queue: spec.batch.max_queue,
            metrics,
        })
    }

    /// Registers the exporter's counters in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// The exporter's counters.
    pub fn metrics(&self) -> &TraceMetrics {
        &self.metrics
    }

    /// Starts the trace of `request` from `peer`: continues the caller's context or starts a
    /// new trace, and decides whether it is recorded.
    pub fn start_request<B>(&self, request: &Request<B>, peer: std::net::SocketAddr, is_tls: bool) -> RequestTrace {
        let headers = request.headers();
        let parent = context::extract(headers);
        let trace_id = parent.map_or_else(context::new_trace_id, |parent| parent.trace_id);
        let sampled = self.sampler.should_sample(parent.as_ref(), &trace_id);
        let recorder = sampled.then(|| {
            Box::new(SpanRecorder::new(RequestFacts {
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                host: request_host(request),
                peer,
                is_tls,
                tracestate: parent.and_then(|_| headers.get(&context::TRACESTATE).cloned()),
            }))
        });
        RequestTrace { trace_id, span_id: context::new_span_id(), parent, recorder }
    }

    /// Ends the server span of a sampled `trace` and queues its spans; when the queue is full
    /// they are dropped and counted.
    pub fn finish(&self, trace: RequestTrace, outcome: ServerOutcome) {
        let Some(recorder) = trace.recorder else { return };
        let finished = FinishedTrace {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent: trace.parent,
            recorder,
            end: Instant::now(),
            outcome,
        };
        let spans = finished.span_count();
        if self.queued.fetch_add(spans, Ordering::AcqRel) + spans > self.max_queue {
            self.queued.fetch_sub(spans, Ordering::AcqRel);
            self.metrics.dropped_queue_full.inc_by(spans as u64);
            return;
        }
        if self.queue.send(finished).is_err() {
            self.queued.fetch_sub(spans, Ordering::AcqRel);
            self.metrics.dropped_queue_full.inc_by(spans as u64);
        }
    }
}

fn request_host<B>(request: &Request<B>) -> Option<http::HeaderValue> {
    match request.uri().authority() {
        Some(authority) => http::HeaderValue::from_str(authority.host()).ok(),
        None => request.headers().get(HOST).cloned(),
    }
}

/// One request's trace: its ids, the caller's context, and its spans when sampled.
#[derive(Debug)]
pub struct RequestTrace {
    trace_id: TraceId,
    /// The gateway's server span.
    span_id: SpanId,
    parent: Option<RemoteParent>,
    recorder: Option<Box<SpanRecorder>>,
}

impl RequestTrace {
    /// The trace id.
    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    /// The id of the gateway's server span.
    pub fn span_id(&self) -> &SpanId {
        &self.span_id
    }

    /// The trace and span an access log record names: the server span when sampled, else the
    /// span the upstream sees as its parent (the caller's, or a new one for a new trace).
    pub fn log_context(&self) -> (TraceId, SpanId) {
        match (&self.recorder, &self.parent) {
            (None, Some(parent)) => (self.trace_id, parent.span_id),
            _ => (self.trace_id, self.span_id),
        }
    }

    /// Whether the spans are recorded and exported.
    pub fn is_sampled(&self) -> bool {
        self.recorder.is_some()
    }

    /// Records the spans, when sampled.
    pub fn recorder(&mut self) -> Option<&mut SpanRecorder> {
        self.recorder.as_deref_mut()
    }

    /// Writes the context for the upstream into `headers`: under the upstream call's client
    /// span when sampled (start it first). An unsampled request passes the caller's W3C
    /// context on as it came, since no span of the gateway is recorded for the upstream's to
    /// hang from; a new trace, or one that came as B3, gets its `traceparent` written.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let format = self.parent.map(|parent| parent.format);
        let upstream_parent = match &self.recorder {
            Some(recorder) => recorder.upstream.as_ref().map_or(&self.span_id, |upstream| &upstream.span_id),
            None => match &self.parent {
                Some(parent) if parent.format == Format::W3c => return,
                Some(parent) => &parent.span_id,
                None => &self.span_id,
            },
        };
        context::inject(headers, &self.trace_id, upstream_parent, self.is_sampled(), format);
    }
}

//! One request's spans as the request path records them: plain values (instants, static
//! names, shared ids), turned into OTLP messages only by the exporter thread.
//!
//! Runs per sampled request: one allocation for the recording, one for its stage list; a
//! stage costs one clock read when the pipeline moves into it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use gantry_policy_api::ai::AiUsage;
use gantry_policy_api::Stage;
use http::{HeaderValue, Method, Uri, Version};

use super::context::{RemoteParent, SpanId};

/// A stage of policies that ran, as one span.
#[derive(Debug)]
pub(crate) struct StageSpan {
    pub stage: Stage,
    /// Response hooks (run in reverse stage order) rather than request hooks.
    pub response: bool,
    pub start: Instant,
    pub end: Instant,
    /// Range in [`SpanRecorder::policies`] of the policies that ran in it.
    pub policies: (usize, usize),
}

/// What one try at the upstream ended in, for a retry event.
#[derive(Debug)]
pub(crate) enum TryOutcome {
    /// The endpoint answered with this status, which the upstream retries on.
    Status(u16),
    /// The try failed; the problem type code (`upstream-timeout`...).
    Failed(&'static str),
}

/// A try that was followed by a retry.
#[derive(Debug)]
pub(crate) struct RetriedTry {
    pub at: Instant,
    pub endpoint: Arc<str>,
    pub outcome: TryOutcome,
}

/// The client span of the call to the upstream, with its retries as events.
#[derive(Debug)]
pub struct UpstreamSpan {
    pub(crate) span_id: SpanId,
    pub(crate) upstream: Arc<str>,
    pub(crate) start: Instant,
    pub(crate) end: Option<Instant>,
    /// The endpoint of the last try.
    pub(crate) endpoint: Option<Arc<str>>,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<&'static str>,
    pub(crate) retries: Vec<RetriedTry>,
}

impl UpstreamSpan {
    /// Notes the endpoint a try goes to.
    pub fn trying(&mut self, endpoint: &Arc<str>) {
        self.endpoint = Some(endpoint.clone());
    }

    /// Notes a try that is about to be retried: answered with `status`, or failed with `error`.
    pub fn retrying(&mut self, endpoint: &Arc<str>, status: Option<u16>, error: Option<&'static str>) {
        let outcome = match (status, error) {
            (Some(status), _) => TryOutcome::Status(status),
            (None, error) => TryOutcome::Failed(error.unwrap_or("upstream-failed")),
        };
        self.retries.push(RetriedTry { at: Instant::now(), endpoint: endpoint.clone(), outcome });
    }
}

/// Facts of the server span known when the request arrives.
#[derive(Debug)]
pub(crate) struct RequestFacts {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub peer: std::net::SocketAddr,
    pub is_tls: bool,
    pub tracestate: Option<HeaderValue>,
}

/// The spans of one sampled request while it runs.
#[derive(Debug)]
pub struct SpanRecorder {
    pub(crate) wall_start: SystemTime,
    pub(crate) start: Instant,
    pub(crate) request: RequestFacts,
    pub(crate) stages: Vec<StageSpan>,
    pub(crate) policies: Vec<&'static str>,
    open: Option<(Stage, bool, Instant, usize)>,
    pub(crate) upstream: Option<UpstreamSpan>,
    /// The policy that answered instead of the upstream.
    pub(crate) answered_by: Option<&'static str>,
}

impl SpanRecorder {
    pub(crate) fn new(request: RequestFacts) -> Self {
        Self {
            wall_start: SystemTime::now(),
            start: Instant::now(),
            request,
            stages: Vec::with_capacity(8),
            policies: Vec::new(),
            open: None,
            upstream: None,
            answered_by: None,
        }
    }

    /// A policy of `stage` is about to run (`response` for response hooks): the stage's span
    /// starts if it is not the one already open.
    pub fn policy(&mut self, stage: Stage, response: bool, name: &'static str) {
        let is_open = self.open.is_some_and(|(open, is_response, ..)| open == stage && is_response == response);
        if !is_open {
            let now = Instant::now();
            self.close_at(now);
            self.open = Some((stage, response, now, self.policies.len()));
        }
        self.policies.push(name);
    }

    /// The hooks are done: the open stage's span ends.
    pub fn stages_done(&mut self) {
        if self.open.is_some() {
            self.close_at(Instant::now());
        }
    }

    fn close_at(&mut self, end: Instant) {
        if let Some((stage, response, start, first)) = self.open.take() {
            self.stages.push(StageSpan { stage, response, start, end, policies: (first, self.policies.len()) });
        }
    }

    /// A policy answered the request instead of the upstream.
    pub fn answered_by(&mut self, policy: &'static str) {
        self.answered_by = Some(policy);
    }

    /// Starts the client span of the call to `upstream`; its id is the parent the upstream sees.
    pub fn start_upstream(&mut self, upstream: &Arc<str>) -> &mut UpstreamSpan {
        self.upstream.insert(UpstreamSpan {
            span_id: super::context::new_span_id(),
            upstream: upstream.clone(),
            start: Instant::now(),
            end: None,
            endpoint: None,
            status: None,
            error: None,
            retries: Vec::new(),
        })
    }

    /// Ends the client span: the upstream answered with `status`, or failed with `error`.
    pub fn end_upstream(&mut self, status: Option<u16>, error: Option<&'static str>) {
        if let Some(span) = &mut self.upstream {
            span.end = Some(Instant::now());
            span.status = status;
            span.error = error;
        }
    }

    /// Nanoseconds since the Unix epoch of `at`.
    pub(crate) fn unix_nanos(&self, at: Instant) -> u64 {
        let since_epoch = self.wall_start.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let offset = at.saturating_duration_since(self.start);
        u64::try_from((since_epoch + offset).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What the server span learns when the response head is ready.
#[derive(Debug)]
pub struct ServerOutcome {
    /// Status sent.
    pub status: u16,
    /// Matched route.
    pub route: Option<Arc<str>>,
    /// Recognised consumer.
    pub consumer: Option<Arc<str>>,
    /// What an AI exchange used, when the request was one and its answer completed.
    pub ai: Option<Arc<AiUsage>>,
}

/// A finished sampled request, queued for export.
#[derive(Debug)]
pub(crate) struct FinishedTrace {
    pub trace_id: super::context::TraceId,
    pub span_id: SpanId,
    pub parent: Option<RemoteParent>,
    pub recorder: Box<SpanRecorder>,
    pub end: Instant,
    pub outcome: ServerOutcome,
}

impl FinishedTrace {
    /// Spans it exports: the server span, its stages and the upstream call.
    pub fn span_count(&self) -> usize {
        1 + self.recorder.stages.len() + usize::from(self.recorder.upstream.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A recorder for a `GET /` from 127.0.0.1.
    pub(crate) fn recorder() -> SpanRecorder {
        SpanRecorder::new(RequestFacts {
            method: Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            host: None,
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            is_tls: false,
            tracestate: None,
        })
    }
}

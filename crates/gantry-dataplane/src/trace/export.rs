//! The exporter thread: drains the queue of finished traces on a timer, turns them into OTLP
//! messages and sends them over gRPC (`TraceService/Export`) or HTTP (POST of protobuf).
//!
//! Off the request path. The thread never waits on the queue, so queuing a trace never has to
//! wake it (as with the access log); a failed or late export drops its batch and counts it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_config::{OtlpProtocol, TracingSpec};
use gantry_policy_api::ai::AiUsage;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::mpsc;

use super::record::{FinishedTrace, SpanRecorder, TryOutcome};

/// Labels of `gantry_tracing_spans_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The exporter's counters. Cheap to clone: clones share them.
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
    pub(crate) dropped_queue_full: Counter,
    dropped_export_failed: Counter,
    export_failures: Counter,
}

impl TraceMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "gantry_tracing_spans_exported",
            "Spans the OTLP receiver accepted (node.tracing)",
            self.exported.clone(),
        );
        registry.register(
            "gantry_tracing_spans_dropped",
            "Spans not exported, by reason: queue_full (the queue, node.tracing.batch.max_queue, was full; the request was not held up) or export_failed (the receiver refused, could not be reached or did not answer in time)",
            self.dropped.clone(),
        );
        registry.register(
            "gantry_tracing_export_failures",
            "OTLP exports that failed; their spans count in gantry_tracing_spans_dropped_total{reason=\"export_failed\"}",
            self.export_failures.clone(),
        );
    }

    fn new() -> Self {
        let dropped = Family::<DropLabels, Counter>::default();
        // Bound once, so that a drop costs one atomic addition and both series always show.
        let dropped_queue_full = dropped.get_or_create(&DropLabels { reason: "queue_full" }).clone();
        let dropped_export_failed = dropped.get_or_create(&DropLabels { reason: "export_failed" }).clone();
        Self { dropped, dropped_queue_full, dropped_export_failed, ..Self::default() }
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }

    /// Spans dropped so far because the queue was full.
    pub fn dropped_queue_full(&self) -> u64 {
        self.dropped_queue_full.get()
    }

    /// Spans dropped so far because their export failed.
    pub fn dropped_export_failed(&self) -> u64 {
        self.dropped_export_failed.get()
    }
}

/// The metrics a new tracer counts in.
pub(crate) fn new_metrics() -> TraceMetrics {
    TraceMetrics::new()
}

/// Longest the thread sleeps between looks at the queue, so that a full batch waits little
/// even with a long `interval`.
const MAX_TICK: Duration = Duration::from_millis(50);

/// Starts the exporter thread.
pub(crate) fn spawn(
    spec: &TracingSpec,
    receiver: mpsc::UnboundedReceiver<FinishedTrace>,
    queued: Arc<AtomicUsize>,
    metrics: TraceMetrics,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let settings = Settings {
        resource: resource(&spec.service_name, &spec.resource_attributes),
        max_batch: spec.batch.max_batch,
        interval: spec.batch.interval.get(),
        timeout: spec.exporter.timeout.get(),
    };
    let protocol = spec.exporter.protocol;
    let endpoint = spec.exporter.endpoint.clone();
    let headers: Vec<(String, String)> =
        spec.exporter.headers.iter().map(|(name, value)| (name.clone(), value.expose().clone())).collect();
    std::thread::Builder::new().name("gantry-trace-export".to_owned()).spawn(move || {
        runtime.block_on(async move {
            let exporter = match Exporter::new(protocol, &endpoint, &headers, settings.timeout) {
                Ok(exporter) => exporter,
                Err(err) => {
                    tracing::error!(endpoint, error = %err, "the trace exporter cannot be set up; spans are dropped");
                    return;
                }
            };
            run(receiver, queued, exporter, settings, metrics).await;
        });
    })?;
    Ok(())
}

struct Settings {
    resource: Resource,
    max_batch: usize,
    interval: Duration,
    timeout: Duration,
}

async fn run(
    mut receiver: mpsc::UnboundedReceiver<FinishedTrace>,
    queued: Arc<AtomicUsize>,
    mut exporter: Exporter,
    settings: Settings,
    metrics: TraceMetrics,
) {
    let tick = settings.interval.min(MAX_TICK);
    let mut pending: Vec<FinishedTrace> = Vec::new();
    let mut pending_spans = 0;
    let mut last_export = Instant::now();
    let mut last_warning: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let closed = loop {
            match receiver.try_recv() {
                Ok(trace) => {
                    let spans = trace.span_count();
                    queued.fetch_sub(spans, Ordering::AcqRel);
                    pending_spans += spans;
                    pending.push(trace);
                    if pending_spans >= settings.max_batch {
                        let batch = std::mem::take(&mut pending);
                        export(&mut exporter, &settings, batch, pending_spans, &metrics, &mut last_warning).await;
                        pending_spans = 0;
                        last_export = Instant::now();
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        if pending_spans > 0 && (closed || last_export.elapsed() >= settings.interval) {
            let batch = std::mem::take(&mut pending);
            export(&mut exporter, &settings, batch, pending_spans, &metrics, &mut last_warning).await;
            pending_spans = 0;
            last_export = Instant::now();
        }
        if closed {
            return;
        }
    }
}

async fn export(
    exporter: &mut Exporter,
    settings: &Settings,
    batch: Vec<FinishedTrace>,
    spans: usize,
    metrics: &TraceMetrics,
    last_warning: &mut Option<Instant>,
) {
    let request = export_request(&settings.resource, &batch);
    drop(batch);
    let result = match tokio::time::timeout(settings.timeout, exporter.send(request)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
    };
    match result {
        Ok(()) => {
            metrics.exported.inc_by(spans as u64);
        }
        Err(err) => {
            metrics.export_failures.inc();
            metrics.dropped_export_failed.inc_by(spans as u64);
            // A receiver that is down fails every export; once a minute in the log is enough.
            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                *last_warning = Some(Instant::now());
                tracing::warn!(error = %err, spans, "exporting spans failed; they are dropped");
            }
        }
    }
}

/// Where batches go.
enum Exporter {
    Grpc { client: TraceServiceClient<tonic::transport::Channel>, metadata: tonic::metadata::MetadataMap },
    Http { client: reqwest::Client, url: String, headers: http::HeaderMap },
}

impl Exporter {
    fn new(
        protocol: OtlpProtocol,
        endpoint: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, String> {
        match protocol {
            OtlpProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|err| err.to_string())?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in headers {
                    let name = tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|err| format!("header `{name}`: {err}"))?;
                    let value = value.parse().map_err(|_| format!("header `{name}` has an invalid value"))?;
                    metadata.insert(name, value);
                }
                Ok(Exporter::Grpc { client: TraceServiceClient::new(channel), metadata })
            }
            OtlpProtocol::Http => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .build()
                    .map_err(|err| err.to_string())?;
                let mut map = http::HeaderMap::new();
                map.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-protobuf"));
                for (name, value) in headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|err| format!("header `{name}`: {err}"))?;
                    let value = http::HeaderValue::from_str(value)
                        .map_err(|_| format!("header `{name}` has an invalid value"))?;
                    map.insert(name, value);
                }
                Ok(Exporter::Http { client, url: endpoint.to_owned(), headers: map })
            }
        }
    }

    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Exporter::Grpc { client, metadata } => {
                let request = tonic::Request::from_parts(metadata.clone(), tonic::Extensions::default(), request);
                client
                    .export(request)
                    .await
                    .map(drop)
                    .map_err(|status| format!("gRPC status {:?}: {}", status.code(), status.message()))
            }
            Exporter::Http { client, url, headers } => {
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|err| error_chain(&err))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP status {}", response.status()))
                }
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn resource(service_name: &str, attributes: &BTreeMap<String, String>) -> Resource {
    let mut list = vec![string("service.name", service_name), string("telemetry.sdk.name", "gantry")];
    list.push(string("telemetry.sdk.language", "rust"));
    list.extend(
        attributes.iter().filter(|(key, _)| key.as_str() != "service.name").map(|(key, value)| string(key, value)),
    );
    Resource { attributes: list, ..Resource::default() }
}

fn value(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn string(key: &str, text: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value(any_value::Value::StringValue(text.to_owned())),
        ..KeyValue::default()
    }
}

fn int(key: &str, number: i64) -> KeyValue {
    KeyValue { key: key.to_owned(), value: value(any_value::Value::IntValue(number)), ..KeyValue::default() }
}

fn strings(key: &str, texts: &[&str]) -> KeyValue {
    let values = texts.iter().map(|text| AnyValue { value: Some(any_value::Value::StringValue((*text).to_owned())) });
    let array = ArrayValue { values: values.collect() };
    KeyValue { key: key.to_owned(), value: value(any_value::Value::ArrayValue(array)), ..KeyValue::default() }
}

/// `flags` of a span: sampled, and whether its parent is known to be remote (OTLP 1.1).
fn span_flags(parent_is_remote: bool) -> u32 {
    const SAMPLED: u32 = 0x01;
    const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
    const CONTEXT_IS_REMOTE: u32 = 0x200;
    SAMPLED | CONTEXT_HAS_IS_REMOTE | if parent_is_remote { CONTEXT_IS_REMOTE } else { 0 }
}

fn error_status(message: String) -> Option<Status> {
    Some(Status { message, code: StatusCode::Error as i32 })
}

/// One request for all the spans of `batch`.
pub(crate) fn export_request(resource: &Resource, batch: &[FinishedTrace]) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(batch.iter().map(FinishedTrace::span_count).sum());
    for trace in batch {
        push_spans(trace, &mut spans);
    }
    let scope = InstrumentationScope {
        name: "gantry".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans { scope: Some(scope), spans, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

fn push_spans(trace: &FinishedTrace, spans: &mut Vec<Span>) {
    let recorder: &SpanRecorder = &trace.recorder;
    let request = &recorder.request;
    let trace_id = trace.trace_id.to_vec();
    let server_id = trace.span_id.to_vec();
    let status = trace.outcome.status;

    let mut attributes = vec![
        string("http.request.method", request.method.as_str()),
        string("url.path", request.uri.path()),
        string("url.scheme", if request.is_tls { "https" } else { "http" }),
        int("http.response.status_code", i64::from(status)),
        string("network.peer.address", &request.peer.ip().to_string()),
        int("network.peer.port", i64::from(request.peer.port())),
        string("network.protocol.version", protocol_version(request.version)),
    ];
    if let Some(query) = request.uri.query() {
        attributes.push(string("url.query", query));
    }
    if let Some(host) = request.host.as_ref().and_then(|host| host.to_str().ok()) {
        let (name, port) = split_host(host);
        attributes.push(string("server.address", name));
        if let Some(port) = port {
            attributes.push(int("server.port", i64::from(port)));
        }
    }
    if let Some(route) = &trace.outcome.route {
        attributes.push(string("gantry.route", route));
    }
    if let Some(consumer) = &trace.outcome.consumer {
        attributes.push(string("gantry.consumer", consumer));
    }
    if let Some(policy) = recorder.answered_by {
        attributes.push(string("gantry.answered_by", policy));
    }
    if let Some(usage) = &trace.outcome.ai {
        push_ai_attributes(&mut attributes, usage);
    }
    if status >= 500 {
        attributes.push(string("error.type", &status.to_string()));
    }
    let tracestate = request.tracestate.as_ref().and_then(|value| value.to_str().ok()).unwrap_or_default();
    spans.push(Span {
        trace_id: trace_id.clone(),
        span_id: server_id.clone(),
        trace_state: tracestate.to_owned(),
        parent_span_id: trace.parent.map(|parent| parent.span_id.to_vec()).unwrap_or_default(),
        flags: span_flags(trace.parent.is_some()),
        name: request.method.as_str().to_owned(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: recorder.unix_nanos(recorder.start),
        end_time_unix_nano: recorder.unix_nanos(trace.end),
        attributes,
        // Server spans leave their status unset for 4xx: the client erred, not the server.
        status: (status >= 500).then(|| error_status(String::new())).flatten(),
        ..Span::default()
    });

    for stage in &recorder.stages {
        let side = if stage.response { "response" } else { "request" };
        let policies = &recorder.policies[stage.policies.0..stage.policies.1];
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: super::context::new_span_id().to_vec(),
            parent_span_id: server_id.clone(),
            flags: span_flags(false),
            name: format!("{side} {}", stage.stage.name()),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: recorder.unix_nanos(stage.start),
            end_time_unix_nano: recorder.unix_nanos(stage.end),
            attributes: vec![
                string("gantry.stage", stage.stage.name()),
                string("gantry.stage.side", side),
                strings("gantry.policies", policies),
            ],
            ..Span::default()
        });
    }

    if let Some(upstream) = &recorder.upstream {
        let mut attributes =
            vec![string("http.request.method", request.method.as_str()), string("gantry.upstream", &upstream.upstream)];
        if let Some(endpoint) = &upstream.endpoint {
            let (name, port) = split_host(endpoint);
            attributes.push(string("server.address", name));
            if let Some(port) = port {
                attributes.push(int("server.port", i64::from(port)));
            }
        }
        if let Some(status) = upstream.status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        if !upstream.retries.is_empty() {
            attributes.push(int("http.request.resend_count", upstream.retries.len() as i64));
        }
        let status = match (upstream.status, upstream.error) {
            (_, Some(error)) => {
                attributes.push(string("error.type", error));
                error_status(error.to_owned())
            }
            (Some(status), None) if status >= 400 => {
                attributes.push(string("error.type", &status.to_string()));
                error_status(String::new())
            }
            _ => None,
        };
        let events = upstream
            .retries
            .iter()
            .enumerate()
            .map(|(index, retried)| {
                let mut attributes =
                    vec![int("gantry.try", index as i64 + 1), string("server.address", &retried.endpoint)];
                match retried.outcome {
                    TryOutcome::Status(status) => attributes.push(int("http.response.status_code", i64::from(status))),
                    TryOutcome::Failed(error) => attributes.push(string("error.type", error)),
                }
                Event {
                    time_unix_nano: recorder.unix_nanos(retried.at),
                    name: "retry".to_owned(),
                    attributes,
                    dropped_attributes_count: 0,
                }
            })
            .collect();
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: upstream.span_id.to_vec(),
            parent_span_id: server_id.clone(),
            flags: span_flags(false),
            name: request.method.as_str().to_owned(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: recorder.unix_nanos(upstream.start),
            end_time_unix_nano: recorder.unix_nanos(upstream.end.unwrap_or(trace.end)),
            attributes,
            events,
            status,
            ..Span::default()
        });
    }
}

/// OpenTelemetry's GenAI attributes of what an AI exchange used. The provider is named both
/// ways: `gen_ai.provider.name` since semantic conventions 1.37, `gen_ai.system` before, which
/// many backends still read.
fn push_ai_attributes(attributes: &mut Vec<KeyValue>, usage: &AiUsage) {
    let tokens = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
    if !usage.operation.is_empty() {
        attributes.push(string("gen_ai.operation.name", usage.operation));
    }
    if !usage.provider.is_empty() {
        attributes.push(string("gen_ai.provider.name", usage.provider));
        attributes.push(string("gen_ai.system", usage.provider));
    }
    if !usage.request_model.is_empty() {
        attributes.push(string("gen_ai.request.model", &usage.request_model));
    }
    if !usage.response_model.is_empty() {
        attributes.push(string("gen_ai.response.model", &usage.response_model));
    }
    attributes.push(int("gen_ai.usage.input_tokens", tokens(usage.input_tokens)));
    attributes.push(int("gen_ai.usage.output_tokens", tokens(usage.output_tokens)));
    if let Some(cost) = usage.cost.filter(|cost| cost.is_finite()) {
        attributes.push(KeyValue {
            key: "gantry.ai.cost".to_owned(),
            value: value(any_value::Value::DoubleValue(cost)),
            ..KeyValue::default()
        });
    }
    attributes.push(boolean("gantry.ai.cache_hit", usage.cache_hit));
    attributes.push(boolean("gantry.ai.tokens_estimated", usage.estimated));
}

fn boolean(key: &str, flag: bool) -> KeyValue {
    KeyValue { key: key.to_owned(), value: value(any_value::Value::BoolValue(flag)), ..KeyValue::default() }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host:port`, `[v6]:port` or a bare host into the host and the port.
fn split_host(text: &str) -> (&str, Option<u16>) {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|port| port.parse().ok()));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (text, None),
        },
        _ => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_span_attributes(ai: Option<Arc<AiUsage>>) -> Vec<KeyValue> {
        let trace = FinishedTrace {
            trace_id: super::super::context::new_trace_id(),
            span_id: super::super::context::new_span_id(),
            parent: None,
            recorder: Box::new(super::super::record::tests_support::recorder()),
            end: Instant::now(),
            outcome: super::super::ServerOutcome { status: 200, route: Some("chat".into()), consumer: None, ai },
        };
        let request = export_request(&resource("edge", &BTreeMap::new()), &[trace]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        let server = spans.iter().find(|span| span.kind == SpanKind::Server as i32).expect("a server span");
        server.attributes.clone()
    }

    #[test]
    fn the_server_span_of_an_ai_exchange_carries_the_gen_ai_attributes() {
        let usage = AiUsage {
            operation: "chat",
            provider: "openai",
            request_model: "gpt".into(),
            response_model: "gpt-4o-mini".to_owned(),
            input_tokens: 12,
            output_tokens: 30,
            estimated: false,
            cost: Some(0.25),
            cache_hit: false,
        };
        let attributes = server_span_attributes(Some(Arc::new(usage)));
        let value = |key: &str| {
            attributes
                .iter()
                .find(|attribute| attribute.key == key)
                .and_then(|attribute| attribute.value.clone()?.value)
        };
        let text = |text: &str| Some(any_value::Value::StringValue(text.to_owned()));
        assert_eq!(value("gen_ai.operation.name"), text("chat"));
        assert_eq!(value("gen_ai.provider.name"), text("openai"));
        assert_eq!(value("gen_ai.system"), text("openai"));
        assert_eq!(value("gen_ai.request.model"), text("gpt"));
        assert_eq!(value("gen_ai.response.model"), text("gpt-4o-mini"));
        assert_eq!(value("gen_ai.usage.input_tokens"), Some(any_value::Value::IntValue(12)));
        assert_eq!(value("gen_ai.usage.output_tokens"), Some(any_value::Value::IntValue(30)));
        assert_eq!(value("gantry.ai.cost"), Some(any_value::Value::DoubleValue(0.25)));
        assert_eq!(value("gantry.ai.cache_hit"), Some(any_value::Value::BoolValue(false)));

        let plain = server_span_attributes(None);
        assert!(plain.iter().all(|attribute| !attribute.key.starts_with("gen_ai.")), "{plain:?}");
    }

    #[test]
    fn splits_hosts_and_ports() {
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
    }

    #[test]
    fn names_the_service_in_the_resource_and_keeps_it_from_the_extra_attributes() {
        let extra =
            BTreeMap::from([("service.name".to_owned(), "other".to_owned()), ("region".to_owned(), "eu".to_owned())]);
        let resource = resource("edge", &extra);
        let names: Vec<(&str, String)> = resource
            .attributes
            .iter()
            .map(|kv| {
                let text = match kv.value.as_ref().and_then(|value| value.value.as_ref()) {
                    Some(any_value::Value::StringValue(text)) => text.clone(),
                    _ => String::new(),
                };
                (kv.key.as_str(), text)
            })
            .collect();
        assert!(names.contains(&("service.name", "edge".to_owned())), "{names:?}");
        assert!(names.contains(&("region", "eu".to_owned())), "{names:?}");
        assert_eq!(names.iter().filter(|(key, _)| *key == "service.name").count(), 1);
    }
}

//! The `otlp` sink: OpenTelemetry log records over OTLP/HTTP, as binary protobuf (the
//! `opentelemetry-proto` messages the tracing exporter also uses) or in the OTLP JSON encoding
//! (lowerCamelCase field names, 64-bit integers as strings, trace and span ids as hex).
//!
//! Each record is one log record: its body the JSON record, its attributes the HTTP semantic
//! conventions' names for what the record has, its `traceId` and `spanId` the record's, so a
//! backend links the request to its trace.

use std::sync::Arc;
use std::time::SystemTime;

use gantry_config::{OtlpEncoding, OtlpSinkSpec};
use gantry_policy_api::ai::AiUsage;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{json, Value};

use super::http_sink::Poster;
use super::record::Hex;
use super::sink::{Outcome, Sink};
use super::{AccessRecord, RecordFormat};

pub(super) struct OtlpSink {
    poster: Poster,
    format: Arc<RecordFormat>,
    service_name: String,
    encoding: OtlpEncoding,
}

impl OtlpSink {
    pub(super) fn new(name: &str, spec: &OtlpSinkSpec, format: Arc<RecordFormat>) -> Result<Self, String> {
        let poster = Poster::new(name, &spec.url, spec.timeout.get(), &spec.retries, &spec.headers)?;
        Ok(Self { poster, format, service_name: spec.service_name.clone(), encoding: spec.encoding })
    }
}

const SCOPE: &str = "gantry.access_log";

fn nanos(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()).unwrap_or(u64::MAX)
}

/// An attribute's value.
enum Attribute {
    Text(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// The semantic-convention attributes of `record`.
fn attributes(record: &AccessRecord) -> Vec<(&'static str, Attribute)> {
    let mut attributes = vec![
        ("http.request.method", Attribute::Text(record.method.as_str().to_owned())),
        ("http.response.status_code", Attribute::Int(i64::from(record.status))),
        ("url.path", Attribute::Text(record.uri.path().to_owned())),
        ("client.address", Attribute::Text(record.client.ip().to_string())),
        ("gantry.request_id", Attribute::Text(record.request_id.to_string())),
    ];
    if let Some(route) = &record.route_id {
        attributes.push(("http.route", Attribute::Text(route.to_string())));
    }
    if let Some(upstream) = &record.upstream_addr {
        attributes.push(("server.address", Attribute::Text(upstream.to_string())));
    }
    if let Some(usage) = &record.ai {
        push_ai_attributes(&mut attributes, usage);
    }
    attributes
}

/// The OpenTelemetry GenAI names for what an AI exchange used (the server span has the same).
fn push_ai_attributes(attributes: &mut Vec<(&'static str, Attribute)>, usage: &AiUsage) {
    let text = |text: &str| Attribute::Text(text.to_owned());
    let count = |tokens: u64| Attribute::Int(i64::try_from(tokens).unwrap_or(i64::MAX));
    if !usage.operation.is_empty() {
        attributes.push(("gen_ai.operation.name", text(usage.operation)));
    }
    if !usage.provider.is_empty() {
        attributes.push(("gen_ai.provider.name", text(usage.provider)));
    }
    if !usage.request_model.is_empty() {
        attributes.push(("gen_ai.request.model", text(&usage.request_model)));
    }
    if !usage.response_model.is_empty() {
        attributes.push(("gen_ai.response.model", text(&usage.response_model)));
    }
    attributes.push(("gen_ai.usage.input_tokens", count(usage.input_tokens)));
    attributes.push(("gen_ai.usage.output_tokens", count(usage.output_tokens)));
    if let Some(cost) = usage.cost.filter(|cost| cost.is_finite()) {
        attributes.push(("gantry.ai.cost", Attribute::Double(cost)));
    }
    attributes.push(("gantry.ai.cache_hit", Attribute::Bool(usage.cache_hit)));
    attributes.push(("gantry.ai.tokens_estimated", Attribute::Bool(usage.estimated)));
}

/// Severity number and text: INFO, or WARN for 5xx answers.
fn severity(record: &AccessRecord) -> (i32, &'static str) {
    if record.status >= 500 {
        (13, "WARN")
    } else {
        (9, "INFO")
    }
}

fn proto_value(value: Attribute) -> AnyValue {
    AnyValue {
        value: Some(match value {
            Attribute::Text(text) => any_value::Value::StringValue(text),
            Attribute::Int(number) => any_value::Value::IntValue(number),
            Attribute::Double(number) => any_value::Value::DoubleValue(number),
            Attribute::Bool(flag) => any_value::Value::BoolValue(flag),
        }),
    }
}

fn proto_attribute(key: &str, value: Attribute) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(proto_value(value)), ..Default::default() }
}

/// The `ExportLogsServiceRequest` for `batch`, as protobuf.
pub(super) fn encode_protobuf(format: &RecordFormat, service_name: &str, batch: &[Arc<AccessRecord>]) -> Vec<u8> {
    let observed = nanos(SystemTime::now());
    let log_records = batch
        .iter()
        .map(|record| {
            let (severity_number, severity_text) = severity(record);
            LogRecord {
                time_unix_nano: nanos(record.time),
                observed_time_unix_nano: observed,
                severity_number,
                severity_text: severity_text.to_owned(),
                body: Some(proto_value(Attribute::Text(format.to_json(record)))),
                attributes: attributes(record).into_iter().map(|(key, value)| proto_attribute(key, value)).collect(),
                trace_id: record.trace_id.map(|id| id.to_vec()).unwrap_or_default(),
                span_id: record.trace_id.and(record.span_id).map(|id| id.to_vec()).unwrap_or_default(),
                ..Default::default()
            }
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![proto_attribute("service.name", Attribute::Text(service_name.to_owned()))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    request.encode_to_vec()
}

fn json_attribute(key: &str, value: Attribute) -> Value {
    match value {
        Attribute::Text(text) => json!({"key": key, "value": {"stringValue": text}}),
        Attribute::Int(number) => json!({"key": key, "value": {"intValue": number.to_string()}}),
        Attribute::Double(number) => json!({"key": key, "value": {"doubleValue": number}}),
        Attribute::Bool(flag) => json!({"key": key, "value": {"boolValue": flag}}),
    }
}

/// The `ExportLogsServiceRequest` for `batch`, in the OTLP JSON encoding.
pub(super) fn encode_json(format: &RecordFormat, service_name: &str, batch: &[Arc<AccessRecord>]) -> Vec<u8> {
    let observed = nanos(SystemTime::now()).to_string();
    let records: Vec<Value> = batch
        .iter()
        .map(|record| {
            let (severity_number, severity_text) = severity(record);
            let attributes: Vec<Value> =
                attributes(record).into_iter().map(|(key, value)| json_attribute(key, value)).collect();
            let mut log = json!({
                "timeUnixNano": nanos(record.time).to_string(),
                "observedTimeUnixNano": observed,
                "severityNumber": severity_number,
                "severityText": severity_text,
                "body": {"stringValue": format.to_json(record)},
                "attributes": attributes,
            });
            if let (Some(trace_id), Some(object)) = (&record.trace_id, log.as_object_mut()) {
                object.insert("traceId".to_owned(), Hex(trace_id).to_string().into());
                if let Some(span_id) = &record.span_id {
                    object.insert("spanId".to_owned(), Hex(span_id).to_string().into());
                }
            }
            log
        })
        .collect();
    let request = json!({
        "resourceLogs": [{
            "resource": {"attributes": [json_attribute("service.name", Attribute::Text(service_name.to_owned()))]},
            "scopeLogs": [{
                "scope": {"name": SCOPE, "version": env!("CARGO_PKG_VERSION")},
                "logRecords": records,
            }],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}

/// `partialSuccess.rejectedLogRecords` of an export answer; an empty answer is full success.
pub(super) fn rejected_records(encoding: OtlpEncoding, answer: &[u8]) -> u64 {
    match encoding {
        OtlpEncoding::Protobuf => ExportLogsServiceResponse::decode(answer)
            .ok()
            .and_then(|answer| answer.partial_success)
            .map_or(0, |partial| u64::try_from(partial.rejected_log_records).unwrap_or(0)),
        OtlpEncoding::Json => {
            let Ok(answer) = serde_json::from_slice::<Value>(answer) else { return 0 };
            // An int64, so a string in OTLP JSON; a number is read too.
            match &answer["partialSuccess"]["rejectedLogRecords"] {
                Value::String(count) => count.parse().unwrap_or(0),
                Value::Number(count) => count.as_u64().unwrap_or(0),
                _ => 0,
            }
        }
    }
}

impl Sink for OtlpSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        let (content_type, body) = match self.encoding {
            OtlpEncoding::Protobuf => {
                ("application/x-protobuf", encode_protobuf(&self.format, &self.service_name, batch))
            }
            OtlpEncoding::Json => ("application/json", encode_json(&self.format, &self.service_name, batch)),
        };
        match self.poster.post(None, content_type, body.into()).await {
            Ok(answer) => {
                let rejected = rejected_records(self.encoding, &answer).min(batch.len() as u64);
                Outcome { written: batch.len() as u64 - rejected, failed: rejected }
            }
            Err(err) => {
                let url = self.poster.url().clone();
                self.poster.failures.warn(&format_args!("POST {url}: {err}"));
                Outcome::failed(batch.len())
            }
        }
    }
}

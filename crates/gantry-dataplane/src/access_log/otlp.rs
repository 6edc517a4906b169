//! The `otlp` sink: OpenTelemetry log records over OTLP/HTTP, JSON encoded
//! (`application/json`, as the OTLP specification defines it: lowerCamelCase field names,
//! 64-bit integers as strings, trace and span ids as hex strings).
//!
//! Each record is one log record: its body the JSON record, its attributes the HTTP semantic
//! conventions' names for what the record has, its `traceId` and `spanId` the record's, so a
//! backend links the request to its trace.

use std::sync::Arc;
use std::time::SystemTime;

use gantry_config::OtlpSinkSpec;
use serde_json::{json, Value};

use super::http_sink::Poster;
use super::record::Hex;
use super::sink::{Outcome, Sink};
use super::{AccessRecord, RecordFormat};

pub(super) struct OtlpSink {
    poster: Poster,
    format: Arc<RecordFormat>,
    service_name: String,
}

impl OtlpSink {
    pub(super) fn new(name: &str, spec: &OtlpSinkSpec, format: Arc<RecordFormat>) -> Result<Self, String> {
        let poster = Poster::new(name, &spec.url, spec.timeout.get(), &spec.retries, &spec.headers)?;
        Ok(Self { poster, format, service_name: spec.service_name.clone() })
    }
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

fn string_attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int_attribute(key: &str, value: u64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

fn log_record(format: &RecordFormat, record: &AccessRecord, observed: &str) -> Value {
    let (severity_number, severity_text) = if record.status >= 500 { (13, "WARN") } else { (9, "INFO") };
    let mut attributes = vec![
        string_attribute("http.request.method", record.method.as_str()),
        int_attribute("http.response.status_code", u64::from(record.status)),
        string_attribute("url.path", record.uri.path()),
        string_attribute("client.address", &record.client.ip().to_string()),
        string_attribute("gantry.request_id", &record.request_id),
    ];
    if let Some(route) = &record.route_id {
        attributes.push(string_attribute("http.route", route));
    }
    if let Some(upstream) = &record.upstream_addr {
        attributes.push(string_attribute("server.address", upstream));
    }
    let mut log = json!({
        "timeUnixNano": nanos(record.time),
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
}

/// The `ExportLogsServiceRequest` for `batch`, JSON encoded.
pub(super) fn encode_logs(format: &RecordFormat, service_name: &str, batch: &[Arc<AccessRecord>]) -> Vec<u8> {
    let observed = nanos(SystemTime::now());
    let records: Vec<Value> = batch.iter().map(|record| log_record(format, record, &observed)).collect();
    let request = json!({
        "resourceLogs": [{
            "resource": {"attributes": [string_attribute("service.name", service_name)]},
            "scopeLogs": [{
                "scope": {"name": "gantry.access_log", "version": env!("CARGO_PKG_VERSION")},
                "logRecords": records,
            }],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}

/// `partialSuccess.rejectedLogRecords` of an export answer (an int64, so a string in JSON);
/// an empty answer is full success.
pub(super) fn rejected_records(answer: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(answer) else { return 0 };
    match &answer["partialSuccess"]["rejectedLogRecords"] {
        Value::String(count) => count.parse().unwrap_or(0),
        Value::Number(count) => count.as_u64().unwrap_or(0),
        _ => 0,
    }
}

impl Sink for OtlpSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        let body = encode_logs(&self.format, &self.service_name, batch);
        match self.poster.post(None, "application/json", body.into()).await {
            Ok(answer) => {
                let rejected = rejected_records(&answer).min(batch.len() as u64);
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

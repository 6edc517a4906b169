use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gantry_config::{AccessLogSpec, FileSinkSpec, HttpBatchFormat, RotateSpec, SinkQueueSpec};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prometheus_client::registry::Registry;

use super::file::{numbered, ChunkedLines, FileSink, WRITE_CHUNK};
use super::record::{format_date_pattern, Rfc3339};
use super::sink::{Outcome, Sink};
use super::*;

/// An access log spec written in JSON (which is also YAML).
fn spec(json: &str) -> AccessLogSpec {
    serde_json::from_str(json).expect("access log spec")
}

fn format_of(json: &str) -> RecordFormat {
    RecordFormat::new(&spec(json)).expect("format")
}

fn record() -> AccessRecord {
    AccessRecord {
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        request_id: "r1".into(),
        trace_id: None,
        span_id: None,
        route_id: Some("demo".into()),
        service_id: None,
        consumer_id: None,
        client: "127.0.0.1:5000".parse().expect("addr"),
        method: Method::GET,
        uri: "/demo/hello?x=1".parse().expect("uri"),
        version: http::Version::HTTP_11,
        host: Some(HeaderValue::from_static("example.com")),
        user_agent: Some(HeaderValue::from_static("curl/8")),
        status: 200,
        bytes_received: Some(11),
        bytes_sent: Some(42),
        duration: Duration::from_micros(1500),
        upstream_addr: Some("127.0.0.1:8081".into()),
        upstream_duration: Some(Duration::from_millis(1)),
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        ai: None,
    }
}

fn json(format: &RecordFormat, record: &AccessRecord) -> serde_json::Value {
    serde_json::from_str(&format.to_json(record)).expect("one JSON object")
}

/// The top-level keys of `format`'s JSON for `record`, in the order written.
fn keys_in_order(format: &RecordFormat, record: &AccessRecord) -> Vec<String> {
    let text = format.to_json(record);
    let value = json(format, record);
    let mut keys: Vec<(usize, String)> = value
        .as_object()
        .expect("object")
        .keys()
        .map(|key| (text.find(&format!("\"{key}\":")).expect("key in text"), key.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, key)| key).collect()
}

#[test]
fn formats_timestamps_as_rfc3339_utc_and_index_patterns_by_date() {
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    assert_eq!(Rfc3339(time).to_string(), "2023-11-14T22:13:20.123Z");
    assert_eq!(serde_json::to_value(Rfc3339(time)).expect("json"), "2023-11-14T22:13:20.123Z");
    let early = SystemTime::UNIX_EPOCH + Duration::from_millis(5);
    assert_eq!(Rfc3339(early).to_string(), "1970-01-01T00:00:00.005Z");
    // Past year 9999 the digits are not cut to four.
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
    assert_eq!(Rfc3339(far).to_string(), "10000-01-01T00:00:00.000Z");
    assert_eq!(format_date_pattern("gantry-%Y.%m.%d", time), "gantry-2023.11.14");
    assert_eq!(format_date_pattern("g-%H%%", time), "g-22%");
}

#[test]
fn writes_client_addresses_of_every_length() {
    let format = format_of(r#"{"path": "/dev/null", "fields": ["client"]}"#);
    for (client, shown) in [
        ("127.0.0.1:5000", "127.0.0.1"),
        ("0.0.0.0:1", "0.0.0.0"),
        ("10.20.255.9:80", "10.20.255.9"),
        ("255.255.255.255:80", "255.255.255.255"),
        ("[2001:db8::1]:443", "2001:db8::1"),
    ] {
        let record = AccessRecord { client: client.parse().expect("addr"), ..record() };
        assert_eq!(json(&format, &record)["client_ip"], shown);
    }
}

#[test]
fn writes_origin_form_and_absolute_uris_as_received() {
    let format = format_of(r#"{"path": "/dev/null", "fields": ["uri"]}"#);
    for uri in ["/a/b?c=1&d=%20", "/", "https://h2.example.com/a?b=1", "http://h2.example.com:8080/"] {
        let record = AccessRecord { uri: uri.parse().expect("uri"), ..record() };
        assert_eq!(json(&format, &record)["uri"], uri);
    }
}

#[test]
fn the_default_fields_are_the_fields_written_before_they_could_be_chosen() {
    let format = format_of(r#"{"path": "/dev/null"}"#);
    let value = json(&format, &record());
    let keys = keys_in_order(&format, &record());
    assert_eq!(
        keys,
        [
            "time",
            "request_id",
            "route",
            "client_ip",
            "method",
            "uri",
            "protocol",
            "status",
            "duration_ms",
            "upstream",
            "upstream_duration_ms"
        ]
    );
    assert_eq!(value["duration_ms"], 1.5);
    assert_eq!(value["uri"], "/demo/hello?x=1");
    assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
}

#[test]
fn writes_the_chosen_fields_in_order_with_trace_context_and_headers() {
    let format = format_of(
        r#"{"path": "/dev/null", "fields": ["status", "trace_id", "span_id", "path", "query", "host", "user_agent",
            "bytes_received", "bytes_sent", "gateway_overhead", "service", "consumer"],
            "request_headers": ["x-tenant", "accept"], "response_headers": ["content-type"]}"#,
    );
    let mut record = record();
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    let context = trace_context(&headers).expect("valid traceparent");
    record.trace_id = Some(context.trace_id);
    record.span_id = Some(context.span_id);
    record.request_headers = vec![
        (HeaderName::from_static("x-tenant"), HeaderValue::from_static("acme")),
        (HeaderName::from_static("accept"), HeaderValue::from_static("a/b")),
        (HeaderName::from_static("accept"), HeaderValue::from_static("c/d")),
    ];
    let value = json(&format, &record);
    let keys = keys_in_order(&format, &record);
    assert_eq!(
        keys,
        [
            "status",
            "trace_id",
            "span_id",
            "path",
            "query",
            "host",
            "user_agent",
            "bytes_received",
            "bytes_sent",
            "gateway_overhead_ms",
            "request_headers",
            "response_headers"
        ],
        "absent service and consumer are left out: {value}"
    );
    assert_eq!(value["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(value["span_id"], "b7ad6b7169203331");
    assert_eq!(value["path"], "/demo/hello");
    assert_eq!(value["query"], "x=1");
    assert_eq!(value["host"], "example.com");
    assert_eq!(value["bytes_sent"], 42);
    assert_eq!(value["gateway_overhead_ms"], 0.5);
    assert_eq!(value["request_headers"], serde_json::json!({"x-tenant": "acme", "accept": "a/b, c/d"}));
    assert_eq!(value["response_headers"], serde_json::json!({}));
}

#[test]
fn takes_from_the_request_head_only_what_the_fields_log() {
    let log = AccessLog::start(&spec(
        r#"{"path": "/dev/null", "fields": ["trace_id", "host"], "request_headers": ["x-tenant"]}"#,
    ))
    .expect("start");
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    headers.insert("host", HeaderValue::from_static("api.example.com"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8"));
    headers.insert("content-length", HeaderValue::from_static("12"));
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("x-other", HeaderValue::from_static("no"));
    let facts = log.request_facts(&"/a".parse().expect("uri"), &headers);
    assert!(facts.trace.is_some());
    assert_eq!(facts.host, Some(HeaderValue::from_static("api.example.com")));
    assert_eq!(facts.user_agent, None, "not a chosen field");
    assert_eq!(facts.bytes_received, None, "not a chosen field");
    assert_eq!(facts.headers, vec![(HeaderName::from_static("x-tenant"), HeaderValue::from_static("acme"))]);
    // HTTP/2 gives the authority in the URI.
    let facts = log.request_facts(&"https://h2.example.com/a".parse().expect("uri"), &headers);
    assert_eq!(facts.host, Some(HeaderValue::from_static("h2.example.com")));
}

#[test]
fn counts_records_dropped_on_a_full_queue_per_sink() {
    let log = AccessLog::start(&spec(
        r#"{"sinks": [{"file": {"name": "small", "path": "/dev/null", "queue": {"capacity": 1, "flush_interval": "1s"}}},
                      {"file": {"name": "large", "path": "/dev/null", "queue": {"capacity": 100000}}}]}"#,
    ))
    .expect("start");
    // The sinks poll every 5 ms at most: a burst far larger than one queue cannot all fit.
    for _ in 0..10_000 {
        log.emit(record());
    }
    let dropped = log.dropped();
    assert!(dropped > 0, "a full queue drops records");
    let mut registry = Registry::default();
    log.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let line = format!("gantry_access_log_dropped_total{{sink=\"small\"}} {dropped}");
    assert!(text.lines().any(|own| own == line), "{text}");
    assert!(text.lines().any(|own| own == "gantry_access_log_dropped_total{sink=\"large\"} 0"), "{text}");
}

fn rotating_sink(dir: &Path, rotate: RotateSpec) -> FileSink {
    let spec = FileSinkSpec {
        name: None,
        path: dir.join("access.log"),
        rotate: Some(rotate),
        queue: SinkQueueSpec::default(),
    };
    FileSink::open(&spec, Arc::new(format_of(r#"{"path": "-", "fields": ["request_id"]}"#))).expect("open")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn rotates_by_size_without_splitting_lines_and_keeps_the_newest_files() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = rotating_sink(dir.path(), RotateSpec { max_bytes: Some(60), daily: false, keep: 2 });
    // Each line is `{"request_id":"rNN"}\n`, 21 bytes: two fit in 60 bytes, three do not.
    for round in 0..4 {
        let batch: Vec<Arc<AccessRecord>> = (0..3)
            .map(|index| {
                let mut record = record();
                record.request_id = format!("r{round}{index}").into();
                Arc::new(record)
            })
            .collect();
        assert_eq!(sink.write(&batch).await, Outcome::written(3));
    }
    let current = dir.path().join("access.log");
    let newest = lines(&current);
    let first_rotated = lines(&numbered(&current, 1));
    let second_rotated = lines(&numbered(&current, 2));
    assert!(!numbered(&current, 3).exists(), "keep: 2");
    let all: Vec<String> = second_rotated.iter().chain(&first_rotated).chain(&newest).cloned().collect();
    for line in &all {
        let value: serde_json::Value = serde_json::from_str(line).expect("a complete JSON line");
        assert!(value["request_id"].is_string());
    }
    for file in [&newest, &first_rotated, &second_rotated] {
        assert!(file.len() <= 2 && !file.is_empty(), "{file:?}");
    }
    // The newest six records, in order, across the kept files.
    let expected: Vec<String> =
        ["r20", "r21", "r22", "r30", "r31", "r32"].iter().map(|id| format!(r#"{{"request_id":"{id}"}}"#)).collect();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn a_batch_larger_than_a_write_chunk_is_written_whole_in_order_without_growing_the_buffer() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = rotating_sink(dir.path(), RotateSpec { max_bytes: None, daily: false, keep: 1 });
    let ids: Vec<String> = (0..6000).map(|index| format!("request-{index:05}")).collect();
    let batch: Vec<Arc<AccessRecord>> = ids
        .iter()
        .map(|id| {
            let mut record = record();
            record.request_id = id.as_str().into();
            Arc::new(record)
        })
        .collect();
    assert_eq!(sink.write(&batch).await, Outcome::written(batch.len()));
    let written = lines(&dir.path().join("access.log"));
    let expected: Vec<String> = ids.iter().map(|id| format!(r#"{{"request_id":"{id}"}}"#)).collect();
    assert!(expected.iter().map(|line| line.len() + 1).sum::<usize>() > 2 * WRITE_CHUNK, "the batch spans chunks");
    assert_eq!(written, expected);
    assert!(sink.buffer_capacity() <= WRITE_CHUNK, "{} bytes buffered", sink.buffer_capacity());
}

/// Takes `room` bytes, then fails as a full disk does.
struct FillingWriter {
    taken: Vec<u8>,
    room: usize,
}

impl std::io::Write for FillingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.taken.len() + bytes.len() > self.room {
            return Err(std::io::Error::other("no space left on device"));
        }
        self.taken.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_chunk_that_fails_counts_only_the_records_written_before_it() {
    let mut lines = ChunkedLines::new(Arc::new(format_of(r#"{"path": "-", "fields": ["request_id"]}"#)));
    let mut out = FillingWriter { taken: Vec::new(), room: WRITE_CHUNK + WRITE_CHUNK / 2 };
    let mut record = record();
    record.request_id = "x".repeat(100).into();
    lines.start_batch();
    let mut failure = None;
    for _ in 0..2000 {
        if lines.next_line(&record).1 {
            if let Err(failed) = lines.write_chunk(&mut out) {
                failure = Some(failed);
                break;
            }
        }
        lines.add_line();
    }
    let (written, _) = failure.expect("the second chunk does not fit");
    let lines_taken = out.taken.iter().filter(|&&byte| byte == b'\n').count();
    assert!(written > 0, "the first chunk was written");
    assert_eq!(written, lines_taken);
}

#[tokio::test]
async fn rotates_daily_on_the_first_record_of_a_new_day() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = rotating_sink(dir.path(), RotateSpec { max_bytes: None, daily: true, keep: 3 });
    let current = dir.path().join("access.log");
    assert_eq!(sink.write(&[Arc::new(record()), Arc::new(record())]).await, Outcome::written(2));
    assert!(!numbered(&current, 1).exists(), "the same day: no rotation");
    let today = super::record::day_number(SystemTime::now());
    sink.pretend_written_on(today - 1);
    assert_eq!(sink.write(&[Arc::new(record())]).await, Outcome::written(1));
    assert_eq!(lines(&numbered(&current, 1)).len(), 2, "yesterday's file");
    assert_eq!(lines(&current).len(), 1, "today's file");
    assert_eq!(sink.write(&[Arc::new(record())]).await, Outcome::written(1));
    assert!(!numbered(&current, 2).exists(), "one rotation a day");
    assert_eq!(lines(&current).len(), 2);
}

#[tokio::test]
async fn a_file_moved_away_from_outside_is_reopened_at_its_path() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sink = rotating_sink(dir.path(), RotateSpec { max_bytes: Some(1 << 20), daily: true, keep: 1 });
    let current = dir.path().join("access.log");
    assert_eq!(sink.write(&[Arc::new(record())]).await, Outcome::written(1));
    std::fs::rename(&current, dir.path().join("moved.log")).expect("move");
    assert_eq!(sink.write(&[Arc::new(record())]).await, Outcome::written(1));
    assert_eq!(lines(&current).len(), 1, "a new file at the path");
    assert_eq!(lines(&dir.path().join("moved.log")).len(), 1);
}

#[test]
fn encodes_http_batches_as_json_lines_or_one_array() {
    let format = format_of(r#"{"path": "-", "fields": ["request_id", "status"]}"#);
    let batch = vec![Arc::new(record()), Arc::new(record())];
    let (content_type, body) = super::http_sink::encode_batch(&format, HttpBatchFormat::Ndjson, &batch);
    assert_eq!(content_type, "application/x-ndjson");
    assert_eq!(&body[..], b"{\"request_id\":\"r1\",\"status\":200}\n{\"request_id\":\"r1\",\"status\":200}\n");
    let (content_type, body) = super::http_sink::encode_batch(&format, HttpBatchFormat::JsonArray, &batch);
    assert_eq!(content_type, "application/json");
    let array: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("array");
    assert_eq!(array.len(), 2);
}

#[test]
fn encodes_bulk_actions_into_the_index_of_each_records_day() {
    let format = format_of(r#"{"path": "-", "fields": ["request_id"]}"#);
    let mut next_day = record();
    next_day.time += Duration::from_secs(86_400);
    let body = super::elasticsearch::encode_bulk(&format, "gantry-%Y.%m.%d", &[Arc::new(record()), Arc::new(next_day)]);
    let text = String::from_utf8(body).expect("utf8");
    assert_eq!(
        text,
        "{\"create\":{\"_index\":\"gantry-2023.11.14\"}}\n{\"request_id\":\"r1\"}\n{\"create\":{\"_index\":\"gantry-2023.11.15\"}}\n{\"request_id\":\"r1\"}\n"
    );
}

#[test]
fn reads_bulk_answers_item_by_item() {
    let read = super::elasticsearch::read_bulk_answer;
    let ok = br#"{"took":3,"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;
    assert_eq!(read(ok, 2).expect("answer").0, Outcome::written(2));
    let partial = br#"{"took":3,"errors":true,"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}},{"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}]}"#;
    let (outcome, reason) = read(partial, 3).expect("answer");
    assert_eq!(outcome, Outcome { written: 1, failed: 2 });
    assert!(reason.is_some_and(|reason| reason.contains("mapper_parsing_exception")));
    assert!(read(b"not json", 1).is_err());
}

#[test]
fn formats_rfc5424_messages_with_the_record_as_message() {
    let format = format_of(r#"{"path": "-", "fields": ["request_id", "status"]}"#);
    let header = super::syslog::Header {
        facility: 16,
        hostname: "gw1".to_owned(),
        app_name: "gantry".to_owned(),
        proc_id: "42".to_owned(),
    };
    let mut out = Vec::new();
    header.write_message(&format, &record(), &mut out);
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "<134>1 2023-11-14T22:13:20.123Z gw1 gantry 42 access - {\"request_id\":\"r1\",\"status\":200}"
    );
    let mut failed = record();
    failed.status = 502;
    let mut out = Vec::new();
    header.write_message(&format, &failed, &mut out);
    assert!(out.starts_with(b"<132>1 "), "5xx is a warning");
}

fn ai_usage() -> Arc<gantry_policy_api::ai::AiUsage> {
    Arc::new(gantry_policy_api::ai::AiUsage {
        operation: "chat",
        provider: "anthropic",
        request_model: "claude".into(),
        response_model: "claude-sonnet-4-5".to_owned(),
        input_tokens: 21,
        output_tokens: 8,
        estimated: true,
        cost: Some(0.000183),
        cache_hit: false,
    })
}

const AI_FIELDS: &str = r#"["status", "ai_provider", "ai_request_model", "ai_response_model", "ai_input_tokens",
    "ai_output_tokens", "ai_cost", "ai_cache_hit", "ai_tokens_estimated"]"#;

#[test]
fn writes_the_usage_of_an_ai_exchange_and_leaves_it_out_of_other_records() {
    let format = format_of(&format!(r#"{{"path": "/dev/null", "fields": {AI_FIELDS}}}"#));
    assert_eq!(json(&format, &record()), serde_json::json!({"status": 200}), "not an AI request");
    let mut record = record();
    record.ai = Some(ai_usage());
    assert_eq!(
        keys_in_order(&format, &record),
        [
            "status",
            "ai_provider",
            "ai_request_model",
            "ai_response_model",
            "ai_input_tokens",
            "ai_output_tokens",
            "ai_cost",
            "ai_cache_hit",
            "ai_tokens_estimated"
        ]
    );
    let value = json(&format, &record);
    assert_eq!(value["ai_provider"], "anthropic");
    assert_eq!(value["ai_request_model"], "claude");
    assert_eq!(value["ai_response_model"], "claude-sonnet-4-5");
    assert_eq!((value["ai_input_tokens"].as_u64(), value["ai_output_tokens"].as_u64()), (Some(21), Some(8)));
    assert_eq!(value["ai_cost"], 0.000183);
    assert_eq!((value["ai_cache_hit"].as_bool(), value["ai_tokens_estimated"].as_bool()), (Some(false), Some(true)));

    // A cache's answer: no provider answered, and no price table priced it.
    record.ai = Some(Arc::new(gantry_policy_api::ai::AiUsage {
        provider: "",
        response_model: String::new(),
        cost: None,
        cache_hit: true,
        ..(*ai_usage()).clone()
    }));
    let value = json(&format, &record);
    for absent in ["ai_provider", "ai_response_model", "ai_cost"] {
        assert!(value.get(absent).is_none(), "{absent} in {value}");
    }
    assert_eq!(value["ai_cache_hit"], true);
}

#[test]
fn otlp_log_records_of_ai_exchanges_carry_the_gen_ai_attributes() {
    let format = format_of(r#"{"path": "-", "fields": ["status"]}"#);
    let mut ai = record();
    ai.ai = Some(ai_usage());
    let body = super::otlp::encode_json(&format, "edge", &[Arc::new(ai), Arc::new(record())]);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let records = value["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().expect("records").clone();
    let attribute = |index: usize, key: &str| {
        records[index]["attributes"]
            .as_array()
            .expect("attributes")
            .iter()
            .find(|attribute| attribute["key"] == key)
            .map(|attribute| attribute["value"].clone())
    };
    assert_eq!(attribute(0, "gen_ai.operation.name"), Some(serde_json::json!({"stringValue": "chat"})));
    assert_eq!(attribute(0, "gen_ai.provider.name"), Some(serde_json::json!({"stringValue": "anthropic"})));
    assert_eq!(attribute(0, "gen_ai.request.model"), Some(serde_json::json!({"stringValue": "claude"})));
    assert_eq!(attribute(0, "gen_ai.response.model"), Some(serde_json::json!({"stringValue": "claude-sonnet-4-5"})));
    assert_eq!(attribute(0, "gen_ai.usage.input_tokens"), Some(serde_json::json!({"intValue": "21"})));
    assert_eq!(attribute(0, "gen_ai.usage.output_tokens"), Some(serde_json::json!({"intValue": "8"})));
    assert_eq!(attribute(0, "gantry.ai.cost"), Some(serde_json::json!({"doubleValue": 0.000183})));
    assert_eq!(attribute(0, "gantry.ai.cache_hit"), Some(serde_json::json!({"boolValue": false})));
    assert_eq!(attribute(1, "gen_ai.usage.input_tokens"), None, "not an AI request");

    let protobuf = super::otlp::encode_protobuf(
        &format,
        "edge",
        &[Arc::new({
            let mut ai = record();
            ai.ai = Some(ai_usage());
            ai
        })],
    );
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let request =
        opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::decode(protobuf.as_slice())
            .expect("an ExportLogsServiceRequest");
    let attributes = &request.resource_logs[0].scope_logs[0].log_records[0].attributes;
    let value = |key: &str| attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()?.value);
    assert_eq!(value("gen_ai.usage.output_tokens"), Some(Value::IntValue(8)));
    assert_eq!(value("gantry.ai.tokens_estimated"), Some(Value::BoolValue(true)));
}

#[test]
fn encodes_otlp_log_records_as_the_otlp_json_encoding() {
    let format = format_of(r#"{"path": "-", "fields": ["request_id", "status"]}"#);
    let mut traced = record();
    traced.trace_id = Some([0xab; 16]);
    traced.span_id = Some([0xcd; 8]);
    let body = super::otlp::encode_json(&format, "edge", &[Arc::new(traced), Arc::new(record())]);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let resource = &value["resourceLogs"][0];
    assert_eq!(resource["resource"]["attributes"][0]["key"], "service.name");
    assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "edge");
    let records = resource["scopeLogs"][0]["logRecords"].as_array().expect("records");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["timeUnixNano"], "1700000000123000000");
    assert_eq!(records[0]["traceId"], "ab".repeat(16));
    assert_eq!(records[0]["spanId"], "cd".repeat(8));
    assert_eq!(records[0]["severityNumber"], 9);
    assert_eq!(records[0]["body"]["stringValue"], "{\"request_id\":\"r1\",\"status\":200}");
    assert!(records[1].get("traceId").is_none());
    let status = records[0]["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find(|attribute| attribute["key"] == "http.response.status_code")
        .expect("status attribute");
    assert_eq!(status["value"]["intValue"], "200");
    let json = gantry_config::OtlpEncoding::Json;
    assert_eq!(super::otlp::rejected_records(json, br#"{"partialSuccess":{"rejectedLogRecords":"2"}}"#), 2);
    assert_eq!(super::otlp::rejected_records(json, b"{}"), 0);
}

#[test]
fn encodes_otlp_log_records_as_protobuf_export_requests() {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;

    let format = format_of(r#"{"path": "-", "fields": ["request_id", "status"]}"#);
    let mut traced = record();
    traced.trace_id = Some([0xab; 16]);
    traced.span_id = Some([0xcd; 8]);
    traced.status = 503;
    let body = super::otlp::encode_protobuf(&format, "edge", &[Arc::new(traced), Arc::new(record())]);
    let request = ExportLogsServiceRequest::decode(body.as_slice()).expect("an ExportLogsServiceRequest");
    let resource = &request.resource_logs[0];
    let service = &resource.resource.as_ref().expect("resource").attributes[0];
    assert_eq!(service.key, "service.name");
    assert_eq!(service.value.as_ref().and_then(|v| v.value.clone()), Some(Value::StringValue("edge".into())));
    let records = &resource.scope_logs[0].log_records;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].time_unix_nano, 1_700_000_000_123_000_000);
    assert_eq!(records[0].trace_id, vec![0xab; 16]);
    assert_eq!(records[0].span_id, vec![0xcd; 8]);
    assert_eq!((records[0].severity_number, records[0].severity_text.as_str()), (13, "WARN"));
    let body = records[0].body.as_ref().and_then(|body| body.value.clone());
    assert_eq!(body, Some(Value::StringValue("{\"request_id\":\"r1\",\"status\":503}".into())));
    let status = records[0].attributes.iter().find(|a| a.key == "http.response.status_code").expect("status");
    assert_eq!(status.value.as_ref().and_then(|v| v.value.clone()), Some(Value::IntValue(503)));
    assert!(records[1].trace_id.is_empty() && records[1].span_id.is_empty());

    let protobuf = gantry_config::OtlpEncoding::Protobuf;
    let partial = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess { rejected_log_records: 1, error_message: "no".into() }),
    };
    assert_eq!(super::otlp::rejected_records(protobuf, &partial.encode_to_vec()), 1);
    assert_eq!(super::otlp::rejected_records(protobuf, b""), 0);
}

/// A local HTTP server answering with `statuses` in turn (the last one again once they run
/// out), counting the requests it got.
async fn scripted_server(statuses: Vec<u16>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/logs", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let statuses = Arc::new(statuses);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counted, statuses) = (counted.clone(), statuses.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                    let index = counted.fetch_add(1, Ordering::SeqCst);
                    let status = statuses[index.min(statuses.len() - 1)];
                    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
                    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (url, count)
}

fn poster(url: &str, attempts: u32) -> super::http_sink::Poster {
    let retries = gantry_config::SinkRetrySpec {
        attempts,
        backoff: gantry_config::Duration::from_millis(5),
        max_backoff: gantry_config::Duration::from_millis(20),
    };
    super::http_sink::Poster::new("test", url, Duration::from_secs(2), &retries, &Default::default()).expect("poster")
}

#[tokio::test]
async fn posts_retry_server_errors_and_429_with_backoff_but_not_refusals() {
    use super::http_sink::PostError;
    use std::sync::atomic::Ordering;

    let (url, count) = scripted_server(vec![503, 429, 200]).await;
    let answer = poster(&url, 3).post(None, "application/json", bytes::Bytes::from_static(b"[]")).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "two retries, then success");

    let (url, count) = scripted_server(vec![400]).await;
    let answer = poster(&url, 3).post(None, "application/json", bytes::Bytes::from_static(b"[]")).await;
    assert!(matches!(answer, Err(PostError::Refused(status, _)) if status == 400), "{answer:?}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "a refusal is not retried");

    let (url, count) = scripted_server(vec![500]).await;
    let answer = poster(&url, 2).post(None, "application/json", bytes::Bytes::from_static(b"[]")).await;
    assert!(matches!(answer, Err(PostError::Unavailable(_))), "{answer:?}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "the first attempt and two retries");
}

/// A queued record must not keep its connection's read buffer alive: what it took from the
/// heads is copied out of the buffer when it is emitted, with the same values.
#[test]
fn an_emitted_record_holds_no_slice_of_the_connection_buffer() {
    let head: &[u8] = b"GET /orders/7?x=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: curl/8\r\nhttps://h2.test/a?b\r\n";
    let buffer = bytes::Bytes::from(head.to_vec());
    let slice = |text: &str| {
        let start = head.windows(text.len()).position(|window| window == text.as_bytes()).expect("in the head");
        buffer.slice(start..start + text.len())
    };
    let inside = |bytes: &[u8]| buffer.as_ptr_range().contains(&bytes.as_ptr());
    let value = |text: &str| HeaderValue::from_maybe_shared(slice(text)).expect("value");
    for target in ["/orders/7?x=1", "https://h2.test/a?b"] {
        let mut record = AccessRecord {
            uri: Uri::from_maybe_shared(slice(target)).expect("uri"),
            host: Some(value("shop.test")),
            user_agent: Some(value("curl/8")),
            request_headers: vec![(HeaderName::from_static("x-tenant"), value("shop"))],
            ..record()
        };
        let shared = record.uri.path_and_query().expect("path").as_str().as_bytes();
        assert!(inside(shared), "{target}: parsed as a slice of the buffer, as hyper parses heads");
        record.detach();
        assert_eq!(record.uri.to_string(), target);
        let path = record.uri.path_and_query().expect("path").as_str().as_bytes();
        assert!(!inside(path), "{target}: the URI is copied");
        for (copied, text) in [(&record.host, "shop.test"), (&record.user_agent, "curl/8")] {
            let copied = copied.as_ref().expect("kept");
            assert_eq!(copied, text);
            assert!(!inside(copied.as_bytes()), "{text} is copied");
        }
        assert_eq!(record.request_headers[0].1, "shop");
        assert!(!inside(record.request_headers[0].1.as_bytes()));
    }
}

//! The access log: one JSON record per request, written off the request path by its sinks,
//! each against a real counterpart listening on this machine.

mod receivers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{metrics, start_gateway, with_admin};
use receivers::{bulk_answer, parse_rfc5424, HttpReceiver, IndexedDocument, TcpSyslog, UdpSyslog};

const KEY: &str = "access-log-admin-key";

/// A gateway with the admin API, the routes `/api/*` (of service `shop`) and `/status/*` (the
/// echo upstream answers `/status/<code>` with that status) to `upstream`, and `access_log`
/// (YAML lines indented under `node.access_log`).
fn gateway_logging(upstream: &EchoUpstream, access_log: &str) -> GatewayProcess {
    start_gateway(&with_admin(
        KEY,
        &format!(
            "  access_log:\n{access_log}upstreams:\n  - id: up\n    endpoints: [{addr}]\nservices:\n  - id: shop\n    upstream: up\nroutes:\n  - id: api\n    paths: [/api/*]\n    service: shop\n  - id: status\n    paths: [/status/*]\n    upstream: up\n",
            addr = upstream.addr()
        ),
    ))
}

/// The value of the series `series` (name and labels) in `/metrics`, 0 when absent.
async fn metric(gateway: &GatewayProcess, series: &str) -> u64 {
    let text = metrics(gateway).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0, |value| value.parse().unwrap_or_else(|_| panic!("{series} is not a count: {value}")))
}

fn today_index() -> String {
    let days = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() / 86_400;
    // Howard Hinnant's civil-from-days, as the gateway computes the index name.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("gantry-{year:04}.{month:02}.{day:02}")
}

#[tokio::test]
async fn writes_one_json_record_per_request_with_route_status_and_request_id() {
    let upstream = EchoUpstream::start("logged").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let gateway = start_gateway(&format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n  access_log: {{path: {log}}}\nupstreams:\n  - id: up\n    endpoints: [{addr}]\nroutes:\n  - id: api\n    paths: [/api/*]\n    upstream: up\n",
        log = log_path.display(),
        addr = upstream.addr()
    ));
    let client = TestClient::default();
    let served = client.get(&gateway.url("/api/items?page=2")).await;
    assert_eq!(served.status, StatusCode::OK);
    let missing = client.get(&gateway.url("/nowhere")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let records: Vec<serde_json::Value> = eventually("two access log records", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).expect("each line is one JSON object")).collect();
        async move { (lines.len() >= 2).then_some(lines) }
    })
    .await;
    assert_eq!(records.len(), 2, "{records:?}");

    let first = &records[0];
    assert_eq!(first["route"], "api");
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["uri"], "/api/items?page=2");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["upstream"], upstream.addr().to_string());
    assert_eq!(first["request_id"], served.header("x-request-id").expect("request id"));
    assert!(first["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(first["time"].as_str().is_some_and(|time| time.ends_with('Z') && time.len() == 24), "{first}");

    let second = &records[1];
    assert_eq!(second["status"], 404);
    assert!(second.get("route").is_none(), "an unmatched request has no route: {second}");
    assert!(second.get("upstream").is_none());
}

#[tokio::test]
async fn a_rotating_file_sink_leaves_rotated_files_of_complete_json_lines() {
    let upstream = EchoUpstream::start("rotated").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let gateway = gateway_logging(
        &upstream,
        &format!(
            "    sinks:\n      - file: {{path: {log}, rotate: {{max_bytes: 1500, keep: 20}}, queue: {{batch_records: 4}}}}\n",
            log = log_path.display()
        ),
    );
    let client = TestClient::default();
    let mut ids = Vec::new();
    for index in 0..30 {
        let response = client.get(&gateway.url(&format!("/api/items/{index}"))).await;
        assert_eq!(response.status, StatusCode::OK);
        ids.push(response.header("x-request-id").expect("request id").to_owned());
    }
    let files = [log_path.clone()].into_iter().chain((1..=20).map(|n| dir.path().join(format!("access.log.{n}"))));
    let files: Vec<std::path::PathBuf> = files.collect();
    let records: Vec<serde_json::Value> = eventually("all 30 records across the rotated files", || {
        let mut records = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            assert!(text.is_empty() || text.ends_with('\n'), "a file ends with a whole line: {}", file.display());
            for line in text.lines() {
                records.push(
                    serde_json::from_str(line).unwrap_or_else(|err| panic!("an incomplete line ({err}): {line}")),
                );
            }
        }
        async move { (records.len() >= 30).then_some(records) }
    })
    .await;
    assert_eq!(records.len(), 30);
    let mut logged: Vec<&str> = records.iter().map(|r| r["request_id"].as_str().expect("request id")).collect();
    logged.sort_unstable();
    ids.sort_unstable();
    assert_eq!(logged, ids, "every request once, none lost to rotation");
    let rotated: Vec<&std::path::PathBuf> = files[1..].iter().filter(|file| file.exists()).collect();
    assert!(rotated.len() >= 3, "about 200 bytes a record, 1500 a file: {rotated:?}");
    for file in files.iter().filter(|file| file.exists()) {
        let size = std::fs::metadata(file).expect("metadata").len();
        assert!(size <= 1500, "{} has {size} bytes", file.display());
    }
    // The oldest records are in the highest-numbered file.
    let oldest = std::fs::read_to_string(rotated.last().expect("a rotated file")).expect("read");
    let first: serde_json::Value = serde_json::from_str(oldest.lines().next().expect("a line")).expect("json");
    assert_eq!(first["uri"], "/api/items/0");
}

#[tokio::test]
async fn an_http_sink_receives_batches_of_the_chosen_fields_with_the_trace_context() {
    let upstream = EchoUpstream::start("shipped").await;
    let lines = HttpReceiver::start().await;
    let array = HttpReceiver::start().await;
    let gateway = gateway_logging(
        &upstream,
        &format!(
            "    fields: [time, request_id, trace_id, span_id, route, service, method, path, query, status, host, user_agent, bytes_received, bytes_sent, duration, gateway_overhead]\n    request_headers: [x-tenant]\n    response_headers: [content-type]\n    sinks:\n      - http: {{name: lines, url: '{lines}', queue: {{batch_records: 10, flush_interval: 200ms}}, headers: {{authorization: Bearer sink-token}}}}\n      - http: {{name: array, url: '{array}', format: json_array}}\n",
            lines = lines.url("/ingest"),
            array = array.url("/bulk")
        ),
    );
    let client = TestClient::default();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for index in 0..25 {
        let header = if index % 2 == 0 { traceparent } else { "00-not-a-trace-context" };
        let response = client
            .request(
                Method::POST,
                &gateway.url(&format!("/api/orders?n={index}")),
                &[("traceparent", header), ("x-tenant", "acme"), ("user-agent", "e2e/1")],
                "hello",
            )
            .await;
        assert_eq!(response.status, StatusCode::OK);
    }
    let batches = eventually("25 records in batches", || {
        let batches = lines.received();
        let count: usize = batches.iter().map(|batch| batch.json_lines().len()).sum();
        async move { (count >= 25).then_some(batches) }
    })
    .await;
    assert!(batches.len() >= 3, "batches of at most 10 records: {}", batches.len());
    let mut records = Vec::new();
    for batch in &batches {
        assert_eq!(batch.path, "/ingest");
        assert_eq!(batch.content_type.as_deref(), Some("application/x-ndjson"));
        let batch_records = batch.json_lines();
        assert!(batch_records.len() <= 10, "{}", batch_records.len());
        records.extend(batch_records);
    }
    assert_eq!(records.len(), 25);
    records.sort_by_key(|record| {
        record["query"].as_str().and_then(|q| q.strip_prefix("n=")).and_then(|n| n.parse::<u32>().ok())
    });
    let traced = &records[0];
    assert_eq!(traced["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(traced["span_id"], "00f067aa0ba902b7");
    assert_eq!(traced["route"], "api");
    assert_eq!(traced["service"], "shop");
    assert_eq!(traced["path"], "/api/orders");
    assert_eq!(traced["method"], "POST");
    assert_eq!(traced["host"], gateway.addr(0).to_string());
    assert_eq!(traced["user_agent"], "e2e/1");
    assert_eq!(traced["bytes_received"], 5);
    assert!(traced["bytes_sent"].as_u64().is_some_and(|bytes| bytes > 0), "{traced}");
    assert!(traced["gateway_overhead_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{traced}");
    assert_eq!(traced["request_headers"], serde_json::json!({"x-tenant": "acme"}));
    assert!(traced["response_headers"]["content-type"].is_string(), "{traced}");
    let untraced = &records[1];
    assert!(
        untraced.get("trace_id").is_none() && untraced.get("span_id").is_none(),
        "a malformed traceparent: {untraced}"
    );

    let arrays = eventually("the JSON array sink's 25 records", || {
        let batches = array.received();
        async move {
            let count: usize = batches
                .iter()
                .map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b.body).map_or(0, |a| a.len()))
                .sum();
            (count >= 25).then_some(batches)
        }
    })
    .await;
    for batch in &arrays {
        assert_eq!(batch.content_type.as_deref(), Some("application/json"));
        let records: Vec<serde_json::Value> = serde_json::from_slice(&batch.body).expect("one JSON array");
        assert!(!records.is_empty());
    }
    assert_eq!(metric(&gateway, "gantry_access_log_written_total{sink=\"lines\"}").await, 25);
    assert_eq!(metric(&gateway, "gantry_access_log_written_total{sink=\"array\"}").await, 25);
    assert_eq!(metric(&gateway, "gantry_access_log_dropped_total{sink=\"lines\"}").await, 0);
}

#[tokio::test]
async fn an_elasticsearch_sink_bulk_indexes_by_day_and_counts_the_items_refused() {
    let upstream = EchoUpstream::start("indexed").await;
    let indexed: Arc<Mutex<Vec<IndexedDocument>>> = Arc::default();
    let kept = indexed.clone();
    let cluster = HttpReceiver::start_with(Arc::new(move |received: &receivers::Received| {
        bulk_answer(received, &["/api/refused"], &kept)
    }))
    .await;
    let gateway = gateway_logging(
        &upstream,
        &format!(
            "    fields: [time, request_id, path, status]\n    sinks:\n      - elasticsearch: {{name: es, url: '{url}', queue: {{flush_interval: 100ms}}}}\n",
            url = cluster.url("")
        ),
    );
    let client = TestClient::default();
    for path in ["/api/a", "/api/refused", "/api/b", "/api/refused", "/api/c"] {
        assert_eq!(client.get(&gateway.url(path)).await.status, StatusCode::OK);
    }
    eventually("the refused items counted", || async {
        (metric(&gateway, "gantry_access_log_failed_total{sink=\"es\"}").await == 2).then_some(())
    })
    .await;
    assert_eq!(metric(&gateway, "gantry_access_log_written_total{sink=\"es\"}").await, 3);
    let documents = indexed.lock().expect("lock").clone();
    let mut paths: Vec<&str> = documents.iter().map(|doc| doc.source["path"].as_str().expect("path")).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/api/a", "/api/b", "/api/c"]);
    let today = today_index();
    for document in &documents {
        // Just past midnight the record's day may be yesterday's; the pattern is what matters.
        assert!(document.index == today || document.index.starts_with("gantry-20"), "{}", document.index);
        assert_eq!(document.index.len(), "gantry-2026.12.03".len(), "{}", document.index);
    }
    assert!(cluster.received().iter().all(|request| request.path == "/_bulk"));
}

#[tokio::test]
async fn syslog_sinks_send_rfc5424_messages_over_udp_and_octet_counted_tcp() {
    let upstream = EchoUpstream::start("syslogged").await;
    let udp = UdpSyslog::start().await;
    // Closes each connection after two messages, as a restarting server would.
    let tcp = TcpSyslog::start(Some(2)).await;
    let gateway = gateway_logging(
        &upstream,
        &format!(
            "    fields: [request_id, path, status]\n    sinks:\n      - syslog: {{name: udp, address: '{udp}', hostname: gw-test, facility: local0}}\n      - syslog: {{name: tcp, address: '{tcp}', transport: tcp, app_name: edge, facility: local3, queue: {{flush_interval: 10ms}}}}\n",
            udp = udp.addr(),
            tcp = tcp.addr()
        ),
    );
    let client = TestClient::default();
    let mut sent = Vec::new();
    for index in 0..5 {
        let path = if index == 4 { "/status/503".to_owned() } else { format!("/api/m{index}") };
        let response = client.get(&gateway.url(&path)).await;
        sent.push((path, response.header("x-request-id").expect("request id").to_owned()));
        // One message per batch, so the TCP server's closes fall between batches.
        let expected = index + 1;
        eventually("the TCP message", || async { (tcp.messages().len() >= expected).then_some(()) }).await;
    }
    let udp_messages = eventually("five UDP datagrams", || {
        let messages = udp.messages();
        async move { (messages.len() >= 5).then_some(messages) }
    })
    .await;
    for (transport, messages, hostname, app_name, facility) in
        [("udp", udp_messages, Some("gw-test"), "gantry", 16), ("tcp", tcp.messages(), None, "edge", 19)]
    {
        assert_eq!(messages.len(), 5, "{transport}: {messages:?}");
        for (message, (path, request_id)) in messages.iter().zip(&sent) {
            let parsed = parse_rfc5424(message);
            let record: serde_json::Value = serde_json::from_str(&parsed.message).expect("the MSG is the JSON record");
            assert_eq!(record["path"], path.as_str(), "{transport}");
            assert_eq!(record["request_id"], request_id.as_str());
            let severity = if record["status"] == 503 { 4 } else { 6 };
            assert_eq!(parsed.priority, facility * 8 + severity, "{transport}: {message}");
            if let Some(hostname) = hostname {
                assert_eq!(parsed.hostname, hostname);
            }
            assert_eq!(parsed.app_name, app_name);
            assert_eq!(parsed.proc_id, gateway.pid().to_string());
            assert_eq!(parsed.msg_id, "access");
            assert_eq!(parsed.structured_data, "-");
            assert!(parsed.timestamp.ends_with('Z'));
        }
    }
    assert_eq!(sent[4].0, "/status/503");
    assert!(udp.messages()[4].starts_with("<132>1 "), "a 5xx is a warning: {}", udp.messages()[4]);
    assert!(tcp.connections() >= 3, "the sink connected again after each close: {}", tcp.connections());
    assert_eq!(metric(&gateway, "gantry_access_log_failed_total{sink=\"tcp\"}").await, 0);
}

/// The 99th percentile of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100).max(1);
    latencies[rank - 1]
}

async fn timed_requests(client: &TestClient, gateway: &GatewayProcess, path: &str, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for index in 0..count {
        let started = Instant::now();
        let response = client.get(&gateway.url(&format!("{path}/{index}"))).await;
        latencies.push(started.elapsed());
        assert_eq!(response.status, StatusCode::OK);
    }
    latencies
}

#[tokio::test]
async fn a_stalled_or_down_http_sink_costs_requests_no_latency_drops_and_counts_and_recovers() {
    let upstream = EchoUpstream::start("outage").await;
    let collector = HttpReceiver::start().await;
    let gateway = gateway_logging(
        &upstream,
        &format!(
            "    fields: [request_id, path, status]\n    sinks:\n      - http: {{name: collector, url: '{url}', timeout: 1s, retries: {{attempts: 1, backoff: 50ms, max_backoff: 100ms}}, queue: {{capacity: 200, batch_records: 10, flush_interval: 20ms}}}}\n",
            url = collector.url("/logs")
        ),
    );
    let client = TestClient::default();
    const REQUESTS: usize = 400;
    timed_requests(&client, &gateway, "/api/warm", 50).await;
    let healthy = p99(timed_requests(&client, &gateway, "/api/healthy", REQUESTS).await);

    // Stalled: the collector reads each batch and never answers, so the sink waits out its
    // timeout twice per batch while requests keep coming. Were requests to wait for room in
    // the queue, one in ten (a batch) would wait those seconds: far more than 1%.
    collector.set_stalled(true);
    let stalled = p99(timed_requests(&client, &gateway, "/api/stalled", REQUESTS).await);
    let bound = healthy * 3 + Duration::from_millis(50);
    assert!(stalled <= bound, "p99 with the sink stalled {stalled:?} is over {bound:?} (healthy p99 {healthy:?})");
    eprintln!("p99 with a healthy sink {healthy:?}, with it stalled {stalled:?}");
    let dropped = metric(&gateway, "gantry_access_log_dropped_total{sink=\"collector\"}").await;
    assert!(dropped >= 100, "a full queue of 200 drops records, counted: {dropped}");

    // Down: the port is closed; batches fail at once and are counted after their retry.
    collector.stop().await;
    collector.set_stalled(false);
    timed_requests(&client, &gateway, "/api/down", 50).await;
    eventually("batches given up while the collector is down", || async {
        (metric(&gateway, "gantry_access_log_failed_total{sink=\"collector\"}").await > 0).then_some(())
    })
    .await;

    // Back on the same address: the sink connects again and new records arrive.
    let collector = collector.restart().await;
    let recovered = eventually("a record sent after the collector came back", || async {
        client.get(&gateway.url("/api/after")).await;
        collector.received().iter().flat_map(|batch| batch.json_lines()).find(|record| record["path"] == "/api/after")
    })
    .await;
    assert_eq!(recovered["status"], 200);
}

#[tokio::test]
async fn otlp_sinks_export_log_records_as_protobuf_or_json_with_the_trace_context() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;

    let upstream = EchoUpstream::start("exported").await;
    let protobuf = HttpReceiver::start().await;
    let json = HttpReceiver::start().await;
    let gateway = gateway_logging(
        &upstream,
        &format!(
            "    fields: [request_id, path, status]\n    sinks:\n      - otlp: {{url: '{protobuf}', service_name: edge, queue: {{flush_interval: 50ms}}}}\n      - otlp: {{name: otlp-json, url: '{json}', encoding: json, queue: {{flush_interval: 50ms}}}}\n",
            protobuf = protobuf.url("/v1/logs"),
            json = json.url("/v1/logs")
        ),
    );
    let client = TestClient::default();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    client.request(Method::GET, &gateway.url("/api/traced"), &[("traceparent", traceparent)], "").await;
    client.get(&gateway.url("/status/503")).await;

    let exports = eventually("two protobuf log records", || {
        let received = protobuf.received();
        async move {
            let count: usize = received
                .iter()
                .map(|export| {
                    let request = ExportLogsServiceRequest::decode(export.body.as_ref()).expect("protobuf export");
                    request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum::<usize>()
                })
                .sum();
            (count >= 2).then_some(received)
        }
    })
    .await;
    let mut records = Vec::new();
    for export in &exports {
        assert_eq!(export.path, "/v1/logs");
        assert_eq!(export.content_type.as_deref(), Some("application/x-protobuf"));
        let request = ExportLogsServiceRequest::decode(export.body.as_ref()).expect("protobuf export");
        for resource in request.resource_logs {
            let service = resource.resource.expect("resource").attributes;
            assert_eq!(service[0].key, "service.name");
            assert_eq!(
                service[0].value.as_ref().and_then(|v| v.value.clone()),
                Some(Value::StringValue("edge".into()))
            );
            for scope in resource.scope_logs {
                assert_eq!(scope.scope.expect("scope").name, "gantry.access_log");
                records.extend(scope.log_records);
            }
        }
    }
    let body = |record: &opentelemetry_proto::tonic::logs::v1::LogRecord| -> serde_json::Value {
        match record.body.as_ref().and_then(|body| body.value.clone()) {
            Some(Value::StringValue(text)) => serde_json::from_str(&text).expect("the body is the JSON record"),
            other => panic!("body {other:?}"),
        }
    };
    let traced = records.iter().find(|record| body(record)["path"] == "/api/traced").expect("the traced request");
    assert_eq!(hex(&traced.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&traced.span_id), "00f067aa0ba902b7");
    assert_eq!(traced.severity_number, 9);
    let failed = records.iter().find(|record| body(record)["status"] == 503).expect("the 503");
    assert!(failed.trace_id.is_empty());
    assert_eq!(failed.severity_text, "WARN");
    let route = failed.attributes.iter().find(|a| a.key == "http.route").and_then(|a| a.value.clone());
    assert_eq!(route.and_then(|v| v.value), Some(Value::StringValue("status".into())));

    let exports = eventually("two JSON log records", || {
        let received = json.received();
        async move {
            let records: Vec<serde_json::Value> = received
                .iter()
                .flat_map(|export| {
                    let request: serde_json::Value = serde_json::from_slice(&export.body).expect("JSON export");
                    request["resourceLogs"][0]["scopeLogs"][0]["logRecords"].as_array().cloned().unwrap_or_default()
                })
                .collect();
            (records.len() >= 2).then_some((received, records))
        }
    })
    .await;
    assert!(exports.0.iter().all(|export| export.content_type.as_deref() == Some("application/json")));
    let traced = exports.1.iter().find(|record| record["traceId"].is_string()).expect("a traced record");
    assert_eq!(traced["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(traced["spanId"], "00f067aa0ba902b7");
    assert!(traced["timeUnixNano"].as_str().is_some_and(|nanos| nanos.parse::<u64>().is_ok()), "{traced}");
    assert_eq!(metric(&gateway, "gantry_access_log_written_total{sink=\"otlp\"}").await, 2);
    assert_eq!(metric(&gateway, "gantry_access_log_written_total{sink=\"otlp-json\"}").await, 2);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

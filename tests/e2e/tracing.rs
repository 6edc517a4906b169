//! Distributed tracing through a running gateway: trace context in (W3C, B3), context out to
//! a real echo upstream, spans exported to a real OTLP receiver over gRPC and over HTTP.

use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::otlp::{OtlpReceiver, ReceivedSpan, Transport};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{metrics, start_gateway};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const STATUS_ERROR: i32 = 2;

/// A gateway tracing with `tracing` (the YAML map under `node.tracing`), with an admin API,
/// one route `/api/*` to `upstream` with `key_auth` and `request_headers`, and a consumer.
fn traced_gateway(tracing: &str, upstream: &EchoUpstream) -> GatewayProcess {
    start_gateway(&format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin: {{address: 127.0.0.1:0, api_key: tracing-admin-key-0123456789}}
  tracing: {tracing}
consumers:
  - id: alice
    credentials: {{key_auth: {{key: alice-key-0123}}}}
upstreams:
  - id: echo
    endpoints: [{addr}]
    retries: {{attempts: 2, backoff: 1ms}}
routes:
  - id: api
    paths: [/api/*]
    upstream: echo
    policies:
      - key_auth: {{header: x-api-key}}
      - request_headers: {{set: {{x-traced: 'yes'}}}}
",
        addr = upstream.addr()
    ))
}

/// `GET path` with `headers` and alice's key; the response and the headers the upstream got.
async fn get(gateway: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
    let mut all = vec![("x-api-key", "alice-key-0123")];
    all.extend_from_slice(headers);
    let response = TestClient::default().request(Method::GET, &gateway.url(path), &all, "").await;
    let seen =
        if response.status == StatusCode::OK { response.json()["headers"].clone() } else { serde_json::Value::Null };
    (response.status, seen)
}

/// The spans of `trace` once `count` of them have arrived.
async fn spans_of(receiver: &OtlpReceiver, trace: &str, count: usize) -> Vec<ReceivedSpan> {
    eventually(&format!("{count} spans of trace {trace}"), || {
        let spans = receiver.trace(trace);
        async move { (spans.len() >= count).then_some(spans) }
    })
    .await
}

fn by_kind(spans: &[ReceivedSpan], kind: i32) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|span| span.span.kind == kind).collect()
}

/// `(trace id, parent id, flags)` of a `traceparent` value.
fn traceparent_parts(value: &serde_json::Value) -> (String, String, String) {
    let text = value.as_str().unwrap_or_else(|| panic!("no traceparent in {value}"));
    let fields: Vec<&str> = text.split('-').collect();
    assert_eq!((fields.len(), fields[0]), (4, "00"), "{text}");
    (fields[1].to_owned(), fields[2].to_owned(), fields[3].to_owned())
}

#[tokio::test]
async fn continues_a_w3c_trace_and_exports_server_stage_and_upstream_spans_over_grpc() {
    let upstream = EchoUpstream::start("traced").await;
    let receiver = OtlpReceiver::start().await;
    let gateway = traced_gateway(
        &format!(
            "{{exporter: {{protocol: grpc, endpoint: '{}', headers: {{x-tenant: acme}}}}, service_name: edge, batch: {{interval: 100ms}}}}",
            receiver.grpc_endpoint()
        ),
        &upstream,
    );
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, seen) =
        get(&gateway, "/api/orders?page=2", &[("traceparent", &traceparent), ("tracestate", "vendor=opaque")]).await;
    assert_eq!(status, StatusCode::OK);
    let (trace_id, upstream_parent, flags) = traceparent_parts(&seen["traceparent"]);
    assert_eq!(
        (trace_id.as_str(), flags.as_str()),
        (TRACE, "01"),
        "the upstream continues the caller's trace, sampled"
    );
    assert_ne!(upstream_parent, CALLER_SPAN, "the upstream's parent is the gateway's span, not the caller's");
    assert_eq!(seen["tracestate"], "vendor=opaque", "tracestate passes through");

    // The server span, the identity (key_auth) and transform (request_headers) stages, the upstream call.
    let spans = spans_of(&receiver, TRACE, 4).await;
    assert!(spans.iter().all(|span| span.transport == Transport::Grpc));
    let servers = by_kind(&spans, SERVER);
    assert_eq!(servers.len(), 1, "{spans:#?}");
    let server = servers[0];
    assert_eq!(server.parent_span_id(), CALLER_SPAN, "the server span continues the caller's span");
    assert_eq!(server.span.name, "GET");
    assert_eq!(server.span.trace_state, "vendor=opaque");
    assert_eq!(server.attribute("http.request.method").as_deref(), Some("GET"));
    assert_eq!(server.attribute("url.path").as_deref(), Some("/api/orders"));
    assert_eq!(server.attribute("url.query").as_deref(), Some("page=2"));
    assert_eq!(server.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(server.attribute("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(server.attribute("network.peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(server.attribute("gantry.route").as_deref(), Some("api"));
    assert_eq!(server.attribute("gantry.consumer").as_deref(), Some("alice"));
    assert_eq!(server.resource_attribute("service.name").as_deref(), Some("edge"));
    assert!(server.span.status.as_ref().is_none_or(|status| status.code != STATUS_ERROR));

    let stages = by_kind(&spans, INTERNAL);
    let names: Vec<&str> = stages.iter().map(|span| span.span.name.as_str()).collect();
    assert!(names.contains(&"request identity") && names.contains(&"request transform"), "{names:?}");
    let identity = stages.iter().find(|span| span.span.name == "request identity").expect("identity stage");
    assert_eq!(identity.attribute("gantry.policies").as_deref(), Some("key_auth"));
    let clients = by_kind(&spans, CLIENT);
    assert_eq!(clients.len(), 1, "{spans:#?}");
    let client = clients[0];
    for child in stages.iter().copied().chain([client]) {
        assert_eq!(child.parent_span_id(), server.span_id(), "{} is a child of the server span", child.span.name);
        assert!(child.span.start_time_unix_nano >= server.span.start_time_unix_nano);
        assert!(child.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    }
    assert_eq!(client.span_id(), upstream_parent, "the upstream's parent is the client span");
    assert_eq!(client.attribute("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(client.attribute("server.port"), Some(upstream.addr().port().to_string()));
    assert_eq!(client.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(client.attribute("gantry.upstream").as_deref(), Some("echo"));

    let export = receiver.exports().into_iter().next().expect("one export");
    assert!(export.headers.contains(&("x-tenant".to_owned(), "acme".to_owned())), "{:?}", export.headers);
}

#[tokio::test]
async fn exports_over_http_and_starts_a_trace_for_a_request_without_context() {
    let upstream = EchoUpstream::start("traced").await;
    let receiver = OtlpReceiver::start().await;
    let gateway = traced_gateway(
        &format!(
            "{{exporter: {{protocol: http, endpoint: '{}', headers: {{authorization: Bearer t0k}}}}, resource_attributes: {{deployment.environment.name: test}}, batch: {{interval: 100ms}}}}",
            receiver.http_endpoint()
        ),
        &upstream,
    );
    let (status, seen) = get(&gateway, "/api/new", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (trace_id, upstream_parent, flags) = traceparent_parts(&seen["traceparent"]);
    assert_eq!(flags, "01");
    assert!(seen.get("tracestate").is_none());

    let spans = spans_of(&receiver, &trace_id, 4).await;
    assert!(spans.iter().all(|span| span.transport == Transport::Http));
    let server = by_kind(&spans, SERVER)[0];
    assert_eq!(server.parent_span_id(), "", "a new trace starts at the gateway");
    assert_eq!(server.resource_attribute("service.name").as_deref(), Some("gantry"));
    assert_eq!(server.resource_attribute("deployment.environment.name").as_deref(), Some("test"));
    assert_eq!(by_kind(&spans, CLIENT)[0].span_id(), upstream_parent);
    let export = receiver.exports().into_iter().next().expect("one export");
    assert!(export.headers.contains(&("authorization".to_owned(), "Bearer t0k".to_owned())), "{:?}", export.headers);
    assert!(export.headers.contains(&("content-type".to_owned(), "application/x-protobuf".to_owned())));
}

#[tokio::test]
async fn continues_b3_single_and_multi_header_traces() {
    let upstream = EchoUpstream::start("traced").await;
    let receiver = OtlpReceiver::start().await;
    let gateway = traced_gateway(
        &format!("{{exporter: {{endpoint: '{}'}}, batch: {{interval: 100ms}}}}", receiver.grpc_endpoint()),
        &upstream,
    );

    let (status, seen) = get(&gateway, "/api/b3", &[("b3", &format!("{TRACE}-{CALLER_SPAN}-1"))]).await;
    assert_eq!(status, StatusCode::OK);
    let (trace_id, parent, _) = traceparent_parts(&seen["traceparent"]);
    assert_eq!(trace_id, TRACE);
    assert_eq!(seen["b3"], format!("{TRACE}-{parent}-1"), "the upstream gets B3 the way the caller sent it");
    let spans = spans_of(&receiver, TRACE, 3).await;
    assert_eq!(by_kind(&spans, SERVER)[0].parent_span_id(), CALLER_SPAN);

    let multi_trace = "a3ce929d0e0e4736";
    let (status, seen) = get(
        &gateway,
        "/api/b3multi",
        &[("x-b3-traceid", multi_trace), ("x-b3-spanid", CALLER_SPAN), ("x-b3-sampled", "1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let widened = format!("{:0>32}", multi_trace);
    let (trace_id, parent, _) = traceparent_parts(&seen["traceparent"]);
    assert_eq!(trace_id, widened, "a 64-bit B3 trace id is widened with zeros");
    assert_eq!(seen["x-b3-spanid"], parent.as_str());
    assert_eq!(seen["x-b3-sampled"], "1");
    let spans = spans_of(&receiver, &widened, 3).await;
    assert_eq!(by_kind(&spans, SERVER)[0].parent_span_id(), CALLER_SPAN);
}

#[tokio::test]
async fn ratio_zero_exports_nothing_but_still_propagates_the_context() {
    let upstream = EchoUpstream::start("traced").await;
    let receiver = OtlpReceiver::start().await;
    let gateway = traced_gateway(
        &format!(
            "{{exporter: {{endpoint: '{}'}}, sampler: {{ratio: 0, parent_based: false}}, batch: {{interval: 50ms}}}}",
            receiver.grpc_endpoint()
        ),
        &upstream,
    );
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, seen) = get(&gateway, "/api/quiet", &[("traceparent", &traceparent)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen["traceparent"].as_str(),
        Some(traceparent.as_str()),
        "with no span of its own recorded, the gateway passes the caller's context on as it came"
    );
    let (_, seen) = get(&gateway, "/api/quiet", &[]).await;
    let (trace_id, _, flags) = traceparent_parts(&seen["traceparent"]);
    assert_eq!(flags, "00", "a trace starting here goes on, marked as not sampled");
    assert_ne!(trace_id, TRACE);
    let (_, seen) = get(&gateway, "/api/quiet", &[("b3", &format!("{TRACE}-{CALLER_SPAN}-1"))]).await;
    let (trace_id, parent, flags) = traceparent_parts(&seen["traceparent"]);
    assert_eq!((trace_id.as_str(), parent.as_str(), flags.as_str()), (TRACE, CALLER_SPAN, "00"));
    assert_eq!(seen["b3"], format!("{TRACE}-{CALLER_SPAN}-0"));

    // Ten export intervals: a sampled span would have been sent by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    let text = metrics(&gateway).await;
    assert!(text.lines().any(|line| line == "gantry_tracing_spans_exported_total 0"), "{text}");
}

#[tokio::test]
async fn records_retries_as_events_and_marks_upstream_5xx_as_errors() {
    let upstream = EchoUpstream::start("traced").await;
    let receiver = OtlpReceiver::start().await;
    let gateway = traced_gateway(
        &format!("{{exporter: {{endpoint: '{}'}}, batch: {{interval: 100ms}}}}", receiver.grpc_endpoint()),
        &upstream,
    );
    upstream.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let (status, _) = get(&gateway, "/api/failing", &[("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"))]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.requests(), 3, "one try and two retries");

    let spans = spans_of(&receiver, TRACE, 4).await;
    let server = by_kind(&spans, SERVER)[0];
    assert_eq!(server.span.status.as_ref().map(|status| status.code), Some(STATUS_ERROR));
    assert_eq!(server.attribute("http.response.status_code").as_deref(), Some("503"));
    let client = by_kind(&spans, CLIENT)[0];
    assert_eq!(client.span.status.as_ref().map(|status| status.code), Some(STATUS_ERROR));
    assert_eq!(client.attribute("http.request.resend_count").as_deref(), Some("2"));
    let retries: Vec<_> = client.span.events.iter().filter(|event| event.name == "retry").collect();
    assert_eq!(retries.len(), 2, "{:#?}", client.span.events);
    for event in retries {
        assert_eq!(
            gantry_testkit::otlp::attribute(&event.attributes, "http.response.status_code").as_deref(),
            Some("503")
        );
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_or_refusing_never_slows_requests_and_drops_are_counted() {
    let upstream = EchoUpstream::start("traced").await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let gateway = traced_gateway(
        &format!("{{exporter: {{endpoint: 'http://{closed}', timeout: 200ms}}, batch: {{interval: 50ms}}}}"),
        &upstream,
    );
    let started = Instant::now();
    for _ in 0..20 {
        let (status, _) = get(&gateway, "/api/x", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "20 requests took {:?}", started.elapsed());
    eventually("spans dropped for failed exports", || async {
        let text = metrics(&gateway).await;
        text.lines()
            .any(|line| {
                line.strip_prefix("gantry_tracing_spans_dropped_total{reason=\"export_failed\"} ")
                    .and_then(|count| count.parse::<u64>().ok())
                    .is_some_and(|count| count >= 20)
            })
            .then_some(())
    })
    .await;
    let text = metrics(&gateway).await;
    assert!(
        text.lines().any(|line| line.starts_with("gantry_tracing_export_failures_total ") && !line.ends_with(" 0")),
        "{text}"
    );
    if let Err(problems) = gantry_testkit::promtool::check_metrics(&text) {
        panic!("promtool check metrics refused the exposition: {problems}\n{text}");
    }

    // A receiver that refuses every export.
    let receiver = OtlpReceiver::start().await;
    receiver.set_failing(true);
    let refused = traced_gateway(
        &format!(
            "{{exporter: {{protocol: http, endpoint: '{}'}}, batch: {{interval: 50ms}}}}",
            receiver.http_endpoint()
        ),
        &upstream,
    );
    assert_eq!(get(&refused, "/api/refused", &[]).await.0, StatusCode::OK);
    eventually("an export refused by the receiver counted", || async {
        let text = metrics(&refused).await;
        text.lines().any(|line| line == "gantry_tracing_export_failures_total 1").then_some(())
    })
    .await;
    assert!(receiver.exports().is_empty());

    // A receiver that accepts connections and never answers, and a queue of 8 spans (two
    // requests): while an export waits, further spans are dropped, and requests go on.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stalled = traced_gateway(
        &format!(
            "{{exporter: {{protocol: http, endpoint: 'http://{}/v1/traces', timeout: 5s}}, batch: {{max_queue: 8, max_batch: 8, interval: 50ms}}}}",
            silent.local_addr().expect("addr")
        ),
        &upstream,
    );
    let started = Instant::now();
    for _ in 0..30 {
        assert_eq!(get(&stalled, "/api/stalled", &[]).await.0, StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "30 requests took {:?}", started.elapsed());
    let text = metrics(&stalled).await;
    let queue_full = text
        .lines()
        .find_map(|line| line.strip_prefix("gantry_tracing_spans_dropped_total{reason=\"queue_full\"} "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    // 30 requests of 4 spans; at most 8 wait in the queue and 8 in the stalled export.
    assert!(queue_full >= 30 * 4 - 16, "{text}");
}

/// The example of `docs/tracing.md`, checked by `gantry validate` and then run as written but
/// for its addresses, so the guide cannot drift from what the gateway does.
#[tokio::test]
async fn the_tracing_guide_example_is_valid_and_exports_a_callers_sampled_trace() {
    let guide = include_str!("../../docs/tracing.md");
    let blocks: Vec<&str> = guide.split("```yaml\n").skip(1).filter_map(|rest| rest.split("```").next()).collect();
    assert_eq!(blocks.len(), 1, "docs/tracing.md has one example");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tracing.yaml");
    std::fs::write(&path, blocks[0]).expect("write example");
    let output = std::process::Command::new(crate::support::gantry_binary())
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run gantry validate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let upstream = EchoUpstream::start("orders").await;
    let receiver = OtlpReceiver::start().await;
    let yaml = blocks[0]
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9180", "127.0.0.1:0")
        .replace("http://127.0.0.1:4317", &receiver.grpc_endpoint())
        .replace("127.0.0.1:9001", &upstream.addr().to_string());
    let gateway = start_gateway(&yaml);
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let response = TestClient::default()
        .request(Method::GET, &gateway.url("/orders/7"), &[("traceparent", &traceparent)], "")
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let spans = spans_of(&receiver, TRACE, 2).await;
    let server = by_kind(&spans, SERVER)[0];
    assert_eq!(server.resource_attribute("service.name").as_deref(), Some("edge-gateway"));
    assert_eq!(server.resource_attribute("deployment.environment.name").as_deref(), Some("production"));
    let export = receiver.exports().into_iter().next().expect("one export");
    assert!(export.headers.contains(&("x-scope-orgid".to_owned(), "team-a".to_owned())), "{:?}", export.headers);
}

#[tokio::test]
async fn access_log_records_carry_the_gateways_server_span() {
    let upstream = EchoUpstream::start("traced").await;
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let gateway = start_gateway(&format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  access_log: {{path: {log}}}
  tracing: {{exporter: {{endpoint: '{endpoint}'}}, batch: {{interval: 100ms}}}}
upstreams:
  - id: echo
    endpoints: [{addr}]
routes:
  - id: api
    paths: [/api/*]
    upstream: echo
",
        log = log_path.display(),
        endpoint = receiver.grpc_endpoint(),
        addr = upstream.addr()
    ));
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let response = TestClient::default()
        .request(Method::GET, &gateway.url("/api/logged"), &[("traceparent", &traceparent)], "")
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let spans = spans_of(&receiver, TRACE, 2).await;
    let server = by_kind(&spans, SERVER)[0];
    let record: serde_json::Value = eventually("an access log record", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let record = text.lines().next().map(|line| serde_json::from_str(line).expect("a JSON record"));
        async move { record }
    })
    .await;
    assert_eq!(record["trace_id"], TRACE);
    assert_eq!(record["span_id"], server.span_id().as_str(), "the record names the gateway's span, not the caller's");
}

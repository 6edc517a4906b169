//! The access log: one JSON record per request, written off the request path.

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, EchoUpstream};
use http::StatusCode;

use crate::support::start_gateway;

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

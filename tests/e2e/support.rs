//! Shared helpers of the end-to-end tests.

use std::net::SocketAddr;
use std::path::Path;

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::GatewayProcess;
use http::{Method, StatusCode};

/// The `gantry` executable built for these tests.
pub fn gantry_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gantry"))
}

/// Starts the gateway with `yaml` (listeners on port 0).
pub fn start_gateway(yaml: &str) -> GatewayProcess {
    GatewayProcess::start(gantry_binary(), yaml)
}

/// A config with one plain listener on port 0 and the given resources.
pub fn with_listener(resources: &str) -> String {
    format!("node:\n  listeners:\n    - address: 127.0.0.1:0\n{resources}")
}

/// A config with one plain listener and the admin API (its key `api_key`), both on port 0,
/// and the given resources.
pub fn with_admin(api_key: &str, resources: &str) -> String {
    with_listener(&format!("  admin:\n    address: 127.0.0.1:0\n    api_key: {api_key}\n{resources}"))
}

/// `GET path` on the gateway's admin API with `api_key`.
pub async fn admin_get(gateway: &GatewayProcess, api_key: &str, path: &str) -> TestResponse {
    let url = format!("http://{}{path}", gateway.admin_addr());
    TestClient::default().request(Method::GET, &url, &[("x-api-key", api_key)], "").await
}

/// The gateway's counters, `GET /metrics` on its admin API (which asks no key for it).
pub async fn metrics(gateway: &GatewayProcess) -> String {
    let response = TestClient::default().get(&format!("http://{}/metrics", gateway.admin_addr())).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    String::from_utf8_lossy(&response.body).into_owned()
}

/// Asserts that `/metrics` has the line `line` exactly (a counter with its labels and value).
pub async fn assert_metric(gateway: &GatewayProcess, line: &str) {
    let text = metrics(gateway).await;
    assert!(text.lines().any(|own| own == line), "no `{line}` in:\n{text}");
}

/// An address nothing listens on: loopback port 1, outside the range ports are handed out from
/// for `:0`. A port bound for a moment and released could be taken by another test's server
/// before the gateway connects to it.
pub fn closed_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

/// The JSON chunks of a streamed answer in OpenAI's format, checking that it ends with one
/// `data: [DONE]` and that every other event is a `data:` line.
pub fn sse_chunks(text: &str) -> Vec<serde_json::Value> {
    let events: Vec<&str> = text.split("\n\n").filter(|event| !event.is_empty()).collect();
    assert_eq!(events.last().copied(), Some("data: [DONE]"), "{text}");
    assert_eq!(events.iter().filter(|event| **event == "data: [DONE]").count(), 1, "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event.strip_prefix("data: ").expect("a data event")).expect("JSON"))
        .collect()
}

/// The text deltas of streamed chat chunks, in order.
pub fn delta_content(chunks: &[serde_json::Value]) -> String {
    chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect()
}

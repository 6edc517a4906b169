//! `script` through a running gateway: headers the script sets reach the upstream, a rewritten
//! path is the one the upstream sees, a script can answer alone, response headers change, and
//! a runaway script is stopped by its limits with a 500 (or ignored when failing open) while
//! the gateway goes on serving.

use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_listener};

#[tokio::test]
async fn runs_sandboxed_scripts_on_requests_and_responses() {
    let upstream = EchoUpstream::start("orders").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: orders
    endpoints: [{addr}]
routes:
  - id: orders
    paths: [/orders]
    upstream: orders
    policies:
      - script:
          source: |
            fn on_request() {{
              if this.headers["x-maintenance"] == "on" {{
                return #{{status: 503, headers: #{{"retry-after": "60"}}, body: "down for maintenance"}};
              }}
              this.headers["x-client"] = this.client_ip;
              this.headers["x-seen-path"] = this.path;
              this.headers.remove("x-debug");
              this.path = "/v2" + this.path;
            }}
            fn on_response() {{
              this.headers["x-upstream-status"] = `${{this.status}}`;
            }}
  - id: endless
    paths: [/endless]
    upstream: orders
    policies:
      - script:
          source: "fn on_request() {{ loop {{ }} }}"
  - id: slow
    paths: [/slow]
    upstream: orders
    policies:
      - script:
          max_operations: 100000000000
          timeout: 50ms
          source: "fn on_request() {{ let n = 0; loop {{ n += 1; }} }}"
  - id: huge
    paths: [/huge]
    upstream: orders
    policies:
      - script:
          max_string_size: 4096
          source: "fn on_request() {{ let s = \"x\"; loop {{ s += s; }} }}"
  - id: lenient
    paths: [/lenient]
    upstream: orders
    policies:
      - script:
          on_error: fail_open
          source: "fn on_request() {{ this.headers[\"x-half\"] = \"done\"; loop {{ }} }}"
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    let response =
        client.request(Method::GET, &gateway.url("/orders?page=2"), &[("x-debug", "1"), ("x-keep", "yes")], "").await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let echoed = response.json();
    let headers = &echoed["headers"];
    assert_eq!(headers["x-client"], "127.0.0.1", "{echoed}");
    assert_eq!(headers["x-seen-path"], "/orders", "{echoed}");
    assert_eq!(headers["x-keep"], "yes", "{echoed}");
    assert!(headers.get("x-debug").is_none(), "removed before the upstream: {echoed}");
    assert_eq!(echoed["path"], "/v2/orders", "{echoed}");
    assert_eq!(echoed["query"], "page=2", "{echoed}");
    assert_eq!(response.header("x-upstream-status"), Some("200"));

    let closed = client.request(Method::GET, &gateway.url("/orders"), &[("x-maintenance", "on")], "").await;
    assert_eq!(closed.status, StatusCode::SERVICE_UNAVAILABLE, "{closed:?}");
    assert_eq!(closed.header("retry-after"), Some("60"));
    assert_eq!(closed.body.as_ref(), b"down for maintenance");

    for path in ["/endless", "/slow", "/huge"] {
        let started = Instant::now();
        let stopped = client.request(Method::GET, &gateway.url(path), &[], "").await;
        assert_eq!(stopped.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {stopped:?}");
        assert!(String::from_utf8_lossy(&stopped.body).contains("script-error"), "{path}: {stopped:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{path} stopped in {:?}", started.elapsed());
    }

    // The gateway's output is read by another thread: give it a moment.
    let waited = Instant::now();
    let logged = loop {
        let found = gateway
            .logs()
            .iter()
            .any(|line| line.contains("script failed") && line.contains("endless") && line.contains("on_request"));
        if found || waited.elapsed() > Duration::from_secs(3) {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(logged, "a stopped script is logged with its route: {:?}", gateway.logs());

    let lenient = client.request(Method::GET, &gateway.url("/lenient"), &[], "").await;
    assert_eq!(lenient.status, StatusCode::OK, "{lenient:?}");
    assert!(lenient.json()["headers"].get("x-half").is_none(), "a failed call changes nothing");

    let again = client.request(Method::GET, &gateway.url("/orders"), &[], "").await;
    assert_eq!(again.status, StatusCode::OK, "the worker still serves after stopped scripts");
}

//! `request_mirror` through a running gateway: a recording upstream receives the copies (head
//! and body) while the clients are answered by the route's own echo upstream; the sample
//! ratio and the body limit decide exactly which requests are copied; a mirror that refuses
//! connections or answers slowly changes neither the clients' statuses nor their latency,
//! and copies past `max_in_flight` are dropped and counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use super::harness::RecordingUpstream;
use crate::support::{assert_metric, metrics, start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-request-mirror-3c8a";

/// Routes whose requests go to `live` and are mirrored to `shadow`, each route with its own
/// `request_mirror` settings: `(route id, settings)`, the route matching `/<id>/*`.
fn config(live: SocketAddr, shadow: SocketAddr, routes: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "upstreams:
  - id: live
    endpoints: [{live}]
  - id: shadow
    endpoints: [{shadow}]
    retries: {{attempts: 0}}
routes:
"
    );
    for (id, settings) in routes {
        yaml.push_str(&format!(
            "  - id: {id}
    paths: [/{id}/*]
    upstream: live
    policies:
      - request_mirror: {{upstream: shadow, {settings}}}
"
        ));
    }
    with_admin(ADMIN_KEY, &yaml)
}

async fn send(client: &TestClient, gateway: &GatewayProcess, method: Method, path: &str, body: &str) -> TestResponse {
    let response = client.request(method, &gateway.url(path), &[], body.to_owned()).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.header("x-upstream"), Some("live"), "the client is answered by the route's upstream");
    response
}

/// Waits until `/metrics` has `line`.
async fn eventually_metric(gateway: &GatewayProcess, line: &str) {
    eventually(line, || async { metrics(gateway).await.lines().any(|own| own == line).then_some(()) }).await;
}

#[tokio::test]
async fn the_mirror_receives_a_copy_of_each_request_head_and_body() {
    let live = EchoUpstream::start("live").await;
    let shadow = RecordingUpstream::start().await;
    let gateway = start_gateway(&config(live.addr(), shadow.addr(), &[("orders", "max_body_bytes: 4096")]));
    let client = TestClient::default();

    let mut request_ids = Vec::new();
    for number in 0..3 {
        let response = send(&client, &gateway, Method::GET, &format!("/orders/{number}?full=yes"), "").await;
        request_ids.push(response.header("x-request-id").expect("X-Request-Id").to_owned());
    }
    let body = "x".repeat(3000);
    let response = send(&client, &gateway, Method::POST, "/orders/new", &body).await;
    assert_eq!(response.json()["body_length"], 3000, "the route's upstream got the whole body");
    request_ids.push(response.header("x-request-id").expect("X-Request-Id").to_owned());

    let copies = eventually("four copies at the mirror", || async {
        let received = shadow.received();
        (received.len() == 4).then_some(received)
    })
    .await;
    let mut heads: Vec<(String, String)> =
        copies.iter().map(|copy| (copy.method.clone(), copy.path_and_query.clone())).collect();
    heads.sort();
    assert_eq!(
        heads,
        [
            ("GET".to_owned(), "/orders/0?full=yes".to_owned()),
            ("GET".to_owned(), "/orders/1?full=yes".to_owned()),
            ("GET".to_owned(), "/orders/2?full=yes".to_owned()),
            ("POST".to_owned(), "/orders/new".to_owned()),
        ]
    );
    let post = copies.iter().find(|copy| copy.method == "POST").expect("the POST's copy");
    assert_eq!((post.body_bytes, post.body_complete), (3000, true));
    assert_eq!(post.values("content-length"), ["3000"]);
    let mut mirrored_ids: Vec<String> =
        copies.iter().flat_map(|copy| copy.values("x-request-id")).map(str::to_owned).collect();
    mirrored_ids.sort();
    request_ids.sort();
    assert_eq!(mirrored_ids, request_ids, "each copy carries its request's id");
    assert!(copies.iter().all(|copy| !copy.values("x-forwarded-for").is_empty()));
    assert_eq!(live.requests(), 4);
    eventually_metric(&gateway, "gantry_mirror_requests_total{upstream=\"shadow\",outcome=\"answered\"} 4").await;
}

#[tokio::test]
async fn copies_exactly_the_sampled_share_and_no_body_over_the_limit() {
    let live = EchoUpstream::start("live").await;
    let shadow = RecordingUpstream::start().await;
    let routes = [("sampled", "sample_ratio: 0.25"), ("small", "max_body_bytes: 100")];
    let gateway = start_gateway(&config(live.addr(), shadow.addr(), &routes));
    let client = TestClient::default();

    for _ in 0..8 {
        send(&client, &gateway, Method::GET, "/sampled/item", "").await;
    }
    send(&client, &gateway, Method::POST, "/small/item", &"s".repeat(100)).await;
    send(&client, &gateway, Method::POST, "/small/item", &"l".repeat(101)).await;
    let copies = eventually("three copies at the mirror", || async {
        let received = shadow.received();
        (received.len() >= 3).then_some(received)
    })
    .await;
    eventually_metric(&gateway, "gantry_mirror_requests_total{upstream=\"shadow\",outcome=\"skipped\"} 1").await;
    eventually_metric(&gateway, "gantry_mirror_requests_total{upstream=\"shadow\",outcome=\"answered\"} 3").await;
    let copies_of = |path: &str| copies.iter().filter(|copy| copy.path_and_query == path).count();
    assert_eq!(copies_of("/sampled/item"), 2, "a ratio of 0.25 copies 2 of 8 requests");
    let small = copies.iter().find(|copy| copy.path_and_query == "/small/item").expect("the small body's copy");
    assert_eq!(small.body_bytes, 100, "only the body within max_body_bytes was copied");
    assert_eq!(shadow.received().len(), 3);
    assert_eq!(live.requests(), 10, "every request reached the route's upstream");
}

#[tokio::test]
async fn a_dead_mirror_changes_no_status() {
    let live = EchoUpstream::start("live").await;
    let dead = EchoUpstream::start("dead").await.stop().await;
    let gateway = start_gateway(&config(live.addr(), dead, &[("orders", "timeout: 5s")]));
    let client = TestClient::default();
    for number in 0..10 {
        let method = if number % 2 == 0 { Method::GET } else { Method::POST };
        send(&client, &gateway, method, "/orders/item", "a body").await;
    }
    assert_eq!(live.requests(), 10);
    eventually_metric(&gateway, "gantry_mirror_requests_total{upstream=\"shadow\",outcome=\"failed\"} 10").await;
}

#[tokio::test]
async fn a_slow_mirror_adds_no_latency_and_copies_past_max_in_flight_are_dropped() {
    const MIRROR_DELAY: Duration = Duration::from_secs(3);
    let live = EchoUpstream::start("live").await;
    let shadow = EchoUpstream::start("shadow").await;
    shadow.set_delay(MIRROR_DELAY);
    let gateway = start_gateway(&config(live.addr(), shadow.addr(), &[("orders", "max_in_flight: 3, timeout: 10s")]));
    let client = TestClient::default();

    let started = Instant::now();
    for number in 0..10 {
        let method = if number % 2 == 0 { Method::GET } else { Method::POST };
        let sent = Instant::now();
        send(&client, &gateway, method, "/orders/item", "a body").await;
        // Waiting for the mirror would take 3 s per request.
        assert!(sent.elapsed() < Duration::from_secs(1), "request {number} took {:?}", sent.elapsed());
    }
    assert!(started.elapsed() < MIRROR_DELAY, "10 requests took {:?}", started.elapsed());
    assert_metric(&gateway, "gantry_mirror_requests_total{upstream=\"shadow\",outcome=\"dropped\"} 7").await;
    // The three copies in flight end after the mirror's delay.
    eventually_metric(&gateway, "gantry_mirror_requests_total{upstream=\"shadow\",outcome=\"answered\"} 3").await;
    assert_eq!(shadow.requests(), 3);
    assert_eq!(live.requests(), 10);
}

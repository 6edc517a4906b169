//! Upstream handling through the running gateway: load balancing, active and passive health,
//! timeouts, retries, TLS and mutual TLS towards the upstream, and the `Host` header modes.
//!
//! Every upstream here is a real server on port 0 that tags its answers with `x-upstream`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_testkit::certs::TestCa;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess, TlsEchoUpstream};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::support::{closed_address, start_gateway, with_listener};

/// A gateway routing every path to one upstream `up`, whose fields (`endpoints`, ...) are
/// given as YAML at the indentation of an upstream's keys.
fn gateway_with_upstream(fields: &str) -> GatewayProcess {
    start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: up\n{}routes:\n  - id: all\n    paths: [/*]\n    upstream: up\n",
        indent(fields, 4)
    )))
}

/// The same, with the admin API (for `/metrics`) on port 0.
fn gateway_with_admin_and_upstream(fields: &str) -> GatewayProcess {
    start_gateway(&crate::support::with_admin(
        "upstreams-admin-key",
        &format!(
            "upstreams:\n  - id: up\n{}routes:\n  - id: all\n    paths: [/*]\n    upstream: up\n",
            indent(fields, 4)
        ),
    ))
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|line| format!("{pad}{line}\n")).collect()
}

/// Which upstream answered: its `x-upstream` tag, or the status when the gateway answered itself.
fn answered_by(response: &TestResponse) -> String {
    match response.header("x-upstream") {
        Some(name) => name.to_owned(),
        None => format!("gateway {}", response.status.as_u16()),
    }
}

/// Sends `count` GETs one after the other and counts who answered.
async fn tally(client: &TestClient, url: &str, count: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        *seen.entry(answered_by(&client.get(url).await)).or_default() += 1;
    }
    seen
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(name, count)| ((*name).to_owned(), *count)).collect()
}

/// The problem `type` of a gateway-made error response.
fn problem_type(response: &TestResponse) -> String {
    assert_eq!(response.header("content-type"), Some("application/problem+json"), "{response:?}");
    response.json()["type"].as_str().expect("problem has a type").to_owned()
}

fn problem(code: &str) -> String {
    format!("https://gantry.dev/problems/{code}")
}

// ---------------------------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_three_endpoints() {
    let (a, b, c) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await, EchoUpstream::start("c").await);
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}, {}]\nload_balancer: round_robin\n",
        a.addr(),
        b.addr(),
        c.addr()
    ));
    let seen = tally(&TestClient::default(), &gateway.url("/rr"), 30).await;
    assert_eq!(seen, counts(&[("a", 10), ("b", 10), ("c", 10)]));
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights_exactly_over_whole_cycles() {
    let (a, b, c) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await, EchoUpstream::start("c").await);
    let gateway = gateway_with_upstream(&format!(
        "endpoints:\n  - {{address: {}, weight: 3}}\n  - {{address: {}, weight: 1}}\n  - {{address: {}, weight: 0}}\nload_balancer: weighted_round_robin\n",
        a.addr(),
        b.addr(),
        c.addr()
    ));
    let client = TestClient::default();
    // The schedule is one deterministic cycle of 4 (3 + 1), so 40 requests are 10 cycles.
    let seen = tally(&client, &gateway.url("/wrr"), 40).await;
    assert_eq!(seen, counts(&[("a", 30), ("b", 10)]), "weight 0 takes no traffic");
    assert_eq!(c.requests(), 0);
}

#[tokio::test]
async fn least_connections_prefers_the_idle_endpoint_while_the_other_serves_a_slow_request() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    let gateway =
        gateway_with_upstream(&format!("endpoints: [{}, {}]\nload_balancer: least_connections\n", a.addr(), b.addr()));
    let client = TestClient::default();
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), gateway.url("/delay/3000"));
        async move { client.get(&url).await }
    });
    let busy = eventually("the slow request reaches an endpoint", || async {
        match (a.requests(), b.requests()) {
            (1, 0) => Some("a"),
            (0, 1) => Some("b"),
            _ => None,
        }
    })
    .await;
    let idle = if busy == "a" { "b" } else { "a" };

    let while_busy = tally(&client, &gateway.url("/quick"), 10).await;
    assert_eq!(while_busy, counts(&[(idle, 10)]), "every quick request avoids the busy endpoint");

    let slow = slow.await.expect("slow request task");
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.header("x-upstream"), Some(busy));
    // Once both are idle, ties are broken at random, so both get traffic again.
    let after = tally(&client, &gateway.url("/quick"), 20).await;
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), ["a", "b"], "{after:?}");
}

#[tokio::test]
async fn least_connections_forgets_a_request_the_client_abandoned() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    let gateway =
        gateway_with_upstream(&format!("endpoints: [{}, {}]\nload_balancer: least_connections\n", a.addr(), b.addr()));
    let client = TestClient::default();
    // The client gives up long before the upstream would answer, closing its connection.
    let abandoned = tokio::time::timeout(Duration::from_millis(300), client.get(&gateway.url("/delay/60000"))).await;
    assert!(abandoned.is_err(), "the slow request cannot have been answered");
    assert_eq!(a.requests() + b.requests(), 1);
    // Were the abandoned request still counted in flight, every request would avoid its endpoint.
    let fresh = TestClient::default();
    let url = gateway.url("/quick");
    eventually("both endpoints serve again", || async {
        let seen = tally(&fresh, &url, 10).await;
        (seen.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ewma_sends_traffic_to_the_fast_endpoint_rather_than_the_slow_one() {
    let (slow, fast) = (EchoUpstream::start("slow").await, EchoUpstream::start("fast").await);
    slow.set_delay(Duration::from_millis(150));
    let gateway =
        gateway_with_upstream(&format!("endpoints: [{}, {}]\nload_balancer: ewma\n", slow.addr(), fast.addr()));
    let seen = tally(&TestClient::default(), &gateway.url("/ewma"), 30).await;
    // Each endpoint is tried once while it has no latency sample; after that the slow one
    // costs about 100 times more and loses every comparison.
    assert!(seen.get("slow").copied().unwrap_or(0) <= 2, "{seen:?}");
    assert!(seen.get("fast").copied().unwrap_or(0) >= 28, "{seen:?}");
    assert!(slow.requests() >= 1, "the slow endpoint was sampled at least once");
}

/// Sends 20 keys 4 times each through `send`; every key must stay on one endpoint and the
/// keys must spread over more than one.
async fn assert_keys_stick_and_spread<F, Fut>(send: F)
where
    F: Fn(usize, usize) -> Fut,
    Fut: Future<Output = (StatusCode, Option<String>)>,
{
    let mut owners = BTreeSet::new();
    for key in 0..20 {
        let mut seen = BTreeSet::new();
        for repeat in 0..4 {
            let (status, upstream) = send(key, repeat).await;
            assert_eq!(status, StatusCode::OK);
            seen.insert(upstream.expect("answered by an upstream"));
        }
        assert_eq!(seen.len(), 1, "key {key} moved between endpoints: {seen:?}");
        owners.extend(seen);
    }
    assert!(owners.len() >= 2, "20 keys all landed on {owners:?}");
}

async fn hashing_gateway(key: &str) -> (GatewayProcess, [EchoUpstream; 3]) {
    let upstreams = [EchoUpstream::start("a").await, EchoUpstream::start("b").await, EchoUpstream::start("c").await];
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}, {}]\nload_balancer: {{consistent_hash: {key}}}\n",
        upstreams[0].addr(),
        upstreams[1].addr(),
        upstreams[2].addr()
    ));
    (gateway, upstreams)
}

fn status_and_upstream(response: TestResponse) -> (StatusCode, Option<String>) {
    (response.status, response.header("x-upstream").map(str::to_owned))
}

#[tokio::test]
async fn consistent_hash_on_a_header_keeps_each_key_on_one_endpoint() {
    let (gateway, _upstreams) = hashing_gateway("{header: x-user}").await;
    let client = TestClient::default();
    let url = gateway.url("/profile");
    assert_keys_stick_and_spread(|key, repeat| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let (user, noise) = (format!("user-{key}"), format!("n{repeat}"));
            let headers = [("x-user", user.as_str()), ("x-noise", noise.as_str())];
            status_and_upstream(client.request(Method::GET, &url, &headers, Bytes::new()).await)
        }
    })
    .await;
}

#[tokio::test]
async fn consistent_hash_on_a_cookie_ignores_the_other_cookies() {
    let (gateway, _upstreams) = hashing_gateway("{cookie: session}").await;
    let client = TestClient::default();
    let url = gateway.url("/cart");
    assert_keys_stick_and_spread(|key, repeat| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let cookie = format!("theme=t{repeat}; session=s-{key}; lang=l{repeat}");
            let headers = [("cookie", cookie.as_str())];
            status_and_upstream(client.request(Method::GET, &url, &headers, Bytes::new()).await)
        }
    })
    .await;
}

#[tokio::test]
async fn consistent_hash_on_the_path_ignores_the_query() {
    let (gateway, _upstreams) = hashing_gateway("path").await;
    let client = TestClient::default();
    assert_keys_stick_and_spread(|key, repeat| {
        let (client, url) = (client.clone(), gateway.url(&format!("/items/{key}?page={repeat}")));
        async move { status_and_upstream(client.get(&url).await) }
    })
    .await;
}

/// `GET path` on a fresh connection made from `source` (any 127.0.0.0/8 address is local).
async fn get_from(source: Ipv4Addr, gateway: SocketAddr, path: &str) -> (StatusCode, Option<String>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind the source address");
    let stream = socket.connect(gateway).await.expect("connect to the gateway");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(path).header("host", "gantry.test").body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let upstream = response.headers().get("x-upstream").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = response.status();
    response.into_body().collect().await.expect("body");
    (status, upstream)
}

#[tokio::test]
async fn consistent_hash_on_the_client_ip_keeps_each_client_on_one_endpoint() {
    let (gateway, _upstreams) = hashing_gateway("client_ip").await;
    let address = gateway.addr(0);
    assert_keys_stick_and_spread(|key, _| async move {
        // A new connection (and source port) each time: only the IP is the key.
        get_from(Ipv4Addr::new(127, 0, 0, key as u8 + 1), address, "/whoami").await
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

fn logged(gateway: &GatewayProcess, text: &str) -> bool {
    gateway.logs().iter().any(|line| line.contains(text))
}

#[tokio::test]
async fn active_checks_take_a_stopped_endpoint_out_and_bring_it_back_once_restarted() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}]\nretries: {{attempts: 0}}\nhealth_check:\n  active: {{path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2}}\n",
        a.addr(),
        b.addr()
    ));
    let client = TestClient::default();
    let url = gateway.url("/work");
    assert_eq!(tally(&client, &url, 10).await, counts(&[("a", 5), ("b", 5)]));
    eventually("probes of /healthz reach the endpoints", || async { (a.requests() > 5).then_some(()) }).await;

    let address = a.stop().await;
    eventually("the stopped endpoint is marked unhealthy", || async {
        logged(&gateway, "endpoint failed its health checks").then_some(())
    })
    .await;
    // Retries are off, so a request sent to the stopped endpoint would fail with 502.
    assert_eq!(tally(&client, &url, 20).await, counts(&[("b", 20)]));

    let a = EchoUpstream::start_on("a", address).await;
    eventually("the restarted endpoint gets traffic again", || async {
        (client.get(&url).await.header("x-upstream") == Some("a")).then_some(())
    })
    .await;
    assert!(logged(&gateway, "endpoint healthy again"));
    assert!(a.requests() >= 1);
}

#[tokio::test]
async fn passive_checks_eject_an_endpoint_answering_503_for_the_ejection_time() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    a.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}]\nretries: {{attempts: 0}}\nhealth_check:\n  passive: {{max_failures: 3, ejection: 2s, failure_statuses: [503]}}\n",
        a.addr(),
        b.addr()
    ));
    let client = TestClient::default();
    let url = gateway.url("/orders");
    let mut failures = 0;
    for _ in 0..10 {
        let response = client.get(&url).await;
        if response.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.header("x-upstream"), Some("a"), "the upstream's own 503 is passed on");
            failures += 1;
        }
        if a.requests() == 3 {
            break;
        }
    }
    assert_eq!(failures, 3, "three consecutive 503s reach the client before the ejection");
    let ejected_at = Instant::now();

    let during = tally(&client, &url, 20).await;
    assert!(ejected_at.elapsed() < Duration::from_secs(2), "the check below must run inside the ejection");
    assert_eq!(during, counts(&[("b", 20)]));
    assert_eq!(a.requests(), 3, "an ejected endpoint receives nothing");

    a.set_status(None);
    eventually("the endpoint returns after its ejection", || async {
        (client.get(&url).await.header("x-upstream") == Some("a")).then_some(())
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(1900), "returned before the ejection ended");
}

#[tokio::test]
async fn passive_checks_eject_an_endpoint_that_refuses_connections() {
    let b = EchoUpstream::start("b").await;
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}]\nretries: {{attempts: 0}}\nhealth_check:\n  passive: {{max_failures: 2, ejection: 30s}}\n",
        closed_address(),
        b.addr()
    ));
    let client = TestClient::default();
    let url = gateway.url("/pay");
    // Round robin alternates, so the dead endpoint fails twice within the first four requests.
    let first = tally(&client, &url, 4).await;
    assert_eq!(first, counts(&[("b", 2), ("gateway 502", 2)]));
    assert_eq!(tally(&client, &url, 20).await, counts(&[("b", 20)]), "the dead endpoint is ejected");
    assert!(logged(&gateway, "endpoint ejected after consecutive failures"));
}

#[tokio::test]
async fn answers_503_no_available_endpoint_at_once_when_every_endpoint_is_down() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}]\nhealth_check:\n  active: {{path: /, interval: 100ms, timeout: 500ms, unhealthy_threshold: 1}}\n",
        a.addr(),
        b.addr()
    ));
    let client = TestClient::default();
    let url = gateway.url("/anything");
    assert_eq!(client.get(&url).await.status, StatusCode::OK);
    a.stop().await;
    b.stop().await;
    eventually("both endpoints are marked unhealthy", || async {
        (client.get(&url).await.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;

    let started = Instant::now();
    let response = client.get(&url).await;
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_type(&response), problem("no-available-endpoint"));
    assert!(response.json()["detail"].as_str().is_some_and(|detail| detail.contains("`up`")), "{response:?}");
}

/// Replaces the gateway's configuration file and asks for a reload.
fn reconfigure(gateway: &GatewayProcess, yaml: &str) {
    std::fs::write(gateway.config_path(), yaml).expect("rewrite the configuration");
    gateway.signal(nix::sys::signal::Signal::SIGHUP);
}

#[tokio::test]
async fn endpoint_health_survives_a_reload_that_leaves_the_upstream_alone() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    let upstream = format!(
        "upstreams:\n  - id: up\n    endpoints: [{}, {}]\n    retries: {{attempts: 0}}\n    health_check:\n      active: {{interval: 100ms, unhealthy_threshold: 3, healthy_threshold: 1}}\n",
        a.addr(),
        b.addr()
    );
    let route = "routes:\n  - id: all\n    paths: [/*]\n    upstream: up\n";
    let gateway = start_gateway(&with_listener(&format!("{upstream}{route}")));
    let client = TestClient::default();
    let url = gateway.url("/work");
    a.stop().await;
    eventually("the stopped endpoint is marked unhealthy", || async {
        logged(&gateway, "endpoint failed its health checks").then_some(())
    })
    .await;

    let added = "  - id: added\n    paths: [/added]\n    policies:\n      - mock_response: {body: added}\n";
    reconfigure(&gateway, &with_listener(&format!("{upstream}{route}{added}")));
    eventually("the reloaded configuration serves", || async {
        (client.get(&gateway.url("/added")).await.status == StatusCode::OK).then_some(())
    })
    .await;
    // Had the reload reset the verdict, the dead endpoint would take traffic (502, no retries)
    // until three more probes failed.
    assert_eq!(tally(&client, &url, 20).await, counts(&[("b", 20)]));
}

#[tokio::test]
async fn health_checks_use_the_new_tls_settings_after_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, other_ca) = (TestCa::new("upstream CA"), TestCa::new("unrelated CA"));
    let ca_file = ca.write_ca(dir.path(), "ca.pem");
    let other_ca_file = other_ca.write_ca(dir.path(), "other-ca.pem");
    let identity = ca.issue(dir.path(), "upstream", &["127.0.0.1"]);
    let upstream = TlsEchoUpstream::start("secure", &identity, None).await;
    let config = |ca: &std::path::Path| {
        with_listener(&format!(
            "upstreams:\n  - id: up\n    endpoints: [{}]\n    scheme: https\n    tls: {{ca_file: {}}}\n    health_check:\n      active: {{interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1}}\nroutes:\n  - id: all\n    paths: [/*]\n    upstream: up\n",
            upstream.addr(),
            ca.display()
        ))
    };
    let gateway = start_gateway(&config(&other_ca_file));
    let client = TestClient::default();
    let url = gateway.url("/");
    eventually("probes with the wrong CA mark the endpoint unhealthy", || async {
        (client.get(&url).await.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;

    reconfigure(&gateway, &config(&ca_file));
    let response = eventually("probes with the right CA bring the endpoint back", || async {
        Some(client.get(&url).await).filter(|response| response.status == StatusCode::OK)
    })
    .await;
    assert_eq!(response.header("x-upstream"), Some("secure"));
}

// ---------------------------------------------------------------------------------------------
// Timeouts and connection failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_closed_port_answers_502_upstream_connect_failed_naming_the_endpoint() {
    let dead = closed_address();
    let gateway = gateway_with_upstream(&format!("endpoints: [{dead}]\n"));
    let response = TestClient::default().get(&gateway.url("/x")).await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_type(&response), problem("upstream-connect-failed"));
    let detail = response.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains(&dead.to_string()), "{detail}");
}

#[tokio::test]
async fn a_tls_handshake_that_never_completes_counts_against_the_connect_timeout() {
    // Accepts connections and never says a word: TCP connects, TLS does not.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind silent server");
    let addr = silent.local_addr().expect("silent server address");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{addr}]\nscheme: https\ntimeouts: {{connect: 300ms, read: 10s}}\nretries: {{attempts: 0}}\n"
    ));
    let started = Instant::now();
    let response = TestClient::default().get(&gateway.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, StatusCode::BAD_GATEWAY, "{response:?}");
    assert_eq!(problem_type(&response), problem("upstream-connect-failed"));
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2), "took {elapsed:?}");
    holder.abort();
}

#[tokio::test]
async fn a_slow_upstream_answers_504_upstream_timeout_after_the_read_timeout() {
    let slow = EchoUpstream::start("slow").await;
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}]\ntimeouts: {{read: 200ms}}\nretries: {{attempts: 0}}\n",
        slow.addr()
    ));
    let client = TestClient::default();
    let started = Instant::now();
    let response = client.get(&gateway.url("/delay/2000")).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(problem_type(&response), problem("upstream-timeout"));
    assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1000), "took {elapsed:?}");
    // A response inside the limit passes.
    let quick = client.get(&gateway.url("/delay/20")).await;
    assert_eq!((quick.status, quick.header("x-upstream")), (StatusCode::OK, Some("slow")));
}

#[tokio::test]
async fn the_total_timeout_bounds_the_time_spent_across_retries() {
    let slow = EchoUpstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}]\ntimeouts: {{read: 500ms, total: 800ms}}\nretries: {{attempts: 5, backoff: 10ms}}\n",
        slow.addr()
    ));
    let started = Instant::now();
    let response = TestClient::default().get(&gateway.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(problem_type(&response), problem("upstream-timeout"));
    // Without `total`, six tries of 500 ms would take three seconds.
    assert!(elapsed >= Duration::from_millis(780) && elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(slow.requests(), 2, "the second try got only what was left of the total");
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

/// Two upstreams over the same endpoints, one with `retries` fields and one that never
/// retries; routes `/retry/*` and `/once/*`.
fn retry_gateway(endpoints: &str, retries: &str) -> GatewayProcess {
    start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: retrying\n    endpoints: [{endpoints}]\n    retries: {retries}\n  - id: once\n    endpoints: [{endpoints}]\n    retries: {{attempts: 0}}\nroutes:\n  - id: retry\n    paths: [/retry/*]\n    upstream: retrying\n  - id: once\n    paths: [/once/*]\n    upstream: once\n"
    )))
}

#[tokio::test]
async fn a_get_is_retried_on_the_other_endpoint_when_one_is_dead() {
    let b = EchoUpstream::start("b").await;
    let gateway = retry_gateway(&format!("{}, {}", closed_address(), b.addr()), "{attempts: 1}");
    let client = TestClient::default();
    assert_eq!(tally(&client, &gateway.url("/retry/get"), 10).await, counts(&[("b", 10)]));
    let without = tally(&client, &gateway.url("/once/get"), 10).await;
    assert_eq!(without, counts(&[("b", 5), ("gateway 502", 5)]), "without retries the dead endpoint shows");
}

async fn posts(client: &TestClient, url: &str, body: &'static str, count: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let response = client.request(Method::POST, url, &[("content-type", "text/plain")], body).await;
        if response.status == StatusCode::BAD_GATEWAY {
            assert_eq!(problem_type(&response), problem("upstream-connect-failed"));
        }
        *seen.entry(answered_by(&response)).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_post_is_not_retried_by_default() {
    let b = EchoUpstream::start("b").await;
    let gateway = retry_gateway(&format!("{}, {}", closed_address(), b.addr()), "{attempts: 2}");
    let client = TestClient::default();
    let url = gateway.url("/retry/orders");
    assert_eq!(posts(&client, &url, "{\"sku\": 1}", 4).await, counts(&[("b", 2), ("gateway 502", 2)]));
    assert_eq!(posts(&client, &url, "", 4).await, counts(&[("b", 2), ("gateway 502", 2)]), "not idempotent");
    // GET on the same upstream is retried, so the setup itself does retry.
    assert_eq!(tally(&client, &url, 4).await, counts(&[("b", 4)]));
}

#[tokio::test]
async fn retry_methods_post_allows_retrying_a_post_without_a_body_only() {
    let b = EchoUpstream::start("b").await;
    let gateway = retry_gateway(&format!("{}, {}", closed_address(), b.addr()), "{attempts: 1, methods: [POST]}");
    let client = TestClient::default();
    let url = gateway.url("/retry/jobs");
    assert_eq!(posts(&client, &url, "", 6).await, counts(&[("b", 6)]));
    // A body cannot be sent twice, whatever the methods say.
    assert_eq!(posts(&client, &url, "payload", 4).await, counts(&[("b", 2), ("gateway 502", 2)]));
}

#[tokio::test]
async fn a_503_is_retried_on_the_other_endpoint() {
    let (a, b) = (EchoUpstream::start("a").await, EchoUpstream::start("b").await);
    a.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let gateway = retry_gateway(&format!("{}, {}", a.addr(), b.addr()), "{attempts: 1, on_statuses: [503]}");
    let client = TestClient::default();
    assert_eq!(tally(&client, &gateway.url("/retry/x"), 10).await, counts(&[("b", 10)]));
    assert!(a.requests() >= 1, "some first tries went to the failing endpoint");
    let without = tally(&client, &gateway.url("/once/x"), 10).await;
    assert_eq!(without, counts(&[("a", 5), ("b", 5)]), "without retries the 503s reach the client");
}

#[tokio::test]
async fn retries_wait_for_the_backoff_between_tries() {
    let a = EchoUpstream::start("a").await;
    a.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    let gateway = retry_gateway(&a.addr().to_string(), "{attempts: 2, backoff: 300ms, max_backoff: 300ms}");
    let client = TestClient::default();

    let started = Instant::now();
    let response = client.get(&gateway.url("/retry/x")).await;
    let elapsed = started.elapsed();
    assert_eq!((response.status, response.header("x-upstream")), (StatusCode::SERVICE_UNAVAILABLE, Some("a")));
    assert_eq!(a.requests(), 3, "one try and two retries");
    // Each wait is 300 ms ± 50 % jitter.
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2), "took {elapsed:?}");

    let started = Instant::now();
    let response = client.get(&gateway.url("/once/x")).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.requests(), 4);
    assert!(started.elapsed() < Duration::from_millis(250), "no retry, no wait: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// TLS towards the upstream
// ---------------------------------------------------------------------------------------------

/// One HTTPS upstream per `(id, tls fields)`, all over `endpoint`, each routed at `/<id>`.
fn tls_gateway(endpoint: SocketAddr, upstreams: &[(&str, String)]) -> GatewayProcess {
    let mut yaml = String::from("upstreams:\n");
    for (id, tls) in upstreams {
        yaml.push_str(&format!(
            "  - id: {id}\n    endpoints: [{endpoint}]\n    scheme: https\n    retries: {{attempts: 0}}\n    tls: {tls}\n"
        ));
    }
    yaml.push_str("routes:\n");
    for (id, _) in upstreams {
        yaml.push_str(&format!("  - id: {id}\n    paths: [/{id}]\n    upstream: {id}\n"));
    }
    start_gateway(&with_listener(&yaml))
}

#[tokio::test]
async fn an_https_upstream_is_reached_only_when_its_certificate_verifies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, other_ca) = (TestCa::new("upstream CA"), TestCa::new("unrelated CA"));
    let ca_file = ca.write_ca(dir.path(), "ca.pem");
    let other_ca_file = other_ca.write_ca(dir.path(), "other-ca.pem");
    let identity = ca.issue(dir.path(), "upstream", &["127.0.0.1", "upstream.test"]);
    let upstream = TlsEchoUpstream::start("secure", &identity, None).await;
    let (ca_file, other_ca_file) = (ca_file.display(), other_ca_file.display());
    let gateway = tls_gateway(
        upstream.addr(),
        &[
            ("trusted", format!("{{ca_file: {ca_file}}}")),
            ("by-name", format!("{{ca_file: {ca_file}, server_name: upstream.test}}")),
            ("untrusted", format!("{{ca_file: {other_ca_file}}}")),
            ("public-roots", "{}".to_owned()),
            ("wrong-name", format!("{{ca_file: {ca_file}, server_name: elsewhere.test}}")),
        ],
    );
    let client = TestClient::default();
    for id in ["trusted", "by-name"] {
        let response = client.get(&gateway.url(&format!("/{id}"))).await;
        assert_eq!((response.status, response.header("x-upstream")), (StatusCode::OK, Some("secure")), "{id}");
    }
    for id in ["untrusted", "public-roots", "wrong-name"] {
        let response = client.get(&gateway.url(&format!("/{id}"))).await;
        assert_eq!(response.status, StatusCode::BAD_GATEWAY, "{id}: {response:?}");
        assert_eq!(problem_type(&response), problem("upstream-connect-failed"), "{id}");
    }
    assert_eq!(upstream.requests(), 2, "only the verified connections carried requests");
}

#[tokio::test]
async fn an_mtls_upstream_accepts_the_gateway_only_with_its_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca, rogue_ca) =
        (TestCa::new("server CA"), TestCa::new("client CA"), TestCa::new("rogue CA"));
    let ca_file = server_ca.write_ca(dir.path(), "server-ca.pem");
    let client_ca_file = client_ca.write_ca(dir.path(), "client-ca.pem");
    let identity = server_ca.issue(dir.path(), "upstream", &["127.0.0.1"]);
    let good = client_ca.issue(dir.path(), "gateway", &["gateway.test"]);
    let rogue = rogue_ca.issue(dir.path(), "rogue", &["gateway.test"]);
    let upstream = TlsEchoUpstream::start("mutual", &identity, Some(&client_ca_file)).await;
    let ca_file = ca_file.display();
    let gateway = tls_gateway(
        upstream.addr(),
        &[
            ("anonymous", format!("{{ca_file: {ca_file}}}")),
            (
                "rogue",
                format!(
                    "{{ca_file: {ca_file}, client_cert_file: {}, client_key_file: {}}}",
                    rogue.cert.display(),
                    rogue.key.display()
                ),
            ),
            (
                "identified",
                format!(
                    "{{ca_file: {ca_file}, client_cert_file: {}, client_key_file: {}}}",
                    good.cert.display(),
                    good.key.display()
                ),
            ),
        ],
    );
    let client = TestClient::default();
    for id in ["anonymous", "rogue"] {
        let response = client.get(&gateway.url(&format!("/{id}"))).await;
        assert_eq!(response.status, StatusCode::BAD_GATEWAY, "{id}: {response:?}");
        assert!(problem_type(&response).starts_with("https://gantry.dev/problems/upstream-"), "{id}");
    }
    assert!(upstream.refused_handshakes() >= 2, "the upstream refused both handshakes");
    assert_eq!(upstream.requests(), 0);

    let response = client.get(&gateway.url("/identified")).await;
    assert_eq!((response.status, response.header("x-upstream")), (StatusCode::OK, Some("mutual")));
    assert_eq!(upstream.requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// Host header
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn host_header_passes_the_clients_or_uses_the_endpoint_or_a_fixed_value() {
    let echo = EchoUpstream::start("echo").await;
    let addr = echo.addr();
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: pass\n    endpoints: [{addr}]\n  - id: endpoint\n    endpoints: [{addr}]\n    host_header: endpoint\n  - id: rewrite\n    endpoints: [{addr}]\n    host_header: {{rewrite: backend.internal}}\nroutes:\n  - id: pass\n    paths: [/pass]\n    upstream: pass\n  - id: endpoint\n    paths: [/endpoint]\n    upstream: endpoint\n  - id: rewrite\n    paths: [/rewrite]\n    upstream: rewrite\n"
    )));
    let client = TestClient::default();
    let host_seen = |path: &'static str| {
        let (client, url) = (client.clone(), gateway.url(path));
        async move {
            let response = client.request(Method::GET, &url, &[("host", "shop.example:8443")], Bytes::new()).await;
            assert_eq!(response.status, StatusCode::OK, "{path}");
            response.json()["headers"]["host"].as_str().expect("upstream saw a Host").to_owned()
        }
    };
    assert_eq!(host_seen("/pass").await, "shop.example:8443");
    assert_eq!(host_seen("/endpoint").await, addr.to_string());
    assert_eq!(host_seen("/rewrite").await, "backend.internal");
}

#[tokio::test]
async fn a_client_that_abandons_its_upload_does_not_count_against_the_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = EchoUpstream::start("only").await;
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}]\nretries: {{attempts: 0}}\nhealth_check:\n  passive: {{max_failures: 1, ejection: 30s}}\n",
        upstream.addr()
    ));
    for _ in 0..3 {
        // A chunked upload that stops mid-body: the client's fault, not the endpoint's.
        let mut stream = tokio::net::TcpStream::connect(gateway.addr(0)).await.expect("connect");
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains(" 502 "), "an aborted upload is not an upstream failure: {answer}");
    }
    let response = TestClient::default().get(&gateway.url("/after")).await;
    assert_eq!(response.status, StatusCode::OK, "the endpoint was not ejected: {:?}", response.body);
    assert!(!logged(&gateway, "endpoint ejected"), "no ejection is logged");
}

#[tokio::test]
async fn least_connections_counts_a_response_in_flight_until_its_body_ends() {
    use gantry_testkit::streaming::{channel_body, connect_http1, BodyEchoUpstream};

    // `streaming` relays the request body back as its response body, so an open upload keeps
    // a response streaming from it; `quick` answers at once and names itself.
    let streaming = BodyEchoUpstream::start().await;
    let quick = EchoUpstream::start("quick").await;
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}, {}]\nload_balancer: least_connections\nretries: {{attempts: 0}}\n",
        streaming.addr(),
        quick.addr()
    ));

    // Open uploads until one lands on `streaming`: its response head then arrives while the
    // body is still flowing. One landing on `quick` gets no head until the body ends: drop it.
    let mut held = None;
    for _ in 0..20 {
        let mut sender = connect_http1(gateway.addr(0)).await;
        let (chunks, body) = channel_body();
        let request = http::Request::post("/upload").header("host", "test").body(body).expect("request");
        let responding = tokio::spawn(async move { sender.send_request(request).await });
        chunks.send(Bytes::from_static(b"first chunk")).await.expect("send a chunk");
        match tokio::time::timeout(Duration::from_millis(300), responding).await {
            Ok(Ok(Ok(response))) if response.headers().get("x-upstream").is_none() => {
                held = Some((chunks, response));
                break;
            }
            _ => drop(chunks),
        }
    }
    let (chunks, mut streaming_response) = held.expect("an upload reached the streaming endpoint");
    let first = streaming_response.body_mut().frame().await.expect("a frame").expect("frame");
    assert_eq!(first.data_ref().map(|data| &data[..]), Some(&b"first chunk"[..]));

    // While that response streams, every new request must go to the idle endpoint.
    let client = TestClient::default();
    for _ in 0..10 {
        let response = client.get(&gateway.url("/quick")).await;
        assert_eq!(answered_by(&response), "quick", "the streaming endpoint still has a response in flight");
    }
    drop(chunks);
    drop(streaming_response);
}

// ---------------------------------------------------------------------------------------------
// Bulkheads and retry budgets
// ---------------------------------------------------------------------------------------------

/// Sends `count` GETs at once; their responses in the order they finished, each with the time
/// it took.
async fn concurrent_gets(client: &TestClient, url: &str, count: usize) -> Vec<(TestResponse, Duration)> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.spawn(async move {
            let started = Instant::now();
            let response = client.get(&url).await;
            (response, started.elapsed())
        });
    }
    let mut finished = Vec::new();
    while let Some(done) = tasks.join_next().await {
        finished.push(done.expect("request task"));
    }
    finished
}

#[tokio::test]
async fn a_bulkhead_lets_max_requests_through_queues_max_pending_and_refuses_the_rest_with_503() {
    let slow = EchoUpstream::start("slow").await;
    slow.set_delay(Duration::from_millis(1000));
    let gateway = gateway_with_admin_and_upstream(&format!(
        "endpoints: [{}]\nretries: {{attempts: 0}}\nlimits: {{max_requests: 2, max_pending: 1, pending_timeout: 10s}}\n",
        slow.addr()
    ));
    let client = TestClient::default();

    let finished = concurrent_gets(&client, &gateway.url("/x"), 5).await;
    let refused: Vec<_> = finished.iter().filter(|(response, _)| response.status != StatusCode::OK).collect();
    assert_eq!(refused.len(), 2, "2 in flight and 1 waiting are served: {finished:?}");
    for (response, took) in &refused {
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem_type(response), problem("upstream-overloaded"));
        assert!(*took < Duration::from_millis(800), "refused without waiting for a slot, took {took:?}");
    }
    assert_eq!(slow.requests(), 3, "the refused requests never reached the upstream");
    // The queued request got the first freed slot: it finished one upstream delay after the others.
    let slowest = finished.iter().map(|(_, took)| *took).max().expect("responses");
    assert!(slowest >= Duration::from_millis(2000), "the waiting request was served after a slot freed: {slowest:?}");

    // Every slot is free again once the responses have ended.
    let after = concurrent_gets(&client, &gateway.url("/x"), 3).await;
    assert!(after.iter().all(|(response, _)| response.status == StatusCode::OK), "{after:?}");
    crate::support::assert_metric(&gateway, "gantry_upstream_overloaded_total{upstream=\"up\"} 2").await;
}

#[tokio::test]
async fn a_request_waiting_longer_than_the_pending_timeout_gets_503_without_reaching_the_upstream() {
    let slow = EchoUpstream::start("slow").await;
    let gateway = gateway_with_upstream(&format!(
        "endpoints: [{}]\nretries: {{attempts: 0}}\nlimits: {{max_requests: 1, max_pending: 5, pending_timeout: 300ms}}\n",
        slow.addr()
    ));
    let client = TestClient::default();
    let holding = tokio::spawn({
        let (client, url) = (client.clone(), gateway.url("/delay/2000"));
        async move { client.get(&url).await }
    });
    eventually("the slow request holds the slot", || async { (slow.requests() == 1).then_some(()) }).await;

    let started = Instant::now();
    let response = client.get(&gateway.url("/x")).await;
    let waited = started.elapsed();
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_type(&response), problem("upstream-overloaded"));
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500), "waited {waited:?}");
    assert_eq!(slow.requests(), 1);
    assert_eq!(holding.await.expect("slow request task").status, StatusCode::OK);
}

#[tokio::test]
async fn a_spent_retry_budget_stops_retries_and_passes_the_failure_on() {
    let failing = EchoUpstream::start("failing").await;
    failing.set_status(Some(StatusCode::SERVICE_UNAVAILABLE));
    // No ratio and 0.3 retries a second: 3 retries in the 10-second window, whatever the traffic.
    let gateway = gateway_with_admin_and_upstream(&format!(
        "endpoints: [{}]\nretries: {{attempts: 3, backoff: 10ms, max_backoff: 10ms, budget: {{ratio: 0, min_per_second: 0.3}}}}\n",
        failing.addr()
    ));
    let client = TestClient::default();

    let first = client.get(&gateway.url("/x")).await;
    assert_eq!((first.status, first.header("x-upstream")), (StatusCode::SERVICE_UNAVAILABLE, Some("failing")));
    assert_eq!(failing.requests(), 4, "one try and three retries, the whole budget");
    for _ in 0..3 {
        let next = client.get(&gateway.url("/x")).await;
        assert_eq!((next.status, next.header("x-upstream")), (StatusCode::SERVICE_UNAVAILABLE, Some("failing")));
    }
    assert_eq!(failing.requests(), 7, "with the budget spent, each request is tried once");
    crate::support::assert_metric(&gateway, "gantry_upstream_retries_denied_total{upstream=\"up\"} 3").await;
}

/// The YAML blocks of `docs/upstreams.md`, so the guide cannot drift from what the gateway accepts.
#[test]
fn the_upstreams_guide_examples_are_valid_configurations() {
    let guide = include_str!("../../docs/upstreams.md");
    let blocks: Vec<&str> = guide.split("```yaml\n").skip(1).filter_map(|rest| rest.split("```").next()).collect();
    assert_eq!(blocks.len(), 2, "docs/upstreams.md has a retry budget and a limits example");
    let dir = tempfile::tempdir().expect("temp dir");
    for (index, block) in blocks.iter().enumerate() {
        let path = dir.path().join(format!("upstreams-{index}.yaml"));
        std::fs::write(&path, block).expect("write example");
        let output = std::process::Command::new(crate::support::gantry_binary())
            .arg("validate")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run gantry validate");
        assert!(
            output.status.success(),
            "example {index} of docs/upstreams.md is invalid:\n{block}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

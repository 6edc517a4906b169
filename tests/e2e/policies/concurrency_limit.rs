//! `concurrency_limit` through a running gateway. Requests are held in flight by a body-echo
//! upstream: it streams each request body back as the response body, so a request's response
//! head arrives at once and its response body lasts until the test ends the request body. The
//! tests decide exactly when a place frees, and show that a place is held until the response
//! body has ended (or the client has gone), not just until the response head; a WebSocket
//! holds its place until it closes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::streaming::{channel_body, BodyEchoUpstream, BodySender, ChannelBody};
use gantry_testkit::websocket::WebSocketEchoUpstream;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::harness::{get_from, LOOPBACK, OTHER_LOOPBACK};
use crate::support::{start_gateway, with_listener};

const ADMIN_KEY: &str = "e2e-admin-key-concurrency-limit-41c9";

/// Route `/held/*` to a body-echo upstream and `/delay/*` to an echo upstream, each with
/// `concurrency_limit` and the given settings; an admin API for `/metrics`.
fn config(body_echo: &BodyEchoUpstream, echo: &EchoUpstream, held: &str, delayed: &str) -> String {
    format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin:
    address: 127.0.0.1:0
    api_key: {ADMIN_KEY}
upstreams:
  - id: body-echo
    endpoints: [{body_echo}]
  - id: echo
    endpoints: [{echo}]
routes:
  - id: held
    paths: [/held/*]
    upstream: body-echo
    policies:
      - concurrency_limit: {held}
  - id: delayed
    paths: [/delay/*]
    upstream: echo
    policies:
      - concurrency_limit: {delayed}
",
        body_echo = body_echo.addr(),
        echo = echo.addr(),
    )
}

/// A request in flight: its response head and first echoed chunk have arrived, and its
/// response body goes on until [`HeldRequest::finish`], or until [`HeldRequest::disconnect`].
struct HeldRequest {
    sender: BodySender,
    body: Incoming,
    connection: JoinHandle<()>,
}

impl HeldRequest {
    /// Sends `POST path` from `from` with a streamed body, and waits for its response head and
    /// the echo of its first chunk.
    async fn open(from: IpAddr, gateway: SocketAddr, path: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind a loopback address");
        let stream = socket.connect(gateway).await.expect("connect to the gateway");
        let (mut client, connection) =
            hyper::client::conn::http1::handshake::<_, ChannelBody>(TokioIo::new(stream)).await.expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let (sender, body) = channel_body();
        let request = Request::post(path).header("host", gateway.to_string()).body(body).expect("request");
        let pending = client.send_request(request);
        sender.send(Bytes::from_static(b"first")).await.expect("first chunk accepted");
        let response = tokio::time::timeout(gantry_testkit::deadline(), pending)
            .await
            .expect("the response head arrives while the request body is open")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK, "the held request was admitted");
        let mut held = Self { sender, body: response.into_body(), connection };
        assert_eq!(held.next_chunk().await, "first");
        held
    }

    async fn next_chunk(&mut self) -> Bytes {
        loop {
            let frame = tokio::time::timeout(gantry_testkit::deadline(), self.body.frame())
                .await
                .expect("a chunk comes back")
                .expect("the response body goes on")
                .expect("the response body is intact");
            if let Ok(data) = frame.into_data() {
                return data;
            }
        }
    }

    /// Sends one more chunk and reads its echo: the response body is still streaming.
    async fn echo(&mut self, chunk: &'static [u8]) {
        self.sender.send(Bytes::from_static(chunk)).await.expect("chunk accepted");
        assert_eq!(self.next_chunk().await, chunk);
    }

    /// Ends the request body, so the echoed response body ends too, and reads it to its end.
    async fn finish(self) {
        drop(self.sender);
        let rest = tokio::time::timeout(gantry_testkit::deadline(), self.body.collect())
            .await
            .expect("the response body ends")
            .expect("the response body is intact");
        assert!(rest.to_bytes().is_empty());
        self.connection.abort();
    }

    /// Closes the connection in the middle of the exchange, as a client that goes away.
    fn disconnect(self) {
        self.connection.abort();
    }
}

/// Asserts a refusal by `concurrency_limit` with `status` and `Retry-After: retry_after`.
fn assert_refused(response: &TestResponse, status: StatusCode, retry_after: &str) {
    assert_eq!(response.status, status, "{:?}", response.body);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_eq!(response.header("retry-after"), Some(retry_after));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/concurrency-limit-exceeded");
    assert_eq!(problem["status"], status.as_u16());
}

async fn answers_total(gateway: &GatewayProcess, status: u16) -> String {
    let metrics = TestClient::default().get(&format!("http://{}/metrics", gateway.admin_addr())).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let prefix = format!("gantry_policy_answers_total{{policy=\"concurrency_limit\",status=\"{status}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix).map(str::to_owned)).unwrap_or_default()
}

/// Waits until the gateway admits a request on `path` from `from` again.
async fn until_admitted(gateway: SocketAddr, from: IpAddr, path: &str) {
    eventually("a freed place admits the next request", || async {
        (get_from(from, gateway, path).await.status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn queues_one_request_past_the_limit_refuses_the_next_and_serves_the_queued_one_when_a_place_frees() {
    let body_echo = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&config(
        &body_echo,
        &echo,
        "{max_in_flight: 2, max_queued: 1, queue_timeout: 30s}",
        "{max_in_flight: 1}",
    ));
    let addr = gateway.addr(0);
    let first = HeldRequest::open(LOOPBACK, addr, "/held/1").await;
    let _second = HeldRequest::open(LOOPBACK, addr, "/held/2").await;

    // Two more at once: whichever reaches the gateway first waits in the queue (its one
    // place), and the other is refused at once while both places stay taken.
    let mut extra =
        vec![tokio::spawn(get_from(LOOPBACK, addr, "/held/3")), tokio::spawn(get_from(LOOPBACK, addr, "/held/4"))];
    let refused_at = eventually("one of the two extra requests is refused", || {
        let finished: Vec<usize> = (0..extra.len()).filter(|&at| extra[at].is_finished()).collect();
        assert!(finished.len() < 2, "both extra requests finished while two were in flight with a queue of one");
        std::future::ready(finished.first().copied())
    })
    .await;
    let refused = extra.swap_remove(refused_at);
    let queued = extra.pop().expect("the other extra request");
    let refused = refused.await.expect("refused request task");
    assert_refused(&refused, StatusCode::SERVICE_UNAVAILABLE, "1");
    assert!(!queued.is_finished(), "the queued request waits while both places are taken");
    assert_eq!(answers_total(&gateway, 503).await, "1");

    first.finish().await;
    let served = tokio::time::timeout(gantry_testkit::deadline(), queued)
        .await
        .expect("the queued request is served once a place frees")
        .expect("queued request task");
    assert_eq!(served.status, StatusCode::OK, "{:?}", served.body);
}

#[tokio::test]
async fn holds_a_place_until_the_streamed_response_body_has_ended() {
    let body_echo = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&config(&body_echo, &echo, "{max_in_flight: 1}", "{max_in_flight: 1}"));
    let addr = gateway.addr(0);

    let mut streaming = HeldRequest::open(LOOPBACK, addr, "/held/stream").await;
    // The response head and part of the body have reached the client: the place is still taken.
    assert_refused(&get_from(LOOPBACK, addr, "/held/probe").await, StatusCode::SERVICE_UNAVAILABLE, "1");
    streaming.echo(b"second").await;
    assert_refused(&get_from(LOOPBACK, addr, "/held/probe").await, StatusCode::SERVICE_UNAVAILABLE, "1");

    streaming.finish().await;
    until_admitted(addr, LOOPBACK, "/held/probe").await;
    assert_eq!(answers_total(&gateway, 503).await, "2", "only the refusals while streaming were counted");
}

#[tokio::test]
async fn gives_the_place_back_when_the_client_goes_away_mid_response() {
    let body_echo = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&config(&body_echo, &echo, "{max_in_flight: 1}", "{max_in_flight: 1}"));
    let addr = gateway.addr(0);

    let gone = HeldRequest::open(LOOPBACK, addr, "/held/gone").await;
    assert_refused(&get_from(LOOPBACK, addr, "/held/probe").await, StatusCode::SERVICE_UNAVAILABLE, "1");
    gone.disconnect();
    until_admitted(addr, LOOPBACK, "/held/probe").await;
}

#[tokio::test]
async fn counts_each_client_address_on_its_own_with_an_ip_key() {
    let body_echo = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("echo").await;
    let gateway =
        start_gateway(&config(&body_echo, &echo, "{max_in_flight: 1, key: [ip], status: 429}", "{max_in_flight: 1}"));
    let addr = gateway.addr(0);

    let _held = HeldRequest::open(LOOPBACK, addr, "/held/mine").await;
    assert_refused(&get_from(LOOPBACK, addr, "/held/again").await, StatusCode::TOO_MANY_REQUESTS, "1");
    let other = get_from(OTHER_LOOPBACK, addr, "/held/other-client").await;
    assert_eq!(other.status, StatusCode::OK, "another client has a place of its own");
}

#[tokio::test]
async fn refuses_a_queued_request_once_the_queue_timeout_has_passed() {
    let body_echo = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&config(
        &body_echo,
        &echo,
        "{max_in_flight: 1}",
        "{max_in_flight: 1, max_queued: 1, queue_timeout: 300ms, status: 429, retry_after: 2s}",
    ));
    let addr = gateway.addr(0);

    // The upstream holds this one for a minute; the test ends long before.
    let slow = tokio::spawn(get_from(LOOPBACK, addr, "/delay/60000"));
    eventually("the slow request reaches the upstream", || async { (echo.requests() == 1).then_some(()) }).await;

    let started = Instant::now();
    let timed_out = get_from(LOOPBACK, addr, "/delay/0").await;
    assert!(started.elapsed() >= Duration::from_millis(300), "refused only after waiting in the queue");
    assert_refused(&timed_out, StatusCode::TOO_MANY_REQUESTS, "2");
    assert!(timed_out.json()["detail"].as_str().is_some_and(|detail| detail.contains("300ms")), "{:?}", timed_out.body);
    assert_eq!(echo.requests(), 1, "the refused request never reached the upstream");
    slow.abort();
}

#[tokio::test]
async fn holds_a_place_for_a_websocket_until_it_closes() {
    let websocket = WebSocketEchoUpstream::start().await;
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: ws\n    endpoints: [{}]\nroutes:\n  - id: ws\n    paths: [/ws/*]\n    upstream: ws\n    \
         policies:\n      - concurrency_limit: {{max_in_flight: 1}}\n",
        websocket.addr()
    )));
    let url = format!("ws://{}/ws/chat", gateway.addr(0));

    let (mut open, response) = tokio_tungstenite::connect_async(url.as_str()).await.expect("the first upgrade");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    open.send(Message::text("still here")).await.expect("send");
    let echoed = tokio::time::timeout(gantry_testkit::deadline(), open.next()).await.expect("an echo in time");
    assert_eq!(echoed.expect("open").expect("a message"), Message::text("still here"));

    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(WsError::Http(refused)) => assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE),
        other => panic!("a second WebSocket must be refused while the first is open: {other:?}"),
    }

    open.close(None).await.expect("close the first WebSocket");
    drop(open);
    eventually("the closed WebSocket gives its place back", || async {
        tokio_tungstenite::connect_async(url.as_str()).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn gives_each_credential_of_a_consumer_its_own_places_with_key_credential() {
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:
  - id: echo
    endpoints: [{echo}]
consumers:
  - id: alice
    credentials:
      key_auth:
        - {{key: alice-laptop-key-0001}}
        - {{key: alice-server-key-0002}}
routes:
  - id: delayed
    paths: [/delay/*]
    upstream: echo
    policies:
      - key_auth: {{}}
      - concurrency_limit: {{max_in_flight: 1, key: [credential]}}
",
        echo = echo.addr()
    )));
    let client = TestClient::default();
    let as_key = |key: &'static str, path: &str| {
        let client = client.clone();
        let url = gateway.url(path);
        async move { client.request(http::Method::GET, &url, &[("apikey", key)], "").await }
    };

    // The upstream holds the laptop key's request for a minute; the test ends long before.
    let slow = tokio::spawn(as_key("alice-laptop-key-0001", "/delay/60000"));
    eventually("the slow request reaches the upstream", || async { (echo.requests() == 1).then_some(()) }).await;

    assert_refused(&as_key("alice-laptop-key-0001", "/delay/0").await, StatusCode::SERVICE_UNAVAILABLE, "1");
    let other_key = as_key("alice-server-key-0002", "/delay/0").await;
    assert_eq!(other_key.status, StatusCode::OK, "her other key has a place of its own: {other_key:?}");
    assert_eq!(echo.requests(), 2);
    slow.abort();
}

//! Protocol handling of the data plane through the real binary: HTTP/1.1 keep-alive and body
//! streaming, hop-by-hop and forwarding headers, request ids, h2c from clients, and how
//! malformed or oversized requests are answered. TLS, WebSocket and gRPC have their own files.

use bytes::{Bytes, BytesMut};
use gantry_testkit::client::TestClient;
use gantry_testkit::h2c::H2cClient;
use gantry_testkit::streaming::{channel_body, connect_http1, BodyEchoUpstream, CONNECTION_NUMBER};
use gantry_testkit::streaming::{ChannelBody, HOP_BY_HOP_RESPONSE_HEADER};
use gantry_testkit::{raw, EchoUpstream, GatewayProcess};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};

use crate::support::{start_gateway, with_listener};

/// Routes `/json/*` to a JSON echo server and `/body/*` to a body-echo server.
fn two_upstreams(echo: &EchoUpstream, body_echo: &BodyEchoUpstream) -> String {
    format!(
        "upstreams:\n  - id: json\n    endpoints: [{}]\n  - id: body\n    endpoints: [{}]\n\
         routes:\n  - id: json\n    paths: [/json/*]\n    upstream: json\n\
         \x20 - id: body\n    paths: [/body/*]\n    upstream: body\n",
        echo.addr(),
        body_echo.addr()
    )
}

/// `len` bytes that are not a repeating pattern, so a lost, doubled or reordered chunk shows.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn request_to(gateway: &GatewayProcess, path: &str, body: ChannelBody) -> Request<ChannelBody> {
    Request::post(path).header(http::header::HOST, gateway.addr(0).to_string()).body(body).expect("valid request")
}

#[tokio::test]
async fn keeps_client_and_upstream_connections_alive_across_requests() {
    let upstream = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("json").await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    const ROUNDS: u8 = 10;
    // One client connection for every round: a gateway that closed it would fail the next send.
    let mut client = connect_http1(gateway.addr(0)).await;
    for round in 0..ROUNDS {
        client.ready().await.expect("the gateway keeps the client connection open");
        let (sender, body) = channel_body();
        let pending = client.send_request(request_to(&gateway, "/body/keep-alive", body));
        sender.send(Bytes::from(vec![round; 10])).await.expect("body accepted");
        drop(sender);
        let response = pending.await.expect("response on the same client connection");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key(CONNECTION_NUMBER));
        let echoed = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(echoed, Bytes::from(vec![round; 10]));
    }
    // The pool hands a connection back a moment after its response ends, and hyper's client
    // dials a new one when a request comes first; most rounds must still reuse one.
    let opened = upstream.connections();
    assert!(opened <= u64::from(ROUNDS / 2), "{opened} upstream connections for {ROUNDS} sequential requests");
}

#[tokio::test]
async fn streams_a_large_chunked_request_and_its_echo_without_buffering() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 64;
    let upstream = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("json").await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let payload = noise(CHUNK * CHUNKS, 7);

    let mut client = connect_http1(gateway.addr(0)).await;
    let (sender, body) = channel_body();
    let pending = client.send_request(request_to(&gateway, "/body/stream", body));
    sender.send(Bytes::copy_from_slice(&payload[..CHUNK])).await.expect("first chunk accepted");
    let response = tokio::time::timeout(gantry_testkit::deadline(), pending)
        .await
        .expect("the response head arrives while the request body is still open")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(http::header::CONTENT_LENGTH).is_none(), "the echo is streamed, not sized");
    let mut body = response.into_body();
    let mut received = BytesMut::new();
    let mut sender = Some(sender);
    for next in 1..=CHUNKS {
        // Each chunk must come back before the next one is sent: anything on the way that
        // buffered whole bodies would stall here instead.
        while received.len() < next * CHUNK {
            let frame = tokio::time::timeout(gantry_testkit::deadline(), body.frame())
                .await
                .unwrap_or_else(|_| panic!("chunk {next} did not come back while the request was open"))
                .expect("body frame")
                .expect("frame, not an error");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
        match next {
            CHUNKS => drop(sender.take()),
            _ => {
                let chunk = Bytes::copy_from_slice(&payload[next * CHUNK..(next + 1) * CHUNK]);
                sender.as_ref().expect("sender open until the last chunk").send(chunk).await.expect("chunk accepted");
            }
        }
    }
    let rest = body.collect().await.expect("end of body").to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(received.len(), payload.len());
    assert!(received[..] == payload[..], "the echoed body differs from what was sent");
}

#[tokio::test]
async fn passes_a_large_fixed_length_body_and_response_byte_exact() {
    let upstream = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("json").await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let payload = noise(3 * 1024 * 1024 + 17, 11);
    let response = TestClient::default().request(Method::PUT, &gateway.url("/body/upload"), &[], payload.clone()).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body.len(), payload.len());
    assert!(response.body[..] == payload[..], "the echoed body differs from what was sent");
}

#[tokio::test]
async fn removes_hop_by_hop_headers_in_both_directions() {
    let upstream = BodyEchoUpstream::start().await;
    let echo = EchoUpstream::start("json").await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let client = TestClient::default();

    let response = client
        .request(
            Method::GET,
            &gateway.url("/json/hops"),
            &[
                ("connection", "keep-alive, x-hop-secret"),
                ("connection", "x-second-hop"),
                ("x-hop-secret", "for the next hop only"),
                ("x-second-hop", "named in a second Connection line"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "kept"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let seen = &response.json()["headers"];
    assert_eq!(seen["x-end-to-end"], "kept");
    for dropped in ["x-hop-secret", "x-second-hop", "keep-alive", "proxy-connection"] {
        assert!(seen.get(dropped).is_none(), "{dropped} reached the upstream: {seen}");
    }
    assert!(seen.get("connection").is_none(), "the client's Connection header was forwarded: {seen}");

    let direct = client.request(Method::POST, &format!("http://{}/direct", upstream.addr()), &[], "ping").await;
    assert!(direct.header(HOP_BY_HOP_RESPONSE_HEADER).is_some(), "the upstream sends the hop-by-hop header");
    let response = client.request(Method::POST, &gateway.url("/body/hops"), &[], "ping").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "ping");
    assert!(response.header(CONNECTION_NUMBER).is_some(), "end-to-end response headers pass");
    assert!(
        response.header(HOP_BY_HOP_RESPONSE_HEADER).is_none(),
        "a response header the upstream named in Connection reached the client"
    );
}

#[tokio::test]
async fn sets_forwarding_headers_and_appends_to_earlier_proxies() {
    let echo = EchoUpstream::start("json").await;
    let upstream = BodyEchoUpstream::start().await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let client = TestClient::default();

    let response =
        client.request(Method::GET, &gateway.url("/json/who"), &[("host", "shop.example.test")], Bytes::new()).await;
    assert_eq!(response.status, StatusCode::OK);
    let seen = &response.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.test");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http;host=\"shop.example.test\"");
    assert_eq!(seen["host"], "shop.example.test", "the client's Host passes by default");

    let response = client
        .request(
            Method::GET,
            &gateway.url("/json/who"),
            &[("x-forwarded-for", "203.0.113.7"), ("forwarded", "for=203.0.113.7;proto=https")],
            Bytes::new(),
        )
        .await;
    let seen = &response.json()["headers"];
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    let forwarded = seen["forwarded"].as_str().expect("forwarded header");
    assert!(forwarded.starts_with("for=203.0.113.7;proto=https, for=127.0.0.1;proto=http"), "{forwarded}");
}

#[tokio::test]
async fn generates_a_request_id_and_propagates_a_sane_client_one() {
    let echo = EchoUpstream::start("json").await;
    let upstream = BodyEchoUpstream::start().await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let client = TestClient::default();

    let generated = client.get(&gateway.url("/json/id")).await;
    let id = generated.header("x-request-id").expect("a generated id is returned").to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(generated.json()["headers"]["x-request-id"], id.as_str());
    let another = client.get(&gateway.url("/json/id")).await;
    assert_ne!(another.header("x-request-id"), Some(id.as_str()), "each request gets its own id");

    let given = client
        .request(Method::GET, &gateway.url("/json/id"), &[("x-request-id", "client-trace-42")], Bytes::new())
        .await;
    assert_eq!(given.header("x-request-id"), Some("client-trace-42"));
    assert_eq!(given.json()["headers"]["x-request-id"], "client-trace-42");

    let unsafe_id = "a".repeat(200);
    let replaced = client
        .request(Method::GET, &gateway.url("/json/id"), &[("x-request-id", unsafe_id.as_str())], Bytes::new())
        .await;
    let new_id = replaced.header("x-request-id").expect("an id is returned").to_owned();
    assert_ne!(new_id, unsafe_id, "an over-long client id is replaced");
    assert_eq!(replaced.json()["headers"]["x-request-id"], new_id.as_str());
}

#[tokio::test]
async fn serves_http2_prior_knowledge_clients_over_cleartext() {
    let echo = EchoUpstream::start("json").await;
    let upstream = BodyEchoUpstream::start().await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let client = H2cClient::default();
    let authority = gateway.addr(0).to_string();

    let answer = client.get(&gateway.url("/json/h2?x=1")).await;
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(answer.response.status, StatusCode::OK);
    let seen = answer.response.json();
    assert_eq!(seen["version"], "HTTP/1.1", "the upstream is spoken to in its own protocol");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["headers"]["host"], authority.as_str(), "Host comes from the :authority of the h2 request");
    assert_eq!(seen["headers"]["x-forwarded-host"], authority.as_str());
    assert!(answer.response.header("x-request-id").is_some());

    let payload = noise(256 * 1024, 3);
    let request =
        Request::post(gateway.url("/body/h2")).body(Full::new(Bytes::from(payload.clone()))).expect("request");
    let answer = client.send(request).await.expect("h2c POST");
    assert_eq!(answer.response.status, StatusCode::OK);
    assert!(answer.response.body[..] == payload[..], "the body differs after an h2c round trip");

    let missing = client.get(&gateway.url("/nowhere")).await;
    assert_eq!(missing.response.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.response.header("content-type"), Some("application/problem+json"));
    assert_eq!(missing.response.json()["type"], "https://gantry.dev/problems/route-not-found");
}

#[tokio::test]
async fn answers_h2c_with_505_when_the_listener_disables_http2() {
    let echo = EchoUpstream::start("json").await;
    let gateway = start_gateway(&format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n      http2: false\n\
         upstreams:\n  - id: json\n    endpoints: [{}]\nroutes:\n  - id: json\n    paths: [/json/*]\n    upstream: json\n",
        echo.addr()
    ));
    let refused = H2cClient::default().get(&gateway.url("/json/h2")).await;
    assert_eq!(refused.response.status, StatusCode::HTTP_VERSION_NOT_SUPPORTED);
    assert_eq!(refused.response.json()["type"], "https://gantry.dev/problems/http-version-not-supported");
    assert_eq!(TestClient::default().get(&gateway.url("/json/h1")).await.status, StatusCode::OK);
    assert_eq!(echo.requests(), 1, "only the HTTP/1.1 request reached the upstream");
}

#[tokio::test]
async fn answers_garbage_with_400_and_keeps_serving() {
    let echo = EchoUpstream::start("json").await;
    let upstream = BodyEchoUpstream::start().await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /json/x HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET /json/x\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /json/x HTTP/1.1\r\nBad Header Name: 1\r\n\r\n",
        b"\x00\x01\x02\x03 not http at all \xff\xfe\r\n\r\n",
    ] {
        let answer = raw::exchange(gateway.addr(0), garbage).await;
        assert_eq!(raw::status_of(&answer), Some(400), "for {:?} got {answer:?}", String::from_utf8_lossy(garbage));
    }
    let answer =
        raw::exchange(gateway.addr(0), b"GET /json/raw HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw::status_of(&answer), Some(200), "{answer}");
    assert_eq!(TestClient::default().get(&gateway.url("/json/after")).await.status, StatusCode::OK);
    assert_eq!(echo.requests(), 2, "no garbage reached the upstream");
}

/// A gateway with small head limits, routing everything to `echo`.
fn limited_gateway(echo: &EchoUpstream, max_header_bytes: usize, max_headers: usize) -> GatewayProcess {
    start_gateway(&format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n  limits:\n    max_header_bytes: {max_header_bytes}\n    \
         max_headers: {max_headers}\nupstreams:\n  - id: json\n    endpoints: [{}]\n\
         routes:\n  - id: all\n    paths: [/*]\n    upstream: json\n",
        echo.addr()
    ))
}

fn head_with(headers: &[(String, String)]) -> Vec<u8> {
    let mut head = String::from("GET /limits HTTP/1.1\r\nHost: limits.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[tokio::test]
async fn rejects_a_request_head_over_max_header_bytes_with_431() {
    let echo = EchoUpstream::start("json").await;
    let gateway = limited_gateway(&echo, 16 * 1024, 100);

    let fits = head_with(&[("x-filler".to_owned(), "f".repeat(12 * 1024))]);
    let answer = raw::exchange(gateway.addr(0), &fits).await;
    assert_eq!(raw::status_of(&answer), Some(200), "a head under the limit is served");

    let too_big = head_with(&[("x-filler".to_owned(), "f".repeat(20 * 1024))]);
    let answer = raw::exchange(gateway.addr(0), &too_big).await;
    assert_eq!(raw::status_of(&answer), Some(431), "{answer}");
    assert_eq!(echo.requests(), 1, "the oversized request never reached the upstream");
    assert_eq!(TestClient::default().get(&gateway.url("/after")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn enforces_a_max_header_bytes_below_eight_kibibytes() {
    let echo = EchoUpstream::start("json").await;
    let gateway = limited_gateway(&echo, 2048, 100);

    let fits = head_with(&[("x-filler".to_owned(), "f".repeat(1024))]);
    assert_eq!(raw::status_of(&raw::exchange(gateway.addr(0), &fits).await), Some(200));

    let too_big = head_with(&[("x-filler".to_owned(), "f".repeat(4096))]);
    let answer = raw::exchange(gateway.addr(0), &too_big).await;
    assert_eq!(raw::status_of(&answer), Some(431), "{answer}");
    assert_eq!(echo.requests(), 1, "the oversized request never reached the upstream");
}

#[tokio::test]
async fn rejects_more_headers_than_max_headers_with_431() {
    let echo = EchoUpstream::start("json").await;
    let gateway = limited_gateway(&echo, 32 * 1024, 20);
    let headers = |count: usize| (0..count).map(|n| (format!("x-h{n}"), n.to_string())).collect::<Vec<_>>();

    // Host and Connection count too: 2 + 15 fits in 20.
    let answer = raw::exchange(gateway.addr(0), &head_with(&headers(15))).await;
    assert_eq!(raw::status_of(&answer), Some(200), "{answer}");

    let answer = raw::exchange(gateway.addr(0), &head_with(&headers(30))).await;
    assert_eq!(raw::status_of(&answer), Some(431), "{answer}");
    assert_eq!(echo.requests(), 1, "the request with too many headers never reached the upstream");
}

#[tokio::test]
async fn answers_an_unknown_route_with_a_404_problem_over_http1() {
    let echo = EchoUpstream::start("json").await;
    let upstream = BodyEchoUpstream::start().await;
    let gateway = start_gateway(&with_listener(&two_upstreams(&echo, &upstream)));
    let response = TestClient::default().request(Method::DELETE, &gateway.url("/elsewhere/x"), &[], "body").await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["type"], "https://gantry.dev/problems/route-not-found");
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("/elsewhere/x")), "{problem}");
    assert_eq!(echo.requests(), 0);
}

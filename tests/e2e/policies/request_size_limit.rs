//! `request_size_limit` through a running gateway: a declared oversized body is refused at
//! once without touching the upstream; a body without a declared length (chunked over
//! HTTP/1.1, DATA frames over HTTP/2) is counted as it streams, without being buffered, and
//! cut off past the limit with 413; smaller bodies reach the upstream intact.

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream};
use http::{Method, Request, StatusCode};

use super::harness::{send_from, ChannelBody, RecordingUpstream, LOOPBACK};
use crate::support::{start_gateway, with_listener};

/// A gateway with one route `/upload` limited to `limit` bytes in front of `upstream`.
fn limited_gateway(upstream: std::net::SocketAddr, limit: u64) -> gantry_testkit::GatewayProcess {
    start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: up\n    endpoints: [{upstream}]\nroutes:\n  - id: upload\n    paths: [/upload]\n    upstream: up\n    policies:\n      - request_size_limit: {{max_body_bytes: {limit}}}\n"
    )))
}

fn assert_too_large(response: &TestResponse, detail: &str) {
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", response.body);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-body-too-large");
    assert_eq!(problem["status"], 413);
    assert_eq!(problem["detail"], detail);
}

/// A chunked `POST /upload` whose body the test feeds through the returned sender.
fn chunked_upload(gateway: std::net::SocketAddr) -> (tokio::sync::mpsc::Sender<Bytes>, Request<ChannelBody>) {
    let (sender, body) = ChannelBody::new();
    let request = Request::post("/upload").header("host", gateway.to_string()).body(body).expect("request");
    (sender, request)
}

#[tokio::test]
async fn refuses_a_declared_oversized_body_with_413_before_reaching_the_upstream() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = limited_gateway(upstream.addr(), 1024);
    let client = TestClient::default();

    let refused = client.request(Method::POST, &gateway.url("/upload"), &[], vec![b'x'; 1025]).await;
    assert_too_large(&refused, "the request body is 1025 bytes; at most 1024 are accepted");
    assert_eq!(upstream.requests(), 0, "a refused body reached the upstream");

    let accepted = client.request(Method::POST, &gateway.url("/upload"), &[], vec![b'x'; 1024]).await;
    assert_eq!(accepted.status, StatusCode::OK);
    assert_eq!(accepted.json()["body_length"], 1024);
    assert_eq!(upstream.requests(), 1);
}

/// The refusal comes from the head alone: a client waiting for `100 Continue` never has to
/// send the body.
#[tokio::test]
async fn answers_413_without_waiting_for_a_body_the_client_holds_back() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = limited_gateway(upstream.addr(), 1024);

    let head = "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n";
    // Returns once the gateway closes the connection, which it does after refusing: the body
    // it never asked for is not coming.
    let answer = gantry_testkit::raw::exchange(gateway.addr(0), head.as_bytes()).await;
    assert_eq!(gantry_testkit::raw::status_of(&answer), Some(413), "{answer}");
    assert!(!answer.contains("100 Continue"), "the client was asked for a body that is refused anyway: {answer}");
    assert!(answer.contains("at most 1024 are accepted"), "{answer}");
    assert_eq!(upstream.requests(), 0);
}

/// Step by step: the first chunk fits and is streamed upstream; the second one passes the
/// limit, so the gateway aborts the upstream request and answers 413 while the client is
/// still sending.
#[tokio::test]
async fn cuts_off_a_chunked_body_past_the_limit_with_413_and_aborts_it_upstream() {
    let upstream = RecordingUpstream::start().await;
    let gateway = limited_gateway(upstream.addr(), 1000);
    let (chunks, request) = chunked_upload(gateway.addr(0));
    let response = tokio::spawn(send_from(LOOPBACK, gateway.addr(0), request));

    chunks.send(Bytes::from(vec![b'a'; 600])).await.expect("first chunk");
    eventually("the first chunk reaches the upstream", || async {
        (upstream.body_bytes_arrived() == 600).then_some(())
    })
    .await;
    chunks.send(Bytes::from(vec![b'b'; 600])).await.expect("second chunk");

    let response = tokio::time::timeout(gantry_testkit::deadline(), response)
        .await
        .expect("the gateway answers while the client is still sending")
        .expect("client task")
        .expect("a response");
    assert_too_large(&response, "request body exceeds 1000 bytes");
    drop(chunks);

    let received = eventually("the upstream sees the request end", || async {
        let received = upstream.received();
        (!received.is_empty()).then_some(received)
    })
    .await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(!received[0].body_complete, "the upstream must see the body aborted, not ended: {received:?}");
    assert_eq!(received[0].body_bytes, 600, "only the chunk within the limit may be passed on");
    assert_eq!(upstream.body_bytes_arrived(), 600);
}

/// The common case: a client sends its whole chunked body at once and then waits.
#[tokio::test]
async fn refuses_a_whole_chunked_body_over_the_limit_with_413() {
    let upstream = RecordingUpstream::start().await;
    let gateway = limited_gateway(upstream.addr(), 1000);
    let (chunks, request) = chunked_upload(gateway.addr(0));
    let response = tokio::spawn(send_from(LOOPBACK, gateway.addr(0), request));
    for _ in 0..4 {
        chunks.send(Bytes::from(vec![b'c'; 400])).await.expect("chunk");
    }
    drop(chunks);

    let response = tokio::time::timeout(gantry_testkit::deadline(), response)
        .await
        .expect("an answer in time")
        .expect("client task")
        .expect("a response");
    assert_too_large(&response, "request body exceeds 1000 bytes");
    assert!(upstream.body_bytes_arrived() <= 1000, "{} bytes reached the upstream", upstream.body_bytes_arrived());
    assert!(upstream.received().iter().all(|received| !received.body_complete), "{:?}", upstream.received());
}

#[tokio::test]
async fn passes_bodies_within_the_limit_intact_declared_or_chunked() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = limited_gateway(upstream.addr(), 1000);

    let declared: String = (0..1000).map(|index| char::from(b'a' + (index % 26) as u8)).collect();
    let response = TestClient::default().request(Method::POST, &gateway.url("/upload"), &[], declared.clone()).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["body"], declared.as_str());

    // Exactly at the limit, in three chunks.
    let (chunks, request) = chunked_upload(gateway.addr(0));
    let response = tokio::spawn(send_from(LOOPBACK, gateway.addr(0), request));
    let mut expected = String::new();
    for (part, size) in [("x", 400), ("y", 400), ("z", 200)] {
        chunks.send(Bytes::from(part.repeat(size))).await.expect("chunk");
        expected.push_str(&part.repeat(size));
    }
    drop(chunks);
    let response = response.await.expect("client task").expect("a response");
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let echoed = response.json();
    assert_eq!(echoed["headers"]["transfer-encoding"], "chunked", "the body must be streamed, not buffered: {echoed}");
    assert_eq!(echoed["body_length"], 1000);
    assert_eq!(echoed["body"], expected.as_str());
}

/// Uploads far over the limit, sent as fast as the client can while the gateway answers:
/// the client must read the 413, not have the connection reset under it while it writes.
/// Several rounds, since that reset depends on timing.
#[tokio::test]
async fn answers_413_to_a_large_upload_the_client_is_still_sending() {
    let upstream = RecordingUpstream::start().await;
    let gateway = limited_gateway(upstream.addr(), 1000);
    let addr = gateway.addr(0);
    for round in 0..5 {
        let declared = Request::post("/upload")
            .header("host", addr.to_string())
            .body(http_body_util::Full::new(Bytes::from(vec![b'd'; 4 << 20])))
            .expect("request");
        let response = send_from(LOOPBACK, addr, declared).await;
        let response = response.unwrap_or_else(|err| panic!("round {round}, declared length: no answer: {err}"));
        assert_too_large(&response, "the request body is 4194304 bytes; at most 1000 are accepted");

        let (chunks, chunked) = chunked_upload(addr);
        let feeder = tokio::spawn(async move {
            for _ in 0..64 {
                if chunks.send(Bytes::from(vec![b'c'; 64 << 10])).await.is_err() {
                    break;
                }
            }
        });
        let response = send_from(LOOPBACK, addr, chunked).await;
        feeder.abort();
        let response = response.unwrap_or_else(|err| panic!("round {round}, chunked: no answer: {err}"));
        assert_too_large(&response, "request body exceeds 1000 bytes");
    }
    assert!(upstream.body_bytes_arrived() <= 5 * 1000, "{} bytes reached the upstream", upstream.body_bytes_arrived());
}

/// Over HTTP/2 a body is a stream of DATA frames, often without a declared length (gRPC, a
/// page's streamed `fetch`): the gateway passes each frame on as it comes, and answers 413 on
/// the stream as soon as the count passes the limit, while the client is still sending.
#[tokio::test]
async fn cuts_off_an_http2_body_streamed_without_a_length_past_the_limit_with_413() {
    let upstream = RecordingUpstream::start().await;
    let gateway = limited_gateway(upstream.addr(), 1000);
    let stream = tokio::net::TcpStream::connect(gateway.addr(0)).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (chunks, body) = ChannelBody::new();
    let request = Request::post(gateway.url("/upload")).body(body).expect("request");
    let response = tokio::spawn(async move { sender.send_request(request).await });

    chunks.send(Bytes::from(vec![b'a'; 600])).await.expect("first frame");
    eventually("the first frame reaches the upstream", || async {
        (upstream.body_bytes_arrived() == 600).then_some(())
    })
    .await;
    chunks.send(Bytes::from(vec![b'b'; 600])).await.expect("second frame");

    let response = tokio::time::timeout(gantry_testkit::deadline(), response)
        .await
        .expect("the gateway answers while the client is still sending")
        .expect("client task")
        .expect("a response on the stream");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body).await.expect("the answer's body").to_bytes();
    assert_too_large(
        &TestResponse { status: parts.status, headers: parts.headers, body },
        "request body exceeds 1000 bytes",
    );
    drop(chunks);

    let received = eventually("the upstream sees the request end", || async {
        let received = upstream.received();
        (!received.is_empty()).then_some(received)
    })
    .await;
    assert!(!received[0].body_complete, "the upstream must see the body aborted, not ended: {received:?}");
    assert_eq!(received[0].body_bytes, 600, "only the frame within the limit may be passed on");
}

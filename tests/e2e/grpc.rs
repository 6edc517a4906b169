//! gRPC pass-through: a tonic client speaking h2c to the gateway, a tonic server behind an
//! `h2c` upstream. Messages, trailers and error statuses must arrive as the server sent them.

use gantry_testkit::grpc::{EchoRequest, GrpcEchoClient, GrpcEchoUpstream};
use gantry_testkit::GatewayProcess;
use tonic::Code;

use crate::support::{start_gateway, with_listener};

fn grpc_gateway(upstream: &GrpcEchoUpstream) -> GatewayProcess {
    start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: grpc\n    scheme: h2c\n    endpoints: [{}]\n\
         routes:\n  - id: echo\n    paths: [/gantry.test.Echo/*]\n    upstream: grpc\n",
        upstream.addr()
    )))
}

fn request(message: &str) -> EchoRequest {
    EchoRequest { message: message.to_owned(), ..EchoRequest::default() }
}

#[tokio::test]
async fn passes_a_unary_call_and_its_ok_trailers() {
    let upstream = GrpcEchoUpstream::start().await;
    let gateway = grpc_gateway(&upstream);
    let mut client = GrpcEchoClient::connect(gateway.addr(0)).await.expect("h2c channel to gantry");

    let response = client.unary(request("hello over gRPC")).await.expect("unary call");
    assert!(response.metadata().get("x-request-id").is_some(), "gateway response headers reach the client");
    let reply = response.into_inner();
    assert_eq!(reply.message, "hello over gRPC");
    assert_eq!(reply.forwarded_for, "127.0.0.1", "the upstream saw the gateway's forwarding metadata");

    let (replies, trailers) = client.unary_with_trailers(request("with trailers")).await.expect("unary call");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].message, "with trailers");
    let trailers = trailers.expect("the response ends with trailers");
    assert_eq!(trailers.get("grpc-status").and_then(|v| v.to_str().ok()), Some("0"));
}

#[tokio::test]
async fn passes_an_error_status_with_its_code_and_message() {
    let upstream = GrpcEchoUpstream::start().await;
    let gateway = grpc_gateway(&upstream);
    let mut client = GrpcEchoClient::connect(gateway.addr(0)).await.expect("h2c channel to gantry");

    let failing =
        EchoRequest { message: "no widget 42".to_owned(), fail_code: Code::NotFound as i32, ..Default::default() };
    let status = client.unary(failing).await.expect_err("the server fails the call");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no widget 42");

    let denied =
        EchoRequest { message: "not yours".to_owned(), fail_code: Code::PermissionDenied as i32, ..Default::default() };
    let status = client.unary(denied).await.expect_err("the server fails the call");
    assert_eq!(status.code(), Code::PermissionDenied);

    // The channel survives failed calls.
    assert_eq!(client.unary(request("still here")).await.expect("unary call").into_inner().message, "still here");
}

#[tokio::test]
async fn streams_server_replies_in_order_and_ends_with_ok_trailers() {
    let upstream = GrpcEchoUpstream::start().await;
    let gateway = grpc_gateway(&upstream);
    let mut client = GrpcEchoClient::connect(gateway.addr(0)).await.expect("h2c channel to gantry");

    let outcome = client
        .repeat(EchoRequest { message: "tick".to_owned(), repeat: 50, ..Default::default() })
        .await
        .expect("call");
    assert_eq!(outcome.replies.len(), 50);
    for (n, reply) in outcome.replies.iter().enumerate() {
        assert_eq!(reply.sequence as usize, n);
        assert_eq!(reply.message, "tick");
    }
    let trailers = outcome.end.expect("the stream ends well").expect("the stream ends with trailers");
    assert_eq!(trailers.get("grpc-status").and_then(|v| v.to_str().ok()), Some("0"));

    let outcome = client.repeat(EchoRequest { repeat: 0, ..request("none") }).await.expect("empty stream");
    assert!(outcome.replies.is_empty());
    assert!(outcome.end.is_ok());
}

#[tokio::test]
async fn passes_an_error_sent_in_trailers_after_streamed_replies() {
    let upstream = GrpcEchoUpstream::start().await;
    let gateway = grpc_gateway(&upstream);
    let mut client = GrpcEchoClient::connect(gateway.addr(0)).await.expect("h2c channel to gantry");

    let failing = EchoRequest { message: "ran dry".to_owned(), repeat: 3, fail_code: Code::Aborted as i32 };
    let outcome = client.repeat(failing).await.expect("the call starts");
    assert_eq!(outcome.replies.len(), 3, "the replies before the failure arrive");
    let status = outcome.end.expect_err("the stream ends with the server's error");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "ran dry");
}

#[tokio::test]
async fn answers_an_unrouted_method_with_grpc_status_unimplemented() {
    let upstream = GrpcEchoUpstream::start().await;
    // Only the unary method is routed; the streaming one is unknown to the gateway.
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: grpc\n    scheme: h2c\n    endpoints: [{}]\n\
         routes:\n  - id: unary\n    paths: [/gantry.test.Echo/Unary]\n    upstream: grpc\n",
        upstream.addr()
    )));
    let mut client = GrpcEchoClient::connect(gateway.addr(0)).await.expect("h2c channel to gantry");
    assert_eq!(client.unary(request("routed")).await.expect("routed call").into_inner().message, "routed");

    let status = client.repeat(EchoRequest { repeat: 3, ..request("unrouted") }).await.expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("no route matches POST /gantry.test.Echo/Repeat"), "{status:?}");
    assert!(status.metadata().get("x-request-id").is_some(), "{status:?}");
}

#[tokio::test]
async fn answers_with_grpc_status_unavailable_when_the_upstream_is_down() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let down = closed.local_addr().expect("addr");
    drop(closed);
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:\n  - id: grpc\n    scheme: h2c\n    endpoints: [{down}]\n\
         routes:\n  - id: echo\n    paths: [/gantry.test.Echo/*]\n    upstream: grpc\n"
    )));
    let mut client = GrpcEchoClient::connect(gateway.addr(0)).await.expect("h2c channel to gantry");
    let status = client.unary(request("anyone there?")).await.expect_err("the upstream is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&down.to_string()), "the message names the endpoint: {status:?}");
}

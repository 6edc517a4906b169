//! WebSocket pass-through: the upgrade handshake is forwarded, then bytes are tunnelled both
//! ways between the client and a real WebSocket upstream until either side closes.

use futures_util::{SinkExt, StreamExt};
use gantry_testkit::websocket::WebSocketEchoUpstream;
use gantry_testkit::EchoUpstream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{start_gateway, with_listener};

fn ws_routes(websocket: &WebSocketEchoUpstream, plain: &EchoUpstream) -> String {
    format!(
        "upstreams:\n  - id: ws\n    endpoints: [{}]\n  - id: plain\n    endpoints: [{}]\n\
         routes:\n  - id: ws\n    paths: [/ws/*]\n    upstream: ws\n\
         \x20 - id: plain\n    paths: [/plain/*]\n    upstream: plain\n",
        websocket.addr(),
        plain.addr()
    )
}

async fn next_message<S>(socket: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    tokio::time::timeout(gantry_testkit::deadline(), socket.next())
        .await
        .expect("a message within the deadline")
        .expect("the connection is open")
        .expect("a valid message")
}

#[tokio::test]
async fn tunnels_text_and_binary_messages_and_the_close_handshake() {
    let upstream = WebSocketEchoUpstream::start().await;
    let plain = EchoUpstream::start("plain").await;
    let gateway = start_gateway(&with_listener(&ws_routes(&upstream, &plain)));

    let url = format!("ws://{}/ws/echo?room=1", gateway.addr(0));
    let (mut socket, response) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade through gantry");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert!(response.headers().contains_key("x-request-id"), "the 101 carries the request id");

    socket.send(Message::text("hello through the gateway")).await.expect("send text");
    assert_eq!(next_message(&mut socket).await, Message::text("hello through the gateway"));

    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    socket.send(Message::binary(binary.clone())).await.expect("send binary");
    assert_eq!(next_message(&mut socket).await, Message::binary(binary));

    for n in 0..20 {
        socket.send(Message::text(format!("burst {n}"))).await.expect("send burst");
    }
    for n in 0..20 {
        assert_eq!(next_message(&mut socket).await, Message::text(format!("burst {n}")), "messages stay in order");
    }

    let close = CloseFrame { code: CloseCode::Normal, reason: "done".into() };
    socket.send(Message::Close(Some(close.clone()))).await.expect("send close");
    assert_eq!(next_message(&mut socket).await, Message::Close(Some(close)), "the upstream answers the close");
    let after = tokio::time::timeout(gantry_testkit::deadline(), socket.next()).await.expect("the stream ends");
    assert!(after.is_none(), "nothing follows the close handshake: {after:?}");

    let handshakes = upstream.handshakes();
    assert_eq!(handshakes.len(), 1);
    assert_eq!(handshakes[0].path, "/ws/echo");
    assert_eq!(handshakes[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(handshakes[0].headers["upgrade"], "websocket");
}

#[tokio::test]
async fn keeps_several_websockets_apart() {
    let upstream = WebSocketEchoUpstream::start().await;
    let plain = EchoUpstream::start("plain").await;
    let gateway = start_gateway(&with_listener(&ws_routes(&upstream, &plain)));
    let url = format!("ws://{}/ws/many", gateway.addr(0));

    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade").0);
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        socket.send(Message::text(format!("socket {n}"))).await.expect("send");
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        assert_eq!(next_message(socket).await, Message::text(format!("socket {n}")));
    }
    assert_eq!(upstream.handshakes().len(), 3);
}

#[tokio::test]
async fn fails_the_upgrade_when_the_upstream_does_not_switch_protocols() {
    let upstream = WebSocketEchoUpstream::start().await;
    let plain = EchoUpstream::start("plain").await;
    let gateway = start_gateway(&with_listener(&ws_routes(&upstream, &plain)));

    let url = format!("ws://{}/plain/not-a-websocket", gateway.addr(0));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), http::StatusCode::OK),
        other => panic!("expected the upstream's plain answer to fail the upgrade, got {other:?}"),
    }
    assert_eq!(plain.requests(), 1, "the handshake reached the plain upstream");
    assert!(upstream.handshakes().is_empty());
}

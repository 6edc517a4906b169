//! A real WebSocket upstream for tests (tokio-tungstenite): it completes the upgrade
//! handshake, sends every text or binary message back unchanged, and answers a close with a
//! close. It records the handshake requests it saw, so a test can check what a proxy passed on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// What the upstream saw of one upgrade request.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
}

/// The WebSocket echo server on 127.0.0.1:0; stopped on drop, open connections included.
pub struct WebSocketEchoUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    task: JoinHandle<()>,
}

impl WebSocketEchoUpstream {
    /// Starts the server.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind WebSocket upstream");
        let addr = listener.local_addr().expect("local addr");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let task = tokio::spawn(async move {
            let mut open = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let seen = seen.clone();
                open.spawn(async move {
                    // The error type is tungstenite's `Callback` contract, not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let record = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                        let handshake =
                            Handshake { path: request.uri().path().to_owned(), headers: request.headers().clone() };
                        seen.lock().expect("handshakes lock").push(handshake);
                        Ok(response)
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await else { return };
                    while let Some(Ok(message)) = socket.next().await {
                        // tungstenite answers pings and closes by itself; data goes back as is.
                        if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, handshakes, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every completed upgrade request so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }
}

impl Drop for WebSocketEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

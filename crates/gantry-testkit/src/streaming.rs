//! An upstream that streams each request body straight back as the response body, frame by
//! frame as it arrives, so a test can prove a proxy streams both ways instead of buffering:
//! the client only sends the next chunk after the previous one came back.
//!
//! Each response also carries a hop-by-hop header named in `Connection` (which a proxy must
//! drop) and the number of the upstream connection that served it (to observe keep-alive).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::{HeaderValue, Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// Response header naming the upstream connection (1, 2, ...) that served the request.
pub const CONNECTION_NUMBER: &str = "x-upstream-connection";
/// Response header that the upstream lists in `Connection`, so a proxy must not pass it on.
pub const HOP_BY_HOP_RESPONSE_HEADER: &str = "x-upstream-hop";

/// The body-echo server; stopped on drop, open connections included.
pub struct BodyEchoUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl BodyEchoUpstream {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind body-echo upstream");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            // Owning the connection tasks here means aborting this task closes them too.
            let mut open = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let number = counter.fetch_add(1, Ordering::Relaxed) + 1;
                open.spawn(async move {
                    let service = service_fn(move |request| echo_body(request, number));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, connections, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for BodyEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_body(request: Request<Incoming>, connection: u64) -> Result<Response<Incoming>, Infallible> {
    // Answering with the request body itself makes hyper relay each frame as it arrives: the
    // response starts before the request body has ended.
    let mut response = Response::new(request.into_body());
    let headers = response.headers_mut();
    headers.insert(CONNECTION_NUMBER, HeaderValue::from(connection));
    headers.insert(HOP_BY_HOP_RESPONSE_HEADER, HeaderValue::from_static("must-not-reach-the-client"));
    headers.insert(http::header::CONNECTION, HeaderValue::from_static(HOP_BY_HOP_RESPONSE_HEADER));
    Ok(response)
}

/// A request body fed chunk by chunk from a [`BodySender`]; it ends when the sender is dropped.
pub type ChannelBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Feeds a [`ChannelBody`].
pub type BodySender = mpsc::Sender<Bytes>;

/// A streaming request body and the sender that feeds it.
pub fn channel_body() -> (BodySender, ChannelBody) {
    let (sender, receiver) = mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok(Frame::data(chunk)), receiver))
    });
    (sender, StreamBody::new(Box::pin(frames)))
}

/// Opens one HTTP/1.1 connection to `addr`, to send requests with streamed bodies over it.
pub async fn connect_http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<ChannelBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the gateway");
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

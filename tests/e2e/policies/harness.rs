//! Helpers the policy tests share: a client that connects from a chosen loopback address and
//! can stream a chunked body, an upstream that records exactly what reached it (every header
//! value, and how much of the body arrived before the stream ended or broke), bearer-token
//! requests, and checks of refusals and of the answers `/metrics` counts per policy.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::redis::RedisServer;
use gantry_testkit::GatewayProcess;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// The loopback address the tests connect from by default.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A second loopback address (all of 127.0.0.0/8 is local on Linux), to be a different client.
pub const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Sends `request` (origin-form URI plus a `Host` header) over a fresh HTTP/1.1 connection
/// to `gateway`, made from `from`, and reads the whole response.
pub async fn send_from<B>(from: IpAddr, gateway: SocketAddr, request: Request<B>) -> Result<TestResponse, String>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let socket = tokio::net::TcpSocket::new_v4().map_err(|err| err.to_string())?;
    socket.bind(SocketAddr::new(from, 0)).map_err(|err| format!("binding {from}: {err}"))?;
    let stream = socket.connect(gateway).await.map_err(|err| format!("connecting to {gateway}: {err}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|err| err.to_string())?;
    // The connection may end with an error once the response is read (the gateway closes a
    // connection whose request body it refused); the response is what the tests look at.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(|err| format!("{err:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|err| format!("reading the response body: {err}"))?.to_bytes();
    Ok(TestResponse { status: parts.status, headers: parts.headers, body })
}

/// `GET path` to `gateway` from `from`, with an empty body.
pub async fn get_from(from: IpAddr, gateway: SocketAddr, path: &str) -> TestResponse {
    let request =
        Request::get(path).header("host", gateway.to_string()).body(Full::new(Bytes::new())).expect("request");
    send_from(from, gateway, request).await.unwrap_or_else(|err| panic!("GET {path} from {from} failed: {err}"))
}

/// `GET path` on `gateway` with `Authorization: Bearer <token>`.
pub async fn get_with_bearer(client: &TestClient, gateway: &GatewayProcess, path: &str, token: &str) -> TestResponse {
    let authorization = format!("Bearer {token}");
    client.request(Method::GET, &gateway.url(path), &[("authorization", &authorization)], "").await
}

/// Asserts a 401 problem document of type `problem` with the challenge `challenge`.
pub fn assert_unauthorized(response: &TestResponse, challenge: &str, problem: &str) {
    assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{response:?}");
    assert_eq!(response.header("www-authenticate"), Some(challenge));
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_eq!(response.json()["type"], format!("https://gantry.dev/problems/{problem}"));
}

/// Asserts that `/metrics` counts `count` answers of `status` by `policy`
/// (`gantry_policy_answers_total`).
pub async fn assert_policy_answers(gateway: &GatewayProcess, policy: &str, status: u16, count: u64) {
    let line = format!("gantry_policy_answers_total{{policy=\"{policy}\",status=\"{status}\"}} {count}");
    crate::support::assert_metric(gateway, &line).await;
}

/// A request body fed chunk by chunk through a channel. It declares no length, so HTTP/1.1
/// sends it with chunked transfer encoding; it ends when the sender is dropped.
pub struct ChannelBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender feeding it.
    pub fn new() -> (mpsc::Sender<Bytes>, Self) {
        let (sender, chunks) = mpsc::channel(4);
        (sender, Self { chunks })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// What one request brought to a [`RecordingUpstream`].
#[derive(Clone, Debug)]
pub struct Received {
    /// The request method.
    pub method: String,
    /// The path and query.
    pub path_and_query: String,
    /// Every header line, name (lower case) and value, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body bytes that arrived.
    pub body_bytes: usize,
    /// Whether the body ended properly (false: the stream broke or was reset).
    pub body_complete: bool,
}

impl Received {
    /// Every value of header `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str()).collect()
    }
}

/// An HTTP/1.1 upstream that reads each request body to its end, records what arrived, then
/// answers `200` with the body length; stopped on drop, open connections included.
pub struct RecordingUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    arriving: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RecordingUpstream {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind recording upstream");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let arriving = Arc::new(AtomicUsize::new(0));
        let log = received.clone();
        let counter = arriving.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let log = log.clone();
                let counter = counter.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| record(request, log.clone(), counter.clone()));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, received, arriving, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Body bytes of every request so far, counted as they arrive (also before a body ends).
    pub fn body_bytes_arrived(&self) -> usize {
        self.arriving.load(Ordering::SeqCst)
    }

    /// What every request finished so far brought, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received lock").clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    request: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
    arriving: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = request.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let mut body_bytes = 0;
    let body_complete = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let length = frame.data_ref().map_or(0, Bytes::len);
                body_bytes += length;
                arriving.fetch_add(length, Ordering::SeqCst);
            }
            Some(Err(_)) => break false,
            None => break true,
        }
    };
    let method = parts.method.to_string();
    let path_and_query = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), ToString::to_string);
    log.lock().expect("received lock").push(Received { method, path_and_query, headers, body_bytes, body_complete });
    Ok(Response::new(Full::new(Bytes::from(format!("received {body_bytes} bytes")))))
}

/// Node settings for a limit's tests: a listener and the admin API on port 0 with
/// `admin_key`, and the Redis store on `redis` when given (short timeouts, so a stopped
/// server is noticed quickly).
pub fn node_settings(redis: Option<&RedisServer>, admin_key: &str) -> String {
    let stores = redis.map_or(String::new(), |redis| {
        format!("  stores:\n    redis: {{urls: ['{}'], timeout: 300ms, connect_timeout: 300ms}}\n", redis.url())
    });
    format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin:
    address: 127.0.0.1:0
    api_key: {admin_key}
{stores}"
    )
}

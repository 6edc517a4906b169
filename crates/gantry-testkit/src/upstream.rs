//! Real upstream servers for tests, on port 0.
//!
//! [`EchoUpstream`] answers every request with JSON describing it, tagged with its name, and
//! understands a few paths: `/status/<code>` answers that status, `/delay/<ms>` waits first.
//! A test can also make one server misbehave for every path ([`EchoUpstream::set_status`],
//! [`EchoUpstream::set_delay`]), stop it with its open connections ([`EchoUpstream::stop`]) and
//! start it again on the same port ([`EchoUpstream::start_on`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::{JoinHandle, JoinSet};

/// An HTTP/1.1 + h2c echo server; stopped on drop, open connections included.
pub struct EchoUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    behaviour: Arc<Behaviour>,
    task: JoinHandle<()>,
}

/// Misbehaviour applied to every request, whatever its path.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    /// Status answered instead of the path's; 0 for none.
    status: AtomicU16,
    /// Wait before answering, in milliseconds.
    delay_ms: AtomicU64,
}

impl EchoUpstream {
    /// Starts an echo server named `name` on 127.0.0.1:0.
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        Self::serve(listener, name).await
    }

    /// Starts an echo server named `name` on `addr`, typically the address of one stopped
    /// with [`Self::stop`]. Retries the bind until the test deadline, as the old socket may
    /// take a moment to close.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let until = Instant::now() + crate::deadline();
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener, name).await,
                Err(err) => {
                    assert!(Instant::now() < until, "cannot bind upstream {name} again on {addr}: {err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Serves on an already bound listener (to restart on a known port).
    pub async fn serve(listener: tokio::net::TcpListener, name: &str) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicU64::new(0));
        let behaviour = Arc::new(Behaviour::default());
        let name: Arc<str> = name.into();
        let counter = requests.clone();
        let shared = behaviour.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set so that aborting this task closes them too:
            // a stopped upstream must not keep answering on pooled keep-alive connections.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let name = name.clone();
                let counter = counter.clone();
                let behaviour = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        echo(request, name.clone(), behaviour.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, requests, behaviour, task }
    }

    /// Stops the server and closes its connections; returns its address for [`Self::start_on`].
    /// Unlike dropping, this waits until the port is closed.
    pub async fn stop(mut self) -> SocketAddr {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.addr
    }

    /// Answers every request with `status` (whatever the path), or behaves normally again with `None`.
    pub fn set_status(&self, status: Option<StatusCode>) {
        self.behaviour.status.store(status.map_or(0, |status| status.as_u16()), Ordering::Relaxed);
    }

    /// Waits `delay` before answering every request (on top of any `/delay/<ms>`).
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers `request` as the echo server named `name` does (shared with the TLS upstream).
pub(crate) async fn echo(
    request: Request<Incoming>,
    name: Arc<str>,
    behaviour: Arc<Behaviour>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let forced_delay = behaviour.delay_ms.load(Ordering::Relaxed);
    if forced_delay > 0 {
        tokio::time::sleep(Duration::from_millis(forced_delay)).await;
    }
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let forced_status = StatusCode::from_u16(behaviour.status.load(Ordering::Relaxed)).ok();
    let path_status = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok());
    let status = forced_status.or(path_status).unwrap_or(StatusCode::OK);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(key, value)| (key.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned().into()))
        .collect();
    let description = serde_json::json!({
        "upstream": &*name,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_length": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(description.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert("x-upstream", http::HeaderValue::from_str(&name).expect("upstream name is a header value"));
    Ok(response)
}

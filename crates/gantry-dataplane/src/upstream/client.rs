//! Pooled HTTP clients towards upstreams: hyper's HTTP/1.1 and HTTP/2 connections, kept per
//! endpoint; hyper-util's connector with rustls for TCP and TLS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gantry_config::UpstreamScheme;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::body::GatewayBody;

/// Everything that shapes an upstream's client; a reload that changes none of it keeps the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Protocol.
    pub scheme: UpstreamScheme,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// CA bundle (PEM); `None` for the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// SNI and verification name override.
    pub server_name: Option<String>,
}

/// Building a client failed (bad CA bundle or client key).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A PEM file could not be read or parsed.
    #[error("reading {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls rejected the settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    /// The SNI name is not a valid DNS name or IP.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
}

/// A pooled client; cheap to clone (the pools are shared).
///
/// HTTP/1.1 connections are kept per endpoint, most recently used first, and go back to their
/// pool when the response body has been read to its end: the body itself returns them, so no
/// task is spawned per request and no pool key is hashed per request (the forwarder keeps
/// each endpoint's [`EndpointPool`]). An HTTP/2 endpoint (h2c, or h2 chosen by ALPN) has one
/// shared connection that every request multiplexes over.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    /// What the pools were built from.
    settings: ClientSettings,
    connector: TimedConnector,
    /// Every endpoint's pool, for the probes and the sweeper.
    pools: Mutex<HashMap<Arc<str>, Arc<EndpointPool>>>,
    /// Whether the task that closes idle connections runs.
    sweeping: AtomicBool,
}

impl UpstreamClient {
    /// A client for `settings`.
    pub fn new(settings: &ClientSettings) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let tls = tls_config(settings)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let builder = match &settings.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|_| ClientError::ServerName(name.clone()))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = TimedConnector {
            inner: builder.enable_all_versions().wrap_connector(http),
            limit: settings.connect_timeout,
        };
        Ok(Self {
            inner: Arc::new(ClientInner {
                settings: settings.clone(),
                connector,
                pools: Mutex::new(HashMap::new()),
                sweeping: AtomicBool::new(false),
            }),
        })
    }

    /// True when both handles share one pool, and so the same settings (TLS, timeouts).
    pub fn shares_pool_with(&self, other: &UpstreamClient) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The settings the pool was built from.
    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// The pool of connections to `address` (`host:port`), made on first use.
    pub fn pool_for(&self, address: &Arc<str>) -> Result<Arc<EndpointPool>, SendError> {
        let mut pools = self.inner.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pool) = pools.get(address) {
            return Ok(pool.clone());
        }
        let authority = Authority::try_from(&**address).map_err(|err| SendError::Connect(Box::new(err)))?;
        let settings = &self.inner.settings;
        let pool = Arc::new(EndpointPool {
            authority,
            max_idle: settings.max_idle_per_endpoint,
            idle_timeout: settings.idle_timeout,
            connections: Mutex::new(Connections::default()),
            speaks_http2: AtomicBool::new(false),
            opening_http2: tokio::sync::Mutex::new(()),
        });
        pools.insert(address.clone(), pool.clone());
        drop(pools);
        self.start_sweeping();
        Ok(pool)
    }

    /// Sends `request` to the endpoint of `pool`. Its URI is the path and query only (the
    /// origin form HTTP/1.1 sends); for HTTP/2 the scheme and the endpoint's authority are
    /// added. A request that a kept-alive connection closed under before sending it is sent
    /// again on another one, as no byte of it reached the upstream.
    pub async fn send(
        &self,
        pool: &Arc<EndpointPool>,
        mut request: Request<GatewayBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        while let Some(connection) = pool.checkout() {
            match self.send_on(pool, connection, request).await {
                Ok(response) => return Ok(response),
                Err(Unsent::Request(unsent)) => request = *unsent,
                Err(Unsent::Failed(err)) => return Err(err),
            }
        }
        // Boxed: a new connection is the rare case, and its setup makes a large future.
        Box::pin(async {
            // Requests that find no connection to an HTTP/2 endpoint wait for the one opening
            // it and share its connection, instead of each opening one.
            let http2 = self.inner.settings.scheme == UpstreamScheme::H2c || pool.speaks_http2.load(Ordering::Relaxed);
            let opening = if http2 { Some(pool.opening_http2.lock().await) } else { None };
            let connection = match pool.checkout() {
                Some(opened) => opened,
                None => self.connect(pool).await?,
            };
            drop(opening);
            match self.send_on(pool, connection, request).await {
                Ok(response) => Ok(response),
                Err(Unsent::Request(_)) => Err(SendError::Exchange(None)),
                Err(Unsent::Failed(err)) => Err(err),
            }
        })
        .await
    }

    async fn send_on(
        &self,
        pool: &Arc<EndpointPool>,
        connection: Pooled,
        mut request: Request<GatewayBody>,
    ) -> Result<Response<UpstreamBody>, Unsent> {
        match connection {
            Pooled::Http2(mut sender) => {
                let path_and_query = request.uri().path_and_query().cloned();
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(self.scheme());
                uri.authority = Some(pool.authority.clone());
                uri.path_and_query = path_and_query;
                *request.uri_mut() =
                    Uri::from_parts(uri).map_err(|err| Unsent::Failed(SendError::Connect(Box::new(err))))?;
                match sender.try_send_request(request).await {
                    Ok(response) => Ok(response.map(|body| UpstreamBody { incoming: body, reusable: None })),
                    Err(mut err) => match err.take_message() {
                        // The connection was going away (GOAWAY, closed): it is shared no more,
                        // and the request goes out as it came, on another connection.
                        Some(mut unsent) => {
                            pool.unshare();
                            if let Some(path_and_query) = unsent.uri().path_and_query().cloned() {
                                *unsent.uri_mut() = Uri::from(path_and_query);
                            }
                            Err(Unsent::Request(Box::new(unsent)))
                        }
                        None => Err(Unsent::Failed(err.into_error().into())),
                    },
                }
            }
            Pooled::Http1(mut sender) => {
                if !sender.is_ready() && sender.ready().await.is_err() {
                    // Closed while idle: the request was not sent.
                    return Err(Unsent::Request(Box::new(request)));
                }
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        // An upgraded connection belongs to the tunnel from now on.
                        let reusable = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                            .then(|| Returning { sender, pool: pool.clone() });
                        Ok(response.map(|body| UpstreamBody { incoming: body, reusable }))
                    }
                    Err(mut err) => match err.take_message() {
                        Some(unsent) => Err(Unsent::Request(Box::new(unsent))),
                        None => Err(Unsent::Failed(err.into_error().into())),
                    },
                }
            }
        }
    }

    fn scheme(&self) -> Scheme {
        match self.inner.settings.scheme {
            UpstreamScheme::Https => Scheme::HTTPS,
            UpstreamScheme::Http | UpstreamScheme::H2c => Scheme::HTTP,
        }
    }

    /// Opens a connection to the pool's endpoint: HTTP/2 for h2c or when TLS chose h2, else
    /// HTTP/1.1. Its task runs until the upstream or the gateway closes it.
    async fn connect(&self, pool: &Arc<EndpointPool>) -> Result<Pooled, SendError> {
        let uri = Uri::builder()
            .scheme(self.scheme())
            .authority(pool.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|err| SendError::Connect(Box::new(err)))?;
        let stream = self.inner.connector.connect(uri).await.map_err(SendError::Connect)?;
        let http2 = self.inner.settings.scheme == UpstreamScheme::H2c || stream.connected().is_negotiated_h2();
        if http2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(stream)
                .await
                .map_err(|err| SendError::Connect(Box::new(err)))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "upstream HTTP/2 connection ended");
                }
            });
            pool.speaks_http2.store(true, Ordering::Relaxed);
            pool.share(sender.clone());
            Ok(Pooled::Http2(sender))
        } else {
            let (sender, connection) =
                http1::handshake(stream).await.map_err(|err| SendError::Connect(Box::new(err)))?;
            tokio::spawn(async move {
                if let Err(err) = connection.with_upgrades().await {
                    tracing::debug!(error = %err, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Pooled::Http1(sender))
        }
    }

    /// Starts the task that closes connections idle for longer than the idle timeout; it ends
    /// with the client. Without a runtime (a client built for validation only) there is
    /// nothing to sweep yet.
    fn start_sweeping(&self) {
        if self.inner.sweeping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.inner.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let client = Arc::downgrade(&self.inner);
        let period = self.inner.settings.idle_timeout.max(Duration::from_millis(100));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(client) = client.upgrade() else { return };
                let now = Instant::now();
                let mut pools = client.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A pool no endpoint refers to any more, with nothing kept, goes as well.
                pools.retain(|_, pool| pool.sweep(now) || Arc::strong_count(pool) > 1);
            }
        });
    }
}

/// The kept connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    authority: Authority,
    max_idle: usize,
    idle_timeout: Duration,
    connections: Mutex<Connections>,
    /// Set once a connection to the endpoint chose HTTP/2 (by ALPN or h2c).
    speaks_http2: AtomicBool,
    /// Held while a connection to an HTTP/2 endpoint is being opened.
    opening_http2: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Connections {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The HTTP/2 connection all requests share.
    shared: Option<http2::SendRequest<GatewayBody>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<GatewayBody>,
    since: Instant,
}

enum Pooled {
    Http1(http1::SendRequest<GatewayBody>),
    Http2(http2::SendRequest<GatewayBody>),
}

/// Why a try on one connection gave no response.
enum Unsent {
    /// The connection closed before the request was written: it can go on another.
    Request(Box<Request<GatewayBody>>),
    /// The exchange failed.
    Failed(SendError),
}

impl EndpointPool {
    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A kept connection, if one is open and has not idled past the timeout.
    fn checkout(&self) -> Option<Pooled> {
        let mut connections = self.connections();
        if let Some(shared) = &connections.shared {
            if !shared.is_closed() {
                return Some(Pooled::Http2(shared.clone()));
            }
            connections.shared = None;
        }
        let now = Instant::now();
        while let Some(idle) = connections.idle.pop() {
            if !idle.sender.is_closed() && now.saturating_duration_since(idle.since) < self.idle_timeout {
                return Some(Pooled::Http1(idle.sender));
            }
        }
        None
    }

    /// Keeps an HTTP/1.1 connection whose exchange ended, unless the pool is full.
    fn put(&self, sender: http1::SendRequest<GatewayBody>) {
        if sender.is_closed() {
            return;
        }
        let mut connections = self.connections();
        if connections.idle.len() < self.max_idle {
            connections.idle.push(Idle { sender, since: Instant::now() });
        }
    }

    fn share(&self, sender: http2::SendRequest<GatewayBody>) {
        self.connections().shared = Some(sender);
    }

    /// Stops sharing the HTTP/2 connection, which refused a request: the next request opens
    /// another. (Should a second connection have been shared meanwhile, it is let go too; the
    /// requests on it finish.)
    fn unshare(&self) {
        self.connections().shared = None;
    }

    /// Closes idle connections past the timeout; true when the pool still holds one.
    fn sweep(&self, now: Instant) -> bool {
        let mut connections = self.connections();
        let timeout = self.idle_timeout;
        connections.idle.retain(|idle| !idle.sender.is_closed() && now.saturating_duration_since(idle.since) < timeout);
        if connections.shared.as_ref().is_some_and(http2::SendRequest::is_closed) {
            connections.shared = None;
        }
        !connections.idle.is_empty() || connections.shared.is_some()
    }

    /// Idle HTTP/1.1 connections kept (for tests and status).
    pub fn idle_connections(&self) -> usize {
        self.connections().idle.len()
    }
}

/// An upstream response body. Once read to its end, it gives its HTTP/1.1 connection back to
/// the pool; dropped before that, the connection closes, as a half-read response cannot be
/// followed by another on it.
#[derive(Debug)]
pub struct UpstreamBody {
    incoming: Incoming,
    reusable: Option<Returning>,
}

#[derive(Debug)]
struct Returning {
    sender: http1::SendRequest<GatewayBody>,
    pool: Arc<EndpointPool>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(Returning { sender, pool }) = self.reusable.take() {
            pool.put(sender);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.reusable = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.incoming) {
            self.release();
        }
    }
}

/// Sending to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP, TLS or the HTTP/2 handshake).
    #[error("connecting failed")]
    Connect(#[source] BoxError),
    /// The exchange on a connection failed; `None` when a new connection closed before the
    /// request could be written.
    #[error("the exchange failed")]
    Exchange(#[source] Option<hyper::Error>),
}

impl From<hyper::Error> for SendError {
    fn from(err: hyper::Error) -> Self {
        SendError::Exchange(Some(err))
    }
}

impl SendError {
    /// True when no connection was made.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// The connector with `connect_timeout` over the whole connection setup. `HttpConnector`'s
/// own timeout covers TCP only, so a peer that accepts and then stalls the TLS handshake would
/// otherwise hold the request until the read timeout, as a 504 instead of a 502.
#[derive(Clone, Debug)]
struct TimedConnector {
    inner: HttpsConnector<HttpConnector>,
    limit: Duration,
}

/// Connection setup (TCP and TLS) took longer than the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("no connection within the connect timeout of {0:?}")]
struct ConnectTimeout(Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type UpstreamStream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl TimedConnector {
    async fn connect(&self, uri: Uri) -> Result<UpstreamStream, BoxError> {
        let connecting = tower_service::Service::call(&mut self.inner.clone(), uri);
        match tokio::time::timeout(self.limit, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(ConnectTimeout(self.limit).into()),
        }
    }
}

fn tls_config(settings: &ClientSettings) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let builder = match &settings.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|err| ClientError::Pem { path: path.clone(), reason: err.to_string() })?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots)
        }
    };
    let config = match &settings.client_identity {
        Some((cert_path, key_path)) => {
            let certs = read_certs(cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|err| ClientError::Pem { path: key_path.clone(), reason: err.to_string() })?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|err| ClientError::Pem { path: path.clone(), reason: err.to_string() })?
        .collect();
    let certs = certs.map_err(|err| ClientError::Pem { path: path.clone(), reason: err.to_string() })?;
    if certs.is_empty() {
        return Err(ClientError::Pem { path: path.clone(), reason: "no certificate in the file".to_owned() });
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    pub(crate) fn settings() -> ClientSettings {
        ClientSettings {
            scheme: UpstreamScheme::Http,
            connect_timeout: Duration::from_secs(2),
            max_idle_per_endpoint: 4,
            idle_timeout: Duration::from_secs(30),
            ca_file: None,
            client_identity: None,
            server_name: None,
        }
    }

    /// Two requests over one kept-alive connection, which goes back to the pool once each
    /// response body has been read to its end.
    #[tokio::test]
    async fn pooled_requests_reuse_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buffer = vec![0u8; 4096];
            let mut seen = Vec::new();
            let mut answered = 0;
            while answered < 2 {
                let read = socket.read(&mut buffer).await.expect("read");
                assert!(read > 0, "the client closed the connection after {answered} answers");
                seen.extend_from_slice(&buffer[..read]);
                while let Some(end) = seen.windows(4).position(|window| window == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    assert!(head.starts_with("GET /path?query HTTP/1.1\r\n"), "origin form: {head}");
                    seen.drain(..end + 4);
                    socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
                    answered += 1;
                }
            }
            // Kept open (the task's output) so that the connection stays poolable.
            socket
        });
        let client = UpstreamClient::new(&settings()).expect("client");
        let pool = client.pool_for(&Arc::from(address.to_string())).expect("pool");
        // The server answers on its first connection only: a second one would wait forever.
        let limit = Duration::from_secs(5);
        for _ in 0..2 {
            let request = http::Request::builder()
                .uri("/path?query")
                .header(http::header::HOST, address.to_string())
                .body(GatewayBody::Empty)
                .expect("request");
            let response = tokio::time::timeout(limit, client.send(&pool, request))
                .await
                .expect("answered on the kept-alive connection")
                .expect("response");
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(pool.idle_connections(), 0, "in use until its body ends");
            let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(pool.idle_connections(), 1, "back in the pool");
        }
        let _socket = tokio::time::timeout(limit, server).await.expect("server done").expect("server");
    }

    /// A response dropped before its body was read closes its connection: the next request
    /// opens another one.
    #[tokio::test]
    async fn a_half_read_response_does_not_return_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let mut connections = 0;
            while connections < 2 {
                let (mut socket, _) = listener.accept().await.expect("accept");
                connections += 1;
                let mut buffer = vec![0u8; 4096];
                let _ = socket.read(&mut buffer).await.expect("read");
                // Promises 10 bytes and sends 2: the body never ends.
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok").await.expect("write");
                tokio::spawn(async move {
                    let _ = socket.read(&mut buffer).await;
                });
            }
            connections
        });
        let client = UpstreamClient::new(&settings()).expect("client");
        let pool = client.pool_for(&Arc::from(address.to_string())).expect("pool");
        let limit = Duration::from_secs(5);
        for _ in 0..2 {
            let request = http::Request::builder().uri("/").body(GatewayBody::Empty).expect("request");
            let response = tokio::time::timeout(limit, client.send(&pool, request)).await.expect("head").expect("ok");
            drop(response);
            assert_eq!(pool.idle_connections(), 0);
        }
        let connections = tokio::time::timeout(limit, server).await.expect("server done").expect("server");
        assert_eq!(connections, 2);
    }

    /// Binds a loopback port and serves it with `server`, which counts into the returned
    /// counter the connections it accepts. Says the address and the counter.
    async fn start_counted<F>(
        server: fn(tokio::net::TcpListener, usize, Arc<std::sync::atomic::AtomicUsize>) -> F,
        per_connection: usize,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(server(listener, per_connection, accepted.clone()));
        (address, accepted)
    }

    /// Starts [`counting_server`]; says its address and its count of accepted connections.
    pub(crate) async fn start_counting_server(
        per_connection: usize,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        start_counted(counting_server, per_connection).await
    }

    /// Accepts connections and answers each request on them with `ok`; a connection closes
    /// after `per_connection` answers. Counts the connections it accepts in `accepted`.
    async fn counting_server(
        listener: tokio::net::TcpListener,
        per_connection: usize,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut seen = Vec::new();
                let mut answered = 0;
                while answered < per_connection {
                    let Ok(read) = socket.read(&mut buffer).await else { return };
                    if read == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..read]);
                    while let Some(end) = seen.windows(4).position(|window| window == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                }
                // Reads to the client's close (or drops the socket after its last answer).
                if per_connection == usize::MAX {
                    let _ = socket.read(&mut buffer).await;
                }
            });
        }
    }

    async fn get_ok(client: &UpstreamClient, pool: &Arc<EndpointPool>) {
        let request = http::Request::builder().uri("/").body(GatewayBody::Empty).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(5), client.send(pool, request))
            .await
            .expect("answered in time")
            .expect("response");
        let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    /// A kept connection the upstream closed while it was idle is not used again: the next
    /// request goes out on a new connection and succeeds.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let (address, accepted) = start_counting_server(1).await;
        let client = UpstreamClient::new(&settings()).expect("client");
        let pool = client.pool_for(&Arc::from(address.to_string())).expect("pool");
        for round in 1..=3 {
            get_ok(&client, &pool).await;
            // Lets the upstream's close reach the connection's task.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    /// Connections idle for longer than the idle timeout are closed by the sweeper.
    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (address, accepted) = start_counting_server(usize::MAX).await;
        let client = UpstreamClient::new(&ClientSettings { idle_timeout: Duration::from_millis(200), ..settings() })
            .expect("client");
        let pool = client.pool_for(&Arc::from(address.to_string())).expect("pool");
        get_ok(&client, &pool).await;
        get_ok(&client, &pool).await;
        assert_eq!((accepted.load(Ordering::SeqCst), pool.idle_connections()), (1, 1), "one kept connection");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(pool.idle_connections(), 0, "closed by the sweeper");
        get_ok(&client, &pool).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection after the idle timeout");
    }

    /// An h2c server answering `ok`; each connection says goodbye (GOAWAY) after
    /// `per_connection` requests.
    async fn h2c_server(
        listener: tokio::net::TcpListener,
        per_connection: usize,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let enough = Arc::new(tokio::sync::Notify::new());
                let enough_seen = enough.clone();
                let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                    if served.fetch_add(1, Ordering::SeqCst) + 1 == per_connection {
                        enough.notify_one();
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = enough_seen.notified() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    }

    /// h2c requests share one connection; once the upstream says goodbye on it, the next request
    /// goes out on a new one.
    #[tokio::test]
    async fn http2_requests_share_a_connection_until_the_upstream_closes_it() {
        let (address, accepted) = start_counted(h2c_server, 3).await;
        let client =
            UpstreamClient::new(&ClientSettings { scheme: UpstreamScheme::H2c, ..settings() }).expect("client");
        let pool = client.pool_for(&Arc::from(address.to_string())).expect("pool");
        let http2 = || {
            http::Request::builder().uri("/").version(http::Version::HTTP_2).body(GatewayBody::Empty).expect("request")
        };
        let send = |request| async {
            let response = tokio::time::timeout(Duration::from_secs(5), client.send(&pool, request))
                .await
                .expect("answered in time")
                .expect("response");
            assert_eq!(response.version(), http::Version::HTTP_2);
            let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
        };
        // Three at once on a new pool: one opens the connection, the others wait and share it;
        // the third request ends it.
        futures_util::join!(send(http2()), send(http2()), send(http2()));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one shared connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(http2()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection after the goodbye");
    }
}

//! Listeners: binding (SO_REUSEPORT, so several processes can share a port), accepting,
//! TLS termination, serving HTTP/1.1 and HTTP/2 on one port, and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gantry_policy_api::problem::problem_response;
use gantry_policy_api::ClientCertificate;
use http::{Request, Response, StatusCode, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::{ClientResponseBody, GatewayBody};
use crate::proxy::{into_gateway_response, Connection, Gateway};

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of one listener.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// TLS termination, if any.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept HTTP/2.
    pub http2: bool,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Time allowed for the request head.
    pub header_read_timeout: Duration,
}

/// Binds a listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`, so a new process can
/// bind while an old one drains, and several processes can share the port.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        // Dual-stack where the platform allows it; an IPv6-only socket still works.
        let _ = socket.set_only_v6(false);
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Running listeners, stoppable with a drain deadline.
#[derive(Debug)]
pub struct Server {
    addresses: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
}

impl Server {
    /// Starts accepting on every listener. Must run inside a Tokio runtime.
    pub fn start(listeners: Vec<(TcpListener, ListenerSettings)>, gateway: Gateway) -> io::Result<Self> {
        // Shared behind one pointer: each request then costs one reference count, not several.
        let gateway = Arc::new(gateway);
        let (stop, stopped) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut addresses = Vec::with_capacity(listeners.len());
        let mut accept_tasks = Vec::with_capacity(listeners.len());
        for (listener, settings) in listeners {
            addresses.push(listener.local_addr()?);
            let builder = Arc::new(http_builder(&settings));
            let task = tokio::spawn(accept_loop(
                listener,
                Arc::new(settings),
                builder,
                gateway.clone(),
                stopped.clone(),
                graceful.clone(),
            ));
            accept_tasks.push(task);
        }
        Ok(Self { addresses, stop, accept_tasks, graceful })
    }

    /// The bound addresses, in listener order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops accepting, then waits up to `deadline` for open connections to finish their
    /// requests. Returns true when everything drained in time.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        for task in self.accept_tasks {
            let _ = task.await;
        }
        match Arc::try_unwrap(self.graceful) {
            Ok(graceful) => tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok(),
            Err(_) => false,
        }
    }
}

fn http_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_headers(settings.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if settings.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<ListenerSettings>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    gateway: Arc<Gateway>,
    mut stopped: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let gateway = gateway.clone();
        let settings = settings.clone();
        let rules = HeadRules { http2: settings.http2, max_header_bytes: settings.max_header_bytes };
        tokio::spawn(async move {
            match &settings.tls {
                None => {
                    let connection = Connection::new(client, false);
                    serve_connection(stream, connection, &builder, rules, gateway, watcher).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let certificate = client_certificate(&tls, client);
                            let connection = Connection::new(client, true).with_client_certificate(certificate);
                            serve_connection(tls, connection, &builder, rules, gateway, watcher).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%client, error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// The leaf certificate the client presented, parsed once for the connection's requests.
/// rustls has verified it by now (the handshake fails otherwise); a certificate webpki accepts
/// but the parser cannot read is treated as absent, which `mtls_auth` refuses.
fn client_certificate(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
    client: SocketAddr,
) -> Option<Arc<ClientCertificate>> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    match ClientCertificate::from_der(bytes::Bytes::copy_from_slice(leaf.as_ref())) {
        Ok(certificate) => Some(Arc::new(certificate)),
        Err(err) => {
            tracing::debug!(%client, error = %err, "client certificate ignored");
            None
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    connection: Connection,
    builder: &auto::Builder<TokioExecutor>,
    rules: HeadRules,
    gateway: Arc<Gateway>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = connection.client;
    let connection = Arc::new(connection);
    let service = service_fn(move |request| {
        let gateway = gateway.clone();
        let connection = connection.clone();
        async move {
            if let Some(refusal) = rules.refusal(&request) {
                gateway.count_refusal(refusal.status());
                return Ok::<_, Infallible>(refusal.map(ClientResponseBody::uncounted));
            }
            Ok(gateway.handle(request, &connection).await)
        }
    });
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
    if let Err(err) = watcher.watch(serving).await {
        tracing::debug!(%client, error = %err, "connection ended with an error");
    }
}

/// Listener rules on the request head that hyper cannot enforce for us.
#[derive(Clone, Copy, Debug)]
struct HeadRules {
    /// HTTP/2 requests are served.
    http2: bool,
    /// Largest request head in bytes.
    max_header_bytes: usize,
}

impl HeadRules {
    /// The response refusing `request`, if it breaks a rule.
    fn refusal<B>(&self, request: &Request<B>) -> Option<Response<GatewayBody>> {
        // hyper-util's auto connection ignores `http1_only` once upgrades are enabled (as its
        // docs say), so HTTP/2 still arrives on a listener that disabled it; RFC 9110 §15.6.6
        // gives the status for a protocol version the server will not serve.
        if !self.http2 && request.version() == Version::HTTP_2 {
            let detail = "this listener serves HTTP/1.x only";
            let refusal = problem_response(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "http-version-not-supported",
                "HTTP Version Not Supported",
                Some(detail),
            );
            return Some(into_gateway_response(refusal));
        }
        // hyper's HTTP/1 buffer limit cannot go below 8 KiB, and the auto builder does not
        // expose hyper's exact head limit, so smaller limits are checked on the parsed head.
        let size = head_size(request);
        if size > self.max_header_bytes {
            let detail = format!("the request head is {size} bytes; the limit is {}", self.max_header_bytes);
            let refusal = problem_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request-head-too-large",
                "Request Header Fields Too Large",
                Some(&detail),
            );
            return Some(into_gateway_response(refusal));
        }
        None
    }
}

/// The size of the request head as HTTP/1.1 spells it: request line in origin form,
/// `name: value` lines and the blank line.
fn head_size<B>(request: &Request<B>) -> usize {
    const VERSION_AND_CRLF: usize = " HTTP/1.1\r\n".len();
    let target = request.uri().path_and_query().map_or(1, |target| target.as_str().len());
    let line = request.method().as_str().len() + 1 + target + VERSION_AND_CRLF;
    let fields: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    line + fields + 2
}

/// Accepts on `listener` only to hand connections to `handle` (used by the demo upstream).
pub async fn accept_plain(listener: TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    listener.accept().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, filler: usize) -> Request<()> {
        Request::get("/items?page=2")
            .version(version)
            .header("host", "api.test")
            .header("x-filler", "f".repeat(filler))
            .body(())
            .expect("valid request")
    }

    #[test]
    fn counts_the_head_as_http1_spells_it() {
        // "GET /items?page=2 HTTP/1.1\r\n" + "host: api.test\r\n" + "x-filler: ff\r\n" + "\r\n"
        assert_eq!(head_size(&request(Version::HTTP_11, 2)), 28 + 16 + 14 + 2);
    }

    #[test]
    fn refuses_a_head_over_the_limit_with_431() {
        let rules = HeadRules { http2: true, max_header_bytes: 2048 };
        assert!(rules.refusal(&request(Version::HTTP_11, 1024)).is_none());
        let refusal = rules.refusal(&request(Version::HTTP_11, 4096)).expect("over the limit");
        assert_eq!(refusal.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn refuses_http2_with_505_only_when_the_listener_disables_it() {
        let enabled = HeadRules { http2: true, max_header_bytes: 32 * 1024 };
        assert!(enabled.refusal(&request(Version::HTTP_2, 0)).is_none());
        let disabled = HeadRules { http2: false, max_header_bytes: 32 * 1024 };
        let refusal = disabled.refusal(&request(Version::HTTP_2, 0)).expect("HTTP/2 refused");
        assert_eq!(refusal.status(), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        assert!(disabled.refusal(&request(Version::HTTP_11, 0)).is_none());
    }
}

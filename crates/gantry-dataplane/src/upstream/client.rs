//! Pooled HTTP clients towards upstreams (hyper-util's keep-alive pool, rustls for TLS).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gantry_config::UpstreamScheme;
use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
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

/// A pooled client; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Client<TimedConnector, GatewayBody>,
    /// What the pool was built from; shared by clones, new for every client built, so it also
    /// tells whether two handles use one pool.
    settings: Arc<ClientSettings>,
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

        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_max_idle_per_host(settings.max_idle_per_endpoint)
            .pool_idle_timeout(settings.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false);
        if settings.scheme == UpstreamScheme::H2c {
            client.http2_only(true);
        }
        Ok(Self { inner: client.build(connector), settings: Arc::new(settings.clone()) })
    }

    /// True when both handles share one pool, and so the same settings (TLS, timeouts).
    pub fn shares_pool_with(&self, other: &UpstreamClient) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }

    /// The settings the pool was built from.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Sends a request; the URI must be absolute.
    pub fn request(&self, request: http::Request<GatewayBody>) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(request)
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

impl tower_service::Service<Uri> for TimedConnector {
    type Response = UpstreamStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map(UpstreamStream),
                Err(_) => Err(ConnectTimeout(limit).into()),
            }
        })
    }
}

/// A connection to an upstream endpoint, as the pool holds it. Its [`Connection`] facts leave
/// out the socket addresses hyper-util's TCP connector attaches: the pool would copy those
/// into the extensions of every response (an allocation and a hashed insertion per request),
/// and nothing reads them there.
#[derive(Debug)]
pub struct UpstreamStream(MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>);

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let transport = self.0.connected();
        let connected = Connected::new().proxy(transport.is_proxied());
        if transport.is_negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
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
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn settings() -> ClientSettings {
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

    /// Two requests over one kept-alive connection; the responses carry no connection facts.
    #[tokio::test]
    async fn pooled_requests_reuse_the_connection_and_carry_no_socket_addresses() {
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
                    seen.drain(..end + 4);
                    socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
                    answered += 1;
                }
            }
        });
        let client = UpstreamClient::new(&settings()).expect("client");
        // The server answers on its first connection only: a second one would wait forever.
        let limit = Duration::from_secs(5);
        for _ in 0..2 {
            let request = http::Request::builder()
                .uri(format!("http://{address}/"))
                .header(http::header::HOST, address.to_string())
                .body(GatewayBody::Empty)
                .expect("request");
            let response = tokio::time::timeout(limit, client.request(request))
                .await
                .expect("answered on the kept-alive connection")
                .expect("response");
            assert_eq!(response.status(), http::StatusCode::OK);
            assert!(
                response.extensions().get::<hyper_util::client::legacy::connect::HttpInfo>().is_none(),
                "no socket addresses are copied into responses"
            );
            let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        tokio::time::timeout(limit, server).await.expect("server done").expect("server");
    }
}

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
use hyper_util::client::legacy::connect::HttpConnector;
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
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
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
                Ok(connected) => connected,
                Err(_) => Err(ConnectTimeout(limit).into()),
            }
        })
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

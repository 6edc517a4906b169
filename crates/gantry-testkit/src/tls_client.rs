//! A TLS client for testing a gateway listener that terminates TLS: it connects with a chosen
//! SNI name and ALPN list, verifies the presented certificate against a test CA (names
//! included), and sends HTTP/1.1 or HTTP/2 requests over the connection it made.
//!
//! It sits on the client side of the request flow, in front of the listener's TLS handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::certs::CertFiles;
use crate::client::TestResponse;

/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Connects to TLS listeners trusting only one test CA.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

/// An established TLS connection and what the handshake settled.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
}

impl TlsClient {
    /// A client trusting the CA in `ca_pem` and offering `alpn` (in preference order).
    pub fn new(ca_pem: &str, alpn: &[&[u8]]) -> Self {
        Self::build(ca_pem, alpn, None)
    }

    /// Like [`Self::new`], presenting the client certificate `identity` when the server asks
    /// for one.
    pub fn with_client_certificate(ca_pem: &str, alpn: &[&[u8]], identity: &CertFiles) -> Self {
        Self::build(ca_pem, alpn, Some(identity))
    }

    fn build(ca_pem: &str, alpn: &[&[u8]], identity: Option<&CertFiles>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("the test CA is valid PEM")).expect("the test CA is a valid root");
        }
        // Explicit provider: the process may hold more than one, and rustls refuses to guess.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default TLS versions are supported")
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&identity.cert)
                    .expect("the client certificate file exists")
                    .collect::<Result<_, _>>()
                    .expect("the client certificate is valid PEM");
                let key = PrivateKeyDer::from_pem_file(&identity.key).expect("the client key is valid PEM");
                config.with_client_auth_cert(chain, key).expect("the client key matches its certificate")
            }
            None => config.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Self { connector: TlsConnector::from(Arc::new(config)) }
    }

    /// Connects to `addr` sending `server_name` as SNI. Fails when the handshake fails,
    /// including when the certificate does not cover `server_name`.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> std::io::Result<TlsConnection> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        let tcp = TcpStream::connect(addr).await?;
        let stream = self.connector.connect(name, tcp).await?;
        Ok(TlsConnection { stream })
    }
}

impl TlsConnection {
    /// The leaf certificate the server presented (DER).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let (_, session) = self.stream.get_ref();
        session.peer_certificates().and_then(|chain| chain.first()).map(|cert| cert.as_ref().to_vec())
    }

    /// The protocol agreed by ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        let (_, session) = self.stream.get_ref();
        session.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Sends `request` over this connection with HTTP/1.1 and reads the whole response.
    pub async fn send_http1(self, request: Request<Full<Bytes>>) -> Result<TestResponse, String> {
        send_http1(self.stream, request).await
    }

    /// Sends `request` over this connection with HTTP/2 and reads the whole response.
    pub async fn send_http2(self, request: Request<Full<Bytes>>) -> Result<TestResponse, String> {
        send_http2(self.stream, request).await
    }
}

/// The DER of the first certificate in a PEM file, to compare with [`TlsConnection::peer_certificate`].
pub fn certificate_der(pem_file: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_file).expect("the certificate file is valid PEM").as_ref().to_vec()
}

/// Sends one request with HTTP/1.1 over an established connection `io`.
pub async fn send_http1<S>(io: S, request: Request<Full<Bytes>>) -> Result<TestResponse, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|err| err.to_string())?;
    read_response(response).await
}

/// Sends one request with HTTP/2 over an established connection `io`.
pub async fn send_http2<S>(io: S, request: Request<Full<Bytes>>) -> Result<TestResponse, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|err| err.to_string())?;
    read_response(response).await
}

async fn read_response(response: http::Response<hyper::body::Incoming>) -> Result<TestResponse, String> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|err| err.to_string())?.to_bytes();
    Ok(TestResponse { status: parts.status, headers: parts.headers, body })
}

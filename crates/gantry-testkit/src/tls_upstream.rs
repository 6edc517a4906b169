//! A real HTTPS upstream for tests: the echo server of [`crate::upstream`] behind rustls,
//! optionally demanding a client certificate (mutual TLS).
//!
//! It offers `h2` and `http/1.1` by ALPN, as real HTTPS upstreams do, and counts handshakes
//! it refused, so a test can tell "the gateway was rejected" from "the gateway never came".

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::certs::CertFiles;
use crate::upstream::{echo, Behaviour};

/// An HTTPS echo server on 127.0.0.1:0; stopped on drop, open connections included.
pub struct TlsEchoUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    refused_handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsEchoUpstream {
    /// Starts an HTTPS echo server named `name` presenting `identity`. With `client_ca`, the
    /// handshake requires a client certificate signed by that CA (PEM file).
    pub async fn start(name: &str, identity: &CertFiles, client_ca: Option<&Path>) -> Self {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(identity, client_ca)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind TLS upstream");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicU64::new(0));
        let refused_handshakes = Arc::new(AtomicU64::new(0));
        let name: Arc<str> = name.into();
        let (counter, refused) = (requests.clone(), refused_handshakes.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, name, counter, refused) =
                    (acceptor.clone(), name.clone(), counter.clone(), refused.clone());
                connections.spawn(async move {
                    let stream = match acceptor.accept(stream).await {
                        Ok(stream) => stream,
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let behaviour = Arc::new(Behaviour::default());
                    let service = service_fn(move |request| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        echo(request, name.clone(), behaviour.clone())
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, requests, refused_handshakes, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed so far (wrong CA on the client side, missing client certificate).
    pub fn refused_handshakes(&self) -> u64 {
        self.refused_handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(identity: &CertFiles, client_ca: Option<&Path>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default TLS versions are supported");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca) {
                roots.add(cert).expect("client CA certificate is valid");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier builds");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&identity.key).expect("read upstream key");
    let mut config = builder.with_single_cert(read_certs(&identity.cert), key).expect("upstream certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("open PEM file")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse PEM certificates")
}

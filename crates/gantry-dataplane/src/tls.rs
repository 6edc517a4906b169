//! TLS termination: certificates loaded from PEM, chosen per connection by SNI, ALPN for h2,
//! and, when configured, client certificates verified against the listener's client CAs.

use std::path::Path;
use std::sync::Arc;

use gantry_config::{ClientCertificateMode, ClientCertificatesSpec, ListenerTlsSpec};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Loading certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("reading {path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls rejected the key or settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

fn pem_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), reason: reason.to_string() }
}

/// Picks the certificate whose names cover the client's SNI; the first one otherwise.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            self.keys.iter().find(|key| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        by_name.or_else(|| self.keys.first()).cloned()
    }
}

/// A server config for the listener settings `tls`, offering h2 (when `http2`) and HTTP/1.1
/// by ALPN, and asking for client certificates when `tls.client_certificates` says so.
pub fn server_config(tls: &ListenerTlsSpec, http2: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match &tls.client_certificates {
        Some(spec) => client_verifier(spec, provider.clone())?,
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut keys = Vec::with_capacity(tls.certificates.len());
    for certificate in &tls.certificates {
        let chain: Result<Vec<CertificateDer<'static>>, _> = CertificateDer::pem_file_iter(&certificate.cert_file)
            .map_err(|err| pem_error(&certificate.cert_file, err))?
            .collect();
        let chain = chain.map_err(|err| pem_error(&certificate.cert_file, err))?;
        if chain.is_empty() {
            return Err(pem_error(&certificate.cert_file, "no certificate in the file"));
        }
        let key =
            PrivateKeyDer::from_pem_file(&certificate.key_file).map_err(|err| pem_error(&certificate.key_file, err))?;
        let signing_key = provider.key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|err| pem_error(&certificate.key_file, format!("key does not match the certificate: {err}")))?;
        keys.push(Arc::new(certified));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// Verifies client certificates against the CAs of `spec` (RFC 5280 path validation by
/// webpki: signature chain, validity period, client-auth key usage).
fn client_verifier(
    spec: &ClientCertificatesSpec,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let (source, certificates): (&Path, Vec<_>) = match (&spec.ca_file, &spec.ca_pem) {
        (Some(file), _) => {
            let certificates: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_file_iter(file).map_err(|err| pem_error(file, err))?.collect();
            (file.as_path(), certificates.map_err(|err| pem_error(file, err))?)
        }
        (None, Some(pem)) => {
            let source = Path::new("client_certificates.ca_pem");
            let certificates: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
            (source, certificates.map_err(|err| pem_error(source, err))?)
        }
        // The configuration loader refuses client_certificates without a CA.
        (None, None) => return Err(pem_error(Path::new("client_certificates"), "no CA given")),
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|err| pem_error(source, err))?;
    }
    if roots.is_empty() {
        return Err(pem_error(source, "no CA certificate in it"));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match spec.mode {
        ClientCertificateMode::Required => builder,
        ClientCertificateMode::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|err| pem_error(source, err))
}

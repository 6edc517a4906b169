//! Certificates made at test time (never committed): a CA and leaf certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate in PEM.
    pub cert_pem: String,
}

/// PEM files of a leaf certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// Certificate chain (leaf).
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("self-signed ca");
        let cert_pem = cert.pem();
        Self { issuer: Issuer::new(params, key), cert_pem }
    }

    /// Writes the CA certificate to `dir/<file>` and returns the path.
    pub fn write_ca(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.cert_pem).expect("write ca");
        path
    }

    /// Issues a leaf certificate for `names` and writes `<stem>.pem` and `<stem>.key` in `dir`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        let files = CertFiles { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// Issues a client certificate (extended key usage `clientAuth`) with common name
    /// `common_name` and subject alternative names `names`: an entry with `@` is an e-mail
    /// address, one with `://` a URI, any other a DNS name. Writes `<stem>.pem` and
    /// `<stem>.key` in `dir`.
    pub fn issue_client(&self, dir: &Path, stem: &str, common_name: &str, names: &[&str]) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        for name in names {
            let name = (*name).to_owned();
            let san = if name.contains("://") {
                SanType::URI(name.try_into().expect("an ASCII URI"))
            } else if name.contains('@') {
                SanType::Rfc822Name(name.try_into().expect("an ASCII e-mail address"))
            } else {
                SanType::DnsName(name.try_into().expect("an ASCII DNS name"))
            };
            params.subject_alt_names.push(san);
        }
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed client certificate");
        let files = CertFiles { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
        std::fs::write(&files.cert, cert.pem()).expect("write client cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write client key");
        files
    }
}

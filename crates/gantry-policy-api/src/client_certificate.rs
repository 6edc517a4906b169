//! The client certificate a TLS listener verified, as policies see it.
//!
//! Parsed once per connection, right after the handshake, by the data plane; every request of
//! the connection then shares it through one `Arc` in its [`crate::Exchange`]. A connection
//! without a certificate carries `None` and pays nothing.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// A verified client certificate (the leaf of the chain the client presented).
#[derive(Debug)]
pub struct ClientCertificate {
    /// Subject DN as RFC 4514 writes it: last RDN first, special characters escaped
    /// (`CN=alice,OU=payments,O=Example`), like nginx's `$ssl_client_s_dn`.
    pub subject: String,
    /// The subject's (first) common name, if any.
    pub common_name: Option<String>,
    /// DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// E-mail addresses (`rfc822Name`) of the subject alternative name extension.
    pub emails: Vec<String>,
    /// URIs of the subject alternative name extension (SPIFFE ids, for instance).
    pub uris: Vec<String>,
    /// Serial number in lower-case hex, without separators.
    pub serial: String,
    /// SHA-256 of the DER encoding in lower-case hex, without separators.
    pub fingerprint_sha256: String,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// The DER encoding.
    pub der: Bytes,
    escaped_pem: OnceLock<String>,
}

/// A certificate the TLS layer accepted but the parser could not read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable client certificate: {0}")]
pub struct CertificateParseError(String);

impl ClientCertificate {
    /// Parses the DER encoding of a certificate.
    pub fn from_der(der: impl Into<Bytes>) -> Result<Self, CertificateParseError> {
        let der: Bytes = der.into();
        let (_, certificate) = X509Certificate::from_der(&der).map_err(|err| CertificateParseError(err.to_string()))?;
        let subject = certificate.subject();
        let common_name =
            subject.iter_common_name().next().and_then(|attribute| attribute.as_str().ok()).map(str::to_owned);
        let (mut dns_names, mut emails, mut uris) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(Some(names)) = certificate.subject_alternative_name() {
            for name in &names.value.general_names {
                match name {
                    GeneralName::DNSName(name) => dns_names.push((*name).to_owned()),
                    GeneralName::RFC822Name(email) => emails.push((*email).to_owned()),
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        let not_after = u64::try_from(certificate.validity().not_after.timestamp())
            .map_or(SystemTime::UNIX_EPOCH, |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        Ok(Self {
            subject: rfc4514(subject),
            common_name,
            dns_names,
            emails,
            uris,
            serial: hex(certificate.raw_serial()),
            fingerprint_sha256: hex(&Sha256::digest(&der)),
            not_after,
            escaped_pem: OnceLock::new(),
            der,
        })
    }

    /// The certificate in PEM, URL-escaped (nginx's `$ssl_client_escaped_cert`, the `Cert=`
    /// of Envoy's `x-forwarded-client-cert`): fit for a header value. Made on first use, once
    /// per connection.
    pub fn escaped_pem(&self) -> &str {
        self.escaped_pem.get_or_init(|| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&self.der);
            let mut pem = String::with_capacity(encoded.len() + encoded.len() / 64 + 64);
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in encoded.as_bytes().chunks(64) {
                // Base64 output is ASCII, so every chunk is valid UTF-8.
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
            // RFC 3986 unreserved characters stay; everything else is %-escaped.
            const ESCAPED: &percent_encoding::AsciiSet =
                &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
            percent_encoding::utf8_percent_encode(&pem, ESCAPED).to_string()
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// `name` as RFC 4514 writes a DN: RDNs in reverse order, separated by `,`; multi-valued RDNs
/// joined by `+`; the short names of RFC 4514 §3 for their types and dotted OIDs for others;
/// values escaped as §2.4 asks, or `#` and the hex of their encoding when not a string.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for rdn in rdns.into_iter().rev() {
        if !out.is_empty() {
            out.push(',');
        }
        for (index, attribute) in rdn.iter().enumerate() {
            if index > 0 {
                out.push('+');
            }
            let oid = attribute.attr_type().to_id_string();
            out.push_str(short_name(&oid).unwrap_or(&oid));
            out.push('=');
            match attribute.as_str() {
                Ok(value) => escape_value(value, &mut out),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex(attribute.as_slice()));
                }
            }
        }
    }
    out
}

/// The attribute type names RFC 4514 §3 lists.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (index, character) in value.chars().enumerate() {
        match character {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(character);
            }
            '#' | ' ' if index == 0 => {
                out.push('\\');
                out.push(character);
            }
            ' ' if index == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(character),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_values_as_rfc_4514_asks() {
        let escaped = |value: &str| {
            let mut out = String::new();
            escape_value(value, &mut out);
            out
        };
        assert_eq!(escaped("alice"), "alice");
        assert_eq!(escaped("Smith, John"), "Smith\\, John");
        assert_eq!(escaped("a+b=c"), "a\\+b=c");
        assert_eq!(escaped("#1 "), "\\#1\\ ");
        assert_eq!(escaped(" x"), "\\ x");
        assert_eq!(escaped("q\"<>;\\"), "q\\\"\\<\\>\\;\\\\");
    }

    #[test]
    fn reads_subject_names_serial_fingerprint_and_validity_of_a_certificate() {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SerialNumber};
        let mut params = CertificateParams::new(vec!["svc.internal".to_owned()]).expect("params");
        // Encoded root first, as CAs do: O, then CN; RFC 4514 writes them the other way round.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Example, Inc.");
        params.distinguished_name.push(DnType::CommonName, "payments");
        params.subject_alt_names.push(SanType::Rfc822Name("ops@example.org".try_into().expect("ia5")));
        params.subject_alt_names.push(SanType::URI("spiffe://example.org/payments".try_into().expect("ia5")));
        params.serial_number = Some(SerialNumber::from_slice(&[0x0a, 0xbc]));
        params.not_after = rcgen::date_time_ymd(2040, 1, 2);
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("certificate").der().to_vec();

        let certificate = ClientCertificate::from_der(der.clone()).expect("parses");
        assert_eq!(certificate.subject, "CN=payments,O=Example\\, Inc.");
        assert_eq!(certificate.common_name.as_deref(), Some("payments"));
        assert_eq!(certificate.dns_names, ["svc.internal"]);
        assert_eq!(certificate.emails, ["ops@example.org"]);
        assert_eq!(certificate.uris, ["spiffe://example.org/payments"]);
        assert_eq!(certificate.serial, "0abc");
        assert_eq!(certificate.fingerprint_sha256, hex(&Sha256::digest(&der)));
        assert_eq!(certificate.fingerprint_sha256.len(), 64);
        // 2040-01-02T00:00:00Z
        assert_eq!(certificate.not_after, SystemTime::UNIX_EPOCH + Duration::from_secs(2_209_075_200));

        let escaped = certificate.escaped_pem();
        assert!(escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"), "{escaped}");
        assert!(escaped.ends_with("-----END%20CERTIFICATE-----%0A"), "{escaped}");
        assert!(http::HeaderValue::from_str(escaped).is_ok());
        let pem = percent_encoding::percent_decode_str(escaped).decode_utf8().expect("utf-8").into_owned();
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).expect("base64"), der);
    }

    #[test]
    fn rejects_bytes_that_are_not_a_certificate() {
        assert!(ClientCertificate::from_der(Bytes::from_static(b"not a certificate")).is_err());
    }

    #[test]
    fn writes_hex_in_lower_case_without_separators() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }
}

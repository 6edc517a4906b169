//! The AuthnRequest a browser without a session is sent to the IdP with (SAML bindings §3.4,
//! HTTP-Redirect): raw DEFLATE, then base64, then URL-encoded as `SAMLRequest`, with
//! `RelayState` beside it. The request is not signed; the IdP answers to the ACS URL it
//! knows for this service provider, and the answer is what gets checked.

use std::io::Write;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use uppsala::XmlWriter;

use super::xml::{ASSERTION_NS, PROTOCOL_NS};

const HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";

/// A fresh AuthnRequest id: 128 random bits, as an `xs:ID` (must not start with a digit).
pub(crate) fn new_request_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    let mut id = String::with_capacity(33);
    id.push('_');
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    Some(id)
}

/// The AuthnRequest XML.
pub(crate) fn authn_request(id: &str, now: SystemTime, sso_url: &str, acs_url: &str, sp_entity_id: &str) -> String {
    let issue_instant = humantime::format_rfc3339_seconds(now).to_string();
    let mut writer = XmlWriter::new();
    writer.start_element(
        "samlp:AuthnRequest",
        &[
            ("xmlns:samlp", PROTOCOL_NS),
            ("xmlns:saml", ASSERTION_NS),
            ("ID", id),
            ("Version", "2.0"),
            ("IssueInstant", &issue_instant),
            ("Destination", sso_url),
            ("AssertionConsumerServiceURL", acs_url),
            ("ProtocolBinding", HTTP_POST),
        ],
    );
    writer.start_element("saml:Issuer", &[]);
    writer.text(sp_entity_id);
    writer.end_element("saml:Issuer");
    writer.end_element("samlp:AuthnRequest");
    writer.into_string()
}

/// The IdP URL carrying `request` and `relay_state` by the HTTP-Redirect binding.
pub(crate) fn redirect_url(sso_url: &str, request: &str, relay_state: &str) -> Option<String> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(request.as_bytes()).ok()?;
    let deflated = encoder.finish().ok()?;
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLRequest", &STANDARD.encode(deflated))
        .append_pair("RelayState", relay_state)
        .finish();
    let separator = if sso_url.contains('?') { '&' } else { '?' };
    Some(format!("{sso_url}{separator}{query}"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::DeflateDecoder;

    use super::*;

    #[test]
    fn request_ids_are_ncnames_and_unique() {
        let first = new_request_id().expect("id");
        assert!(first.starts_with('_') && first.len() == 33);
        assert_ne!(first, new_request_id().expect("id"));
    }

    #[test]
    fn redirect_url_carries_the_deflated_request_and_the_relay_state() {
        let xml =
            authn_request("_1", SystemTime::UNIX_EPOCH, "https://idp/sso?tenant=a&b", "https://sp/acs", "urn:sp&<co>");
        assert!(xml.contains(r#"IssueInstant="1970-01-01T00:00:00Z""#), "{xml}");
        assert!(xml.contains("<saml:Issuer>urn:sp&amp;&lt;co&gt;</saml:Issuer>"), "escaped: {xml}");
        let url = redirect_url("https://idp/sso?tenant=a", &xml, "state").expect("url");
        let (base, query) = url.split_once("?tenant=a&").expect("existing query kept");
        assert_eq!(base, "https://idp/sso");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        assert_eq!(pairs[1], ("RelayState".to_owned(), "state".to_owned()));
        let deflated = STANDARD.decode(&pairs[0].1).expect("base64");
        let mut inflated = String::new();
        DeflateDecoder::new(&deflated[..]).read_to_string(&mut inflated).expect("raw deflate");
        assert_eq!(inflated, xml);
    }
}

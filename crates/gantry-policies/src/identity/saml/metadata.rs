//! What the `saml` policy needs to know of its identity provider, read at build time from
//! SAML metadata (an `EntityDescriptor`) or from explicit settings: its entity id, its
//! single sign-on URL for the HTTP-Redirect binding and its signing certificates.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use uppsala::{Document, NodeId};

use super::xml::{parse_untrusted, DSIG_NS, MD_NS};

/// The SAML binding the gateway sends AuthnRequests with.
pub(crate) const HTTP_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";

/// An identity provider as its metadata describes it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IdpMetadata {
    /// `EntityDescriptor/@entityID`.
    pub entity_id: Option<String>,
    /// `SingleSignOnService/@Location` of the HTTP-Redirect binding.
    pub sso_url: Option<String>,
    /// DER of each signing certificate (`KeyDescriptor` with `use="signing"` or no `use`).
    pub certificates: Vec<Vec<u8>>,
}

/// Reads the first `EntityDescriptor` with an `IDPSSODescriptor` (alone, or inside an
/// `EntitiesDescriptor`).
pub(crate) fn parse_metadata(xml: &str) -> Result<IdpMetadata, String> {
    let document = parse_untrusted(xml).map_err(|err| format!("is not XML metadata: {err}"))?;
    let root = document.document_element().ok_or("is not XML metadata: no root element")?;
    let entity = find_idp_entity(&document, root).ok_or("has no EntityDescriptor with an IDPSSODescriptor")?;
    let idp =
        document.first_child_element_by_name_ns(entity, MD_NS, "IDPSSODescriptor").ok_or("has no IDPSSODescriptor")?;
    let sso_url = document
        .child_elements_by_name_ns(idp, MD_NS, "SingleSignOnService")
        .into_iter()
        .find(|&service| document.get_attribute(service, "Binding") == Some(HTTP_REDIRECT))
        .and_then(|service| document.get_attribute(service, "Location"))
        .map(str::to_owned);
    let mut certificates = Vec::new();
    for descriptor in document.child_elements_by_name_ns(idp, MD_NS, "KeyDescriptor") {
        if document.get_attribute(descriptor, "use").is_some_and(|usage| usage != "signing") {
            continue;
        }
        for data in descendants_named(&document, descriptor, DSIG_NS, "X509Certificate") {
            certificates.push(parse_certificate(&document.text_content_deep(data))?);
        }
    }
    Ok(IdpMetadata { entity_id: document.get_attribute(entity, "entityID").map(str::to_owned), sso_url, certificates })
}

fn find_idp_entity(document: &Document<'_>, root: NodeId) -> Option<NodeId> {
    let has_idp = |entity: NodeId| document.first_child_element_by_name_ns(entity, MD_NS, "IDPSSODescriptor").is_some();
    if document.element(root)?.matches_name_ns(MD_NS, "EntityDescriptor") {
        return has_idp(root).then_some(root);
    }
    descendants_named(document, root, MD_NS, "EntityDescriptor").into_iter().find(|&entity| has_idp(entity))
}

fn descendants_named(document: &Document<'_>, node: NodeId, namespace: &str, name: &str) -> Vec<NodeId> {
    document
        .descendants(node)
        .into_iter()
        .filter(|&id| document.element(id).is_some_and(|element| element.matches_name_ns(namespace, name)))
        .collect()
}

/// DER of a certificate written as PEM or as the bare base64 that metadata carries.
pub(crate) fn parse_certificate(text: &str) -> Result<Vec<u8>, String> {
    let body: String = if text.contains("-----BEGIN CERTIFICATE-----") {
        let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0) + "-----BEGIN CERTIFICATE-----".len();
        let end = text[start..]
            .find("-----END CERTIFICATE-----")
            .map(|end| start + end)
            .ok_or("a PEM certificate has no END line")?;
        text[start..end].chars().filter(|c| !c.is_whitespace()).collect()
    } else {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    };
    let der = STANDARD.decode(body.as_bytes()).map_err(|_| "a certificate is neither PEM nor base64 DER")?;
    // Parsed once here so that a broken certificate is a configuration error, not a failed login.
    bergshamra_keys::loader::load_x509_cert_der(&der).map_err(|err| format!("a certificate cannot be read: {err}"))?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entity_id_redirect_location_and_signing_certificates() {
        let der = super::super::tests::fixtures::idp().certificate_der.clone();
        let xml = format!(
            r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="urn:idp">
  <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="encryption"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>not-read</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>
      {}
    </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://idp/post"/>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp/redirect"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>"#,
            STANDARD.encode(&der)
        );
        let metadata = parse_metadata(&xml).expect("metadata");
        assert_eq!(metadata.entity_id.as_deref(), Some("urn:idp"));
        assert_eq!(metadata.sso_url.as_deref(), Some("https://idp/redirect"));
        assert_eq!(metadata.certificates, vec![der]);
    }

    #[test]
    fn refuses_metadata_with_a_document_type_declaration() {
        let xml = r#"<!DOCTYPE md [<!ENTITY x SYSTEM "file:///etc/passwd">]><md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="&x;"/>"#;
        let err = parse_metadata(xml).expect_err("a DTD is refused");
        assert!(err.starts_with("is not XML metadata"), "{err}");
    }

    #[test]
    fn refuses_a_certificate_that_is_not_one() {
        assert!(parse_certificate("bm90IGEgY2VydGlmaWNhdGU=").is_err());
        assert!(parse_certificate("-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----").is_err());
    }
}

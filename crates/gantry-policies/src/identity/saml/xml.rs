//! The one way the `saml` policy reads XML it did not write: uppsala (the parser the XML
//! signature library works on), with any document type declaration refused, so neither
//! external entities (XXE) nor entity expansion (billion laughs) can happen. SAML messages
//! never carry a DTD.

use uppsala::{Document, NodeId, Parser};

/// SAML 2.0 protocol namespace (`samlp:`).
pub(crate) const PROTOCOL_NS: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
/// SAML 2.0 assertion namespace (`saml:`).
pub(crate) const ASSERTION_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
/// SAML 2.0 metadata namespace (`md:`).
pub(crate) const MD_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
/// XML-DSig namespace (`ds:`).
pub(crate) const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";

/// Parses XML from outside, refusing document type declarations.
pub(crate) fn parse_untrusted(xml: &str) -> Result<Document<'_>, String> {
    Parser::new().with_forbid_dtd(true).parse(xml).map_err(|err| err.to_string())
}

/// The only child element `namespace:name` of `parent`; `Err` when there are several, so a
/// second, unsigned copy of an element can never be the one read.
pub(crate) fn only_child(
    document: &Document<'_>,
    parent: NodeId,
    namespace: &str,
    name: &'static str,
) -> Result<Option<NodeId>, String> {
    let children = document.child_elements_by_name_ns(parent, namespace, name);
    match children.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(format!("it has more than one {name}")),
    }
}

/// The text of an element: all its text, comments left out. Reading only the first text
/// node would let `admin<!---->@evil.example` pass as `admin` (CVE-2017-11427), since
/// canonicalization without comments signs it as `admin@evil.example`.
pub(crate) fn text(document: &Document<'_>, element: NodeId) -> String {
    document.text_content_deep(element).trim().to_owned()
}

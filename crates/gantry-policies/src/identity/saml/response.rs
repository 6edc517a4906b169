//! Checks a `<samlp:Response>` posted to the assertion consumer service and gives the
//! identity it asserts.
//!
//! The XML signatures are verified by bergshamra (XML-DSig, exclusive C14N), with only the
//! configured IdP certificates as keys (keys inside the message are ignored) and its strict
//! mode on. Around it, this module decides *which* element a signature vouches for: a
//! signature counts only when it is enveloped in the element its one reference points at,
//! and that element is the Response itself or its only Assertion. Everything read for the
//! identity comes from that one signed Assertion, found by position, never by id or by
//! searching the document, which is what defeats signature wrapping (XSW): a copy of the
//! signed element moved elsewhere, or an unsigned one put where the signed one was, is
//! either not where the reader looks or not signed where it is.

use std::time::{Duration, SystemTime};

use bergshamra_dsig::{DsigContext, VerifyResult};
use uppsala::{Document, NodeId};

use super::xml::{only_child, parse_untrusted, text, ASSERTION_NS, DSIG_NS, PROTOCOL_NS};

const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";

/// What the Response must match: this gateway, this login and the time.
#[derive(Debug)]
pub(crate) struct Expected<'a> {
    /// The IdP's entity id: the Issuer of the Assertion (and of the Response, if named).
    pub idp_entity_id: &'a str,
    /// This service provider's entity id: an Audience of the Assertion.
    pub sp_entity_id: &'a str,
    /// The absolute URL the Response was posted to: Destination and Recipient.
    pub acs_url: &'a str,
    /// The id of the AuthnRequest this browser sent: InResponseTo.
    pub request_id: &'a str,
    /// Now.
    pub now: SystemTime,
    /// How far the IdP's clock may be off.
    pub skew: Duration,
    /// Attribute naming the consumer; the NameID when `None`.
    pub consumer_attribute: Option<&'a str>,
    /// Attribute listing the groups, if any.
    pub groups_attribute: Option<&'a str>,
}

/// The identity a valid Response asserts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Asserted {
    /// The consumer id.
    pub consumer: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// `AuthnStatement/@SessionNotOnOrAfter`: the IdP's limit on the session, if it set one.
    pub session_not_on_or_after: Option<SystemTime>,
}

/// Why a Response was refused. The text is safe to show: it names the check, never a value
/// taken from the message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rejected(pub String);

fn reject(reason: impl Into<String>) -> Rejected {
    Rejected(reason.into())
}

/// Checks `xml` (the decoded `SAMLResponse`) and gives the asserted identity.
pub(crate) fn check_response(xml: &str, verifier: &DsigContext, expected: &Expected<'_>) -> Result<Asserted, Rejected> {
    let document = parse_untrusted(xml).map_err(|_| reject("the response is not well-formed XML without a DTD"))?;
    let response = document.document_element().ok_or_else(|| reject("the response has no root element"))?;
    if !is_element(&document, response, PROTOCOL_NS, "Response") {
        return Err(reject("the message is not a samlp:Response"));
    }
    if !document.child_elements_by_name_ns(response, ASSERTION_NS, "EncryptedAssertion").is_empty() {
        return Err(reject("encrypted assertions are not supported"));
    }
    let signed = signed_elements(&document, verifier)?;

    let status = only_child(&document, response, PROTOCOL_NS, "Status").map_err(response_shape)?;
    let code = status
        .and_then(|status| document.first_child_element_by_name_ns(status, PROTOCOL_NS, "StatusCode"))
        .and_then(|code| document.get_attribute(code, "Value"));
    if code != Some(SUCCESS) {
        // The IdP's status code is a fixed URN, not user data; it tells an admin why.
        return Err(reject(match code {
            Some(code) if code.starts_with("urn:oasis:names:tc:SAML:2.0:status:") => {
                format!("the identity provider answered {}", &code["urn:oasis:names:tc:SAML:2.0:status:".len()..])
            }
            _ => "the response has no Success status".to_owned(),
        }));
    }
    let assertion = only_child(&document, response, ASSERTION_NS, "Assertion")
        .map_err(response_shape)?
        .ok_or_else(|| reject("the response has no Assertion"))?;
    // Any other Assertion anywhere (in Extensions, in a Signature's Object, inside the
    // Assertion) is a wrapping attempt or at least nothing a reader should have to choose from.
    let assertions = document.get_elements_by_tag_name_ns(ASSERTION_NS, "Assertion");
    if assertions.len() != 1 {
        return Err(reject("the response carries more than one Assertion"));
    }
    if !signed.contains(&response) && !signed.contains(&assertion) {
        return Err(reject("neither the response nor its assertion is signed"));
    }

    if let Some(destination) = document.get_attribute(response, "Destination") {
        if destination != expected.acs_url {
            return Err(reject("the response's Destination is not this assertion consumer service"));
        }
    }
    if let Some(in_response_to) = document.get_attribute(response, "InResponseTo") {
        if in_response_to != expected.request_id {
            return Err(reject("the response answers another login request"));
        }
    }
    if let Some(issuer) = only_child(&document, response, ASSERTION_NS, "Issuer").map_err(response_shape)? {
        if text(&document, issuer) != expected.idp_entity_id {
            return Err(reject("the response's Issuer is not the configured identity provider"));
        }
    }
    check_assertion(&document, assertion, expected)
}

fn response_shape(reason: String) -> Rejected {
    reject(format!("the response is malformed: {reason}"))
}

fn assertion_shape(reason: String) -> Rejected {
    reject(format!("the assertion is malformed: {reason}"))
}

fn is_element(document: &Document<'_>, node: NodeId, namespace: &str, name: &str) -> bool {
    document.element(node).is_some_and(|element| element.matches_name_ns(namespace, name))
}

/// The elements vouched for by a valid signature: for each `<ds:Signature>`, the element it
/// is enveloped in, when its single reference points at exactly that element. Any signature
/// that does not verify refuses the whole message.
fn signed_elements(document: &Document<'_>, verifier: &DsigContext) -> Result<Vec<NodeId>, Rejected> {
    refuse_sha1(document)?;
    let results = bergshamra_dsig::verify::verify_all_document(verifier, document).map_err(|err| {
        if document.get_elements_by_tag_name_ns(DSIG_NS, "Signature").is_empty() {
            return reject("the response is not signed");
        }
        tracing::debug!(error = %err, "SAML response signature check failed");
        reject("the response's signature cannot be checked")
    })?;
    let mut signed = Vec::new();
    for result in results {
        match result {
            VerifyResult::Valid { signature_node, references, .. } => {
                let envelope = document.parent(signature_node);
                let [reference] = references.as_slice() else {
                    return Err(reject("a signature must have exactly one reference"));
                };
                match (envelope, reference.resolved_node) {
                    (Some(envelope), Some(target)) if envelope == target && reference.digest_verified => {
                        signed.push(envelope);
                    }
                    _ => return Err(reject("a signature does not cover the element it is in")),
                }
            }
            VerifyResult::Invalid { reason } => {
                tracing::debug!(reason = %reason, "SAML response signature is invalid");
                return Err(reject("the signature is not valid for the identity provider's certificate"));
            }
        }
    }
    Ok(signed)
}

/// SHA-1 digests and signatures are refused (collisions are practical since 2017), whatever
/// the signature library would accept.
fn refuse_sha1(document: &Document<'_>) -> Result<(), Rejected> {
    for name in ["SignatureMethod", "DigestMethod"] {
        for method in document.get_elements_by_tag_name_ns(DSIG_NS, name) {
            if document.get_attribute(method, "Algorithm").is_some_and(|algorithm| algorithm.ends_with("sha1")) {
                return Err(reject("SHA-1 signatures are refused; configure the identity provider for SHA-256"));
            }
        }
    }
    Ok(())
}

fn check_assertion(document: &Document<'_>, assertion: NodeId, expected: &Expected<'_>) -> Result<Asserted, Rejected> {
    let issuer = only_child(document, assertion, ASSERTION_NS, "Issuer").map_err(assertion_shape)?;
    if issuer.map(|issuer| text(document, issuer)).as_deref() != Some(expected.idp_entity_id) {
        return Err(reject("the assertion's Issuer is not the configured identity provider"));
    }
    let subject = only_child(document, assertion, ASSERTION_NS, "Subject")
        .map_err(assertion_shape)?
        .ok_or_else(|| reject("the assertion has no Subject"))?;
    check_subject_confirmation(document, subject, expected)?;
    check_conditions(document, assertion, expected)?;

    let name_id = only_child(document, subject, ASSERTION_NS, "NameID").map_err(assertion_shape)?;
    let consumer = match expected.consumer_attribute {
        Some(name) => attribute_values(document, assertion, name)?.into_iter().next(),
        None => name_id.map(|name_id| text(document, name_id)),
    }
    .filter(|consumer| !consumer.is_empty())
    .ok_or_else(|| match expected.consumer_attribute {
        Some(_) => reject("the assertion lacks the consumer attribute"),
        None => reject("the assertion has no NameID"),
    })?;
    let groups = match expected.groups_attribute {
        Some(name) => attribute_values(document, assertion, name)?,
        None => Vec::new(),
    };
    let session_not_on_or_after = document
        .child_elements_by_name_ns(assertion, ASSERTION_NS, "AuthnStatement")
        .into_iter()
        .filter_map(|statement| document.get_attribute(statement, "SessionNotOnOrAfter"))
        .map(|value| instant(value).ok_or_else(|| reject("the assertion has a malformed SessionNotOnOrAfter")))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .min();
    Ok(Asserted { consumer, groups, session_not_on_or_after })
}

/// SAML profiles §4.1.4.2: a bearer confirmation for this ACS, this request, not expired.
fn check_subject_confirmation(
    document: &Document<'_>,
    subject: NodeId,
    expected: &Expected<'_>,
) -> Result<(), Rejected> {
    let mut last_problem = "the assertion has no bearer SubjectConfirmation";
    for confirmation in document.child_elements_by_name_ns(subject, ASSERTION_NS, "SubjectConfirmation") {
        if document.get_attribute(confirmation, "Method") != Some(BEARER) {
            continue;
        }
        let Some(data) =
            only_child(document, confirmation, ASSERTION_NS, "SubjectConfirmationData").map_err(assertion_shape)?
        else {
            last_problem = "the bearer confirmation has no SubjectConfirmationData";
            continue;
        };
        if document.get_attribute(data, "Recipient") != Some(expected.acs_url) {
            last_problem = "the assertion's Recipient is not this assertion consumer service";
            continue;
        }
        if document.get_attribute(data, "InResponseTo") != Some(expected.request_id) {
            last_problem = "the assertion answers another login request";
            continue;
        }
        let Some(not_on_or_after) = document.get_attribute(data, "NotOnOrAfter") else {
            last_problem = "the bearer confirmation has no NotOnOrAfter";
            continue;
        };
        if !is_before(expected.now, not_on_or_after, expected.skew)? {
            last_problem = "the assertion's bearer confirmation has expired";
            continue;
        }
        if let Some(not_before) = document.get_attribute(data, "NotBefore") {
            if !is_reached(expected.now, not_before, expected.skew)? {
                last_problem = "the assertion's bearer confirmation is not valid yet";
                continue;
            }
        }
        return Ok(());
    }
    Err(reject(last_problem))
}

fn check_conditions(document: &Document<'_>, assertion: NodeId, expected: &Expected<'_>) -> Result<(), Rejected> {
    let conditions = only_child(document, assertion, ASSERTION_NS, "Conditions")
        .map_err(assertion_shape)?
        .ok_or_else(|| reject("the assertion has no Conditions"))?;
    if let Some(not_before) = document.get_attribute(conditions, "NotBefore") {
        if !is_reached(expected.now, not_before, expected.skew)? {
            return Err(reject("the assertion is not valid yet"));
        }
    }
    if let Some(not_on_or_after) = document.get_attribute(conditions, "NotOnOrAfter") {
        if !is_before(expected.now, not_on_or_after, expected.skew)? {
            return Err(reject("the assertion has expired"));
        }
    }
    let restrictions = document.child_elements_by_name_ns(conditions, ASSERTION_NS, "AudienceRestriction");
    if restrictions.is_empty() {
        return Err(reject("the assertion names no Audience"));
    }
    // SAML core §2.5.1.4: every restriction must be met, each by any one of its audiences.
    for restriction in restrictions {
        let audiences = document.child_elements_by_name_ns(restriction, ASSERTION_NS, "Audience");
        if !audiences.into_iter().any(|audience| text(document, audience) == expected.sp_entity_id) {
            return Err(reject("the assertion is meant for another audience"));
        }
    }
    Ok(())
}

/// The values of attribute `name` in the assertion's attribute statements, trimmed.
fn attribute_values(document: &Document<'_>, assertion: NodeId, name: &str) -> Result<Vec<String>, Rejected> {
    let mut values = Vec::new();
    for statement in document.child_elements_by_name_ns(assertion, ASSERTION_NS, "AttributeStatement") {
        for attribute in document.child_elements_by_name_ns(statement, ASSERTION_NS, "Attribute") {
            let attribute_name = document.get_attribute(attribute, "Name");
            let friendly_name = document.get_attribute(attribute, "FriendlyName");
            if attribute_name != Some(name) && friendly_name != Some(name) {
                continue;
            }
            for value in document.child_elements_by_name_ns(attribute, ASSERTION_NS, "AttributeValue") {
                let value = text(document, value);
                if !value.is_empty() {
                    values.push(value);
                }
            }
        }
    }
    Ok(values)
}

/// A SAML time (`xs:dateTime` in UTC, SAML core §1.3.3).
pub(crate) fn instant(value: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(value.trim()).ok()
}

/// `now` is before `limit`, allowing `skew`.
fn is_before(now: SystemTime, limit: &str, skew: Duration) -> Result<bool, Rejected> {
    let limit = instant(limit).ok_or_else(|| reject("the assertion has a malformed time"))?;
    Ok(now < limit + skew)
}

/// `now` has reached `start`, allowing `skew`.
fn is_reached(now: SystemTime, start: &str, skew: Duration) -> Result<bool, Rejected> {
    let start = instant(start).ok_or_else(|| reject("the assertion has a malformed time"))?;
    Ok(now + skew >= start)
}

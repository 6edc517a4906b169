//! Crafted SAML responses for the `saml` tests: a test identity provider's RSA key and
//! certificate (made once per test run), assertion and response XML with the fields a test
//! wants to get wrong, and XML-DSig signatures made by bergshamra from signature templates.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bergshamra_dsig::DsigContext;
use bergshamra_keys::KeysManager;

/// A signer: an RSA key and its self-signed certificate.
pub(crate) struct Signer {
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The certificate, PEM.
    pub certificate_pem: String,
    context: DsigContext,
}

impl Signer {
    fn generate(name: &str) -> Self {
        let key = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let pkcs8 = key.as_der().expect("PKCS#8 encoding");
        let pem = pem("PRIVATE KEY", pkcs8.as_ref());
        let rcgen_key =
            rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("rcgen reads the key");
        let certificate = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("certificate parameters")
            .self_signed(&rcgen_key)
            .expect("self-signed certificate");
        let mut keys = KeysManager::new();
        keys.add_key(bergshamra_keys::loader::load_pem_auto(pem.as_bytes(), None).expect("bergshamra reads the key"));
        Self {
            certificate_der: certificate.der().to_vec(),
            certificate_pem: certificate.pem(),
            context: DsigContext::new(keys),
        }
    }

    /// Signs `xml`, whose signature templates (see [`signature_template`]) are filled in.
    pub fn sign(&self, xml: &str) -> String {
        bergshamra_dsig::sign::sign(&self.context, xml).expect("signing a template")
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// The identity provider the policy under test trusts.
pub(crate) fn idp() -> &'static Signer {
    static IDP: OnceLock<Signer> = OnceLock::new();
    IDP.get_or_init(|| Signer::generate("idp.test"))
}

/// Someone else: a key the policy does not trust.
pub(crate) fn stranger() -> &'static Signer {
    static STRANGER: OnceLock<Signer> = OnceLock::new();
    STRANGER.get_or_init(|| Signer::generate("stranger.test"))
}

/// An enveloped RSA-SHA256 signature template over the element with `ID="{id}"`.
pub(crate) fn signature_template(id: &str) -> String {
    format!(
        r##"<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/><ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/><ds:Reference URI="#{id}"><ds:Transforms><ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/><ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:Transforms><ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue></ds:SignatureValue></ds:Signature>"##
    )
}

/// Where the test service provider and identity provider live.
pub(crate) const IDP_ENTITY_ID: &str = "https://idp.test/metadata";
pub(crate) const IDP_SSO_URL: &str = "https://idp.test/sso";
pub(crate) const SP_ENTITY_ID: &str = "https://app.test/saml";
pub(crate) const ACS_URL: &str = "https://app.test/saml/acs";

/// The facts an assertion states; each test changes the one it is about.
#[derive(Clone, Debug)]
pub(crate) struct Facts {
    pub assertion_id: String,
    pub response_id: String,
    pub issuer: String,
    pub name_id: String,
    pub recipient: String,
    pub destination: String,
    pub in_response_to: String,
    pub audience: String,
    pub not_before: SystemTime,
    pub not_on_or_after: SystemTime,
    pub status: String,
    pub groups: Vec<String>,
    pub session_not_on_or_after: Option<SystemTime>,
}

impl Facts {
    /// A valid answer to request `request_id`, issued now.
    pub fn valid(request_id: &str) -> Self {
        let now = SystemTime::now();
        Self {
            assertion_id: "_assertion1".to_owned(),
            response_id: "_response1".to_owned(),
            issuer: IDP_ENTITY_ID.to_owned(),
            name_id: "alice".to_owned(),
            recipient: ACS_URL.to_owned(),
            destination: ACS_URL.to_owned(),
            in_response_to: request_id.to_owned(),
            audience: SP_ENTITY_ID.to_owned(),
            not_before: now - Duration::from_secs(5),
            not_on_or_after: now + Duration::from_secs(300),
            status: "urn:oasis:names:tc:SAML:2.0:status:Success".to_owned(),
            groups: vec!["staff".to_owned(), "admins".to_owned()],
            session_not_on_or_after: None,
        }
    }
}

fn time(instant: SystemTime) -> String {
    humantime::format_rfc3339_millis(instant).to_string()
}

/// The assertion, with a signature template after its Issuer when `signed`.
pub(crate) fn assertion(facts: &Facts, signed: bool) -> String {
    let signature = if signed { signature_template(&facts.assertion_id) } else { String::new() };
    let groups: String =
        facts.groups.iter().map(|group| format!("<saml:AttributeValue>{group}</saml:AttributeValue>")).collect();
    let session_limit = facts
        .session_not_on_or_after
        .map(|limit| format!(r#" SessionNotOnOrAfter="{}""#, time(limit)))
        .unwrap_or_default();
    format!(
        r#"<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{id}" Version="2.0" IssueInstant="{now}"><saml:Issuer>{issuer}</saml:Issuer>{signature}<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified">{name_id}</saml:NameID><saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="{not_on_or_after}" Recipient="{recipient}" InResponseTo="{in_response_to}"/></saml:SubjectConfirmation></saml:Subject><saml:Conditions NotBefore="{not_before}" NotOnOrAfter="{not_on_or_after}"><saml:AudienceRestriction><saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions><saml:AuthnStatement AuthnInstant="{now}"{session_limit}><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement><saml:AttributeStatement><saml:Attribute Name="memberOf">{groups}</saml:Attribute><saml:Attribute Name="uid"><saml:AttributeValue>{name_id}</saml:AttributeValue></saml:Attribute></saml:AttributeStatement></saml:Assertion>"#,
        id = facts.assertion_id,
        now = time(facts.not_before),
        issuer = facts.issuer,
        name_id = facts.name_id,
        not_on_or_after = time(facts.not_on_or_after),
        recipient = facts.recipient,
        in_response_to = facts.in_response_to,
        not_before = time(facts.not_before),
        audience = facts.audience,
    )
}

/// A signed assertion, standalone (ready to be put in a response).
pub(crate) fn signed_assertion(facts: &Facts, signer: &Signer) -> String {
    signer.sign(&assertion(facts, true))
}

/// A response around `assertion_xml`, with a signature template after its Issuer when
/// `signed` (fill it with [`Signer::sign`]).
pub(crate) fn response(facts: &Facts, assertion_xml: &str, signed: bool) -> String {
    let signature = if signed { signature_template(&facts.response_id) } else { String::new() };
    format!(
        r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{id}" Version="2.0" IssueInstant="{now}" Destination="{destination}" InResponseTo="{in_response_to}"><saml:Issuer>{issuer}</saml:Issuer>{signature}<samlp:Status><samlp:StatusCode Value="{status}"/></samlp:Status>{assertion_xml}</samlp:Response>"#,
        id = facts.response_id,
        now = time(facts.not_before),
        destination = facts.destination,
        in_response_to = facts.in_response_to,
        issuer = facts.issuer,
        status = facts.status,
    )
}

/// The usual shape: an unsigned response around an assertion signed by `signer`.
pub(crate) fn assertion_signed_response(facts: &Facts, signer: &Signer) -> String {
    response(facts, &signed_assertion(facts, signer), false)
}

/// A response signed as a whole by `signer`, with an unsigned assertion.
pub(crate) fn response_signed_response(facts: &Facts, signer: &Signer) -> String {
    signer.sign(&response(facts, &assertion(facts, false), true))
}

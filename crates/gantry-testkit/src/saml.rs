//! A real SAML 2.0 identity provider for tests: the `saml-idp` npm package run by `node`, on a
//! port the system picks, with a signing key and certificate made for the test, killed on drop.
//!
//! `scripts/test.sh` installs the package (pinned) into `target/test-tools/saml-idp`;
//! `GANTRY_TEST_TOOLS` names another directory holding `saml-idp/node_modules`. The IdP signs
//! both the Response and the Assertion (RSA-SHA256, exclusive C14N) and answers to the ACS URL
//! the AuthnRequest names. [`SamlIdp::sign_in`] does what a browser and its user do there:
//! open the login page the gateway redirected to, submit it as a chosen user, and read the
//! auto-submitting form the IdP answers with.

use std::path::PathBuf;
use std::process::Command;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::node::{test_tools, NodeProcess};

/// The version of `saml-idp` `scripts/test.sh` installs.
pub const SAML_IDP_VERSION: &str = "1.2.1";

/// A running identity provider; killed on drop.
pub struct SamlIdp {
    process: NodeProcess,
    certificate_pem: String,
    _files: tempfile::TempDir,
}

/// What the IdP's auto-submitting form would post to the service provider.
#[derive(Clone, Debug)]
pub struct IdpAnswer {
    /// The form's action: the ACS URL the AuthnRequest named.
    pub acs_url: String,
    /// The base64 `SAMLResponse`, exactly as the form carries it.
    pub saml_response: String,
    /// The `RelayState` given back, if any.
    pub relay_state: Option<String>,
}

impl IdpAnswer {
    /// The `SAMLResponse` XML.
    pub fn xml(&self) -> String {
        let compact: String = self.saml_response.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        String::from_utf8(STANDARD.decode(compact).expect("SAMLResponse is base64")).expect("SAMLResponse is UTF-8")
    }
}

impl SamlIdp {
    /// The IdP's entity id (the Issuer of its assertions).
    pub const ENTITY_ID: &'static str = "urn:gantry:test-idp";

    /// Starts the IdP for service provider `sp_entity_id` (its Audience) and waits (up to the
    /// test deadline) until it listens.
    pub fn start(sp_entity_id: &str) -> Self {
        let tools = tools_dir();
        let script = tools.join("node_modules").join("saml-idp").join("bin").join("run.js");
        assert!(
            script.is_file(),
            "saml-idp is not installed in {}: run scripts/test.sh, which installs saml-idp@{SAML_IDP_VERSION}",
            tools.display()
        );
        let files = tempfile::tempdir().expect("temporary directory");
        let (key_pem, certificate_pem) = signing_key();
        let key = files.path().join("idp-key.pem");
        let certificate = files.path().join("idp-cert.pem");
        std::fs::write(&key, key_pem).expect("write the IdP key");
        std::fs::write(&certificate, &certificate_pem).expect("write the IdP certificate");
        let mut command = Command::new("node");
        command
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0", "--issuer", Self::ENTITY_ID])
            .arg("--cert")
            .arg(&certificate)
            .arg("--key")
            .arg(&key)
            // Required, but the AuthnRequest's AssertionConsumerServiceURL is used instead.
            .args(["--acsUrl", "http://127.0.0.1/unused", "--audience", sp_entity_id])
            .current_dir(&tools)
            .env("FORCE_COLOR", "0");
        // It prints "IdP server ready at" and the base URL on the next line.
        let mut ready = false;
        let process = NodeProcess::start("saml-idp", command, move |line| {
            let port = if ready { line.trim().rsplit(':').next().and_then(|port| port.parse().ok()) } else { None };
            ready |= line.contains("IdP server ready at");
            port
        });
        Self { process, certificate_pem, _files: files }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.process.port())
    }

    /// The single sign-on URL (HTTP-Redirect and HTTP-POST bindings).
    pub fn sso_url(&self) -> String {
        format!("{}/saml/sso", self.base_url())
    }

    /// The IdP's metadata document URL.
    pub fn metadata_url(&self) -> String {
        format!("{}/metadata", self.base_url())
    }

    /// The certificate the IdP signs with, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// What the IdP printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    /// Opens `login_url` (where the service provider redirected the browser), signs in as
    /// `user` with `groups`, and gives the IdP's answer.
    pub async fn sign_in(&self, login_url: &str, user: &str, groups: &[&str]) -> IdpAnswer {
        let http = reqwest::Client::new();
        let page = http.get(login_url).send().await.expect("open the IdP's login page");
        let status = page.status();
        let page = page.text().await.expect("login page text");
        assert!(status.is_success(), "the IdP's login page answered {status}:\n{page}\n{}", self.logs().join("\n"));
        let form = form_after(&page, r#"action="/signin""#)
            .unwrap_or_else(|| panic!("no sign-in form on the IdP's page (did it accept the AuthnRequest?):\n{page}"));
        let mut fields = inputs(form);
        for (name, value) in &mut fields {
            match name.as_str() {
                "userName" => *value = user.to_owned(),
                "groups" => *value = groups.join(", "),
                _ => {}
            }
        }
        let answer = http
            .post(format!("{}/signin", self.base_url()))
            .form(&fields)
            .send()
            .await
            .expect("submit the IdP's sign-in form");
        let status = answer.status();
        let answer = answer.text().await.expect("sign-in answer text");
        assert!(status.is_success(), "the IdP's sign-in answered {status}:\n{answer}\n{}", self.logs().join("\n"));
        let form = form_after(&answer, r#"name="hiddenform""#)
            .unwrap_or_else(|| panic!("no auto-submitting form in the IdP's answer:\n{answer}"));
        let action = attribute(form, "action").expect("the form has an action");
        let fields = inputs(form);
        let field = |wanted: &str| fields.iter().find(|(name, _)| name == wanted).map(|(_, value)| value.clone());
        IdpAnswer {
            acs_url: action,
            saml_response: field("SAMLResponse").expect("the form carries a SAMLResponse"),
            relay_state: field("RelayState"),
        }
    }

    /// Kills the IdP and waits until it has exited.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// `target/test-tools/saml-idp` of the workspace, or `$GANTRY_TEST_TOOLS/saml-idp`.
fn tools_dir() -> PathBuf {
    test_tools().join("saml-idp")
}

/// A fresh RSA-2048 key (PKCS#8 PEM) and its self-signed certificate (PEM): the IdP's
/// signing library only does RSA.
fn signing_key() -> (String, String) {
    let key = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
    let pkcs8 = key.as_der().expect("PKCS#8 encoding");
    let key_pem = pem("PRIVATE KEY", pkcs8.as_ref());
    let signer =
        rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).expect("rcgen reads the key");
    let certificate = rcgen::CertificateParams::new(vec!["saml-idp.test".to_owned()])
        .expect("certificate parameters")
        .self_signed(&signer)
        .expect("self-signed certificate");
    (key_pem, certificate.pem())
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).expect("ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// The `<form ...>...</form>` whose start tag contains `marker`.
fn form_after<'p>(page: &'p str, marker: &str) -> Option<&'p str> {
    let at = page.find(marker)?;
    let start = page[..at].rfind("<form")?;
    let end = page[at..].find("</form>")? + at;
    Some(&page[start..end])
}

/// `(name, value)` of every `<input>` with a name in `html`, values unescaped.
fn inputs(html: &str) -> Vec<(String, String)> {
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            let name = attribute(tag, "name")?;
            Some((name, attribute(tag, "value").unwrap_or_default()))
        })
        .collect()
}

/// The value of attribute `name` in a start tag (quoted with `"` or `'`), unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let mut search = tag;
    loop {
        let at = search.find(&format!("{name}="))?;
        let before = search[..at].chars().last();
        let rest = &search[at + name.len() + 1..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            search = rest;
            continue;
        }
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let value = &rest[1..];
        let end = value.find(quote)?;
        return Some(unescape(&value[..end]));
    }
}

/// HTML character references as the IdP's templates write them (`&#x3D;`, `&amp;`, ...).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let Some(end) = after.find(';') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let entity = &after[..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|decimal| decimal.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(character) => {
                out.push(character);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inputs_with_either_quote_and_character_references() {
        let form = r#"<form action="/x"><input name="a" value="x&#x3D;&amp;y"><input type='hidden' name='b' value='2'><input name="c"></form>"#;
        assert_eq!(
            inputs(form),
            [("a".to_owned(), "x=&y".to_owned()), ("b".to_owned(), "2".to_owned()), ("c".to_owned(), String::new())]
        );
        assert_eq!(attribute(r#"<form data-action="no" action="/yes">"#, "action").as_deref(), Some("/yes"));
    }
}

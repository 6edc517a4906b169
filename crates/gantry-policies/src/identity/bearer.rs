//! What the token-checking identity policies (`oauth2_introspection`, `oidc`) share: where a
//! bearer token is found in a request (RFC 6750 §2), how it is removed before the request goes
//! upstream, how a checked token's claims name a consumer, and the challenges they answer with.
//!
//! Runs per request, before any remote call: a few header lookups; the token is borrowed from
//! the request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::identity::{forbidden, quoted, unauthorized};
use gantry_policy_api::{Consumer, CredentialEntry, Identity, PolicyResponse, RequestParts, Validate};
use http::header::AUTHORIZATION;
use http::HeaderValue;
use schemars::JsonSchema;
use serde::Deserialize;

use super::request_credentials::{self, bearer_or_bare_token, bearer_token, CredentialSource};

/// A consumer's credential for a token-checking policy: the value of the token's consumer
/// claim (`sub` by default) that stands for this consumer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectCredential {
    /// The claim value that identifies this consumer (a subject, a client id or a user name).
    pub subject: String,
}

impl Validate for SubjectCredential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.subject.is_empty() {
            errors.push(path.key("subject"), "must not be empty");
        }
    }
}

/// Reports a subject claimed by two credentials, at the second one.
pub(crate) fn check_subjects(credentials: &[CredentialEntry<'_, SubjectCredential>], errors: &mut ConfigErrors) {
    let mut seen: HashMap<&str, &Arc<str>> = HashMap::new();
    for entry in credentials {
        if let Some(first) = seen.insert(&entry.credential.subject, entry.id) {
            errors.push(entry.path.key("subject"), format!("the same subject is already the credential `{first}`"));
        }
    }
}

/// Where a request's token was found, so it can be removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Authorization,
    Elsewhere(request_credentials::Found),
}

/// Where tokens are looked for: `Authorization: Bearer` first, then an optional header holding
/// the bare token (or a whole `Bearer` credential), then an optional query parameter.
#[derive(Debug)]
pub(crate) struct TokenSource {
    elsewhere: CredentialSource,
}

impl TokenSource {
    /// Parses the `header` and `query` settings written at `path`.
    pub(crate) fn build(
        header: Option<&str>,
        query: Option<&str>,
        path: &FieldPath,
        errors: &mut ConfigErrors,
    ) -> Self {
        let elsewhere = CredentialSource::build(header, query, None, path, errors);
        CredentialSource::check_names(query, None, path, errors);
        Self { elsewhere }
    }

    /// The token a request carries, and where.
    pub(crate) fn find<'r>(&self, request: &'r RequestParts) -> Option<(Cow<'r, str>, Found)> {
        if let Some(token) = request.headers.get(AUTHORIZATION).and_then(bearer_token) {
            return Some((Cow::Borrowed(token), Found::Authorization));
        }
        let (token, found) = self.elsewhere.find_token(request, bearer_or_bare_token)?;
        Some((token, Found::Elsewhere(found)))
    }

    /// Removes the token found at `found` from the request.
    pub(crate) fn remove(&self, request: &mut RequestParts, found: Found) {
        match found {
            Found::Authorization => {
                request.headers.remove(AUTHORIZATION);
            }
            Found::Elsewhere(found) => self.elsewhere.remove(request, found),
        }
    }
}

/// Turns a checked token's claims into an [`Identity`]: the consumer whose credential names the
/// claim's value, or (unless `require_consumer`) a consumer described by the claim alone.
#[derive(Debug)]
pub(crate) struct ConsumerMapping {
    claim: String,
    require_consumer: bool,
    by_subject: HashMap<String, (Arc<Consumer>, Arc<str>)>,
    method: &'static str,
}

/// Why a valid token does not make an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unmapped(pub(crate) String);

impl Unmapped {
    /// 403: the token is valid, but names no consumer this gateway accepts.
    pub(crate) fn response(&self) -> PolicyResponse {
        forbidden("unknown-consumer", &self.0)
    }
}

impl ConsumerMapping {
    /// The mapping of policy `method` from the credentials consumers carry for it.
    pub(crate) fn new(
        claim: &str,
        require_consumer: bool,
        credentials: &[CredentialEntry<'_, SubjectCredential>],
        method: &'static str,
    ) -> Self {
        let mut by_subject = HashMap::new();
        // Duplicates are reported once by `check_subjects`; here the first one wins.
        for entry in credentials {
            by_subject
                .entry(entry.credential.subject.clone())
                .or_insert_with(|| (entry.consumer.clone(), entry.id.clone()));
        }
        Self { claim: claim.to_owned(), require_consumer, by_subject, method }
    }

    /// The identity `claims` (a JSON object of a token or an introspection response) describe.
    pub(crate) fn identity(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Identity, Unmapped> {
        let Some(subject) = claims.get(&self.claim).and_then(claim_text) else {
            return Err(Unmapped(format!("the token carries no `{}` claim", self.claim)));
        };
        let mut identity = match self.by_subject.get(subject.as_ref()) {
            Some((consumer, credential_id)) => {
                Identity::credential(consumer.clone(), credential_id.clone(), self.method)
            }
            None if self.require_consumer => {
                // The subject is the token holder's own identity, not a secret, but it is
                // left out anyway: the detail goes to whoever presented the token.
                return Err(Unmapped(format!("the token's `{}` names no consumer", self.claim)));
            }
            None => Identity::credential(Arc::new(Consumer::named(&subject)), Arc::from(subject.as_ref()), self.method),
        };
        identity.scopes = scopes(claims);
        Ok(identity)
    }
}

/// A claim's value as text: strings as they are, numbers written out (some providers use
/// numeric subjects).
fn claim_text(value: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.as_str().into()),
        serde_json::Value::Number(number) => Some(number.to_string().into()),
        _ => None,
    }
}

/// Granted scopes: `scope` as a space-separated string (RFC 7662 §2.2, RFC 9068 §2.2.3), or
/// `scp` as a list or string (Azure AD, Okta).
pub(crate) fn scopes(claims: &serde_json::Map<String, serde_json::Value>) -> Arc<[String]> {
    let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let found = match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(serde_json::Value::String(text)) => words(text),
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(|item| item.as_str()).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    };
    found.into()
}

/// The `WWW-Authenticate` challenges of a policy with `realm` (RFC 6750 §3).
#[derive(Debug)]
pub(crate) struct Challenges {
    missing: String,
    invalid: String,
}

impl Challenges {
    /// Challenges naming `realm`; `realm` must make a valid header value (see [`check_realm`]).
    pub(crate) fn new(realm: &str) -> Self {
        let realm = quoted(realm);
        Self {
            missing: format!("Bearer realm={realm}"),
            invalid: format!("Bearer realm={realm}, error=\"invalid_token\""),
        }
    }

    /// 401 for a request without a token: a bare challenge, no error code (RFC 6750 §3.1).
    pub(crate) fn missing(&self, detail: &str) -> PolicyResponse {
        unauthorized(&self.missing, "missing-token", detail)
    }

    /// 401 for a token that is not (or no longer) valid: `error="invalid_token"`.
    pub(crate) fn invalid(&self, detail: &str) -> PolicyResponse {
        unauthorized(&self.invalid, "invalid-token", detail)
    }
}

/// Checks that `realm` can be sent in a challenge.
pub(crate) fn check_realm(realm: &str, path: &FieldPath, errors: &mut ConfigErrors) {
    if HeaderValue::from_str(&quoted(realm)).is_err() {
        errors.push(path.key("realm"), "must be printable text without line breaks");
    }
}

#![doc = include_str!("key_auth.md")]

use std::collections::HashMap;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath, Secret};
use gantry_policy_api::identity::{quoted, unauthorized};
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, RequestParts, Stage, Validate,
};
use http::HeaderValue;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::request_credentials::CredentialSource;

/// Settings of `key_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Request header carrying the key. Looked at first.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter carrying the key, looked at when the header is absent.
    #[serde(default)]
    pub query: Option<String>,
    /// Cookie carrying the key, looked at when neither header nor query parameter has one.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Removes the key from the request before it goes upstream.
    #[serde(default = "default_hide_credentials")]
    pub hide_credentials: bool,
    /// Consumer id that stands in for requests without a key; without it they get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_header() -> String {
    "apikey".to_owned()
}

fn default_hide_credentials() -> bool {
    true
}

fn default_realm() -> String {
    "gantry".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        CredentialSource::check_names(self.query.as_deref(), self.cookie.as_deref(), path, errors);
        if HeaderValue::from_str(&quoted(&self.realm)).is_err() {
            errors.push(path.key("realm"), "must be printable text without line breaks");
        }
    }
}

/// A consumer's key for `key_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The API key. Shown as `***` by the admin API.
    pub key: Secret<String>,
}

impl Validate for Credential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.key.expose().is_empty() {
            errors.push(path.key("key"), "must not be empty");
        }
    }
}

/// Factory of the `key_auth` policy.
#[derive(Debug)]
pub struct KeyAuth;

impl PolicyFactory for KeyAuth {
    const NAME: &'static str = "key_auth";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("key_auth.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let source = CredentialSource::build(
            Some(&config.header),
            config.query.as_deref(),
            config.cookie.as_deref(),
            path,
            &mut errors,
        );
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        errors.into_result(())?;
        // Duplicates are reported once by `check_credentials`; here the first one wins.
        let mut keys = HashMap::new();
        for entry in context.consumers.credentials::<KeyAuth>() {
            keys.entry(digest(entry.credential.key.expose().as_bytes()))
                .or_insert_with(|| (entry.consumer.clone(), entry.id.clone()));
        }
        Ok(Arc::new(CompiledKeyAuth {
            source,
            hide_credentials: config.hide_credentials,
            anonymous,
            challenge: format!("Key realm={}", quoted(&config.realm)),
            keys,
        }))
    }
}

impl IdentityFactory for KeyAuth {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        let mut seen: HashMap<[u8; 32], &Arc<str>> = HashMap::new();
        for entry in credentials {
            if let Some(first) = seen.insert(digest(entry.credential.key.expose().as_bytes()), entry.id) {
                // The key itself is never repeated in the message.
                errors.push(entry.path.key("key"), format!("the same key is already the credential `{first}`"));
            }
        }
    }
}

/// SHA-256 of a key. Keys are looked up by digest, so the comparison a lookup makes reveals
/// nothing about a key's bytes (timing attacks learn, at most, a digest prefix).
fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Runs per request: one digest and one hash lookup.
struct CompiledKeyAuth {
    source: CredentialSource,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenge: String,
    keys: HashMap<[u8; 32], (Arc<Consumer>, Arc<str>)>,
}

impl Policy for CompiledKeyAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some((key, found)) = self.source.find_key(request) else {
            if let Some(anonymous) = &self.anonymous {
                exchange.authenticate(Identity::anonymous(anonymous.clone(), KeyAuth::NAME));
                return Flow::Continue.into();
            }
            return unauthorized(&self.challenge, "missing-credentials", "the request carries no API key").into();
        };
        let Some((consumer, credential_id)) = self.keys.get(&digest(&key)) else {
            tracing::debug!("API key not recognised");
            return unauthorized(&self.challenge, "invalid-credentials", "the API key is not valid").into();
        };
        exchange.authenticate(Identity::credential(consumer.clone(), credential_id.clone(), KeyAuth::NAME));
        if self.hide_credentials {
            self.source.remove(request, found);
        }
        Flow::Continue.into()
    }
}

#[cfg(test)]
mod tests;

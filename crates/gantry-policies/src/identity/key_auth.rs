#![doc = include_str!("key_auth.md")]

use std::collections::HashMap;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath, Secret};
use gantry_policy_api::identity::{quoted, unauthorized};
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, RequestParts, Stage, Validate,
};
use http::header::COOKIE;
use http::{HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
        if self.query.as_deref().is_some_and(str::is_empty) {
            errors.push(path.key("query"), "name the query parameter, or leave `query` out");
        }
        if self.cookie.as_deref().is_some_and(str::is_empty) {
            errors.push(path.key("cookie"), "name the cookie, or leave `cookie` out");
        }
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
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| errors.push(path.key("header"), format!("`{}` is not a header name", config.header)))
            .ok();
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        errors.into_result(())?;
        // Duplicates are reported once by `check_credentials`; here the first one wins.
        let mut keys = HashMap::new();
        for entry in context.consumers.credentials::<KeyAuth>() {
            keys.entry(digest(entry.credential.key.expose().as_bytes()))
                .or_insert_with(|| (entry.consumer.clone(), entry.id.clone()));
        }
        Ok(Arc::new(CompiledKeyAuth {
            header,
            query: config.query,
            cookie: config.cookie,
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
    header: Option<HeaderName>,
    query: Option<String>,
    cookie: Option<String>,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenge: String,
    keys: HashMap<[u8; 32], (Arc<Consumer>, Arc<str>)>,
}

/// Where the presented key was found, so it can be removed.
enum Found {
    Header,
    Query,
    Cookie,
}

impl CompiledKeyAuth {
    fn find_key(&self, request: &RequestParts) -> Option<(Vec<u8>, Found)> {
        if let Some(value) = self.header.as_ref().and_then(|name| request.headers.get(name)) {
            return Some((value.as_bytes().to_vec(), Found::Header));
        }
        if let Some(name) = &self.query {
            let query = request.uri.query().unwrap_or_default();
            if let Some((_, value)) = form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name) {
                return Some((value.into_owned().into_bytes(), Found::Query));
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(value) = cookies(request).find(|(key, _)| key == name).map(|(_, value)| value) {
                return Some((value.as_bytes().to_vec(), Found::Cookie));
            }
        }
        None
    }

    fn remove_key(&self, request: &mut RequestParts, found: Found) {
        match found {
            Found::Header => {
                if let Some(name) = &self.header {
                    request.headers.remove(name);
                }
            }
            Found::Query => {
                if let Some(name) = &self.query {
                    remove_query_parameter(request, name);
                }
            }
            Found::Cookie => {
                if let Some(name) = &self.cookie {
                    remove_cookie(request, name);
                }
            }
        }
    }
}

impl Policy for CompiledKeyAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some((key, found)) = self.find_key(request) else {
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
            self.remove_key(request, found);
        }
        Flow::Continue.into()
    }
}

/// `name=value` pairs of every `Cookie` header (RFC 6265 §5.4: pairs are separated by `; `).
fn cookies(request: &RequestParts) -> impl Iterator<Item = (&str, &str)> {
    request
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

fn remove_cookie(request: &mut RequestParts, name: &str) {
    let kept: Vec<String> =
        cookies(request).filter(|(key, _)| *key != name).map(|(key, value)| format!("{key}={value}")).collect();
    request.headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            request.headers.insert(COOKIE, value);
        }
    }
}

fn remove_query_parameter(request: &mut RequestParts, name: &str) {
    let Some(query) = request.uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            form_urlencoded::parse(key.as_bytes()).next().is_none_or(|(decoded, _)| decoded != name)
        })
        .collect();
    let path = request.uri.path();
    let path_and_query = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = request.uri.clone().into_parts();
    // The kept pairs are a subset of a query that was valid, so this parses; if it did not,
    // the key would stay, which the upstream tolerates better than a broken URI.
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            request.uri = uri;
        }
    }
}

#[cfg(test)]
mod tests;

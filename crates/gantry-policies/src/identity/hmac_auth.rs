#![doc = include_str!("hmac_auth.md")]

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use gantry_config::{ConfigErrors, Duration, FieldPath, Secret};
use gantry_policy_api::identity::{quoted, unauthorized};
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, DATE, HOST};
use http::{HeaderName, HeaderValue};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

/// Settings of `hmac_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Algorithms a client may sign with.
    #[serde(default = "default_allowed_algorithms")]
    pub allowed_algorithms: Vec<Algorithm>,
    /// How far the request's `Date` header may be from the gateway's clock, either way.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: Duration,
    /// Entries the signature's `headers` list must contain: header names, and
    /// `@request-target` for the method, path and query.
    #[serde(default = "default_signed_headers")]
    pub signed_headers: Vec<String>,
    /// Refuses a signature that was already accepted within the clock-skew window.
    #[serde(default = "default_reject_replays")]
    pub reject_replays: bool,
    /// Removes the `Authorization` header before the request goes upstream.
    #[serde(default = "default_hide_credentials")]
    pub hide_credentials: bool,
    /// Consumer id that stands in for requests without a signature; without it they get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// An HMAC algorithm, named as in the signature's `algorithm` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum Algorithm {
    /// HMAC with SHA-1: still unbroken as a MAC, allowed only for old clients.
    #[serde(rename = "hmac-sha1")]
    HmacSha1,
    /// HMAC with SHA-256.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// HMAC with SHA-512.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl Algorithm {
    const ALL: [Algorithm; 3] = [Algorithm::HmacSha1, Algorithm::HmacSha256, Algorithm::HmacSha512];

    fn name(self) -> &'static str {
        match self {
            Self::HmacSha1 => "hmac-sha1",
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    /// Whether `signature` is the HMAC of `message` under `secret`, compared in constant time
    /// by the `hmac` crate.
    fn verifies(self, secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
        fn verify<M: Mac + hmac::digest::KeyInit>(secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
            let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else { return false };
            mac.update(message);
            mac.verify_slice(signature).is_ok()
        }
        match self {
            Self::HmacSha1 => verify::<Hmac<sha1::Sha1>>(secret, message, signature),
            Self::HmacSha256 => verify::<Hmac<Sha256>>(secret, message, signature),
            Self::HmacSha512 => verify::<Hmac<Sha512>>(secret, message, signature),
        }
    }
}

fn default_allowed_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::HmacSha256, Algorithm::HmacSha512]
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(300)
}

fn default_signed_headers() -> Vec<String> {
    vec![REQUEST_TARGET.to_owned(), "date".to_owned()]
}

fn default_reject_replays() -> bool {
    true
}

fn default_hide_credentials() -> bool {
    true
}

fn default_realm() -> String {
    "gantry".to_owned()
}

/// The pseudo-header standing for the request line in a signature's `headers` list.
const REQUEST_TARGET: &str = "@request-target";

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.allowed_algorithms.is_empty() {
            errors.push(path.key("allowed_algorithms"), "allow at least one algorithm");
        }
        if self.clock_skew.get() < std::time::Duration::from_secs(1) {
            // `Date` has a resolution of one second (RFC 9110 §5.6.7).
            errors.push(path.key("clock_skew"), "must be at least 1s: a Date header counts whole seconds");
        }
        if HeaderValue::from_str(&quoted(&self.realm)).is_err() {
            errors.push(path.key("realm"), "must be printable text without line breaks");
        }
    }
}

/// A consumer's key for `hmac_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The `keyId` clients name in their signature. Two consumers cannot share one.
    pub key_id: String,
    /// The shared secret the HMAC is keyed with. Shown as `***` by the admin API.
    pub secret: Secret<String>,
}

impl Validate for Credential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.key_id.is_empty() {
            errors.push(path.key("key_id"), "must not be empty");
        } else if self.key_id.chars().any(|c| c == '"' || c.is_control()) {
            // It travels inside a quoted parameter, which cannot hold these.
            errors.push(path.key("key_id"), "must not contain `\"` or control characters");
        }
        if self.secret.expose().is_empty() {
            errors.push(path.key("secret"), "must not be empty");
        }
    }
}

/// Factory of the `hmac_auth` policy.
#[derive(Debug)]
pub struct HmacAuth;

impl PolicyFactory for HmacAuth {
    const NAME: &'static str = "hmac_auth";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("hmac_auth.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut required = Vec::new();
        for (index, entry) in config.signed_headers.iter().enumerate() {
            let entry = entry.to_ascii_lowercase();
            if entry != REQUEST_TARGET && HeaderName::from_bytes(entry.as_bytes()).is_err() {
                errors.push(
                    path.key("signed_headers").index(index),
                    format!("`{entry}` is neither a header name nor `{REQUEST_TARGET}`"),
                );
            }
            required.push(entry);
        }
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        errors.into_result(())?;
        // Duplicates are reported once by `check_credentials`; here the first one wins.
        let mut keys = HashMap::new();
        for entry in context.consumers.credentials::<HmacAuth>() {
            keys.entry(entry.credential.key_id.clone()).or_insert_with(|| Key {
                consumer: entry.consumer.clone(),
                credential_id: entry.id.clone(),
                secret: entry.credential.secret.expose().as_bytes().into(),
            });
        }
        let clock_skew = config.clock_skew.get();
        // A signature dated up to `clock_skew` ahead stays acceptable until `clock_skew` after
        // its date, so it must be remembered twice that long. LRU rather than moka's default
        // admission policy, which may decline to store a new entry: every accepted signature
        // must be remembered.
        let replays = config.reject_replays.then(|| {
            Cache::builder()
                .max_capacity(REMEMBERED_SIGNATURES)
                .time_to_live(clock_skew.saturating_mul(2))
                .eviction_policy(EvictionPolicy::lru())
                .build()
        });
        let mut challenge = format!("Signature realm={}", quoted(&config.realm));
        if !required.is_empty() {
            challenge.push_str(&format!(",headers=\"{}\"", required.join(" ")));
        }
        Ok(Arc::new(CompiledHmacAuth {
            keys,
            allowed_algorithms: config.allowed_algorithms,
            clock_skew,
            required,
            replays,
            hide_credentials: config.hide_credentials,
            anonymous,
            challenge,
        }))
    }
}

impl IdentityFactory for HmacAuth {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        let mut seen: HashMap<&str, &Arc<str>> = HashMap::new();
        for entry in credentials {
            match seen.entry(&entry.credential.key_id) {
                Entry::Occupied(first) => errors.push(
                    entry.path.key("key_id"),
                    format!("the key id `{}` is already the credential `{}`", entry.credential.key_id, first.get()),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(entry.id);
                }
            }
        }
    }
}

/// Accepted signatures remembered per policy instance (about 100 bytes each). When full, the
/// oldest are forgotten first, and only those could be replayed.
const REMEMBERED_SIGNATURES: u64 = 100_000;

/// A key id's consumer and secret.
struct Key {
    consumer: Arc<Consumer>,
    credential_id: Arc<str>,
    secret: Box<[u8]>,
}

/// The parameters of an `Authorization: Signature ...` header.
#[derive(Debug, Default, PartialEq, Eq)]
struct SignatureParams<'a> {
    key_id: &'a str,
    algorithm: &'a str,
    /// Lower-cased entries of the `headers` parameter, in order.
    headers: Vec<String>,
    signature: &'a str,
}

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    /// No header, or another scheme.
    Nothing,
    /// A `Signature` header whose parameters cannot be read.
    Malformed,
    Signature(SignatureParams<'a>),
}

/// Reads `Signature keyId="...",algorithm="...",headers="...",signature="..."`
/// (draft-cavage-http-signatures-12 §4.1): comma-separated `name="value"` pairs whose values
/// hold no `"`. Unknown parameters are ignored, a repeated one is malformed.
fn presented(request: &RequestParts) -> Presented<'_> {
    let Some(value) = request.headers.get(AUTHORIZATION) else { return Presented::Nothing };
    let bytes = value.as_bytes();
    let scheme = bytes.split(|&byte| byte == b' ').next().unwrap_or_default();
    if !scheme.eq_ignore_ascii_case(b"signature") {
        return Presented::Nothing;
    }
    // Parameters are ASCII (draft-cavage §4.1); anything else cannot be a signature.
    let Ok(value) = value.to_str() else { return Presented::Malformed };
    let mut rest = value.get(scheme.len()..).unwrap_or_default();
    let (mut key_id, mut algorithm, mut headers, mut signature) = (None, None, None, None);
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let Some((name, after)) = rest.split_once('=') else { return Presented::Malformed };
        let Some(after) = after.strip_prefix('"') else { return Presented::Malformed };
        let Some((value, after)) = after.split_once('"') else { return Presented::Malformed };
        rest = after;
        let slot = match name.trim() {
            "keyId" => &mut key_id,
            "algorithm" => &mut algorithm,
            "headers" => &mut headers,
            "signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Presented::Malformed;
        }
    }
    let (Some(key_id), Some(algorithm), Some(signature)) = (key_id, algorithm, signature) else {
        return Presented::Malformed;
    };
    let headers = headers.unwrap_or_default().split_ascii_whitespace().map(str::to_ascii_lowercase).collect();
    Presented::Signature(SignatureParams { key_id, algorithm, headers, signature })
}

/// The signing string, as APISIX 3.x builds it: the key id, then one line per entry of
/// `headers`, in their order: `METHOD /path?query` for `@request-target`, `name: value` for a
/// header (several values joined by `, `, draft-cavage §2.3), every line ending in `\n`.
/// `None` when the request lacks a header the list names.
fn signing_string(params: &SignatureParams<'_>, request: &RequestParts) -> Option<Vec<u8>> {
    let mut text = Vec::with_capacity(256);
    text.extend_from_slice(params.key_id.as_bytes());
    text.push(b'\n');
    for entry in &params.headers {
        if entry == REQUEST_TARGET {
            text.extend_from_slice(request.method.as_str().as_bytes());
            text.push(b' ');
            text.extend_from_slice(request.uri.path_and_query().map_or("/", |target| target.as_str()).as_bytes());
        } else {
            text.extend_from_slice(entry.as_bytes());
            text.extend_from_slice(b": ");
            let mut values = request.headers.get_all(entry.as_str()).iter();
            match values.next() {
                Some(first) => {
                    text.extend_from_slice(first.as_bytes());
                    for value in values {
                        text.extend_from_slice(b", ");
                        text.extend_from_slice(value.as_bytes());
                    }
                }
                // HTTP/2 carries the host as `:authority`, which is no header.
                None if entry == HOST.as_str() => text.extend_from_slice(request.uri.authority()?.as_str().as_bytes()),
                None => return None,
            }
        }
        text.push(b'\n');
    }
    Some(text)
}

/// Runs per request: parses one header, one hash lookup, one HMAC over a few hundred bytes and,
/// for replay protection, one cache insert. Nothing waits.
struct CompiledHmacAuth {
    keys: HashMap<String, Key>,
    allowed_algorithms: Vec<Algorithm>,
    clock_skew: std::time::Duration,
    /// Lower-cased entries every signature must cover.
    required: Vec<String>,
    /// Digests of accepted signatures, remembered for twice the clock skew.
    replays: Option<Cache<[u8; 32], ()>>,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenge: String,
}

/// Why a signature is refused: the problem type and its detail.
struct Refusal {
    code: &'static str,
    detail: Cow<'static, str>,
}

fn refuse(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Refusal {
    Refusal { code, detail: detail.into() }
}

impl CompiledHmacAuth {
    fn answer(&self, refusal: &Refusal) -> PolicyResponse {
        tracing::debug!(code = refusal.code, "HTTP signature refused");
        unauthorized(&self.challenge, refusal.code, &refusal.detail)
    }

    /// Checks a presented signature.
    fn check(&self, params: &SignatureParams<'_>, request: &RequestParts) -> Result<&Key, Refusal> {
        let algorithm = Algorithm::ALL
            .into_iter()
            .find(|known| known.name() == params.algorithm)
            .filter(|known| self.allowed_algorithms.contains(known))
            .ok_or_else(|| {
                let allowed: Vec<&str> = self.allowed_algorithms.iter().map(|known| known.name()).collect();
                refuse(
                    "invalid-credentials",
                    format!("the signature's algorithm is not allowed here; use one of {}", allowed.join(", ")),
                )
            })?;
        if let Some(missing) = self.required.iter().find(|entry| !params.headers.contains(entry)) {
            return Err(refuse("invalid-credentials", format!("the signature must cover `{missing}`")));
        }
        self.check_date(request)?;
        let invalid = || refuse("invalid-credentials", "the signature is not valid");
        let key = self.keys.get(params.key_id).ok_or_else(invalid)?;
        let signature = base64::engine::general_purpose::STANDARD.decode(params.signature).map_err(|_| invalid())?;
        let message = signing_string(params, request)
            .ok_or_else(|| refuse("invalid-credentials", "the request lacks a header the signature covers"))?;
        if !algorithm.verifies(&key.secret, &message, &signature) {
            return Err(invalid());
        }
        if let Some(replays) = &self.replays {
            // Only verified signatures are remembered, so nobody can block a client's request
            // by sending its signature first with a broken one.
            let digest: [u8; 32] = Sha256::digest(&signature).into();
            if !replays.entry(digest).or_insert(()).is_fresh() {
                return Err(refuse("replayed-signature", "this signature was already used; sign each request anew"));
            }
        }
        Ok(key)
    }

    fn check_date(&self, request: &RequestParts) -> Result<(), Refusal> {
        let Some(date) = request.headers.get(DATE) else {
            return Err(refuse("invalid-date", "the request has no Date header"));
        };
        let Some(date) = date.to_str().ok().and_then(|date| httpdate::parse_http_date(date).ok()) else {
            return Err(refuse("invalid-date", "the Date header is not an HTTP date"));
        };
        let now = SystemTime::now();
        let skew = match now.duration_since(date) {
            Ok(behind) => behind,
            Err(ahead) => ahead.duration(),
        };
        if skew > self.clock_skew {
            return Err(refuse(
                "invalid-date",
                format!("the Date header is more than {} away from the gateway's clock", Duration(self.clock_skew)),
            ));
        }
        Ok(())
    }
}

impl Policy for CompiledHmacAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let params = match presented(request) {
            Presented::Signature(params) => params,
            Presented::Malformed => {
                return self.answer(&refuse("invalid-credentials", "the Signature credentials are malformed")).into();
            }
            Presented::Nothing => {
                if let Some(anonymous) = &self.anonymous {
                    exchange.authenticate(Identity::anonymous(anonymous.clone(), HmacAuth::NAME));
                    return Flow::Continue.into();
                }
                return unauthorized(&self.challenge, "missing-credentials", "the request carries no HTTP signature")
                    .into();
            }
        };
        let key = match self.check(&params, request) {
            Ok(key) => key,
            Err(refusal) => return self.answer(&refusal).into(),
        };
        exchange.authenticate(Identity::credential(key.consumer.clone(), key.credential_id.clone(), HmacAuth::NAME));
        if self.hide_credentials {
            request.headers.remove(AUTHORIZATION);
        }
        Flow::Continue.into()
    }
}

#[cfg(test)]
mod tests;

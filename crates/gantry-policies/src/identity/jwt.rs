#![doc = include_str!("jwt.md")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use gantry_config::{ConfigErrors, Duration, FieldPath, Secret};
use gantry_policy_api::identity::{forbidden, quoted, unauthorized};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::identity::jwks::{install_crypto_provider, JwksCache, JwksError, JwksSettings, KeySet, VerifyingKey};
use crate::identity::request_credentials::{bearer_or_bare_token, bearer_token, CredentialSource, Found};
use crate::identity::verified_tokens::{numeric_date, CacheConfig, TokenDigest, Validity, VerifiedTokens};

mod claims;

use claims::ClaimNames;

/// Settings of `jwt`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Signature algorithms accepted; a token signed with another is refused. `none` is never
    /// accepted. By default every asymmetric algorithm; HMAC ones must be listed.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Verification keys written in the configuration. Give `keys` or `jwks_url`.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// URL of a JSON Web Key Set (RFC 7517) to verify with, fetched and cached.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Age after which a used key set is refreshed, in the background.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches of the key set, also when tokens name an unknown `kid`.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: Duration,
    /// Longest a fetch of the key set may take.
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout: Duration,
    /// Accepted issuers; when given, a token's `iss` must be one of them.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences; when given, a token's `aud` must name at least one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Refuses tokens without an expiry time (`exp`).
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Checks the expiry time of tokens that have one; off only for fixed test tokens.
    #[serde(default = "yes")]
    pub verify_exp: bool,
    /// Clock skew allowed when checking `exp` and `nbf`, at most one hour.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Claims a token must have, with a value other than `null`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Request header carrying the token: `Bearer <token>` in `Authorization`, the bare token
    /// in another header. Looked at first.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter carrying the token, looked at when the header has none.
    #[serde(default)]
    pub query: Option<String>,
    /// Cookie carrying the token, looked at when neither header nor query parameter has one.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Removes the token from the request before it goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// Claim whose value names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Claim listing the groups of a consumer that is not configured here.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Refuses (403) tokens whose consumer claim matches no consumer's `jwt` credential.
    #[serde(default)]
    pub require_consumer: bool,
    /// Claims sent upstream as request headers: claim name to header name. A client's own
    /// header of such a name is always removed.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Consumer id that stands in for requests without a token; without it they get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified tokens remembered, so that a token presented again skips the signature check.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// A signature algorithm (RFC 7518 §3, RFC 8037 §3.1).
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// The algorithm as jsonwebtoken names it.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::HS256 => Algorithm::HS256,
            Self::HS384 => Algorithm::HS384,
            Self::HS512 => Algorithm::HS512,
            Self::RS256 => Algorithm::RS256,
            Self::RS384 => Algorithm::RS384,
            Self::RS512 => Algorithm::RS512,
            Self::PS256 => Algorithm::PS256,
            Self::PS384 => Algorithm::PS384,
            Self::PS512 => Algorithm::PS512,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }

    fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

/// One verification key written in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Key id, matched against a token's `kid` header. A key without one matches any token.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm the key verifies.
    pub alg: JwtAlgorithm,
    /// The shared secret of an `HS*` key. Shown as `***` by the admin API.
    #[serde(default)]
    pub secret: Option<Secret<String>>,
    /// Whether `secret` is written in base64 (standard or URL-safe alphabet).
    #[serde(default)]
    pub base64_secret: bool,
    /// The public key of an RSA, ECDSA or EdDSA key, in PEM (`-----BEGIN PUBLIC KEY-----`).
    #[serde(default)]
    pub public_key: Option<String>,
    /// The public key of an RSA, ECDSA or EdDSA key, as a JSON Web Key (RFC 7517).
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    use JwtAlgorithm::*;
    vec![RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(10)
}

fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Between APISIX's 0 and Envoy's 60 seconds: enough for the clocks of a signer and a gateway
/// that both run NTP, short enough not to matter for tokens that live minutes.
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_header() -> String {
    "authorization".to_owned()
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

fn default_realm() -> String {
    "gantry".to_owned()
}

fn yes() -> bool {
    true
}

const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Headers a claim may not be sent as: they frame or route the request.
const RESERVED_HEADERS: [&str; 7] =
    ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "authorization"];

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        match (self.keys.is_empty(), &self.jwks_url) {
            (true, None) => errors.push(path.clone(), "give the verification `keys` or a `jwks_url`"),
            (false, Some(_)) => errors.push(path.key("jwks_url"), "give either `keys` or `jwks_url`, not both"),
            _ => {}
        }
        if self.algorithms.is_empty() {
            errors.push(path.key("algorithms"), "list at least one algorithm");
        }
        let mut kids = HashSet::new();
        for (index, key) in self.keys.iter().enumerate() {
            let at = path.key("keys").index(index);
            key.validate(&at, errors);
            if !self.algorithms.contains(&key.alg) {
                errors.push(at.key("alg"), format!("`{:?}` is not one of the `algorithms`", key.alg));
            }
            if let Some(kid) = &key.kid {
                if !kids.insert(kid) {
                    errors.push(at.key("kid"), format!("another key has the kid `{kid}`"));
                }
            }
        }
        if self.jwks_min_refresh > self.jwks_refresh {
            errors.push(path.key("jwks_min_refresh"), "must not be longer than `jwks_refresh`");
        }
        if self.jwks_timeout.get().is_zero() {
            errors.push(path.key("jwks_timeout"), "must be longer than zero");
        }
        if self.leeway.get() > MAX_LEEWAY {
            errors.push(path.key("leeway"), "must be at most 1h");
        }
        if self.require_exp && !self.verify_exp {
            errors.push(path.key("verify_exp"), "an `exp` that is required is also checked: set `require_exp: false`");
        }
        if self.consumer_claim.is_empty() {
            errors.push(path.key("consumer_claim"), "name the claim");
        }
        if self.groups_claim.as_deref().is_some_and(str::is_empty) {
            errors.push(path.key("groups_claim"), "name the claim, or leave `groups_claim` out");
        }
        for (index, claim) in self.required_claims.iter().enumerate() {
            if claim.is_empty() {
                errors.push(path.key("required_claims").index(index), "name the claim");
            }
        }
        CredentialSource::check_names(self.query.as_deref(), self.cookie.as_deref(), path, errors);
        if HeaderValue::from_str(&quoted(&self.realm)).is_err() {
            errors.push(path.key("realm"), "must be printable text without line breaks");
        }
        self.cache.validate(&path.key("cache"), errors);
    }
}

impl Validate for KeySpec {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let given = [self.secret.is_some(), self.public_key.is_some(), self.jwk.is_some()];
        match given.iter().filter(|&&is_given| is_given).count() {
            0 if self.alg.is_hmac() => errors.push(path.clone(), "give the `secret`"),
            0 => errors.push(path.clone(), "give the `public_key` (PEM) or the `jwk`"),
            1 => {}
            _ => errors.push(path.clone(), "give only one of `secret`, `public_key` and `jwk`"),
        }
        // The key type must match the algorithm: an RSA public key used as an HMAC secret
        // would let anyone who has it sign tokens.
        if self.alg.is_hmac() {
            for (field, is_given) in [("public_key", self.public_key.is_some()), ("jwk", self.jwk.is_some())] {
                if is_given {
                    errors.push(path.key(field), format!("`{:?}` verifies with a shared `secret`", self.alg));
                }
            }
        } else if self.secret.is_some() {
            errors.push(path.key("secret"), format!("`{:?}` verifies with a `public_key` or `jwk`", self.alg));
        }
        if self.base64_secret && self.secret.is_none() {
            errors.push(path.key("base64_secret"), "there is no `secret` to decode");
        }
        if self.kid.as_deref().is_some_and(str::is_empty) {
            errors.push(path.key("kid"), "must not be empty");
        }
    }
}

/// A consumer's token subject for `jwt`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The value of the policy's `consumer_claim` (by default `sub`) in this consumer's tokens.
    pub subject: String,
}

impl Validate for Credential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.subject.is_empty() {
            errors.push(path.key("subject"), "must not be empty");
        }
    }
}

/// Factory of the `jwt` policy.
#[derive(Debug)]
pub struct Jwt;

impl PolicyFactory for Jwt {
    const NAME: &'static str = "jwt";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("jwt.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        install_crypto_provider();
        let mut errors = ConfigErrors::default();
        let source = CredentialSource::build(
            Some(&config.header),
            config.query.as_deref(),
            config.cookie.as_deref(),
            path,
            &mut errors,
        );
        let keys = build_keys(&config, path, &mut errors);
        let claim_headers = build_claim_headers(&config.claims_to_headers, &path.key("claims_to_headers"), &mut errors);
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        errors.into_result(())?;
        let Some(keys) = keys else {
            // Whatever kept them from being built was reported by `validate`.
            return Err(ConfigErrors::default());
        };
        if let Keys::Jwks(cache) = &keys {
            cache.prefetch();
        }

        let validations =
            config.algorithms.iter().map(|alg| (alg.algorithm(), validation(alg.algorithm(), &config))).collect();
        let mut names = ClaimNames::default();
        let consumer_slot = names.slot(&config.consumer_claim);
        let groups_slot = config.groups_claim.as_deref().map(|claim| names.slot(claim));
        let scope_slots = [names.slot("scope"), names.slot("scp")];
        let time_slots = TimeSlots { exp: config.verify_exp.then(|| names.slot("exp")), nbf: names.slot("nbf") };
        let required = config
            .required_claims
            .iter()
            .map(|claim| (names.slot(claim), format!("the token lacks the required claim `{claim}`")))
            .collect();
        let claim_headers = claim_headers.into_iter().map(|(claim, header)| (names.slot(&claim), header)).collect();

        // Duplicates are reported once by `check_credentials`; here the first one wins.
        let mut subjects = HashMap::new();
        for entry in context.consumers.credentials::<Jwt>() {
            subjects
                .entry(Box::<str>::from(entry.credential.subject.as_str()))
                .or_insert_with(|| (entry.consumer.clone(), entry.id.clone()));
        }
        let consumer_claim = &config.consumer_claim;
        Ok(Arc::new(CompiledJwt {
            // `Authorization` holds credentials of other schemes too; other headers may hold
            // the bare token.
            read_header: if source.header() == Some(&AUTHORIZATION) { bearer_token } else { bearer_or_bare_token },
            source,
            keys,
            validations,
            names,
            consumer_slot,
            groups_slot,
            scope_slots,
            time_slots,
            required,
            claim_headers,
            no_subject: format!("the token lacks the `{consumer_claim}` claim naming its consumer"),
            subjects,
            require_consumer: config.require_consumer,
            hide_credentials: config.hide_credentials,
            anonymous,
            challenge: format!("Bearer realm={}", quoted(&config.realm)),
            retry_after: HeaderValue::from(config.jwks_min_refresh.get().as_secs().max(1)),
            no_scopes: Arc::new([]),
            tokens: VerifiedTokens::new(&config.cache, config.leeway.get().as_secs()),
        }))
    }
}

impl IdentityFactory for Jwt {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        let mut seen: HashMap<&str, &Arc<str>> = HashMap::new();
        for entry in credentials {
            if let Some(first) = seen.insert(&entry.credential.subject, entry.id) {
                errors.push(entry.path.key("subject"), format!("the same subject is already the credential `{first}`"));
            }
        }
    }
}

/// The checks jsonwebtoken makes after the signature, for tokens signed with `alg`. One per
/// algorithm: jsonwebtoken wants every algorithm of a `Validation` to match the key's family.
fn validation(alg: Algorithm, config: &Config) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway.get().as_secs();
    validation.validate_exp = config.verify_exp;
    validation.validate_nbf = true;
    validation.required_spec_claims.clear();
    if config.require_exp {
        validation.required_spec_claims.insert("exp".to_owned());
    }
    if !config.issuers.is_empty() {
        validation.set_issuer(&config.issuers);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    if config.audiences.is_empty() {
        // Otherwise jsonwebtoken refuses every token that has an `aud`.
        validation.validate_aud = false;
    } else {
        validation.set_audience(&config.audiences);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    validation
}

fn build_keys(config: &Config, path: &FieldPath, errors: &mut ConfigErrors) -> Option<Keys> {
    if let Some(url) = &config.jwks_url {
        if !config.keys.is_empty() {
            return None;
        }
        let settings = JwksSettings {
            refresh: config.jwks_refresh.get(),
            min_refresh: config.jwks_min_refresh.get(),
            timeout: config.jwks_timeout.get(),
        };
        return JwksCache::shared(url, settings)
            .map(Keys::Jwks)
            .map_err(|err| errors.push(path.key("jwks_url"), err.to_string()))
            .ok();
    }
    let mut keys = Vec::with_capacity(config.keys.len());
    for (index, spec) in config.keys.iter().enumerate() {
        let at = path.key("keys").index(index);
        let alg = spec.alg.algorithm();
        let kid = spec.kid.as_deref();
        // Combinations `validate` refuses are left out here, so each problem is told once.
        let built = match (&spec.secret, &spec.public_key, &spec.jwk) {
            (Some(secret), None, None) if spec.alg.is_hmac() => secret_bytes(secret, spec.base64_secret)
                .and_then(|bytes| VerifyingKey::from_secret(kid, alg, &bytes).map_err(|err| err.to_string()))
                .map_err(|message| (at.key("secret"), message)),
            (None, Some(pem), None) if !spec.alg.is_hmac() => {
                VerifyingKey::from_pem(kid, alg, pem).map_err(|err| (at.key("public_key"), err.to_string()))
            }
            (None, None, Some(jwk)) if !spec.alg.is_hmac() => {
                inline_jwk(jwk, kid, alg).map_err(|message| (at.key("jwk"), message))
            }
            _ => continue,
        };
        match built {
            Ok(key) => keys.push(key),
            Err((at, message)) => errors.push(at, message),
        }
    }
    Some(Keys::Inline(KeySet::new(keys)))
}

/// The bytes of an HMAC secret; the messages never contain the secret.
fn secret_bytes(secret: &Secret<String>, is_base64: bool) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let text = secret.expose();
    if !is_base64 {
        return Ok(text.as_bytes().to_vec());
    }
    let url_safe: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(url_safe)
        .map_err(|_| "is not valid base64 (`base64_secret` is set)".to_owned())
}

fn inline_jwk(jwk: &serde_json::Value, kid: Option<&str>, alg: Algorithm) -> Result<VerifyingKey, String> {
    if jwk.get("d").is_some() {
        return Err("holds a private key: give only the public members".to_owned());
    }
    if jwk.get("kty").and_then(serde_json::Value::as_str) == Some("oct") {
        return Err("an `oct` key is a secret: give it as `secret`".to_owned());
    }
    let parsed: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|err| format!("is not a JSON Web Key: {err}"))?;
    VerifyingKey::from_jwk(&parsed).and_then(|key| key.restricted(kid, alg)).map_err(|err| err.to_string())
}

fn build_claim_headers(
    mapping: &BTreeMap<String, String>,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Vec<(String, HeaderName)> {
    let mut headers: Vec<(String, HeaderName)> = Vec::with_capacity(mapping.len());
    for (claim, header) in mapping {
        let at = path.key(claim);
        if claim.is_empty() {
            errors.push(at, "name the claim");
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(header.as_bytes()) else {
            errors.push(at, format!("`{header}` is not a header name"));
            continue;
        };
        if RESERVED_HEADERS.contains(&name.as_str()) {
            errors.push(at, format!("`{name}` frames or routes the request; choose another header"));
        } else if let Some((other, _)) = headers.iter().find(|(_, own)| *own == name) {
            errors.push(at, format!("the claim `{other}` is already sent as `{name}`"));
        } else {
            headers.push((claim.clone(), name));
        }
    }
    headers
}

/// Where the verification keys come from.
enum Keys {
    Inline(KeySet),
    Jwks(JwksCache),
}

/// Runs per request. Keys were parsed when built or fetched; a request decodes the header,
/// verifies with the matching key (no lock, no wait, unless a key set must be fetched), and
/// reads only the claims the settings name, in place.
struct CompiledJwt {
    source: CredentialSource,
    /// How the token is read from the source's header.
    read_header: fn(&HeaderValue) -> Option<&str>,
    keys: Keys,
    validations: Vec<(Algorithm, Validation)>,
    names: ClaimNames,
    consumer_slot: usize,
    groups_slot: Option<usize>,
    scope_slots: [usize; 2],
    time_slots: TimeSlots,
    /// Slots of the required claims, with the detail of their absence.
    required: Vec<(usize, String)>,
    /// Slots of claims sent upstream, with their header.
    claim_headers: Vec<(usize, HeaderName)>,
    no_subject: String,
    subjects: HashMap<Box<str>, (Arc<Consumer>, Arc<str>)>,
    require_consumer: bool,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenge: String,
    retry_after: HeaderValue,
    no_scopes: Arc<[String]>,
    /// Tokens verified before, unless the cache is turned off.
    tokens: Option<VerifiedTokens<Verified>>,
}

/// Slots of the time claims a cached result must still satisfy.
struct TimeSlots {
    /// `exp`, unless `verify_exp` is off.
    exp: Option<usize>,
    nbf: usize,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal<'a> {
    /// No token: 401 with a bare challenge (RFC 6750 §3.1).
    Missing,
    /// A token that fails a check: 401 `invalid_token`, with which check failed.
    Invalid(&'a str),
    /// A valid token of a subject no consumer has, with `require_consumer`: 403.
    UnknownConsumer,
    /// No key set could be fetched yet: 503, the token may well be fine.
    KeysUnavailable,
}

/// What a verified token says, ready to be applied to the request.
struct Verified {
    identity: Identity,
    /// Values for `claim_headers`, by position.
    headers: Vec<(usize, HeaderValue)>,
    /// How long this holds, for the cache.
    validity: Validity,
}

const MALFORMED: &str = "the token is not a well-formed signed JWT";
const NO_KEY: &str = "no verification key matches the token's kid and alg";

impl CompiledJwt {
    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations.iter().find(|(own, _)| *own == alg).map(|(_, validation)| validation)
    }

    /// Checks everything that needs no key: the header's shape, algorithm and extensions.
    fn header<'s>(&'s self, token: &str) -> Result<(Header, &'s Validation), Refusal<'static>> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid(MALFORMED))?;
        let validation =
            self.validation(header.alg).ok_or(Refusal::Invalid("the token's signing algorithm is not accepted"))?;
        // RFC 7515 §4.1.11: extensions listed as critical must be understood, and none are.
        if header.crit.is_some() {
            return Err(Refusal::Invalid("the token has critical header parameters that are not supported"));
        }
        Ok((header, validation))
    }

    /// Verifies `token` with the keys of `keys` that match its header, then reads its claims.
    fn verify(
        &self,
        token: &str,
        header: &Header,
        validation: &Validation,
        keys: &KeySet,
    ) -> Result<Arc<Verified>, Refusal<'_>> {
        let mut refusal = Refusal::Invalid(NO_KEY);
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<Box<RawValue>>(token, key.decoding_key(), validation) {
                Ok(data) => return self.read_claims(&data.claims).map(Arc::new),
                // Another key without a `kid` may still match.
                Err(err) if *err.kind() == ErrorKind::InvalidSignature => {
                    refusal = Refusal::Invalid("the token's signature is not valid");
                }
                // The claims checks come after the signature, so they hold for any key.
                Err(err) => return Err(Refusal::Invalid(failed_check(err.kind()))),
            }
        }
        Err(refusal)
    }

    fn read_claims(&self, claims: &RawValue) -> Result<Verified, Refusal<'_>> {
        let slots =
            self.names.read(claims.get()).map_err(|_| Refusal::Invalid("the token's claims are not a JSON object"))?;
        for (slot, detail) in &self.required {
            if !claims::is_present(slots[*slot]) {
                return Err(Refusal::Invalid(detail));
            }
        }
        let subject = slots[self.consumer_slot]
            .and_then(claims::text)
            .filter(|subject| !subject.is_empty())
            .ok_or(Refusal::Invalid(&self.no_subject))?;
        let mut scopes = Vec::new();
        for slot in self.scope_slots {
            if let Some(raw) = slots[slot] {
                claims::add_scopes(raw, &mut scopes);
            }
        }
        let scopes = if scopes.is_empty() { self.no_scopes.clone() } else { scopes.into() };
        let mut identity = match self.subjects.get(&*subject) {
            Some((consumer, credential_id)) => Identity::credential(consumer.clone(), credential_id.clone(), Jwt::NAME),
            None if self.require_consumer => return Err(Refusal::UnknownConsumer),
            None => {
                let groups = self.groups_slot.and_then(|slot| slots[slot]).map(claims::strings).unwrap_or_default();
                let consumer = Arc::new(Consumer { id: subject.into(), groups: groups.into() });
                Identity::credential(consumer.clone(), consumer.id.clone(), Jwt::NAME)
            }
        };
        identity.scopes = scopes;
        let headers = self
            .claim_headers
            .iter()
            .enumerate()
            .filter_map(|(position, (slot, _))| Some((position, slots[*slot].and_then(claims::header_value)?)))
            .collect();
        // jsonwebtoken has checked both (when present, and `exp` when `verify_exp` is on), so
        // they parse; a value it would not read is left out here too.
        let date = |slot: usize| slots[slot].and_then(|raw| numeric_date(raw.get()));
        let validity = Validity { not_before: date(self.time_slots.nbf), expires: self.time_slots.exp.and_then(date) };
        Ok(Verified { identity, headers, validity })
    }

    /// The result remembered for `token` if it was verified with the key set in use.
    fn cached(&self, token: Option<&TokenDigest>) -> Option<Arc<Verified>> {
        let (tokens, token) = (self.tokens.as_ref()?, token?);
        let generation = match &self.keys {
            Keys::Inline(keys) => keys.generation(),
            Keys::Jwks(cache) => cache.generation()?,
        };
        tokens.get(token, generation)
    }

    /// Remembers a successful outcome of verifying `token` with the key set of `generation`.
    fn remember<'s>(
        &self,
        token: Option<TokenDigest>,
        generation: u64,
        outcome: Result<Arc<Verified>, Refusal<'s>>,
    ) -> Result<Arc<Verified>, Refusal<'s>> {
        if let (Some(tokens), Some(token), Ok(verified)) = (&self.tokens, token, &outcome) {
            tokens.insert(token, generation, verified.validity, verified.clone());
        }
        outcome
    }

    /// Applies the outcome to the request: the identity and claim headers, or the refusal.
    fn finish(
        &self,
        outcome: Result<Arc<Verified>, Refusal<'_>>,
        found: Found,
        request: &mut RequestParts,
        exchange: &mut Exchange,
    ) -> Flow {
        let verified = match outcome {
            Ok(verified) => verified,
            Err(refusal) => return Flow::Respond(self.refuse(refusal)),
        };
        self.strip_claim_headers(request);
        for (position, value) in &verified.headers {
            request.headers.insert(self.claim_headers[*position].1.clone(), value.clone());
        }
        if self.hide_credentials {
            self.source.remove(request, found);
        }
        exchange.authenticate(verified.identity.clone());
        Flow::Continue
    }

    /// Headers named in `claims_to_headers` come from verified claims only, never the client.
    fn strip_claim_headers(&self, request: &mut RequestParts) {
        for (_, name) in &self.claim_headers {
            request.headers.remove(name);
        }
    }

    fn refuse(&self, refusal: Refusal<'_>) -> PolicyResponse {
        match refusal {
            Refusal::Missing => unauthorized(&self.challenge, "missing-token", "the request carries no bearer token"),
            Refusal::Invalid(detail) => {
                tracing::debug!(reason = detail, "token refused");
                // RFC 6750 §3: `error_description` is printable ASCII without `"` and `\`.
                let description: String =
                    detail.chars().filter(|c| matches!(c, ' '..='~') && !matches!(c, '"' | '\\')).collect();
                let challenge =
                    format!("{}, error=\"invalid_token\", error_description=\"{description}\"", self.challenge);
                unauthorized(&challenge, "invalid-token", detail)
            }
            Refusal::UnknownConsumer => forbidden("unknown-consumer", "the token's subject is not a known consumer"),
            Refusal::KeysUnavailable => {
                let mut response = problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "keys-unavailable",
                    "Service Unavailable",
                    Some("the keys to verify tokens could not be fetched yet"),
                );
                response.headers_mut().insert(RETRY_AFTER, self.retry_after.clone());
                response
            }
        }
    }
}

/// Which check failed, for the problem's detail and the challenge's `error_description`.
fn failed_check(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
        ErrorKind::InvalidAudience => "the token's audience is not accepted",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the token has no expiry time (exp)",
            "iss" => "the token names no issuer (iss)",
            "aud" => "the token names no audience (aud)",
            _ => "the token lacks a required claim",
        },
        ErrorKind::InvalidClaimFormat(_) => "the token's exp or nbf is not a number",
        ErrorKind::InvalidSignature => "the token's signature is not valid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => "the token's algorithm does not match its key",
        _ => MALFORMED,
    }
}

impl Policy for CompiledJwt {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some((token, found)) = self.source.find_token(request, self.read_header) else {
            if let Some(anonymous) = &self.anonymous {
                self.strip_claim_headers(request);
                exchange.authenticate(Identity::anonymous(anonymous.clone(), Jwt::NAME));
                return Flow::Continue.into();
            }
            return self.refuse(Refusal::Missing).into();
        };
        let digest = self.tokens.as_ref().map(|_| TokenDigest::of(&token));
        if let Some(verified) = self.cached(digest.as_ref()) {
            drop(token);
            return self.finish(Ok(verified), found, request, exchange).into();
        }
        let (header, validation) = match self.header(&token) {
            Ok(checked) => checked,
            Err(refusal) => return self.refuse(refusal).into(),
        };
        let cache = match &self.keys {
            Keys::Inline(keys) => {
                let outcome = self.verify(&token, &header, validation, keys);
                drop(token);
                let outcome = self.remember(digest, keys.generation(), outcome);
                return self.finish(outcome, found, request, exchange).into();
            }
            Keys::Jwks(cache) => cache,
        };
        if let Some(keys) = cache.cached_keys(header.kid.as_deref(), header.alg) {
            let outcome = self.verify(&token, &header, validation, &keys);
            drop(token);
            let outcome = self.remember(digest, keys.generation(), outcome);
            return self.finish(outcome, found, request, exchange).into();
        }
        // The key set must be fetched first: only this path waits, and copies the token.
        let token = token.into_owned();
        Hook::Wait(Box::pin(async move {
            let outcome = match cache.keys(header.kid.as_deref(), header.alg).await {
                Ok(keys) => {
                    let outcome = self.verify(&token, &header, validation, &keys);
                    self.remember(digest, keys.generation(), outcome)
                }
                Err(JwksError::UnknownKey) => Err(Refusal::Invalid(NO_KEY)),
                Err(JwksError::Unavailable) => Err(Refusal::KeysUnavailable),
            };
            self.finish(outcome, found, request, exchange)
        }))
    }
}

#[cfg(test)]
mod tests;

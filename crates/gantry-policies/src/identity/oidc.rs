#![doc = include_str!("oidc.md")]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gantry_config::{ConfigErrors, Duration, FieldPath, Secret};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::AUTHORIZATION;
use http::{Method, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use schemars::JsonSchema;
use serde::Deserialize;

use super::bearer::{check_realm, check_subjects, Challenges, ConsumerMapping, SubjectCredential};
use super::jwks::{install_crypto_provider, JwksError, JwksSettings, KeySet};
use super::jwt::JwtAlgorithm;
use super::oauth2_introspection::ClientAuth;
use super::request_credentials::bearer_token;
use super::verified_tokens::{numeric_date, CacheConfig, TokenDigest, Validity, VerifiedTokens};

mod discovery;
mod login;
mod session;

use discovery::{Discovery, DiscoverySettings, Metadata};
use login::Login;

/// Settings of `oidc`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The OpenID provider's issuer URL; its metadata is read from
    /// `<issuer>/.well-known/openid-configuration` and must name exactly this issuer.
    pub issuer: String,
    /// The gateway's client id at the provider: the audience of ID tokens, and of bearer
    /// tokens unless `audiences` is set.
    pub client_id: String,
    /// Audiences (`aud`) accepted in bearer tokens, one is enough; default: `client_id`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Signature algorithms accepted; asymmetric only, as the keys come from the provider.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Accepts `Authorization: Bearer` tokens (access or ID tokens that are signed JWTs).
    #[serde(default = "yes")]
    pub bearer: bool,
    /// Age after which the provider's metadata is refreshed in the background.
    #[serde(default = "default_discovery_refresh")]
    pub discovery_refresh: Duration,
    /// Age after which the provider's key set is refreshed in the background.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches of the metadata or of the key set.
    #[serde(default = "default_min_refresh")]
    pub min_refresh: Duration,
    /// Longest a call to the provider may take (metadata, keys, token endpoint).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Claim naming the consumer: `sub`, `email`, `preferred_username`, `client_id`, ...
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Refuses tokens and logins whose consumer claim no consumer's credential names.
    #[serde(default)]
    pub require_consumer: bool,
    /// Removes the bearer token or the session cookie before the request goes upstream.
    #[serde(default = "yes")]
    pub hide_credentials: bool,
    /// Consumer id that stands in for requests without a token or session (no login redirect).
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified bearer tokens remembered, so that a token presented again skips the signature
    /// check.
    #[serde(default)]
    pub bearer_cache: CacheConfig,
    /// Signs browsers in with the authorization code flow and keeps them in a session cookie.
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// Settings of the browser login (relying party) flow.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The gateway's client secret at the provider. Shown as `***` by the admin API.
    pub client_secret: Secret<String>,
    /// How the gateway authenticates to the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Where the provider sends the browser back: a path (`/oidc/callback`, on the host the
    /// browser used) or an absolute URL. Must be registered at the provider and be routed to
    /// a route with this policy.
    #[serde(default = "default_redirect_uri")]
    pub redirect_uri: String,
    /// Scopes asked for; `openid` is required.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Secret the session cookie's key is derived from, at least 32 characters. Shown as `***`.
    pub session_secret: Secret<String>,
    /// Name of the session cookie; the login cookie is this name with `_login` appended.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// How long a session lasts after login.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: Duration,
    /// A path that ends the session (clears the cookie).
    #[serde(default)]
    pub logout_path: Option<String>,
    /// Where the browser goes after logging out.
    #[serde(default = "default_post_logout_redirect")]
    pub post_logout_redirect: String,
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::PS256, JwtAlgorithm::EdDSA]
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_discovery_refresh() -> Duration {
    Duration::from_secs(3600)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_min_refresh() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

fn default_realm() -> String {
    "gantry".to_owned()
}

fn default_redirect_uri() -> String {
    "/oidc/callback".to_owned()
}

fn default_scopes() -> Vec<String> {
    vec!["openid".to_owned()]
}

fn default_cookie_name() -> String {
    "gantry_oidc".to_owned()
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_post_logout_redirect() -> String {
    "/".to_owned()
}

fn yes() -> bool {
    true
}

/// Shortest accepted `session_secret`: 256 bits if it were random.
const MIN_SESSION_SECRET_CHARS: usize = 32;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.client_id.is_empty() {
            errors.push(path.key("client_id"), "must not be empty");
        }
        for (index, audience) in self.audiences.iter().enumerate() {
            if audience.is_empty() {
                errors.push(path.key("audiences").index(index), "must not be empty");
            }
        }
        if self.algorithms.is_empty() {
            errors.push(path.key("algorithms"), "list at least one algorithm");
        }
        for (index, alg) in self.algorithms.iter().enumerate() {
            if matches!(alg, JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512) {
                errors.push(
                    path.key("algorithms").index(index),
                    "HMAC algorithms need a shared secret; the provider's keys are public keys",
                );
            }
        }
        if self.timeout.get().is_zero() {
            errors.push(path.key("timeout"), "must be longer than zero");
        }
        if self.consumer_claim.is_empty() {
            errors.push(path.key("consumer_claim"), "name a claim, such as `sub`");
        }
        if !self.bearer && self.login.is_none() {
            errors.push(path.key("bearer"), "with neither bearer tokens nor `login`, no request could pass");
        }
        check_realm(&self.realm, path, errors);
        self.bearer_cache.validate(&path.key("bearer_cache"), errors);
        if let Some(login) = &self.login {
            login.validate(&path.key("login"), errors);
        }
    }
}

impl Validate for LoginConfig {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.client_secret.expose().is_empty() {
            errors.push(path.key("client_secret"), "must not be empty");
        }
        if self.session_secret.expose().chars().count() < MIN_SESSION_SECRET_CHARS {
            errors.push(
                path.key("session_secret"),
                format!("must be at least {MIN_SESSION_SECRET_CHARS} characters (random, kept secret)"),
            );
        }
        if !self.scopes.iter().any(|scope| scope == "openid") {
            errors.push(path.key("scopes"), "must include `openid`");
        }
        for (index, scope) in self.scopes.iter().enumerate() {
            // RFC 6749 §3.3: scope tokens are printable ASCII without space, `"` and `\`.
            if scope.is_empty() || !scope.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                errors.push(path.key("scopes").index(index), "not a scope name");
            }
        }
        let is_token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if self.cookie_name.is_empty() || !self.cookie_name.bytes().all(is_token_char) {
            errors.push(path.key("cookie_name"), "not a cookie name (letters, digits and !#$%&'*+-.^_`|~)");
        }
        if self.session_ttl.get().is_zero() {
            errors.push(path.key("session_ttl"), "must be longer than zero");
        }
        if self.logout_path.as_deref().is_some_and(|logout| !logout.starts_with('/')) {
            errors.push(path.key("logout_path"), "must be a path starting with `/`");
        }
        if !self.post_logout_redirect.starts_with('/') && reqwest::Url::parse(&self.post_logout_redirect).is_err() {
            errors.push(path.key("post_logout_redirect"), "must be a path starting with `/` or an absolute URL");
        }
    }
}

/// A consumer's credential for `oidc`: the value of the token's `consumer_claim` that stands
/// for this consumer.
pub type Credential = SubjectCredential;

/// Factory of the `oidc` policy.
#[derive(Debug)]
pub struct Oidc;

impl PolicyFactory for Oidc {
    const NAME: &'static str = "oidc";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("oidc.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        install_crypto_provider();
        let mut errors = ConfigErrors::default();
        let settings = DiscoverySettings {
            refresh: config.discovery_refresh.get(),
            min_refresh: config.min_refresh.get(),
            timeout: config.timeout.get(),
            jwks: JwksSettings {
                refresh: config.jwks_refresh.get(),
                min_refresh: config.min_refresh.get(),
                timeout: config.timeout.get(),
            },
        };
        let discovery =
            Discovery::shared(&config.issuer, settings).map_err(|reason| errors.push(path.key("issuer"), reason)).ok();
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        let login = config.login.as_ref().and_then(|login| {
            Login::build(login, &config.client_id, config.timeout.get(), &path.key("login"), &mut errors)
        });
        let Some(discovery) = discovery else { return Err(errors) };
        if config.login.is_some() && login.is_none() {
            return Err(errors);
        }
        errors.into_result(())?;
        discovery.prefetch();

        let audiences = if config.audiences.is_empty() { vec![config.client_id.clone()] } else { config.audiences };
        let algorithms: Vec<Algorithm> = config.algorithms.iter().map(|alg| alg.algorithm()).collect();
        let leeway = config.leeway.get().as_secs();
        let make = |audiences: &[String]| -> Vec<(Algorithm, Validation)> {
            algorithms.iter().map(|&alg| (alg, validation(alg, &config.issuer, audiences, leeway))).collect()
        };
        let credentials = context.consumers.credentials::<Oidc>();
        Ok(Arc::new(CompiledOidc {
            discovery,
            bearer: config.bearer,
            bearer_validations: make(&audiences),
            id_token_validations: make(std::slice::from_ref(&config.client_id)),
            mapping: ConsumerMapping::new(&config.consumer_claim, config.require_consumer, &credentials, Oidc::NAME),
            consumer_claim: config.consumer_claim,
            bearer_tokens: VerifiedTokens::new(&config.bearer_cache, leeway),
            hide_credentials: config.hide_credentials,
            anonymous,
            challenges: Challenges::new(&config.realm),
            login,
        }))
    }
}

impl IdentityFactory for Oidc {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        check_subjects(credentials, errors);
    }
}

/// The checks after the signature: issuer, audience, expiry (required), not-before.
fn validation(alg: Algorithm, issuer: &str, audiences: &[String], leeway: u64) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = leeway;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

/// Runs per request. With the provider's metadata and keys cached (the usual case), a bearer
/// token or a session cookie is checked without waiting; only a first use, a rotated key or a
/// login callback waits for the provider.
struct CompiledOidc {
    discovery: Discovery,
    bearer: bool,
    bearer_validations: Vec<(Algorithm, Validation)>,
    id_token_validations: Vec<(Algorithm, Validation)>,
    mapping: ConsumerMapping,
    consumer_claim: String,
    /// Bearer tokens verified before, unless the cache is turned off.
    bearer_tokens: Option<VerifiedTokens<Identity>>,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenges: Challenges,
    login: Option<Login>,
}

/// A verified token's claims, and the generation of the key set that verified it.
pub(crate) struct Claims {
    pub(crate) claims: serde_json::Map<String, serde_json::Value>,
    generation: u64,
}

/// Why a token is refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// A token that fails a check: 401 `invalid_token`.
    Invalid(&'static str),
    /// Valid, but names no consumer this policy accepts: 403.
    Unmapped(String),
    /// The provider's metadata or keys could not be fetched: 503.
    Unavailable,
}

impl Refusal {
    fn response(self, challenges: &Challenges) -> PolicyResponse {
        match self {
            Refusal::Invalid(detail) => {
                tracing::debug!(reason = detail, "token refused");
                challenges.invalid(detail)
            }
            Refusal::Unmapped(detail) => super::bearer::Unmapped(detail).response(),
            Refusal::Unavailable => unavailable(),
        }
    }
}

const MALFORMED: &str = "the token is not a well-formed signed JWT";

/// 503: the provider could not be reached. Not a 401: the client's token may be fine.
pub(crate) fn unavailable() -> PolicyResponse {
    problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "oidc-unavailable",
        "Service Unavailable",
        Some("the OpenID provider could not be reached to check the request"),
    )
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// Which check failed, for the problem's detail.
fn failed_check(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer is not the provider",
        ErrorKind::InvalidAudience => "the token's audience is not accepted",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks exp, iss or aud",
        ErrorKind::InvalidSignature => "the token's signature is not valid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => "the token's algorithm does not match its key",
        _ => MALFORMED,
    }
}

impl CompiledOidc {
    /// The header of `token` and the validation for its algorithm.
    fn header<'v>(
        &self,
        token: &str,
        validations: &'v [(Algorithm, Validation)],
    ) -> Result<(Header, &'v Validation), Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid(MALFORMED))?;
        let validation = validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, validation)| validation)
            .ok_or(Refusal::Invalid("the token's signing algorithm is not accepted"))?;
        if header.crit.is_some() {
            return Err(Refusal::Invalid("the token has critical header parameters that are not supported"));
        }
        Ok((header, validation))
    }

    /// The claims of `token`, verified with the keys of `keys` that match its header.
    fn verify(token: &str, header: &Header, validation: &Validation, keys: &KeySet) -> Result<Claims, Refusal> {
        let mut refusal = Refusal::Invalid("no key of the provider matches the token's kid and alg");
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key.decoding_key(),
                validation,
            ) {
                Ok(data) => return Ok(Claims { claims: data.claims, generation: keys.generation() }),
                // Another key without a `kid` may still match.
                Err(err) if *err.kind() == ErrorKind::InvalidSignature => {
                    refusal = Refusal::Invalid("the token's signature is not valid");
                }
                Err(err) => return Err(Refusal::Invalid(failed_check(err.kind()))),
            }
        }
        Err(refusal)
    }

    /// Verifies `token` against the provider, fetching metadata and keys when needed.
    async fn verify_fetching(&self, token: &str, validations: &[(Algorithm, Validation)]) -> Result<Claims, Refusal> {
        let (header, validation) = self.header(token, validations)?;
        let metadata = self.discovery.metadata().await.map_err(|_| Refusal::Unavailable)?;
        let keys = match metadata.jwks.keys(header.kid.as_deref(), header.alg).await {
            Ok(keys) => keys,
            Err(JwksError::UnknownKey) => {
                return Err(Refusal::Invalid("no key of the provider matches the token's kid and alg"))
            }
            Err(JwksError::Unavailable) => return Err(Refusal::Unavailable),
        };
        Self::verify(token, &header, validation, &keys)
    }

    /// Verifies `token` with cached metadata and keys only: `None` when something must be
    /// fetched first.
    fn verify_cached(&self, token: &str, validations: &[(Algorithm, Validation)]) -> Option<Result<Claims, Refusal>> {
        let (header, validation) = match self.header(token, validations) {
            Ok(checked) => checked,
            Err(refusal) => return Some(Err(refusal)),
        };
        let metadata: Arc<Metadata> = self.discovery.cached()?;
        let keys = metadata.jwks.cached_keys(header.kid.as_deref(), header.alg)?;
        Some(Self::verify(token, &header, validation, &keys))
    }

    /// The identity a verified bearer token maps to, remembered when the mapping succeeds.
    fn bearer_identity(&self, token: Option<TokenDigest>, verified: Claims) -> Result<Identity, Refusal> {
        let identity = self.identity(&verified.claims)?;
        if let (Some(tokens), Some(token)) = (&self.bearer_tokens, token) {
            // Both were checked by jsonwebtoken (`exp` is required), so both read.
            let date = |name: &str| verified.claims.get(name).and_then(|value| numeric_date(&value.to_string()));
            let validity = Validity { not_before: date("nbf"), expires: date("exp") };
            tokens.insert(token, verified.generation, validity, Arc::new(identity.clone()));
        }
        Ok(identity)
    }

    /// The identity remembered for a bearer token verified with the provider's current keys.
    fn cached_bearer(&self, token: Option<&TokenDigest>) -> Option<Arc<Identity>> {
        let (tokens, token) = (self.bearer_tokens.as_ref()?, token?);
        let generation = self.discovery.cached()?.jwks.generation()?;
        tokens.get(token, generation)
    }

    /// Applies a bearer token's outcome to the request.
    fn finish_bearer(
        &self,
        outcome: Result<Identity, Refusal>,
        request: &mut RequestParts,
        exchange: &mut Exchange,
    ) -> Flow {
        let identity = match outcome {
            Ok(identity) => identity,
            Err(refusal) => return Flow::Respond(refusal.response(&self.challenges)),
        };
        if self.hide_credentials {
            request.headers.remove(AUTHORIZATION);
        }
        exchange.authenticate(identity);
        Flow::Continue
    }

    fn identity(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Identity, Refusal> {
        self.mapping.identity(claims).map_err(|unmapped| Refusal::Unmapped(unmapped.0))
    }

    fn on_bearer<'a>(&'a self, token: String, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let digest = self.bearer_tokens.as_ref().map(|_| TokenDigest::of(&token));
        if let Some(identity) = self.cached_bearer(digest.as_ref()) {
            return self.finish_bearer(Ok(Identity::clone(&identity)), request, exchange).into();
        }
        if let Some(outcome) = self.verify_cached(&token, &self.bearer_validations) {
            let outcome = outcome.and_then(|verified| self.bearer_identity(digest, verified));
            return self.finish_bearer(outcome, request, exchange).into();
        }
        Hook::Wait(Box::pin(async move {
            let outcome = self.verify_fetching(&token, &self.bearer_validations).await;
            let outcome = outcome.and_then(|verified| self.bearer_identity(digest, verified));
            self.finish_bearer(outcome, request, exchange)
        }))
    }

    /// A request without a bearer token or session: the anonymous consumer, a login
    /// redirect, or 401.
    fn on_missing<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if let Some(anonymous) = &self.anonymous {
            exchange.authenticate(Identity::anonymous(anonymous.clone(), Oidc::NAME));
            return Flow::Continue.into();
        }
        match &self.login {
            // Only navigations are sent to sign in: a redirect answer to an API call or a
            // form post would lose its body or confuse a script.
            Some(login) if matches!(request.method, Method::GET | Method::HEAD) => {
                let request: &RequestParts = request;
                Hook::Wait(Box::pin(async move { Flow::Respond(login.start(self, request, exchange).await) }))
            }
            _ => self.challenges.missing("the request carries no bearer token").into(),
        }
    }
}

impl Policy for CompiledOidc {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if let Some(login) = &self.login {
            if let Some(path) = login.own_path(request) {
                return login.answer_own_path(self, path, request, exchange);
            }
        }
        if self.bearer {
            if let Some(token) = request.headers.get(AUTHORIZATION).and_then(bearer_token) {
                let token = token.to_owned();
                return self.on_bearer(token, request, exchange);
            }
        }
        if let Some(login) = &self.login {
            if let Some(flow) = login.resume_session(self, request, exchange) {
                return flow.into();
            }
        }
        self.on_missing(request, exchange)
    }
}

#[cfg(test)]
mod tests;

#![doc = include_str!("oauth2_introspection.md")]

use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_config::{ConfigErrors, FieldPath, Secret};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::bearer::{check_realm, check_subjects, Challenges, ConsumerMapping, SubjectCredential, TokenSource};
use super::outbound::{self, BodyError, ClientCredentials};

/// Settings of `oauth2_introspection`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The authorization server's token introspection endpoint (RFC 7662), `http` or `https`.
    pub introspection_endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// The gateway's client secret. Shown as `***` by the admin API.
    pub client_secret: Secret<String>,
    /// How the client authenticates to the introspection endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Sent as `token_type_hint` (`access_token`, `refresh_token`); left out when not set.
    #[serde(default)]
    pub token_type_hint: Option<String>,
    /// A request header holding the token, looked at when there is no `Authorization: Bearer`.
    #[serde(default)]
    pub header: Option<String>,
    /// A query parameter holding the token, looked at last.
    #[serde(default)]
    pub query: Option<String>,
    /// How long one introspection call may take, connection included.
    #[serde(default = "default_timeout")]
    pub timeout: gantry_config::Duration,
    /// Longest time an active token's result is reused; never past the token's `exp`.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: gantry_config::Duration,
    /// How long an inactive (unknown, expired, revoked) token's result is reused.
    #[serde(default = "default_negative_cache_ttl")]
    pub negative_cache_ttl: gantry_config::Duration,
    /// Most results kept; the least useful are evicted first.
    #[serde(default = "default_cache_max_entries")]
    pub cache_max_entries: u64,
    /// Member of the introspection response naming the consumer: `sub`, `client_id`, `username`.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Refuses active tokens whose consumer claim no consumer's credential names.
    #[serde(default)]
    pub require_consumer: bool,
    /// Removes the token from the request before it goes upstream.
    #[serde(default = "default_hide_credentials")]
    pub hide_credentials: bool,
    /// Consumer id that stands in for requests without a token; without it they get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// How the gateway authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic authentication with the client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

fn default_timeout() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(3)
}

fn default_cache_ttl() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(60)
}

fn default_negative_cache_ttl() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(5)
}

fn default_cache_max_entries() -> u64 {
    10_000
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

fn default_hide_credentials() -> bool {
    true
}

fn default_realm() -> String {
    "gantry".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.client_id.is_empty() {
            errors.push(path.key("client_id"), "must not be empty");
        }
        if self.client_secret.expose().is_empty() {
            errors.push(path.key("client_secret"), "must not be empty");
        }
        if self.timeout.get().is_zero() {
            errors.push(path.key("timeout"), "must be longer than zero");
        }
        if self.cache_max_entries == 0 {
            errors.push(path.key("cache_max_entries"), "must be at least 1");
        }
        if self.consumer_claim.is_empty() {
            errors.push(path.key("consumer_claim"), "name a member of the introspection response, such as `sub`");
        }
        if self.token_type_hint.as_deref().is_some_and(str::is_empty) {
            errors.push(path.key("token_type_hint"), "name a token type, or leave `token_type_hint` out");
        }
        check_realm(&self.realm, path, errors);
    }
}

/// A consumer's credential for `oauth2_introspection`: the value of the introspection
/// response's `consumer_claim` that stands for this consumer.
pub type Credential = SubjectCredential;

/// Factory of the `oauth2_introspection` policy.
#[derive(Debug)]
pub struct OAuth2Introspection;

impl PolicyFactory for OAuth2Introspection {
    const NAME: &'static str = "oauth2_introspection";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("oauth2_introspection.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(compile(config, path, context)?))
    }
}

impl IdentityFactory for OAuth2Introspection {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        check_subjects(credentials, errors);
    }
}

/// Parses the settings into the policy's runtime form.
fn compile(
    config: Config,
    path: &FieldPath,
    context: &BuildContext<'_>,
) -> Result<CompiledIntrospection, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let endpoint = parse_endpoint(&config.introspection_endpoint, &path.key("introspection_endpoint"), &mut errors);
    let tokens = TokenSource::build(config.header.as_deref(), config.query.as_deref(), path, &mut errors);
    let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
    let http = outbound::client_builder(config.timeout.get())
        // A redirect would send the client secret somewhere not configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| errors.push(path.clone(), format!("cannot set up the HTTP client: {err}")))
        .ok();
    // Either is missing only after an error was reported.
    let (Some(endpoint), Some(http)) = (endpoint, http) else { return Err(errors) };
    errors.into_result(())?;
    let credentials = context.consumers.credentials::<OAuth2Introspection>();
    let cache = shared_cache(CacheKey {
        endpoint: endpoint.to_string(),
        client_id: config.client_id.clone(),
        token_type_hint: config.token_type_hint.clone(),
        cache_ttl: config.cache_ttl.get(),
        negative_cache_ttl: config.negative_cache_ttl.get(),
        max_entries: config.cache_max_entries,
    });
    Ok(CompiledIntrospection {
        endpoint,
        client: ClientCredentials { id: config.client_id, secret: config.client_secret, auth: config.client_auth },
        token_type_hint: config.token_type_hint,
        tokens,
        cache_ttl: config.cache_ttl.get(),
        negative_cache_ttl: config.negative_cache_ttl.get(),
        cache,
        mapping: ConsumerMapping::new(
            &config.consumer_claim,
            config.require_consumer,
            &credentials,
            OAuth2Introspection::NAME,
        ),
        hide_credentials: config.hide_credentials,
        anonymous,
        challenges: Challenges::new(&config.realm),
        http,
    })
}

/// Parses an `http(s)` URL setting written at `path`.
pub(crate) fn parse_endpoint(text: &str, path: &FieldPath, errors: &mut ConfigErrors) -> Option<reqwest::Url> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
        Ok(_) => {
            errors.push(path.clone(), "must be an http or https URL");
            None
        }
        Err(err) => {
            errors.push(path.clone(), format!("not a URL: {err}"));
            None
        }
    }
}

/// What the authorization server said about a token.
#[derive(Debug)]
enum Outcome {
    /// Active, with the response's members (`sub`, `client_id`, `scope`, ...).
    Active(serde_json::Map<String, serde_json::Value>),
    /// Not active: unknown, expired or revoked.
    Inactive,
}

/// An outcome and how long it may be reused.
#[derive(Debug)]
struct Cached {
    outcome: Outcome,
    ttl: Duration,
}

type ResultCache = moka::future::Cache<[u8; 32], Arc<Cached>>;

/// What makes two policies' cached results interchangeable: the same server asked by the same
/// client in the same way, kept by the same rules. The secret is left out: it authenticates
/// the gateway, it does not change what the server says about a token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CacheKey {
    endpoint: String,
    client_id: String,
    token_type_hint: Option<String>,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    max_entries: u64,
}

/// Caches alive in this process, so a configuration reload keeps the results (and the
/// gateway keeps serving them while the server is down) instead of starting empty.
static SHARED: LazyLock<Mutex<Vec<SharedCache>>> = LazyLock::new(Mutex::default);

type SharedCache = (CacheKey, Weak<ResultCache>);

/// The cache of `key` alive in this process, or a new one.
fn shared_cache(key: CacheKey) -> Arc<ResultCache> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(alive) = shared.iter().filter(|(own, _)| *own == key).find_map(|(_, cache)| cache.upgrade()) {
        return alive;
    }
    let cache = Arc::new(moka::future::Cache::builder().max_capacity(key.max_entries).expire_after(PerResult).build());
    shared.retain(|(_, cache)| cache.strong_count() > 0);
    shared.push((key, Arc::downgrade(&cache)));
    cache
}

/// Why a token could not be checked; never cached, so the next request asks again.
#[derive(Debug, thiserror::Error)]
enum IntrospectionError {
    #[error("the introspection endpoint did not answer: {0}")]
    Unreachable(reqwest::Error),
    #[error("the introspection endpoint answered {0}")]
    Status(StatusCode),
    #[error("the introspection response is not valid: {0}")]
    Malformed(String),
}

/// Expires each result after its own time to live.
struct PerResult;

impl moka::Expiry<[u8; 32], Arc<Cached>> for PerResult {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The introspection response members the policy reads; the rest are kept as claims.
#[derive(Deserialize)]
struct IntrospectionResponse {
    active: bool,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(flatten)]
    claims: serde_json::Map<String, serde_json::Value>,
}

/// Largest introspection response read; real ones are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Runs per request: a token digest, a cache lookup and the consumer mapping; one
/// introspection call per token and cache period, shared by the requests that arrive while it
/// is under way.
struct CompiledIntrospection {
    endpoint: reqwest::Url,
    client: ClientCredentials,
    token_type_hint: Option<String>,
    tokens: TokenSource,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    cache: Arc<ResultCache>,
    mapping: ConsumerMapping,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenges: Challenges,
    http: reqwest::Client,
}

impl CompiledIntrospection {
    /// Asks the introspection endpoint about `token` and decides what it means.
    async fn introspect(&self, token: &str) -> Result<Arc<Cached>, IntrospectionError> {
        let mut form: Vec<(&str, &str)> = vec![("token", token)];
        if let Some(hint) = &self.token_type_hint {
            form.push(("token_type_hint", hint));
        }
        let request = self.client.post_form(&self.http, self.endpoint.clone(), form);
        // `without_url`: the error is logged and shown nowhere else, but a URL may carry
        // credentials in its user-info part.
        let response = request.send().await.map_err(|err| IntrospectionError::Unreachable(err.without_url()))?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(IntrospectionError::Status(status));
        }
        let body = outbound::read_body(response, MAX_RESPONSE_BYTES).await.map_err(|err| match err {
            BodyError::TooLarge => IntrospectionError::Malformed("larger than 64 KiB".to_owned()),
            BodyError::Failed(err) => IntrospectionError::Unreachable(err.without_url()),
        })?;
        let answer: IntrospectionResponse =
            serde_json::from_slice(&body).map_err(|err| IntrospectionError::Malformed(err.to_string()))?;
        Ok(Arc::new(self.judge(answer, SystemTime::now())))
    }

    /// The verdict on an introspection response received at `now`, and how long it holds.
    fn judge(&self, answer: IntrospectionResponse, now: SystemTime) -> Cached {
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let inactive = Cached { outcome: Outcome::Inactive, ttl: self.negative_cache_ttl };
        if !answer.active {
            return inactive;
        }
        // A server that calls an expired token active is not believed.
        let ttl = match answer.exp {
            Some(exp) if exp <= now_secs => return inactive,
            Some(exp) => self.cache_ttl.min(Duration::from_secs(exp - now_secs)),
            None => self.cache_ttl,
        };
        Cached { outcome: Outcome::Active(answer.claims), ttl }
    }
}

/// 503: the token could not be checked. Not a 401: the client's token may be fine.
fn unavailable() -> PolicyResponse {
    problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "introspection-unavailable",
        "Service Unavailable",
        Some("the token could not be checked: the authorization server is unavailable"),
    )
}

impl Policy for CompiledIntrospection {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some((token, found)) = self.tokens.find(request) else {
            if let Some(anonymous) = &self.anonymous {
                exchange.authenticate(Identity::anonymous(anonymous.clone(), OAuth2Introspection::NAME));
                return Flow::Continue.into();
            }
            return self.challenges.missing("the request carries no bearer token").into();
        };
        // The call outlives the borrow of the request, which it changes at the end.
        let token = token.into_owned();
        Hook::Wait(Box::pin(async move {
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Requests with the same token wait for one call; a failure is handed to them all
            // and not kept, so the next request asks again.
            let cached = match self.cache.try_get_with(key, self.introspect(&token)).await {
                Ok(cached) => cached,
                Err(err) => {
                    tracing::warn!(error = %err, "token introspection failed");
                    return Flow::Respond(unavailable());
                }
            };
            match &cached.outcome {
                // Mapped per request rather than cached: the cache outlives a reload that
                // may change the consumers.
                Outcome::Active(claims) => match self.mapping.identity(claims) {
                    Ok(identity) => {
                        exchange.authenticate(identity);
                        if self.hide_credentials {
                            self.tokens.remove(request, found);
                        }
                        Flow::Continue
                    }
                    Err(unmapped) => Flow::Respond(unmapped.response()),
                },
                Outcome::Inactive => {
                    tracing::debug!("token not active");
                    Flow::Respond(self.challenges.invalid("the token is not active"))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests;

#![doc = include_str!("basic_auth.md")]

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use base64::Engine;
use gantry_config::{ConfigErrors, Duration, FieldPath, Secret};
use gantry_policy_api::identity::{quoted, unauthorized};
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, RequestParts, Stage, Validate,
};
use http::header::AUTHORIZATION;
use http::HeaderValue;
use moka::sync::Cache;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Settings of `basic_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Realm named in the `WWW-Authenticate: Basic realm="...", charset="UTF-8"` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Removes the `Authorization` header before the request goes upstream.
    #[serde(default = "default_hide_credentials")]
    pub hide_credentials: bool,
    /// Consumer id that stands in for requests without Basic credentials; without it they get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// How long the outcome of checking one user name and password is remembered, so that a
    /// client's next requests cost a lookup instead of a password hash. `"0s"` remembers nothing.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Duration,
}

fn default_realm() -> String {
    "gantry".to_owned()
}

fn default_hide_credentials() -> bool {
    true
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if HeaderValue::from_str(&quoted(&self.realm)).is_err() {
            errors.push(path.key("realm"), "must be printable text without line breaks");
        }
    }
}

/// A consumer's user name and password for `basic_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The user name: no colon and no control characters (RFC 7617 §2). Two consumers cannot
    /// share one.
    pub username: String,
    /// The password's Argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash. Preferred over
    /// `password`. Shown as `***` by the admin API.
    #[serde(default)]
    pub password_hash: Option<Secret<String>>,
    /// The password in clear, hashed with Argon2id when the policy is built. Give
    /// `password_hash` or `password`, not both. Shown as `***` by the admin API.
    #[serde(default)]
    pub password: Option<Secret<String>>,
}

impl Validate for Credential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.username.is_empty() {
            errors.push(path.key("username"), "must not be empty");
        } else if self.username.contains(':') {
            errors.push(path.key("username"), "must not contain `:`, which ends the user name (RFC 7617 §2)");
        } else if self.username.chars().any(char::is_control) {
            errors.push(path.key("username"), "must not contain control characters (RFC 7617 §2)");
        }
        match (&self.password_hash, &self.password) {
            (None, None) => errors.push(path.key("password_hash"), "give `password_hash` (preferred) or `password`"),
            (Some(_), Some(_)) => errors.push(path.key("password"), "give `password_hash` or `password`, not both"),
            (Some(hash), None) => {
                if let Err(message) = StoredHash::parse(hash.expose()) {
                    errors.push(path.key("password_hash"), message);
                }
            }
            (None, Some(password)) => {
                if password.expose().is_empty() {
                    errors.push(path.key("password"), "must not be empty");
                }
            }
        }
    }
}

/// Factory of the `basic_auth` policy.
#[derive(Debug)]
pub struct BasicAuth;

impl PolicyFactory for BasicAuth {
    const NAME: &'static str = "basic_auth";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("basic_auth.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        errors.into_result(())?;
        let accounts =
            ConfigErrors::collect(|errors| Accounts::build(&context.consumers.credentials::<BasicAuth>(), errors))?;
        let ttl = config.cache_ttl.get();
        let verdicts =
            (!ttl.is_zero()).then(|| Cache::builder().max_capacity(CACHED_VERDICTS).time_to_live(ttl).build());
        Ok(Arc::new(CompiledBasicAuth {
            accounts: Arc::new(accounts),
            hide_credentials: config.hide_credentials,
            anonymous,
            challenge: format!("Basic realm={}, charset=\"UTF-8\"", quoted(&config.realm)),
            verdicts,
            cache_salt: random_salt(),
        }))
    }
}

impl IdentityFactory for BasicAuth {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        let mut seen: HashMap<&str, &Arc<str>> = HashMap::new();
        for entry in credentials {
            match seen.entry(&entry.credential.username) {
                Entry::Occupied(first) => errors.push(
                    entry.path.key("username"),
                    format!(
                        "the user name `{}` is already the credential `{}`",
                        entry.credential.username,
                        first.get()
                    ),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(entry.id);
                }
            }
        }
    }
}

/// Remembered outcomes per policy instance: enough for every client of a large deployment,
/// small enough (a few MiB) to be harmless when filled with failed guesses.
const CACHED_VERDICTS: u64 = 10_000;
/// Upper bounds on the cost parameters a configured hash may ask for: a hash is computed
/// whenever an unknown password is presented, so an Argon2 memory cost of gigabytes or a bcrypt
/// cost of 20 (minutes per check) would let any client exhaust the gateway.
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ARGON2_TIME_COST: u32 = 16;
const MAX_ARGON2_LANES: u32 = 16;
const MAX_BCRYPT_COST: u32 = 16;

/// Password hashes computed at once in the whole process, at most one per core: the rest of
/// the requests wait in line instead of taking blocking threads, each Argon2 hash holding its
/// memory cost (19 MiB by default). Process-wide because cores and memory are.
static HASHING: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(2, NonZeroUsize::get))));

/// A configured password hash, parsed and checked once.
#[derive(Clone, Debug)]
enum StoredHash {
    // Boxed: a parsed PHC string is several times the size of a bcrypt string's handle.
    Argon2(Box<PasswordHash>),
    Bcrypt(String),
}

impl StoredHash {
    /// Parses a hash; the message never repeats the hash.
    fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("$argon2") {
            let malformed =
                || "is not an Argon2 PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`)".to_owned();
            let hash = PasswordHash::new(text).map_err(|_| malformed())?;
            Algorithm::new(hash.algorithm.as_str()).map_err(|_| malformed())?;
            let params = Params::try_from(&hash).map_err(|_| malformed())?;
            if hash.salt.is_none() || hash.hash.is_none() {
                return Err(malformed());
            }
            if params.m_cost() > MAX_ARGON2_MEMORY_KIB
                || params.t_cost() > MAX_ARGON2_TIME_COST
                || params.p_cost() > MAX_ARGON2_LANES
            {
                return Err(format!(
                    "asks for more work than a request may cost: at most m={MAX_ARGON2_MEMORY_KIB} (KiB), \
                     t={MAX_ARGON2_TIME_COST}, p={MAX_ARGON2_LANES}"
                ));
            }
            Ok(Self::Argon2(Box::new(hash)))
        } else if text.starts_with("$2") {
            let parts = bcrypt::HashParts::from_str(text)
                .map_err(|_| "is not a bcrypt hash (`$2b$<cost>$<53 characters>`)".to_owned())?;
            if !(4..=MAX_BCRYPT_COST).contains(&parts.get_cost()) {
                return Err(format!("has a bcrypt cost outside 4 to {MAX_BCRYPT_COST}"));
            }
            Ok(Self::Bcrypt(text.to_owned()))
        } else {
            Err("must be an Argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash".to_owned())
        }
    }

    /// Hashes a password given in clear, with Argon2id's default parameters and a random salt.
    fn from_password(password: &str) -> Option<Self> {
        Argon2::default().hash_password(password.as_bytes()).ok().map(|hash| Self::Argon2(Box::new(hash)))
    }

    /// Whether `password` is the hashed one. Slow by design (milliseconds): call it on a
    /// blocking thread. The crates compare the digests in constant time.
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Self::Argon2(hash) => Argon2::default().verify_password(password, &**hash).is_ok(),
            Self::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        }
    }

    /// A hash of a password nobody has, made with the same algorithm and cost as `self`, so
    /// that checking it takes as long.
    fn dummy_like(template: Option<&Self>) -> Option<Self> {
        const NOBODY: &[u8] = b"gantry: no consumer has this user name";
        match template {
            Some(Self::Bcrypt(hash)) => {
                let cost = bcrypt::HashParts::from_str(hash).ok()?.get_cost();
                bcrypt::hash(NOBODY, cost).ok().map(Self::Bcrypt)
            }
            Some(Self::Argon2(hash)) => {
                let algorithm = Algorithm::new(hash.algorithm.as_str()).ok()?;
                let version = hash.version.and_then(|version| Version::try_from(version).ok()).unwrap_or_default();
                let params = Params::try_from(&**hash).ok()?;
                Argon2::new(algorithm, version, params)
                    .hash_password(NOBODY)
                    .ok()
                    .map(|hash| Self::Argon2(Box::new(hash)))
            }
            None => Argon2::default().hash_password(NOBODY).ok().map(|hash| Self::Argon2(Box::new(hash))),
        }
    }
}

/// A user name's consumer and hash.
struct Account {
    consumer: Arc<Consumer>,
    credential_id: Arc<str>,
    hash: StoredHash,
}

/// Every account of the policy, found by user name.
struct Accounts {
    by_username: HashMap<Box<[u8]>, usize>,
    list: Vec<Account>,
    /// Checked when the user name is unknown; made on first use, like the first account's hash.
    dummy: OnceLock<Option<StoredHash>>,
}

/// The outcome of checking credentials: the index of the matching account, if any.
type Verdict = Option<usize>;

impl Accounts {
    fn build(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) -> Self {
        let mut by_username = HashMap::new();
        let mut list = Vec::new();
        for entry in credentials {
            let Entry::Vacant(slot) = by_username.entry(entry.credential.username.as_bytes().into()) else {
                continue; // reported once by `check_credentials`
            };
            let hash = match (&entry.credential.password_hash, &entry.credential.password) {
                (Some(hash), _) => StoredHash::parse(hash.expose()).ok(),
                // The clear password is not kept: the compiled policy holds only its hash.
                (None, Some(password)) => {
                    let hash = StoredHash::from_password(password.expose());
                    if hash.is_none() {
                        errors.push(entry.path.key("password"), "could not be hashed");
                    }
                    hash
                }
                (None, None) => None,
            };
            // Credentials that failed their checks never reach here; this only skips defensively.
            let Some(hash) = hash else { continue };
            slot.insert(list.len());
            list.push(Account { consumer: entry.consumer.clone(), credential_id: entry.id.clone(), hash });
        }
        Self { by_username, list, dummy: OnceLock::new() }
    }

    /// Checks decoded `user:password` credentials: one password hash, on a blocking thread.
    fn check(&self, credentials: &[u8]) -> Verdict {
        let (username, password) = split_credentials(credentials)?;
        match self.by_username.get(username) {
            Some(&index) => self.list[index].hash.matches(password).then_some(index),
            None => {
                // As much work as for a known user name: the answer's timing must not tell
                // which user names exist.
                let template = self.list.first().map(|account| &account.hash);
                if let Some(dummy) = self.dummy.get_or_init(|| StoredHash::dummy_like(template)) {
                    dummy.matches(password);
                }
                None
            }
        }
    }
}

/// Splits `user:password` at its first colon: a user name has none, a password may (RFC 7617 §2).
fn split_credentials(credentials: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = credentials.iter().position(|&byte| byte == b':')?;
    Some((&credentials[..colon], &credentials[colon + 1..]))
}

/// The token of an `Authorization: Basic <token>` header; `None` without one, or for another
/// scheme (RFC 9110 §11.1: the scheme is case-insensitive).
fn basic_token(request: &RequestParts) -> Option<&[u8]> {
    let value = request.headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|&byte| byte == b' ').unwrap_or(value.len()));
    scheme.eq_ignore_ascii_case(b"basic").then(|| token.trim_ascii())
}

/// Decodes a Basic token to `user:password` bytes; `None` when it is not base64 or has no colon.
fn decode_token(token: &[u8]) -> Option<Vec<u8>> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(token).ok()?;
    decoded.contains(&b':').then_some(decoded)
}

/// A random salt for the cache keys of one policy instance, so that a key, which is a fast
/// digest of a password, cannot be looked up in precomputed tables.
fn random_salt() -> [u8; 16] {
    let mut salt = [0; 16];
    // Without randomness the keys are still digests, only unsalted: not worth refusing to start.
    if getrandom::fill(&mut salt).is_err() {
        tracing::warn!("no randomness for the basic_auth cache salt");
    }
    salt
}

/// Runs per request: a base64 decode, one digest and one cache lookup; a password hash on a
/// blocking thread only when the cache has no outcome for these credentials.
struct CompiledBasicAuth {
    accounts: Arc<Accounts>,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    challenge: String,
    verdicts: Option<Cache<[u8; 32], Verdict>>,
    cache_salt: [u8; 16],
}

impl CompiledBasicAuth {
    fn cache_key(&self, credentials: &[u8]) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.cache_salt);
        digest.update(credentials);
        digest.finalize().into()
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        self.verdicts.as_ref().and_then(|cache| cache.get(key))
    }

    async fn check(&self, credentials: Vec<u8>, key: [u8; 32]) -> Verdict {
        let permit = HASHING.clone().acquire_owned().await.ok();
        // Another request with the same credentials may have been checked while this one waited.
        if let Some(verdict) = self.cached(&key) {
            return verdict;
        }
        let accounts = self.accounts.clone();
        let work = move || {
            let _permit = permit;
            accounts.check(&credentials)
        };
        // Outside a runtime (a test driving the hook by hand) there is no thread to stall.
        let verdict = if tokio::runtime::Handle::try_current().is_ok() {
            match tokio::task::spawn_blocking(work).await {
                Ok(verdict) => verdict,
                Err(_) => {
                    tracing::error!("checking a password failed");
                    return None;
                }
            }
        } else {
            work()
        };
        if let Some(cache) = &self.verdicts {
            cache.insert(key, verdict);
        }
        verdict
    }

    fn conclude(&self, verdict: Verdict, request: &mut RequestParts, exchange: &mut Exchange) -> Flow {
        let Some(account) = verdict.and_then(|index| self.accounts.list.get(index)) else {
            tracing::debug!("Basic credentials not recognised");
            return Flow::Respond(unauthorized(
                &self.challenge,
                "invalid-credentials",
                "the user name or password is not valid",
            ));
        };
        exchange.authenticate(Identity::credential(
            account.consumer.clone(),
            account.credential_id.clone(),
            BasicAuth::NAME,
        ));
        if self.hide_credentials {
            request.headers.remove(AUTHORIZATION);
        }
        Flow::Continue
    }
}

impl Policy for CompiledBasicAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(token) = basic_token(request) else {
            if let Some(anonymous) = &self.anonymous {
                exchange.authenticate(Identity::anonymous(anonymous.clone(), BasicAuth::NAME));
                return Flow::Continue.into();
            }
            return unauthorized(&self.challenge, "missing-credentials", "the request carries no Basic credentials")
                .into();
        };
        let Some(credentials) = decode_token(token) else {
            return unauthorized(
                &self.challenge,
                "invalid-credentials",
                "the Basic credentials are not the base64 of `user:password`",
            )
            .into();
        };
        let key = self.cache_key(&credentials);
        if let Some(verdict) = self.cached(&key) {
            return self.conclude(verdict, request, exchange).into();
        }
        Hook::Wait(Box::pin(async move {
            let verdict = self.check(credentials, key).await;
            self.conclude(verdict, request, exchange)
        }))
    }
}

#[cfg(test)]
mod tests;

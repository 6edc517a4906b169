#![doc = include_str!("ldap_auth.md")]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use deadpool::managed::{Manager, Metrics, Object, Pool, RecycleError, RecycleResult};
use gantry_config::{ConfigErrors, FieldPath, Secret};
use gantry_policy_api::identity::{forbidden, quoted, unauthorized};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory, Policy,
    PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::AUTHORIZATION;
use http::{HeaderValue, StatusCode};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Settings of `ldap_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The directory server: `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// Where users are: the parent of their entries (direct bind) or the search base.
    pub base_dn: String,
    /// Attribute naming a user in its DN: the bind DN is `<uid_attribute>=<user>,<base_dn>`.
    /// Also the attribute of the default `search_filter`.
    #[serde(default = "default_uid_attribute")]
    pub uid_attribute: String,
    /// Service account that searches for the user's entry before binding as the user. Absent:
    /// no search, the user's DN is built from `uid_attribute` and `base_dn`.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// Password of `bind_dn`. Shown as `***` by the admin API.
    #[serde(default)]
    pub bind_password: Option<Secret<String>>,
    /// Filter finding the user's entry below `base_dn`; `{username}` stands for the login name,
    /// escaped as RFC 4515 asks. Default: `(<uid_attribute>={username})`. Needs `bind_dn`.
    #[serde(default)]
    pub search_filter: Option<String>,
    /// Upgrades an `ldap://` connection to TLS with StartTLS (RFC 4513 §3) before any bind.
    #[serde(default)]
    pub start_tls: bool,
    /// PEM file of the CA certificates trusted for `ldaps://` and StartTLS. Absent: the
    /// system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time allowed to connect, and for each LDAP operation.
    #[serde(default = "default_timeout")]
    pub timeout: gantry_config::Duration,
    /// Most connections to the directory at once; they are kept open and reused for binds.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long a successful login is remembered; `0s` asks the directory every time.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: gantry_config::Duration,
    /// Most logins remembered at once; the least used are forgotten first.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// Attribute of the user's entry whose values become the consumer's groups (`memberOf`),
    /// read right after the bind.
    #[serde(default)]
    pub groups_attribute: Option<String>,
    /// Realm named in the `WWW-Authenticate: Basic` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Removes the `Authorization` header before the request goes upstream.
    #[serde(default = "default_hide_credentials")]
    pub hide_credentials: bool,
    /// Consumer id that stands in for requests without credentials; without it they get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Refuses (403) directory users that no consumer names in `credentials.ldap_auth`,
    /// instead of admitting them as a consumer named after the user.
    #[serde(default)]
    pub require_consumer: bool,
}

fn default_uid_attribute() -> String {
    "uid".to_owned()
}

fn default_timeout() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(5)
}

fn default_pool_size() -> usize {
    8
}

fn default_cache_ttl() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(60)
}

fn default_cache_entries() -> u64 {
    10_000
}

fn default_realm() -> String {
    "gantry".to_owned()
}

fn default_hide_credentials() -> bool {
    true
}

/// Largest pool: a gateway that needs more concurrent binds should cache longer instead.
const MAX_POOL_SIZE: usize = 1024;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let scheme = url_scheme(&self.url);
        match scheme {
            None => errors.push(path.key("url"), "must be `ldap://host[:port]` or `ldaps://host[:port]`"),
            Some(Scheme::Ldaps) if self.start_tls => {
                errors.push(path.key("start_tls"), "`ldaps://` is TLS from the start; StartTLS is for `ldap://`");
            }
            Some(_) => {}
        }
        if self.base_dn.trim().is_empty() {
            errors.push(path.key("base_dn"), "must not be empty");
        }
        if !is_attribute_name(&self.uid_attribute) {
            errors.push(
                path.key("uid_attribute"),
                "must be an attribute name (RFC 4512: a letter, then letters, digits or `-`) or an OID",
            );
        }
        if let Some(groups) = &self.groups_attribute {
            if !is_attribute_name(groups) {
                errors.push(path.key("groups_attribute"), "must be an attribute name (RFC 4512) or an OID");
            }
        }
        match (&self.bind_dn, &self.bind_password) {
            (Some(dn), _) if dn.trim().is_empty() => errors.push(path.key("bind_dn"), "must not be empty"),
            (Some(_), None) => errors.push(path.key("bind_password"), "is required with `bind_dn`"),
            // An empty password makes an unauthenticated bind (RFC 4513 §5.1.2), not a login.
            (Some(_), Some(password)) if password.expose().is_empty() => {
                errors.push(path.key("bind_password"), "must not be empty");
            }
            (None, Some(_)) => errors.push(path.key("bind_password"), "is only used with `bind_dn`"),
            _ => {}
        }
        if let Some(filter) = &self.search_filter {
            if self.bind_dn.is_none() {
                errors.push(path.key("search_filter"), "needs `bind_dn`: searching is done by the service account");
            }
            if !filter.contains(USERNAME) {
                errors.push(path.key("search_filter"), "must contain `{username}`");
            } else if ldap3::parse_filter(filter.replace(USERNAME, "user")).is_err() {
                errors.push(
                    path.key("search_filter"),
                    "is not an LDAP filter (RFC 4515), such as `(&(objectClass=person)(uid={username}))`",
                );
            }
        }
        if self.timeout.get().is_zero() {
            errors.push(path.key("timeout"), "must be longer than 0s");
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            errors.push(path.key("pool_size"), format!("must be between 1 and {MAX_POOL_SIZE}"));
        }
        if self.cache_entries == 0 && !self.cache_ttl.get().is_zero() {
            errors.push(path.key("cache_entries"), "must be at least 1; to disable the cache, set `cache_ttl: 0s`");
        }
        if HeaderValue::from_str(&quoted(&self.realm)).is_err() {
            errors.push(path.key("realm"), "must be printable text without line breaks");
        }
    }
}

/// What stands for the login name in `search_filter`.
const USERNAME: &str = "{username}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Ldap,
    Ldaps,
}

fn url_scheme(url: &str) -> Option<Scheme> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('?') {
        return None;
    }
    match scheme.to_ascii_lowercase().as_str() {
        "ldap" => Some(Scheme::Ldap),
        "ldaps" => Some(Scheme::Ldaps),
        _ => None,
    }
}

/// An attribute description without options: `descr` or `numericoid` (RFC 4512 §1.4).
fn is_attribute_name(name: &str) -> bool {
    let mut characters = name.chars();
    match characters.next() {
        Some(first) if first.is_ascii_alphabetic() => characters.all(|c| c.is_ascii_alphanumeric() || c == '-'),
        Some(first) if first.is_ascii_digit() => {
            name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        }
        _ => false,
    }
}

/// A consumer's credential for `ldap_auth`: the directory user it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The login name in the directory (matched without regard to case, as LDAP's `uid` is).
    pub username: String,
}

impl Validate for Credential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.username.is_empty() {
            errors.push(path.key("username"), "must not be empty");
        }
    }
}

/// Factory of the `ldap_auth` policy.
#[derive(Debug)]
pub struct LdapAuth;

impl PolicyFactory for LdapAuth {
    const NAME: &'static str = "ldap_auth";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("ldap_auth.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(Self::compile(config, path, context)?))
    }
}

impl LdapAuth {
    fn compile(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<CompiledLdapAuth, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        let tls = match &config.ca_file {
            Some(file) => match tls_config(file) {
                Ok(tls) => Some(tls),
                Err(reason) => {
                    errors.push(path.key("ca_file"), reason);
                    None
                }
            },
            None => None,
        };
        // Parsing problems were reported by `validate`; nothing below can be built from them.
        if url_scheme(&config.url).is_none() || config.pool_size == 0 || config.pool_size > MAX_POOL_SIZE {
            return Err(errors);
        }
        errors.into_result(())?;

        let timeout = config.timeout.get();
        let mut settings = LdapConnSettings::new().set_conn_timeout(timeout).set_starttls(config.start_tls);
        if let Some(tls) = tls {
            settings = settings.set_config(tls);
        }
        let manager = LdapManager { url: config.url.clone(), settings };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|err| ConfigErrors::one(path.key("pool_size"), err.to_string()))?;

        let mut by_username = HashMap::new();
        // Duplicates are reported once by `check_credentials`; here the first one wins.
        for entry in context.consumers.credentials::<LdapAuth>() {
            by_username
                .entry(entry.credential.username.to_lowercase())
                .or_insert_with(|| (entry.consumer.clone(), entry.id.clone()));
        }
        let configured_ids = context.consumers.consumers().iter().map(|consumer| consumer.id.clone()).collect();
        let lookup = match (&config.bind_dn, &config.bind_password) {
            (Some(bind_dn), Some(bind_password)) => Lookup::Search {
                bind_dn: bind_dn.clone(),
                bind_password: bind_password.clone(),
                filter: config
                    .search_filter
                    .clone()
                    .unwrap_or_else(|| format!("({}={USERNAME})", config.uid_attribute)),
            },
            _ => Lookup::Direct { uid_attribute: config.uid_attribute.clone() },
        };
        let cache_ttl = config.cache_ttl.get();
        let cache = (!cache_ttl.is_zero())
            .then(|| moka::sync::Cache::builder().max_capacity(config.cache_entries).time_to_live(cache_ttl).build());
        let mut salt = [0u8; 32];
        // The salt only keeps cached digests from being compared with precomputed ones; if the
        // system has no randomness to give, the cache still works with a fixed salt.
        let _ = getrandom::fill(&mut salt);

        Ok(CompiledLdapAuth {
            directory: Directory {
                pool,
                base_dn: config.base_dn,
                lookup,
                groups_attribute: config.groups_attribute,
                timeout,
            },
            cache,
            salt,
            challenge: format!("Basic realm={}", quoted(&config.realm)),
            hide_credentials: config.hide_credentials,
            anonymous,
            require_consumer: config.require_consumer,
            by_username,
            configured_ids,
        })
    }
}

impl IdentityFactory for LdapAuth {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        let mut seen: HashMap<String, &Arc<str>> = HashMap::new();
        for entry in credentials {
            if let Some(first) = seen.insert(entry.credential.username.to_lowercase(), entry.id) {
                errors.push(entry.path.key("username"), format!("the same user is already the credential `{first}`"));
            }
        }
    }
}

/// A rustls client configuration trusting the CA certificates in `file`.
fn tls_config(file: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    let certificates =
        CertificateDer::pem_file_iter(file).map_err(|err| format!("reading {}: {err}", file.display()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|err| format!("reading {}: {err}", file.display()))?;
        roots.add(certificate).map_err(|err| format!("{}: {err}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", file.display()));
    }
    // Explicit provider: the one the data plane uses, whatever else is linked in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How the user's entry is found.
#[derive(Debug)]
enum Lookup {
    /// The DN is `<uid_attribute>=<escaped user>,<base_dn>`.
    Direct { uid_attribute: String },
    /// The service account searches `base_dn` with `filter`, then the found DN binds.
    Search { bind_dn: String, bind_password: Secret<String>, filter: String },
}

/// Opens pooled connections. A connection is `clean` between operations: one given up
/// half-way (a timeout, a client that went away) may still have an answer on the way, so
/// it is closed instead of reused.
struct LdapManager {
    url: String,
    settings: LdapConnSettings,
}

struct PooledLdap {
    ldap: Ldap,
    clean: bool,
}

impl Manager for LdapManager {
    type Type = PooledLdap;
    type Error = LdapError;

    async fn create(&self) -> Result<PooledLdap, LdapError> {
        let (connection, ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.url).await?;
        // The connection task ends when the last handle is dropped or the server closes it.
        ldap3::drive!(connection);
        Ok(PooledLdap { ldap, clean: true })
    }

    async fn recycle(&self, pooled: &mut PooledLdap, _: &Metrics) -> RecycleResult<LdapError> {
        if !pooled.clean || pooled.ldap.is_closed() {
            return Err(RecycleError::message("the connection was closed or left mid-operation"));
        }
        Ok(())
    }
}

/// The directory side: pooled connections and how users are found and checked.
struct Directory {
    pool: Pool<LdapManager>,
    base_dn: String,
    lookup: Lookup,
    groups_attribute: Option<String>,
    timeout: Duration,
}

/// A directory user whose password was accepted.
#[derive(Debug)]
struct DirectoryUser {
    groups: Vec<String>,
}

/// Why a login did not succeed.
#[derive(Debug)]
enum LoginError {
    /// The directory refused the user or password (or knows no such user).
    Refused,
    /// The directory could not be asked: down, slow, or refusing the service account.
    Unavailable(String),
}

/// LDAP result codes (RFC 4511 Appendix A) that mean "not this user, not this password".
fn is_refusal(rc: u32) -> bool {
    matches!(
        rc,
        32 // noSuchObject
            | 34 // invalidDNSyntax
            | 48 // inappropriateAuthentication
            | 49 // invalidCredentials
            | 50 // insufficientAccessRights
            | 53 // unwillingToPerform
    )
}

impl Directory {
    /// Checks `password` for `username`, on a pooled connection. Pooled connections that turn
    /// out to be broken (the directory restarted, an idle timeout closed them) are dropped and
    /// the login tried again, at most once per pooled connection; only a failure on a new
    /// connection means the directory is unavailable.
    async fn login(&self, username: &str, password: &str) -> Result<DirectoryUser, LoginError> {
        let mut attempts = self.pool.status().max_size + 1;
        loop {
            let mut pooled = self.pool.get().await.map_err(|err| LoginError::Unavailable(err.to_string()))?;
            let reused = Object::metrics(&pooled).recycle_count > 0;
            pooled.clean = false;
            match self.login_on(&mut pooled.ldap, username, password).await {
                Ok(found) => {
                    pooled.clean = true;
                    return found;
                }
                Err(err) => {
                    // The connection is dropped, not reused (`clean` stays false).
                    drop(Object::take(pooled));
                    attempts -= 1;
                    if !reused || attempts == 0 {
                        return Err(LoginError::Unavailable(err.to_string()));
                    }
                }
            }
        }
    }

    /// One login on `ldap`. The outer error is a transport failure (the connection is not
    /// reusable); the inner result is the directory's answer.
    async fn login_on(
        &self,
        ldap: &mut Ldap,
        username: &str,
        password: &str,
    ) -> Result<Result<DirectoryUser, LoginError>, LdapError> {
        let attributes: Vec<&str> = match &self.groups_attribute {
            Some(attribute) => vec![attribute.as_str()],
            // RFC 4511 §4.5.1.8: "1.1" asks for no attributes at all.
            None => vec!["1.1"],
        };
        let (dn, found_groups) = match &self.lookup {
            Lookup::Direct { uid_attribute } => (user_dn(uid_attribute, username, &self.base_dn), None),
            Lookup::Search { bind_dn, bind_password, filter } => {
                let bound = ldap.with_timeout(self.timeout).simple_bind(bind_dn, bind_password.expose()).await?;
                if bound.rc != 0 {
                    // The bind DN is logged, never the password.
                    return Ok(Err(LoginError::Unavailable(format!(
                        "the service account {bind_dn} cannot bind (LDAP result {})",
                        bound.rc
                    ))));
                }
                let filter = user_filter(filter, username);
                let result =
                    ldap.with_timeout(self.timeout).search(&self.base_dn, Scope::Subtree, &filter, &attributes).await?;
                if result.1.rc != 0 && !is_refusal(result.1.rc) {
                    return Ok(Err(LoginError::Unavailable(format!(
                        "the search failed (LDAP result {})",
                        result.1.rc
                    ))));
                }
                let mut entries = result.0.into_iter().filter(|entry| !entry.is_ref()).filter_map(construct);
                let (Some(entry), None) = (entries.next(), entries.next()) else {
                    // No entry, or several: a filter that finds several users names nobody.
                    return Ok(Err(LoginError::Refused));
                };
                let groups = self.groups_attribute.as_deref().map(|attribute| values(&entry, attribute));
                (entry.dn, groups)
            }
        };
        let bound = ldap.with_timeout(self.timeout).simple_bind(&dn, password).await?;
        if bound.rc != 0 {
            return Ok(Err(if is_refusal(bound.rc) {
                LoginError::Refused
            } else {
                LoginError::Unavailable(format!("the bind failed (LDAP result {})", bound.rc))
            }));
        }
        let groups = match (found_groups, &self.groups_attribute) {
            (Some(groups), _) => groups,
            (None, Some(attribute)) => {
                // Read as the user just bound: directories let users read their own entry.
                let result =
                    ldap.with_timeout(self.timeout).search(&dn, Scope::Base, "(objectClass=*)", &attributes).await?;
                result
                    .0
                    .into_iter()
                    .filter_map(construct)
                    .next()
                    .map(|entry| values(&entry, attribute))
                    .unwrap_or_default()
            }
            (None, None) => Vec::new(),
        };
        Ok(Ok(DirectoryUser { groups }))
    }
}

/// The DN of `username` for a direct bind: its value escaped as RFC 4514 §2.4 asks, so a
/// name such as `admin,ou=services` stays one attribute value instead of changing the DN.
fn user_dn(uid_attribute: &str, username: &str, base_dn: &str) -> String {
    format!("{uid_attribute}={},{base_dn}", ldap3::dn_escape(username))
}

/// `filter` with `{username}` replaced by `username` escaped as RFC 4515 §3 asks, so `*` or
/// `)(uid=*` in a user name match only themselves.
fn user_filter(filter: &str, username: &str) -> String {
    filter.replace(USERNAME, &ldap3::ldap_escape(username))
}

/// Decodes a search result entry. ldap3 panics on an entry it cannot decode; a directory
/// sending one must not take the connection's task with it, so the entry is skipped.
fn construct(entry: ldap3::ResultEntry) -> Option<SearchEntry> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SearchEntry::construct(entry))).ok()
}

/// The values of `attribute` (attribute names are case-insensitive, RFC 4512 §2.5).
fn values(entry: &SearchEntry, attribute: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
        .map(|(_, values)| values.clone())
        .unwrap_or_default()
}

/// Runs per request: a header decode, a digest and a cache lookup; the directory is asked
/// only on a cache miss.
struct CompiledLdapAuth {
    directory: Directory,
    cache: Option<moka::sync::Cache<[u8; 32], Identity>>,
    salt: [u8; 32],
    challenge: String,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    require_consumer: bool,
    by_username: HashMap<String, (Arc<Consumer>, Arc<str>)>,
    configured_ids: HashSet<Arc<str>>,
}

/// What the `Authorization` header holds. (No `Debug`: it holds a password.)
enum Presented {
    /// No `Basic` or `LDAP` credentials.
    Nothing,
    /// Credentials that cannot be a login: not base64, no colon, not UTF-8, an empty name.
    Malformed,
    /// A user name and a password (possibly empty: refused later, never sent to the directory).
    Login(String, String),
}

/// Reads `Authorization: Basic base64(user:password)` (RFC 7617), or Kong's
/// `Authorization: LDAP base64(user:password)`; schemes are case-insensitive (RFC 9110 §11.1).
fn presented(request: &RequestParts) -> Presented {
    let Some(value) = request.headers.get(AUTHORIZATION) else { return Presented::Nothing };
    let Ok(value) = value.to_str() else { return Presented::Nothing };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else { return Presented::Nothing };
    if !scheme.eq_ignore_ascii_case("basic") && !scheme.eq_ignore_ascii_case("ldap") {
        return Presented::Nothing;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Presented::Malformed;
    };
    let Ok(decoded) = String::from_utf8(decoded) else { return Presented::Malformed };
    // RFC 7617 §2: the user-id cannot contain a colon; the password may.
    match decoded.split_once(':') {
        Some((user, password)) if !user.is_empty() => Presented::Login(user.to_owned(), password.to_owned()),
        _ => Presented::Malformed,
    }
}

impl CompiledLdapAuth {
    /// The cache key of a login: SHA-256 over a per-instance salt, the user name (length
    /// first, so `ab`+`c` and `a`+`bc` differ) and the password. The password itself is never
    /// kept.
    fn cache_key(&self, username: &str, password: &str) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.salt);
        digest.update((username.len() as u64).to_be_bytes());
        digest.update(username.as_bytes());
        digest.update(password.as_bytes());
        digest.finalize().into()
    }

    /// The identity of a directory user: the consumer whose credential names it, or one named
    /// after the user.
    fn identity(&self, username: &str, user: DirectoryUser) -> Result<Identity, Unmapped> {
        // LDAP compares `uid` without regard to case (RFC 4519 §2.39), so `Alice` and `alice`
        // are one user and must be one consumer.
        let username = username.to_lowercase();
        let (consumer, credential_id) = match self.by_username.get(&username) {
            Some((consumer, credential_id)) => {
                let consumer = if user.groups.is_empty() {
                    consumer.clone()
                } else {
                    let mut groups = consumer.groups.to_vec();
                    groups.extend(user.groups.into_iter().filter(|group| !consumer.groups.contains(group)));
                    Arc::new(Consumer { id: consumer.id.clone(), groups: groups.into() })
                };
                (consumer, credential_id.clone())
            }
            None if self.require_consumer => return Err(Unmapped::NotAConsumer),
            // A directory user must not take over a configured consumer (its policies, its
            // groups) just by having the same name.
            None if self.configured_ids.contains(username.as_str()) => return Err(Unmapped::TakenId),
            None => {
                let consumer = Consumer { id: username.as_str().into(), groups: user.groups.into() };
                (Arc::new(consumer), Arc::from(username.as_str()))
            }
        };
        Ok(Identity::credential(consumer, credential_id, LdapAuth::NAME))
    }

    fn admit(&self, request: &mut RequestParts, exchange: &mut Exchange, identity: Identity) -> Flow {
        exchange.authenticate(identity);
        if self.hide_credentials {
            request.headers.remove(AUTHORIZATION);
        }
        Flow::Continue
    }

    fn refused(&self) -> Flow {
        Flow::Respond(unauthorized(&self.challenge, "invalid-credentials", "the user name or password is not valid"))
    }
}

/// Why a directory user whose password was accepted is still refused.
#[derive(Debug, PartialEq, Eq)]
enum Unmapped {
    /// `require_consumer` is set and no consumer names the user.
    NotAConsumer,
    /// The user's name is the id of a configured consumer that does not name the user.
    TakenId,
}

impl Unmapped {
    fn response(&self) -> PolicyResponse {
        let detail = match self {
            Unmapped::NotAConsumer => "the directory user is not a consumer of this gateway",
            Unmapped::TakenId => {
                "the directory user has the id of a consumer that does not name it in `credentials.ldap_auth`"
            }
        };
        forbidden("unknown-consumer", detail)
    }
}

fn unavailable() -> PolicyResponse {
    problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ldap-unavailable",
        "Service Unavailable",
        Some("the directory server that checks passwords cannot be reached"),
    )
}

impl Policy for CompiledLdapAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let (username, password) = match presented(request) {
            Presented::Nothing => {
                if let Some(anonymous) = &self.anonymous {
                    exchange.authenticate(Identity::anonymous(anonymous.clone(), LdapAuth::NAME));
                    return Flow::Continue.into();
                }
                return unauthorized(
                    &self.challenge,
                    "missing-credentials",
                    "the request carries no user name and password",
                )
                .into();
            }
            Presented::Malformed => {
                return unauthorized(&self.challenge, "invalid-credentials", "the Authorization header is malformed")
                    .into();
            }
            Presented::Login(username, password) => (username, password),
        };
        // An empty password makes an LDAP *unauthenticated* bind, which many directories answer
        // with success (RFC 4513 §5.1.2): it must never reach the directory as a login.
        if password.is_empty() {
            return self.refused().into();
        }
        let key = self.cache.as_ref().map(|_| self.cache_key(&username, &password));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(identity) = cache.get(key) {
                return self.admit(request, exchange, identity).into();
            }
        }
        Hook::Wait(Box::pin(async move {
            match self.directory.login(&username, &password).await {
                Ok(user) => match self.identity(&username, user) {
                    Ok(identity) => {
                        if let (Some(cache), Some(key)) = (&self.cache, key) {
                            cache.insert(key, identity.clone());
                        }
                        self.admit(request, exchange, identity)
                    }
                    Err(unmapped) => Flow::Respond(unmapped.response()),
                },
                Err(LoginError::Refused) => {
                    tracing::debug!("directory refused the login");
                    self.refused()
                }
                Err(LoginError::Unavailable(reason)) => {
                    tracing::warn!(reason = %reason, "LDAP directory unavailable");
                    Flow::Respond(unavailable())
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests;

//! Verification keys of token-checking identity policies (`jwt`, `oidc`): single keys parsed
//! from configuration, and JSON Web Key Sets (RFC 7517) fetched from a URL and cached.
//!
//! Keys are parsed and checked once, when a configuration is built or a key set is fetched;
//! a request only looks one up. A [`JwksCache`] never fetches while a configuration compiles:
//! it fetches in the background right after, or at first use, and then
//!
//! - refreshes in the background when a key is used after [`JwksSettings::refresh`] has
//!   passed (the request goes on with the keys it has; an idle gateway does not fetch),
//! - refreshes at once when no key matches a token's `kid` and `alg` (a signer rotated its
//!   keys), at most once per [`JwksSettings::min_refresh`], so tokens with made-up `kid`s
//!   cannot turn into a stream of fetches,
//! - makes concurrent misses wait for one fetch rather than each starting one,
//! - keeps serving the last good set when a fetch fails or returns no usable key.
//!
//! Every set has a [`KeySet::generation`]: a refetch that brings the same keys keeps it, any
//! change gives a new one, so what was verified with a set can be tied to it (the verified
//! token caches of `jwt` and `oidc`).
//!
//! Caches are shared by URL and settings across configuration reloads, so a reload neither
//! refetches nor forgets the last good set.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use gantry_policies::identity::jwks::{JwksCache, JwksSettings};
//! use jsonwebtoken::Algorithm;
//!
//! let cache = JwksCache::shared("https://idp.example.com/jwks.json", JwksSettings::default())?;
//! cache.prefetch();
//! let key = cache.key(Some("2024-06"), Algorithm::RS256).await?;
//! assert!(key.verifies(Algorithm::RS256));
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{
    ParsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519,
    RSA_PKCS1_2048_8192_SHA256,
};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use sha2::Digest;

use crate::identity::outbound;

/// Largest key set document read; real ones are a few kilobytes.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
fn min_secret_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// Makes jsonwebtoken verify with aws-lc-rs, the crypto library of the rest of the gateway,
/// whatever features other crates of the build enable. Idempotent.
pub fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// Why a key cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key material is not of the kind the algorithm needs (the algorithm confusion that
    /// would let an RSA public key serve as an HMAC secret, for one).
    #[error("{alg:?} needs {needs}")]
    WrongType {
        /// The algorithm the key was meant for.
        alg: Algorithm,
        /// What that algorithm needs.
        needs: &'static str,
    },
    /// The key material does not parse, or is too weak to be used.
    #[error("{0}")]
    Invalid(String),
    /// The key is not for verifying signatures, or its type or curve is not supported.
    #[error("{0}")]
    Unsupported(String),
}

/// Which algorithms a key verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verifies {
    /// The one algorithm the key was declared for (`alg` of a JWK, or configured).
    Exactly(Algorithm),
    /// Any of a family: an RSA or HMAC key published without an `alg`.
    Family(AlgorithmFamily),
}

/// One verification key, parsed and checked once.
pub struct VerifyingKey {
    kid: Option<Box<str>>,
    verifies: Verifies,
    decoding: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key material stays out: an HMAC key is a secret.
        f.debug_struct("VerifyingKey").field("kid", &self.kid).field("verifies", &self.verifies).finish()
    }
}

impl VerifyingKey {
    /// An HMAC key (`HS256`, `HS384`, `HS512`) from its secret bytes.
    pub fn from_secret(kid: Option<&str>, alg: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        if alg.family() != AlgorithmFamily::Hmac {
            return Err(KeyError::WrongType { alg, needs: "a public key, not a secret" });
        }
        let needed = min_secret_bytes(alg);
        if secret.len() < needed {
            return Err(KeyError::Invalid(format!(
                "an {alg:?} secret needs at least {needed} bytes (RFC 7518 §3.2), this one has {}",
                secret.len()
            )));
        }
        Ok(Self {
            kid: kid.map(Into::into),
            verifies: Verifies::Exactly(alg),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// A public key in PEM (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY` for PKCS#1)
    /// for `alg`, which must be an RSA, ECDSA or EdDSA algorithm matching the key's type.
    pub fn from_pem(kid: Option<&str>, alg: Algorithm, pem: &str) -> Result<Self, KeyError> {
        let text = pem.trim_start();
        if !(text.starts_with("-----BEGIN PUBLIC KEY-----") || text.starts_with("-----BEGIN RSA PUBLIC KEY-----")) {
            // Certificates and private keys parse too, which hides a mistake; a private key
            // does not belong in a verifier's configuration at all.
            return Err(KeyError::Invalid("give a PEM `PUBLIC KEY` (not a certificate or a private key)".to_owned()));
        }
        let (decoding, needs) = match alg.family() {
            AlgorithmFamily::Hmac => return Err(KeyError::WrongType { alg, needs: "a secret, not a public key" }),
            AlgorithmFamily::Rsa => (DecodingKey::from_rsa_pem(pem.as_bytes()), "an RSA public key"),
            AlgorithmFamily::Ec => (DecodingKey::from_ec_pem(pem.as_bytes()), "an EC public key"),
            AlgorithmFamily::Ed => (DecodingKey::from_ed_pem(pem.as_bytes()), "an Ed25519 public key"),
        };
        let decoding = decoding.map_err(|_| KeyError::WrongType { alg, needs })?;
        check_public_key(alg, decoding.as_bytes())?;
        Ok(Self { kid: kid.map(Into::into), verifies: Verifies::Exactly(alg), decoding })
    }

    /// A key of a JSON Web Key Set (RFC 7517 §4). It verifies the JWK's `alg` if it has one,
    /// else what its type allows: any RSA algorithm for `RSA`, the curve's for `EC` and `OKP`,
    /// any HMAC algorithm for `oct`. Keys for encryption (`use: enc`) are refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(KeyError::Unsupported("the key is for encryption (`use: enc`)".to_owned()));
        }
        if let Some(operations) = &jwk.common.key_operations {
            if !operations.contains(&KeyOperations::Verify) {
                return Err(KeyError::Unsupported("the key's `key_ops` do not include `verify`".to_owned()));
            }
        }
        let declared = match jwk.common.key_algorithm {
            None => None,
            Some(declared) => Some(signature_algorithm(declared).ok_or_else(|| {
                KeyError::Unsupported(format!("`{declared}` is not a supported signature algorithm"))
            })?),
        };
        let (family, curve_alg) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
            AlgorithmParameters::OctetKey(_) => (AlgorithmFamily::Hmac, None),
            AlgorithmParameters::EllipticCurve(params) => match params.curve {
                EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
                EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
                ref other => return Err(KeyError::Unsupported(format!("EC keys on {other:?} are not supported"))),
            },
            AlgorithmParameters::OctetKeyPair(params) => match params.curve {
                EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Some(Algorithm::EdDSA)),
                ref other => return Err(KeyError::Unsupported(format!("OKP keys on {other:?} are not supported"))),
            },
        };
        let verifies = match (declared, curve_alg) {
            (Some(alg), _) if alg.family() != family => {
                return Err(KeyError::WrongType { alg, needs: needs(alg.family()) });
            }
            (Some(alg), Some(curve_alg)) if alg != curve_alg => {
                return Err(KeyError::WrongType { alg, needs: "a key on its own curve" });
            }
            (Some(alg), _) | (None, Some(alg)) => Verifies::Exactly(alg),
            (None, None) => Verifies::Family(family),
        };
        let decoding = DecodingKey::from_jwk(jwk)
            .map_err(|_| KeyError::Invalid("the key's parameters are not valid base64url".to_owned()))?;
        match &jwk.algorithm {
            AlgorithmParameters::RSA(params) => check_rsa_modulus(&params.n)?,
            AlgorithmParameters::OctetKey(_) => {
                let secret = decoding.as_bytes();
                if let Verifies::Exactly(alg) = verifies {
                    if secret.len() < min_secret_bytes(alg) {
                        return Err(KeyError::Invalid(format!(
                            "the {alg:?} secret is shorter than RFC 7518 §3.2 allows"
                        )));
                    }
                }
            }
            _ => {
                if let Verifies::Exactly(alg) = verifies {
                    check_public_key(alg, decoding.as_bytes())?;
                }
            }
        }
        Ok(Self { kid: jwk.common.key_id.as_deref().map(Into::into), verifies, decoding })
    }

    /// The same key, named `kid` and limited to `alg`, which it must already verify.
    pub fn restricted(mut self, kid: Option<&str>, alg: Algorithm) -> Result<Self, KeyError> {
        if !self.verifies(alg) {
            return Err(KeyError::WrongType { alg, needs: needs(alg.family()) });
        }
        self.verifies = Verifies::Exactly(alg);
        if let Some(kid) = kid {
            self.kid = Some(kid.into());
        }
        Ok(self)
    }

    /// The key id (`kid`), if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether a token signed with `alg` may be verified with this key. The key's type always
    /// has to match the algorithm's family, so an RSA key never verifies an `HS256` token.
    pub fn verifies(&self, alg: Algorithm) -> bool {
        match self.verifies {
            Verifies::Exactly(own) => own == alg,
            Verifies::Family(family) => family == alg.family(),
        }
    }

    /// Whether the key may verify a token with header `kid` and `alg` (see
    /// [`KeySet::candidates`]).
    fn matches(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.verifies(alg)
            && match (kid, self.kid()) {
                (Some(wanted), Some(own)) => wanted == own,
                _ => true,
            }
    }

    /// The key as jsonwebtoken verifies with it.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

fn needs(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "a secret (`oct`) key",
        AlgorithmFamily::Rsa => "an RSA key",
        AlgorithmFamily::Ec => "an EC key",
        AlgorithmFamily::Ed => "an Ed25519 (`OKP`) key",
    }
}

fn signature_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parses public key bytes as aws-lc-rs will when verifying, so a key that could never verify
/// anything (not on the curve, RSA under 2048 bits) is refused when it is loaded rather than
/// turning every token into a 401.
fn check_public_key(alg: Algorithm, bytes: &[u8]) -> Result<(), KeyError> {
    let algorithm: &'static dyn VerificationAlgorithm = match alg.family() {
        AlgorithmFamily::Rsa => &RSA_PKCS1_2048_8192_SHA256,
        AlgorithmFamily::Ec if alg == Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED,
        AlgorithmFamily::Ec => &ECDSA_P256_SHA256_FIXED,
        AlgorithmFamily::Ed => &ED25519,
        AlgorithmFamily::Hmac => return Ok(()),
    };
    ParsedPublicKey::new(algorithm, bytes)
        .map(drop)
        .map_err(|rejected| KeyError::Invalid(format!("not a usable {alg:?} public key ({rejected})")))
}

fn check_rsa_modulus(n: &str) -> Result<(), KeyError> {
    use base64::Engine;
    let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .map_err(|_| KeyError::Invalid("the RSA modulus is not valid base64url".to_owned()))?;
    let bits = modulus.iter().skip_while(|&&byte| byte == 0).count() * 8;
    if bits < 2048 {
        return Err(KeyError::Invalid("RSA keys under 2048 bits are not accepted".to_owned()));
    }
    Ok(())
}

/// A set of verification keys, parsed once.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    /// When it was fetched, for sets of a [`JwksCache`].
    fetched_at: Option<Instant>,
    generation: u64,
    /// SHA-256 of the usable entries of a fetched document, to tell a refetch of the same
    /// keys from a changed set.
    content: Option<[u8; 32]>,
}

/// Generations are unique in the process, not per cache, so that sets of two caches (an
/// OpenID provider whose metadata moved its `jwks_uri`) never share one.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Default for KeySet {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl KeySet {
    /// A set of the given keys, with a generation of its own.
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(Arc::new).collect(),
            fetched_at: None,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            content: None,
        }
    }

    /// Which version of the keys this is. Two sets with the same generation hold the same
    /// keys; a [`JwksCache`] keeps the generation when a refetch brings the same keys again
    /// and gives the set a new one when anything changed, so a result verified with a set
    /// is known to hold for the current set when their generations are equal.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Parses a JSON Web Key Set document (`{"keys": [...]}`). Keys that cannot verify
    /// signatures here (encryption keys, unsupported curves) are skipped; a set without any
    /// usable key is an error.
    pub fn from_jwks_json(document: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|err| format!("not a JSON Web Key Set: {err}"))?;
        let mut keys = Vec::with_capacity(document.keys.len());
        let mut content = sha2::Sha256::new();
        for raw in document.keys {
            let kid = raw.get("kid").and_then(serde_json::Value::as_str).map(str::to_owned);
            // Written out again rather than hashed as received, so that a server changing
            // only whitespace does not look like a new set.
            let text = raw.to_string();
            let parsed = serde_json::from_value::<Jwk>(raw)
                .map_err(|err| KeyError::Unsupported(err.to_string()))
                .and_then(|jwk| VerifyingKey::from_jwk(&jwk));
            match parsed {
                Ok(key) => {
                    keys.push(key);
                    content.update((text.len() as u64).to_be_bytes());
                    content.update(text.as_bytes());
                }
                Err(reason) => tracing::debug!(kid = kid.as_deref(), %reason, "key set entry skipped"),
            }
        }
        if keys.is_empty() {
            return Err("the key set has no key usable to verify signatures".to_owned());
        }
        Ok(Self { content: Some(content.finalize().into()), ..Self::new(keys) })
    }

    /// The keys that may verify a token with header `kid` and `alg`: those verifying `alg`
    /// whose `kid` is the token's, and those without a `kid` (which match any token). A token
    /// without a `kid` may be verified by any key verifying `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Arc<VerifyingKey>> + 'a {
        self.keys.iter().filter(move |key| key.matches(kid, alg))
    }

    /// The first of [`KeySet::candidates`].
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerifyingKey>> {
        self.keys.iter().find(|key| key.matches(kid, alg))
    }

    /// Every key, in order.
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }

    /// How many keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How a [`JwksCache`] fetches and refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JwksSettings {
    /// Age after which a used set is refreshed in the background.
    pub refresh: Duration,
    /// Least time between two fetches, whatever asks for them.
    pub min_refresh: Duration,
    /// Longest a fetch may take, connection included.
    pub timeout: Duration,
}

impl Default for JwksSettings {
    /// Refresh every 5 minutes, at most every 10 seconds, give up a fetch after 5 seconds.
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a [`JwksCache`] has no key for a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// No key set could be fetched yet: the gateway cannot check any token (a 503, not the
    /// token's fault).
    #[error("the signing keys could not be fetched yet")]
    Unavailable,
    /// The set has no key for the token's `kid` and `alg`, even after a refresh.
    #[error("no signing key matches the token")]
    UnknownKey,
}

/// Why a [`JwksCache`] could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksUrlError {
    /// The URL does not parse or is not `http`/`https`.
    #[error("`{0}` is not an http or https URL")]
    NotHttp(String),
    /// The HTTP client could not be set up.
    #[error("the HTTP client could not be set up: {0}")]
    Client(String),
}

/// A JSON Web Key Set fetched from a URL and cached; see the module documentation for when it
/// fetches. Cloning is cheap and clones share the cache.
#[derive(Clone, Debug)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    url: reqwest::Url,
    settings: JwksSettings,
    client: reqwest::Client,
    current: ArcSwapOption<KeySet>,
    /// Held while a fetch runs: concurrent misses wait here for one fetch.
    fetch: Arc<tokio::sync::Mutex<FetchState>>,
    /// Finished fetch attempts, so a waiter can tell that one ended while it waited.
    attempts: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").field("url", &loggable(&self.url)).field("settings", &self.settings).finish()
    }
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
}

impl FetchState {
    fn may_fetch(&self, min_refresh: Duration) -> bool {
        self.last_attempt.is_none_or(|last| last.elapsed() >= min_refresh)
    }
}

/// A cache alive somewhere, by URL and settings.
type SharedEntry = (String, JwksSettings, Weak<Inner>);

/// Caches by URL and settings, so that a configuration reload finds the one the running
/// configuration uses. Dead entries are dropped when another is added.
static SHARED: LazyLock<Mutex<Vec<SharedEntry>>> = LazyLock::new(Mutex::default);

impl JwksCache {
    /// A new, empty cache of the set at `url`. Nothing is fetched yet.
    pub fn new(url: &str, settings: JwksSettings) -> Result<Self, JwksUrlError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| JwksUrlError::NotHttp(url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(JwksUrlError::NotHttp(url.to_owned()));
        }
        install_crypto_provider();
        let client =
            outbound::client_builder(settings.timeout).build().map_err(|err| JwksUrlError::Client(err.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: parsed,
                settings,
                client,
                current: ArcSwapOption::empty(),
                fetch: Arc::default(),
                attempts: AtomicU64::new(0),
            }),
        })
    }

    /// The cache of `url` with `settings` that is alive in this process, or a new one.
    pub fn shared(url: &str, settings: JwksSettings) -> Result<Self, JwksUrlError> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        let alive = shared
            .iter()
            .filter(|(own_url, own_settings, _)| own_url == url && *own_settings == settings)
            .find_map(|(_, _, inner)| inner.upgrade());
        if let Some(inner) = alive {
            return Ok(Self { inner });
        }
        let cache = Self::new(url, settings)?;
        shared.retain(|(_, _, inner)| inner.strong_count() > 0);
        shared.push((url.to_owned(), settings, Arc::downgrade(&cache.inner)));
        Ok(cache)
    }

    /// The URL, without user information or query, as logs show it.
    pub fn url(&self) -> String {
        loggable(&self.inner.url)
    }

    /// Starts the first fetch in the background if nothing was fetched yet and a tokio runtime
    /// is running; otherwise the first use fetches.
    pub fn prefetch(&self) {
        if self.inner.current.load().is_none() {
            self.inner.refresh_in_background();
        }
    }

    /// The generation of the current set (see [`KeySet::generation`]), or `None` before the
    /// first fetch. Counts as a use of the set: one due for refresh is refreshed in the
    /// background, so results kept per generation still notice a rotation.
    pub fn generation(&self) -> Option<u64> {
        let set = self.inner.current.load();
        let set = set.as_ref()?;
        self.inner.refresh_if_due(set);
        Some(set.generation)
    }

    /// The current set if it has a key for `kid` and `alg`, without waiting. A set due for
    /// refresh is refreshed in the background meanwhile.
    pub fn cached_keys(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<KeySet>> {
        let set = self.inner.current.load_full()?;
        set.find(kid, alg)?;
        self.inner.refresh_if_due(&set);
        Some(set)
    }

    /// A set with at least one key for `kid` and `alg`: the current one, or a refreshed one
    /// when the current set has none (or nothing was fetched yet).
    pub async fn keys(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<KeySet>, JwksError> {
        // Read before looking, so a fetch that ends in between is not repeated.
        let seen = self.inner.attempts.load(Ordering::Acquire);
        if let Some(set) = self.cached_keys(kid, alg) {
            return Ok(set);
        }
        self.inner.refresh(seen).await;
        match self.inner.current.load_full() {
            Some(set) if set.find(kid, alg).is_some() => Ok(set),
            Some(_) => Err(JwksError::UnknownKey),
            None => Err(JwksError::Unavailable),
        }
    }

    /// The first key for `kid` and `alg` (see [`KeySet::candidates`]), refreshing the set when
    /// it has none.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyingKey>, JwksError> {
        let set = self.keys(kid, alg).await?;
        set.find(kid, alg).cloned().ok_or(JwksError::UnknownKey)
    }
}

impl Inner {
    fn refresh_if_due(self: &Arc<Self>, set: &KeySet) {
        if set.fetched_at.is_some_and(|at| at.elapsed() >= self.settings.refresh) {
            self.refresh_in_background();
        }
    }

    /// Fetches in a task of its own unless a fetch is under way or too recent.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(mut state) = self.fetch.clone().try_lock_owned() else { return };
        if !state.may_fetch(self.settings.min_refresh) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        let inner = self.clone();
        // The task holds the lock until the fetch ends, so requests that miss meanwhile wait
        // for this fetch instead of starting one.
        runtime.spawn(async move {
            inner.fetch_and_store().await;
            drop(state);
        });
    }

    /// Waits for a fetch: the one under way, or a new one if `seen` attempts are all that
    /// ended and the last is old enough.
    async fn refresh(self: &Arc<Self>, seen: u64) {
        let mut state = self.fetch.clone().lock_owned().await;
        if self.attempts.load(Ordering::Acquire) != seen || !state.may_fetch(self.settings.min_refresh) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        let inner = self.clone();
        let fetch = async move {
            inner.fetch_and_store().await;
            drop(state);
        };
        // In a task of its own, so a request that gives up waiting does not cancel the fetch
        // the others wait for.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let _ = runtime.spawn(fetch).await;
            }
            Err(_) => fetch.await,
        }
    }

    async fn fetch_and_store(&self) {
        match self.download().await {
            Ok(mut set) => {
                tracing::debug!(url = %loggable(&self.url), keys = set.len(), "key set fetched");
                set.fetched_at = Some(Instant::now());
                if let Some(current) = self.current.load().as_ref() {
                    if current.content.is_some() && current.content == set.content {
                        set.generation = current.generation;
                    }
                }
                self.current.store(Some(Arc::new(set)));
            }
            Err(error) => {
                let keeps = self.current.load().as_ref().map_or(0, |set| set.len());
                tracing::warn!(url = %loggable(&self.url), %error, kept_keys = keeps, "key set fetch failed");
            }
        }
        self.attempts.fetch_add(1, Ordering::Release);
    }

    async fn download(&self) -> Result<KeySet, String> {
        let accept = "application/jwk-set+json, application/json";
        let body = outbound::get_document(&self.client, &self.url, accept, MAX_JWKS_BYTES).await?;
        KeySet::from_jwks_json(&body)
    }
}

/// `scheme://host:port/path` of a URL: user information and query may hold credentials.
fn loggable(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

#[cfg(test)]
mod tests;

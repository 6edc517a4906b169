//! Verified tokens remembered by the JWT-checking identity policies (`jwt`, and `oidc` for
//! bearer tokens), so that a token presented again skips the signature check (Envoy's
//! `jwt_authn` `jwt_cache_config`): an RSA-2048 verification costs about 340,000
//! instructions, a lookup about 20,000, most of them the SHA-256 of the token (see
//! `docs/benchmarks.md`).
//!
//! Runs per request: one SHA-256 of the token and one lookup, no lock held across either. An
//! entry is keyed by the digest of the token's exact bytes (the token itself is not kept),
//! holds what the policy made of the token, and is used only
//!
//! - with the key set it was verified with: entries carry the [`KeySet::generation`], and a
//!   lookup names the generation of the set in use, so a rotated or withdrawn key is never
//!   vouched for by an entry made with it;
//! - while the token's time claims still hold: `nbf` (with the leeway) has come, `exp` has not
//!   (without the leeway: past `exp` the full check decides, leeway included);
//! - for the configured `ttl` at most.
//!
//! Only tokens that passed every check are stored. Refused ones are not: a refusal is what an
//! attacker can produce at will, so remembering refusals would let them fill the cache and
//! push out the entries of real clients.
//!
//! A cache belongs to one built policy: a configuration reload builds a new, empty one, so
//! changed consumers, claims mappings or inline keys never meet old entries.
//!
//! [`KeySet::generation`]: super::jwks::KeySet::generation

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::Validate;
use schemars::JsonSchema;
use serde::Deserialize;

/// How many verified tokens a policy remembers, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Most tokens remembered; the least useful are evicted first. `0` turns the cache off, so
    /// that every request pays for the full signature check.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
    /// Longest a verified token is remembered; never past the token's `exp`.
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_tokens: default_max_tokens(), ttl: default_ttl() }
    }
}

/// A few megabytes at most (an entry is a few hundred bytes), and more distinct tokens than
/// one gateway usually sees within a `ttl`.
fn default_max_tokens() -> u64 {
    10_000
}

/// As long as a key set is used before it is refreshed (`jwks_refresh`).
fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

impl Validate for CacheConfig {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.ttl.get().is_zero() {
            errors.push(path.key("ttl"), "must be longer than zero; `max_tokens: 0` turns the cache off");
        }
    }
}

/// SHA-256 of a token's bytes: what entries are found by. Not printable, so that neither the
/// token nor a value standing for it ends up in a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`. aws-lc's SHA-256 rather than the sha2 crate's: it is on every
    /// cached request, and aws-lc's assembly is the faster one wherever the CPU lacks the SHA
    /// extensions (and under callgrind, which hides them).
    pub(crate) fn of(token: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

/// The time claims of a verified token, as seconds since the epoch (RFC 7519 §4.1.4, §4.1.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Validity {
    /// `nbf`, when the token has one.
    pub(crate) not_before: Option<u64>,
    /// `exp`, when the token has one and the policy checks it.
    pub(crate) expires: Option<u64>,
}

/// A NumericDate claim's JSON text as jsonwebtoken reads it when it checks the claim: an
/// unsigned integer, or a non-negative number rounded to the nearest second.
pub(crate) fn numeric_date(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds);
    }
    let seconds = text.parse::<f64>().ok()?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    // The range is checked first; the rounding is jsonwebtoken's, so both read the same second.
    (seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64).then(|| seconds.round() as u64)
}

/// Seconds since the epoch, by the clock jsonwebtoken checks claims with.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

struct Entry<V> {
    value: Arc<V>,
    generation: u64,
    validity: Validity,
    lifetime: std::time::Duration,
}

/// Ends each entry at its own time: the `ttl`, or the token's `exp` if that comes first.
struct UntilExpired;

impl<V> moka::Expiry<TokenDigest, Arc<Entry<V>>> for UntilExpired {
    fn expire_after_create(
        &self,
        _token: &TokenDigest,
        entry: &Arc<Entry<V>>,
        _created_at: Instant,
    ) -> Option<std::time::Duration> {
        Some(entry.lifetime)
    }
}

/// Verified tokens of one policy, each with what the policy made of it (`V`).
pub(crate) struct VerifiedTokens<V> {
    entries: moka::sync::Cache<TokenDigest, Arc<Entry<V>>>,
    ttl: std::time::Duration,
    /// Clock skew allowed on `nbf`, in seconds, as the full check allows it.
    leeway: u64,
}

impl<V> std::fmt::Debug for VerifiedTokens<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens").field("ttl", &self.ttl).field("leeway", &self.leeway).finish()
    }
}

impl<V: Send + Sync + 'static> VerifiedTokens<V> {
    /// The cache `config` describes for a policy allowing `leeway` seconds of clock skew, or
    /// `None` when it is turned off.
    pub(crate) fn new(config: &CacheConfig, leeway: u64) -> Option<Self> {
        if config.max_tokens == 0 {
            return None;
        }
        let entries = moka::sync::Cache::builder().max_capacity(config.max_tokens).expire_after(UntilExpired).build();
        Some(Self { entries, ttl: config.ttl.get(), leeway })
    }

    /// What the policy made of the token with digest `token`, if it was verified with the key
    /// set of `generation` and its time claims still hold.
    pub(crate) fn get(&self, token: &TokenDigest, generation: u64) -> Option<Arc<V>> {
        self.get_at(token, generation, now_secs())
    }

    fn get_at(&self, token: &TokenDigest, generation: u64, now: u64) -> Option<Arc<V>> {
        let entry = self.entries.get(token)?;
        let Validity { not_before, expires } = entry.validity;
        let holds = entry.generation == generation
            && not_before.is_none_or(|nbf| nbf <= now.saturating_add(self.leeway))
            && expires.is_none_or(|exp| now < exp);
        holds.then(|| entry.value.clone())
    }

    /// Remembers `value` for the token with digest `token`, verified with the key set of
    /// `generation`: call it only once every check has passed.
    pub(crate) fn insert(&self, token: TokenDigest, generation: u64, validity: Validity, value: Arc<V>) {
        self.insert_at(token, generation, validity, value, now_secs());
    }

    fn insert_at(&self, token: TokenDigest, generation: u64, validity: Validity, value: Arc<V>, now: u64) {
        let lifetime = match validity.expires {
            Some(exp) if exp <= now => return,
            Some(exp) => self.ttl.min(std::time::Duration::from_secs(exp - now)),
            None => self.ttl,
        };
        self.entries.insert(token, Arc::new(Entry { value, generation, validity, lifetime }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn cache(max_tokens: u64, leeway: u64) -> VerifiedTokens<u32> {
        VerifiedTokens::new(&CacheConfig { max_tokens, ttl: Duration::from_secs(300) }, leeway).expect("turned on")
    }

    fn until(exp: u64) -> Validity {
        Validity { not_before: None, expires: Some(exp) }
    }

    /// Looks `token` up as a policy does, verifying (and counting it) on a miss.
    fn verified(
        tokens: &VerifiedTokens<u32>,
        token: &str,
        generation: u64,
        now: u64,
        verifications: &mut u32,
    ) -> Arc<u32> {
        let digest = TokenDigest::of(token);
        if let Some(value) = tokens.get_at(&digest, generation, now) {
            return value;
        }
        *verifications += 1;
        let value = Arc::new(7);
        tokens.insert_at(digest, generation, until(NOW + 60), value.clone(), now);
        value
    }

    #[test]
    fn verifies_a_token_once_and_answers_repeats_from_the_cache() {
        let tokens = cache(10, 0);
        let mut verifications = 0;
        let first = verified(&tokens, "header.claims.signature", 1, NOW, &mut verifications);
        for _ in 0..3 {
            let again = verified(&tokens, "header.claims.signature", 1, NOW + 1, &mut verifications);
            assert!(Arc::ptr_eq(&first, &again), "a repeat got another value");
        }
        assert_eq!(verifications, 1);
    }

    #[test]
    fn tells_tokens_apart_by_every_byte() {
        let tokens = cache(10, 0);
        tokens.insert_at(TokenDigest::of("aaa.bbb.ccc"), 1, until(NOW + 60), Arc::new(1), NOW);
        tokens.insert_at(TokenDigest::of("aaa.bbb.ccd"), 1, until(NOW + 60), Arc::new(2), NOW);
        assert_eq!(tokens.get_at(&TokenDigest::of("aaa.bbb.ccc"), 1, NOW).as_deref(), Some(&1));
        assert_eq!(tokens.get_at(&TokenDigest::of("aaa.bbb.ccd"), 1, NOW).as_deref(), Some(&2));
        assert_eq!(tokens.get_at(&TokenDigest::of("aaa.bbb.cc"), 1, NOW), None);
        assert_eq!(tokens.get_at(&TokenDigest::of("aaa.bbb.ccc "), 1, NOW), None);
    }

    #[test]
    fn answers_only_for_the_key_set_generation_that_verified_the_token() {
        let tokens = cache(10, 0);
        let token = TokenDigest::of("t");
        tokens.insert_at(token, 7, until(NOW + 60), Arc::new(0), NOW);
        assert!(tokens.get_at(&token, 7, NOW).is_some());
        assert_eq!(tokens.get_at(&token, 8, NOW), None, "an entry made with another key set was used");
    }

    #[test]
    fn stops_answering_once_the_token_expires() {
        let tokens = cache(10, 30);
        let token = TokenDigest::of("t");
        tokens.insert_at(token, 1, until(NOW + 10), Arc::new(0), NOW);
        assert!(tokens.get_at(&token, 1, NOW + 9).is_some());
        // The leeway is the full check's to grant: past `exp`, the cache has no say.
        assert_eq!(tokens.get_at(&token, 1, NOW + 10), None);
        assert_eq!(tokens.get_at(&token, 1, NOW + 3600), None);
    }

    #[test]
    fn keeps_no_token_that_is_already_expired() {
        let tokens = cache(10, 30);
        let token = TokenDigest::of("t");
        // Accepted thanks to the leeway, but not remembered.
        tokens.insert_at(token, 1, until(NOW - 5), Arc::new(0), NOW);
        tokens.entries.run_pending_tasks();
        assert_eq!(tokens.entries.entry_count(), 0);
    }

    #[test]
    fn answers_only_once_nbf_has_come_within_the_leeway() {
        let tokens = cache(10, 30);
        let token = TokenDigest::of("t");
        let validity = Validity { not_before: Some(NOW + 20), expires: Some(NOW + 600) };
        tokens.insert_at(token, 1, validity, Arc::new(0), NOW);
        assert!(tokens.get_at(&token, 1, NOW).is_some(), "within the leeway");
        // The clock was set back since the token was verified.
        assert_eq!(tokens.get_at(&token, 1, NOW - 60), None);
    }

    #[test]
    fn ends_entries_after_the_ttl_or_at_exp_whichever_comes_first() {
        let tokens = VerifiedTokens::<u32>::new(&CacheConfig { max_tokens: 10, ttl: Duration::from_millis(100) }, 0)
            .expect("turned on");
        let now = now_secs();
        tokens.insert(TokenDigest::of("long"), 1, until(now + 3600), Arc::new(0));
        tokens.insert(TokenDigest::of("no-exp"), 1, Validity::default(), Arc::new(0));
        assert!(tokens.get(&TokenDigest::of("long"), 1).is_some());
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(tokens.get(&TokenDigest::of("long"), 1), None, "outlived the ttl");
        assert_eq!(tokens.get(&TokenDigest::of("no-exp"), 1), None, "outlived the ttl");

        let tokens = cache(10, 0);
        tokens.insert(TokenDigest::of("short"), 1, until(now_secs() + 1), Arc::new(0));
        let entry = tokens.entries.get(&TokenDigest::of("short")).expect("stored");
        assert!(entry.lifetime <= std::time::Duration::from_secs(1), "outlives exp: {:?}", entry.lifetime);
    }

    #[test]
    fn keeps_at_most_max_tokens() {
        let tokens = cache(3, 0);
        for index in 0..50 {
            tokens.insert_at(TokenDigest::of(&format!("token-{index}")), 1, until(NOW + 60), Arc::new(0), NOW);
        }
        tokens.entries.run_pending_tasks();
        assert!(tokens.entries.entry_count() <= 3, "{} entries", tokens.entries.entry_count());
    }

    #[test]
    fn reads_numeric_dates_as_jsonwebtoken_does() {
        assert_eq!(numeric_date("1700000000"), Some(1_700_000_000));
        assert_eq!(numeric_date(" 1.7e9 "), Some(1_700_000_000));
        assert_eq!(numeric_date("1700000000.6"), Some(1_700_000_001));
        assert_eq!(numeric_date("-1"), None);
        assert_eq!(numeric_date("\"1700000000\""), None);
    }

    #[test]
    fn turns_off_with_zero_tokens_and_refuses_a_zero_ttl() {
        let off = CacheConfig { max_tokens: 0, ..CacheConfig::default() };
        assert!(VerifiedTokens::<()>::new(&off, 0).is_none());
        let mut errors = ConfigErrors::default();
        CacheConfig { ttl: Duration::from_secs(0), ..CacheConfig::default() }
            .validate(&FieldPath::root().key("cache"), &mut errors);
        let messages: Vec<String> = errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect();
        assert_eq!(messages, ["cache.ttl: must be longer than zero; `max_tokens: 0` turns the cache off"]);
    }
}

//! Keys from JWKs and PEM against published test vectors, the algorithm rules, and the cache
//! against a real key set server: single flight, refresh on unknown `kid` with its rate limit,
//! rotation, periodic refresh and stale-on-error.

use std::time::Duration;

use gantry_testkit::eventually;
use gantry_testkit::jwks::{JwksServer, SigningKey};
use http::StatusCode;
use jsonwebtoken::crypto;
use serde_json::json;

use super::*;

/// RFC 7520 §4 signs a text that is not a claims set, so these vectors are checked on the
/// signature alone, with the key as the key set would give it.
const RFC7520_PAYLOAD: &str = "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";

/// RFC 7520 §3.3, Figure 3.
fn rfc7520_rsa_jwk() -> serde_json::Value {
    json!({
        "kty": "RSA",
        "kid": "bilbo.baggins@hobbiton.example",
        "use": "sig",
        "n": "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw",
        "e": "AQAB"
    })
}

fn jwk(value: serde_json::Value) -> Jwk {
    serde_json::from_value(value).expect("a JWK")
}

fn key_from(value: serde_json::Value) -> VerifyingKey {
    VerifyingKey::from_jwk(&jwk(value)).expect("a usable key")
}

/// Verifies `header.payload.signature` with `key` as `alg`.
fn verifies(key: &VerifyingKey, alg: Algorithm, header: &str, payload: &str, signature: &str) -> bool {
    install_crypto_provider();
    let message = format!("{header}.{payload}");
    crypto::verify(signature, message.as_bytes(), key.decoding_key(), alg).expect("a well-formed signature")
}

#[test]
fn verifies_the_rfc_7520_rs256_example_with_its_jwk() {
    let key = key_from(rfc7520_rsa_jwk());
    let header = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9";
    let signature = "MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg";
    assert_eq!(key.kid(), Some("bilbo.baggins@hobbiton.example"));
    assert!(key.verifies(Algorithm::RS256));
    assert!(verifies(&key, Algorithm::RS256, header, RFC7520_PAYLOAD, signature));
    assert!(!verifies(&key, Algorithm::RS256, header, "dGFtcGVyZWQ", signature), "a changed payload verified");
}

#[test]
fn verifies_the_rfc_7520_ps384_example_with_its_jwk() {
    let key = key_from(rfc7520_rsa_jwk());
    let header = "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9";
    let signature = "cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2IpN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXUvdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRXe8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw";
    assert!(key.verifies(Algorithm::PS384), "an RSA key without `alg` verifies every RSA algorithm");
    assert!(verifies(&key, Algorithm::PS384, header, RFC7520_PAYLOAD, signature));
}

#[test]
fn verifies_the_rfc_7520_hs256_example_with_its_oct_jwk() {
    let key = key_from(json!({
        "kty": "oct",
        "kid": "018c0ae5-4d9b-471b-bfd6-eef314bc7037",
        "use": "sig",
        "alg": "HS256",
        "k": "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg"
    }));
    let header = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9";
    assert!(verifies(&key, Algorithm::HS256, header, RFC7520_PAYLOAD, "s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0"));
    assert!(!key.verifies(Algorithm::HS512), "a key declared HS256 verifies HS256 only");
}

#[test]
fn verifies_the_rfc_8037_ed25519_example_with_its_okp_jwk() {
    let key = key_from(json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
    assert!(key.verifies(Algorithm::EdDSA));
    let signature = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    // RFC 8037 A.4 signs "Example of Ed25519 signing".
    assert!(verifies(&key, Algorithm::EdDSA, "eyJhbGciOiJFZERTQSJ9", "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc", signature));
}

#[test]
fn limits_a_key_to_the_algorithms_of_its_type() {
    let rsa = key_from(rfc7520_rsa_jwk());
    for alg in [Algorithm::HS256, Algorithm::ES256, Algorithm::EdDSA] {
        assert!(!rsa.verifies(alg), "an RSA key verifies {alg:?}");
    }
    let p256 = key_from(json!({
        "kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }));
    assert!(p256.verifies(Algorithm::ES256));
    assert!(!p256.verifies(Algorithm::ES384), "a P-256 key verifies ES384");
    let restricted = key_from(rfc7520_rsa_jwk()).restricted(Some("pinned"), Algorithm::PS256).expect("RSA fits PS256");
    assert!(restricted.verifies(Algorithm::PS256) && !restricted.verifies(Algorithm::RS256));
    assert_eq!(restricted.kid(), Some("pinned"));
    assert!(matches!(key_from(rfc7520_rsa_jwk()).restricted(None, Algorithm::HS256), Err(KeyError::WrongType { .. })));
}

#[test]
fn refuses_jwks_entries_it_cannot_verify_with() {
    let refused = |value: serde_json::Value| VerifyingKey::from_jwk(&jwk(value)).expect_err("refused");
    let mut encryption = rfc7520_rsa_jwk();
    encryption["use"] = json!("enc");
    assert!(matches!(refused(encryption), KeyError::Unsupported(_)));
    let mut declared_ec = rfc7520_rsa_jwk();
    declared_ec["alg"] = json!("ES256");
    assert!(matches!(refused(declared_ec), KeyError::WrongType { alg: Algorithm::ES256, .. }));
    let p521 = json!({
        "kty": "EC", "crv": "P-521",
        "x": "AHKZLLOsCOzz5cY97ewNUajB957y-C-U88c3v13nmGZx6sYl_oJXu9A5RkTKqjqvjyekWF-7ytDyRXYgCF5cj0Kt",
        "y": "AdymlHvOiLxXkEhayXQnNCvDX4h9htZaCJN34kfmC6pV5OhQHiraVySsUdaQkAgDPrwQrJmbnX9cwlGfP-HqHZR1"
    });
    assert!(matches!(refused(p521), KeyError::Unsupported(_)));
    // The RFC 7515 A.3 point with one coordinate changed is not on P-256.
    let off_curve = json!({
        "kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a1"
    });
    assert!(matches!(refused(off_curve), KeyError::Invalid(_)));
    let tiny = json!({"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXbg", "e": "AQAB"});
    assert!(matches!(refused(tiny), KeyError::Invalid(message) if message.contains("2048")));
}

#[test]
fn takes_secrets_only_for_hmac_and_public_keys_only_for_the_rest() {
    assert!(matches!(
        VerifyingKey::from_secret(None, Algorithm::RS256, &[7; 64]),
        Err(KeyError::WrongType { alg: Algorithm::RS256, .. })
    ));
    let short = VerifyingKey::from_secret(None, Algorithm::HS512, &[7; 32]).expect_err("too short");
    assert!(short.to_string().contains("64 bytes"), "{short}");
    assert!(VerifyingKey::from_secret(Some("k"), Algorithm::HS256, &[7; 32]).is_ok());

    let ec = SigningKey::generate("ec", Algorithm::ES256);
    assert!(VerifyingKey::from_pem(None, Algorithm::ES256, ec.public_key_pem()).is_ok());
    assert!(matches!(
        VerifyingKey::from_pem(None, Algorithm::RS256, ec.public_key_pem()),
        Err(KeyError::WrongType { alg: Algorithm::RS256, .. })
    ));
    assert!(matches!(
        VerifyingKey::from_pem(None, Algorithm::HS256, ec.public_key_pem()),
        Err(KeyError::WrongType { alg: Algorithm::HS256, .. })
    ));
    assert!(
        VerifyingKey::from_pem(None, Algorithm::ES384, ec.public_key_pem()).is_err(),
        "a P-256 key was taken for ES384"
    );
    let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
    assert!(matches!(VerifyingKey::from_pem(None, Algorithm::EdDSA, private), Err(KeyError::Invalid(_))));
}

#[test]
fn picks_candidates_by_kid_and_alg_and_tries_keys_without_a_kid_for_any() {
    let named = key_from(rfc7520_rsa_jwk());
    let unnamed = VerifyingKey::from_secret(None, Algorithm::HS256, &[1; 32]).expect("secret");
    let set = KeySet::new(vec![named, unnamed]);
    fn kids<'a>(set: &'a KeySet, kid: Option<&'a str>, alg: Algorithm) -> Vec<Option<&'a str>> {
        set.candidates(kid, alg).map(|key| key.kid()).collect()
    }
    assert_eq!(
        kids(&set, Some("bilbo.baggins@hobbiton.example"), Algorithm::RS256),
        [Some("bilbo.baggins@hobbiton.example")]
    );
    assert_eq!(kids(&set, Some("someone-else"), Algorithm::RS256), Vec::<Option<&str>>::new());
    assert_eq!(kids(&set, Some("someone-else"), Algorithm::HS256), [None]);
    assert_eq!(kids(&set, None, Algorithm::PS512), [Some("bilbo.baggins@hobbiton.example")]);
    assert!(set.find(None, Algorithm::ES256).is_none());
}

#[test]
fn reads_a_key_set_skipping_what_it_cannot_use_and_refuses_one_with_nothing_usable() {
    let document = json!({"keys": [
        rfc7520_rsa_jwk(),
        {"kty": "oct", "use": "enc", "k": "AAPapAv4LbFbiVawEjagUBluYqN5rhna-8nuldDvOx8"},
        {"kty": "OKP", "crv": "X25519", "x": "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08"},
        {"kty": "weird"}
    ]});
    let set = KeySet::from_jwks_json(document.to_string().as_bytes()).expect("one usable key");
    assert_eq!(set.len(), 1);
    assert!(KeySet::from_jwks_json(br#"{"keys": [{"kty": "weird"}]}"#).is_err());
    assert!(KeySet::from_jwks_json(b"<html>").is_err());
}

fn quick() -> JwksSettings {
    JwksSettings { refresh: Duration::from_secs(300), min_refresh: Duration::ZERO, timeout: Duration::from_secs(5) }
}

#[test]
fn accepts_only_http_and_https_urls() {
    assert!(matches!(JwksCache::new("ftp://idp.example.com/keys", quick()), Err(JwksUrlError::NotHttp(_))));
    assert!(matches!(JwksCache::new("not a url", quick()), Err(JwksUrlError::NotHttp(_))));
    let cache = JwksCache::new("https://user:pass@idp.example.com/keys?token=x", quick()).expect("https");
    assert_eq!(cache.url(), "https://idp.example.com/keys", "logs must not show credentials");
}

#[test]
fn shares_one_cache_per_url_and_settings() {
    let first = JwksCache::shared("https://shared.example.com/keys", quick()).expect("url");
    let again = JwksCache::shared("https://shared.example.com/keys", quick()).expect("url");
    assert!(Arc::ptr_eq(&first.inner, &again.inner));
    let other = JwksCache::shared("https://shared.example.com/keys", JwksSettings::default()).expect("url");
    assert!(!Arc::ptr_eq(&first.inner, &other.inner));
}

#[tokio::test]
async fn fetches_once_for_concurrent_first_uses() {
    let signer = SigningKey::rsa("first");
    let server = JwksServer::start(&[&signer]).await;
    let cache = JwksCache::new(&server.url(), quick()).expect("url");
    let lookups = (0..20).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move { cache.key(Some("first"), Algorithm::RS256).await })
    });
    for lookup in lookups {
        assert!(lookup.await.expect("task").is_ok());
    }
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn refreshes_for_an_unknown_kid_at_most_once_per_min_refresh() {
    let old = SigningKey::rsa("old");
    let server = JwksServer::start(&[&old]).await;
    let settings = JwksSettings { min_refresh: Duration::from_secs(60), ..quick() };
    let cache = JwksCache::new(&server.url(), settings).expect("url");
    assert!(cache.key(Some("old"), Algorithm::RS256).await.is_ok());

    // The first fetch was just made: a made-up kid does not cause another.
    assert_eq!(cache.key(Some("made-up"), Algorithm::RS256).await.err(), Some(JwksError::UnknownKey));
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn finds_a_rotated_key_by_refreshing_on_its_unknown_kid() {
    let old = SigningKey::rsa("old");
    let server = JwksServer::start(&[&old]).await;
    let cache = JwksCache::new(&server.url(), quick()).expect("url");
    assert!(cache.key(Some("old"), Algorithm::RS256).await.is_ok());
    assert!(cache.cached_keys(Some("new"), Algorithm::RS256).is_none());

    let new = SigningKey::rsa("new");
    server.publish(&[&new]);
    let key = cache.key(Some("new"), Algorithm::RS256).await.expect("the rotated key");
    assert_eq!(key.kid(), Some("new"));
    assert_eq!(server.fetches(), 2);
    assert_eq!(
        cache.key(Some("old"), Algorithm::RS256).await.err(),
        Some(JwksError::UnknownKey),
        "the old key was withdrawn"
    );
}

#[tokio::test]
async fn keeps_the_last_good_keys_when_the_server_fails_or_goes_away() {
    let signer = SigningKey::rsa("kept");
    let mut server = JwksServer::start(&[&signer]).await;
    let cache = JwksCache::new(&server.url(), quick()).expect("url");
    assert!(cache.key(Some("kept"), Algorithm::RS256).await.is_ok());

    server.publish_raw(StatusCode::INTERNAL_SERVER_ERROR, "oops");
    assert_eq!(cache.key(Some("other"), Algorithm::RS256).await.err(), Some(JwksError::UnknownKey));
    server.publish_raw(StatusCode::OK, r#"{"keys": []}"#);
    assert_eq!(cache.key(Some("other"), Algorithm::RS256).await.err(), Some(JwksError::UnknownKey));
    server.stop();
    assert_eq!(cache.key(Some("other"), Algorithm::RS256).await.err(), Some(JwksError::UnknownKey));
    assert_eq!(server.fetches(), 3);

    assert!(cache.key(Some("kept"), Algorithm::RS256).await.is_ok());
    assert!(cache.cached_keys(Some("kept"), Algorithm::RS256).is_some());
}

#[tokio::test]
async fn reports_keys_unavailable_when_nothing_was_ever_fetched() {
    let mut server = JwksServer::start(&[]).await;
    let url = server.url();
    server.stop();
    let cache = JwksCache::new(&url, quick()).expect("url");
    assert_eq!(cache.key(Some("any"), Algorithm::RS256).await.err(), Some(JwksError::Unavailable));
}

#[tokio::test]
async fn refreshes_a_set_in_use_in_the_background_once_it_is_old() {
    let first = SigningKey::rsa("first");
    let server = JwksServer::start(&[&first]).await;
    let settings = JwksSettings { refresh: Duration::from_millis(50), ..quick() };
    let cache = JwksCache::new(&server.url(), settings).expect("url");
    assert!(cache.key(Some("first"), Algorithm::RS256).await.is_ok());
    let second = SigningKey::rsa("second");
    server.publish(&[&first, &second]);

    // Uses of the set keep answering from the cache while it is refreshed behind them.
    let (cache, server) = (&cache, &server);
    eventually("a background refresh", || async move {
        assert!(cache.cached_keys(Some("first"), Algorithm::RS256).is_some());
        (server.fetches() >= 2).then_some(())
    })
    .await;
    eventually("the refreshed set", || async move { cache.cached_keys(Some("second"), Algorithm::RS256) }).await;
}

#[tokio::test]
async fn prefetches_in_the_background() {
    let signer = SigningKey::rsa("early");
    let server = JwksServer::start(&[&signer]).await;
    let cache = JwksCache::new(&server.url(), quick()).expect("url");
    cache.prefetch();
    let cache = &cache;
    eventually("the prefetched set", || async move { cache.cached_keys(Some("early"), Algorithm::RS256) }).await;
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn keeps_the_generation_while_refetches_bring_the_same_keys_and_changes_it_with_them() {
    let old = SigningKey::rsa("old");
    let server = JwksServer::start(&[&old]).await;
    let cache = JwksCache::new(&server.url(), quick()).expect("url");
    assert_eq!(cache.generation(), None, "nothing fetched yet");
    assert!(cache.key(Some("old"), Algorithm::RS256).await.is_ok());
    let first = cache.generation().expect("fetched");

    // A made-up kid makes the cache fetch again, and the same keys come back.
    assert_eq!(cache.key(Some("made-up"), Algorithm::RS256).await.err(), Some(JwksError::UnknownKey));
    assert_eq!(server.fetches(), 2);
    assert_eq!(cache.generation(), Some(first));

    let new = SigningKey::rsa("new");
    server.publish(&[&old, &new]);
    assert!(cache.key(Some("new"), Algorithm::RS256).await.is_ok());
    let second = cache.generation().expect("fetched");
    assert_ne!(second, first, "a key was added");

    server.publish(&[&old]);
    assert_eq!(cache.key(Some("made-up"), Algorithm::RS256).await.err(), Some(JwksError::UnknownKey));
    assert_eq!(server.fetches(), 4);
    assert_ne!(cache.generation(), Some(second), "a key was withdrawn");
    assert_ne!(cache.generation(), Some(first), "generations are not reused");
}

#[test]
fn gives_every_key_set_a_generation_of_its_own() {
    let document = serde_json::to_vec(&json!({"keys": [rfc7520_rsa_jwk()]})).expect("json");
    let sets = [KeySet::new(Vec::new()), KeySet::default(), KeySet::from_jwks_json(&document).expect("a set")];
    assert_ne!(sets[0].generation(), sets[1].generation());
    assert_ne!(sets[1].generation(), sets[2].generation());
    let again = KeySet::from_jwks_json(&document).expect("a set");
    assert_ne!(again.generation(), sets[2].generation(), "only a cache carries a generation over");
    assert_eq!(again.content, sets[2].content);
}

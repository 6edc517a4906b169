//! Browser state of the login flow, kept in cookies only (no server state, so any gateway
//! node can serve any step): sealed with AES-256-GCM under a key derived from
//! `login.session_secret` by HKDF-SHA256, so a client can neither read nor forge nor alter
//! them. The cookie's name is bound to its content as associated data, so a login cookie
//! cannot be replayed as a session cookie.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Fixed salt of the key derivation: the secret is the only varying input.
const SALT: &[u8] = b"gantry oidc session v1";

/// Seals and opens cookie values.
pub(crate) struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    /// The sealer of `secret`.
    pub(crate) fn new(secret: &[u8]) -> Self {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(secret);
        let okm = prk
            .expand(&[b"aes-256-gcm cookie key"], &AES_256_GCM)
            .expect("HKDF-SHA256 yields the 32 bytes of an AES-256 key (far below its 8160-byte limit)");
        Self { key: LessSafeKey::new(UnboundKey::from(okm)) }
    }

    /// `value` as JSON, sealed for the cookie `name`: base64url of nonce, ciphertext and tag.
    pub(crate) fn seal<T: Serialize>(&self, name: &str, value: &T) -> Option<String> {
        let mut data = serde_json::to_vec(value).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        // Random 96-bit nonces: at the volumes of one gateway's logins the collision chance
        // stays far below NIST's 2^-32 bound.
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut data)
            .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Some(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The value sealed for the cookie `name`, or `None` when it was not sealed with this key
    /// for this name, or was altered.
    pub(crate) fn open<T: DeserializeOwned>(&self, name: &str, text: &str) -> Option<T> {
        let mut sealed = URL_SAFE_NO_PAD.decode(text).ok()?;
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let mut data = sealed.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&sealed).ok()?;
        let plain = self.key.open_in_place(nonce, Aad::from(name.as_bytes()), &mut data).ok()?;
        serde_json::from_slice(plain).ok()
    }
}

/// A signed-in browser: who, with which scopes, until when. Short names keep the cookie small.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Session {
    /// The ID token's consumer claim (`sub` by default).
    #[serde(rename = "c")]
    pub(crate) subject: String,
    /// Scopes granted at login, space-separated.
    #[serde(rename = "s", default)]
    pub(crate) scope: String,
    /// End of the session, seconds since the epoch.
    #[serde(rename = "e")]
    pub(crate) expires_at: u64,
}

/// A login under way, between the redirect to the provider and the callback.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PendingLogin {
    /// `state` sent to the provider (CSRF protection of the callback).
    #[serde(rename = "st")]
    pub(crate) state: String,
    /// `nonce` sent to the provider, to be found in the ID token (replay protection).
    #[serde(rename = "n")]
    pub(crate) nonce: String,
    /// PKCE code verifier (RFC 7636).
    #[serde(rename = "v")]
    pub(crate) verifier: String,
    /// Where the browser was going: path and query of the original request.
    #[serde(rename = "r")]
    pub(crate) return_to: String,
    /// The redirect URI sent, which the token request must repeat.
    #[serde(rename = "u")]
    pub(crate) redirect_uri: String,
    /// End of the attempt, seconds since the epoch.
    #[serde(rename = "e")]
    pub(crate) expires_at: u64,
}

/// 32 random bytes as base64url: `state`, `nonce` and the PKCE verifier (RFC 7636 §4.1 asks
/// for 43 to 128 characters; this is 43).
pub(crate) fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The PKCE `S256` challenge of `verifier` (RFC 7636 §4.2).
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// A `Set-Cookie` value: HttpOnly, `SameSite=Lax` (sent on the provider's top-level redirect
/// back, not on cross-site subrequests), `Secure` when the browser talks TLS.
pub(crate) fn set_cookie(name: &str, value: &str, path: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}")
}

/// A `Set-Cookie` value that deletes cookie `name` at `path`.
pub(crate) fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    set_cookie(name, "", path, 0, secure)
}

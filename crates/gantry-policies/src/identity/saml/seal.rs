//! Values the gateway hands to the browser and must get back unchanged: the session, the
//! pending login (AuthnRequest id) and the `RelayState`. Each is sealed with AES-256-GCM
//! (aws-lc-rs) under its own key, derived from `session_secret` by HKDF-SHA256 with the
//! purpose as info, so a value sealed for one purpose never opens as another. Nothing is
//! kept on the gateway, so any node sharing the secret can open what another sealed.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// What a sealed value is for; each has its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The session cookie: consumer id, groups, expiry.
    Session,
    /// The pending-login cookie: the AuthnRequest id and its expiry.
    Request,
    /// The `RelayState`: the path to return to, bound to one AuthnRequest id.
    Relay,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"gantry saml session v1",
            Purpose::Request => b"gantry saml request v1",
            Purpose::Relay => b"gantry saml relay-state v1",
        }
    }
}

/// The keys of one `saml` policy instance.
pub(crate) struct Sealer {
    session: LessSafeKey,
    request: LessSafeKey,
    relay: LessSafeKey,
}

impl Sealer {
    /// Derives the three keys from `secret`.
    pub(crate) fn new(secret: &[u8]) -> Self {
        // A fixed salt: the secret is the only input that must stay private (RFC 5869 §3.1).
        let prk = Salt::new(HKDF_SHA256, b"gantry-saml").extract(secret);
        let derive = |purpose: Purpose| {
            let info = [purpose.label()];
            let mut key = [0u8; 32];
            // Fails only for an output longer than 255 hash lengths; 32 bytes is one.
            let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF can give one AES-256 key");
            okm.fill(&mut key).expect("HKDF fills a 32-byte key");
            let unbound = UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key is an AES-256 key");
            LessSafeKey::new(unbound)
        };
        Self { session: derive(Purpose::Session), request: derive(Purpose::Request), relay: derive(Purpose::Relay) }
    }

    fn key(&self, purpose: Purpose) -> &LessSafeKey {
        match purpose {
            Purpose::Session => &self.session,
            Purpose::Request => &self.request,
            Purpose::Relay => &self.relay,
        }
    }

    /// Encrypts and authenticates `plaintext`, bound to `context` (checked, not stored), as
    /// URL-safe base64 of nonce, ciphertext and tag.
    pub(crate) fn seal(&self, purpose: Purpose, plaintext: &[u8], context: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut data = plaintext.to_vec();
        self.key(purpose)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut data)
            .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Some(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The plaintext of a value `seal` made for `purpose` and `context`; `None` for anything
    /// else (altered, truncated, sealed by another secret or for another purpose).
    pub(crate) fn open(&self, purpose: Purpose, sealed: &str, context: &[u8]) -> Option<Vec<u8>> {
        let mut data = URL_SAFE_NO_PAD.decode(sealed.as_bytes()).ok()?;
        if data.len() < NONCE_LEN {
            return None;
        }
        let ciphertext = data.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&data).ok()?;
        let mut ciphertext = ciphertext;
        let plaintext = self.key(purpose).open_in_place(nonce, Aad::from(context), &mut ciphertext).ok()?;
        Some(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_what_it_sealed_for_the_same_purpose_and_context() {
        let sealer = Sealer::new(b"a secret of enough length");
        let sealed = sealer.seal(Purpose::Session, b"alice", b"").expect("sealed");
        assert_eq!(sealer.open(Purpose::Session, &sealed, b"").as_deref(), Some(&b"alice"[..]));
    }

    #[test]
    fn refuses_another_purpose_another_context_another_secret_or_a_changed_byte() {
        let sealer = Sealer::new(b"a secret of enough length");
        let sealed = sealer.seal(Purpose::Relay, b"/orders", b"_request1").expect("sealed");
        assert_eq!(sealer.open(Purpose::Session, &sealed, b"_request1"), None);
        assert_eq!(sealer.open(Purpose::Relay, &sealed, b"_request2"), None);
        assert_eq!(Sealer::new(b"another secret of enough length").open(Purpose::Relay, &sealed, b"_request1"), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(sealer.open(Purpose::Relay, &URL_SAFE_NO_PAD.encode(bytes), b"_request1"), None);
        assert_eq!(sealer.open(Purpose::Relay, "short", b"_request1"), None);
    }

    #[test]
    fn seals_the_same_value_differently_each_time() {
        let sealer = Sealer::new(b"a secret of enough length");
        let first = sealer.seal(Purpose::Session, b"alice", b"").expect("sealed");
        let second = sealer.seal(Purpose::Session, b"alice", b"").expect("sealed");
        assert_ne!(first, second, "a fresh nonce per value");
    }
}

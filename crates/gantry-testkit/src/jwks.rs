//! Signing keys and a JSON Web Key Set server for tests of token-checking policies.
//!
//! [`SigningKey`] generates a fresh key pair (RSA, ECDSA, Ed25519) and signs tokens with it;
//! [`JwksServer`] publishes the public halves as a JWKS on 127.0.0.1:0, counts its fetches,
//! can switch to another set (a signer rotating its keys) and can be stopped with its open
//! connections (a signer going down).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::task::{JoinHandle, JoinSet};

/// A key pair that signs test tokens, with its public half as a JWK and as PEM.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
}

impl SigningKey {
    /// A new key for `alg` (an RSA, ECDSA or EdDSA algorithm; RSA keys have 2048 bits), named
    /// `kid`.
    pub fn generate(kid: &str, alg: Algorithm) -> Self {
        let (encoding, jwk, public_der) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
                let pkcs8: Pkcs8V1Der<'_> = pair.as_der().expect("RSA key as PKCS#8");
                let encoding =
                    EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).expect("RSA signing key");
                let public = pair.public_key();
                let jwk = json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                });
                let der: PublicKeyX509Der<'_> = public.as_der().expect("RSA public key as SPKI");
                (encoding, jwk, der.as_ref().to_vec())
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let (signing, curve, coordinate) = if alg == Algorithm::ES256 {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
                } else {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
                };
                let pair = EcdsaKeyPair::generate(signing).expect("generate an EC key");
                let pkcs8 = pair.to_pkcs8v1().expect("EC key as PKCS#8");
                let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
                // The uncompressed point: 0x04, then x and y.
                let point = pair.public_key().as_ref();
                let jwk = json!({
                    "kty": "EC",
                    "crv": curve,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..=coordinate]),
                    "y": URL_SAFE_NO_PAD.encode(&point[1 + coordinate..]),
                });
                let der: PublicKeyX509Der<'_> = pair.public_key().as_der().expect("EC public key as SPKI");
                (encoding, jwk, der.as_ref().to_vec())
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().expect("generate an Ed25519 key");
                let pkcs8 = pair.to_pkcs8v1().expect("Ed25519 key as PKCS#8");
                let encoding = EncodingKey::from_ed_der(pkcs8.as_ref());
                let jwk = json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                });
                let der: PublicKeyX509Der<'_> = pair.public_key().as_der().expect("Ed25519 public key as SPKI");
                (encoding, jwk, der.as_ref().to_vec())
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                panic!("HMAC keys are secrets: sign with `SigningKey::sign_with_secret`")
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(format!("{alg:?}"));
        jwk["use"] = json!("sig");
        Self { kid: kid.to_owned(), alg, encoding, jwk, public_pem: pem("PUBLIC KEY", &public_der) }
    }

    /// The same key pair named `kid`, signing with `alg`, which must be of the same kind (an
    /// RSA key for any `RS*` or `PS*`): generating RSA keys is slow.
    pub fn reuse_for(&self, kid: &str, alg: Algorithm) -> Self {
        assert_eq!(alg.family(), self.alg.family(), "{alg:?} needs another kind of key");
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(format!("{alg:?}"));
        Self { kid: kid.to_owned(), alg, encoding: self.encoding.clone(), jwk, public_pem: self.public_pem.clone() }
    }

    /// An RS256 key named `kid`.
    pub fn rsa(kid: &str) -> Self {
        Self::generate(kid, Algorithm::RS256)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JSON Web Key, with `kid`, `alg` and `use: sig`.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// The public half as a PEM `PUBLIC KEY`.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// A token with `claims`, its header naming this key's `kid` and algorithm.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a test token")
    }

    /// A token with `claims` signed with this key but whose header names `alg` and `kid`
    /// instead, for tests of what a verifier makes of a lying header.
    pub fn sign_as(&self, claims: &Value, header: &Header) -> String {
        let unsigned = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).expect("header json")),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims json"))
        );
        let signature = jsonwebtoken::crypto::sign(unsigned.as_bytes(), &self.encoding, self.alg).expect("sign");
        format!("{unsigned}.{signature}")
    }

    /// A token with `claims` signed with the HMAC `secret`, its header naming `alg` and `kid`.
    pub fn sign_with_secret(secret: &[u8], alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign a test token")
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// What the server answers with.
struct Published {
    status: StatusCode,
    body: String,
}

/// A JSON Web Key Set server on 127.0.0.1:0; stopped on drop, open connections included.
pub struct JwksServer {
    addr: SocketAddr,
    published: Arc<Mutex<Published>>,
    fetches: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Starts a server publishing the public halves of `keys`.
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the JWKS server");
        let addr = listener.local_addr().expect("local addr");
        let published = Arc::new(Mutex::new(Published { status: StatusCode::OK, body: key_set(keys) }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (shared, counter) = (published.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            // Connection tasks live in the set so that aborting this task closes them too.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (shared, counter) = (shared.clone(), counter.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(request, shared.clone(), counter.clone()));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, published, fetches, task: Some(task) }
    }

    /// The key set's URL.
    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Publishes the public halves of `keys` from now on.
    pub fn publish(&self, keys: &[&SigningKey]) {
        let mut published = self.published.lock().expect("published lock");
        *published = Published { status: StatusCode::OK, body: key_set(keys) };
    }

    /// Answers `status` with `body` from now on (a broken or misconfigured signer).
    pub fn publish_raw(&self, status: StatusCode, body: &str) {
        *self.published.lock().expect("published lock") = Published { status, body: body.to_owned() };
    }

    /// How many times the set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops serving and closes open connections; later fetches cannot connect.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key_set(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() }).to_string()
}

async fn answer(
    _request: Request<Incoming>,
    published: Arc<Mutex<Published>>,
    fetches: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    fetches.fetch_add(1, Ordering::SeqCst);
    let published = published.lock().expect("published lock");
    let mut response = Response::new(Full::new(Bytes::from(published.body.clone())));
    *response.status_mut() = published.status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/jwk-set+json"));
    Ok(response)
}

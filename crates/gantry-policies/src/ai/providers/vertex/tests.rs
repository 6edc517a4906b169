use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{DecodingKey, Validation};

use super::*;

const EMAIL: &str = "gateway@my-project.iam.gserviceaccount.com";
const KEY_ID: &str = "8f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a";

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).expect("ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A service account's key pair: the private half in PEM as key files hold it, the public
/// half in PEM for checking signatures.
struct TestKey {
    private_pem: String,
    public_pem: String,
}

impl TestKey {
    fn generate() -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("an RSA key");
        let pkcs8: Pkcs8V1Der<'_> = pair.as_der().expect("PKCS#8");
        let public: PublicKeyX509Der<'_> = pair.public_key().as_der().expect("SPKI");
        Self { private_pem: pem("PRIVATE KEY", pkcs8.as_ref()), public_pem: pem("PUBLIC KEY", public.as_ref()) }
    }

    /// A key file as Google Cloud's console downloads it.
    fn key_file(&self, dir: &tempfile::TempDir, token_uri: &str) -> String {
        let file = json!({
            "type": "service_account",
            "project_id": "my-project",
            "private_key_id": KEY_ID,
            "private_key": self.private_pem,
            "client_email": EMAIL,
            "client_id": "103658431025496578234",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/gateway%40my-project.iam.gserviceaccount.com",
            "universe_domain": "googleapis.com"
        });
        let path = dir.path().join("key.json");
        std::fs::write(&path, file.to_string()).expect("write the key file");
        path.to_string_lossy().into_owned()
    }
}

/// One request the token endpoint got: its content type and form fields.
#[derive(Clone, Debug)]
struct TokenRequest {
    content_type: String,
    form: Vec<(String, String)>,
}

/// A stand-in for Google's OAuth 2.0 token endpoint (`https://oauth2.googleapis.com/token`):
/// it checks the JWT bearer grant's assertion with the service account's public key, as
/// Google does, and answers as Google documents (`access_token`, `expires_in`, `token_type`),
/// or `400 {"error":"invalid_grant",..}` for an assertion it does not accept.
struct TokenEndpoint {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenEndpoint {
    async fn start(public_pem: &str, expires_in: u64, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
        let key = DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("public key");
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (key, seen) = (key.clone(), seen.clone());
                let audience = format!("http://{addr}/token");
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let (key, seen, audience) = (key.clone(), seen.clone(), audience.clone());
                        async move {
                            let content_type = request
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let path = request.uri().path().to_owned();
                            let body =
                                request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
                            let number = {
                                let mut seen = seen.lock().expect("lock");
                                seen.push(TokenRequest { content_type, form: form.clone() });
                                seen.len()
                            };
                            tokio::time::sleep(delay).await;
                            let field =
                                |name: &str| form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
                            let mut validation = Validation::new(Algorithm::RS256);
                            validation.set_audience(&[audience]);
                            validation.set_issuer(&[EMAIL]);
                            validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
                            let accepted = path == "/token"
                                && field("grant_type") == Some(JWT_BEARER_GRANT)
                                && field("assertion").is_some_and(|jwt| {
                                    jsonwebtoken::decode::<AssertionClaims>(jwt, &key, &validation).is_ok()
                                });
                            let (status, answer) = if accepted {
                                (
                                    StatusCode::OK,
                                    json!({"access_token": format!("ya29.c.token-{number}"), "expires_in": expires_in, "token_type": "Bearer"}),
                                )
                            } else {
                                (
                                    StatusCode::BAD_REQUEST,
                                    json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
                                )
                            };
                            let response = http::Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .expect("response");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, requests, task }
    }

    fn uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(service_account_file: Option<String>, access_token: Option<&str>) -> VertexConfig {
    VertexConfig {
        project: "my-project".to_owned(),
        location: "us-central1".to_owned(),
        service_account_file,
        access_token: access_token.map(|token| Secret::new(token.to_owned())),
        scope: default_scope(),
    }
}

fn target(access: Option<Arc<VertexAccess>>) -> TargetInfo {
    let mut target = TargetInfo::for_tests(Provider::VertexAi, "gemini-2.5-flash");
    target.vertex = access;
    target
}

fn load(config: &VertexConfig) -> Result<Arc<VertexAccess>, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let access = VertexAccess::load(Some(config), &FieldPath::root().key("vertex"), &mut errors);
    match access {
        Some(access) if errors.is_empty() => Ok(access),
        _ => Err(errors),
    }
}

fn head() -> http::request::Parts {
    http::Request::builder().method("POST").uri("/").body(()).expect("head").into_parts().0
}

async fn authorized(target: &TargetInfo) -> Result<String, String> {
    let mut head = head();
    Vertex.authorize(target, &mut head, b"{}").await?;
    Ok(head.headers[AUTHORIZATION].to_str().expect("text").to_owned())
}

#[test]
fn paths_follow_the_vertex_ai_reference() {
    let target = target(load(&config(None, Some("ya29.fixed"))).ok());
    let base = "/v1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash";
    assert_eq!(Vertex.path(&target, Operation::Chat, false), format!("{base}:generateContent"));
    assert_eq!(Vertex.path(&target, Operation::Chat, true), format!("{base}:streamGenerateContent?alt=sse"));
    assert_eq!(Vertex.path(&target, Operation::Embeddings, false), format!("{base}:predict"));
    assert!(Vertex.serves(Operation::Embeddings));
}

#[tokio::test]
async fn a_fixed_access_token_is_sent_as_it_is() {
    let target = target(Some(load(&config(None, Some("ya29.fixed"))).expect("loaded")));
    assert_eq!(authorized(&target).await.expect("authorized"), "Bearer ya29.fixed");
    assert!(authorized(&self::target(None)).await.is_err(), "no settings, no token");
}

#[tokio::test]
async fn exchanges_a_signed_assertion_for_a_token_once_for_concurrent_requests() {
    let key = TestKey::generate();
    let endpoint = TokenEndpoint::start(&key.public_pem, 3599, Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let access = load(&config(Some(key.key_file(&dir, &endpoint.uri())), None)).expect("loaded");
    let target = target(Some(access));

    let values = futures_util::future::join_all((0..8).map(|_| authorized(&target))).await;
    for value in &values {
        assert_eq!(value.as_deref(), Ok("Bearer ya29.c.token-1"));
    }
    assert_eq!(authorized(&target).await.as_deref(), Ok("Bearer ya29.c.token-1"), "kept until shortly before expiry");
    // A reload loads the settings again: the token is kept.
    let reloaded = self::target(Some(load(&config(Some(key.key_file(&dir, &endpoint.uri())), None)).expect("loaded")));
    assert_eq!(authorized(&reloaded).await.as_deref(), Ok("Bearer ya29.c.token-1"), "kept across a reload");
    let requests = endpoint.requests();
    assert_eq!(requests.len(), 1, "one token request for all: {requests:?}");

    let request = &requests[0];
    assert_eq!(request.content_type, "application/x-www-form-urlencoded");
    let names: Vec<&str> = request.form.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["grant_type", "assertion"]);
    assert_eq!(request.form[0].1, "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let assertion = &request.form[1].1;
    let header = jsonwebtoken::decode_header(assertion).expect("a JWT");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(KEY_ID), "Google finds the key by the key file's private_key_id");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[endpoint.uri()]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(
        assertion,
        &DecodingKey::from_rsa_pem(key.public_pem.as_bytes()).expect("public key"),
        &validation,
    )
    .expect("signed by the service account's key")
    .claims;
    assert_eq!(claims.iss, EMAIL);
    assert_eq!(claims.scope, "https://www.googleapis.com/auth/cloud-platform");
    assert_eq!(claims.aud, endpoint.uri());
    assert_eq!(claims.exp - claims.iat, 3600, "an hour, the longest Google accepts");
    let now = crate::ai::openai::now();
    assert!(claims.iat.abs_diff(now) <= 5, "issued now: {} vs {now}", claims.iat);
}

#[tokio::test]
async fn renews_the_token_shortly_before_it_expires() {
    let key = TestKey::generate();
    let endpoint = TokenEndpoint::start(&key.public_pem, 2, Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let target = target(Some(load(&config(Some(key.key_file(&dir, &endpoint.uri())), None)).expect("loaded")));
    assert_eq!(authorized(&target).await.as_deref(), Ok("Bearer ya29.c.token-1"));
    assert_eq!(authorized(&target).await.as_deref(), Ok("Bearer ya29.c.token-1"));
    // A 2 s token is renewed after 1 s, before it lapses.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(authorized(&target).await.as_deref(), Ok("Bearer ya29.c.token-2"));
    assert_eq!(endpoint.requests().len(), 2);
}

#[tokio::test]
async fn a_refused_assertion_fails_the_try_with_the_endpoint_s_reason() {
    let key = TestKey::generate();
    let other = TestKey::generate();
    // The endpoint knows another key: the signature does not verify.
    let endpoint = TokenEndpoint::start(&other.public_pem, 3599, Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let target = target(Some(load(&config(Some(key.key_file(&dir, &endpoint.uri())), None)).expect("loaded")));
    let reason = authorized(&target).await.expect_err("refused");
    assert!(reason.contains("400") && reason.contains("invalid_grant"), "{reason}");
    assert!(reason.contains(EMAIL), "{reason}");
    assert_eq!(endpoint.requests().len(), 1);
    // Nothing is cached: the next request asks again.
    assert!(authorized(&target).await.is_err());
    assert_eq!(endpoint.requests().len(), 2);
}

#[test]
fn rejects_bad_settings_at_their_paths() {
    let at = FieldPath::root();
    let messages = |provider: Provider, config: Option<&VertexConfig>| {
        let mut errors = ConfigErrors::default();
        validate(provider, config, &at, &mut errors);
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    assert!(messages(Provider::VertexAi, Some(&config(None, Some("ya29.x")))).is_empty());
    assert!(messages(Provider::Gemini, None).is_empty());
    assert_eq!(
        messages(Provider::VertexAi, None),
        ["vertex: `vertex_ai` targets need `vertex: {project, location, ...}`"]
    );
    assert_eq!(
        messages(Provider::Gemini, Some(&config(None, Some("t")))),
        ["vertex: only `vertex_ai` targets take `vertex`"]
    );
    let mut odd = config(Some("key.json".to_owned()), Some("t"));
    odd.project = "my/project".to_owned();
    odd.location = String::new();
    assert_eq!(
        messages(Provider::VertexAi, Some(&odd)),
        [
            "vertex.project: `my/project` is not a Google Cloud project id",
            "vertex.location: `` is not a Google Cloud location id",
            "vertex: give `service_account_file` or `access_token`, not both",
        ]
    );
    assert_eq!(
        messages(Provider::VertexAi, Some(&config(None, None))),
        ["vertex: give `service_account_file` or `access_token`"]
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("absent.json").to_string_lossy().into_owned();
    let errors = load(&config(Some(missing.clone()), None)).expect_err("unreadable");
    let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(message.starts_with(&format!("vertex.service_account_file: cannot read `{missing}`")), "{message}");
    let not_a_key = dir.path().join("key.json");
    std::fs::write(&not_a_key, r#"{"client_email":"a@b","private_key":"not a key"}"#).expect("write");
    let errors = load(&config(Some(not_a_key.to_string_lossy().into_owned()), None)).expect_err("no RSA key");
    assert!(errors.iter().any(|error| error.message.contains("`private_key` is not an RSA key")), "{errors:?}");
}

#[test]
fn embeddings_use_predict_instances() {
    let request: ChatRequest =
        serde_json::from_value(json!({"model": "embed", "input": ["first text", "second text"], "dimensions": 256}))
            .expect("request");
    let body = Vertex.request(&target(None), Operation::Embeddings, &request, false).expect("translated");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON"),
        json!({"instances": [{"content": "first text"}, {"content": "second text"}],
            "parameters": {"outputDimensionality": 256}})
    );
    // The answer of Vertex AI's text embeddings API reference.
    let answer = br#"{
      "predictions": [
        {"embeddings": {"statistics": {"truncated": false, "token_count": 6}, "values": [0.0123, -0.0456]}},
        {"embeddings": {"statistics": {"truncated": false, "token_count": 4}, "values": [0.0789, 0.0012]}}
      ],
      "metadata": {"billableCharacterCount": 20}
    }"#;
    let list = Vertex.response(&target(None), Operation::Embeddings, answer).expect("translated");
    assert_eq!(
        list,
        json!({"object": "list", "model": "gemini-2.5-flash", "data": [
            {"object": "embedding", "index": 0, "embedding": [0.0123, -0.0456]},
            {"object": "embedding", "index": 1, "embedding": [0.0789, 0.0012]}
        ], "usage": {"prompt_tokens": 10, "total_tokens": 10}})
    );
    // Chats are Gemini's.
    let chat: ChatRequest =
        serde_json::from_value(json!({"messages": [{"role": "user", "content": "Hi"}]})).expect("request");
    let body = Vertex.request(&target(None), Operation::Chat, &chat, true).expect("translated");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON"),
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    );
}

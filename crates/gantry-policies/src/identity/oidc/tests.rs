use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;
use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from};
use gantry_policy_api::RegisteredPolicy;
use gantry_testkit::jwks::SigningKey;
use http::header::{COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use serde_json::{json, Value};

use super::session::{pkce_challenge, PendingLogin, Sealer, Session};
use super::*;
use crate::identity::test_server::TestServer;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate("provider-key", Algorithm::ES256));
static OTHER_KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate("provider-key", Algorithm::ES256));

const SESSION_SECRET: &str = "unit-test-session-secret-0123456789";

const CONSUMERS: &str = "consumers:
  - id: alice
    groups: [staff]
    credentials:
      oidc: {subject: alice-sub}
  - id: guest
";

/// The token requests a stub provider received: `Authorization` header and form body.
type TokenRequests = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A stand-in OpenID provider: metadata, a key set with [`KEY`] (until a test publishes
/// others), and a token endpoint that answers with the ID token a test put there. Stopped on
/// drop.
struct StubProvider {
    server: TestServer,
    id_token: Arc<Mutex<Option<String>>>,
    token_requests: TokenRequests,
    fetches: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Value>>>,
}

impl StubProvider {
    async fn start(metadata_issuer: Option<&str>) -> Self {
        let metadata_issuer: Option<Arc<str>> = metadata_issuer.map(Arc::from);
        let id_token: Arc<Mutex<Option<String>>> = Arc::default();
        let token_requests: TokenRequests = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(vec![KEY.jwk()]));
        let shared = (id_token.clone(), token_requests.clone(), fetches.clone(), keys.clone());
        let server = TestServer::start(move |addr, parts: http::request::Parts, body: Bytes| {
            let (metadata_issuer, (id_token, requests, fetches, keys)) = (metadata_issuer.clone(), shared.clone());
            async move {
                let authorization = parts
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                match parts.uri.path() {
                    "/.well-known/openid-configuration" => {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let issuer = metadata_issuer.map_or_else(|| format!("http://{addr}"), |own| own.to_string());
                        (StatusCode::OK, metadata(&issuer, addr))
                    }
                    "/jwks" => (StatusCode::OK, json!({"keys": *keys.lock().expect("keys")}).to_string()),
                    "/token" => {
                        let form = String::from_utf8_lossy(&body).into_owned();
                        requests.lock().expect("requests").push((authorization, form));
                        match id_token.lock().expect("id token").clone() {
                            Some(token) => {
                                (StatusCode::OK, json!({"id_token": token, "scope": "openid email"}).to_string())
                            }
                            None => (StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}).to_string()),
                        }
                    }
                    _ => (StatusCode::NOT_FOUND, String::new()),
                }
            }
        })
        .await;
        Self { server, id_token, token_requests, fetches, keys }
    }

    /// Publishes the public halves of `keys` from now on (a provider rotating its keys).
    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().expect("keys") = keys.iter().map(|key| key.jwk()).collect();
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    fn answer_with(&self, id_token: &str) {
        *self.id_token.lock().expect("id token") = Some(id_token.to_owned());
    }
}

fn metadata(issuer: &str, addr: SocketAddr) -> String {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("http://{addr}/authorize"),
        "token_endpoint": format!("http://{addr}/token"),
        "jwks_uri": format!("http://{addr}/jwks"),
    })
    .to_string()
}

fn bearer_settings(issuer: &str, extra: &str) -> String {
    format!("issuer: {issuer}\nclient_id: gantry\naudiences: [orders-api]\n{extra}")
}

fn login_settings(issuer: &str, extra: &str) -> String {
    format!(
        "issuer: {issuer}\nclient_id: gantry\nlogin:\n  client_secret: s3cret\n  session_secret: {SESSION_SECRET}\n  logout_path: /logout\n{extra}"
    )
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<Oidc>(), settings, CONSUMERS)
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<Oidc>(), settings, CONSUMERS)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

async fn run(policy: &dyn Policy, request: http::Request<()>) -> (Flow, RequestParts, Exchange) {
    let mut parts = request.into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = policy.on_request(&mut parts, &mut exchange).resolve().await;
    (flow, parts, exchange)
}

fn answered(flow: Flow) -> PolicyResponse {
    match flow {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("the request was let through"),
    }
}

fn problem_type(response: &PolicyResponse) -> String {
    let body: Value = serde_json::from_slice(response.body()).expect("problem json");
    body["type"].as_str().unwrap_or_default().trim_start_matches("https://gantry.dev/problems/").to_owned()
}

fn claims(issuer: &str, audience: &str, subject: &str) -> Value {
    json!({"iss": issuer, "aud": audience, "sub": subject, "exp": now_secs() + 300, "scope": "orders:read"})
}

fn with_bearer(token: &str) -> http::Request<()> {
    http::Request::get("/orders")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .expect("request")
}

#[tokio::test]
async fn admits_a_token_signed_by_the_provider_for_an_accepted_audience() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), ""));
    let token = KEY.sign(&claims(&provider.issuer(), "orders-api", "alice-sub"));
    let (flow, parts, exchange) = run(&*policy, with_bearer(&token)).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "alice");
    assert_eq!(&*identity.credential_id, "alice:oidc");
    assert_eq!(identity.method, "oidc");
    assert_eq!(&*identity.scopes, ["orders:read".to_owned()]);
    assert!(parts.headers.get(http::header::AUTHORIZATION).is_none());

    // The second token is checked with the cached metadata and keys: no new fetch.
    let (flow, _, _) = run(&*policy, with_bearer(&KEY.sign(&claims(&provider.issuer(), "orders-api", "bob")))).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refuses_tokens_of_another_audience_issuer_or_key_and_expired_ones() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), ""));
    let issuer = provider.issuer();
    let mut expired = claims(&issuer, "orders-api", "alice-sub");
    expired["exp"] = json!(now_secs() - 600);
    let cases = [
        (KEY.sign(&claims(&issuer, "another-api", "alice-sub")), "the token's audience is not accepted"),
        (
            KEY.sign(&claims("http://127.0.0.1:9/other", "orders-api", "alice-sub")),
            "the token's issuer is not the provider",
        ),
        (OTHER_KEY.sign(&claims(&issuer, "orders-api", "alice-sub")), "the token's signature is not valid"),
        (KEY.sign(&expired), "the token has expired"),
        ("not.a.jwt".to_owned(), "the token is not a well-formed signed JWT"),
    ];
    for (token, detail) in cases {
        let response = answered(run(&*policy, with_bearer(&token)).await.0);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{detail}");
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"gantry\", error=\"invalid_token\"");
        let body: Value = serde_json::from_slice(response.body()).expect("problem json");
        assert_eq!(body["detail"], detail);
    }
}

#[tokio::test]
async fn remembers_each_bearer_token_with_its_own_identity_until_it_expires() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), "leeway: 0s"));
    let issuer = provider.issuer();
    let mut expiring = claims(&issuer, "orders-api", "alice-sub");
    let now = now_secs();
    expiring["exp"] = json!(now + 1);
    let alice = KEY.sign(&expiring);
    let bob = KEY.sign(&claims(&issuer, "orders-api", "bob"));
    for _ in 0..3 {
        for (token, consumer_id) in [(&alice, "alice"), (&bob, "bob")] {
            let (flow, parts, exchange) = run(&*policy, with_bearer(token)).await;
            assert!(matches!(flow, Flow::Continue));
            assert_eq!(&*exchange.identity.expect("recognised").consumer.id, consumer_id);
            assert!(parts.headers.get(http::header::AUTHORIZATION).is_none(), "the token reached the upstream");
        }
    }

    while now_secs() <= now + 1 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let body: Value =
        serde_json::from_slice(answered(run(&*policy, with_bearer(&alice)).await.0).body()).expect("json");
    assert_eq!(body["detail"], "the token has expired");
    assert!(matches!(run(&*policy, with_bearer(&bob)).await.0, Flow::Continue));
}

#[tokio::test]
async fn forgets_remembered_bearer_tokens_when_the_provider_rotates_its_keys() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), "min_refresh: 0s"));
    let token = KEY.sign(&claims(&provider.issuer(), "orders-api", "alice-sub"));
    for _ in 0..2 {
        assert!(matches!(run(&*policy, with_bearer(&token)).await.0, Flow::Continue));
    }

    // The provider withdraws the key; a token of its new one makes the gateway refetch.
    let rotated = SigningKey::generate("rotated", Algorithm::ES256);
    provider.publish(&[&rotated]);
    let fresh = rotated.sign(&claims(&provider.issuer(), "orders-api", "alice-sub"));
    assert!(matches!(run(&*policy, with_bearer(&fresh)).await.0, Flow::Continue));
    let response = answered(run(&*policy, with_bearer(&token)).await.0);
    let body: Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["detail"], "no key of the provider matches the token's kid and alg");
}

#[tokio::test]
async fn checks_every_bearer_token_in_full_with_the_cache_turned_off() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), "bearer_cache: {max_tokens: 0}"));
    let token = KEY.sign(&claims(&provider.issuer(), "orders-api", "alice-sub"));
    for _ in 0..2 {
        let (flow, _, exchange) = run(&*policy, with_bearer(&token)).await;
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "alice");
    }
}

#[tokio::test]
async fn refuses_hmac_tokens_whatever_their_secret() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), ""));
    let token = SigningKey::sign_with_secret(
        b"a-32-byte-long-shared-secret-000",
        Algorithm::HS256,
        None,
        &claims(&provider.issuer(), "orders-api", "alice-sub"),
    );
    let response = answered(run(&*policy, with_bearer(&token)).await.0);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&response), "invalid-token");
}

#[tokio::test]
async fn refuses_a_provider_whose_metadata_names_another_issuer_with_503() {
    let provider = StubProvider::start(Some("https://impostor.example")).await;
    let policy = policy(&bearer_settings(&provider.issuer(), ""));
    let token = KEY.sign(&claims(&provider.issuer(), "orders-api", "alice-sub"));
    let response = answered(run(&*policy, with_bearer(&token)).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_type(&response), "oidc-unavailable");
}

#[tokio::test]
async fn answers_503_when_the_provider_cannot_be_reached() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let policy = policy(&bearer_settings(&issuer, "timeout: 1s"));
    let token = KEY.sign(&claims(&issuer, "orders-api", "alice-sub"));
    let response = answered(run(&*policy, with_bearer(&token)).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
}

#[tokio::test]
async fn refuses_an_unknown_subject_with_403_when_a_consumer_is_required() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&bearer_settings(&provider.issuer(), "require_consumer: true"));
    let token = KEY.sign(&claims(&provider.issuer(), "orders-api", "stranger"));
    let response = answered(run(&*policy, with_bearer(&token)).await.0);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&response), "unknown-consumer");
}

#[tokio::test]
async fn answers_a_request_without_credentials_with_401_or_the_anonymous_consumer() {
    let provider = StubProvider::start(None).await;
    let response = answered(run(&*policy(&bearer_settings(&provider.issuer(), "")), get("/")).await.0);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"gantry\"");
    assert_eq!(problem_type(&response), "missing-token");

    let anonymous = policy(&bearer_settings(&provider.issuer(), "anonymous_consumer: guest"));
    let (flow, _, exchange) = run(&*anonymous, get("/")).await;
    assert!(matches!(flow, Flow::Continue));
    assert!(exchange.identity.expect("anonymous").is_anonymous);
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(path).header(http::header::HOST, "app.test").body(()).expect("request")
}

/// `name=value` of the `Set-Cookie` headers of `response`.
fn set_cookies(response: &PolicyResponse) -> HashMap<String, String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|cookie| cookie.split(';').next()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Starts a login on `policy` and gives the authorization URL's query and the login cookie.
async fn start_login(policy: &dyn Policy) -> (HashMap<String, String>, String) {
    let response = answered(run(policy, get("/reports?year=2024")).await.0);
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = reqwest::Url::parse(response.headers()[LOCATION].to_str().expect("location")).expect("URL");
    let query = location.query_pairs().into_owned().collect();
    let login_cookie = set_cookies(&response).remove("gantry_oidc_login").expect("login cookie");
    (query, login_cookie)
}

fn callback(query: &str, cookie: &str) -> http::Request<()> {
    http::Request::get(format!("/oidc/callback?{query}"))
        .header(http::header::HOST, "app.test")
        .header(COOKIE, cookie)
        .body(())
        .expect("request")
}

#[tokio::test]
async fn sends_a_browser_without_session_to_the_provider_with_state_nonce_and_pkce() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), "  scopes: [openid, email]"));
    let (query, login_cookie) = start_login(&*policy).await;
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], "gantry");
    assert_eq!(query["redirect_uri"], "http://app.test/oidc/callback");
    assert_eq!(query["scope"], "openid email");
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(query["state"].len() >= 43 && query["nonce"].len() >= 43, "{query:?}");

    // The login cookie is sealed: only the gateway can read it, and it holds the verifier of
    // the challenge sent.
    let pending: PendingLogin =
        Sealer::new(SESSION_SECRET.as_bytes()).open("gantry_oidc_login", &login_cookie).expect("sealed login");
    assert_eq!(pending.state, query["state"]);
    assert_eq!(pkce_challenge(&pending.verifier), query["code_challenge"]);
    assert_eq!(pending.return_to, "/reports?year=2024");
    assert!(!login_cookie.contains(&query["state"]));
}

#[tokio::test]
async fn refuses_requests_other_than_get_without_session_with_401() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), ""));
    let post = http::Request::post("/reports").header(http::header::HOST, "app.test").body(()).expect("request");
    let response = answered(run(&*policy, post).await.0);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn completes_a_login_sets_a_session_and_admits_the_browser_with_it() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), ""));
    let (query, login_cookie) = start_login(&*policy).await;
    let mut id_claims = claims(&provider.issuer(), "gantry", "alice-sub");
    id_claims["nonce"] = json!(query["nonce"]);
    provider.answer_with(&KEY.sign(&id_claims));

    let request =
        callback(&format!("code=the-code&state={}", query["state"]), &format!("gantry_oidc_login={login_cookie}"));
    let response = answered(run(&*policy, request).await.0);
    assert_eq!(response.status(), StatusCode::FOUND, "{:?}", response.body());
    assert_eq!(response.headers()[LOCATION], "/reports?year=2024");
    let cookies = set_cookies(&response);
    assert_eq!(cookies["gantry_oidc_login"], "", "the login cookie is cleared");
    let session = cookies["gantry_oidc"].clone();

    // The code was exchanged with the verifier, the redirect URI and HTTP Basic.
    let (authorization, form) = provider.token_requests.lock().expect("requests")[0].clone();
    assert!(authorization.is_some_and(|value| value.starts_with("Basic ")));
    let form: HashMap<String, String> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code");
    assert_eq!(form["redirect_uri"], "http://app.test/oidc/callback");
    assert_eq!(pkce_challenge(&form["code_verifier"]), query["code_challenge"]);

    let request = http::Request::get("/reports")
        .header(COOKIE, format!("theme=dark; gantry_oidc={session}"))
        .body(())
        .expect("request");
    let (flow, parts, exchange) = run(&*policy, request).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("signed in");
    assert_eq!(&*identity.consumer.id, "alice");
    assert_eq!(&*identity.scopes, ["openid".to_owned(), "email".to_owned()]);
    assert_eq!(parts.headers[COOKIE], "theme=dark", "the session cookie stays at the gateway");
}

#[tokio::test]
async fn refuses_a_callback_with_a_foreign_state_or_no_login_under_way() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), ""));
    let (_, login_cookie) = start_login(&*policy).await;
    let forged = callback("code=c&state=forged-state", &format!("gantry_oidc_login={login_cookie}"));
    let response = answered(run(&*policy, forged).await.0);
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(&response), "login-failed");

    let without_cookie = callback("code=c&state=any", "other=1");
    assert_eq!(answered(run(&*policy, without_cookie).await.0).status(), StatusCode::BAD_REQUEST);
    assert!(provider.token_requests.lock().expect("requests").is_empty(), "no code was exchanged");
}

#[tokio::test]
async fn refuses_an_id_token_with_another_nonce() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), ""));
    let (query, login_cookie) = start_login(&*policy).await;
    let mut id_claims = claims(&provider.issuer(), "gantry", "alice-sub");
    id_claims["nonce"] = json!("a-nonce-of-another-login");
    provider.answer_with(&KEY.sign(&id_claims));
    let request = callback(&format!("code=c&state={}", query["state"]), &format!("gantry_oidc_login={login_cookie}"));
    let response = answered(run(&*policy, request).await.0);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&response), "login-failed");
    assert!(!set_cookies(&response).contains_key("gantry_oidc"), "no session was set");
}

#[tokio::test]
async fn refuses_a_code_the_provider_does_not_accept_and_a_refused_login() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), ""));
    let (query, login_cookie) = start_login(&*policy).await;
    let cookie = format!("gantry_oidc_login={login_cookie}");
    let response = answered(run(&*policy, callback(&format!("code=used&state={}", query["state"]), &cookie)).await.0);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let denied = callback(&format!("error=access_denied&state={}", query["state"]), &cookie);
    let response = answered(run(&*policy, denied).await.0);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&response), "login-failed");
}

#[tokio::test]
async fn treats_a_tampered_or_expired_session_as_none() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), ""));
    let sealer = Sealer::new(SESSION_SECRET.as_bytes());
    let valid = sealer
        .seal(
            "gantry_oidc",
            &Session { subject: "alice-sub".to_owned(), scope: String::new(), expires_at: now_secs() + 60 },
        )
        .expect("seal");
    let expired = sealer
        .seal(
            "gantry_oidc",
            &Session { subject: "alice-sub".to_owned(), scope: String::new(), expires_at: now_secs() - 1 },
        )
        .expect("seal");
    let mut tampered = valid.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let other_key = Sealer::new(b"another-secret-of-at-least-32-chars!")
        .seal(
            "gantry_oidc",
            &Session { subject: "alice-sub".to_owned(), scope: String::new(), expires_at: now_secs() + 60 },
        )
        .expect("seal");
    for cookie in [expired, tampered, other_key] {
        let request = http::Request::get("/")
            .header(http::header::HOST, "app.test")
            .header(COOKIE, format!("gantry_oidc={cookie}"))
            .body(())
            .expect("request");
        let response = answered(run(&*policy, request).await.0);
        assert_eq!(response.status(), StatusCode::FOUND, "sent to sign in again");
    }
    let request = http::Request::get("/").header(COOKIE, format!("gantry_oidc={valid}")).body(()).expect("request");
    assert!(matches!(run(&*policy, request).await.0, Flow::Continue));
}

#[tokio::test]
async fn clears_the_session_on_the_logout_path() {
    let provider = StubProvider::start(None).await;
    let policy = policy(&login_settings(&provider.issuer(), "  post_logout_redirect: /bye"));
    let response = answered(run(&*policy, get("/logout")).await.0);
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[LOCATION], "/bye");
    let cleared = response.headers()[SET_COOKIE].to_str().expect("cookie");
    assert!(cleared.starts_with("gantry_oidc=; Path=/; Max-Age=0"), "{cleared}");
}

#[test]
fn seals_values_for_one_cookie_name_only() {
    let sealer = Sealer::new(SESSION_SECRET.as_bytes());
    let session = Session { subject: "alice".to_owned(), scope: "openid".to_owned(), expires_at: 1 };
    let sealed = sealer.seal("gantry_oidc", &session).expect("seal");
    assert_eq!(sealer.open::<Session>("gantry_oidc", &sealed), Some(session));
    assert_eq!(sealer.open::<Session>("gantry_oidc_login", &sealed), None);
    assert_eq!(sealer.open::<Session>("gantry_oidc", "short"), None);
    assert!(!sealed.contains("alice"));
}

#[test]
fn computes_the_pkce_challenge_of_rfc_7636_appendix_b() {
    assert_eq!(
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn rejects_bad_settings_at_their_paths() {
    let settings = "issuer: ftp://idp.example
client_id: \"\"
algorithms: [HS256]
timeout: 0s
bearer: false
bearer_cache: {ttl: 0s}
login:
  client_secret: \"\"
  session_secret: too-short
  scopes: [email]
  cookie_name: \"bad cookie\"
  logout_path: logout
  redirect_uri: \"not a url\"";
    let found = errors(settings);
    for expected in [
        "global_policies[0].oidc.issuer: must be an http or https URL",
        "global_policies[0].oidc.client_id: must not be empty",
        "global_policies[0].oidc.algorithms[0]: HMAC algorithms need a shared secret; the provider's keys are public keys",
        "global_policies[0].oidc.timeout: must be longer than zero",
        "global_policies[0].oidc.bearer_cache.ttl: must be longer than zero; `max_tokens: 0` turns the cache off",
        "global_policies[0].oidc.login.client_secret: must not be empty",
        "global_policies[0].oidc.login.session_secret: must be at least 32 characters (random, kept secret)",
        "global_policies[0].oidc.login.scopes: must include `openid`",
        "global_policies[0].oidc.login.logout_path: must be a path starting with `/`",
        "global_policies[0].oidc.login.redirect_uri: must be a path starting with `/` or an http(s) URL",
    ] {
        assert!(found.contains(&expected.to_owned()), "missing {expected:?} in {found:?}");
    }
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].oidc.login.cookie_name: ")), "{found:?}");
}

#[test]
fn rejects_a_route_that_could_let_nothing_through_and_an_issuer_with_a_query() {
    let found = errors("issuer: https://idp.example/?tenant=1\nclient_id: gantry\nbearer: false");
    assert!(
        found.contains(
            &"global_policies[0].oidc.bearer: with neither bearer tokens nor `login`, no request could pass".to_owned()
        ),
        "{found:?}"
    );
    assert!(found.contains(&"global_policies[0].oidc.issuer: must have no query or fragment".to_owned()), "{found:?}");
}

#[test]
fn never_shows_its_secrets_in_its_settings() {
    let config: Config = serde_json::from_value(json!({
        "issuer": "https://idp.example",
        "client_id": "gantry",
        "login": {"client_secret": "client-secret-value", "session_secret": "session-secret-value-0123456789abcdef"},
    }))
    .expect("settings");
    let shown = format!("{config:?}");
    assert!(!shown.contains("client-secret-value") && !shown.contains("session-secret-value"), "{shown}");
}

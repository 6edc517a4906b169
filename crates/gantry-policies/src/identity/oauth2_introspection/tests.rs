use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from};
use gantry_policy_api::RegisteredPolicy;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::HeaderMap;

use super::*;
use crate::identity::test_server::TestServer;

const CONSUMERS: &str = "consumers:
  - id: alice
    groups: [staff]
    credentials:
      oauth2_introspection: {subject: alice-sub}
  - id: billing
    credentials:
      oauth2_introspection: [{subject: billing-old}, {subject: billing-service}]
  - id: guest
";

/// An introspection endpoint that answers from a fixed table of tokens, records what it was
/// sent, and can be told to fail or to be slow. Stopped on drop.
struct StubServer {
    server: TestServer,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    status: Arc<AtomicU16>,
}

impl StubServer {
    async fn start(delay: Duration) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (counter, log, forced) = (calls.clone(), seen.clone(), status.clone());
        let server = TestServer::start(move |_, parts: http::request::Parts, body: Bytes| {
            let (counter, log, forced) = (counter.clone(), log.clone(), forced.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let form = String::from_utf8_lossy(&body).into_owned();
                log.lock().expect("stub log").push((parts.headers, form.clone()));
                tokio::time::sleep(delay).await;
                let status = StatusCode::from_u16(forced.load(Ordering::SeqCst)).expect("stub status");
                let answer = if status == StatusCode::OK { answer(&form) } else { "{}".to_owned() };
                (status, answer)
            }
        })
        .await;
        Self { server, calls, seen, status }
    }

    fn url(&self) -> String {
        format!("http://{}/introspect", self.server.addr())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail_with(&self, status: StatusCode) {
        self.status.store(status.as_u16(), Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<(HeaderMap, String)> {
        self.seen.lock().expect("stub log").clone()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// The stub's table: the token decides the answer.
fn answer(form: &str) -> String {
    let token = form_urlencoded::parse(form.as_bytes()).find(|(key, _)| key == "token").map(|(_, v)| v.into_owned());
    let exp = now_secs() + 3600;
    match token.as_deref() {
        Some("alice-token") => {
            format!(r#"{{"active":true,"sub":"alice-sub","scope":"orders:read orders:write","exp":{exp}}}"#)
        }
        Some("stranger-token") => format!(r#"{{"active":true,"sub":"stranger","exp":{exp}}}"#),
        Some("client-token") => format!(r#"{{"active":true,"client_id":"billing-service","exp":{exp}}}"#),
        Some("expired-token") => format!(r#"{{"active":true,"sub":"alice-sub","exp":{}}}"#, now_secs() - 10),
        Some("garbled-token") => "not json".to_owned(),
        _ => r#"{"active":false}"#.to_owned(),
    }
}

fn settings(stub: &StubServer, extra: &str) -> String {
    format!("introspection_endpoint: {}\nclient_id: gantry\nclient_secret: \"s3cret/+&\"\n{extra}", stub.url())
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<OAuth2Introspection>(), settings, CONSUMERS)
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<OAuth2Introspection>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

fn bearer(token: &str) -> http::Request<()> {
    http::Request::get("/orders").header(AUTHORIZATION, format!("Bearer {token}")).body(()).expect("request")
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
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    body["type"].as_str().unwrap_or_default().trim_start_matches("https://gantry.dev/problems/").to_owned()
}

#[tokio::test]
async fn passes_an_active_token_as_the_consumer_its_subject_names_with_its_scopes() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    let (flow, parts, exchange) = run(&*policy, bearer("alice-token")).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "alice");
    assert!(identity.consumer.is_in("staff"));
    assert_eq!(&*identity.credential_id, "alice:oauth2_introspection");
    assert_eq!(identity.method, "oauth2_introspection");
    assert_eq!(&*identity.scopes, ["orders:read".to_owned(), "orders:write".to_owned()]);
    assert!(parts.headers.get(AUTHORIZATION).is_none(), "the token went upstream");
}

#[tokio::test]
async fn keeps_the_token_when_not_asked_to_hide_it() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "hide_credentials: false"));
    let (flow, parts, _) = run(&*policy, bearer("alice-token")).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.headers[AUTHORIZATION], "Bearer alice-token");
}

#[tokio::test]
async fn describes_a_subject_no_credential_names_as_a_consumer_of_its_own() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    let (flow, _, exchange) = run(&*policy, bearer("stranger-token")).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "stranger");
    assert!(identity.consumer.groups.is_empty());
    assert_eq!(&*identity.credential_id, "stranger");
}

#[tokio::test]
async fn refuses_a_subject_no_credential_names_with_403_when_a_consumer_is_required() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "require_consumer: true"));
    let (flow, _, exchange) = run(&*policy, bearer("stranger-token")).await;
    let response = answered(flow);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&response), "unknown-consumer");
    assert!(exchange.identity.is_none());
}

#[tokio::test]
async fn maps_consumers_by_the_configured_claim_and_refuses_tokens_without_it() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "consumer_claim: client_id"));
    let (flow, _, exchange) = run(&*policy, bearer("client-token")).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "billing");
    assert_eq!(&*identity.credential_id, "billing:oauth2_introspection:1");

    // `alice-token`'s response has a `sub` but no `client_id`.
    let (flow, _, _) = run(&*policy, bearer("alice-token")).await;
    let response = answered(flow);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(response.body()).contains("no `client_id` claim"));
}

#[tokio::test]
async fn refuses_an_inactive_token_with_401_and_an_invalid_token_challenge() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "realm: orders"));
    let (flow, parts, exchange) = run(&*policy, bearer("revoked-token")).await;
    let response = answered(flow);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"orders\", error=\"invalid_token\"");
    assert_eq!(problem_type(&response), "invalid-token");
    assert!(!String::from_utf8_lossy(response.body()).contains("revoked-token"));
    assert!(exchange.identity.is_none());
    assert_eq!(parts.headers[AUTHORIZATION], "Bearer revoked-token", "a refused request is left as it came");
}

#[tokio::test]
async fn refuses_a_token_called_active_after_its_exp() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    let (flow, _, _) = run(&*policy, bearer("expired-token")).await;
    assert_eq!(answered(flow).status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rejects_a_missing_token_with_a_bare_bearer_challenge() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    let (flow, _, _) = run(&*policy, http::Request::get("/").body(()).expect("request")).await;
    let response = answered(flow);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"gantry\"");
    assert_eq!(problem_type(&response), "missing-token");
    // A request with another scheme carries no bearer token either.
    let basic = http::Request::get("/").header(AUTHORIZATION, "Basic YTpi").body(()).expect("request");
    assert_eq!(response_status(run(&*policy, basic).await.0), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(stub.calls(), 0, "nothing to introspect");
}

fn response_status(flow: Flow) -> Option<StatusCode> {
    match flow {
        Flow::Continue => None,
        Flow::Respond(response) => Some(response.status()),
    }
}

#[tokio::test]
async fn lets_the_anonymous_consumer_stand_in_for_a_missing_token_but_not_a_bad_one() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "anonymous_consumer: guest"));
    let (flow, _, exchange) = run(&*policy, http::Request::get("/").body(()).expect("request")).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);
    assert_eq!(response_status(run(&*policy, bearer("bad-token")).await.0), Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn reads_the_token_from_a_header_or_the_query_and_hides_it() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "header: x-access-token\nquery: access_token"));
    let request = http::Request::get("/").header("x-access-token", "alice-token").body(()).expect("request");
    let (flow, parts, exchange) = run(&*policy, request).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "alice");
    assert!(parts.headers.get("x-access-token").is_none());

    let request = http::Request::get("/items?page=2&access_token=alice-token").body(()).expect("request");
    let (flow, parts, _) = run(&*policy, request).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.uri.to_string(), "/items?page=2");
}

#[tokio::test]
async fn authenticates_with_http_basic_by_default_and_sends_the_hint() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "token_type_hint: access_token"));
    run(&*policy, bearer("alice-token")).await;
    let (headers, form) = stub.seen().pop().expect("one call");
    // RFC 6749 §2.3.1: the secret `s3cret/+&` is form-encoded before Base64.
    let expected = format!("Basic {}", base64_of("gantry:s3cret%2F%2B%26"));
    assert_eq!(headers[AUTHORIZATION], expected.as_str());
    let form: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
    assert!(form.contains(&("token".to_owned(), "alice-token".to_owned())), "{form:?}");
    assert!(form.contains(&("token_type_hint".to_owned(), "access_token".to_owned())), "{form:?}");
    assert!(!form.iter().any(|(key, _)| key == "client_secret"), "{form:?}");
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn sends_the_client_secret_in_the_form_with_client_secret_post() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, "client_auth: client_secret_post"));
    run(&*policy, bearer("alice-token")).await;
    let (headers, form) = stub.seen().pop().expect("one call");
    assert!(headers.get(AUTHORIZATION).is_none());
    let form: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
    assert!(form.contains(&("client_id".to_owned(), "gantry".to_owned())), "{form:?}");
    assert!(form.contains(&("client_secret".to_owned(), "s3cret/+&".to_owned())), "{form:?}");
}

#[tokio::test]
async fn reuses_active_and_inactive_results_instead_of_asking_again() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    for _ in 0..3 {
        assert!(matches!(run(&*policy, bearer("alice-token")).await.0, Flow::Continue));
        assert_eq!(response_status(run(&*policy, bearer("bad-token")).await.0), Some(StatusCode::UNAUTHORIZED));
    }
    assert_eq!(stub.calls(), 2, "one call per token");
}

#[tokio::test]
async fn keeps_cached_results_across_a_reload_and_maps_them_with_the_new_settings() {
    let stub = StubServer::start(Duration::ZERO).await;
    let before = policy(&settings(&stub, ""));
    assert!(matches!(run(&*before, bearer("stranger-token")).await.0, Flow::Continue));
    // A reload builds the new policy while the old one still serves.
    let after = policy(&settings(&stub, "require_consumer: true"));
    let response = answered(run(&*after, bearer("stranger-token")).await.0);
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "the new consumer rule applies to the cached result");
    assert_eq!(stub.calls(), 1, "the reload kept the cached result");
    drop(before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn makes_one_call_for_concurrent_requests_with_the_same_token() {
    let stub = StubServer::start(Duration::from_millis(200)).await;
    let policy = policy(&settings(&stub, ""));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let policy = policy.clone();
        requests.spawn(async move { matches!(run(&*policy, bearer("alice-token")).await.0, Flow::Continue) });
    }
    while let Some(passed) = requests.join_next().await {
        assert!(passed.expect("request task"), "a concurrent request was refused");
    }
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn answers_503_when_the_server_fails_and_asks_again_next_time() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    stub.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    let response = answered(run(&*policy, bearer("alice-token")).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_type(&response), "introspection-unavailable");
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none(), "not a verdict on the token");

    stub.fail_with(StatusCode::OK);
    assert!(matches!(run(&*policy, bearer("alice-token")).await.0, Flow::Continue));
    assert_eq!(stub.calls(), 2, "the failure was not cached");
}

#[tokio::test]
async fn answers_503_when_the_server_rejects_the_gateway_or_answers_garbage() {
    let stub = StubServer::start(Duration::ZERO).await;
    let policy = policy(&settings(&stub, ""));
    let response = answered(run(&*policy, bearer("garbled-token")).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    stub.fail_with(StatusCode::UNAUTHORIZED);
    let response = answered(run(&*policy, bearer("alice-token")).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn answers_503_when_the_server_is_too_slow() {
    let stub = StubServer::start(Duration::from_secs(5)).await;
    let policy = policy(&settings(&stub, "timeout: 100ms"));
    let started = std::time::Instant::now();
    let response = answered(run(&*policy, bearer("alice-token")).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn answers_503_when_nothing_listens_at_the_endpoint() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let policy = policy(&format!("introspection_endpoint: http://{addr}/\nclient_id: gantry\nclient_secret: s"));
    let response = answered(run(&*policy, bearer("alice-token")).await.0);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn keeps_results_until_the_token_expires_or_the_cache_ttl_ends_whichever_is_first() {
    let config: Config = serde_json::from_value(serde_json::json!({
        "introspection_endpoint": "http://127.0.0.1:9/introspect",
        "client_id": "gantry",
        "client_secret": "s",
        "cache_ttl": "60s",
        "negative_cache_ttl": "2s",
    }))
    .expect("settings");
    let spec = gantry_config::GatewaySpec::default();
    let consumers = gantry_policy_api::ConsumerDirectory::default();
    let path = gantry_policy_api::testing::policy_path(OAuth2Introspection::NAME);
    let compiled =
        compile(config, &path, &BuildContext::new(&spec, &consumers)).unwrap_or_else(|errors| panic!("{errors}"));
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let active = |exp: Option<u64>| IntrospectionResponse {
        active: true,
        exp,
        claims: serde_json::json!({"sub": "alice-sub"}).as_object().cloned().expect("object"),
    };
    assert_eq!(compiled.judge(active(Some(1_000_010)), now).ttl, Duration::from_secs(10));
    assert_eq!(compiled.judge(active(Some(1_100_000)), now).ttl, Duration::from_secs(60));
    assert_eq!(compiled.judge(active(None), now).ttl, Duration::from_secs(60));
    let expired = compiled.judge(active(Some(999_999)), now);
    assert!(matches!(expired.outcome, Outcome::Inactive));
    assert_eq!(expired.ttl, Duration::from_secs(2));
    let inactive = IntrospectionResponse { active: false, exp: None, claims: serde_json::Map::new() };
    assert_eq!(compiled.judge(inactive, now).ttl, Duration::from_secs(2));
}

#[test]
fn rejects_bad_settings_at_their_paths() {
    let settings = "introspection_endpoint: ftp://auth.example.com/introspect
client_id: \"\"
client_secret: \"\"
timeout: 0s
cache_max_entries: 0
consumer_claim: \"\"
header: \"bad header\"
query: \"\"
anonymous_consumer: nobody";
    let found = errors(settings, CONSUMERS);
    for expected in [
        "global_policies[0].oauth2_introspection.introspection_endpoint: must be an http or https URL",
        "global_policies[0].oauth2_introspection.client_id: must not be empty",
        "global_policies[0].oauth2_introspection.client_secret: must not be empty",
        "global_policies[0].oauth2_introspection.timeout: must be longer than zero",
        "global_policies[0].oauth2_introspection.cache_max_entries: must be at least 1",
        "global_policies[0].oauth2_introspection.header: `bad header` is not a header name",
        "global_policies[0].oauth2_introspection.query: name the query parameter, or leave `query` out",
        "global_policies[0].oauth2_introspection.anonymous_consumer: no consumer has id `nobody`",
    ] {
        assert!(found.contains(&expected.to_owned()), "missing {expected:?} in {found:?}");
    }
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].oauth2_introspection.consumer_claim: ")));
}

#[test]
fn rejects_a_missing_endpoint_and_an_unknown_client_auth() {
    let found = errors("client_id: gantry\nclient_secret: s", CONSUMERS);
    assert!(found.iter().any(|e| e.contains("missing field `introspection_endpoint`")), "{found:?}");
    let found = errors(
        "introspection_endpoint: http://127.0.0.1:9/\nclient_id: gantry\nclient_secret: s\nclient_auth: private_key_jwt",
        CONSUMERS,
    );
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].oauth2_introspection.client_auth: ")), "{found:?}");
}

#[test]
fn never_shows_the_client_secret_in_its_settings() {
    let config: Config = serde_json::from_value(serde_json::json!({
        "introspection_endpoint": "http://127.0.0.1:9/",
        "client_id": "gantry",
        "client_secret": "hunter2-secret",
    }))
    .expect("settings");
    assert!(!format!("{config:?}").contains("hunter2-secret"));
}

#[test]
fn reports_a_subject_claimed_by_two_consumers_and_an_empty_one() {
    let config = "consumers:
  - id: alice
    credentials: {oauth2_introspection: {subject: same}}
  - id: bob
    credentials: {oauth2_introspection: {subject: same}}
  - id: carol
    credentials: {oauth2_introspection: {subject: \"\"}}
";
    let found = errors("introspection_endpoint: http://127.0.0.1:9/\nclient_id: gantry\nclient_secret: s", config);
    assert_eq!(
        found,
        [
            "consumers[carol].credentials.oauth2_introspection.subject: must not be empty",
            "consumers[bob].credentials.oauth2_introspection.subject: the same subject is already the credential `alice:oauth2_introspection`",
        ]
    );
}

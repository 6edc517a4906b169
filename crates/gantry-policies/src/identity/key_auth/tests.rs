use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
use gantry_policy_api::RegisteredPolicy;
use http::header::WWW_AUTHENTICATE;
use http::StatusCode;

use super::*;

const CONSUMERS: &str = "consumers:
  - id: alice
    groups: [staff]
    credentials:
      key_auth: {key: alice-key}
  - id: bob
    credentials:
      key_auth:
        - {key: bob-old-key}
        - {key: bob-new-key}
  - id: guest
";

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<KeyAuth>(), settings, CONSUMERS)
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<KeyAuth>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

fn run(policy: &dyn Policy, request: http::Request<()>) -> (Flow, RequestParts, Exchange) {
    let mut parts = request.into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = run_request(policy, &mut parts, &mut exchange);
    (flow, parts, exchange)
}

fn status(flow: &Flow) -> Option<StatusCode> {
    match flow {
        Flow::Continue => None,
        Flow::Respond(response) => Some(response.status()),
    }
}

#[test]
fn recognises_a_key_in_the_header_and_hides_it_from_the_upstream() {
    let policy = policy("");
    let (flow, parts, exchange) =
        run(&*policy, http::Request::get("/").header("apikey", "alice-key").body(()).expect("request"));
    assert_eq!(status(&flow), None);
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "alice");
    assert!(identity.consumer.is_in("staff"));
    assert_eq!(&*identity.credential_id, "alice:key_auth");
    assert_eq!(identity.method, "key_auth");
    assert!(!identity.is_anonymous);
    assert!(parts.headers.get("apikey").is_none());
}

#[test]
fn keeps_the_key_when_not_asked_to_hide_it() {
    let policy = policy("hide_credentials: false");
    let (flow, parts, _) =
        run(&*policy, http::Request::get("/").header("apikey", "alice-key").body(()).expect("request"));
    assert_eq!(status(&flow), None);
    assert_eq!(parts.headers["apikey"], "alice-key");
}

#[test]
fn accepts_every_key_of_a_consumer_list_for_rotation() {
    let policy = policy("");
    for (key, credential) in [("bob-old-key", "bob:key_auth:0"), ("bob-new-key", "bob:key_auth:1")] {
        let (flow, _, exchange) =
            run(&*policy, http::Request::get("/").header("apikey", key).body(()).expect("request"));
        assert_eq!(status(&flow), None);
        assert_eq!(&*exchange.identity.expect("recognised").credential_id, credential);
    }
}

#[test]
fn rejects_a_missing_key_with_401_and_a_challenge() {
    let policy = policy("realm: orders");
    let (flow, _, exchange) = run(&*policy, http::Request::get("/").body(()).expect("request"));
    let Flow::Respond(response) = flow else { panic!("a request without a key must be answered") };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Key realm=\"orders\"");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["type"], "https://gantry.dev/problems/missing-credentials");
    assert!(exchange.identity.is_none());
}

#[test]
fn rejects_an_unknown_key_with_401_without_echoing_it() {
    let policy = policy("");
    let (flow, _, _) =
        run(&*policy, http::Request::get("/").header("apikey", "guessed-key").body(()).expect("request"));
    let Flow::Respond(response) = flow else { panic!("an unknown key must be answered") };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = String::from_utf8_lossy(response.body()).into_owned();
    assert!(body.contains("invalid-credentials"), "{body}");
    assert!(!body.contains("guessed-key"), "{body}");
}

#[test]
fn reads_the_key_from_the_query_and_removes_only_that_parameter() {
    let policy = policy("query: api_key");
    let request = http::Request::get("/items?page=2&api_key=alice%2Dkey&sort=asc").body(()).expect("request");
    let (flow, parts, exchange) = run(&*policy, request);
    assert_eq!(status(&flow), None);
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "alice");
    assert_eq!(parts.uri.to_string(), "/items?page=2&sort=asc");

    let (_, parts, _) = run(&*policy, http::Request::get("/items?api_key=alice-key").body(()).expect("request"));
    assert_eq!(parts.uri.to_string(), "/items");
}

#[test]
fn prefers_the_header_over_the_query() {
    let policy = policy("query: api_key");
    let request = http::Request::get("/?api_key=alice-key").header("apikey", "wrong").body(()).expect("request");
    let (flow, _, _) = run(&*policy, request);
    assert_eq!(status(&flow), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn reads_the_key_from_a_cookie_and_keeps_the_other_cookies() {
    let policy = policy("cookie: session_key");
    let request = http::Request::get("/")
        .header("cookie", "theme=dark; session_key=alice-key; lang=en")
        .body(())
        .expect("request");
    let (flow, parts, exchange) = run(&*policy, request);
    assert_eq!(status(&flow), None);
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "alice");
    assert_eq!(parts.headers["cookie"], "theme=dark; lang=en");
}

#[test]
fn lets_the_anonymous_consumer_stand_in_for_a_missing_key_but_not_a_wrong_one() {
    let policy = policy("anonymous_consumer: guest");
    let (flow, _, exchange) = run(&*policy, http::Request::get("/").body(()).expect("request"));
    assert_eq!(status(&flow), None);
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);

    let (flow, _, _) = run(&*policy, http::Request::get("/").header("apikey", "wrong").body(()).expect("request"));
    assert_eq!(status(&flow), Some(StatusCode::UNAUTHORIZED));
}

#[test]
fn rejects_an_unknown_anonymous_consumer_and_bad_names() {
    let found = errors("anonymous_consumer: nobody\nheader: \"bad header\"\nquery: \"\"", CONSUMERS);
    assert!(
        found.contains(&"global_policies[0].key_auth.anonymous_consumer: no consumer has id `nobody`".to_owned()),
        "{found:?}"
    );
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].key_auth.header: ")), "{found:?}");
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].key_auth.query: ")), "{found:?}");
}

#[test]
fn reports_a_key_shared_by_two_consumers_once_without_the_key() {
    let config = "consumers:
  - id: alice
    credentials: {key_auth: {key: same-key}}
  - id: bob
    credentials: {key_auth: {key: same-key}}
";
    let found = errors("", config);
    assert_eq!(
        found,
        ["consumers[bob].credentials.key_auth.key: the same key is already the credential `alice:key_auth`"]
    );
}

#[test]
fn rejects_empty_and_misspelt_credentials_at_their_path() {
    let config = "consumers:
  - id: alice
    credentials: {key_auth: {key: \"\"}}
  - id: bob
    credentials: {key_auth: [{key: ok-key}, {kee: typo}]}
";
    let found = errors("", config);
    assert!(found.contains(&"consumers[alice].credentials.key_auth.key: must not be empty".to_owned()), "{found:?}");
    assert!(
        found.iter().any(|e| e.starts_with("consumers[bob].credentials.key_auth[1].kee: unknown field `kee`")),
        "{found:?}"
    );
}

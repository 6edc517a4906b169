use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use gantry_policy_api::subrequest::{allow_subrequests, SubrequestFuture, SubrequestSender};
use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, request_parts};
use gantry_policy_api::{Consumer, Identity, RegisteredPolicy};

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Aggregate>()
}

const CONFIG: &str =
    "upstreams:\n  - id: users\n    endpoints: [127.0.0.1:1]\n  - id: orders\n    endpoints: [127.0.0.1:2]\n";

fn build(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(entry(), settings, CONFIG).unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

/// What a stand-in upstream answers, after how long.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: &'static str,
    delay: std::time::Duration,
}

fn answer(status: u16, body: &'static str) -> Answer {
    Answer { status, body, delay: std::time::Duration::ZERO }
}

/// Answers each upstream as told and records every subrequest's upstream, method, URI and headers.
#[derive(Default)]
struct StandIn {
    answers: HashMap<&'static str, Answer>,
    sent: Mutex<Vec<(String, http::request::Parts)>>,
}

impl SubrequestSender for StandIn {
    fn send(&self, request: Subrequest) -> SubrequestFuture {
        let answer = self.answers.get(&*request.upstream).cloned();
        self.sent.lock().expect("lock").push((request.upstream.to_string(), request.head));
        Box::pin(async move {
            let Some(answer) = answer else {
                return Err(SubrequestError::Failed("connecting to 127.0.0.1:1 failed: refused".to_owned()));
            };
            tokio::time::sleep(answer.delay).await;
            let mut response = http::Response::new(Bytes::from_static(answer.body.as_bytes()));
            *response.status_mut() = StatusCode::from_u16(answer.status).expect("status");
            Ok(response)
        })
    }
}

fn stand_in(answers: &[(&'static str, Answer)]) -> Arc<StandIn> {
    Arc::new(StandIn { answers: answers.iter().cloned().collect(), sent: Mutex::default() })
}

async fn run_with(
    policy: &dyn Policy,
    sender: Arc<StandIn>,
    uri: &str,
    prepare: impl FnOnce(&mut Exchange),
) -> PolicyResponse {
    let mut request = request_parts(
        http::Request::get(uri).header("authorization", "Bearer t").header("cookie", "s=1").body(()).expect("request"),
    );
    let mut exchange = exchange_from("10.0.0.1:5000");
    allow_subrequests(&mut exchange, sender);
    prepare(&mut exchange);
    match policy.on_request(&mut request, &mut exchange).resolve().await {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("aggregate always answers"),
    }
}

async fn run(policy: &dyn Policy, sender: Arc<StandIn>, uri: &str) -> PolicyResponse {
    run_with(policy, sender, uri, |_| {}).await
}

fn json(response: &PolicyResponse) -> Value {
    serde_json::from_slice(response.body()).expect("a JSON body")
}

const TWO: &str = "requests:
  - {name: user, upstream: users, path: /users/7}
  - {name: orders, upstream: orders, path: /orders, required: false}
";

#[tokio::test]
async fn puts_each_answer_under_its_name() {
    let sender = stand_in(&[("users", answer(200, r#"{"id":7}"#)), ("orders", answer(200, "[1,2]"))]);
    let response = run(&*build(TWO), sender, "/profile").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    assert!(response.headers().get(PARTIAL_HEADER).is_none());
    assert_eq!(json(&response), serde_json::json!({"user": {"id": 7}, "orders": [1, 2]}));
}

#[tokio::test]
async fn fills_the_path_from_path_parameters_query_and_consumer_and_copies_listed_headers() {
    let settings = "requests:
  - name: user
    upstream: users
    path: /users/{id}/{consumer}?limit={query.limit}
    method: POST
    headers: [authorization]
";
    let sender = stand_in(&[("users", answer(200, "{}"))]);
    let consumer = Arc::new(Consumer::named("team a"));
    let response = run_with(&*build(settings), sender.clone(), "/p/x?limit=5%266&other=1", |exchange| {
        exchange.path_params = vec![(Arc::from("id"), "a%2Fb c".to_owned())];
        exchange.authenticate(Identity::credential(consumer, Arc::from("team a:key"), "key_auth"));
    })
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let sent = sender.sent.lock().expect("lock");
    let (upstream, head) = &sent[0];
    assert_eq!(upstream, "users");
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.uri, "/users/a%2Fb%20c/team%20a?limit=5%266");
    assert_eq!(head.headers["authorization"], "Bearer t");
    assert!(head.headers.get("cookie").is_none(), "only listed headers are copied");
    assert_eq!(head.headers[ACCEPT], "application/json");
}

#[tokio::test]
async fn deep_merges_objects_in_order() {
    let settings = "merge: deep
requests:
  - {name: a, upstream: users, path: /a}
  - {name: b, upstream: orders, path: /b}
";
    let sender = stand_in(&[
        ("users", answer(200, r#"{"id":"ada","profile":{"name":"Ada","plan":"free"},"tags":[1]}"#)),
        ("orders", answer(200, r#"{"profile":{"plan":"pro"},"tags":[2],"orders":3}"#)),
    ]);
    let response = run(&*build(settings), sender, "/").await;
    assert_eq!(
        json(&response),
        serde_json::json!({"id": "ada", "profile": {"name": "Ada", "plan": "pro"}, "tags": [2], "orders": 3})
    );
}

#[tokio::test]
async fn answers_null_and_names_the_optional_subrequest_that_failed() {
    for failing in [answer(503, r#"{"e":1}"#), answer(200, "not json")] {
        let sender = stand_in(&[("users", answer(200, r#"{"id":7}"#)), ("orders", failing)]);
        let response = run(&*build(TWO), sender, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[PARTIAL_HEADER], "orders");
        assert_eq!(json(&response), serde_json::json!({"user": {"id": 7}, "orders": null}));
    }
    // No answer at all.
    let response = run(&*build(TWO), stand_in(&[("users", answer(200, "1"))]), "/").await;
    assert_eq!(response.headers()[PARTIAL_HEADER], "orders");
}

#[tokio::test]
async fn fails_with_502_naming_the_required_subrequest_that_failed() {
    let cases =
        [(Some(answer(500, "{}")), "answered 500"), (Some(answer(200, "<html>")), "not JSON"), (None, "refused")];
    for (users, reason) in cases {
        let mut answers = vec![("orders", answer(200, "[]"))];
        answers.extend(users.map(|users| ("users", users)));
        let response = run(&*build(TWO), stand_in(&answers), "/").await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let problem = json(&response);
        assert_eq!(problem["type"], "https://gantry.dev/problems/aggregate-failed");
        let detail = problem["detail"].as_str().expect("detail");
        assert!(detail.contains("`user`") && detail.contains("`users`") && detail.contains(reason), "{detail}");
    }
}

#[tokio::test]
async fn a_missing_path_value_fails_that_subrequest_only() {
    let settings = "requests:
  - {name: user, upstream: users, path: /users/7}
  - {name: orders, upstream: orders, path: '/orders?page={query.page}', required: false}
";
    let sender = stand_in(&[("users", answer(200, "{}")), ("orders", answer(200, "[]"))]);
    let response = run(&*build(settings), sender.clone(), "/").await;
    assert_eq!(response.headers()[PARTIAL_HEADER], "orders");
    assert_eq!(sender.sent.lock().expect("lock").len(), 1, "the incomplete subrequest is never sent");
}

#[tokio::test(start_paused = true)]
async fn runs_subrequests_at_once_within_their_timeouts() {
    let settings = "timeout: 1s
requests:
  - {name: user, upstream: users, path: /u}
  - {name: orders, upstream: orders, path: /o, required: false, timeout: 150ms}
";
    let slow = |delay_ms, body| Answer { status: 200, body, delay: std::time::Duration::from_millis(delay_ms) };
    let policy = build(settings);

    let started = tokio::time::Instant::now();
    let sender = stand_in(&[("users", slow(100, "1")), ("orders", slow(100, "2"))]);
    let response = run(&*policy, sender, "/").await;
    assert_eq!(json(&response), serde_json::json!({"user": 1, "orders": 2}));
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(100), "concurrent, not one after the other");

    let started = tokio::time::Instant::now();
    let sender = stand_in(&[("users", slow(100, "1")), ("orders", slow(400, "2"))]);
    let response = run(&*policy, sender, "/").await;
    assert_eq!(json(&response), serde_json::json!({"user": 1, "orders": null}));
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(150), "the optional one is given up at its timeout");

    let started = tokio::time::Instant::now();
    let sender = stand_in(&[("users", slow(5000, "1")), ("orders", slow(10, "2"))]);
    let response = run(&*policy, sender, "/").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(1), "the aggregate's deadline");
}

#[tokio::test]
async fn answers_502_outside_a_gateway_that_sends_subrequests() {
    let policy = build(TWO);
    let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    let Flow::Respond(response) = policy.on_request(&mut request, &mut exchange).resolve().await else {
        panic!("aggregate always answers")
    };
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[test]
fn is_a_terminal_forward_policy_that_sends_subrequests() {
    assert_eq!(entry().stage, Stage::Forward);
    let policy = build(TWO);
    assert_eq!(policy.hooks(), Hooks::REQUEST);
    assert!(policy.answers_every_request());
    assert!(policy.sends_subrequests());
}

#[test]
fn rejects_each_bad_setting_at_its_path() {
    let cases = [
        ("requests: []", "requests"),
        ("requests: [{name: a, upstream: nope, path: /a}]", "requests[0].upstream"),
        ("requests: [{name: a, upstream: users, path: /a}, {name: a, upstream: users, path: /b}]", "requests[1].name"),
        ("requests: [{name: '', upstream: users, path: /a}]", "requests[0].name"),
        ("requests: [{name: a, upstream: users, path: a}]", "requests[0].path"),
        ("requests: [{name: a, upstream: users, path: '/a/{'}]", "requests[0].path"),
        ("requests: [{name: a, upstream: users, path: '/a/{x.y}'}]", "requests[0].path"),
        ("requests: [{name: a, upstream: users, path: '/a b'}]", "requests[0].path"),
        ("requests: [{name: a, upstream: users, path: /a, method: 'G T'}]", "requests[0].method"),
        ("requests: [{name: a, upstream: users, path: /a, headers: ['x y']}]", "requests[0].headers[0]"),
        ("requests: [{name: a, upstream: users, path: /a, timeout: 20s}]", "requests[0].timeout"),
        ("requests: [{name: a, upstream: users, path: /a, timeout: 0s}]", "requests[0].timeout"),
        ("requests: [{name: a, upstream: users, path: /a}]\ntimeout: 0s", "timeout"),
        ("requests: [{name: a, upstream: users, path: /a}]\nmax_body_bytes: 0", "max_body_bytes"),
        ("requests: [{name: a, upstream: users, path: /a}]\nmerge: shallow", "merge"),
        ("requests: [{name: a, upstream: users, path: /a, cache: true}]", "requests[0]"),
    ];
    for (settings, field) in cases {
        let errors = build_identity_policy_error(entry(), settings, CONFIG);
        let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
        let wanted = format!("global_policies[0].aggregate.{field}");
        assert!(paths.iter().any(|path| path.starts_with(&wanted)), "{settings}: {paths:?}, wanted {wanted}");
    }
}

#[test]
fn parses_templates_into_pieces() {
    let template = PathTemplate::parse("/u/{id}/x?a={query.a}&c={consumer}").expect("valid");
    assert_eq!(
        template.0,
        vec![
            Piece::Literal("/u/".to_owned()),
            Piece::PathParam("id".to_owned()),
            Piece::Literal("/x?a=".to_owned()),
            Piece::QueryParam("a".to_owned()),
            Piece::Literal("&c=".to_owned()),
            Piece::Consumer,
        ]
    );
    assert!(PathTemplate::parse("/u/}").is_err());
}

use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Script>()
}

/// The settings of a script; `extra` holds more fields, one per line.
fn settings(source: &str, extra: &str) -> String {
    let indented: String = source.lines().map(|line| format!("  {line}\n")).collect();
    format!("{extra}source: |\n{indented}")
}

fn request(path: &str, headers: &[(&str, &str)]) -> RequestParts {
    let mut builder = http::Request::get(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    request_parts(builder.body(()).expect("request"))
}

fn run(yaml: &str, request: &mut RequestParts, exchange: &mut Exchange) -> Flow {
    let policy = build_policy(entry(), yaml).expect("valid settings");
    run_request(&*policy, request, exchange)
}

#[test]
fn sets_and_removes_headers_and_rewrites_the_path() {
    let yaml = settings(
        r#"fn on_request() {
  this.headers["x-client"] = this.client_ip;
  this.headers["x-method"] = this.method;
  this.headers.remove("x-debug");
  if this.path.starts_with("/old") { this.path = "/new" + this.path.sub_string(4); }
}"#,
        "",
    );
    let mut parts = request("/old/items?page=2", &[("x-debug", "1"), ("x-keep", "yes")]);
    let mut exchange = exchange_from("10.0.0.9:4000");
    assert!(matches!(run(&yaml, &mut parts, &mut exchange), Flow::Continue));
    assert_eq!(parts.headers["x-client"], "10.0.0.9");
    assert_eq!(parts.headers["x-method"], "GET");
    assert_eq!(parts.headers["x-keep"], "yes");
    assert!(!parts.headers.contains_key("x-debug"));
    assert_eq!(exchange.upstream_path.as_ref().map(PathAndQuery::as_str), Some("/new/items?page=2"));

    let mut untouched = request("/other", &[]);
    let mut exchange = exchange_from("10.0.0.9:4000");
    run(&yaml, &mut untouched, &mut exchange);
    assert!(exchange.upstream_path.is_none(), "an unchanged path is left to the route");
}

#[test]
fn answers_early_with_status_headers_and_body() {
    let yaml = settings(
        r#"fn on_request() {
  if this.query == () { return #{status: 403, headers: #{"x-reason": "no query"}, body: "closed"}; }
}"#,
        "",
    );
    let mut exchange = exchange_from("10.0.0.1:1");
    let Flow::Respond(answer) = run(&yaml, &mut request("/", &[]), &mut exchange) else {
        panic!("the script answers");
    };
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert_eq!(answer.headers()["x-reason"], "no query");
    assert_eq!(answer.headers()[CONTENT_LENGTH], "6");
    assert_eq!(answer.body().as_ref(), b"closed");
    assert!(matches!(run(&yaml, &mut request("/?a=1", &[]), &mut exchange), Flow::Continue));
}

fn status_of(flow: Flow) -> u16 {
    match flow {
        Flow::Continue => 200,
        Flow::Respond(answer) => answer.status().as_u16(),
    }
}

#[test]
fn limits_stop_runaway_scripts_and_fail_closed_or_open() {
    let endless = "fn on_request() { loop { } }";
    let started = Instant::now();
    let mut exchange = exchange_from("10.0.0.1:1");
    assert_eq!(status_of(run(&settings(endless, ""), &mut request("/", &[]), &mut exchange)), 500);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "stopped by max_operations");

    // Past the clock, not the operation count.
    let slow = settings(endless, "max_operations: 100000000000\ntimeout: 30ms\n");
    let started = Instant::now();
    assert_eq!(status_of(run(&slow, &mut request("/", &[]), &mut exchange)), 500);
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(30) && took < std::time::Duration::from_secs(2), "{took:?}");

    let huge = settings("fn on_request() { let s = \"x\"; loop { s += s; } }", "max_string_size: 1024\n");
    assert_eq!(status_of(run(&huge, &mut request("/", &[]), &mut exchange)), 500);
    let deep = settings("fn f(n) { f(n + 1) }\nfn on_request() { f(0) }", "");
    assert_eq!(status_of(run(&deep, &mut request("/", &[]), &mut exchange)), 500);
    let broken = settings("fn on_request() { this.headers[\"x\"] = 5; }", "");
    assert_eq!(status_of(run(&broken, &mut request("/", &[]), &mut exchange)), 500);

    let open = settings("fn on_request() { this.headers[\"x-a\"] = \"1\"; loop { } }", "on_error: fail_open\n");
    let mut parts = request("/", &[]);
    assert_eq!(status_of(run(&open, &mut parts, &mut exchange)), 200);
    assert!(!parts.headers.contains_key("x-a"), "a failed call changes nothing");
}

#[test]
fn changes_response_headers_and_replaces_a_response_when_it_fails() {
    let policy = build_policy(
        entry(),
        &settings(
            "fn on_response() { this.headers[\"x-status\"] = `${this.status}`; this.headers.remove(\"server\"); }",
            "",
        ),
    )
    .expect("valid");
    assert_eq!(policy.hooks(), Hooks::RESPONSE);
    let mut response =
        http::Response::builder().status(201).header("server", "upstream").body(()).expect("response").into_parts().0;
    let mut exchange = exchange_from("10.0.0.1:1");
    policy.on_response(&mut response, &mut exchange);
    assert_eq!(response.headers["x-status"], "201");
    assert!(!response.headers.contains_key("server"));

    let failing = build_policy(entry(), &settings("fn on_response() { throw \"no\"; }", "")).expect("valid");
    failing.on_response(&mut response, &mut exchange);
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(gantry_policy_api::response_body::take_response_body_action(&mut exchange).is_some());
}

#[test]
fn reports_syntax_errors_with_line_and_column_and_bad_limits() {
    let errors = build_policy_error(entry(), &settings("fn on_request() {\n  let x = ;\n}", "")).to_string();
    assert!(errors.contains("source") && errors.contains("line 2, column"), "{errors}");
    let errors = build_policy_error(entry(), &settings("fn helper() { 1 }", "")).to_string();
    assert!(errors.contains("define `fn on_request()`"), "{errors}");
    let errors = build_policy_error(entry(), &settings("fn on_request(request) { }", "")).to_string();
    assert!(errors.contains("takes no parameters"), "{errors}");
    let errors =
        build_policy_error(entry(), &settings("fn on_request() { }", "timeout: 5s\nmax_operations: 0\n")).to_string();
    assert!(errors.contains("timeout") && errors.contains("max_operations"), "{errors}");
    let errors = build_policy_error(entry(), &settings("fn on_request() { eval(\"1\") }", "")).to_string();
    assert!(errors.contains("source"), "`eval` is not available: {errors}");
}

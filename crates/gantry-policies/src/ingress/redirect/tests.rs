//! Tests of the `redirect` policy: targets, placeholders, statuses and rejected settings.

use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Redirect>()
}

fn get(target: &str, host: Option<&str>) -> RequestParts {
    let mut builder = http::Request::get(target);
    if let Some(host) = host {
        builder = builder.header(HOST, host);
    }
    request_parts(builder.body(()).expect("request"))
}

/// Runs the policy; `Some((status, location))` when it redirected, `None` when it let the
/// request through.
fn run(settings: &str, mut request: RequestParts, is_tls: bool) -> Option<(StatusCode, String)> {
    let policy = build_policy(entry(), settings).expect("valid settings");
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.is_tls = is_tls;
    match run_request(&*policy, &mut request, &mut exchange) {
        Flow::Continue => None,
        Flow::Respond(response) => {
            let location = response
                .headers()
                .get(LOCATION)
                .map_or(String::new(), |value| value.to_str().expect("ascii location").to_owned());
            Some((response.status(), location))
        }
    }
}

#[test]
fn redirects_plain_http_to_https_keeping_host_path_and_query() {
    let redirect = run("http_to_https: true", get("/a/b?x=1&y=2", Some("shop.example.com:8080")), false);
    assert_eq!(redirect, Some((StatusCode::FOUND, "https://shop.example.com/a/b?x=1&y=2".to_owned())));
}

#[test]
fn lets_a_tls_request_through() {
    assert_eq!(run("http_to_https: true", get("/a", Some("shop.example.com")), true), None);
}

#[test]
fn adds_a_non_default_https_port_and_uses_the_configured_status() {
    let settings = "http_to_https: true\nhttps_port: 8443\nstatus: 308";
    let redirect = run(settings, get("/", Some("[::1]:8080")), false);
    assert_eq!(redirect, Some((StatusCode::PERMANENT_REDIRECT, "https://[::1]:8443/".to_owned())));
    let default_port = run("http_to_https: true\nhttps_port: 443", get("/", Some("example.com")), false);
    assert_eq!(default_port.map(|(_, location)| location), Some("https://example.com/".to_owned()));
}

#[test]
fn takes_the_host_from_an_absolute_request_target() {
    let redirect = run("http_to_https: true", get("http://api.example.com:80/v1?q", None), false);
    assert_eq!(redirect.map(|(_, location)| location), Some("https://api.example.com/v1?q".to_owned()));
}

#[test]
fn answers_400_when_the_request_names_no_host() {
    let policy = build_policy(entry(), "http_to_https: true").expect("valid settings");
    let mut request = get("/", None);
    let Flow::Respond(response) = run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:1")) else {
        panic!("a request without a host cannot be redirected");
    };
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get(LOCATION).is_none());
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(body["type"], "https://gantry.dev/problems/missing-host");
}

#[test]
fn fills_every_placeholder_of_a_uri_template() {
    let settings = "uri: '$scheme://new.example.com/v2$uri?from=${host}&$args|$request_uri|$$'\nstatus: 301";
    let redirect = run(settings, get("/orders/7?page=2", Some("old.example.com")), true);
    assert_eq!(
        redirect,
        Some((
            StatusCode::MOVED_PERMANENTLY,
            "https://new.example.com/v2/orders/7?from=old.example.com&page=2|/orders/7?page=2|$".to_owned()
        ))
    );
}

#[test]
fn redirects_every_request_to_a_fixed_uri_even_over_tls() {
    let redirect = run("uri: /maintenance", get("/anything", Some("example.com")), true);
    assert_eq!(redirect, Some((StatusCode::FOUND, "/maintenance".to_owned())));
}

#[test]
fn answers_every_request_only_with_a_fixed_target_and_runs_at_ingress() {
    assert_eq!(entry().stage, Stage::Ingress);
    let fixed = build_policy(entry(), "uri: /x").expect("valid");
    assert_eq!(fixed.hooks(), Hooks::REQUEST);
    assert!(fixed.answers_every_request());
    assert!(!build_policy(entry(), "http_to_https: true").expect("valid").answers_every_request());
}

#[test]
fn rejects_both_http_to_https_and_uri_at_the_uri_path() {
    let errors = build_policy_error(entry(), "http_to_https: true\nuri: /x");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path.to_string(), "global_policies[0].redirect.uri");
}

#[test]
fn rejects_settings_with_no_target_at_the_policy_path() {
    let errors = build_policy_error(entry(), "status: 301");
    assert_eq!(errors.0[0].path.to_string(), "global_policies[0].redirect");
}

#[test]
fn rejects_a_status_that_is_not_a_redirect() {
    let errors = build_policy_error(entry(), "uri: /x\nstatus: 200");
    assert_eq!(errors.0[0].path.to_string(), "global_policies[0].redirect.status");
    assert!(errors.0[0].message.contains("301, 302, 303, 307 or 308"), "{errors}");
}

#[test]
fn rejects_an_unknown_placeholder_and_a_stray_https_port() {
    let errors = build_policy_error(entry(), "uri: /x$path\nhttps_port: 8443");
    let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
    assert_eq!(paths, ["global_policies[0].redirect.https_port", "global_policies[0].redirect.uri"]);
    assert!(errors.0[1].message.contains("unknown placeholder `$path`"), "{errors}");
}

#[test]
fn rejects_spaces_and_unclosed_braces_in_the_target() {
    let spaces = build_policy_error(entry(), "uri: /a b");
    assert_eq!(spaces.0[0].path.to_string(), "global_policies[0].redirect.uri");
    let unclosed = build_policy_error(entry(), "uri: '/${uri'");
    assert!(unclosed.0[0].message.contains("unclosed"), "{unclosed}");
}

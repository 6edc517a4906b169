use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<ProxyRewrite>()
}

/// Runs the policy on `GET uri` and gives the upstream path it chose, the method and `Host`.
fn rewrite(settings: &str, uri: &str) -> (Option<String>, Method, Option<String>) {
    let policy = build_policy(entry(), settings).expect("valid settings");
    let mut request =
        request_parts(http::Request::get(uri).header("host", "client.example").body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    let flow = run_request(&*policy, &mut request, &mut exchange);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(request.uri.to_string(), uri, "later policies see the client's URI");
    let host = request.headers.get(HOST).and_then(|value| value.to_str().ok()).map(str::to_owned);
    (exchange.upstream_path.map(|path| path.to_string()), request.method, host)
}

#[test]
fn replaces_the_path_with_regex_captures_by_number_and_name() {
    let settings = "regex_uri: ['^/api/(?P<version>v\\d)/(.*)$', '/${version}/internal/$2']";
    let (path, _, _) = rewrite(settings, "/api/v1/orders/7?expand=items");
    assert_eq!(path.as_deref(), Some("/v1/internal/orders/7?expand=items"));
}

#[test]
fn leaves_a_path_the_regex_does_not_match_to_the_route() {
    let (path, _, _) = rewrite("regex_uri: ['^/api/(.*)', '/$1']", "/health?x=1");
    assert_eq!(path, None);
    let (path, _, _) = rewrite("regex_uri: ['^/api/(.*)', '/$1']\nkeep_query: false", "/health?x=1");
    assert_eq!(path.as_deref(), Some("/health"));
}

#[test]
fn a_fixed_uri_keeps_replaces_or_extends_the_query() {
    assert_eq!(rewrite("uri: /v2/search", "/find?q=a").0.as_deref(), Some("/v2/search?q=a"));
    assert_eq!(rewrite("uri: /v2/search\nkeep_query: false", "/find?q=a").0.as_deref(), Some("/v2/search"));
    assert_eq!(rewrite("uri: /v2/search?src=gw", "/find?q=a").0.as_deref(), Some("/v2/search?src=gw&q=a"));
    assert_eq!(
        rewrite("uri: /v2/search?src=gw\nkeep_query: false", "/find?q=a").0.as_deref(),
        Some("/v2/search?src=gw")
    );
    assert_eq!(rewrite("uri: /v2/search?src=gw", "/find").0.as_deref(), Some("/v2/search?src=gw"));
}

#[test]
fn drops_the_query_alone_when_asked() {
    assert_eq!(rewrite("keep_query: false", "/find?q=a").0.as_deref(), Some("/find"));
}

#[test]
fn changes_the_method_and_the_host_header() {
    let (path, method, host) = rewrite("method: POST\nhost: orders.internal:8443", "/orders?x=1");
    assert_eq!(path, None, "the path is left to the route");
    assert_eq!(method, Method::POST);
    assert_eq!(host.as_deref(), Some("orders.internal:8443"));
}

#[test]
fn rejects_an_invalid_regex_at_its_path() {
    let errors = build_policy_error(entry(), "regex_uri: ['^/api/(', '/$1']");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path.to_string(), "global_policies[0].proxy_rewrite.regex_uri[0]");
    assert!(errors.0[0].message.contains("regular expression"), "{errors}");
}

#[test]
fn rejects_a_replacement_naming_a_missing_capture() {
    let errors = build_policy_error(entry(), "regex_uri: ['^/api/(?P<id>\\d+)', '/$2/${name}/$id']");
    let messages: Vec<_> = errors.0.iter().map(|error| (error.path.to_string(), error.message.clone())).collect();
    assert_eq!(messages.len(), 2, "{errors}");
    assert!(messages.iter().all(|(path, _)| path == "global_policies[0].proxy_rewrite.regex_uri[1]"));
    assert!(messages[0].1.contains("`$2`") && messages[1].1.contains("`$name`"), "{errors}");
}

#[test]
fn finds_capture_references_as_the_regex_crate_reads_them() {
    assert_eq!(capture_references("/$1/${2}x/$name-$$literal/${a b}"), ["1", "2", "name", "a b"]);
}

#[test]
fn rejects_bad_settings_with_their_paths() {
    let cases = [
        ("uri: orders", "global_policies[0].proxy_rewrite.uri"),
        ("uri: '/a b'", "global_policies[0].proxy_rewrite.uri"),
        ("uri: /a\nregex_uri: ['^/', '/']", "global_policies[0].proxy_rewrite.regex_uri"),
        ("regex_uri: ['^/']", "global_policies[0].proxy_rewrite.regex_uri"),
        ("regex_uri: ['^/(.*)', 'v2/$1']", "global_policies[0].proxy_rewrite.regex_uri[1]"),
        ("method: 'GE T'", "global_policies[0].proxy_rewrite.method"),
        ("host: 'user@evil.example'", "global_policies[0].proxy_rewrite.host"),
        ("host: 'a/b'", "global_policies[0].proxy_rewrite.host"),
        ("keep_query: true", "global_policies[0].proxy_rewrite"),
        ("headers: {x-a: b}", "global_policies[0].proxy_rewrite.headers"),
    ];
    for (settings, path) in cases {
        let errors = build_policy_error(entry(), settings);
        assert_eq!(errors.0[0].path.to_string(), path, "{settings}: {errors}");
    }
}

#[test]
fn implements_only_the_request_hook() {
    let policy = build_policy(entry(), "method: PUT").expect("valid settings");
    assert_eq!(policy.hooks(), Hooks::REQUEST);
}

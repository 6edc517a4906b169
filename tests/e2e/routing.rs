//! Route matching through the running gateway: path kinds and their precedence, hosts,
//! method/header/query conditions, priority, and the path rewrites sent upstream.
//!
//! Most routes here answer with `mock_response` naming themselves, so the body tells which
//! route matched; the rewrite test uses a real echo upstream to see the path it receives.
//! The matcher's corner cases are unit-tested in `crates/gantry-dataplane/src/router/tests.rs`.

use bytes::Bytes;
use gantry_testkit::client::TestClient;
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{gantry_binary, start_gateway, with_listener};

/// Request headers of one case.
type Headers = &'static [(&'static str, &'static str)];

/// A route answering with its own id: `(id, extra YAML fields of the route)`.
fn named_routes(routes: &[(&str, &str)]) -> GatewayProcess {
    let mut yaml = String::from("routes:\n");
    for (id, fields) in routes {
        yaml.push_str(&format!("  - id: {id}\n"));
        for line in fields.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
        yaml.push_str(&format!("    policies:\n      - mock_response: {{body: {id}}}\n"));
    }
    start_gateway(&with_listener(&yaml))
}

/// The id of the route that answered `method path` with `headers`, or `404` when none did.
async fn matched(
    client: &TestClient,
    gateway: &GatewayProcess,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let response = client.request(method, &gateway.url(path), headers, Bytes::new()).await;
    match response.status {
        StatusCode::OK => String::from_utf8_lossy(&response.body).into_owned(),
        StatusCode::NOT_FOUND => {
            assert_eq!(response.json()["type"], "https://gantry.dev/problems/route-not-found");
            "404".to_owned()
        }
        other => panic!("unexpected {other} for {path}: {response:?}"),
    }
}

#[tokio::test]
async fn paths_match_exact_then_template_then_longest_prefix_then_regex() {
    // Listed in the reverse of their precedence: configuration order does not decide here.
    let gateway = named_routes(&[
        ("regex", "paths: [\"~^/(users|people)/[0-9]+$\"]"),
        ("prefix", "paths: [/users/*]"),
        ("admin-prefix", "paths: [/users/admin/*]"),
        ("template", "paths: [\"/users/{id}\"]"),
        ("catch-all", "paths: [\"/files/{*rest}\"]"),
        ("exact", "paths: [/users/me]"),
    ]);
    let client = TestClient::default();
    let cases = [
        ("/users/me", "exact"),
        ("/users/42", "template"),
        ("/users/admin", "template"),
        ("/users/admin/keys", "admin-prefix"),
        ("/users/42/orders", "prefix"),
        ("/users", "prefix"),
        ("/people/7", "regex"),
        ("/files/a/b/c.txt", "catch-all"),
        ("/people/x", "404"),
        ("/usersx", "404"),
    ];
    for (path, expected) in cases {
        assert_eq!(matched(&client, &gateway, Method::GET, path, &[]).await, expected, "{path}");
    }
}

#[tokio::test]
async fn hosts_match_exact_then_longest_wildcard_then_any_and_fall_through() {
    let gateway = named_routes(&[
        ("any", "paths: [/where, /fallback]"),
        ("wildcard", "hosts: [\"*.example.com\"]\npaths: [/where]"),
        ("eu-wildcard", "hosts: [\"*.eu.example.com\"]\npaths: [/where]"),
        ("exact", "hosts: [api.example.com]\npaths: [/where]"),
        ("exact-only", "hosts: [admin.example.com]\npaths: [/admin]"),
    ]);
    let client = TestClient::default();
    let cases = [
        ("api.example.com", "/where", "exact"),
        ("API.Example.COM:8080", "/where", "exact"),
        ("shop.example.com", "/where", "wildcard"),
        ("a.b.example.com", "/where", "wildcard"),
        ("x.eu.example.com", "/where", "eu-wildcard"),
        ("example.com", "/where", "any"),
        ("other.org", "/where", "any"),
        // The exact host has no `/fallback`, so matching falls through to the any-host routes.
        ("api.example.com", "/fallback", "any"),
        ("admin.example.com", "/admin", "exact-only"),
        ("other.org", "/admin", "404"),
    ];
    for (host, path, expected) in cases {
        assert_eq!(matched(&client, &gateway, Method::GET, path, &[("host", host)]).await, expected, "{host}{path}");
    }
}

#[tokio::test]
async fn methods_headers_and_query_choose_among_routes_of_one_path() {
    let gateway = named_routes(&[
        ("plain", "paths: [/items]"),
        ("post", "paths: [/items]\nmethods: [POST]"),
        ("beta", "paths: [/items]\nheaders: [{name: x-version, exact: beta}]"),
        ("mobile", "paths: [/items]\nheaders: [{name: user-agent, regex: \"(?i)mobile\"}]"),
        ("search", "paths: [/items]\nquery: [{name: q, exact: \"a b\"}]"),
        ("debug", "paths: [/items]\nquery: [{name: debug, present: true}]"),
        ("not-acme", "paths: [/tenants]\nheaders: [{name: x-tenant, exact: acme, invert: true}]"),
        // Two conditions outrank one, whatever the configuration order.
        ("beta-post", "paths: [/items]\nmethods: [POST]\nheaders: [{name: x-version, exact: beta}]"),
    ]);
    let client = TestClient::default();
    let cases: [(Method, &str, Headers, &str); 12] = [
        (Method::GET, "/items", &[], "plain"),
        (Method::DELETE, "/items", &[], "plain"),
        (Method::POST, "/items", &[], "post"),
        (Method::GET, "/items", &[("x-version", "beta")], "beta"),
        (Method::GET, "/items", &[("x-version", "stable")], "plain"),
        (Method::POST, "/items", &[("x-version", "beta")], "beta-post"),
        (Method::GET, "/items", &[("user-agent", "Some MOBILE browser")], "mobile"),
        (Method::GET, "/items?q=a%20b", &[], "search"),
        (Method::GET, "/items?q=ab", &[], "plain"),
        (Method::GET, "/items?page=1&debug", &[], "debug"),
        (Method::GET, "/tenants", &[("x-tenant", "globex")], "not-acme"),
        (Method::GET, "/tenants", &[("x-tenant", "acme")], "404"),
    ];
    for (method, path, headers, expected) in cases {
        let found = matched(&client, &gateway, method.clone(), path, headers).await;
        assert_eq!(found, expected, "{method} {path} {headers:?}");
    }
}

#[tokio::test]
async fn priority_orders_routes_of_one_path_but_never_beats_a_more_precise_path() {
    let gateway = named_routes(&[
        ("flagged", "paths: [/p]\nheaders: [{name: x-flag, present: true}]"),
        ("general", "paths: [/p]\npriority: 5"),
        ("flagged-urgent", "paths: [/p]\npriority: 10\nheaders: [{name: x-flag, exact: urgent}]"),
        ("exact", "paths: [/q/exact]"),
        ("prefix", "paths: [/q/*]\npriority: 100"),
    ]);
    let client = TestClient::default();
    let cases: [(&str, Headers, &str); 5] = [
        // Priority 5 beats a route with more conditions but priority 0.
        ("/p", &[("x-flag", "yes")], "general"),
        ("/p", &[("x-flag", "urgent")], "flagged-urgent"),
        ("/p", &[], "general"),
        // Priority only breaks ties among routes of one path: exact still beats prefix.
        ("/q/exact", &[], "exact"),
        ("/q/other", &[], "prefix"),
    ];
    for (path, headers, expected) in cases {
        assert_eq!(matched(&client, &gateway, Method::GET, path, headers).await, expected, "{path} {headers:?}");
    }
}

#[tokio::test]
async fn rewrites_apply_regex_then_strip_prefix_then_add_prefix_to_the_upstream_path() {
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: echo
    endpoints: [{addr}]
routes:
  - id: versioned
    paths: [/api/*]
    upstream: echo
    rewrite: {{strip_prefix: /api, add_prefix: /v2}}
  - id: legacy
    paths: ["~^/legacy/"]
    upstream: echo
    rewrite: {{regex: "^/legacy/users/([0-9]+)$", replacement: "/accounts/$1"}}
  - id: combined
    paths: [/combo/*]
    upstream: echo
    rewrite: {{regex: "^/combo/old/", replacement: "/combo/new/", strip_prefix: /combo, add_prefix: /svc}}
  - id: untouched
    paths: ["/users/{{id}}"]
    upstream: echo
"#,
        addr = echo.addr()
    )));
    let client = TestClient::default();
    let cases = [
        ("/api/users?page=2", "/v2/users", Some("page=2")),
        ("/api", "/v2/", None),
        ("/legacy/users/42", "/accounts/42", None),
        ("/legacy/other", "/legacy/other", None),
        ("/combo/old/x", "/svc/new/x", None),
        ("/users/7?full=true", "/users/7", Some("full=true")),
    ];
    for (path, upstream_path, query) in cases {
        let response = client.get(&gateway.url(path)).await;
        assert_eq!(response.status, StatusCode::OK, "{path}");
        let echoed = response.json();
        assert_eq!(echoed["path"], upstream_path, "{path}");
        assert_eq!(echoed["query"].as_str(), query, "{path}");
    }
}

/// The YAML blocks of `docs/routing.md`, so the guide cannot drift from what the gateway accepts.
#[test]
fn the_routing_guide_examples_are_valid_configurations() {
    let guide = include_str!("../../docs/routing.md");
    let blocks: Vec<&str> = guide.split("```yaml\n").skip(1).filter_map(|rest| rest.split("```").next()).collect();
    assert!(!blocks.is_empty(), "docs/routing.md has YAML examples");
    let dir = tempfile::tempdir().expect("temp dir");
    for (index, block) in blocks.iter().enumerate() {
        let path = dir.path().join(format!("routing-{index}.yaml"));
        std::fs::write(&path, block).expect("write example");
        let output = std::process::Command::new(gantry_binary())
            .arg("validate")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run gantry validate");
        assert!(
            output.status.success(),
            "example {index} of docs/routing.md is invalid:\n{block}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::pipeline::Pipeline;
use crate::route::{Conditions, ValueCondition, ValueRule};

fn route(id: &str, order: usize, conditions: Conditions, priority: i32) -> Arc<CompiledRoute> {
    Arc::new(CompiledRoute {
        id: id.into(),
        service: None,
        conditions,
        priority,
        order,
        upstream: None,
        rewrite: None,
        pipeline: Pipeline::default(),
        metrics: None,
    })
}

/// `(id, hosts, paths, conditions, priority)` of one test route.
type RouteRow = (&'static str, Vec<&'static str>, Vec<&'static str>, Conditions, i32);

struct Table(Vec<RouteRow>);

impl Table {
    fn build(self) -> Router {
        let mut builder = RouterBuilder::default();
        for (order, (id, hosts, paths, conditions, priority)) in self.0.into_iter().enumerate() {
            let hosts: Vec<String> = hosts.into_iter().map(str::to_owned).collect();
            let paths: Vec<String> = paths.into_iter().map(str::to_owned).collect();
            builder.add(route(id, order, conditions, priority), &hosts, &paths);
        }
        builder.build().expect("router builds")
    }
}

fn find(
    router: &Router,
    host: Option<&str>,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let facts = RequestFacts { host, path, query, method: &method, headers };
    router.find(&facts).map(|found| found.route.id.to_string())
}

fn get(router: &Router, host: Option<&str>, path: &str) -> Option<String> {
    find(router, host, Method::GET, path, &HeaderMap::new())
}

#[test]
fn exact_beats_template_beats_prefix_beats_regex() {
    let router = Table(vec![
        ("regex", vec![], vec!["~^/users/.*$"], Conditions::default(), 0),
        ("prefix", vec![], vec!["/users/*"], Conditions::default(), 0),
        ("template", vec![], vec!["/users/{id}"], Conditions::default(), 0),
        ("exact", vec![], vec!["/users/me"], Conditions::default(), 0),
    ])
    .build();
    assert_eq!(get(&router, None, "/users/me").as_deref(), Some("exact"));
    assert_eq!(get(&router, None, "/users/42").as_deref(), Some("template"));
    assert_eq!(get(&router, None, "/users/42/orders").as_deref(), Some("prefix"));
    assert_eq!(get(&router, None, "/users").as_deref(), Some("prefix"));
    assert_eq!(get(&router, None, "/nothing"), None);
}

#[test]
fn the_longest_prefix_wins() {
    let router = Table(vec![
        ("short", vec![], vec!["/api/*"], Conditions::default(), 0),
        ("long", vec![], vec!["/api/v2/*"], Conditions::default(), 0),
    ])
    .build();
    assert_eq!(get(&router, None, "/api/v2/x").as_deref(), Some("long"));
    assert_eq!(get(&router, None, "/api/v1/x").as_deref(), Some("short"));
}

#[test]
fn exact_host_beats_wildcard_beats_any_and_falls_through() {
    let router = Table(vec![
        ("any", vec![], vec!["/*"], Conditions::default(), 0),
        ("wild", vec!["*.example.com"], vec!["/*"], Conditions::default(), 0),
        ("exact", vec!["api.example.com"], vec!["/only/*"], Conditions::default(), 0),
    ])
    .build();
    assert_eq!(get(&router, Some("api.example.com"), "/only/x").as_deref(), Some("exact"));
    assert_eq!(get(&router, Some("API.Example.com"), "/only/x").as_deref(), Some("exact"));
    // The exact host's table has no match for this path, so the wildcard table answers.
    assert_eq!(get(&router, Some("api.example.com"), "/other").as_deref(), Some("wild"));
    assert_eq!(get(&router, Some("a.b.example.com"), "/").as_deref(), Some("wild"));
    assert_eq!(get(&router, Some("example.com"), "/").as_deref(), Some("any"));
    assert_eq!(get(&router, None, "/").as_deref(), Some("any"));
}

#[test]
fn methods_headers_and_query_narrow_the_match() {
    let post_only = Conditions { methods: vec![Method::POST], ..Conditions::default() };
    let beta_header = Conditions {
        headers: vec![ValueCondition {
            name: "x-version".parse().expect("name"),
            rule: ValueRule::Exact("beta".into()),
            invert: false,
        }],
        ..Conditions::default()
    };
    let debug_query = Conditions {
        query: vec![ValueCondition { name: "debug".into(), rule: ValueRule::Present(true), invert: false }],
        ..Conditions::default()
    };
    let router = Table(vec![
        ("plain", vec![], vec!["/items"], Conditions::default(), 0),
        ("post", vec![], vec!["/items"], post_only, 0),
        ("beta", vec![], vec!["/items"], beta_header, 0),
        ("debug", vec![], vec!["/items"], debug_query, 0),
    ])
    .build();
    let none = HeaderMap::new();
    let mut beta = HeaderMap::new();
    beta.insert("x-version", HeaderValue::from_static("beta"));
    assert_eq!(find(&router, None, Method::GET, "/items", &none).as_deref(), Some("plain"));
    assert_eq!(find(&router, None, Method::POST, "/items", &none).as_deref(), Some("post"));
    assert_eq!(find(&router, None, Method::GET, "/items", &beta).as_deref(), Some("beta"));
    assert_eq!(find(&router, None, Method::GET, "/items?debug", &none).as_deref(), Some("debug"));
}

#[test]
fn priority_breaks_ties_before_configuration_order() {
    let router = Table(vec![
        ("first", vec![], vec!["/x"], Conditions::default(), 0),
        ("urgent", vec![], vec!["/x"], Conditions::default(), 10),
    ])
    .build();
    assert_eq!(get(&router, None, "/x").as_deref(), Some("urgent"));
}

#[test]
fn captures_template_parameters() {
    let router = Table(vec![("t", vec![], vec!["/users/{id}/files/{*rest}"], Conditions::default(), 0)]).build();
    let method = Method::GET;
    let headers = HeaderMap::new();
    let facts =
        RequestFacts { host: None, path: "/users/7/files/a/b.txt", query: None, method: &method, headers: &headers };
    let found = router.find(&facts).expect("match");
    let params: Vec<(String, String)> = found.params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(params, [("id".to_owned(), "7".to_owned()), ("rest".to_owned(), "a/b.txt".to_owned())]);
}

#[test]
fn reports_clashing_templates_with_the_route_id() {
    let mut builder = RouterBuilder::default();
    builder.add(route("a", 0, Conditions::default(), 0), &[], &["/users/{id}".to_owned()]);
    builder.add(route("b", 1, Conditions::default(), 0), &[], &["/users/{name}".to_owned()]);
    let err = builder.build().expect_err("templates clash");
    assert_eq!(&*err.route, "b");
    assert!(err.to_string().contains("/users/{name}"), "{err}");
}

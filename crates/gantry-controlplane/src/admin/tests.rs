//! The admin router in process: requests go through `tower::ServiceExt::oneshot` into the
//! real router, control plane and compiler (no sockets; those are in `tests/e2e/admin.rs`).

use std::sync::Arc;

use axum::body::Body;
use gantry_config::{ConfigSource, GatewaySpec, NodeSpec, Secret};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

const KEY: &str = "test-admin-key-0123456789";

const BASE: &str = "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:9]\nroutes:\n  - id: api\n    paths: [/api/*]\n    upstream: up\n";

struct Admin {
    router: Router,
    control: Arc<ControlPlane>,
}

impl Admin {
    /// An admin API over a control plane serving `yaml`, saving to `source`.
    fn new(yaml: &str, source: Option<ConfigSource>) -> Self {
        let control = Arc::new(ControlPlane::new(source, None));
        let spec = gantry_config::load_str(yaml).expect("valid test config");
        control.apply_change(|_| Ok(spec)).expect("the test config compiles");
        let state =
            AdminState::new(control.clone(), NodeSpec::default(), Secret::new(KEY.to_owned()), Default::default());
        Self { router: router(state), control }
    }

    async fn call(&self, method: Method, path: &str, content_type: Option<&str>, body: &str) -> Reply {
        let mut request = Request::builder().method(method).uri(path).header("x-api-key", KEY);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request.body(Body::from(body.to_owned())).expect("valid request")).await
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply { status, headers, json }
    }

    fn spec(&self) -> GatewaySpec {
        self.control.applied().spec
    }

    fn generation(&self) -> u64 {
        self.control.applied().generation
    }
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    json: serde_json::Value,
}

impl Reply {
    fn problem_code(&self) -> String {
        let kind = self.json["type"].as_str().unwrap_or_default();
        kind.strip_prefix(problem::PROBLEM_TYPE_BASE).unwrap_or(kind).to_owned()
    }

    fn generation(&self) -> Option<u64> {
        self.headers.get(GENERATION_HEADER)?.to_str().ok()?.parse().ok()
    }
}

#[tokio::test]
async fn refuses_requests_without_the_key_but_answers_probes() {
    let admin = Admin::new(BASE, None);
    let bare = |method: Method, path: &str| Request::builder().method(method).uri(path).body(Body::empty());
    let reply = admin.send(bare(Method::GET, "/routes").expect("request")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.problem_code(), "unauthorized");
    assert_eq!(reply.headers["www-authenticate"], "Bearer realm=\"gantry-admin\"");
    let unknown = admin.send(bare(Method::GET, "/no-such-thing").expect("request")).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "unknown paths do not answer without a key either");
    for path in ["/health", "/ready"] {
        assert_eq!(admin.send(bare(Method::GET, path).expect("request")).await.status, StatusCode::OK, "{path}");
    }
    let bearer = Request::builder().uri("/routes").header("authorization", format!("Bearer {KEY}"));
    assert_eq!(admin.send(bearer.body(Body::empty()).expect("request")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn lists_and_gets_resources_with_the_generation() {
    let admin = Admin::new(BASE, None);
    let list = admin.call(Method::GET, "/routes", None, "").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json[0]["id"], "api");
    assert_eq!(list.generation(), Some(1));
    let one = admin.call(Method::GET, "/upstreams/up", None, "").await;
    assert_eq!(one.json["endpoints"][0]["address"], "127.0.0.1:9");
    let missing = admin.call(Method::GET, "/upstreams/nope", None, "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.problem_code(), "resource-not-found");
    assert_eq!(missing.json["detail"], "upstream `nope` does not exist");
}

#[tokio::test]
async fn puts_a_new_resource_from_yaml_and_replaces_it_from_json() {
    let admin = Admin::new(BASE, None);
    let created =
        admin.call(Method::PUT, "/routes/web", Some("application/yaml"), "paths: [/web]\nupstream: up\n").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert_eq!(created.json["id"], "web", "the id comes from the URL");
    assert_eq!(created.generation(), Some(2));
    assert_eq!(admin.spec().routes.len(), 2);

    let replaced =
        admin.call(Method::PUT, "/routes/web", None, r#"{"id":"web","paths":["/web2"],"upstream":"up"}"#).await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.generation(), Some(3));
    assert_eq!(admin.spec().routes[1].paths, ["/web2"]);
    assert!(replaced.headers.get("warning").is_some(), "without files the change is in memory only");
}

#[tokio::test]
async fn keeps_the_generation_when_a_write_changes_nothing() {
    let admin = Admin::new(BASE, None);
    let same = admin.call(Method::PUT, "/routes/api", None, r#"{"paths":["/api/*"],"upstream":"up"}"#).await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.generation(), Some(1));
}

#[tokio::test]
async fn rejects_a_body_id_that_differs_from_the_url() {
    let admin = Admin::new(BASE, None);
    let reply =
        admin.call(Method::PUT, "/routes/web", None, r#"{"id":"other","paths":["/web"],"upstream":"up"}"#).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.problem_code(), "id-mismatch");
    assert_eq!(admin.spec().routes.len(), 1);
}

#[tokio::test]
async fn rejects_an_invalid_resource_with_every_error_and_changes_nothing() {
    let admin = Admin::new(BASE, None);
    let body = r#"{"paths":["nope"],"upstream":"missing"}"#;
    let reply = admin.call(Method::PUT, "/routes/bad", None, body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.json);
    assert_eq!(reply.problem_code(), "invalid-config");
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    let paths: Vec<&str> =
        reply.json["errors"].as_array().expect("errors").iter().filter_map(|e| e["path"].as_str()).collect();
    assert!(paths.contains(&"routes[bad].paths[0]"), "{paths:?}");
    assert!(paths.contains(&"routes[bad].upstream"), "{paths:?}");
    assert_eq!(reply.json["errors"][0]["origin"]["resource"], "routes/bad");
    assert_eq!(admin.generation(), 1);
    assert_eq!(admin.spec().routes.len(), 1);

    let typo = admin.call(Method::PUT, "/routes/bad", None, r#"{"paths":["/x"],"upstrem":"up"}"#).await;
    assert_eq!(typo.problem_code(), "invalid-config");
    assert!(typo.json["errors"][0]["path"].as_str().unwrap_or_default().starts_with("routes[bad]"), "{}", typo.json);
    assert!(typo.json["errors"][0]["message"].as_str().unwrap_or_default().contains("upstrem"), "{}", typo.json);
}

#[tokio::test]
async fn creates_with_post_only_when_the_id_is_new() {
    let admin = Admin::new(BASE, None);
    let body = r#"{"id":"second","endpoints":["127.0.0.1:10"]}"#;
    let created = admin.call(Method::POST, "/upstreams", None, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert_eq!(created.headers["location"], "/upstreams/second");
    let again = admin.call(Method::POST, "/upstreams", None, body).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.problem_code(), "resource-exists");
    let without_id = admin.call(Method::POST, "/upstreams", None, r#"{"endpoints":["127.0.0.1:10"]}"#).await;
    assert_eq!(without_id.problem_code(), "invalid-config");
    assert_eq!(admin.spec().upstreams.len(), 2);
}

#[tokio::test]
async fn refuses_to_delete_a_referenced_resource_and_deletes_a_free_one() {
    let admin = Admin::new(BASE, None);
    let in_use = admin.call(Method::DELETE, "/upstreams/up", None, "").await;
    assert_eq!(in_use.status, StatusCode::CONFLICT);
    assert_eq!(in_use.problem_code(), "resource-in-use");
    assert_eq!(in_use.json["used_by"][0], "routes[api].upstream");

    let deleted = admin.call(Method::DELETE, "/routes/api", None, "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(deleted.generation(), Some(2));
    assert!(admin.spec().routes.is_empty());
    assert_eq!(admin.call(Method::DELETE, "/routes/api", None, "").await.status, StatusCode::NOT_FOUND);
    assert_eq!(admin.call(Method::DELETE, "/upstreams/up", None, "").await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn replaces_the_global_policy_list_through_the_compiler() {
    let admin = Admin::new(BASE, None);
    let reply =
        admin.call(Method::PUT, "/global_policies", None, r#"[{"ip_restriction":{"deny":["10.0.0.0/8"]}}]"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(
        admin.call(Method::GET, "/global_policies", None, "").await.json[0]["ip_restriction"]["deny"][0],
        "10.0.0.0/8"
    );
    let bad = admin.call(Method::PUT, "/global_policies", None, r#"[{"no_such_policy":{}}]"#).await;
    assert_eq!(bad.problem_code(), "invalid-config", "{}", bad.json);
    assert_eq!(admin.spec().global_policies.len(), 1);
}

#[tokio::test]
async fn answers_unknown_paths_methods_and_formats_with_problems() {
    let admin = Admin::new(BASE, None);
    assert_eq!(admin.call(Method::GET, "/nothing", None, "").await.problem_code(), "endpoint-not-found");
    let wrong_method = admin.call(Method::DELETE, "/routes", None, "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.problem_code(), "method-not-allowed");
    let text = admin.call(Method::PUT, "/routes/x", Some("text/plain"), "paths: [/x]").await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(text.problem_code(), "unsupported-media-type");
    let broken = admin.call(Method::PUT, "/routes/x", None, "{").await;
    assert_eq!(broken.problem_code(), "malformed-body");
}

#[tokio::test]
async fn shows_the_effective_config_with_secrets_hidden() {
    let admin = Admin::new(
        "consumers:\n  - id: alice\n    credentials:\n      key_auth: {key: alice-secret-key}\nroutes:\n  - id: r\n    paths: [/]\n    policies:\n      - mock_response: {body: hi}\n",
        None,
    );
    let reply = admin.call(Method::GET, "/config", None, "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.json.to_string();
    assert!(!text.contains("alice-secret-key"), "{text}");
    assert_eq!(reply.json["consumers"][0]["credentials"]["key_auth"]["key"], "***");
    assert!(reply.json["node"]["listeners"].is_array(), "the running node settings are shown");
    let consumer = admin.call(Method::GET, "/consumers/alice", None, "").await;
    assert_eq!(consumer.json["credentials"]["key_auth"]["key"], "***");
}

#[tokio::test]
async fn reports_not_ready_before_the_first_configuration() {
    let control = Arc::new(ControlPlane::new(None, None));
    let state = AdminState::new(control.clone(), NodeSpec::default(), Secret::new(KEY.to_owned()), Default::default());
    let admin = Admin { router: router(state), control };
    let reply = admin.call(Method::GET, "/ready", None, "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.problem_code(), "not-ready");
}

#[tokio::test]
async fn saves_writes_to_the_configuration_file_and_reads_them_back_without_a_new_generation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gantry.yaml");
    std::fs::write(&file, BASE).expect("write");
    let source = ConfigSource::File(file.clone());
    let admin = Admin::new(BASE, Some(source));
    let reply = admin.call(Method::PUT, "/routes/web", None, r#"{"paths":["/web"],"upstream":"up"}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert!(reply.headers.get("warning").is_none(), "saved, so no warning");
    let saved = gantry_config::load_path(&file).expect("the saved file is valid");
    assert_eq!(saved.spec, admin.spec(), "the file holds exactly what runs");
    assert_eq!(admin.control.reload_from_source().expect("reload"), 2, "reading the save back is no new generation");
    assert_eq!(admin.control.reload_from_source().expect("reload"), 3, "a later reload recompiles as before");
}

#[tokio::test]
async fn changes_nothing_when_the_file_cannot_be_saved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gantry.yaml");
    std::fs::write(&file, "routes: [broken\n").expect("write");
    let admin = Admin::new(BASE, Some(ConfigSource::File(file)));
    let reply = admin.call(Method::PUT, "/routes/web", None, r#"{"paths":["/web"],"upstream":"up"}"#).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.problem_code(), "not-saved");
    assert!(reply.json["detail"].as_str().unwrap_or_default().contains("does not parse"), "{}", reply.json);
    assert_eq!(admin.generation(), 1);
    assert_eq!(admin.spec().routes.len(), 1);
}

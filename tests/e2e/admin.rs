//! The admin API through the running binary: its own listener, the API key, writes that serve
//! traffic at once, refused writes that change nothing, hidden secrets, the OpenAPI document,
//! and changes saved to the configuration file so that a restart keeps them.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{gantry_binary, start_gateway};

const KEY: &str = "e2e-admin-key-5b1f0c7d9a3e";

/// A config with one listener, the admin API (both on port 0) keyed with [`KEY`], and `resources`.
fn admin_config(resources: &str) -> String {
    format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n  admin:\n    address: 127.0.0.1:0\n    api_key: {KEY}\n{resources}"
    )
}

/// An upstream `up` pointing at `upstream`, and a route `/<route>/*` to it (prefix stripped).
fn upstream_and_route(upstream: &EchoUpstream, route: &str) -> String {
    format!(
        "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: {route}\n    paths: [/{route}/*]\n    upstream: up\n    rewrite: {{strip_prefix: /{route}}}\n",
        upstream.addr()
    )
}

/// Requests to one gateway's admin API.
struct Admin {
    client: TestClient,
    base: String,
}

impl Admin {
    fn of(gateway: &GatewayProcess) -> Self {
        Self { client: TestClient::default(), base: format!("http://{}", gateway.admin_addr()) }
    }

    /// A request carrying the key; `content_type` for writes.
    async fn call(&self, method: Method, path: &str, content_type: Option<&str>, body: &str) -> TestResponse {
        let mut headers = vec![("x-api-key", KEY)];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type));
        }
        self.client.request(method, &format!("{}{path}", self.base), &headers, body.to_owned()).await
    }

    async fn get(&self, path: &str) -> TestResponse {
        self.call(Method::GET, path, None, "").await
    }

    /// A request with the given headers only (no key unless they carry one).
    async fn bare(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.client.request(Method::GET, &format!("{}{path}", self.base), headers, "").await
    }
}

fn generation(response: &TestResponse) -> u64 {
    response
        .header("x-gantry-generation")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no generation header: {response:?}"))
}

fn problem_type(response: &TestResponse) -> String {
    assert_eq!(response.header("content-type"), Some("application/problem+json"), "{response:?}");
    response.json()["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn refuses_requests_without_the_right_key_with_401_and_leaves_probes_open() {
    let gateway = start_gateway(&admin_config(""));
    let admin = Admin::of(&gateway);
    let wrong_bearer = "Bearer not-the-key-at-all-000".to_owned();
    for headers in
        [vec![], vec![("x-api-key", "not-the-key-at-all-000")], vec![("authorization", wrong_bearer.as_str())]]
    {
        let response = admin.bare("/routes", &headers).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer realm=\"gantry-admin\""));
        assert_eq!(problem_type(&response), "https://gantry.dev/problems/admin/unauthorized");
    }
    assert_eq!(admin.bare("/config", &[]).await.status, StatusCode::UNAUTHORIZED);

    assert_eq!(admin.bare("/routes", &[("x-api-key", KEY)]).await.status, StatusCode::OK);
    let bearer = format!("Bearer {KEY}");
    assert_eq!(admin.bare("/routes", &[("authorization", bearer.as_str())]).await.status, StatusCode::OK);

    assert_eq!(admin.bare("/health", &[]).await.status, StatusCode::OK);
    let ready = admin.bare("/ready", &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["generation"], 1);
}

#[tokio::test]
async fn generates_and_logs_a_key_when_none_is_configured() {
    let gateway =
        start_gateway("node:\n  listeners:\n    - address: 127.0.0.1:0\n  admin:\n    address: 127.0.0.1:0\n");
    let logs = gateway.logs();
    let announced: Vec<&String> = logs.iter().filter(|line| line.contains("generated one for this run")).collect();
    assert_eq!(announced.len(), 1, "{logs:#?}");
    assert!(announced[0].contains("WARN"), "{}", announced[0]);
    let key = announced[0].split("api_key=").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("key");
    assert!(key.len() >= 32 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");

    let admin = Admin::of(&gateway);
    assert_eq!(admin.bare("/routes", &[("x-api-key", key)]).await.status, StatusCode::OK);
    assert_eq!(admin.bare("/routes", &[]).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn creates_an_upstream_and_a_route_that_serve_traffic_at_once() {
    let upstream = EchoUpstream::start("admin-made").await;
    let gateway = start_gateway(&admin_config(""));
    let admin = Admin::of(&gateway);
    let client = TestClient::default();
    assert_eq!(client.get(&gateway.url("/made/hello")).await.status, StatusCode::NOT_FOUND);

    let yaml = format!("endpoints: [{}]\n", upstream.addr());
    let created = admin.call(Method::PUT, "/upstreams/echo", Some("application/yaml"), &yaml).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.json()["id"], "echo");
    assert_eq!(generation(&created), 2);

    let route = r#"{"paths": ["/made/*"], "upstream": "echo", "rewrite": {"strip_prefix": "/made"}}"#;
    let created = admin.call(Method::PUT, "/routes/made", Some("application/json"), route).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(generation(&created), 3);

    // Live when the write answers: no waiting.
    let response = client.get(&gateway.url("/made/hello")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["upstream"], "admin-made");
    assert_eq!(response.json()["path"], "/hello");
    assert_eq!(upstream.requests(), 1);
    assert_eq!(admin.get("/routes/made").await.json()["upstream"], "echo");
}

#[tokio::test]
async fn rejects_a_route_to_an_unknown_upstream_and_keeps_serving_the_old_configuration() {
    let upstream = EchoUpstream::start("kept").await;
    let gateway = start_gateway(&admin_config(&upstream_and_route(&upstream, "kept")));
    let admin = Admin::of(&gateway);
    let file_before = std::fs::read_to_string(gateway.config_path()).expect("read config");

    let refused = admin.call(Method::PUT, "/routes/x", None, r#"{"paths": ["/x"], "upstream": "missing"}"#).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(&refused), "https://gantry.dev/problems/admin/invalid-config");
    let problem = refused.json();
    assert_eq!(problem["errors"][0]["path"], "routes[x].upstream", "{problem}");
    assert_eq!(problem["errors"][0]["origin"]["resource"], "routes/x", "{problem}");
    assert!(problem["errors"][0]["message"].as_str().unwrap_or_default().contains("missing"), "{problem}");

    let client = TestClient::default();
    assert_eq!(client.get(&gateway.url("/x")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(client.get(&gateway.url("/kept/a")).await.json()["upstream"], "kept");
    assert_eq!(admin.get("/routes/x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(generation(&admin.get("/config").await), 1);
    assert_eq!(std::fs::read_to_string(gateway.config_path()).expect("read config"), file_before, "nothing saved");
}

#[tokio::test]
async fn deleting_a_route_takes_it_off_the_data_plane_and_frees_its_upstream() {
    let upstream = EchoUpstream::start("doomed").await;
    let gateway = start_gateway(&admin_config(&upstream_and_route(&upstream, "doomed")));
    let admin = Admin::of(&gateway);
    let client = TestClient::default();
    assert_eq!(client.get(&gateway.url("/doomed/a")).await.status, StatusCode::OK);

    let in_use = admin.call(Method::DELETE, "/upstreams/up", None, "").await;
    assert_eq!(in_use.status, StatusCode::CONFLICT);
    assert_eq!(problem_type(&in_use), "https://gantry.dev/problems/admin/resource-in-use");
    assert_eq!(in_use.json()["used_by"][0], "routes[doomed].upstream");

    let deleted = admin.call(Method::DELETE, "/routes/doomed", None, "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(generation(&deleted), 2);
    let gone = client.get(&gateway.url("/doomed/a")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.json()["type"], "https://gantry.dev/problems/route-not-found");

    let again = admin.call(Method::DELETE, "/routes/doomed", None, "").await;
    assert_eq!(problem_type(&again), "https://gantry.dev/problems/admin/resource-not-found");
    assert_eq!(admin.call(Method::DELETE, "/upstreams/up", None, "").await.status, StatusCode::NO_CONTENT);
    assert_eq!(admin.get("/upstreams").await.json(), serde_json::json!([]));
}

#[tokio::test]
async fn shows_the_effective_config_with_secrets_hidden() {
    let upstream = EchoUpstream::start("cfg").await;
    let gateway = start_gateway(&admin_config(&upstream_and_route(&upstream, "cfg")));
    let response = Admin::of(&gateway).get("/config").await;
    assert_eq!(response.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert!(!text.contains(KEY), "the admin key leaked: {text}");
    let config = response.json();
    assert_eq!(config["node"]["admin"]["api_key"], "***");
    assert_eq!(config["routes"][0]["id"], "cfg");
    assert_eq!(config["upstreams"][0]["endpoints"][0]["address"], upstream.addr().to_string());
}

#[tokio::test]
async fn serves_an_openapi_document_describing_every_resource() {
    let gateway = start_gateway(&admin_config(""));
    let admin = Admin::of(&gateway);
    assert_eq!(admin.bare("/openapi.json", &[]).await.status, StatusCode::UNAUTHORIZED);
    let response = admin.get("/openapi.json").await;
    assert_eq!(response.status, StatusCode::OK);
    let document = response.json();
    assert_eq!(document["openapi"], "3.1.0");
    for kind in ["routes", "services", "upstreams", "consumers", "consumer_groups", "policy_sets"] {
        assert!(document["paths"][format!("/{kind}/{{id}}")]["put"].is_object(), "PUT /{kind}/{{id}}");
    }
    assert!(document["components"]["schemas"]["RouteSpec"]["properties"]["paths"].is_object());
}

#[tokio::test]
async fn keeps_admin_changes_across_a_restart() {
    let upstream = EchoUpstream::start("persisted").await;
    // The test owns the directory, so it outlives the first gateway process.
    let state = tempfile::tempdir().expect("temp dir");
    let config = state.path().join("gantry.yaml");
    std::fs::write(&config, admin_config("")).expect("write config");
    let start = |config: &Path| {
        GatewayProcess::spawn(gantry_binary(), tempfile::tempdir().expect("temp dir"), config.to_owned(), &[])
    };

    let gateway = start(&config);
    let admin = Admin::of(&gateway);
    let yaml = format!("endpoints: [{}]\n", upstream.addr());
    assert_eq!(
        admin.call(Method::PUT, "/upstreams/echo", Some("application/yaml"), &yaml).await.status,
        StatusCode::CREATED
    );
    let route = r#"{"paths": ["/kept/*"], "upstream": "echo"}"#;
    let written = admin.call(Method::PUT, "/routes/kept", None, route).await;
    assert_eq!(written.status, StatusCode::CREATED);
    assert!(written.header("warning").is_none(), "saved to the file, so no in-memory warning");
    let generation_after_writes = generation(&written);

    // The file watcher reads the saved file back; that must not make a new generation.
    let readback = format!("configuration reloaded after a file change generation={generation_after_writes}");
    let what = format!("the file watcher to read the saved file back without a new generation (`{readback}`)");
    eventually(&what, || async { gateway.logs().iter().any(|line| line.contains(&readback)).then_some(()) }).await;
    assert_eq!(generation(&admin.get("/config").await), generation_after_writes);
    let newer = format!("generation={}", generation_after_writes + 1);
    assert!(!gateway.logs().iter().any(|line| line.contains(&newer)), "{:#?}", gateway.logs());
    let saved = std::fs::read_to_string(&config).expect("read config");
    assert!(saved.contains("id: kept") && saved.contains(KEY), "{saved}");

    let status = gateway.terminate(Duration::from_secs(10)).expect("gantry exits on SIGTERM");
    assert!(status.success(), "{status}");

    let restarted = start(&config);
    let response = TestClient::default().get(&restarted.url("/kept/after-restart")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["upstream"], "persisted");
    assert_eq!(Admin::of(&restarted).get("/routes/kept").await.status, StatusCode::OK);
}

#[tokio::test]
async fn saves_a_resource_created_in_a_config_directory_to_admin_yaml() {
    let upstream = EchoUpstream::start("from-dir").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let main_file = dir.path().join("gantry.yaml");
    let main_text = admin_config(&format!("upstreams:\n  - id: up\n    endpoints: [{}]\n", upstream.addr()));
    std::fs::write(&main_file, &main_text).expect("write config");
    let gateway = GatewayProcess::spawn(gantry_binary(), dir, main_file.parent().expect("dir").to_owned(), &[]);
    let admin = Admin::of(&gateway);

    let created = admin.call(Method::PUT, "/routes/dir", None, r#"{"paths": ["/dir/*"], "upstream": "up"}"#).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(TestClient::default().get(&gateway.url("/dir/x")).await.json()["upstream"], "from-dir");

    let saved = std::fs::read_to_string(gateway.dir().join("admin.yaml")).expect("admin.yaml is created");
    assert!(saved.contains("id: dir"), "{saved}");
    assert_eq!(std::fs::read_to_string(&main_file).expect("read"), main_text, "files the change does not touch stay");
}

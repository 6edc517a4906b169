//! The admin audit log through the running binary: every write, accepted or refused, is one
//! line in `.gantry-audit.jsonl` beside the configuration and an entry of `GET /audit`, naming
//! the admin key and the change, and no secret reaches it.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{gantry_binary, start_gateway};

const KEY: &str = "e2e-audit-admin-key-8c2d41";
const FIRST_CONSUMER_KEY: &str = "alice-first-key-5e71a0";
const SECOND_CONSUMER_KEY: &str = "alice-second-key-93bd2f";

async fn call(client: &TestClient, base: &str, method: Method, path: &str, body: &str) -> TestResponse {
    let headers = [("x-api-key", KEY), ("content-type", "application/json")];
    client.request(method, &format!("{base}{path}"), &headers, body.to_owned()).await
}

/// The fields of an entry a test can predict: all but the time and the client's port.
fn predictable(entry: &Value) -> Value {
    let mut entry = entry.clone();
    let fields = entry.as_object_mut().expect("an entry is an object");
    let time = fields.remove("time").expect("time");
    // RFC 3339 in UTC with milliseconds: 2026-12-03T13:20:13.123Z.
    let shape = |time: &str| time.len() == 24 && &time[10..11] == "T" && time.ends_with('Z');
    assert!(time.as_str().is_some_and(shape), "{time}");
    let address = fields["who"].as_object_mut().expect("who").remove("address").expect("address");
    assert!(address.as_str().is_some_and(|address| address.starts_with("127.0.0.1:")), "{address}");
    entry
}

#[tokio::test]
async fn records_who_changed_what_refused_writes_too_and_never_a_secret() {
    let upstream = EchoUpstream::start("audited").await;
    let config = format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n  admin:\n    address: 127.0.0.1:0\n    api_key: {KEY}\n    api_key_name: ops-team\n\
         upstreams:\n  - id: up\n    endpoints: [{}]\n\
         consumers:\n  - id: alice\n    credentials:\n      key_auth: {{key: {FIRST_CONSUMER_KEY}}}\n",
        upstream.addr()
    );
    let gateway = start_gateway(&config);
    let client = TestClient::default();
    let base = format!("http://{}", gateway.admin_addr());
    let audit_file = gateway.config_path().parent().expect("config dir").join(".gantry-audit.jsonl");

    let created =
        call(&client, &base, Method::POST, "/routes", r#"{"id": "b", "paths": ["/b/*"], "upstream": "up"}"#).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let replaced =
        call(&client, &base, Method::PUT, "/routes/b", r#"{"id": "b", "paths": ["/bb/*"], "upstream": "up"}"#).await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    let deleted = call(&client, &base, Method::DELETE, "/routes/b", "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");

    let config_before = std::fs::read_to_string(gateway.config_path()).expect("read config");
    let refused = call(&client, &base, Method::PUT, "/routes/c", r#"{"paths": ["/c/*"], "upstream": "nowhere"}"#).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(std::fs::read_to_string(gateway.config_path()).expect("read config"), config_before, "nothing saved");

    let consumer = format!(r#"{{"id": "alice", "credentials": {{"key_auth": {{"key": "{SECOND_CONSUMER_KEY}"}}}}}}"#);
    let rekeyed = call(&client, &base, Method::PUT, "/consumers/alice", &consumer).await;
    assert_eq!(rekeyed.status, StatusCode::OK, "{rekeyed:?}");

    // Refused because bob's key is alice's: the message names alice, and the log only where.
    let duplicate = format!(r#"{{"id": "bob", "credentials": {{"key_auth": {{"key": "{SECOND_CONSUMER_KEY}"}}}}}}"#);
    let clashing = call(&client, &base, Method::POST, "/consumers", &duplicate).await;
    assert_eq!(clashing.status, StatusCode::BAD_REQUEST, "{clashing:?}");
    assert_eq!(clashing.json()["errors"][0]["path"], "consumers[bob].credentials.key_auth.key", "{clashing:?}");

    let listed = call(&client, &base, Method::GET, "/audit", "").await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let entries = listed.json().as_array().expect("a list").clone();
    let who = json!({"key": "ops-team"});
    assert_eq!(
        entries.iter().map(predictable).collect::<Vec<_>>(),
        vec![
            json!({"who": who, "action": "create", "kind": "consumers", "id": null, "outcome": "rejected",
                   "status": 400, "generation_before": 5, "generation_after": 5,
                   "reason": "invalid-config: consumers[bob].credentials.key_auth.key"}),
            json!({"who": who, "action": "replace", "kind": "consumers", "id": "alice", "outcome": "applied",
                   "status": 200, "generation_before": 4, "generation_after": 5,
                   "diff": [{"op": "replace", "path": "/credentials/key_auth/key", "value": "***"}]}),
            json!({"who": who, "action": "replace", "kind": "routes", "id": "c", "outcome": "rejected",
                   "status": 400, "generation_before": 4, "generation_after": 4,
                   "reason": "invalid-config: routes[c].upstream"}),
            json!({"who": who, "action": "delete", "kind": "routes", "id": "b", "outcome": "applied",
                   "status": 204, "generation_before": 3, "generation_after": 4,
                   "diff": [{"op": "replace", "path": "", "value": null}]}),
            json!({"who": who, "action": "replace", "kind": "routes", "id": "b", "outcome": "applied",
                   "status": 200, "generation_before": 2, "generation_after": 3,
                   "diff": [{"op": "replace", "path": "/paths/0", "value": "/bb/*"}]}),
            json!({"who": who, "action": "create", "kind": "routes", "id": "b", "outcome": "applied",
                   "status": 201, "generation_before": 1, "generation_after": 2,
                   "diff": [{"op": "replace", "path": "", "value": created.json()}]}),
        ]
    );

    let text = std::fs::read_to_string(&audit_file).expect("the audit file is beside the configuration");
    let lines: Vec<Value> =
        text.lines().map(|line| serde_json::from_str(line).expect("one JSON entry a line")).collect();
    assert_eq!(
        lines,
        entries.iter().rev().cloned().collect::<Vec<_>>(),
        "the file holds the same entries, oldest first"
    );
    for secret in [FIRST_CONSUMER_KEY, SECOND_CONSUMER_KEY, KEY] {
        assert!(!text.contains(secret), "{secret} leaked into the audit log: {text}");
    }

    let newest_two = call(&client, &base, Method::GET, "/audit?limit=2", "").await;
    assert_eq!(newest_two.json().as_array().map(Vec::len), Some(2));
    let future = call(&client, &base, Method::GET, "/audit?since=2999-01-01T00:00:00Z", "").await;
    assert_eq!(future.json(), json!([]));
    let bad = call(&client, &base, Method::GET, "/audit?limit=0", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    let anonymous = client.request(Method::GET, &format!("{base}/audit"), &[], String::new()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keeps_the_audit_log_in_memory_on_the_embedded_configuration() {
    // The demo upstream's endpoints name its port, so it needs a fixed one: take a free one.
    let demo_upstream = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("find a free port");
        probe.local_addr().expect("probe address").to_string()
    };
    let gateway = GatewayProcess::start_embedded(
        gantry_binary(),
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--demo-upstream", &demo_upstream],
    );
    let logs = gateway.logs();
    let key = logs
        .iter()
        .find_map(|line| line.split("api_key=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the generated key is logged")
        .to_owned();
    let client = TestClient::default();
    let base = format!("http://{}", gateway.admin_addr());
    let headers = [("x-api-key", key.as_str()), ("content-type", "application/json")];

    let deleted = client.request(Method::DELETE, &format!("{base}/routes/health"), &headers, String::new()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    let listed = client.request(Method::GET, &format!("{base}/audit"), &headers, String::new()).await;
    let entries = listed.json();
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
    assert_eq!(entries[0]["who"]["key"], "admin", "the default name of the admin key");
    assert_eq!(entries[0]["action"], "delete");
    assert_eq!(entries[0]["id"], "health");
    assert_eq!(entries[0]["diff"], json!([{"op": "replace", "path": "", "value": null}]));
    let files: Vec<_> =
        std::fs::read_dir(gateway.dir()).expect("list").flatten().map(|entry| entry.file_name()).collect();
    assert!(files.is_empty(), "nothing is written without a configuration directory: {files:?}");
}

//! Cluster mode through real processes: three gateway nodes, one etcd member and one
//! redis-server on loopback. Configuration written through any node's admin API serves on
//! every node; a rate limit in Redis holds across them; killing and restarting a node or etcd
//! loses neither configuration nor counters; concurrent writes on two nodes lose no update.

use std::time::{Duration, Instant};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::etcd::EtcdServer;
use gantry_testkit::redis::RedisServer;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gantry_binary;

const KEY: &str = "cluster-admin-key-0123456789";

fn node_config(name: &str, etcd: &EtcdServer, redis: &RedisServer) -> String {
    format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin:
    address: 127.0.0.1:0
    api_key: {KEY}
  stores:
    redis: {{urls: ['{redis}'], timeout: 500ms, connect_timeout: 500ms}}
  cluster:
    node_id: {name}
    etcd: {{endpoints: ['{etcd}'], prefix: /gantry-e2e, timeout: 1s, node_ttl: 3s}}
",
        redis = redis.url(),
        etcd = etcd.url(),
    )
}

fn start_node(name: &str, etcd: &EtcdServer, redis: &RedisServer) -> GatewayProcess {
    GatewayProcess::start(gantry_binary(), &node_config(name, etcd, redis))
}

async fn admin(node: &GatewayProcess, method: Method, path: &str, body: &Value) -> TestResponse {
    let url = format!("http://{}{path}", node.admin_addr());
    let body = if body.is_null() { String::new() } else { body.to_string() };
    TestClient::default().request(method, &url, &[("x-api-key", KEY), ("content-type", "application/json")], body).await
}

async fn wait_ready(node: &GatewayProcess) {
    eventually("the node to apply the configuration from etcd", || async {
        let url = format!("http://{}/ready", node.admin_addr());
        (TestClient::default().get(&url).await.status == StatusCode::OK).then_some(())
    })
    .await;
}

/// Polls `path` on `node` until it answers `status`.
async fn wait_for_status(node: &GatewayProcess, path: &str, status: StatusCode) {
    let client = TestClient::default();
    eventually(&format!("{path} to answer {status}"), || async {
        (client.get(&node.url(path)).await.status == status).then_some(())
    })
    .await;
}

#[tokio::test]
async fn nodes_share_configuration_through_etcd_and_limits_through_redis_across_restarts() {
    let mut etcd = EtcdServer::start();
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("cluster").await;
    let node1 = start_node("node-1", &etcd, &redis);
    let mut node2 = start_node("node-2", &etcd, &redis);
    let node3 = start_node("node-3", &etcd, &redis);
    for node in [&node1, &node2, &node3] {
        wait_ready(node).await;
    }

    // A route created on node 1 serves on nodes 2 and 3 within a second.
    let created =
        admin(&node1, Method::PUT, "/upstreams/echo", &json!({"endpoints": [upstream.addr().to_string()]})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let created = admin(&node1, Method::PUT, "/routes/hello", &json!({"paths": ["/hello"], "upstream": "echo"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let written = Instant::now();
    for node in [&node2, &node3] {
        wait_for_status(node, "/hello", StatusCode::OK).await;
        let took = written.elapsed();
        assert!(took < Duration::from_secs(1), "the route reached a node {took:?} after the write");
    }
    let stored = etcd.call("/v3/kv/range", &json!({"key": base64("/gantry-e2e/config/routes/hello")}));
    assert_eq!(stored["count"], "1", "the route is kept in etcd: {stored}");

    // A limit counted in Redis holds for the cluster as a whole.
    let limited = json!({"paths": ["/limited"], "upstream": "echo",
        "policies": [{"rate_limit": {"limit": 10, "window": "1h", "key": ["route"], "store": "redis"}}]});
    assert_eq!(admin(&node2, Method::PUT, "/routes/limited", &limited).await.status, StatusCode::CREATED);
    for node in [&node1, &node3] {
        wait_for_status(node, "/limited", StatusCode::OK).await;
    }
    // Two requests went through while waiting (one on node 1, one on node 3), and the PUT's
    // own node serves at once.
    let client = TestClient::default();
    let mut admitted = 2;
    for round in 0..10 {
        for node in [&node1, &node2, &node3] {
            let status = client.get(&node.url("/limited")).await.status;
            match status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("round {round}: unexpected {other}"),
            }
        }
    }
    assert_eq!(admitted, 10, "exactly the cluster-wide limit is admitted");

    // A killed node comes back with the configuration from etcd and the count from Redis.
    drop(node2);
    let cluster = admin(&node1, Method::GET, "/cluster", &Value::Null).await.json();
    assert_eq!(cluster["node_id"], "node-1");
    node2 = start_node("node-2", &etcd, &redis);
    wait_ready(&node2).await;
    assert_eq!(client.get(&node2.url("/hello")).await.status, StatusCode::OK);
    assert_eq!(client.get(&node2.url("/limited")).await.status, StatusCode::TOO_MANY_REQUESTS);
    let listed = eventually("GET /cluster to list the three nodes", || async {
        let cluster = admin(&node3, Method::GET, "/cluster", &Value::Null).await.json();
        let mut ids: Vec<String> =
            cluster["nodes"].as_array()?.iter().filter_map(|node| node["id"].as_str().map(str::to_owned)).collect();
        ids.sort();
        (ids == ["node-1", "node-2", "node-3"]).then_some(cluster)
    })
    .await;
    assert_eq!(listed["etcd"]["connected"], true, "{listed:#}");

    // Without etcd, every node keeps serving its configuration; writes and /cluster say why
    // they cannot work.
    etcd.stop();
    for node in [&node1, &node2, &node3] {
        assert_eq!(client.get(&node.url("/hello")).await.status, StatusCode::OK);
    }
    let refused =
        admin(&node1, Method::PUT, "/routes/during", &json!({"paths": ["/during"], "upstream": "echo"})).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    assert_eq!(refused.header("content-type"), Some("application/problem+json"));
    assert_eq!(admin(&node1, Method::GET, "/cluster", &Value::Null).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(client.get(&node1.url("/during")).await.status, StatusCode::NOT_FOUND, "a refused write is not applied");

    // etcd comes back with its data: nothing was lost, and the nodes resume watching.
    etcd.restart();
    let after = eventually("a write after etcd restarted", || async {
        let response =
            admin(&node3, Method::PUT, "/routes/after", &json!({"paths": ["/after"], "upstream": "echo"})).await;
        (response.status == StatusCode::CREATED).then_some(response)
    })
    .await;
    assert_eq!(after.status, StatusCode::CREATED);
    for node in [&node1, &node2] {
        wait_for_status(node, "/after", StatusCode::OK).await;
        assert_eq!(client.get(&node.url("/hello")).await.status, StatusCode::OK);
        assert_eq!(client.get(&node.url("/limited")).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn concurrent_writes_on_two_nodes_lose_no_update() {
    let etcd = EtcdServer::start();
    let redis = RedisServer::start();
    let node1 = start_node("writer-1", &etcd, &redis);
    let node2 = start_node("writer-2", &etcd, &redis);
    wait_ready(&node1).await;
    wait_ready(&node2).await;
    let mock =
        |id: &str| json!({"paths": [format!("/{id}")], "policies": [{"mock_response": {"status": 200, "body": id}}]});
    let writes = (0..12).map(|index| {
        let node = if index % 2 == 0 { &node1 } else { &node2 };
        let id = format!("r{index}");
        let body = mock(&id);
        async move { (id.clone(), admin(node, Method::PUT, &format!("/routes/{id}"), &body).await) }
    });
    let outcomes = futures_util::future::join_all(writes).await;
    let mut written = Vec::new();
    for (id, response) in outcomes {
        match response.status {
            StatusCode::CREATED => written.push(id),
            StatusCode::CONFLICT => {
                let problem = response.json();
                assert_eq!(problem["type"], "https://gantry.dev/problems/admin/conflict", "{problem:#}");
            }
            other => panic!("PUT {id}: unexpected {other}: {response:?}"),
        }
    }
    assert!(!written.is_empty());
    written.sort();
    // Every accepted write is in etcd and on both nodes; none overwrote another.
    for node in [&node1, &node2] {
        let listed = eventually("both nodes to list every accepted route", || async {
            let routes = admin(node, Method::GET, "/routes", &Value::Null).await.json();
            let mut ids: Vec<String> =
                routes.as_array()?.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
            ids.sort();
            (ids == written).then_some(ids)
        })
        .await;
        assert_eq!(listed, written);
    }
    let stored = etcd.call(
        "/v3/kv/range",
        &json!({"key": base64("/gantry-e2e/config/routes/"), "range_end": base64("/gantry-e2e/config/routes0"), "count_only": true}),
    );
    assert_eq!(stored["count"].as_str(), Some(written.len().to_string().as_str()), "{stored}");
}

#[tokio::test]
async fn a_file_with_resources_beside_a_cluster_is_refused_with_the_field() {
    let etcd = EtcdServer::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gantry.yaml");
    let yaml = format!(
        "{}routes:\n  - id: r\n    paths: [/r]\n    policies: [{{mock_response: {{status: 200}}}}]\n",
        node_config("n", &etcd, &redis)
    );
    std::fs::write(&path, yaml).expect("write config");
    let output = std::process::Command::new(gantry_binary())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("gantry validate runs");
    assert!(!output.status.success());
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        errors.contains("gantry.yaml:") && errors.contains("routes: with `node.cluster`, resources live in etcd"),
        "{errors}"
    );
}

#[tokio::test]
async fn configuration_written_around_the_admin_api_that_is_invalid_is_refused_and_named_by_key() {
    let etcd = EtcdServer::start();
    let redis = RedisServer::start();
    let node = start_node("strict", &etcd, &redis);
    wait_ready(&node).await;
    let good = json!({"paths": ["/good"], "policies": [{"mock_response": {"status": 200, "body": "good"}}]});
    assert_eq!(admin(&node, Method::PUT, "/routes/good", &good).await.status, StatusCode::CREATED);

    // An upstream that does not exist, and a document that is not JSON, written straight into etcd.
    let put = |key: &str, value: &str| json!({"key": base64(key), "value": base64(value)});
    etcd.call(
        "/v3/kv/put",
        &put("/gantry-e2e/config/routes/broken", r#"{"id": "broken", "paths": ["/b"], "upstream": "nowhere"}"#),
    );
    let status = eventually("the node to report the invalid revision", || async {
        let cluster = admin(&node, Method::GET, "/cluster", &Value::Null).await.json();
        cluster["etcd"]["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(status.contains("etcd key /gantry-e2e/config/routes/broken") && status.contains("nowhere"), "{status}");
    etcd.call("/v3/kv/put", &put("/gantry-e2e/config/routes/garbled", "{not json"));
    eventually("the node to name the garbled key", || async {
        let cluster = admin(&node, Method::GET, "/cluster", &Value::Null).await.json();
        cluster["etcd"]["last_error"].as_str()?.contains("/gantry-e2e/config/routes/garbled").then_some(())
    })
    .await;
    let client = TestClient::default();
    assert_eq!(client.get(&node.url("/good")).await.status, StatusCode::OK, "the running configuration keeps serving");
    assert_eq!(client.get(&node.url("/b")).await.status, StatusCode::NOT_FOUND);
    let status = admin(&node, Method::GET, "/status", &Value::Null).await.json();
    assert!(status["config"]["reload_failures"].as_u64() >= Some(2), "{status:#}");

    // Once the keys are repaired, the node applies the configuration again.
    etcd.call("/v3/kv/deleterange", &json!({"key": base64("/gantry-e2e/config/routes/garbled")}));
    etcd.call(
        "/v3/kv/put",
        &put(
            "/gantry-e2e/config/routes/broken",
            r#"{"id": "broken", "paths": ["/b"], "policies": [{"mock_response": {"status": 201}}]}"#,
        ),
    );
    wait_for_status(&node, "/b", StatusCode::CREATED).await;
    let cluster = admin(&node, Method::GET, "/cluster", &Value::Null).await.json();
    assert!(cluster["etcd"].get("last_error").is_none(), "{cluster:#}");
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

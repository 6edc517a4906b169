//! `consumer_groups` through a running gateway: a group's policies reach its members and no
//! one else, counted per member or once for the whole group as the limit's key says, a
//! consumer's own policy replaces its group's, and groups are created, changed and deleted
//! through the admin API with bad writes refused as problem documents.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_admin, with_listener};

const ADMIN_KEY: &str = "e2e-admin-key-consumer-groups-41c8";

/// A route `/api` behind `key_auth` to `upstream`, with no limit of its own.
fn keyed_route(upstream: &EchoUpstream) -> String {
    format!(
        "upstreams:
  - id: up
    endpoints: [{}]
routes:
  - id: api
    paths: [/api]
    upstream: up
    policies:
      - key_auth: {{}}
",
        upstream.addr()
    )
}

/// `GET /api` as the consumer whose API key is `key`.
async fn get_as(client: &TestClient, gateway: &GatewayProcess, key: &str) -> TestResponse {
    client.request(Method::GET, &gateway.url("/api"), &[("apikey", key)], "").await
}

/// The statuses of `count` requests as the consumer with `key`.
async fn statuses_as(client: &TestClient, gateway: &GatewayProcess, key: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(get_as(client, gateway, key).await.status.as_u16());
    }
    statuses
}

#[tokio::test]
async fn a_groups_limit_applies_to_its_members_only_and_a_consumers_own_policy_replaces_it() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&with_listener(&format!(
        "{route}consumer_groups:
  - id: gold
    policies:
      - rate_limit: {{limit: 2, window: 1h, key: [consumer]}}
      - response_headers: {{set: {{X-Plan: gold}}}}
  - id: team
    policies:
      - rate_limit: {{limit: 3, window: 1h, key: [consumer_group]}}
consumers:
  - id: gold-a
    groups: [gold]
    credentials: {{key_auth: {{key: gold-a-key-0001}}}}
  - id: gold-b
    groups: [partners, gold]
    credentials: {{key_auth: {{key: gold-b-key-0002}}}}
  - id: gold-own
    groups: [gold]
    credentials: {{key_auth: {{key: gold-own-key-0003}}}}
    policies:
      - rate_limit: {{limit: 4, window: 1h, key: [consumer]}}
  - id: plain
    credentials: {{key_auth: {{key: plain-key-0004}}}}
  - id: team-a
    groups: [team]
    credentials: {{key_auth: {{key: team-a-key-0005}}}}
  - id: team-b
    groups: [team]
    credentials: {{key_auth: {{key: team-b-key-0006}}}}
",
        route = keyed_route(&upstream)
    )));
    let client = TestClient::default();

    // `key: [consumer]`: each member of `gold` has the group's 2 on its own.
    assert_eq!(statuses_as(&client, &gateway, "gold-a-key-0001", 3).await, [200, 200, 429]);
    assert_eq!(statuses_as(&client, &gateway, "gold-b-key-0002", 3).await, [200, 200, 429]);
    let refused = get_as(&client, &gateway, "gold-a-key-0001").await;
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/rate-limited");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");

    // The group's other policy reaches its members, and neither reaches anyone else.
    let member = get_as(&client, &gateway, "gold-own-key-0003").await;
    assert_eq!(member.header("x-plan"), Some("gold"));
    assert_eq!(statuses_as(&client, &gateway, "gold-own-key-0003", 4).await, [200, 200, 200, 429], "its own 4");
    let outsider = get_as(&client, &gateway, "plain-key-0004").await;
    assert_eq!(outsider.header("x-plan"), None);
    assert_eq!(statuses_as(&client, &gateway, "plain-key-0004", 6).await, [200; 6], "no limit outside the group");

    // `key: [consumer_group]`: one count of 3 for all of `team`.
    assert_eq!(statuses_as(&client, &gateway, "team-a-key-0005", 2).await, [200, 200]);
    assert_eq!(statuses_as(&client, &gateway, "team-b-key-0006", 2).await, [200, 429]);
    assert_eq!(statuses_as(&client, &gateway, "team-a-key-0005", 1).await, [429]);
    // gold-a 2, gold-b 2, gold-own 4, plain 7 and team 3 got through.
    assert_eq!(upstream.requests(), 18);
}

/// Requests to the gateway's admin API.
struct Admin<'a> {
    client: TestClient,
    gateway: &'a GatewayProcess,
}

impl Admin<'_> {
    async fn call(&self, method: Method, path: &str, body: &str) -> TestResponse {
        let url = format!("http://{}{path}", self.gateway.admin_addr());
        let headers = [("x-api-key", ADMIN_KEY), ("content-type", "application/yaml")];
        self.client.request(method, &url, &headers, body.to_owned()).await
    }
}

fn assert_problem(response: &TestResponse, status: StatusCode, code: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"), "{response:?}");
    assert_eq!(response.json()["type"], format!("https://gantry.dev/problems/admin/{code}"), "{response:?}");
}

#[tokio::test]
async fn consumer_groups_are_created_changed_and_deleted_through_the_admin_api() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&with_admin(
        ADMIN_KEY,
        &format!(
            "{route}consumers:
  - id: acme
    groups: [gold]
    credentials: {{key_auth: {{key: acme-key-00000001}}}}
",
            route = keyed_route(&upstream)
        ),
    ));
    let admin = Admin { client: TestClient::default(), gateway: &gateway };
    let client = TestClient::default();
    // `gold` is listed but not declared: it carries nothing.
    assert_eq!(statuses_as(&client, &gateway, "acme-key-00000001", 3).await, [200, 200, 200]);

    let created = admin
        .call(Method::POST, "/consumer_groups", "id: gold\npolicies:\n  - rate_limit: {limit: 1, window: 1h}\n")
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.header("location"), Some("/consumer_groups/gold"));
    assert_eq!(statuses_as(&client, &gateway, "acme-key-00000001", 2).await, [200, 429], "live at once");
    let listed = admin.call(Method::GET, "/consumer_groups", "").await;
    assert_eq!(listed.json()[0]["policies"][0]["rate_limit"]["limit"], 1, "{listed:?}");
    let config = admin.call(Method::GET, "/config", "").await;
    assert_eq!(config.json()["consumer_groups"][0]["id"], "gold", "{config:?}");
    let saved = std::fs::read_to_string(gateway.config_path()).expect("read config");
    assert!(saved.contains("consumer_groups:") && saved.contains("id: gold"), "saved to the file: {saved}");

    let replaced = admin
        .call(Method::PUT, "/consumer_groups/gold", "policies:\n  - response_headers: {set: {X-Plan: gold}}\n")
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    let member = get_as(&client, &gateway, "acme-key-00000001").await;
    assert_eq!(member.status, StatusCode::OK, "the limit went with the old policies");
    assert_eq!(member.header("x-plan"), Some("gold"));

    // Bad writes: nothing changes, and each is a problem document naming what is wrong.
    let too_early = admin.call(Method::PUT, "/consumer_groups/gold", "policies:\n  - key_auth: {}\n").await;
    assert_problem(&too_early, StatusCode::BAD_REQUEST, "invalid-config");
    let errors = &too_early.json()["errors"];
    assert_eq!(errors[0]["path"], "consumer_groups[gold].policies[0].key_auth", "{errors}");
    assert_eq!(errors[0]["origin"]["resource"], "consumer_groups/gold", "{errors}");
    let bad_setting =
        admin.call(Method::PUT, "/consumer_groups/gold", "policies:\n  - rate_limit: {limit: 0, window: 1h}\n").await;
    assert_problem(&bad_setting, StatusCode::BAD_REQUEST, "invalid-config");
    assert_eq!(bad_setting.json()["errors"][0]["path"], "consumer_groups[gold].policies[0].rate_limit.limit");
    let typo = admin.call(Method::PUT, "/consumer_groups/gold", "policy: []\n").await;
    assert_problem(&typo, StatusCode::BAD_REQUEST, "invalid-config");
    assert_eq!(typo.json()["errors"][0]["path"], "consumer_groups[gold].policy");
    let bad_id = admin.call(Method::PUT, "/consumer_groups/gold!", "policies: []\n").await;
    assert_problem(&bad_id, StatusCode::BAD_REQUEST, "invalid-config");
    let again = admin.call(Method::POST, "/consumer_groups", "id: gold\n").await;
    assert_problem(&again, StatusCode::CONFLICT, "resource-exists");
    assert_eq!(get_as(&client, &gateway, "acme-key-00000001").await.header("x-plan"), Some("gold"), "unchanged");

    let in_use = admin.call(Method::DELETE, "/consumer_groups/gold", "").await;
    assert_problem(&in_use, StatusCode::CONFLICT, "resource-in-use");
    assert_eq!(in_use.json()["used_by"], serde_json::json!(["consumers[acme].groups[0]"]));

    let moved = admin.call(Method::PUT, "/consumers/acme", "credentials: {key_auth: {key: acme-key-00000001}}\n").await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:?}");
    assert_eq!(admin.call(Method::DELETE, "/consumer_groups/gold", "").await.status, StatusCode::NO_CONTENT);
    assert_problem(
        &admin.call(Method::GET, "/consumer_groups/gold", "").await,
        StatusCode::NOT_FOUND,
        "resource-not-found",
    );
    assert_eq!(get_as(&client, &gateway, "acme-key-00000001").await.header("x-plan"), None);
    let saved = std::fs::read_to_string(gateway.config_path()).expect("read config");
    assert!(!saved.contains("consumer_groups:"), "deleted from the file: {saved}");
}

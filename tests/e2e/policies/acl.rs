//! `acl` through a running gateway, after `key_auth`: a consumer in an allowed group passes,
//! one outside it gets 403 and never reaches the upstream, an anonymous stand-in is refused
//! where anonymous access is off.

use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_listener};

fn config(upstream: &EchoUpstream) -> String {
    with_listener(&format!(
        "consumers:
  - id: ops-console
    groups: [readers, operators]
    credentials: {{key_auth: {{key: ops-console-key-1}}}}
  - id: reporting-job
    groups: [readers]
    credentials: {{key_auth: {{key: reporting-job-key-2}}}}
  - id: guest
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: admin
    paths: [/admin/*]
    upstream: up
    policies:
      - key_auth: {{anonymous_consumer: guest}}
      - acl: {{allow_groups: [operators], allow_consumers: [guest], allow_anonymous: false}}
  - id: reports
    paths: [/reports/*]
    upstream: up
    policies:
      - key_auth: {{anonymous_consumer: guest}}
      - acl: {{allow_groups: [readers], allow_consumers: [guest]}}
",
        upstream = upstream.addr()
    ))
}

#[tokio::test]
async fn admits_allowed_groups_and_refuses_the_others_with_403() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream));
    let client = TestClient::default();
    let get = |path: &'static str, key: Option<&'static str>| {
        let url = gateway.url(path);
        let client = &client;
        async move {
            let headers: Vec<(&str, &str)> = key.map(|key| ("apikey", key)).into_iter().collect();
            client.request(Method::GET, &url, &headers, "").await
        }
    };

    assert_eq!(get("/admin/users", Some("ops-console-key-1")).await.status, StatusCode::OK);
    let refused = get("/admin/users", Some("reporting-job-key-2")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/consumer-denied");
    assert_eq!(upstream.requests(), 1, "a refused request reached the upstream");

    let anonymous = get("/admin/users", None).await;
    assert_eq!(anonymous.status, StatusCode::FORBIDDEN, "allow_anonymous: false refuses the stand-in");

    assert_eq!(get("/reports/daily", Some("reporting-job-key-2")).await.status, StatusCode::OK);
    assert_eq!(get("/reports/daily", None).await.status, StatusCode::OK, "the stand-in is allowed here");
    assert_eq!(upstream.requests(), 3);
}

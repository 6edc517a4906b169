//! `GET /metrics` through a running gateway: requests per route and status class, durations,
//! body bytes, upstream endpoints, consumers, the configuration's generation and rejected
//! reloads; every exposition checked by `promtool check metrics`.

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, promtool, EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};
use nix::sys::signal::Signal;

use crate::support::{closed_address, gantry_binary, metrics, with_admin};

const KEY: &str = "metrics-admin-key-0123456789";

/// `/metrics` once every one of `lines` is in it (counters of a response body are added when
/// the body has been sent, a moment after the client has it), checked by promtool.
async fn metrics_with(gateway: &GatewayProcess, lines: &[String]) -> String {
    let text = eventually(&format!("/metrics to have {lines:#?}"), || async {
        let text = metrics(gateway).await;
        lines.iter().all(|line| text.lines().any(|own| own == line)).then_some(text)
    })
    .await;
    if let Err(problems) = promtool::check_metrics(&text) {
        panic!("promtool rejects the exposition: {problems}\n{text}");
    }
    text
}

#[tokio::test]
async fn counts_requests_durations_and_bytes_per_route_and_status_class_and_tries_per_endpoint() {
    let upstream = EchoUpstream::start("counted").await;
    let dead = closed_address();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let yaml = with_admin(
        KEY,
        &format!(
            "  access_log: {{path: {log}}}\nupstreams:\n  - id: up\n    endpoints: [{up}]\n  - id: down\n    endpoints: [{dead}]\n    retries: {{attempts: 0}}\nservices:\n  - id: shop\n    upstream: up\nroutes:\n  - id: orders\n    paths: [/orders/*]\n    service: shop\n  - id: status\n    paths: [/status/*]\n    upstream: up\n  - id: broken\n    paths: [/broken]\n    upstream: down\n",
            log = log.display(),
            up = upstream.addr()
        ),
    );
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[]);
    let client = TestClient::default();

    let mut orders_bytes = 0;
    for id in 1..=3 {
        let response = client.get(&gateway.url(&format!("/orders/{id}"))).await;
        assert_eq!(response.status, StatusCode::OK);
        orders_bytes += response.body.len();
    }
    for _ in 0..2 {
        let response = client.request(Method::POST, &gateway.url("/orders/new"), &[], "hello-world").await;
        assert_eq!(response.status, StatusCode::OK);
        orders_bytes += response.body.len();
    }
    let mut status_bytes = 0;
    for (path, status) in [("/status/503", 503), ("/status/503", 503), ("/status/404", 404)] {
        let response = client.get(&gateway.url(path)).await;
        assert_eq!(response.status.as_u16(), status);
        status_bytes += response.body.len();
    }
    assert_eq!(client.get(&gateway.url("/broken")).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(client.get(&gateway.url("/nowhere")).await.status, StatusCode::NOT_FOUND);

    let orders = "route=\"orders\",service=\"shop\"";
    let endpoint = format!("upstream=\"up\",endpoint=\"{}\"", upstream.addr());
    let down = format!("upstream=\"down\",endpoint=\"{dead}\"");
    let text = metrics_with(
        &gateway,
        &[
            format!("gantry_requests_total{{{orders},status_class=\"2xx\"}} 5"),
            format!("gantry_requests_total{{{orders},status_class=\"5xx\"}} 0"),
            "gantry_requests_total{route=\"status\",status_class=\"5xx\"} 2".into(),
            "gantry_requests_total{route=\"status\",status_class=\"4xx\"} 1".into(),
            "gantry_requests_total{route=\"status\",status_class=\"2xx\"} 0".into(),
            "gantry_requests_total{route=\"broken\",status_class=\"5xx\"} 1".into(),
            "gantry_requests_total{status_class=\"4xx\"} 1".into(),
            format!("gantry_request_duration_seconds_count{{{orders}}} 5"),
            "gantry_request_duration_seconds_count{route=\"status\"} 3".into(),
            format!("gantry_gateway_overhead_seconds_count{{{orders}}} 5"),
            // The request that never reached an upstream has a duration but no overhead.
            "gantry_request_duration_seconds_count{route=\"broken\"} 1".into(),
            "gantry_gateway_overhead_seconds_count{route=\"broken\"} 0".into(),
            format!("gantry_request_body_bytes_total{{{orders}}} 22"),
            "gantry_request_body_bytes_total{route=\"status\"} 0".into(),
            format!("gantry_response_body_bytes_total{{{orders}}} {orders_bytes}"),
            format!("gantry_response_body_bytes_total{{route=\"status\"}} {status_bytes}"),
            format!("gantry_upstream_responses_total{{{endpoint},status_class=\"2xx\"}} 5"),
            // The upstream's default retry policy tries a 503 twice: two requests, four tries.
            format!("gantry_upstream_responses_total{{{endpoint},status_class=\"5xx\"}} 4"),
            format!("gantry_upstream_responses_total{{{endpoint},status_class=\"4xx\"}} 1"),
            format!("gantry_upstream_duration_seconds_count{{{endpoint}}} 10"),
            format!("gantry_upstream_endpoint_available{{{endpoint}}} 1"),
            format!("gantry_upstream_endpoint_in_flight{{{endpoint}}} 0"),
            format!("gantry_upstream_failures_total{{{down},reason=\"connect\"}} 1"),
            format!("gantry_upstream_failures_total{{{endpoint},reason=\"connect\"}} 0"),
            "gantry_config_generation 1".into(),
            "gantry_config_reload_failures_total 0".into(),
            "gantry_access_log_dropped_total{sink=\"file\"} 0".into(),
        ],
    )
    .await;
    // Every request took some time, and each histogram's buckets add up to its count.
    let sum = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}{{{orders}}} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for orders in:\n{text}"))
    };
    assert!(sum("gantry_request_duration_seconds_sum") > 0.0, "{text}");
    assert!(sum("gantry_request_duration_seconds_sum") >= sum("gantry_gateway_overhead_seconds_sum"), "{text}");
    assert!(text.contains(&format!("gantry_request_duration_seconds_bucket{{le=\"+Inf\",{orders}}} 5")), "{text}");
    assert!(text.contains("# TYPE gantry_requests_total counter"), "the Prometheus text format by default:\n{text}");
}

#[tokio::test]
async fn answers_openmetrics_to_a_scraper_that_asks_for_it() {
    let gateway = GatewayProcess::start(gantry_binary(), &with_admin(KEY, ""));
    let url = format!("http://{}/metrics", gateway.admin_addr());
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let response = TestClient::default().request(Method::GET, &url, &[("accept", accept)], "").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    let text = String::from_utf8_lossy(&response.body);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.lines().any(|line| line == "# TYPE gantry_requests counter"), "{text}");
    let plain = TestClient::default().get(&url).await;
    assert_eq!(plain.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
}

/// A gateway config with the admin API and one `mock_response` route per id.
fn mock_routes(ids: &[&str]) -> String {
    let mut routes = String::from("routes:\n");
    for id in ids {
        routes.push_str(&format!(
            "  - id: {id}\n    paths: [/{id}]\n    policies:\n      - mock_response: {{body: {id}}}\n"
        ));
    }
    with_admin(KEY, &routes)
}

#[tokio::test]
async fn follows_reloads_keeping_unchanged_routes_counts_dropping_removed_routes_and_counting_rejections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = GatewayProcess::start_in(
        gantry_binary(),
        dir,
        "gantry.yaml",
        &mock_routes(&["kept", "removed"]),
        &["--no-watch"],
    );
    let client = TestClient::default();
    for path in ["/kept", "/kept", "/removed"] {
        assert_eq!(client.get(&gateway.url(path)).await.status, StatusCode::OK);
    }
    metrics_with(
        &gateway,
        &[
            "gantry_requests_total{route=\"kept\",status_class=\"2xx\"} 2".into(),
            "gantry_requests_total{route=\"removed\",status_class=\"2xx\"} 1".into(),
            "gantry_config_generation 1".into(),
            "gantry_config_reload_failures_total 0".into(),
            "gantry_config_last_reload_successful 1".into(),
        ],
    )
    .await;

    std::fs::write(gateway.config_path(), mock_routes(&["kept", "added"])).expect("rewrite config");
    gateway.signal(Signal::SIGHUP);
    let text = metrics_with(
        &gateway,
        &[
            "gantry_config_generation 2".into(),
            "gantry_requests_total{route=\"kept\",status_class=\"2xx\"} 2".into(),
            "gantry_requests_total{route=\"added\",status_class=\"2xx\"} 0".into(),
        ],
    )
    .await;
    assert!(!text.contains("route=\"removed\""), "a removed route's series go with it:\n{text}");
    assert_eq!(client.get(&gateway.url("/kept")).await.status, StatusCode::OK);
    metrics_with(&gateway, &["gantry_requests_total{route=\"kept\",status_class=\"2xx\"} 3".into()]).await;

    let invalid = format!("{}    upstream: nowhere\n", mock_routes(&["kept"]));
    std::fs::write(gateway.config_path(), invalid).expect("write an invalid config");
    gateway.signal(Signal::SIGHUP);
    metrics_with(
        &gateway,
        &[
            "gantry_config_reload_failures_total 1".into(),
            "gantry_config_last_reload_successful 0".into(),
            "gantry_config_generation 2".into(),
            "gantry_requests_total{route=\"added\",status_class=\"2xx\"} 0".into(),
        ],
    )
    .await;
}

#[tokio::test]
async fn counts_consumers_apart_up_to_max_consumers_and_the_rest_as_other() {
    let upstream = EchoUpstream::start("consumers").await;
    let yaml = with_admin(
        KEY,
        &format!(
            "  metrics: {{consumer_label: true, max_consumers: 2}}\nconsumers:\n  - {{id: alice, credentials: {{key_auth: {{key: alice-key-0123}}}}}}\n  - {{id: bob, credentials: {{key_auth: {{key: bob-key-0123456}}}}}}\n  - {{id: carol, credentials: {{key_auth: {{key: carol-key-01234}}}}}}\nupstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: api\n    paths: [/api/*]\n    upstream: up\n    policies:\n      - key_auth: {{header: x-api-key}}\n",
            upstream.addr()
        ),
    );
    let gateway = GatewayProcess::start(gantry_binary(), &yaml);
    let client = TestClient::default();
    for key in ["alice-key-0123", "alice-key-0123", "bob-key-0123456", "carol-key-01234"] {
        let response = client.request(Method::GET, &gateway.url("/api/x"), &[("x-api-key", key)], "").await;
        assert_eq!(response.status, StatusCode::OK);
    }
    assert_eq!(client.get(&gateway.url("/api/x")).await.status, StatusCode::UNAUTHORIZED);
    let text = metrics_with(
        &gateway,
        &[
            "gantry_consumer_requests_total{consumer=\"alice\",status_class=\"2xx\"} 2".into(),
            "gantry_consumer_requests_total{consumer=\"bob\",status_class=\"2xx\"} 1".into(),
            "gantry_consumer_requests_total{consumer=\"(other)\",status_class=\"2xx\"} 1".into(),
            "gantry_requests_total{route=\"api\",status_class=\"2xx\"} 4".into(),
            "gantry_requests_total{route=\"api\",status_class=\"4xx\"} 1".into(),
        ],
    )
    .await;
    assert!(!text.contains("consumer=\"carol\""), "past max_consumers a consumer has no series:\n{text}");
    assert!(
        !text.lines().any(|line| line.starts_with("gantry_consumer_requests_total") && line.contains("4xx\"} 1")),
        "a request without a consumer counts for none:\n{text}"
    );
}

#[tokio::test]
async fn counts_no_requests_when_disabled_but_still_reports_the_configuration() {
    let yaml = mock_routes(&["quiet"]).replacen("  admin:", "  metrics: {enabled: false}\n  admin:", 1);
    let gateway = GatewayProcess::start(gantry_binary(), &yaml);
    assert_eq!(TestClient::default().get(&gateway.url("/quiet")).await.status, StatusCode::OK);
    let text = metrics_with(&gateway, &["gantry_config_generation 1".into()]).await;
    assert!(!text.contains("gantry_requests_total"), "{text}");
}

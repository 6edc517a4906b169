use super::*;

fn metrics(consumer_label: bool, max_consumers: usize) -> Arc<TrafficMetrics> {
    Arc::new(TrafficMetrics::new(&MetricsSpec { consumer_label, max_consumers, ..MetricsSpec::default() }))
}

fn exposition(metrics: &Arc<TrafficMetrics>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(metrics.clone()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|own| own == line)
}

const OK: StatusCode = StatusCode::OK;

#[test]
fn maps_statuses_to_their_class() {
    let classes: Vec<&str> = [100, 204, 302, 404, 499, 503, 999]
        .iter()
        .map(|&code| STATUS_CLASSES[status_class(StatusCode::from_u16(code).expect("status"))])
        .collect();
    assert_eq!(classes, ["1xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx"]);
}

#[test]
fn a_route_keeps_its_series_across_compiles_while_its_id_and_service_stay() {
    let metrics = metrics(false, 100);
    let id: Arc<str> = "orders".into();
    let first = metrics.route(&id, Some("shop"), None).expect("enabled");
    first.series.record(OK, Duration::from_millis(3), None);
    let second = metrics.route(&id, Some("shop"), None).expect("enabled");
    assert!(Arc::ptr_eq(&first.series, &second.series), "a recompiled route counts on");
    assert_eq!(second.series.requests("2xx"), 1);
    let moved = metrics.route(&id, Some("other-shop"), None).expect("enabled");
    assert!(!Arc::ptr_eq(&first.series, &moved.series), "another service is another series");
    assert_eq!(moved.series.requests("2xx"), 0);
}

#[test]
fn a_removed_route_disappears_from_the_exposition() {
    let metrics = metrics(false, 100);
    let kept = metrics.route(&"kept".into(), None, None).expect("enabled");
    let removed = metrics.route(&"removed".into(), None, None).expect("enabled");
    removed.series.record(StatusCode::NOT_FOUND, Duration::from_millis(1), None);
    let text = exposition(&metrics);
    assert!(has_line(&text, "gantry_requests_total{route=\"removed\",status_class=\"4xx\"} 1"), "{text}");
    drop(removed);
    let text = exposition(&metrics);
    assert!(!text.contains("route=\"removed\""), "{text}");
    assert!(has_line(&text, "gantry_requests_total{route=\"kept\",status_class=\"2xx\"} 0"), "{text}");
    drop(kept);
}

#[test]
fn exposes_requests_durations_overhead_and_bytes_per_route() {
    let metrics = metrics(false, 100);
    let route = metrics.route(&"api".into(), Some("shop"), None).expect("enabled");
    route.series.record(OK, Duration::from_micros(1500), Some(Duration::from_micros(1450)));
    route.series.record(StatusCode::BAD_GATEWAY, Duration::from_millis(30), None);
    route.series.count_request_body(10);
    route.series.count_response_body(96);
    route.series.count_response_body(4);
    metrics.count_unmatched(StatusCode::NOT_FOUND);
    let text = exposition(&metrics);
    for line in [
        "gantry_requests_total{status_class=\"4xx\"} 1",
        "gantry_requests_total{route=\"api\",service=\"shop\",status_class=\"2xx\"} 1",
        "gantry_requests_total{route=\"api\",service=\"shop\",status_class=\"5xx\"} 1",
        "gantry_request_duration_seconds_count{route=\"api\",service=\"shop\"} 2",
        "gantry_request_duration_seconds_bucket{le=\"0.002\",route=\"api\",service=\"shop\"} 1",
        "gantry_request_duration_seconds_bucket{le=\"0.05\",route=\"api\",service=\"shop\"} 2",
        // Only the forwarded request has an overhead: 50 µs, in the (20 µs, 50 µs] bucket.
        "gantry_gateway_overhead_seconds_count{route=\"api\",service=\"shop\"} 1",
        "gantry_gateway_overhead_seconds_bucket{le=\"0.00002\",route=\"api\",service=\"shop\"} 0",
        "gantry_gateway_overhead_seconds_bucket{le=\"0.00005\",route=\"api\",service=\"shop\"} 1",
        "gantry_request_body_bytes_total{route=\"api\",service=\"shop\"} 10",
        "gantry_response_body_bytes_total{route=\"api\",service=\"shop\"} 100",
    ] {
        assert!(has_line(&text, line), "no `{line}` in:\n{text}");
    }
}

#[test]
fn exposes_endpoint_responses_failures_durations_and_health() {
    let metrics = metrics(false, 100);
    let state = Arc::new(EndpointState::default());
    let series = metrics.endpoint(&"users".into(), &"10.0.0.1:80".into(), &state).expect("enabled");
    series.record_response(OK, Duration::from_millis(4));
    series.record_failure(UpstreamFailure::Timeout);
    state.healthy.store(false, Ordering::Relaxed);
    let labels = "upstream=\"users\",endpoint=\"10.0.0.1:80\"";
    let text = exposition(&metrics);
    for line in [
        format!("gantry_upstream_responses_total{{{labels},status_class=\"2xx\"}} 1"),
        format!("gantry_upstream_failures_total{{{labels},reason=\"timeout\"}} 1"),
        format!("gantry_upstream_failures_total{{{labels},reason=\"connect\"}} 0"),
        format!("gantry_upstream_duration_seconds_count{{{labels}}} 1"),
        format!("gantry_upstream_endpoint_available{{{labels}}} 0"),
        format!("gantry_upstream_endpoint_in_flight{{{labels}}} 0"),
    ] {
        assert!(has_line(&text, &line), "no `{line}` in:\n{text}");
    }
    let again = metrics.endpoint(&"users".into(), &"10.0.0.1:80".into(), &state).expect("enabled");
    assert!(Arc::ptr_eq(&series, &again), "the same endpoint keeps its series");
    let renewed = metrics.endpoint(&"users".into(), &"10.0.0.1:80".into(), &Arc::default()).expect("enabled");
    assert!(!Arc::ptr_eq(&series, &renewed), "an endpoint with new state starts a new series");
}

#[test]
fn counts_configured_consumers_first_then_described_ones_while_there_is_room_then_other() {
    let metrics = metrics(true, 3);
    let table = metrics.consumer_table(["alice", "bob"]).expect("consumers counted");
    table.count("alice", OK);
    table.count("token-x", OK); // the third place
    table.count("token-y", StatusCode::FORBIDDEN); // no room left
    table.count("token-z", OK);
    table.count("token-x", StatusCode::TOO_MANY_REQUESTS);
    let text = exposition(&metrics);
    for line in [
        "gantry_consumer_requests_total{consumer=\"alice\",status_class=\"2xx\"} 1",
        "gantry_consumer_requests_total{consumer=\"bob\",status_class=\"2xx\"} 0",
        "gantry_consumer_requests_total{consumer=\"token-x\",status_class=\"2xx\"} 1",
        "gantry_consumer_requests_total{consumer=\"token-x\",status_class=\"4xx\"} 1",
        "gantry_consumer_requests_total{consumer=\"(other)\",status_class=\"2xx\"} 1",
        "gantry_consumer_requests_total{consumer=\"(other)\",status_class=\"4xx\"} 1",
    ] {
        assert!(has_line(&text, line), "no `{line}` in:\n{text}");
    }
    assert!(!text.contains("token-y") && !text.contains("token-z"), "{text}");
    let series = text.lines().filter(|line| line.starts_with("gantry_consumer_requests_total{")).count();
    assert_eq!(series, 4 * STATUS_CLASSES.len(), "three consumers and (other): {text}");
}

#[test]
fn a_consumer_configured_by_a_reload_keeps_the_count_it_had_from_tokens() {
    let metrics = metrics(true, 2);
    let first = metrics.consumer_table(["alice"]).expect("consumers counted");
    first.count("token-x", OK);
    first.count("token-x", OK);
    let second = metrics.consumer_table(["alice", "token-x"]).expect("consumers counted");
    second.count("token-x", OK);
    // A request still on the older snapshot finds no place for it among described consumers
    // any more, and never makes a second series of it.
    first.count("token-x", OK);
    let text = exposition(&metrics);
    let lines: Vec<&str> =
        text.lines().filter(|line| line.contains("consumer=\"token-x\",status_class=\"2xx\"")).collect();
    assert_eq!(lines, ["gantry_consumer_requests_total{consumer=\"token-x\",status_class=\"2xx\"} 3"], "{text}");
    assert!(has_line(&text, "gantry_consumer_requests_total{consumer=\"(other)\",status_class=\"2xx\"} 1"), "{text}");
    drop(first);
    // No room is left for consumers tokens describe: both places are configured.
    second.count("token-y", OK);
    assert!(!exposition(&metrics).contains("token-y"));
}

#[test]
fn configured_consumers_past_the_bound_count_as_other() {
    let metrics = metrics(true, 1);
    let table = metrics.consumer_table(["alice", "bob"]).expect("consumers counted");
    table.count("bob", OK);
    let text = exposition(&metrics);
    assert!(!text.contains("consumer=\"bob\""), "{text}");
    assert!(has_line(&text, "gantry_consumer_requests_total{consumer=\"(other)\",status_class=\"2xx\"} 1"), "{text}");
}

#[test]
fn counts_nothing_when_disabled_or_without_the_consumer_label() {
    let disabled = Arc::new(TrafficMetrics::disabled());
    assert!(disabled.route(&"api".into(), None, None).is_none());
    assert!(disabled.endpoint(&"up".into(), &"10.0.0.1:80".into(), &Arc::default()).is_none());
    assert!(disabled.consumer_table(["alice"]).is_none());
    disabled.count_unmatched(StatusCode::NOT_FOUND);
    assert_eq!(exposition(&disabled), "# EOF\n");
    let without_consumers = metrics(false, 100);
    assert!(without_consumers.consumer_table(["alice"]).is_none());
    assert!(!exposition(&without_consumers).contains("gantry_consumer_requests"));
}

#[test]
fn exposes_bulkhead_refusals_and_denied_retries_per_upstream() {
    let metrics = metrics(false, 100);
    assert!(!exposition(&metrics).contains("gantry_upstream_overloaded"), "no families without such upstreams");
    let series = metrics.upstream(&"reports".into()).expect("enabled");
    series.count_overloaded();
    series.count_overloaded();
    series.count_retry_denied();
    let text = exposition(&metrics);
    for line in [
        "gantry_upstream_overloaded_total{upstream=\"reports\"} 2",
        "gantry_upstream_retries_denied_total{upstream=\"reports\"} 1",
    ] {
        assert!(has_line(&text, line), "no `{line}` in:\n{text}");
    }
    let again = metrics.upstream(&"reports".into()).expect("enabled");
    assert!(Arc::ptr_eq(&series, &again), "a reload keeps the upstream's counts");
    drop((series, again));
    assert!(!exposition(&metrics).contains("reports"), "a removed upstream's series disappear");
    assert!(TrafficMetrics::disabled().upstream(&"reports".into()).is_none());
}

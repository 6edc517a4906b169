use gantry_config::load_str;

use super::*;

fn compile(yaml: &str) -> Result<Snapshot, ConfigErrors> {
    let spec = load_str(yaml).expect("test YAML parses");
    compile_snapshot(
        &spec,
        1,
        &UpstreamStates::default(),
        &gantry_state::Stores::in_memory(),
        &TrafficMetrics::disabled(),
    )
}

const UPSTREAM: &str = "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:9]\n";

#[test]
fn compiles_routes_with_their_upstream() {
    let snapshot =
        compile(&format!("{UPSTREAM}routes:\n  - id: r\n    paths: [/x]\n    upstream: up\n")).expect("valid");
    assert_eq!(snapshot.routes.len(), 1);
    assert_eq!(snapshot.routes[0].upstream.as_ref().map(|u| &*u.id), Some("up"));
}

#[test]
fn a_route_without_upstream_or_answering_policy_is_an_error() {
    let errors = compile("routes:\n  - id: r\n    paths: [/x]\n").expect_err("no upstream");
    assert_eq!(errors.0[0].path.to_string(), "routes[r]");
}

#[test]
fn names_unknown_policies_with_their_path() {
    let errors = compile(&format!(
        "{UPSTREAM}routes:\n  - id: r\n    paths: [/x]\n    upstream: up\n    policies:\n      - no_such_policy: {{}}\n"
    ))
    .expect_err("unknown policy");
    assert_eq!(errors.0[0].path.to_string(), "routes[r].policies[0]");
    assert!(errors.0[0].message.contains("unknown policy `no_such_policy`"));
}

#[test]
fn a_route_policy_replaces_the_global_one_of_the_same_name() {
    let snapshot = compile(&format!(
        "{UPSTREAM}global_policies:\n  - ip_restriction: {{deny: [10.0.0.0/8]}}\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: up\n    policies:\n      - ip_restriction: {{deny: [192.168.0.0/16]}}\n  - id: s\n    paths: [/y]\n    upstream: up\n"
    ))
    .expect("valid");
    assert_eq!(snapshot.routes[0].pipeline.entries().len(), 1);
    assert_eq!(snapshot.routes[1].pipeline.entries().len(), 1);
    assert!(!std::sync::Arc::ptr_eq(
        &snapshot.routes[0].pipeline.entries()[0].policy,
        &snapshot.routes[1].pipeline.entries()[0].policy
    ));
}

#[test]
fn collects_errors_from_policies_upstreams_and_routes_together() {
    let errors = compile(
        "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:9]\n    load_balancer: {consistent_hash: {header: 'bad header'}}\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: up\n    policies:\n      - ip_restriction: {allow: [not-an-ip]}\n",
    )
    .expect_err("two errors");
    let paths: Vec<String> = errors.0.iter().map(|e| e.path.to_string()).collect();
    assert!(paths.iter().any(|p| p == "upstreams[up].load_balancer"), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("routes[r].policies[0].ip_restriction")), "{paths:?}");
}

#[test]
fn reports_bad_policy_settings_next_to_a_missing_reference() {
    let errors = compile(
        "global_policies:\n  - ip_restriction: {deny: [not-a-cidr]}\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: missing\n    policies:\n      - mock_response: {body: hi, colour: red}\n",
    )
    .expect_err("three errors");
    let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
    assert_eq!(
        paths,
        [
            "routes[r].upstream",
            "global_policies[0].ip_restriction.deny[0]",
            "routes[r].policies[0].mock_response.colour"
        ],
        "{errors}"
    );
}

#[test]
fn reports_clashing_templates_at_the_route_path() {
    let errors = compile(&format!(
        "{UPSTREAM}routes:\n  - id: a\n    paths: ['/u/{{id}}']\n    upstream: up\n  - id: b\n    paths: [/z, '/u/{{name}}']\n    upstream: up\n"
    ))
    .expect_err("clash");
    assert_eq!(errors.0[0].path.to_string(), "routes[b].paths[1]");
}

#[test]
fn keeps_endpoint_state_across_compiles() {
    let states = UpstreamStates::default();
    let spec = load_str(&format!("{UPSTREAM}routes:\n  - id: r\n    paths: [/x]\n    upstream: up\n")).expect("parses");
    let metrics = TrafficMetrics::disabled();
    let first = compile_snapshot(&spec, 1, &states, &gantry_state::Stores::in_memory(), &metrics).expect("valid");
    states.adopt(first.upstreams.iter().map(|upstream| upstream.as_ref()));
    let second = compile_snapshot(&spec, 2, &states, &gantry_state::Stores::in_memory(), &metrics).expect("valid");
    assert!(std::sync::Arc::ptr_eq(&first.upstreams[0].endpoints[0].state, &second.upstreams[0].endpoints[0].state));
    assert!(second.routes[0].metrics.is_none() && second.upstreams[0].endpoints[0].metrics.is_none());
}

#[test]
fn keeps_route_and_endpoint_metrics_across_compiles_and_starts_a_route_moved_to_another_service_anew() {
    let states = UpstreamStates::default();
    let metrics = TrafficMetrics::new(&gantry_config::MetricsSpec { consumer_label: true, ..Default::default() });
    let stores = gantry_state::Stores::in_memory();
    let yaml = |service: &str| {
        format!(
            "{UPSTREAM}services:\n  - id: a\n  - id: b\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: up\n    service: {service}\nconsumers:\n  - id: alice\n"
        )
    };
    let spec = load_str(&yaml("a")).expect("parses");
    let first = compile_snapshot(&spec, 1, &states, &stores, &metrics).expect("valid");
    states.adopt(first.upstreams.iter().map(|upstream| upstream.as_ref()));
    let second = compile_snapshot(&spec, 2, &states, &stores, &metrics).expect("valid");
    let series = |snapshot: &Snapshot| snapshot.routes[0].metrics.as_ref().expect("route metrics").series.clone();
    let endpoint = |snapshot: &Snapshot| snapshot.upstreams[0].endpoints[0].metrics.clone().expect("endpoint metrics");
    assert!(Arc::ptr_eq(&series(&first), &series(&second)));
    assert!(Arc::ptr_eq(&endpoint(&first), &endpoint(&second)));
    assert!(second.routes[0].metrics.as_ref().is_some_and(|metrics| metrics.consumers.is_some()));
    let moved = compile_snapshot(&load_str(&yaml("b")).expect("parses"), 3, &states, &stores, &metrics).expect("valid");
    assert!(!Arc::ptr_eq(&series(&first), &series(&moved)));
}

/// The `X-Layer` header each `request_headers` policy of the pipeline selected for `consumer`
/// sets, in running order (`None` without a consumer).
fn layers_for(snapshot: &Snapshot, consumer: Option<&str>) -> Vec<String> {
    use gantry_policy_api::testing::{exchange_from, request_parts, run_request};
    let mut exchange = exchange_from("127.0.0.1:1");
    if let Some(id) = consumer {
        let consumer = Arc::new(gantry_policy_api::Consumer::named(id));
        exchange.authenticate(gantry_policy_api::Identity::credential(consumer, format!("{id}:key").into(), "key"));
    }
    let pipeline = snapshot.routes[0].pipeline.selected(&exchange);
    let mut layers = Vec::new();
    for entry in pipeline.entries().iter().filter(|entry| entry.name == "request_headers") {
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        run_request(&*entry.policy, &mut request, &mut exchange);
        layers.extend(request.headers.get("x-layer").and_then(|value| value.to_str().ok()).map(str::to_owned));
    }
    layers
}

const GROUPS: &str = "consumer_groups:
  - id: gold
    policies:
      - request_headers: {set: {X-Layer: gold}}
      - response_headers: {set: {X-Gold: 'yes'}}
  - id: silver
    policies:
      - request_headers: {set: {X-Layer: silver}}
consumers:
  - id: gold-1
    groups: [gold]
  - id: gold-2
    groups: [gold, staff]
  - id: both
    groups: [gold, silver]
  - id: both-reversed
    groups: [silver, gold]
  - id: own
    groups: [gold]
    policies:
      - request_headers: {set: {X-Layer: own}}
  - id: loner
";

#[test]
fn gives_group_members_the_groups_policies_with_later_groups_and_own_policies_winning() {
    let snapshot = compile(&format!(
        "{UPSTREAM}{GROUPS}routes:\n  - id: r\n    paths: [/x]\n    upstream: up\n    policies:\n      - request_headers: {{set: {{X-Layer: route}}}}\n"
    ))
    .expect("valid");
    assert_eq!(layers_for(&snapshot, None), ["route"]);
    assert_eq!(layers_for(&snapshot, Some("loner")), ["route"], "a consumer in no group keeps the route's");
    assert_eq!(layers_for(&snapshot, Some("gold-1")), ["gold"]);
    assert_eq!(layers_for(&snapshot, Some("gold-2")), ["gold"], "an undeclared group adds nothing");
    assert_eq!(layers_for(&snapshot, Some("both")), ["silver"], "the group listed last wins");
    assert_eq!(layers_for(&snapshot, Some("both-reversed")), ["gold"]);
    assert_eq!(layers_for(&snapshot, Some("own")), ["own"], "the consumer's own policy beats its group's");

    let pipeline = &snapshot.routes[0].pipeline;
    let selected = |id: &str| {
        let mut exchange = gantry_policy_api::testing::exchange_from("127.0.0.1:1");
        let consumer = Arc::new(gantry_policy_api::Consumer::named(id));
        exchange.authenticate(gantry_policy_api::Identity::credential(consumer, "key".into(), "key"));
        let names: Vec<&str> = pipeline.selected(&exchange).entries().iter().map(|entry| entry.name).collect();
        (std::ptr::from_ref(pipeline.selected(&exchange)), names.join(","))
    };
    let (gold_1, names) = selected("gold-1");
    assert_eq!(names, "request_headers,response_headers", "the group's other policy is added");
    assert_eq!(gold_1, selected("gold-2").0, "members with the same policies share one pipeline");
    assert_ne!(gold_1, selected("own").0);
}

#[test]
fn refuses_group_policies_that_run_before_the_consumer_is_known_and_bad_settings_at_their_paths() {
    let errors = compile(&format!(
        "{UPSTREAM}consumer_groups:\n  - id: gold\n    policies:\n      - rate_limit: {{limit: 0, window: 1m}}\n      - key_auth: {{}}\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: up\n"
    ))
    .expect_err("two errors");
    let found: Vec<String> = errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("consumer_groups[gold].policies[0].rate_limit.limit: "), "{found:?}");
    assert!(
        found[1].starts_with("consumer_groups[gold].policies[1].key_auth: `key_auth` runs in the identity stage")
            && found[1].contains("a consumer group can only set policies of later stages"),
        "{found:?}"
    );

    let errors = compile("consumer_groups:\n  - id: gold\n  - id: gold\n    policies:\n      - no_such_policy: {}\n")
        .expect_err("errors");
    let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
    assert_eq!(paths, ["consumer_groups[gold].id", "consumer_groups[gold].policies[0]"], "{errors}");
}

#[test]
fn refuses_consumer_and_group_policies_that_read_the_request_body() {
    let schema = "json_schema: {request: {schema: {type: object}}}";
    let errors = compile(&format!(
        "{UPSTREAM}consumer_groups:\n  - id: gold\n    policies:\n      - {schema}\nconsumers:\n  - id: alice\n    policies:\n      - request_headers: {{set: {{x-a: b}}}}\n      - {schema}\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: up\n    policies:\n      - {schema}\n"
    ))
    .expect_err("two errors");
    let found: Vec<String> = errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("consumer_groups[gold].policies[0].json_schema: `json_schema` reads the request body"),
        "{found:?}"
    );
    assert!(found[1].starts_with("consumers[alice].policies[1].json_schema: "), "{found:?}");
}

#[test]
fn keeps_bulkheads_retry_budgets_and_pools_across_reloads_while_their_settings_stay_the_same() {
    let states = UpstreamStates::default();
    let stores = gantry_state::Stores::in_memory();
    let metrics = TrafficMetrics::disabled();
    let yaml = |max_requests: u32, ratio: f64, idle: &str| {
        format!(
            "{UPSTREAM}    limits: {{max_requests: {max_requests}}}\n    retries: {{budget: {{ratio: {ratio}}}}}\n    idle_timeout: {idle}\nroutes:\n  - id: r\n    paths: [/x]\n    upstream: up\n"
        )
    };
    let compile = |yaml: &str, version| {
        compile_snapshot(&load_str(yaml).expect("parses"), version, &states, &stores, &metrics).expect("valid")
    };
    // What the reloader does once a snapshot is live.
    let go_live = |snapshot: &Snapshot| states.adopt(snapshot.upstreams.iter().map(|upstream| upstream.as_ref()));
    let bulkhead = |snapshot: &Snapshot| snapshot.upstreams[0].bulkhead.clone().expect("a bulkhead");
    let budget = |snapshot: &Snapshot| snapshot.upstreams[0].retry.budget.clone().expect("a budget");
    let shares_pool = |a: &Snapshot, b: &Snapshot| a.upstreams[0].client.shares_pool_with(&b.upstreams[0].client);

    let first = compile(&yaml(2, 0.2, "60s"), 1);
    go_live(&first);
    let same = compile(&yaml(2, 0.2, "60s"), 2);
    go_live(&same);
    assert!(Arc::ptr_eq(&bulkhead(&first), &bulkhead(&same)));
    assert!(Arc::ptr_eq(&budget(&first), &budget(&same)));
    assert!(shares_pool(&first, &same));

    // A candidate that is compiled but never goes live (refused, or not saved) changes nothing
    // kept: the next reload with the running settings still finds the running state.
    let refused = compile(&yaml(3, 0.5, "30s"), 3);
    assert!(!Arc::ptr_eq(&bulkhead(&first), &bulkhead(&refused)));
    assert!(!Arc::ptr_eq(&budget(&first), &budget(&refused)));
    assert!(!shares_pool(&first, &refused));
    let after_refusal = compile(&yaml(2, 0.2, "60s"), 3);
    assert!(Arc::ptr_eq(&bulkhead(&first), &bulkhead(&after_refusal)));
    assert!(Arc::ptr_eq(&budget(&first), &budget(&after_refusal)));
    assert!(shares_pool(&first, &after_refusal));

    let changed = compile(&yaml(3, 0.5, "30s"), 4);
    go_live(&changed);
    assert!(!Arc::ptr_eq(&bulkhead(&first), &bulkhead(&changed)));
    let unbounded = compile(&format!("{UPSTREAM}routes:\n  - id: r\n    paths: [/x]\n    upstream: up\n"), 5);
    assert!(unbounded.upstreams[0].bulkhead.is_none() && unbounded.upstreams[0].retry.budget.is_none());
}

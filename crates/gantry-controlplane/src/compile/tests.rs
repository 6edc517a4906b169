use gantry_config::load_str;

use super::*;

fn compile(yaml: &str) -> Result<Snapshot, ConfigErrors> {
    let spec = load_str(yaml).expect("test YAML parses");
    compile_snapshot(&spec, 1, &UpstreamStates::default(), &gantry_state::Stores::in_memory())
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
    let first = compile_snapshot(&spec, 1, &states, &gantry_state::Stores::in_memory()).expect("valid");
    let second = compile_snapshot(&spec, 2, &states, &gantry_state::Stores::in_memory()).expect("valid");
    assert!(std::sync::Arc::ptr_eq(&first.upstreams[0].endpoints[0].state, &second.upstreams[0].endpoints[0].state));
}

//! Checks that need more than one field: unique ids, references between resources, path,
//! host and regex syntax, addresses. All problems are collected, none stops the others.
//! Each policy's own settings are checked by the policy registry, not here.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::{ConfigErrors, FieldPath, GatewaySpec, MetricsSpec, NodeSpec, RouteSpec, UpstreamSpec, ValueMatchSpec};

/// Every problem in `spec` that the spec alone can reveal.
pub fn validate_spec(spec: &GatewaySpec) -> ConfigErrors {
    let mut errors = ConfigErrors::default();
    let root = FieldPath::root();
    if let Some(node) = &spec.node {
        validate_node(node, &root.key("node"), &mut errors);
        if node.cluster.is_some() {
            refuse_resources_beside_a_cluster(spec, &mut errors);
        }
    }
    let upstream_ids = unique_ids(spec.upstreams.iter().map(|u| u.id.as_str()), "upstreams", &mut errors);
    let service_ids = unique_ids(spec.services.iter().map(|s| s.id.as_str()), "services", &mut errors);
    let set_ids = unique_ids(spec.policy_sets.iter().map(|s| s.id.as_str()), "policy_sets", &mut errors);
    unique_ids(spec.routes.iter().map(|r| r.id.as_str()), "routes", &mut errors);
    unique_ids(spec.consumers.iter().map(|c| c.id.as_str()), "consumers", &mut errors);
    unique_ids(spec.consumer_groups.iter().map(|g| g.id.as_str()), "consumer_groups", &mut errors);

    for (index, upstream) in spec.upstreams.iter().enumerate() {
        validate_upstream(upstream, &root.key("upstreams").item(index, &upstream.id), &mut errors);
    }
    for (index, service) in spec.services.iter().enumerate() {
        let path = root.key("services").item(index, &service.id);
        if let Some(upstream) = &service.upstream {
            if !upstream_ids.contains(upstream.as_str()) {
                errors.push(path.key("upstream"), format!("unknown upstream `{upstream}`"));
            }
        }
    }
    for (index, route) in spec.routes.iter().enumerate() {
        let path = root.key("routes").item(index, &route.id);
        validate_route(route, &path, &mut errors);
        if let Some(service) = &route.service {
            if !service_ids.contains(service.as_str()) {
                errors.push(path.key("service"), format!("unknown service `{service}`"));
            }
        }
        if let Some(upstream) = &route.upstream {
            if !upstream_ids.contains(upstream.as_str()) {
                errors.push(path.key("upstream"), format!("unknown upstream `{upstream}`"));
            }
        }
        for (set_index, set) in route.policy_sets.iter().enumerate() {
            if !set_ids.contains(set.as_str()) {
                errors.push(path.key("policy_sets").index(set_index), format!("unknown policy set `{set}`"));
            }
        }
    }
    for (index, consumer) in spec.consumers.iter().enumerate() {
        let path = root.key("consumers").item(index, &consumer.id);
        for (group_index, group) in consumer.groups.iter().enumerate() {
            if group.trim().is_empty() {
                errors.push(path.key("groups").index(group_index), "a group name cannot be empty");
            }
        }
    }
    errors
}

/// Checks ids are well formed and unique within one list; returns the set of ids.
fn unique_ids<'a>(ids: impl Iterator<Item = &'a str>, list: &str, errors: &mut ConfigErrors) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (index, id) in ids.enumerate() {
        let path = FieldPath::root().key(list).item(index, id).key("id");
        if let Err(reason) = check_id(id) {
            errors.push(path, reason);
        } else if !seen.insert(id) {
            errors.push(path, format!("duplicate id `{id}` in {list}"));
        }
    }
    seen
}

/// An id is 1 to 64 characters from `A-Z a-z 0-9 . _ -`, so it is safe in URLs, file names and logs.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("an id must be 1 to 64 characters long".to_owned());
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("`{bad}` is not allowed in an id: use letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

fn validate_node(node: &NodeSpec, path: &FieldPath, errors: &mut ConfigErrors) {
    if node.listeners.is_empty() {
        errors.push(path.key("listeners"), "at least one listener is needed");
    }
    for (index, listener) in node.listeners.iter().enumerate() {
        let at = path.key("listeners").index(index);
        check_socket_address(&listener.address, &at.key("address"), errors);
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                errors.push(at.key("tls").key("certificates"), "TLS needs at least one certificate");
            }
        }
    }
    if let Some(admin) = &node.admin {
        check_socket_address(&admin.address, &path.key("admin").key("address"), errors);
        if let Some(key) = &admin.api_key {
            if key.expose().len() < 16 {
                errors.push(path.key("admin").key("api_key"), "the admin API key must be at least 16 characters long");
            }
        }
    }
    if let Some(address) = &node.demo_upstream {
        check_socket_address(address, &path.key("demo_upstream"), errors);
    }
    if node.limits.max_header_bytes < 1024 {
        errors.push(path.key("limits").key("max_header_bytes"), "must be at least 1024");
    }
    if node.limits.max_headers == 0 {
        errors.push(path.key("limits").key("max_headers"), "must be at least 1");
    }
    if node.worker_threads == Some(0) {
        errors.push(path.key("worker_threads"), "must be at least 1 (leave it out for one per core)");
    }
    if let Some(log) = &node.access_log {
        log.validate(&path.key("access_log"), errors);
    }
    validate_metrics(&node.metrics, &path.key("metrics"), errors);
    if let Some(tracing) = &node.tracing {
        crate::spec::validate_tracing(tracing, &path.key("tracing"), errors);
    }
    if let Some(cluster) = &node.cluster {
        cluster.validate(&path.key("cluster"), errors);
    }
}

/// In cluster mode etcd holds the resources; a file holding some too would leave two sources
/// of truth, one of which every other node ignores.
fn refuse_resources_beside_a_cluster(spec: &GatewaySpec, errors: &mut ConfigErrors) {
    let lists = [
        ("routes", spec.routes.is_empty()),
        ("services", spec.services.is_empty()),
        ("upstreams", spec.upstreams.is_empty()),
        ("consumers", spec.consumers.is_empty()),
        ("consumer_groups", spec.consumer_groups.is_empty()),
        ("policy_sets", spec.policy_sets.is_empty()),
        ("global_policies", spec.global_policies.is_empty()),
    ];
    for (kind, empty) in lists {
        if !empty {
            errors.push(
                FieldPath::root().key(kind),
                "with `node.cluster`, resources live in etcd: write them through the admin API of any node, and keep only `node` in the file",
            );
        }
    }
}

/// Most buckets a histogram may have: each adds a series to every route and endpoint.
const MAX_HISTOGRAM_BUCKETS: usize = 30;
/// Most consumers counted apart: each adds series, and token-described consumers are unbounded.
const MAX_COUNTED_CONSUMERS: usize = 10_000;

fn validate_metrics(metrics: &MetricsSpec, path: &FieldPath, errors: &mut ConfigErrors) {
    if !(1..=MAX_COUNTED_CONSUMERS).contains(&metrics.max_consumers) {
        errors.push(path.key("max_consumers"), format!("must be between 1 and {MAX_COUNTED_CONSUMERS}"));
    }
    for (name, buckets) in
        [("duration_buckets", &metrics.duration_buckets), ("overhead_buckets", &metrics.overhead_buckets)]
    {
        let at = path.key(name);
        if !(1..=MAX_HISTOGRAM_BUCKETS).contains(&buckets.len()) {
            errors.push(at.clone(), format!("give between 1 and {MAX_HISTOGRAM_BUCKETS} bucket bounds"));
        }
        for (index, bound) in buckets.iter().enumerate() {
            if bound.get().is_zero() {
                errors.push(at.index(index), "a bucket bound must be longer than zero");
            } else if index > 0 && *bound <= buckets[index - 1] {
                errors.push(at.index(index), "bucket bounds must increase");
            }
        }
    }
}

fn check_socket_address(address: &str, path: &FieldPath, errors: &mut ConfigErrors) {
    if address.parse::<SocketAddr>().is_err() {
        errors.push(path.clone(), format!("`{address}` is not an `ip:port` address"));
    }
}

fn validate_route(route: &RouteSpec, path: &FieldPath, errors: &mut ConfigErrors) {
    if route.paths.is_empty() {
        errors.push(path.key("paths"), "a route needs at least one path");
    }
    for (index, route_path) in route.paths.iter().enumerate() {
        if let Err(reason) = check_route_path(route_path) {
            errors.push(path.key("paths").index(index), reason);
        }
    }
    for (index, host) in route.hosts.iter().enumerate() {
        if let Err(reason) = check_host_pattern(host) {
            errors.push(path.key("hosts").index(index), reason);
        }
    }
    for (index, method) in route.methods.iter().enumerate() {
        let is_token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
        if !is_token {
            errors.push(path.key("methods").index(index), format!("`{method}` is not an upper-case method name"));
        }
    }
    for (index, condition) in route.headers.iter().enumerate() {
        check_value_match(condition, &path.key("headers").index(index), true, errors);
    }
    for (index, condition) in route.query.iter().enumerate() {
        check_value_match(condition, &path.key("query").index(index), false, errors);
    }
    if let Some(rewrite) = &route.rewrite {
        let at = path.key("rewrite");
        match (&rewrite.regex, &rewrite.replacement) {
            (Some(pattern), Some(_)) => {
                if let Err(err) = regex::Regex::new(pattern) {
                    errors.push(at.key("regex"), format!("invalid regular expression: {err}"));
                }
            }
            (Some(_), None) => errors.push(at.key("replacement"), "`regex` needs a `replacement`"),
            (None, Some(_)) => errors.push(at.key("regex"), "`replacement` needs a `regex`"),
            (None, None) => {}
        }
        for (field, prefix) in [("strip_prefix", &rewrite.strip_prefix), ("add_prefix", &rewrite.add_prefix)] {
            if let Some(prefix) = prefix {
                if !prefix.starts_with('/') {
                    errors.push(at.key(field), "a path prefix starts with `/`");
                }
            }
        }
    }
}

/// Checks one route path: `/exact`, `/prefix/*`, `/users/{id}`, `/files/{*rest}` or `~regex`.
pub fn check_route_path(path: &str) -> Result<(), String> {
    if let Some(pattern) = path.strip_prefix('~') {
        return regex::Regex::new(pattern).map(|_| ()).map_err(|err| format!("invalid regular expression: {err}"));
    }
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/` (or `~` for a regular expression)"));
    }
    let body = path.strip_suffix('*').unwrap_or(path);
    if body.contains('*') && !body.contains("{*") {
        return Err("`*` is allowed only at the end of a prefix path (`/api/*`) or as `{*name}`".to_owned());
    }
    let mut depth = 0usize;
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Err("unbalanced `}` in path template".to_owned()),
            '}' => depth -= 1,
            _ => {}
        }
        if depth > 1 {
            return Err("nested `{` in path template".to_owned());
        }
    }
    if depth != 0 {
        return Err("unclosed `{` in path template".to_owned());
    }
    if path.ends_with('*') && path.contains('{') {
        return Err(
            "a path is either a template or a prefix (`/*`), not both: use `{*rest}` for the remainder".to_owned()
        );
    }
    Ok(())
}

/// Checks a host pattern: a name, or `*.` followed by a name.
pub fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
        && !name.contains('*');
    if valid {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name or `*.domain` pattern"))
    }
}

fn check_value_match(condition: &ValueMatchSpec, path: &FieldPath, is_header: bool, errors: &mut ConfigErrors) {
    let given = [condition.exact.is_some(), condition.regex.is_some(), condition.present.is_some()]
        .iter()
        .filter(|set| **set)
        .count();
    if given != 1 {
        errors.push(path.clone(), "give exactly one of `exact`, `regex` or `present`");
    }
    if is_header && http_header_name_invalid(&condition.name) {
        errors.push(path.key("name"), format!("`{}` is not a valid header name", condition.name));
    }
    if let Some(pattern) = &condition.regex {
        if let Err(err) = regex::Regex::new(pattern) {
            errors.push(path.key("regex"), format!("invalid regular expression: {err}"));
        }
    }
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_upstream(upstream: &UpstreamSpec, path: &FieldPath, errors: &mut ConfigErrors) {
    if upstream.endpoints.is_empty() {
        errors.push(path.key("endpoints"), "an upstream needs at least one endpoint");
    }
    for (index, endpoint) in upstream.endpoints.iter().enumerate() {
        if let Err(reason) = check_endpoint_address(&endpoint.address) {
            errors.push(path.key("endpoints").index(index).key("address"), reason);
        }
    }
    if !upstream.endpoints.is_empty() && upstream.endpoints.iter().all(|e| e.weight == 0) {
        errors.push(path.key("endpoints"), "at least one endpoint needs a weight above 0");
    }
    for (index, status) in upstream.retries.on_statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            errors.push(path.key("retries").key("on_statuses").index(index), format!("{status} is not an HTTP status"));
        }
    }
    if upstream.retries.attempts > 10 {
        errors.push(path.key("retries").key("attempts"), "at most 10 retries");
    }
    if let Some(budget) = &upstream.retries.budget {
        let at = path.key("retries").key("budget");
        if !(0.0..=1.0).contains(&budget.ratio) {
            errors.push(at.key("ratio"), "must be from 0 to 1");
        }
        if !(0.0..=1_000_000.0).contains(&budget.min_per_second) {
            errors.push(at.key("min_per_second"), "must be from 0 to 1000000");
        }
    }
    if let Some(limits) = &upstream.limits {
        let at = path.key("limits");
        if limits.max_requests == 0 {
            errors.push(at.key("max_requests"), "must be at least 1");
        }
        // tokio's semaphore holds at most `usize::MAX >> 3` permits; far beyond any real bound.
        if limits.max_requests > 1_000_000 {
            errors.push(at.key("max_requests"), "at most 1000000");
        }
        if limits.max_pending > 0 && limits.pending_timeout.get().is_zero() {
            errors.push(at.key("pending_timeout"), "must be more than 0 when requests may wait");
        }
    }
    if upstream.timeouts.connect.get().is_zero() {
        errors.push(path.key("timeouts").key("connect"), "must be more than 0");
    }
    if upstream.timeouts.read.get().is_zero() {
        errors.push(path.key("timeouts").key("read"), "must be more than 0");
    }
    if let Some(check) = &upstream.health_check {
        let at = path.key("health_check");
        if let Some(active) = &check.active {
            let at = at.key("active");
            if !active.path.starts_with('/') {
                errors.push(at.key("path"), "a probe path starts with `/`");
            }
            if active.interval.get().is_zero() {
                errors.push(at.key("interval"), "must be more than 0");
            }
            if active.healthy_threshold == 0 {
                errors.push(at.key("healthy_threshold"), "must be at least 1");
            }
            if active.unhealthy_threshold == 0 {
                errors.push(at.key("unhealthy_threshold"), "must be at least 1");
            }
        }
        if let Some(passive) = &check.passive {
            if passive.max_failures == 0 {
                errors.push(at.key("passive").key("max_failures"), "must be at least 1");
            }
        }
    }
    let has_client_cert = upstream.tls.as_ref().is_some_and(|tls| tls.client_cert_file.is_some());
    let has_client_key = upstream.tls.as_ref().is_some_and(|tls| tls.client_key_file.is_some());
    if has_client_cert != has_client_key {
        errors.push(path.key("tls"), "`client_cert_file` and `client_key_file` go together");
    }
}

/// An endpoint address is `host:port` with a port from 1 to 65535.
pub fn check_endpoint_address(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` is not `host:port`"));
    };
    if host.is_empty() || check_host_pattern(host).is_err() || host.starts_with("*.") {
        return Err(format!("`{host}` is not a host name or IP address"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("`{port}` is not a port number from 1 to 65535")),
    }
}

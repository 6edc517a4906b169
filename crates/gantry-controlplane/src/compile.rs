//! Spec to snapshot: resolves references, builds policies through the registry, orders
//! them by precedence, compiles matchers and upstreams. Every error is collected with its path.
//!
//! Policy precedence, applied here once and never per request: global, then service, then
//! policy sets (in listed order), then the route's own. A later entry for the same policy
//! name replaces the earlier one, so a route can override a global setting. A recognised
//! consumer's policies come last: those of its groups (in the order it lists them), then its
//! own, with the same rule among them.

use std::collections::HashMap;
use std::sync::Arc;

use gantry_config::{
    validate::validate_spec, ConfigErrors, FieldPath, GatewaySpec, HostHeaderSpec, PolicySpec, RouteSpec, UpstreamSpec,
    ValueMatchSpec,
};
use gantry_dataplane::metrics::traffic::{RouteMetrics, TrafficMetrics};
use gantry_dataplane::pipeline::{ConsumerPolicies, Pipeline, PipelineEntry};
use gantry_dataplane::route::{CompiledRoute, Conditions, PathRewrite, ValueCondition, ValueRule};
use gantry_dataplane::router::RouterBuilder;
use gantry_dataplane::upstream::bulkhead::BulkheadSettings;
use gantry_dataplane::upstream::client::ClientSettings;
use gantry_dataplane::upstream::health::ActiveHealthCheck;
use gantry_dataplane::upstream::retry_budget::RetryBudgetSettings;
use gantry_dataplane::upstream::{
    Balancer, CompiledUpstream, Endpoint, HostHeader, PassiveHealth, RetryPolicy, Timeouts, UpstreamStates,
};
use gantry_dataplane::Snapshot;
use gantry_policy_api::{BuildContext, ConsumerDirectory, Stage};
use gantry_state::Stores;
use http::{HeaderName, HeaderValue, Method, StatusCode};

/// Checks and compiles `spec` into generation `generation`. Upstream state (endpoint
/// health, connection pools) is taken from `states`, policies keep their counters in
/// `stores`, and routes and endpoints get their request metrics from `metrics` (the series
/// they had when their ids are unchanged), so all of it survives the swap.
pub fn compile_snapshot(
    spec: &GatewaySpec,
    generation: u64,
    states: &UpstreamStates,
    stores: &Stores,
    metrics: &TrafficMetrics,
) -> Result<Snapshot, ConfigErrors> {
    let mut errors = validate_spec(spec);
    let consumers = ConsumerDirectory::build(spec, &gantry_policies::registry::find, &mut errors);
    if !errors.is_empty() {
        check_policies(spec, &consumers, stores, &mut errors);
        return Err(errors);
    }
    let context = BuildContext::new(spec, &consumers).with_stores(stores);
    let root = FieldPath::root();

    let mut upstreams: HashMap<&str, Arc<CompiledUpstream>> = HashMap::new();
    let mut upstream_list = Vec::with_capacity(spec.upstreams.len());
    for (index, upstream) in spec.upstreams.iter().enumerate() {
        let path = root.key("upstreams").item(index, &upstream.id);
        match compile_upstream(upstream, &path, states, metrics) {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                upstreams.insert(upstream.id.as_str(), compiled.clone());
                upstream_list.push(compiled);
            }
            Err(more) => errors.extend(more.0),
        }
    }

    let global = build_policies(&spec.global_policies, &root.key("global_policies"), &context, &mut errors);
    let services: HashMap<&str, (usize, Vec<PipelineEntry>)> = spec
        .services
        .iter()
        .enumerate()
        .map(|(index, service)| {
            let path = root.key("services").item(index, &service.id).key("policies");
            (service.id.as_str(), (index, build_policies(&service.policies, &path, &context, &mut errors)))
        })
        .collect();
    let policy_sets: HashMap<&str, Vec<PipelineEntry>> = spec
        .policy_sets
        .iter()
        .enumerate()
        .map(|(index, set)| {
            let path = root.key("policy_sets").item(index, &set.id).key("policies");
            (set.id.as_str(), build_policies(&set.policies, &path, &context, &mut errors))
        })
        .collect();
    let consumer_policies = build_consumer_policies(spec, &context, &mut errors);
    let consumer_metrics = metrics.consumer_table(spec.consumers.iter().map(|consumer| consumer.id.as_str()));

    let mut router = RouterBuilder::default();
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (index, route) in spec.routes.iter().enumerate() {
        let path = root.key("routes").item(index, &route.id);
        let service = route.service.as_deref().and_then(|id| services.get(id));
        let mut entries: Vec<PipelineEntry> = global.clone();
        if let Some((_, service_entries)) = service {
            layer(&mut entries, service_entries);
        }
        for set in &route.policy_sets {
            if let Some(set_entries) = policy_sets.get(set.as_str()) {
                layer(&mut entries, set_entries);
            }
        }
        let own = build_policies(&route.policies, &path.key("policies"), &context, &mut errors);
        layer(&mut entries, &own);

        let upstream_id = route.upstream.as_deref().or_else(|| {
            route.service.as_deref().and_then(|id| spec.services.iter().find(|s| s.id == id)?.upstream.as_deref())
        });
        let upstream = upstream_id.and_then(|id| upstreams.get(id).cloned());
        let has_terminal = entries.iter().any(|entry| entry.policy.answers_every_request());
        if upstream_id.is_none() && !has_terminal {
            errors.push(
                path.clone(),
                "the route has no upstream: set `upstream`, use a `service` that has one, or add a policy that answers itself (such as `mock_response`)",
            );
        }
        let pipeline = Pipeline::new(entries).with_consumer_policies(&consumer_policies);
        let id: Arc<str> = route.id.as_str().into();
        let route_metrics = metrics.route(&id, route.service.as_deref(), consumer_metrics.clone());
        let compiled = match compile_route(route, id, index, &path, upstream, pipeline, route_metrics) {
            Ok(compiled) => Arc::new(compiled),
            Err(more) => {
                errors.extend(more.0);
                continue;
            }
        };
        router.add(compiled.clone(), &route.hosts, &route.paths);
        routes.push(compiled);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let router = router.build().map_err(|err| {
        let index = spec.routes.iter().position(|route| *route.id == *err.route).unwrap_or(0);
        let path_index =
            spec.routes.get(index).and_then(|route| route.paths.iter().position(|p| *p == err.path)).unwrap_or(0);
        ConfigErrors::one(
            root.key("routes").item(index, &err.route).key("paths").index(path_index),
            format!("clashes with another route's path template: {}", err.reason),
        )
    })?;
    Ok(Snapshot::new(generation, router, routes, upstream_list))
}

/// Builds every policy of an inconsistent `spec` only to collect its errors, so one pass
/// reports bad policy settings next to missing references and duplicate ids.
fn check_policies(spec: &GatewaySpec, consumers: &ConsumerDirectory, stores: &Stores, errors: &mut ConfigErrors) {
    let context = BuildContext::new(spec, consumers).with_stores(stores);
    let root = FieldPath::root();
    build_policies(&spec.global_policies, &root.key("global_policies"), &context, errors);
    for (index, service) in spec.services.iter().enumerate() {
        let path = root.key("services").item(index, &service.id).key("policies");
        build_policies(&service.policies, &path, &context, errors);
    }
    for (index, set) in spec.policy_sets.iter().enumerate() {
        let path = root.key("policy_sets").item(index, &set.id).key("policies");
        build_policies(&set.policies, &path, &context, errors);
    }
    build_consumer_policies(spec, &context, errors);
    for (index, route) in spec.routes.iter().enumerate() {
        let path = root.key("routes").item(index, &route.id).key("policies");
        build_policies(&route.policies, &path, &context, errors);
    }
}

/// Builds each consumer's policies, which replace a route's policy of the same name once the
/// consumer is recognised: its groups' policies, in the order it lists its groups, then its own,
/// a later one replacing an earlier one of the same name. A group's policies are built once and
/// shared by its members, so a limit there counts its members together unless its key tells
/// them apart. They can only run after the identity stage, when the consumer is known.
fn build_consumer_policies(
    spec: &GatewaySpec,
    context: &BuildContext<'_>,
    errors: &mut ConfigErrors,
) -> ConsumerPolicies {
    let root = FieldPath::root();
    let mut groups: HashMap<&str, Vec<PipelineEntry>> = HashMap::with_capacity(spec.consumer_groups.len());
    for (index, group) in spec.consumer_groups.iter().enumerate() {
        let path = root.key("consumer_groups").item(index, &group.id).key("policies");
        let entries = build_policies(&group.policies, &path, context, errors);
        refuse_before_identity(&group.policies, &path, "a consumer group", errors);
        refuse_body_readers(&group.policies, &entries, &path, "a consumer group", errors);
        groups.insert(group.id.as_str(), entries);
    }
    let mut consumer_policies = ConsumerPolicies::default();
    for (index, consumer) in spec.consumers.iter().enumerate() {
        let path = root.key("consumers").item(index, &consumer.id).key("policies");
        let own = build_policies(&consumer.policies, &path, context, errors);
        refuse_before_identity(&consumer.policies, &path, "a consumer", errors);
        refuse_body_readers(&consumer.policies, &own, &path, "a consumer", errors);
        let mut entries = Vec::new();
        for group in &consumer.groups {
            if let Some(group_entries) = groups.get(group.as_str()) {
                layer(&mut entries, group_entries);
            }
        }
        layer(&mut entries, &own);
        consumer_policies.insert(Arc::from(consumer.id.as_str()), entries);
    }
    consumer_policies
}

/// Consumer and group policies run once the consumer is known, so none may belong to the
/// identity stage or an earlier one.
fn refuse_before_identity(policies: &[PolicySpec], path: &FieldPath, owner: &str, errors: &mut ConfigErrors) {
    for (index, policy) in policies.iter().enumerate() {
        let Some(registered) = gantry_policies::registry::find(&policy.name) else { continue };
        if registered.stage <= Stage::Identity {
            errors.push(
                path.index(index).key(registered.name),
                format!(
                    "`{}` runs in the {} stage, before the consumer is known: {owner} can only set policies of later stages",
                    registered.name,
                    registered.stage.name()
                ),
            );
        }
    }
}

/// A request body a policy checks is read before the request hooks run, so before the
/// consumer is known: only the route's policies can ask for it. Accepting such a policy from a
/// consumer or group would silently never check anything.
fn refuse_body_readers(
    policies: &[PolicySpec],
    built: &[PipelineEntry],
    path: &FieldPath,
    owner: &str,
    errors: &mut ConfigErrors,
) {
    for (index, policy) in policies.iter().enumerate() {
        let reads_body = built.iter().any(|entry| entry.name == policy.name && entry.policy.reads_request_body());
        if reads_body {
            errors.push(
                path.index(index).key(&policy.name),
                format!(
                    "`{}` reads the request body, which is read before the consumer is known: {owner} cannot set it; attach it to the route, its service or a policy set",
                    policy.name
                ),
            );
        }
    }
}

/// Adds `later` to `entries`; an entry for a policy already present replaces it.
fn layer(entries: &mut Vec<PipelineEntry>, later: &[PipelineEntry]) {
    for entry in later {
        entries.retain(|existing| existing.name != entry.name);
        entries.push(entry.clone());
    }
}

fn build_policies(
    policies: &[PolicySpec],
    path: &FieldPath,
    context: &BuildContext<'_>,
    errors: &mut ConfigErrors,
) -> Vec<PipelineEntry> {
    let mut entries = Vec::with_capacity(policies.len());
    for (index, policy) in policies.iter().enumerate() {
        let at = path.index(index).key(&policy.name);
        let Some(registered) = gantry_policies::registry::find(&policy.name) else {
            let known: Vec<&str> = gantry_policies::registry::all().iter().map(|p| p.name).collect();
            errors.push(
                path.index(index),
                format!("unknown policy `{}`; known policies: {}", policy.name, known.join(", ")),
            );
            continue;
        };
        match registered.build(&policy.config, &at, context) {
            Ok(built) => entries.push(PipelineEntry { name: registered.name, stage: registered.stage, policy: built }),
            Err(more) => errors.extend(more.0),
        }
    }
    entries
}

fn compile_route(
    route: &RouteSpec,
    id: Arc<str>,
    order: usize,
    path: &FieldPath,
    upstream: Option<Arc<CompiledUpstream>>,
    pipeline: Pipeline,
    metrics: Option<RouteMetrics>,
) -> Result<CompiledRoute, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut methods = Vec::with_capacity(route.methods.len());
    for (index, method) in route.methods.iter().enumerate() {
        match Method::from_bytes(method.as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => errors.push(path.key("methods").index(index), format!("`{method}` is not a method")),
        }
    }
    let mut headers = Vec::with_capacity(route.headers.len());
    for (index, condition) in route.headers.iter().enumerate() {
        let at = path.key("headers").index(index);
        match HeaderName::from_bytes(condition.name.as_bytes()) {
            Ok(name) => {
                if let Some(rule) = compile_rule(condition, &at, &mut errors) {
                    headers.push(ValueCondition { name, rule, invert: condition.invert });
                }
            }
            Err(_) => errors.push(at.key("name"), "not a valid header name"),
        }
    }
    let mut query = Vec::with_capacity(route.query.len());
    for (index, condition) in route.query.iter().enumerate() {
        let at = path.key("query").index(index);
        if let Some(rule) = compile_rule(condition, &at, &mut errors) {
            query.push(ValueCondition { name: condition.name.clone(), rule, invert: condition.invert });
        }
    }
    let rewrite = route.rewrite.as_ref().map(|rewrite| PathRewrite {
        regex: rewrite.regex.as_ref().zip(rewrite.replacement.as_ref()).and_then(|(pattern, replacement)| {
            regex::Regex::new(pattern).ok().map(|regex| (regex, replacement.clone()))
        }),
        strip_prefix: rewrite.strip_prefix.clone(),
        add_prefix: rewrite.add_prefix.clone(),
    });
    errors.into_result(CompiledRoute {
        id,
        service: route.service.as_deref().map(Arc::from),
        conditions: Conditions { methods, headers, query },
        priority: route.priority,
        order,
        upstream,
        rewrite,
        pipeline,
        metrics,
    })
}

fn compile_rule(condition: &ValueMatchSpec, path: &FieldPath, errors: &mut ConfigErrors) -> Option<ValueRule> {
    if let Some(exact) = &condition.exact {
        return Some(ValueRule::Exact(exact.clone()));
    }
    if let Some(pattern) = &condition.regex {
        return match regex::Regex::new(pattern) {
            Ok(regex) => Some(ValueRule::Regex(regex)),
            Err(err) => {
                errors.push(path.key("regex"), format!("invalid regular expression: {err}"));
                None
            }
        };
    }
    condition.present.map(ValueRule::Present)
}

fn compile_upstream(
    spec: &UpstreamSpec,
    path: &FieldPath,
    states: &UpstreamStates,
    metrics: &TrafficMetrics,
) -> Result<CompiledUpstream, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let id: Arc<str> = spec.id.as_str().into();
    let mut endpoints = Vec::with_capacity(spec.endpoints.len());
    for (index, endpoint) in spec.endpoints.iter().enumerate() {
        let address: Arc<str> = endpoint.address.as_str().into();
        match endpoint.address.parse() {
            Ok(authority) => {
                let state = states.endpoint(&id, &address);
                endpoints.push(Endpoint {
                    metrics: metrics.endpoint(&id, &address, &state),
                    state,
                    address,
                    authority,
                    weight: endpoint.weight,
                    pool: Default::default(),
                });
            }
            Err(_) => errors.push(path.key("endpoints").index(index).key("address"), "not a valid `host:port`"),
        }
    }
    let balancer = Balancer::new(&spec.load_balancer, &endpoints)
        .map_err(|reason| ConfigErrors::one(path.key("load_balancer"), reason));
    let statuses = |list: &[u16], at: FieldPath, errors: &mut ConfigErrors| -> Vec<StatusCode> {
        list.iter()
            .enumerate()
            .filter_map(|(index, status)| match StatusCode::from_u16(*status) {
                Ok(status) => Some(status),
                Err(_) => {
                    errors.push(at.index(index), format!("{status} is not an HTTP status"));
                    None
                }
            })
            .collect()
    };
    let mut retry_methods = Vec::with_capacity(spec.retries.methods.len());
    for (index, method) in spec.retries.methods.iter().enumerate() {
        match Method::from_bytes(method.as_bytes()) {
            Ok(method) => retry_methods.push(method),
            Err(_) => {
                errors.push(path.key("retries").key("methods").index(index), format!("`{method}` is not a method"))
            }
        }
    }
    let retry = RetryPolicy {
        attempts: spec.retries.attempts,
        backoff: spec.retries.backoff.get(),
        max_backoff: spec.retries.max_backoff.get(),
        on_statuses: statuses(&spec.retries.on_statuses, path.key("retries").key("on_statuses"), &mut errors),
        methods: retry_methods,
        budget: spec.retries.budget.as_ref().map(|budget| {
            states.retry_budget(&id, RetryBudgetSettings { ratio: budget.ratio, min_per_second: budget.min_per_second })
        }),
    };
    let bulkhead = spec.limits.as_ref().map(|limits| {
        states.bulkhead(
            &id,
            BulkheadSettings {
                max_requests: limits.max_requests,
                max_pending: limits.max_pending,
                pending_timeout: limits.pending_timeout.get(),
            },
        )
    });
    let checks = spec.health_check.as_ref();
    let passive = checks.and_then(|check| check.passive.as_ref()).map(|passive| PassiveHealth {
        max_failures: passive.max_failures,
        ejection: passive.ejection.get(),
        failure_statuses: statuses(
            &passive.failure_statuses,
            path.key("health_check").key("passive").key("failure_statuses"),
            &mut errors,
        ),
    });
    let active = checks.and_then(|check| check.active.as_ref()).map(|active| ActiveHealthCheck {
        path: active.path.clone(),
        interval: active.interval.get(),
        timeout: active.timeout.get(),
        healthy_threshold: active.healthy_threshold,
        unhealthy_threshold: active.unhealthy_threshold,
        healthy_statuses: active.healthy_statuses.clone(),
    });
    let host_header = match &spec.host_header {
        HostHeaderSpec::Pass => HostHeader::Pass,
        HostHeaderSpec::Endpoint => HostHeader::Endpoint,
        HostHeaderSpec::Rewrite(value) => match HeaderValue::from_str(value) {
            Ok(value) => HostHeader::Rewrite(value),
            Err(_) => {
                errors.push(path.key("host_header").key("rewrite"), "not a valid header value");
                HostHeader::Pass
            }
        },
    };
    let tls = spec.tls.clone().unwrap_or_default();
    let settings = ClientSettings {
        scheme: spec.scheme,
        connect_timeout: spec.timeouts.connect.get(),
        max_idle_per_endpoint: spec.max_idle_connections,
        idle_timeout: spec.idle_timeout.get(),
        ca_file: tls.ca_file,
        client_identity: tls.client_cert_file.zip(tls.client_key_file),
        server_name: tls.server_name,
    };
    let client = states.client(&id, settings).map_err(|err| ConfigErrors::one(path.key("tls"), err.to_string()));
    let (balancer, client) = match (balancer, client) {
        (Ok(balancer), Ok(client)) => (balancer, client),
        (balancer, client) => {
            if let Err(more) = balancer {
                errors.extend(more.0);
            }
            if let Err(more) = client {
                errors.extend(more.0);
            }
            return Err(errors);
        }
    };
    let upstream_metrics = if bulkhead.is_some() || retry.budget.is_some() { metrics.upstream(&id) } else { None };
    errors.into_result(CompiledUpstream {
        id,
        scheme: spec.scheme,
        endpoints,
        balancer,
        timeouts: Timeouts {
            connect: spec.timeouts.connect.get(),
            read: spec.timeouts.read.get(),
            total: spec.timeouts.total.map(|t| t.get()),
        },
        retry,
        passive,
        active,
        host_header,
        client,
        metrics: upstream_metrics,
        bulkhead,
    })
}

#[cfg(test)]
mod tests;

//! The resource kinds of the admin API: where each list lives and what refers to what. The
//! CRUD itself is generic (`resource.rs`); adding a kind is one impl here and one line in
//! [`for_each_kind`].

use gantry_config::secret::REDACTED;
use gantry_config::{
    ConfigErrors, ConsumerGroupSpec, ConsumerSpec, FieldPath, GatewaySpec, PolicySetSpec, ResourceKind, RouteSpec,
    ServiceSpec, UpstreamSpec,
};

use super::resource::ConfigResource;

/// Something done once per resource kind (registering endpoints, describing them).
pub trait KindVisitor {
    /// Called with each kind.
    fn visit<K: ConfigResource>(&mut self);
}

/// Calls `visitor` with every resource kind, in configuration order: the one list of kinds
/// the router, the OpenAPI document and the tests all use.
pub fn for_each_kind(visitor: &mut impl KindVisitor) {
    visitor.visit::<RouteSpec>();
    visitor.visit::<ServiceSpec>();
    visitor.visit::<UpstreamSpec>();
    visitor.visit::<ConsumerSpec>();
    visitor.visit::<ConsumerGroupSpec>();
    visitor.visit::<PolicySetSpec>();
}

impl ConfigResource for RouteSpec {
    const KIND: ResourceKind = ResourceKind::Routes;

    fn id(&self) -> &str {
        &self.id
    }

    fn list(spec: &GatewaySpec) -> &[Self] {
        &spec.routes
    }

    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self> {
        &mut spec.routes
    }
}

impl ConfigResource for ServiceSpec {
    const KIND: ResourceKind = ResourceKind::Services;

    fn id(&self) -> &str {
        &self.id
    }

    fn list(spec: &GatewaySpec) -> &[Self] {
        &spec.services
    }

    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self> {
        &mut spec.services
    }

    fn references(spec: &GatewaySpec, id: &str) -> Vec<FieldPath> {
        let routes = FieldPath::root().key("routes");
        spec.routes
            .iter()
            .enumerate()
            .filter(|(_, route)| route.service.as_deref() == Some(id))
            .map(|(index, route)| routes.item(index, &route.id).key("service"))
            .collect()
    }
}

impl ConfigResource for UpstreamSpec {
    const KIND: ResourceKind = ResourceKind::Upstreams;

    fn id(&self) -> &str {
        &self.id
    }

    fn list(spec: &GatewaySpec) -> &[Self] {
        &spec.upstreams
    }

    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self> {
        &mut spec.upstreams
    }

    fn references(spec: &GatewaySpec, id: &str) -> Vec<FieldPath> {
        let routes = FieldPath::root().key("routes");
        let services = FieldPath::root().key("services");
        let by_routes = spec
            .routes
            .iter()
            .enumerate()
            .filter(|(_, route)| route.upstream.as_deref() == Some(id))
            .map(|(index, route)| routes.item(index, &route.id).key("upstream"));
        let by_services = spec
            .services
            .iter()
            .enumerate()
            .filter(|(_, service)| service.upstream.as_deref() == Some(id))
            .map(|(index, service)| services.item(index, &service.id).key("upstream"));
        by_routes.chain(by_services).collect()
    }
}

impl ConfigResource for ConsumerSpec {
    const KIND: ResourceKind = ResourceKind::Consumers;

    fn id(&self) -> &str {
        &self.id
    }

    fn list(spec: &GatewaySpec) -> &[Self] {
        &spec.consumers
    }

    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self> {
        &mut spec.consumers
    }

    /// Credentials are untyped in the model (each identity policy reads its own), so every
    /// value in them is treated as a secret and shown as `***`.
    fn to_output(&self) -> serde_json::Value {
        let mut output = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(credentials) = output.get_mut("credentials") {
            redact(credentials);
        }
        if let Some(policies) = output.get_mut("policies") {
            super::secrets::hide_policy_secrets(policies);
        }
        output
    }

    /// Sending the placeholder back (a read-modify-write of a consumer) would make `***`
    /// the credential, which anyone could guess.
    fn check_input(&self, at: &FieldPath) -> ConfigErrors {
        let mut errors = ConfigErrors::default();
        for (policy, value) in &self.credentials {
            find_placeholders(value, &at.key("credentials").key(policy), &mut errors);
        }
        if let Ok(policies) = serde_json::to_value(&self.policies) {
            super::secrets::find_policy_placeholders(&policies, &at.key("policies"), &mut errors);
        }
        errors
    }
}

impl ConfigResource for ConsumerGroupSpec {
    const KIND: ResourceKind = ResourceKind::ConsumerGroups;

    fn id(&self) -> &str {
        &self.id
    }

    fn list(spec: &GatewaySpec) -> &[Self] {
        &spec.consumer_groups
    }

    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self> {
        &mut spec.consumer_groups
    }

    /// A group is not required for a consumer to list it (groups only `acl` reads need no
    /// declaration), but deleting one that consumers list would silently drop their limits,
    /// so it is refused as in APISIX: remove the group from those consumers first, or replace
    /// the group with no policies.
    fn references(spec: &GatewaySpec, id: &str) -> Vec<FieldPath> {
        let mut found = Vec::new();
        for (index, consumer) in spec.consumers.iter().enumerate() {
            let groups = FieldPath::root().key("consumers").item(index, &consumer.id).key("groups");
            let positions = consumer.groups.iter().enumerate().filter(|(_, group)| group.as_str() == id);
            found.extend(positions.map(|(position, _)| groups.index(position)));
        }
        found
    }
}

impl ConfigResource for PolicySetSpec {
    const KIND: ResourceKind = ResourceKind::PolicySets;

    fn id(&self) -> &str {
        &self.id
    }

    fn list(spec: &GatewaySpec) -> &[Self] {
        &spec.policy_sets
    }

    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self> {
        &mut spec.policy_sets
    }

    fn references(spec: &GatewaySpec, id: &str) -> Vec<FieldPath> {
        let mut found = Vec::new();
        for (index, route) in spec.routes.iter().enumerate() {
            let sets = FieldPath::root().key("routes").item(index, &route.id).key("policy_sets");
            let positions = route.policy_sets.iter().enumerate().filter(|(_, set)| set.as_str() == id);
            found.extend(positions.map(|(position, _)| sets.index(position)));
        }
        found
    }
}

/// Replaces every scalar inside `value` with [`REDACTED`].
pub fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(fields) => fields.values_mut().for_each(redact),
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        serde_json::Value::Null => {}
        scalar => *scalar = serde_json::Value::String(REDACTED.to_owned()),
    }
}

fn find_placeholders(value: &serde_json::Value, at: &FieldPath, errors: &mut ConfigErrors) {
    match value {
        serde_json::Value::Object(fields) => {
            fields.iter().for_each(|(key, value)| find_placeholders(value, &at.key(key), errors));
        }
        serde_json::Value::Array(items) => {
            items.iter().enumerate().for_each(|(index, value)| find_placeholders(value, &at.index(index), errors));
        }
        serde_json::Value::String(text) if text == REDACTED => errors.push(
            at.clone(),
            "`***` is how the admin API shows a secret, not a usable value: send the real credential",
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> GatewaySpec {
        gantry_config::load_str(yaml).expect("valid test config")
    }

    #[test]
    fn finds_routes_and_services_using_an_upstream() {
        let spec = spec(
            "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\nservices:\n  - id: s\n    upstream: up\nroutes:\n  - id: other\n    paths: [/o]\n  - id: api\n    paths: [/a]\n    upstream: up\n",
        );
        let found: Vec<String> = UpstreamSpec::references(&spec, "up").iter().map(ToString::to_string).collect();
        assert_eq!(found, ["routes[api].upstream", "services[s].upstream"]);
        assert!(UpstreamSpec::references(&spec, "nobody-uses-this").is_empty());
    }

    #[test]
    fn finds_routes_using_a_service_or_a_policy_set() {
        let spec = spec("routes:\n  - id: a\n    paths: [/a]\n    service: s\n    policy_sets: [x, shared]\n");
        let by_service: Vec<String> = ServiceSpec::references(&spec, "s").iter().map(ToString::to_string).collect();
        assert_eq!(by_service, ["routes[a].service"]);
        let by_set: Vec<String> = PolicySetSpec::references(&spec, "shared").iter().map(ToString::to_string).collect();
        assert_eq!(by_set, ["routes[a].policy_sets[1]"]);
    }

    #[test]
    fn finds_consumers_listing_a_consumer_group() {
        let spec = spec(
            "consumers:\n  - id: a\n    groups: [silver, gold]\n  - id: b\n  - id: c\n    groups: [gold]\nconsumer_groups:\n  - id: gold\n",
        );
        let found: Vec<String> = ConsumerGroupSpec::references(&spec, "gold").iter().map(ToString::to_string).collect();
        assert_eq!(found, ["consumers[a].groups[1]", "consumers[c].groups[0]"]);
        assert!(ConsumerGroupSpec::references(&spec, "bronze").is_empty());
    }

    #[test]
    fn shows_consumer_credentials_as_placeholders_and_refuses_them_back() {
        let spec = spec(
            "consumers:\n  - id: alice\n    groups: [staff]\n    credentials:\n      key_auth: {key: alice-key-123}\n",
        );
        let output = spec.consumers[0].to_output();
        assert_eq!(output["credentials"]["key_auth"]["key"], REDACTED);
        assert_eq!(output["groups"][0], "staff");
        assert!(!output.to_string().contains("alice-key-123"));

        let mut sent_back = spec.consumers[0].clone();
        sent_back.credentials = serde_json::from_value(output["credentials"].clone()).expect("a map");
        let errors = sent_back.check_input(&FieldPath::root().key("consumers").item(0, "alice"));
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path.to_string(), "consumers[alice].credentials.key_auth.key");
        assert!(spec.consumers[0].check_input(&FieldPath::root()).is_empty());
    }
}

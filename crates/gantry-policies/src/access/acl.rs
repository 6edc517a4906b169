#![doc = include_str!("acl.md")]

use std::collections::HashSet;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::identity::forbidden;
use gantry_policy_api::{
    BuildContext, Consumer, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `acl`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Consumer groups allowed. When not empty, a consumer in none of them is refused.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Consumer groups refused. Deny wins over every allow list.
    #[serde(default)]
    pub deny_groups: Vec<String>,
    /// Consumer ids allowed, whatever their groups.
    #[serde(default)]
    pub allow_consumers: Vec<String>,
    /// Consumer ids refused.
    #[serde(default)]
    pub deny_consumers: Vec<String>,
    /// Whether the stand-in consumer of a request without credentials (an identity policy's
    /// `anonymous_consumer`) may pass the allow lists.
    #[serde(default = "default_allow_anonymous")]
    pub allow_anonymous: bool,
}

fn default_allow_anonymous() -> bool {
    true
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.allow_groups.is_empty()
            && self.deny_groups.is_empty()
            && self.allow_consumers.is_empty()
            && self.deny_consumers.is_empty()
        {
            errors.push(
                path.clone(),
                "give at least one of `allow_groups`, `deny_groups`, `allow_consumers`, `deny_consumers`",
            );
        }
        for (index, group) in self.allow_groups.iter().enumerate() {
            if self.deny_groups.contains(group) {
                errors.push(path.key("allow_groups").index(index), format!("`{group}` is both allowed and denied"));
            }
        }
    }
}

/// Factory of the `acl` policy.
#[derive(Debug)]
pub struct Acl;

impl PolicyFactory for Acl {
    const NAME: &'static str = "acl";
    const STAGE: Stage = Stage::Access;
    const DOCS: &'static str = include_str!("acl.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        // A misspelt consumer id would silently never match; groups are free-form (tokens
        // bring their own), so only ids are checked.
        for (field, list) in [("allow_consumers", &config.allow_consumers), ("deny_consumers", &config.deny_consumers)]
        {
            for (index, id) in list.iter().enumerate() {
                if context.consumers.get(id).is_none() {
                    errors.push(path.key(field).index(index), format!("no consumer has id `{id}`"));
                }
            }
        }
        errors.into_result(())?;
        Ok(Arc::new(CompiledAcl {
            allow_groups: config.allow_groups.into_iter().collect(),
            deny_groups: config.deny_groups.into_iter().collect(),
            allow_consumers: config.allow_consumers.into_iter().collect(),
            deny_consumers: config.deny_consumers.into_iter().collect(),
            allow_anonymous: config.allow_anonymous,
        }))
    }
}

/// Runs per request: a few set lookups over the consumer's groups.
struct CompiledAcl {
    allow_groups: HashSet<String>,
    deny_groups: HashSet<String>,
    allow_consumers: HashSet<String>,
    deny_consumers: HashSet<String>,
    allow_anonymous: bool,
}

impl CompiledAcl {
    fn is_denied(&self, consumer: &Consumer) -> bool {
        self.deny_consumers.contains(&*consumer.id)
            || consumer.groups.iter().any(|group| self.deny_groups.contains(group))
    }

    fn has_allow_lists(&self) -> bool {
        !self.allow_groups.is_empty() || !self.allow_consumers.is_empty()
    }

    fn is_allowed(&self, consumer: &Consumer) -> bool {
        self.allow_consumers.contains(&*consumer.id)
            || consumer.groups.iter().any(|group| self.allow_groups.contains(group))
    }
}

impl Policy for CompiledAcl {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(identity) = &exchange.identity else {
            // Without an identity policy before it, no request can be allowed; 403 rather
            // than 401 because acl has no authentication scheme to challenge with.
            return forbidden("consumer-required", "no consumer was recognised for this request").into();
        };
        let consumer = &identity.consumer;
        if self.is_denied(consumer) {
            tracing::debug!(consumer = %consumer.id, "consumer denied by acl");
            return forbidden("consumer-denied", "the consumer may not use this route").into();
        }
        let anonymous_refused = identity.is_anonymous && !self.allow_anonymous;
        if anonymous_refused || (self.has_allow_lists() && !self.is_allowed(consumer)) {
            tracing::debug!(consumer = %consumer.id, "consumer not allowed by acl");
            return forbidden("consumer-denied", "the consumer may not use this route").into();
        }
        Flow::Continue.into()
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy_error, exchange_from, run_request};
    use gantry_policy_api::{ConsumerDirectory, Identity, RegisteredPolicy};
    use http::StatusCode;

    use super::*;

    const CONSUMERS: &str = "consumers:\n  - id: alice\n    groups: [staff, admins]\n  - id: bob\n    groups: [staff]\n  - id: mallory\n    groups: [staff]\n  - id: guest\n";

    fn policy(settings: &str) -> Arc<dyn Policy> {
        let spec = gantry_config::load_str(CONSUMERS).expect("consumers");
        let mut errors = ConfigErrors::default();
        let consumers = ConsumerDirectory::build(&spec, &|_| None, &mut errors);
        let raw = gantry_config::load_str(&format!("global_policies:\n  - acl: {settings}\n"))
            .expect("settings")
            .global_policies
            .remove(0)
            .config;
        RegisteredPolicy::of::<Acl>()
            .build(&raw, &FieldPath::root(), &BuildContext::new(&spec, &consumers))
            .unwrap_or_else(|errors| panic!("{errors}"))
    }

    fn status_for(policy: &dyn Policy, consumer: Option<(&str, &[&str], bool)>) -> Option<StatusCode> {
        let mut request = http::Request::get("/").body(()).expect("request").into_parts().0;
        let mut exchange = exchange_from("127.0.0.1:1");
        if let Some((id, groups, is_anonymous)) = consumer {
            let consumer =
                Arc::new(Consumer { id: id.into(), groups: groups.iter().map(|g| (*g).to_owned()).collect() });
            exchange.authenticate(if is_anonymous {
                Identity::anonymous(consumer, "key_auth")
            } else {
                Identity::credential(consumer, format!("{id}:key_auth").into(), "key_auth")
            });
        }
        match run_request(policy, &mut request, &mut exchange) {
            Flow::Continue => None,
            Flow::Respond(response) => Some(response.status()),
        }
    }

    #[test]
    fn allows_members_of_an_allowed_group_and_refuses_others_with_403() {
        let policy = policy("{allow_groups: [admins]}");
        assert_eq!(status_for(&*policy, Some(("alice", &["staff", "admins"], false))), None);
        assert_eq!(status_for(&*policy, Some(("bob", &["staff"], false))), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn deny_wins_over_allow() {
        let by_consumer = policy("{allow_groups: [staff], deny_consumers: [mallory]}");
        assert_eq!(status_for(&*by_consumer, Some(("bob", &["staff"], false))), None);
        assert_eq!(status_for(&*by_consumer, Some(("mallory", &["staff"], false))), Some(StatusCode::FORBIDDEN));
        let by_group = policy("{allow_consumers: [alice], deny_groups: [admins]}");
        assert_eq!(status_for(&*by_group, Some(("alice", &["staff", "admins"], false))), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn refuses_a_request_without_a_consumer() {
        let policy = policy("{deny_groups: [blocked]}");
        assert_eq!(status_for(&*policy, None), Some(StatusCode::FORBIDDEN));
        assert_eq!(status_for(&*policy, Some(("bob", &["staff"], false))), None);
    }

    #[test]
    fn treats_the_anonymous_consumer_as_configured() {
        let open = policy("{allow_consumers: [guest]}");
        assert_eq!(status_for(&*open, Some(("guest", &[], true))), None);
        let closed = policy("{allow_consumers: [guest], allow_anonymous: false}");
        assert_eq!(status_for(&*closed, Some(("guest", &[], true))), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn rejects_empty_contradictory_and_unknown_settings_at_their_path() {
        let found: Vec<String> = build_policy_error(RegisteredPolicy::of::<Acl>(), "{}")
            .iter()
            .map(|error| format!("{}: {}", error.path, error.message))
            .collect();
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("global_policies[0].acl: give at least one"), "{found:?}");

        let found: Vec<String> = build_policy_error(
            RegisteredPolicy::of::<Acl>(),
            "{allow_groups: [a, b], deny_groups: [b], allow_consumers: [nobody]}",
        )
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect();
        assert!(
            found.contains(&"global_policies[0].acl.allow_groups[1]: `b` is both allowed and denied".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"global_policies[0].acl.allow_consumers[0]: no consumer has id `nobody`".to_owned()),
            "{found:?}"
        );
    }
}

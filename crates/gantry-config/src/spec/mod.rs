//! The `*Spec` types: exactly what a user writes, in APISIX's vocabulary.
//!
//! Every struct denies unknown fields, so a typo is an error with a path rather than a silently
//! ignored setting. `node` settings need a restart; everything else reloads live.

mod access_log;
mod cluster;
mod node;
mod policy;
mod route;
mod tracing;
mod upstream;

pub use access_log::*;
pub use cluster::*;
pub use node::*;
pub use policy::*;
pub use route::*;
pub use tracing::*;
pub use upstream::*;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A whole gateway configuration: node settings plus the reloadable resources.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Settings of this gateway process (listeners, admin API, limits). Restart-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeSpec>,
    /// Routes: what traffic to match and where to send it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// Services: defaults (upstream, policies) shared by several routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// Upstreams: groups of endpoints with load balancing, health checks and timeouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamSpec>,
    /// Consumers: the clients that identity policies recognise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerSpec>,
    /// Consumer groups: policies shared by every consumer that names the group in `groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumer_groups: Vec<ConsumerGroupSpec>,
    /// Named, reusable lists of policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_sets: Vec<PolicySetSpec>,
    /// Policies applied to every route, before service, policy-set and route policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_policies: Vec<PolicySpec>,
    /// The directory of the configuration file (or the configuration directory) this was read
    /// from, against which policies resolve relative file paths (schemas, API descriptions);
    /// `None` for configuration that came from no file. Not part of what users write.
    #[serde(skip)]
    #[schemars(skip)]
    pub source_dir: SourceDir,
}

/// The directory a configuration was read from. Every value compares equal to every other:
/// it says where the text came from, not what it configures, so a configuration written by
/// the admin API and read back from its file is the same configuration.
#[derive(Clone, Debug, Default)]
pub struct SourceDir(Option<PathBuf>);

impl SourceDir {
    /// The directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(Some(dir.into()))
    }

    /// The directory, if the configuration came from files.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl PartialEq for SourceDir {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl GatewaySpec {
    /// `path` as written in a policy's settings, resolved against [`Self::source_dir`] when
    /// relative, so a configuration and the files it names can move together.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        match self.source_dir.path() {
            Some(dir) if Path::new(path).is_relative() => dir.join(path),
            _ => PathBuf::from(path),
        }
    }
}

/// The resource kinds, as named in the configuration and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `routes`
    Routes,
    /// `services`
    Services,
    /// `upstreams`
    Upstreams,
    /// `consumers`
    Consumers,
    /// `consumer_groups`
    ConsumerGroups,
    /// `policy_sets`
    PolicySets,
}

impl ResourceKind {
    /// Every kind, in configuration order.
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::Routes,
        ResourceKind::Services,
        ResourceKind::Upstreams,
        ResourceKind::Consumers,
        ResourceKind::ConsumerGroups,
        ResourceKind::PolicySets,
    ];

    /// The section name in YAML and the admin API path segment.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Routes => "routes",
            ResourceKind::Services => "services",
            ResourceKind::Upstreams => "upstreams",
            ResourceKind::Consumers => "consumers",
            ResourceKind::ConsumerGroups => "consumer_groups",
            ResourceKind::PolicySets => "policy_sets",
        }
    }

    /// The kind named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// Shared defaults for routes: an upstream and policies.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique id, referenced by `routes[].service`.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Upstream id for routes of this service that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Policies for every route of this service (after global, before the route's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySpec>,
}

/// A client the gateway recognises, with credentials, groups and policy overrides.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Unique id (the consumer's name), passed upstream and used in logs and limits.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Groups for `acl` decisions and per-group limits. A group declared in `consumer_groups`
    /// adds its policies, in the order listed here; other names need no declaration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Credentials by identity policy name (e.g. `key_auth`), each checked by that policy.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub credentials: serde_json::Map<String, serde_json::Value>,
    /// Policies that replace a route's policy of the same name for this consumer, and a
    /// policy of the same name from its groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySpec>,
}

/// A consumer group: policies for every consumer that lists the group in its `groups`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroupSpec {
    /// Unique id: the group name consumers list in `groups`.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Policies that replace a route's policy of the same name for the group's consumers
    /// (stages after identity only). A consumer's own policies replace these in turn.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// A named list of policies that routes and services include by id.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySetSpec {
    /// Unique id, referenced by `routes[].policy_sets`.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The policies, applied in order within each stage.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

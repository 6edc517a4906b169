//! Routes: which requests to match and where they go.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PolicySpec;

/// Matches requests and sends them to an upstream through a list of policies.
///
/// A request matches when its host, path, method, headers and query all match. Paths are
/// written as `/exact`, `/prefix/*`, `/users/{id}` (template, `{*rest}` for the remainder) or
/// `~^/regex$`. Precedence is described in `docs/routing.md`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique id, shown in logs, metrics and errors.
    pub id: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Host names to match: `api.example.com`, or `*.example.com` for any subdomain. Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Paths to match (at least one).
    pub paths: Vec<String>,
    /// Methods to match, upper case. Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
    /// Query parameter conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatchSpec>,
    /// Breaks ties between routes matching the same path: higher first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Service whose upstream and policies this route inherits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Upstream id; overrides the service's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// How the path sent upstream is derived from the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<PathRewriteSpec>,
    /// Policy sets to include, after the service's policies and before the route's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_sets: Vec<String>,
    /// The route's own policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySpec>,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// A condition on one header or query parameter. Give exactly one of `exact`, `regex` or `present`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// Header or parameter name (headers: case-insensitive).
    pub name: String,
    /// The value must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value must match this regular expression (anywhere; anchor with `^…$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the name must be present; `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negates the condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// Rewrites the path sent upstream. Applied in order: `regex`, then `strip_prefix`, then `add_prefix`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathRewriteSpec {
    /// Regular expression over the path; with `replacement`, rewrites it (`$1`, `${name}` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Replacement for `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Removed from the start of the path when present (`/api` turns `/api/users` into `/users`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Put in front of the path (`/v2` turns `/users` into `/v2/users`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<String>,
}

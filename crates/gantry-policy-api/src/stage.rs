//! The fixed order in which request policies run.

use serde::Serialize;

/// When a policy's request hook runs. Within a stage, policies run in configured order:
/// global, service, policy sets, route. Response hooks run in the reverse order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Right after the route is matched: redirects, CORS, IP rules and bans, user agents.
    Ingress,
    /// Who is calling: authentication, consumer lookup.
    Identity,
    /// May they: ACLs, scopes, allowed hours.
    Access,
    /// How much: rate limits, quotas, size caps.
    Traffic,
    /// Changing the request: headers, path, body.
    Transform,
    /// Checking the request: schemas.
    Validate,
    /// Answering instead of the upstream (mock responses) or choosing how to forward.
    Forward,
}

impl Stage {
    /// Every stage, in running order.
    pub const ALL: [Stage; 7] = [
        Stage::Ingress,
        Stage::Identity,
        Stage::Access,
        Stage::Traffic,
        Stage::Transform,
        Stage::Validate,
        Stage::Forward,
    ];

    /// The stage's name in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingress => "ingress",
            Stage::Identity => "identity",
            Stage::Access => "access",
            Stage::Traffic => "traffic",
            Stage::Transform => "transform",
            Stage::Validate => "validate",
            Stage::Forward => "forward",
        }
    }
}

//! Admin API errors: one [`AdminError`] enum, rendered in one place ([`IntoResponse`]) as an
//! RFC 9457 problem document with a stable `type` from [`ProblemType`].
//!
//! Every admin handler returns `Result<_, AdminError>`; nothing else writes an error body.

use axum::response::{IntoResponse, Response};
use gantry_config::{ConfigErrors, FieldPath, ResourceKind};
use gantry_policy_api::problem::PROBLEM_JSON;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::Serialize;

/// The stable kinds of admin API problems. The `type` member of a problem document is
/// `https://gantry.dev/problems/admin/<code>`; clients may match on it. Codes never change
/// meaning; new ones may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemType {
    /// `unauthorized` (401).
    Unauthorized,
    /// `endpoint-not-found` (404).
    EndpointNotFound,
    /// `method-not-allowed` (405).
    MethodNotAllowed,
    /// `resource-not-found` (404).
    ResourceNotFound,
    /// `resource-exists` (409).
    ResourceExists,
    /// `resource-in-use` (409).
    ResourceInUse,
    /// `id-mismatch` (400).
    IdMismatch,
    /// `unsupported-media-type` (415).
    UnsupportedMediaType,
    /// `malformed-body` (400).
    MalformedBody,
    /// `body-too-large` (413).
    BodyTooLarge,
    /// `invalid-config` (400).
    InvalidConfig,
    /// `not-saved` (500).
    NotSaved,
    /// `not-ready` (503).
    NotReady,
    /// `internal` (500).
    Internal,
    /// `invalid-query` (400).
    InvalidQuery,
    /// `store-unavailable` (503).
    StoreUnavailable,
    /// `conflict` (409).
    Conflict,
}

/// Where problem `type` URIs of the admin API start.
pub const PROBLEM_TYPE_BASE: &str = "https://gantry.dev/problems/admin/";

impl ProblemType {
    /// Every problem type, for documentation and the tests that keep the docs complete.
    pub const ALL: [ProblemType; 17] = [
        ProblemType::Unauthorized,
        ProblemType::EndpointNotFound,
        ProblemType::MethodNotAllowed,
        ProblemType::ResourceNotFound,
        ProblemType::ResourceExists,
        ProblemType::ResourceInUse,
        ProblemType::IdMismatch,
        ProblemType::UnsupportedMediaType,
        ProblemType::MalformedBody,
        ProblemType::BodyTooLarge,
        ProblemType::InvalidConfig,
        ProblemType::NotSaved,
        ProblemType::NotReady,
        ProblemType::Internal,
        ProblemType::InvalidQuery,
        ProblemType::StoreUnavailable,
        ProblemType::Conflict,
    ];

    /// The stable code, the last segment of the `type` URI.
    pub fn code(self) -> &'static str {
        match self {
            ProblemType::Unauthorized => "unauthorized",
            ProblemType::EndpointNotFound => "endpoint-not-found",
            ProblemType::MethodNotAllowed => "method-not-allowed",
            ProblemType::ResourceNotFound => "resource-not-found",
            ProblemType::ResourceExists => "resource-exists",
            ProblemType::ResourceInUse => "resource-in-use",
            ProblemType::IdMismatch => "id-mismatch",
            ProblemType::UnsupportedMediaType => "unsupported-media-type",
            ProblemType::MalformedBody => "malformed-body",
            ProblemType::BodyTooLarge => "body-too-large",
            ProblemType::InvalidConfig => "invalid-config",
            ProblemType::NotSaved => "not-saved",
            ProblemType::NotReady => "not-ready",
            ProblemType::Internal => "internal",
            ProblemType::InvalidQuery => "invalid-query",
            ProblemType::StoreUnavailable => "store-unavailable",
            ProblemType::Conflict => "conflict",
        }
    }

    /// The full `type` URI.
    pub fn uri(self) -> String {
        format!("{PROBLEM_TYPE_BASE}{}", self.code())
    }

    /// The HTTP status this problem is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemType::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemType::EndpointNotFound | ProblemType::ResourceNotFound => StatusCode::NOT_FOUND,
            ProblemType::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemType::ResourceExists | ProblemType::ResourceInUse | ProblemType::Conflict => StatusCode::CONFLICT,
            ProblemType::IdMismatch
            | ProblemType::MalformedBody
            | ProblemType::InvalidConfig
            | ProblemType::InvalidQuery => StatusCode::BAD_REQUEST,
            ProblemType::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemType::NotSaved | ProblemType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemType::NotReady | ProblemType::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `title`: the same for every occurrence of this problem.
    pub fn title(self) -> &'static str {
        match self {
            ProblemType::Unauthorized => "Admin API key missing or wrong",
            ProblemType::EndpointNotFound => "No such admin endpoint",
            ProblemType::MethodNotAllowed => "Method not allowed on this endpoint",
            ProblemType::ResourceNotFound => "Resource not found",
            ProblemType::ResourceExists => "Resource already exists",
            ProblemType::ResourceInUse => "Resource still referenced",
            ProblemType::IdMismatch => "Id in the body differs from the URL",
            ProblemType::UnsupportedMediaType => "Unsupported request body format",
            ProblemType::MalformedBody => "Request body cannot be parsed",
            ProblemType::BodyTooLarge => "Request body too large",
            ProblemType::InvalidConfig => "The change would make the configuration invalid",
            ProblemType::NotSaved => "The change could not be saved",
            ProblemType::NotReady => "No configuration applied yet",
            ProblemType::Internal => "Internal error",
            ProblemType::InvalidQuery => "Query parameters not understood",
            ProblemType::StoreUnavailable => "A store could not be reached",
            ProblemType::Conflict => "The configuration changed meanwhile",
        }
    }

    /// What the problem means and what to do about it (the documentation of the code).
    pub fn description(self) -> &'static str {
        match self {
            ProblemType::Unauthorized => {
                "The request carried no admin API key, or a wrong one. Send the key configured in \
                 `node.admin.api_key` (or the one logged at start when none is configured) in \
                 `X-Api-Key` or `Authorization: Bearer`. Every endpoint but `GET /health` and \
                 `GET /ready` needs it."
            }
            ProblemType::EndpointNotFound => {
                "The path names no admin endpoint. `GET /openapi.json` lists them all; resource \
                 collections are `routes`, `services`, `upstreams`, `consumers`, \
                 `consumer_groups`, `policy_sets` and `global_policies`."
            }
            ProblemType::MethodNotAllowed => {
                "The endpoint exists but does not take this method, e.g. `DELETE /routes` \
                 (delete one route with `DELETE /routes/{id}`)."
            }
            ProblemType::ResourceNotFound => {
                "No resource of this kind has the id in the URL. Nothing changed. List the \
                 existing ones with `GET /<kind>`."
            }
            ProblemType::ResourceExists => {
                "`POST` creates a resource, and one with this id already exists. Nothing changed. \
                 Replace it with `PUT /<kind>/{id}` or choose another id."
            }
            ProblemType::ResourceInUse => {
                "The resource cannot be deleted while other resources refer to it (an upstream \
                 used by a route or service, a service used by a route, a policy set included by \
                 a route, a consumer group listed by a consumer). The `used_by` member lists the referring fields; change or delete \
                 those first. Nothing changed."
            }
            ProblemType::IdMismatch => {
                "The body of a `PUT /<kind>/{id}` has an `id` different from the one in the URL. \
                 Leave `id` out of the body or make it match; renaming is a delete plus a create."
            }
            ProblemType::UnsupportedMediaType => {
                "Request bodies are JSON (`application/json`, the default when no `Content-Type` \
                 is sent) or YAML (`application/yaml`, `application/x-yaml`, `text/yaml`)."
            }
            ProblemType::MalformedBody => {
                "The body is not well-formed JSON or YAML (or is empty), so it was not looked at \
                 further. Nothing changed."
            }
            ProblemType::BodyTooLarge => {
                "The body is larger than the admin API accepts (2 MiB). Split the change into \
                 several resources."
            }
            ProblemType::InvalidConfig => {
                "The resource does not fit the configuration model, or the configuration with \
                 the change applied does not validate or compile (an unknown upstream, a bad \
                 policy setting, a duplicate id). The `errors` member lists every problem with \
                 its field path (`routes[orders].upstream`) and message, exactly as `gantry \
                 validate` reports them. Nothing changed; the running configuration keeps serving."
            }
            ProblemType::NotSaved => {
                "The change is valid but writing it to the configuration files failed (a file \
                 that no longer parses, a read-only or full disk); the detail says which file and \
                 why. The change was not applied either, so the files and the running \
                 configuration still agree."
            }
            ProblemType::NotReady => {
                "Answered by `GET /ready` until the first configuration has been applied. Load \
                 balancers should wait for 200."
            }
            ProblemType::Internal => "A bug in the gateway; the detail and the gateway log say more. Please report it.",
            ProblemType::InvalidQuery => {
                "A query parameter is unknown, malformed, or excludes another one given, e.g. both \
                 `path` and `prefix` on `DELETE /cache/{route}`. The detail names it. Nothing \
                 changed."
            }
            ProblemType::StoreUnavailable => {
                "The store the endpoint works on (Redis, for `DELETE /cache/{route}`; etcd, for \
                 writes and `GET /cluster` in cluster mode) did not answer or failed; the detail \
                 says how. A purge may have removed some entries already; a configuration write \
                 was not applied. Send the request again once the store is back."
            }
            ProblemType::Conflict => {
                "Cluster mode: another node changed the configuration in etcd between this node \
                 reading it and writing the change, so the write was refused rather than losing \
                 either update. Nothing changed. Read the resource again and retry; the node \
                 catches up with etcd within moments."
            }
        }
    }
}

/// The body of every admin API error: RFC 9457 members plus `errors` / `used_by` when they apply.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProblemDocument {
    /// Stable problem type URI, `https://gantry.dev/problems/admin/<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary, the same for every occurrence of the type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
    /// For `invalid-config`: every configuration error, `{origin?, path, message}`.
    // `default` keeps optional members out of the schema's `required` list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<ConfigErrorSchema>")]
    pub errors: Option<ConfigErrors>,
    /// For `resource-in-use`: the fields that still refer to the resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// How one configuration error appears in `errors` (the schema of `gantry_config::ConfigError`).
#[derive(JsonSchema)]
#[schemars(rename = "ConfigError")]
#[allow(dead_code)] // Only its schema is used.
struct ConfigErrorSchema {
    /// Where it was written: a file position, the embedded default or an admin resource.
    origin: Option<serde_json::Value>,
    /// The field it concerns, e.g. `routes[orders].upstream`.
    path: String,
    /// Why it is wrong.
    message: String,
}

/// Everything the admin API can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No key, or not the configured one.
    #[error("a valid admin API key is required in `X-Api-Key` or `Authorization: Bearer`")]
    Unauthorized,
    /// No endpoint at this path.
    #[error("no admin endpoint at {path}")]
    EndpointNotFound {
        /// The request path.
        path: String,
    },
    /// The endpoint does not take this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The request method.
        method: Method,
        /// The request path.
        path: String,
    },
    /// No resource with this id.
    #[error("{} `{id}` does not exist", noun(*kind))]
    NotFound {
        /// Its kind.
        kind: ResourceKind,
        /// The id asked for.
        id: String,
    },
    /// `POST` of an id that exists.
    #[error("{} `{id}` already exists; replace it with PUT /{}/{id}", noun(*kind), kind.name())]
    AlreadyExists {
        /// Its kind.
        kind: ResourceKind,
        /// The id.
        id: String,
    },
    /// `DELETE` of a resource others refer to.
    #[error(
        "{} `{id}` is still used by {}; change or delete those first",
        noun(*kind),
        used_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    InUse {
        /// Its kind.
        kind: ResourceKind,
        /// The id.
        id: String,
        /// The fields referring to it.
        used_by: Vec<FieldPath>,
    },
    /// `PUT /<kind>/{id}` with another id in the body.
    #[error("the body has id `{body_id}` but the URL says `{path_id}`")]
    IdMismatch {
        /// The id in the URL.
        path_id: String,
        /// The id in the body.
        body_id: String,
    },
    /// A body neither JSON nor YAML.
    #[error("unsupported Content-Type `{content_type}`: send application/json or application/yaml")]
    UnsupportedMediaType {
        /// The Content-Type sent.
        content_type: String,
    },
    /// A body that does not parse.
    #[error("the body is not valid {format}: {reason}")]
    MalformedBody {
        /// `JSON` or `YAML`.
        format: &'static str,
        /// The parser's reason.
        reason: String,
    },
    /// A body over the size limit.
    #[error("the body is too large: {reason}")]
    BodyTooLarge {
        /// What the body reader reported.
        reason: String,
    },
    /// The candidate configuration is invalid.
    #[error("the change would make the configuration invalid; nothing changed")]
    InvalidConfig(ConfigErrors),
    /// Saving the change failed; nothing changed.
    #[error("the change is valid but could not be saved, so it was not applied: {reason}")]
    NotSaved {
        /// Which file and why.
        reason: String,
    },
    /// No configuration applied yet.
    #[error("no configuration has been applied yet")]
    NotReady,
    /// A bug.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
    /// Query parameters that do not fit the endpoint.
    #[error("invalid query: {reason}")]
    InvalidQuery {
        /// Which parameter and why.
        reason: String,
    },
    /// A store did not answer.
    #[error("{reason}")]
    StoreUnavailable {
        /// The store's failure.
        reason: String,
    },
    /// The configuration changed under the write (cluster mode).
    #[error("{reason}")]
    Conflict {
        /// What changed.
        reason: String,
    },
}

/// The singular noun for a resource kind, for messages.
pub fn noun(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Routes => "route",
        ResourceKind::Services => "service",
        ResourceKind::Upstreams => "upstream",
        ResourceKind::Consumers => "consumer",
        ResourceKind::ConsumerGroups => "consumer group",
        ResourceKind::PolicySets => "policy set",
    }
}

impl AdminError {
    /// The problem type this error is answered with.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            AdminError::Unauthorized => ProblemType::Unauthorized,
            AdminError::EndpointNotFound { .. } => ProblemType::EndpointNotFound,
            AdminError::MethodNotAllowed { .. } => ProblemType::MethodNotAllowed,
            AdminError::NotFound { .. } => ProblemType::ResourceNotFound,
            AdminError::AlreadyExists { .. } => ProblemType::ResourceExists,
            AdminError::InUse { .. } => ProblemType::ResourceInUse,
            AdminError::IdMismatch { .. } => ProblemType::IdMismatch,
            AdminError::UnsupportedMediaType { .. } => ProblemType::UnsupportedMediaType,
            AdminError::MalformedBody { .. } => ProblemType::MalformedBody,
            AdminError::BodyTooLarge { .. } => ProblemType::BodyTooLarge,
            AdminError::InvalidConfig(_) => ProblemType::InvalidConfig,
            AdminError::NotSaved { .. } => ProblemType::NotSaved,
            AdminError::NotReady => ProblemType::NotReady,
            AdminError::Internal { .. } => ProblemType::Internal,
            AdminError::InvalidQuery { .. } => ProblemType::InvalidQuery,
            AdminError::StoreUnavailable { .. } => ProblemType::StoreUnavailable,
            AdminError::Conflict { .. } => ProblemType::Conflict,
        }
    }

    /// The problem document for this error.
    pub fn to_document(&self) -> ProblemDocument {
        let problem = self.problem_type();
        let detail = match self {
            AdminError::InvalidConfig(errors) => {
                let count = errors.0.len();
                let first = errors.0.first().map(ToString::to_string).unwrap_or_default();
                format!(
                    "{count} configuration error{}, nothing changed; first: {first}",
                    if count == 1 { "" } else { "s" }
                )
            }
            other => other.to_string(),
        };
        ProblemDocument {
            kind: problem.uri(),
            title: problem.title().to_owned(),
            status: problem.status().as_u16(),
            detail,
            errors: match self {
                AdminError::InvalidConfig(errors) => Some(errors.clone()),
                _ => None,
            },
            used_by: match self {
                AdminError::InUse { used_by, .. } => used_by.iter().map(ToString::to_string).collect(),
                _ => Vec::new(),
            },
        }
    }
}

impl AdminError {
    /// Why the write was refused, for the audit log. Parser and validation messages may quote
    /// what was sent, which can be a secret, so for those the log keeps only where the
    /// problems are.
    fn audit_reason(&self, detail: &str) -> String {
        let code = self.problem_type().code();
        match self {
            AdminError::InvalidConfig(errors) => {
                let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
                format!("{code}: {}", paths.join(", "))
            }
            AdminError::MalformedBody { format, .. } => format!("{code}: not valid {format}"),
            _ => format!("{code}: {detail}"),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let problem = self.problem_type();
        match problem {
            ProblemType::Internal => tracing::error!(error = %self, "admin API request failed"),
            ProblemType::NotSaved => tracing::warn!(error = %self, "admin API change not saved"),
            _ => tracing::debug!(error = %self, "admin API request refused"),
        }
        let document = self.to_document();
        let body = serde_json::to_vec(&document).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (problem.status(), body).into_response();
        response.extensions_mut().insert(super::audit::Refusal(self.audit_reason(&document.detail)));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if problem == ProblemType::Unauthorized {
            // RFC 9110 section 11.6.1: a 401 names the scheme to use.
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gantry-admin\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin API reference, which must document every problem type.
    const ADMIN_API_DOC: &str = include_str!("../../../../docs/admin-api.md");

    #[test]
    fn every_problem_type_has_a_unique_code_a_title_and_a_real_description() {
        let mut codes = std::collections::HashSet::new();
        for problem in ProblemType::ALL {
            assert!(codes.insert(problem.code()), "duplicate code {}", problem.code());
            assert!(!problem.title().is_empty(), "{} has no title", problem.code());
            assert!(problem.description().len() > 40, "{} needs a real description", problem.code());
        }
    }

    #[test]
    fn docs_list_every_problem_type_with_its_status() {
        for problem in ProblemType::ALL {
            let row = format!("| `{}` | {} |", problem.code(), problem.status().as_u16());
            assert!(ADMIN_API_DOC.contains(&row), "docs/admin-api.md lacks the row starting `{row}`");
        }
    }

    #[test]
    fn renders_invalid_config_with_errors_and_problem_json() {
        let errors = ConfigErrors::one(FieldPath::root().key("routes").item(0, "a").key("upstream"), "unknown");
        let response = AdminError::InvalidConfig(errors).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
        let document = AdminError::InvalidConfig(ConfigErrors::one(FieldPath::root().key("x"), "bad")).to_document();
        let json = serde_json::to_value(&document).expect("serializes");
        assert_eq!(json["type"], "https://gantry.dev/problems/admin/invalid-config");
        assert_eq!(json["errors"][0]["path"], "x");
        assert_eq!(json["errors"][0]["message"], "bad");
        assert!(json.get("used_by").is_none());
    }

    #[test]
    fn answers_unauthorized_with_a_bearer_challenge() {
        let response = AdminError::Unauthorized.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"gantry-admin\"");
    }

    #[test]
    fn names_the_referring_fields_of_a_resource_in_use() {
        let used_by = vec![FieldPath::root().key("routes").item(0, "api").key("upstream")];
        let error = AdminError::InUse { kind: ResourceKind::Upstreams, id: "up".to_owned(), used_by };
        assert_eq!(
            error.to_string(),
            "upstream `up` is still used by routes[api].upstream; change or delete those first"
        );
        assert_eq!(error.to_document().used_by, vec!["routes[api].upstream".to_owned()]);
    }
}

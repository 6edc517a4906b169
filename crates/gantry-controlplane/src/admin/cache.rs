//! `DELETE /cache/{route}`: purges what the route's `response_cache` stored, in this process's
//! memory zones and in Redis: every entry of the route, or those of one path (`path`) or of the
//! paths under a prefix (`prefix`), optionally for one host (`host`). Every query string and
//! variant of a selected path goes.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use gantry_config::ResourceKind;
use gantry_state::response_cache::{PathFilter, PurgeFilter};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AdminError, AdminState};

/// What to purge, besides the route in the path.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    /// Only this path (every query string and variant of it).
    pub path: Option<String>,
    /// Only paths starting with this.
    pub prefix: Option<String>,
    /// Only entries for this host (without port).
    pub host: Option<String>,
}

/// What a purge removed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PurgeResult {
    /// The route.
    pub route: String,
    /// Entries removed from this process's memory zones and from Redis.
    pub purged: u64,
}

/// `DELETE /cache/{route}`.
pub async fn purge(
    State(state): State<AdminState>,
    Path(route): Path<String>,
    query: Result<Query<PurgeQuery>, QueryRejection>,
) -> Result<Json<PurgeResult>, AdminError> {
    let Query(query) = query.map_err(|rejection| AdminError::InvalidQuery { reason: rejection.body_text() })?;
    let applied = state.applied().await?;
    if !applied.spec.routes.iter().any(|spec| spec.id == route) {
        return Err(AdminError::NotFound { kind: ResourceKind::Routes, id: route });
    }
    let path = match (query.path, query.prefix) {
        (Some(_), Some(_)) => {
            return Err(AdminError::InvalidQuery { reason: "give `path` or `prefix`, not both".to_owned() });
        }
        (Some(path), None) => PathFilter::Exact(checked_path(path, "path")?),
        (None, Some(prefix)) => PathFilter::Prefix(checked_path(prefix, "prefix")?),
        (None, None) => PathFilter::Any,
    };
    let host = query.host.map(|host| host.to_ascii_lowercase());
    let filter = PurgeFilter { route: route.clone(), host, path };
    let purged = state
        .control()
        .stores()
        .purge_response_caches(&filter)
        .await
        .map_err(|err| AdminError::StoreUnavailable { reason: err.to_string() })?;
    tracing::info!(route = %route, purged, "response cache purged");
    Ok(Json(PurgeResult { route, purged }))
}

fn checked_path(path: String, name: &str) -> Result<String, AdminError> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(AdminError::InvalidQuery { reason: format!("`{name}` is a path and starts with `/`") })
    }
}

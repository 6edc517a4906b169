//! Read-only endpoints about the gateway as a whole: the probes, the effective configuration
//! and the OpenAPI document.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_config::GatewaySpec;
use http::{HeaderMap, HeaderValue};
use serde_json::json;

use super::exposition;
use super::kinds::redact;
use super::{AdminError, AdminState, GENERATION_HEADER};

/// `GET /health`: the process is up and answering.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /metrics`: every metric in OpenMetrics 1.0 when the scraper asks for it (Prometheus
/// does), else in the Prometheus text format 0.0.4 (see [`exposition`]).
pub async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Result<Response, AdminError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, state.metrics())
        .map_err(|err| AdminError::Internal { reason: format!("encoding the metrics failed: {err}") })?;
    let (content_type, text) = if exposition::wants_openmetrics(&headers) {
        (exposition::OPENMETRICS_CONTENT_TYPE, text)
    } else {
        (exposition::PROMETHEUS_TEXT_CONTENT_TYPE, exposition::to_prometheus_text(&text))
    };
    Ok(([(http::header::CONTENT_TYPE, content_type)], text).into_response())
}

/// `GET /ready`: 200 once a configuration is serving (generation 1 or later), 503 before.
pub async fn ready(State(state): State<AdminState>) -> Result<Json<serde_json::Value>, AdminError> {
    let generation = state.control().snapshot().load().generation;
    if generation == 0 {
        return Err(AdminError::NotReady);
    }
    Ok(Json(json!({"status": "ready", "generation": generation})))
}

/// `GET /config`: the node settings this process runs with plus every resource now serving.
/// Secrets show as `***`: `Secret` values serialize so, and consumer credentials are hidden
/// the way `GET /consumers` hides them.
pub async fn config(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let applied = state.applied().await?;
    let effective = GatewaySpec { node: Some(state.node().clone()), ..applied.spec };
    let mut body = serde_json::to_value(&effective)
        .map_err(|err| AdminError::Internal { reason: format!("cannot show the configuration: {err}") })?;
    if let Some(consumers) = body.get_mut("consumers").and_then(serde_json::Value::as_array_mut) {
        for credentials in consumers.iter_mut().filter_map(|consumer| consumer.get_mut("credentials")) {
            redact(credentials);
        }
    }
    super::secrets::hide_secrets_in_config(&mut body);
    let mut response = Json(body).into_response();
    response.headers_mut().insert(GENERATION_HEADER, HeaderValue::from(applied.generation));
    Ok(response)
}

/// `GET /openapi.json`.
pub async fn openapi(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(state.openapi().clone())
}

//! Read-only endpoints about the gateway as a whole: the probes, the status summary, the
//! effective configuration and the OpenAPI document.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
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

/// `GET /status` query: `top=N` keeps the N routes with the most requests.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    top: Option<usize>,
}

/// `GET /status`: one page that sums the gateway up for a person or `gantry status`: version
/// and uptime, the configuration serving and how reloads went, requests per route with their
/// latency, and every upstream endpoint's health and load. Everything is read from the
/// counters `/metrics` exposes, so it costs the request path nothing more.
pub async fn status(
    State(state): State<AdminState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let Query(query) = query.map_err(|rejection| AdminError::InvalidQuery { reason: rejection.body_text() })?;
    let control = state.control();
    let snapshot = control.snapshot().load_full();
    let traffic = control.traffic_metrics();
    let now = Instant::now();

    // Each route with its request count, which `?top` orders by.
    let mut routes: Vec<(u64, serde_json::Value)> = snapshot
        .routes
        .iter()
        .map(|route| {
            let mut entry =
                json!({"id": &*route.id, "upstream": route.upstream.as_ref().map(|upstream| &*upstream.id)});
            let mut requests = 0;
            if let Some(metrics) = &route.metrics {
                let (bytes_in, bytes_out) = metrics.series.body_bytes();
                let summary = metrics.series.summary();
                requests = summary.requests;
                entry["traffic"] = json!({
                    "summary": summary,
                    "overhead": metrics.series.overhead(),
                    "request_body_bytes": bytes_in,
                    "response_body_bytes": bytes_out,
                });
            }
            (requests, entry)
        })
        .collect();
    if let Some(top) = query.top {
        routes.sort_by_key(|(requests, _)| std::cmp::Reverse(*requests));
        routes.truncate(top);
    }
    let routes: Vec<serde_json::Value> = routes.into_iter().map(|(_, entry)| entry).collect();
    let upstreams: Vec<serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|upstream| {
            let endpoints: Vec<serde_json::Value> = upstream
                .endpoints
                .iter()
                .map(|endpoint| {
                    let state = &endpoint.state;
                    let mut entry = json!({
                        "address": &*endpoint.address,
                        "available": state.is_available(now),
                        "healthy": state.healthy.load(Ordering::Relaxed),
                        "consecutive_failures": state.consecutive_failures.load(Ordering::Relaxed),
                        "in_flight": state.in_flight.load(Ordering::Relaxed),
                    });
                    if let Some(metrics) = &endpoint.metrics {
                        entry["tries"] = json!(metrics.summary());
                        entry["failures"] = json!(metrics.failures());
                    }
                    entry
                })
                .collect();
            let available = upstream.endpoints.iter().filter(|endpoint| endpoint.state.is_available(now)).count();
            json!({
                "id": &*upstream.id,
                "endpoints_available": available,
                "endpoints_total": upstream.endpoints.len(),
                "endpoints": endpoints,
            })
        })
        .collect();
    let started = state.started();
    let uptime = jiff::Timestamp::now().duration_since(started);
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": format!("{started:.3}"),
        "uptime_seconds": uptime.as_secs(),
        "config": {
            "generation": snapshot.generation,
            "routes": snapshot.routes.len(),
            "upstreams": snapshot.upstreams.len(),
            "reload_failures": control.reload_failures(),
            "last_reload_failed": control.last_reload_failed(),
        },
        "requests_counted": traffic.is_enabled(),
        "unmatched": traffic.unmatched(),
        "routes": routes,
        "upstreams": upstreams,
    })))
}

/// `GET /cluster`: in cluster mode, this node's link to etcd and every node now listed there,
/// each as it describes itself (id, version, start time, the configuration generation and
/// etcd revision it runs). A node leaves the list when it shuts down, or `node_ttl` after it
/// stops renewing its lease. 404 `endpoint-not-found` on a node not in cluster mode; 503
/// `store-unavailable` while etcd cannot be reached.
pub async fn cluster(State(state): State<AdminState>) -> Result<Json<serde_json::Value>, AdminError> {
    let Some(cluster) = state.cluster() else {
        return Err(AdminError::EndpointNotFound { path: "/cluster (this node is not in cluster mode)".into() });
    };
    let nodes = cluster
        .nodes()
        .await
        .map_err(|err| AdminError::StoreUnavailable { reason: format!("etcd cannot be reached: {err}") })?;
    Ok(Json(json!({
        "node_id": cluster.node_id(),
        "etcd": cluster.sync_state(),
        "nodes": nodes,
    })))
}

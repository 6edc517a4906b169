//! The admin API: reads and changes the running configuration over HTTP, on its own listener
//! (`node.admin.address`), apart from client traffic.
//!
//! A request passes [`auth`] (the API key; only `GET /health` and `GET /ready` are open),
//! then one handler: the generic CRUD of [`resource`] for every kind listed in [`kinds`]
//! (`/routes`, `/services`, `/upstreams`, `/consumers`, `/consumer_groups`, `/policy_sets`, and the
//! `/global_policies` list), [`status`] (`/config`, `/health`, `/ready`, `/openapi.json`), or
//! [`cache`] (`DELETE /cache/{route}`, purging what a route's response cache stored), or
//! [`audit`] (`GET /audit`). Every write, accepted or refused, is recorded by [`audit`].
//! Writes go through [`crate::ControlPlane`] like a file reload (validate, compile, save via
//! [`persist`], swap), and every error is an [`AdminError`] rendered by [`problem`] as an
//! RFC 9457 document with a stable type:
//!
//! | code | status | meaning |
//! |---|---|---|
//! | `unauthorized` | 401 | no or wrong API key |
//! | `endpoint-not-found` | 404 | no such admin path |
//! | `method-not-allowed` | 405 | the path does not take this method |
//! | `resource-not-found` | 404 | no resource with this id |
//! | `resource-exists` | 409 | `POST` of an existing id |
//! | `resource-in-use` | 409 | `DELETE` of a resource others refer to |
//! | `id-mismatch` | 400 | body id differs from the URL |
//! | `unsupported-media-type` | 415 | body neither JSON nor YAML |
//! | `malformed-body` | 400 | body does not parse |
//! | `body-too-large` | 413 | body over 2 MiB |
//! | `invalid-config` | 400 | the change fails validation or compilation (`errors[]`) |
//! | `not-saved` | 500 | writing the configuration files failed; nothing changed |
//! | `not-ready` | 503 | no configuration applied yet |
//! | `internal` | 500 | a bug |
//! | `invalid-query` | 400 | query parameters not understood |
//! | `store-unavailable` | 503 | a store (Redis) did not answer |
//!
//! [`ProblemType::description`] holds the full text of each; `docs/admin-api.md` is the
//! user-facing reference.

pub mod audit;
pub mod auth;
pub mod body;
pub mod cache;
pub mod exposition;
pub mod kinds;
pub mod openapi;
pub mod persist;
pub mod problem;
pub mod resource;
pub mod secrets;
pub mod status;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::routing::{delete, get, MethodRouter};
use axum::Router;
use gantry_config::{NodeSpec, Secret};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use persist::Persistence;
pub use problem::{AdminError, ProblemType};
pub use resource::ConfigResource;

use crate::reload::Applied;
use crate::ControlPlane;
use kinds::{for_each_kind, KindVisitor};

/// Response header carrying the configuration generation serving after the request.
pub const GENERATION_HEADER: &str = "x-gantry-generation";

/// What every admin handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AdminState(Arc<Shared>);

struct Shared {
    control: Arc<ControlPlane>,
    api_key: Secret<String>,
    node: NodeSpec,
    persistence: Persistence,
    audit: audit::AuditLog,
    api_key_name: String,
    openapi: serde_json::Value,
    metrics: Arc<prometheus_client::registry::Registry>,
    started: jiff::Timestamp,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AdminState {
    /// State for an admin API over `control`, accepting `api_key`. `node` is the node
    /// configuration the process runs with (shown by `GET /config`). Writes are saved to
    /// the control plane's source, if it has files. `GET /metrics` exposes `metrics`.
    pub fn new(
        control: Arc<ControlPlane>,
        node: NodeSpec,
        api_key: Secret<String>,
        metrics: Arc<prometheus_client::registry::Registry>,
    ) -> Self {
        let persistence = Persistence::for_source(control.source());
        let audit_file = node.admin.as_ref().and_then(|admin| admin.audit_log.as_deref());
        let audit = audit::AuditLog::for_source(control.source(), audit_file);
        let api_key_name = node.admin.as_ref().map_or_else(|| "admin".to_owned(), |admin| admin.api_key_name.clone());
        let openapi = openapi::openapi_document();
        Self(Arc::new(Shared {
            control,
            api_key,
            node,
            persistence,
            audit,
            api_key_name,
            openapi,
            metrics,
            started: jiff::Timestamp::now(),
            cluster: None,
        }))
    }

    /// The metrics `GET /metrics` exposes.
    pub fn metrics(&self) -> &prometheus_client::registry::Registry {
        &self.0.metrics
    }

    /// The control plane.
    pub fn control(&self) -> &ControlPlane {
        &self.0.control
    }

    /// The applied configuration. Read off the async workers: the lock guarding it is held
    /// while a write compiles, and the admin API shares its runtime with the data plane.
    pub async fn applied(&self) -> Result<Applied, AdminError> {
        let control = self.0.control.clone();
        tokio::task::spawn_blocking(move || control.applied())
            .await
            .map_err(|err| AdminError::Internal { reason: format!("reading the configuration failed: {err}") })
    }

    /// The running node settings.
    pub fn node(&self) -> &NodeSpec {
        &self.0.node
    }

    /// Where writes are saved.
    pub fn persistence(&self) -> &Persistence {
        &self.0.persistence
    }

    /// Where admin writes are recorded.
    pub fn audit(&self) -> &audit::AuditLog {
        &self.0.audit
    }

    /// The name the audit log gives the admin key.
    pub fn api_key_name(&self) -> &str {
        &self.0.api_key_name
    }

    /// The same state for a node in cluster mode: writes go to etcd through `cluster`, and
    /// nothing is saved to the node's own file. Call it before the state is shared.
    #[must_use]
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.0) {
            shared.persistence = Persistence::Memory;
            shared.cluster = Some(cluster);
        }
        self
    }

    /// The cluster this node belongs to, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.0.cluster.as_ref()
    }

    /// When the admin API, and so the gateway, started.
    pub fn started(&self) -> jiff::Timestamp {
        self.0.started
    }

    /// The OpenAPI document, built once.
    pub fn openapi(&self) -> &serde_json::Value {
        &self.0.openapi
    }

    /// The key requests must carry.
    fn api_key(&self) -> &[u8] {
        self.0.api_key.expose().as_bytes()
    }
}

/// The admin API as an axum router (every endpoint, the key check, problem documents for
/// unknown paths and methods).
pub fn router(state: AdminState) -> Router {
    let mut register = RegisterKinds { router: Router::new() };
    for_each_kind(&mut register);
    register
        .router
        .route(
            "/global_policies",
            problems_for_other_methods(get(resource::get_global_policies).put(resource::put_global_policies)),
        )
        .route("/config", problems_for_other_methods(get(status::config)))
        .route("/health", problems_for_other_methods(get(status::health)))
        .route("/ready", problems_for_other_methods(get(status::ready)))
        .route("/openapi.json", problems_for_other_methods(get(status::openapi)))
        .route("/metrics", problems_for_other_methods(get(status::metrics)))
        .route("/cache/{route}", problems_for_other_methods(delete(cache::purge)))
        .route("/audit", problems_for_other_methods(get(audit::list)))
        .route("/status", problems_for_other_methods(get(status::status)))
        .route("/cluster", problems_for_other_methods(get(status::cluster)))
        .fallback(endpoint_not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_api_key))
        .with_state(state)
}

struct RegisterKinds {
    router: Router<AdminState>,
}

impl KindVisitor for RegisterKinds {
    fn visit<K: ConfigResource>(&mut self) {
        let kind = K::KIND.name();
        let router = std::mem::take(&mut self.router);
        self.router = router
            .route(
                &format!("/{kind}"),
                problems_for_other_methods(get(resource::list::<K>).post(resource::create::<K>)),
            )
            .route(
                &format!("/{kind}/{{id}}"),
                problems_for_other_methods(
                    get(resource::get::<K>).put(resource::put::<K>).delete(resource::delete::<K>),
                ),
            );
    }
}

/// A 405 for a method the path does not take is a problem document too.
fn problems_for_other_methods(router: MethodRouter<AdminState>) -> MethodRouter<AdminState> {
    router.fallback(|request: Request| async move {
        AdminError::MethodNotAllowed { method: request.method().clone(), path: request.uri().path().to_owned() }
    })
}

async fn endpoint_not_found(request: Request) -> AdminError {
    AdminError::EndpointNotFound { path: request.uri().path().to_owned() }
}

/// A running admin API server.
pub struct AdminServer {
    address: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// Serves `state` on `listener` until [`Self::shutdown`].
    pub fn start(listener: tokio::net::TcpListener, state: AdminState) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel();
        // The client address is recorded in the audit log.
        let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, service).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { server.await });
        Ok(Self { address, shutdown, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting and waits for in-flight admin requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "the admin API stopped with an error"),
            Err(err) => tracing::warn!(error = %err, "the admin API task failed"),
        }
    }
}

//! Wiring: load the configuration, start the control plane, listeners, admin API and
//! reload triggers, then wait for a signal and drain.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use gantry_config::{AdminSpec, ConfigErrors, ConfigSource, LoadedConfig, NodeSpec, Secret};
use gantry_controlplane::admin::auth::generate_api_key;
use gantry_controlplane::admin::{AdminServer, AdminState};
use gantry_controlplane::cluster::Cluster;
use gantry_controlplane::{compile_snapshot, ControlPlane};
use gantry_dataplane::access_log::AccessLog;
use gantry_dataplane::listener::{bind, ListenerSettings, Server};
use gantry_dataplane::metrics::{GatewayMetrics, TrafficMetrics};
use gantry_dataplane::proxy::Gateway;
use gantry_dataplane::trace::Tracer;
use gantry_dataplane::upstream::UpstreamStates;
use gantry_state::Stores;

use crate::cli::{RunArgs, ValidateArgs};
use crate::demo;

/// The bundled example configuration, served when no `--config` is given.
pub const EMBEDDED_CONFIG: &str = include_str!("../../../config/examples/gantry.yaml");

fn source_for(config: Option<&std::path::Path>) -> ConfigSource {
    match config {
        Some(path) => ConfigSource::from_path(path),
        None => ConfigSource::Embedded(EMBEDDED_CONFIG),
    }
}

/// Loads and fully compiles a configuration, as a reload would.
fn check(source: &ConfigSource) -> Result<LoadedConfig, ConfigErrors> {
    let loaded = source.read()?;
    let stores = Stores::from_node(loaded.spec.node.as_ref()).map_err(|mut errors| {
        loaded.attach_origins(&mut errors);
        errors
    })?;
    let metrics = TrafficMetrics::disabled();
    if let Err(mut errors) = compile_snapshot(&loaded.spec, 1, &UpstreamStates::default(), &stores, &metrics) {
        loaded.attach_origins(&mut errors);
        return Err(errors);
    }
    Ok(loaded)
}

/// `gantry validate`.
pub fn validate(args: ValidateArgs) -> ExitCode {
    install_crypto_provider();
    let source = source_for(args.config.as_deref());
    match check(&source) {
        Ok(loaded) => {
            let spec = &loaded.spec;
            println!(
                "configuration is valid: {} routes, {} services, {} upstreams, {} consumers, {} consumer groups, {} policy sets, {} global policies",
                spec.routes.len(),
                spec.services.len(),
                spec.upstreams.len(),
                spec.consumers.len(),
                spec.consumer_groups.len(),
                spec.policy_sets.len(),
                spec.global_policies.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// `gantry run`.
pub fn run(args: RunArgs) -> ExitCode {
    init_tracing();
    install_crypto_provider();
    let source = source_for(args.config.as_deref());
    let mut loaded = match check(&source) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let mut node = loaded.spec.node.clone().unwrap_or_default();
    if let Err(message) = args.apply_overrides(&mut node, &mut loaded.spec) {
        eprintln!("{message}");
        return ExitCode::FAILURE;
    }
    // One worker runs on tokio's single-threaded scheduler: no work stealing and no
    // cross-thread wake-ups, which is what a process pinned to one core wants.
    let mut runtime = match node.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().thread_name("gantry-worker");
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let watch = !args.no_watch && args.config.is_some();
    match runtime.block_on(serve(node, source, loaded, watch)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(node: NodeSpec, source: ConfigSource, loaded: LoadedConfig, watch: bool) -> Result<(), String> {
    // The node settings as written, so a reload compares against the file and not against
    // the command-line overrides.
    // Stores live as long as the process: every reload compiles against the same counters.
    let stores = Stores::from_node(loaded.spec.node.as_ref()).map_err(|err| err.to_string())?;
    let connecting = stores.clone();
    tokio::spawn(async move { connecting.connect().await });
    let traffic = Arc::new(TrafficMetrics::new(&node.metrics));
    let cluster = match &node.cluster {
        Some(spec) => Some(Arc::new(Cluster::new(spec)?)),
        None => None,
    };
    // In cluster mode the file holds only node settings; reloading it would apply an empty
    // configuration, so the control plane gets no source and etcd is the only one.
    let reload_source = if cluster.is_some() { None } else { Some(source.clone()) };
    let control = Arc::new(
        ControlPlane::new(reload_source, loaded.spec.node.clone())
            .with_stores(stores.clone())
            .with_metrics(traffic.clone()),
    );
    let _etcd_sync = match &cluster {
        // Not ready (`GET /ready` 503) until the first read from etcd is applied.
        Some(cluster) => Some(AbortOnDrop(tokio::spawn(cluster.clone().sync(control.clone())))),
        None => {
            control.apply_loaded(&loaded).map_err(|err| err.to_string())?;
            None
        }
    };

    if let Some(address) = &node.demo_upstream {
        let address: SocketAddr = address.parse().map_err(|_| format!("bad demo_upstream address {address}"))?;
        demo::serve(address).await.map_err(|err| format!("cannot start the demo upstream on {address}: {err}"))?;
    }
    let access_log = match &node.access_log {
        Some(spec) => Some(AccessLog::start(spec).map_err(|err| format!("cannot start the access log: {err}"))?),
        None => None,
    };

    let mut listeners = Vec::with_capacity(node.listeners.len());
    for spec in &node.listeners {
        let address: SocketAddr = spec.address.parse().map_err(|_| format!("bad listener address {}", spec.address))?;
        let tls = match &spec.tls {
            Some(tls) => Some(
                gantry_dataplane::tls::server_config(tls, spec.http2)
                    .map_err(|err| format!("listener {address}: {err}"))?,
            ),
            None => None,
        };
        let listener = bind(address).map_err(|err| format!("cannot listen on {address}: {err}"))?;
        let settings = ListenerSettings {
            tls,
            http2: spec.http2,
            max_header_bytes: node.limits.max_header_bytes,
            max_headers: node.limits.max_headers,
            header_read_timeout: node.limits.header_read_timeout.get(),
        };
        listeners.push((listener, settings));
    }
    let mut metrics = prometheus_client::registry::Registry::default();
    control.register_metrics(&mut metrics);
    if let Some(log) = &access_log {
        log.register_metrics(&mut metrics);
    }
    let tracer = match &node.tracing {
        Some(spec) => {
            let tracer = Tracer::start(spec).map_err(|err| format!("cannot start the trace exporter: {err}"))?;
            tracer.register_metrics(&mut metrics);
            Some(tracer)
        }
        None => None,
    };
    let gateway = Gateway::new(control.snapshot(), access_log, GatewayMetrics::register(&mut metrics, traffic))
        .with_tracer(tracer);
    stores.register_metrics(&mut metrics);
    stores.register_response_cache_metrics(&mut metrics);
    gantry_policies::traffic::circuit_breaker::register_metrics(&mut metrics);
    let metrics = Arc::new(metrics);
    let server = Server::start(listeners, gateway).map_err(|err| format!("cannot start the listeners: {err}"))?;
    for (address, spec) in server.local_addrs().iter().zip(&node.listeners) {
        tracing::info!(address = %address, tls = spec.tls.is_some(), "listener started");
    }

    let _file_watch = if watch {
        match source {
            ConfigSource::File(ref path) | ConfigSource::Directory(ref path) => {
                match gantry_controlplane::sources::file::watch(path, control.clone()) {
                    Ok(watch) => Some(watch),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot watch the configuration; reload with SIGHUP or the admin API");
                        None
                    }
                }
            }
            ConfigSource::Embedded(_) => None,
        }
    } else {
        None
    };
    let admin = match &node.admin {
        Some(spec) => Some(start_admin(spec, &node, control.clone(), metrics.clone(), cluster.clone()).await?),
        None => None,
    };
    let _announcement = cluster.as_ref().map(|cluster| {
        let description = NodeDescription {
            id: cluster.node_id().to_owned(),
            listeners: server.local_addrs().iter().map(ToString::to_string).collect(),
            admin: admin.as_ref().map(|admin| admin.local_addr().to_string()),
            started_at: format!("{:.3}", jiff::Timestamp::now()),
        };
        let (snapshot, link) = (control.snapshot(), cluster.clone());
        AbortOnDrop(tokio::spawn(cluster.clone().announce(move || description.describe(&snapshot, &link))))
    });
    spawn_sighup_reload(control.clone());

    wait_for_shutdown_signal().await;
    if let Some(cluster) = &cluster {
        cluster.withdraw().await;
    }
    if let Some(admin) = admin {
        // No configuration changes while draining.
        admin.shutdown().await;
    }
    tracing::info!(deadline = %node.shutdown_timeout, "shutting down: draining connections");
    let drained = server.shutdown(node.shutdown_timeout.get()).await;
    control.stop();
    if drained {
        tracing::info!("stopped");
    } else {
        tracing::warn!("stopped with connections still open at the drain deadline");
    }
    Ok(())
}

/// Binds the admin API and serves it. Without a configured key, a random one is generated
/// and logged once, so the API is never open.
async fn start_admin(
    spec: &AdminSpec,
    node: &NodeSpec,
    control: Arc<ControlPlane>,
    metrics: Arc<prometheus_client::registry::Registry>,
    cluster: Option<Arc<Cluster>>,
) -> Result<AdminServer, String> {
    let address: SocketAddr = spec.address.parse().map_err(|_| format!("bad admin address {}", spec.address))?;
    let api_key = match &spec.api_key {
        Some(key) => key.clone(),
        None => {
            let key = generate_api_key().map_err(|err| format!("cannot generate an admin API key: {err}"))?;
            tracing::warn!(api_key = %key, "no node.admin.api_key is configured; generated one for this run");
            Secret::new(key)
        }
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| format!("cannot listen for the admin API on {address}: {err}"))?;
    let mut state = AdminState::new(control, node.clone(), api_key, metrics);
    if let Some(cluster) = cluster {
        state = state.with_cluster(cluster);
    }
    let server =
        AdminServer::start(listener, state).map_err(|err| format!("cannot start the admin API on {address}: {err}"))?;
    let addr = server.local_addr();
    tracing::info!(address = %addr, "admin API started");
    Ok(server)
}

/// Aborts a background task when dropped, so it ends with `serve`.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What this node tells the cluster about itself (`GET /cluster`).
struct NodeDescription {
    id: String,
    listeners: Vec<String>,
    admin: Option<String>,
    started_at: String,
}

impl NodeDescription {
    fn describe(&self, snapshot: &gantry_dataplane::snapshot::SnapshotHandle, cluster: &Cluster) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at,
            "listeners": self.listeners,
            "admin": self.admin,
            "generation": snapshot.load().generation,
            "revision": cluster.sync_state().revision,
        })
    }
}

fn spawn_sighup_reload(control: Arc<ControlPlane>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hangups.recv().await.is_some() {
            let control = control.clone();
            if let Ok(Ok(generation)) = tokio::task::spawn_blocking(move || control.reload_from_source()).await {
                tracing::info!(generation, "configuration reloaded on SIGHUP");
            }
        }
    });
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// rustls needs one process-wide crypto provider; Gantry uses aws-lc-rs everywhere.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

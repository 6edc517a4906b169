//! Applying configuration: every trigger (start, file change, SIGHUP, admin write) goes
//! through [`ControlPlane::apply`], one at a time: validate, compile, swap. A rejected
//! configuration changes nothing; the running snapshot keeps serving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gantry_config::{ConfigErrors, ConfigSource, GatewaySpec, LoadedConfig, NodeSpec};
use gantry_dataplane::snapshot::{empty_handle, SnapshotHandle};
use gantry_dataplane::upstream::health::HealthCheckers;
use gantry_dataplane::upstream::UpstreamStates;

use crate::compile::{compile_snapshot, live_endpoints};

/// A rejected configuration change.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The candidate configuration is invalid; nothing changed.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// There is no source to reload from (the embedded default was started).
    #[error("the gateway runs on the embedded configuration; there is no file to reload")]
    NoSource,
}

/// The applied configuration and its generation.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The configuration now serving.
    pub spec: GatewaySpec,
    /// Its generation.
    pub generation: u64,
}

/// Owns the current snapshot and everything that survives a swap.
#[derive(Debug)]
pub struct ControlPlane {
    snapshot: SnapshotHandle,
    states: Arc<UpstreamStates>,
    health: HealthCheckers,
    applied: Mutex<Applied>,
    source: Option<ConfigSource>,
    /// Node settings the process started with; changes to them need a restart.
    running_node: Option<NodeSpec>,
    reload_failures: AtomicU64,
}

impl ControlPlane {
    /// A control plane serving nothing yet, reloading from `source` when asked.
    pub fn new(source: Option<ConfigSource>, running_node: Option<NodeSpec>) -> Self {
        Self {
            snapshot: empty_handle(),
            states: Arc::new(UpstreamStates::default()),
            health: HealthCheckers::default(),
            applied: Mutex::new(Applied::default()),
            source,
            running_node,
            reload_failures: AtomicU64::new(0),
        }
    }

    /// The handle the data plane reads.
    pub fn snapshot(&self) -> SnapshotHandle {
        self.snapshot.clone()
    }

    /// The configuration now serving.
    pub fn applied(&self) -> Applied {
        self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Where configuration is reloaded from.
    pub fn source(&self) -> Option<&ConfigSource> {
        self.source.as_ref()
    }

    /// Rejected reloads so far.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Re-reads the source and applies it.
    pub fn reload_from_source(&self) -> Result<u64, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        // `read`, not `load`: compiling checks references too, next to the policy settings.
        let loaded = source.read().inspect_err(|errors| self.record_rejection(errors))?;
        self.apply_loaded(&loaded)
    }

    /// Applies a configuration read from files, locating compile errors in them.
    pub fn apply_loaded(&self, loaded: &LoadedConfig) -> Result<u64, ReloadError> {
        self.apply_with(|_| Ok(loaded.spec.clone()), |errors| loaded.attach_origins(errors))
    }

    /// Applies the current configuration changed by `change` (an admin write). The change
    /// sees the applied configuration and returns the candidate.
    pub fn apply_change(
        &self,
        change: impl FnOnce(&GatewaySpec) -> Result<GatewaySpec, ConfigErrors>,
    ) -> Result<u64, ReloadError> {
        self.apply_with(change, |_| {})
    }

    fn apply_with(
        &self,
        candidate: impl FnOnce(&GatewaySpec) -> Result<GatewaySpec, ConfigErrors>,
        locate: impl FnOnce(&mut ConfigErrors),
    ) -> Result<u64, ReloadError> {
        // One change at a time: the lock spans read-modify-compile-swap.
        let mut applied = self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let spec = candidate(&applied.spec).inspect_err(|errors| self.record_rejection(errors))?;
        let generation = applied.generation + 1;
        let snapshot = match compile_snapshot(&spec, generation, &self.states) {
            Ok(snapshot) => snapshot,
            Err(mut errors) => {
                locate(&mut errors);
                self.record_rejection(&errors);
                return Err(errors.into());
            }
        };
        if applied.generation > 0 && spec.node != self.running_node && spec.node.is_some() {
            tracing::warn!("node settings changed; they apply at the next restart");
        }
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.states.retain(&live_endpoints(&snapshot));
        if tokio::runtime::Handle::try_current().is_ok() {
            self.health.sync(snapshot.upstreams.iter());
        }
        *applied = Applied { spec, generation };
        tracing::info!(
            generation,
            routes = snapshot.routes.len(),
            upstreams = snapshot.upstreams.len(),
            "configuration applied"
        );
        Ok(generation)
    }

    fn record_rejection(&self, errors: &ConfigErrors) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(errors = errors.0.len(), "configuration rejected; the running one keeps serving:\n{errors}");
    }

    /// Stops background tasks (health checks).
    pub fn stop(&self) {
        self.health.stop_all();
    }
}

//! Applying configuration: every trigger (start, file change, SIGHUP, admin write) goes
//! through [`ControlPlane::apply_loaded`] or [`ControlPlane::apply_change_and_save`], one at a
//! time: validate, compile, (save,) swap. A rejected configuration changes nothing; the
//! running snapshot keeps serving.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gantry_config::{ConfigErrors, ConfigSource, GatewaySpec, LoadedConfig, NodeSpec};
use gantry_dataplane::metrics::TrafficMetrics;
use gantry_dataplane::snapshot::{empty_handle, SnapshotHandle};
use gantry_dataplane::upstream::health::HealthCheckers;
use gantry_dataplane::upstream::UpstreamStates;
use gantry_state::Stores;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::compile::compile_snapshot;

/// A rejected configuration change.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The candidate configuration is invalid; nothing changed.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// There is no source to reload from (the embedded default was started).
    #[error("the gateway runs on the embedded configuration; there is no file to reload")]
    NoSource,
    /// The candidate is valid but saving it failed, so it was not applied; nothing changed.
    #[error("the change is valid but could not be saved: {0}")]
    NotSaved(Box<dyn std::error::Error + Send + Sync>),
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
    /// Counters of policies (rate limits), kept across every swap.
    stores: Stores,
    health: HealthCheckers,
    applied: Mutex<Applied>,
    source: Option<ConfigSource>,
    /// Node settings the process started with; changes to them need a restart.
    running_node: Option<NodeSpec>,
    /// Request metrics, whose series compiled routes and endpoints hold.
    metrics: Arc<TrafficMetrics>,
    outcomes: Arc<ReloadOutcomes>,
    /// What the admin API last saved to the files, until a file reload reads it back.
    unread_save: Mutex<Option<GatewaySpec>>,
}

/// What asked for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// A (re)load of the configuration files: start, file watch, SIGHUP.
    Files,
    /// An admin write, not saved.
    Change,
    /// An admin write saved to the files.
    SavedChange,
}

impl ControlPlane {
    /// A control plane serving nothing yet, reloading from `source` when asked.
    pub fn new(source: Option<ConfigSource>, running_node: Option<NodeSpec>) -> Self {
        Self {
            snapshot: empty_handle(),
            states: Arc::new(UpstreamStates::default()),
            stores: Stores::in_memory(),
            health: HealthCheckers::default(),
            applied: Mutex::new(Applied::default()),
            source,
            running_node,
            metrics: Arc::new(TrafficMetrics::disabled()),
            outcomes: Arc::default(),
            unread_save: Mutex::new(None),
        }
    }

    /// The same control plane binding routes and endpoints to `metrics`. Without it, requests
    /// are not counted.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<TrafficMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Registers the configuration's metrics in `registry`: `gantry_config_generation`,
    /// `gantry_config_reload_failures_total` and `gantry_config_last_reload_successful`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(ConfigMetrics {
            snapshot: self.snapshot.clone(),
            outcomes: self.outcomes.clone(),
        }));
    }

    /// The same control plane with the process's `stores` (policies keep counters there).
    /// Without it, policies count in a memory store of their own.
    #[must_use]
    pub fn with_stores(mut self, stores: Stores) -> Self {
        self.stores = stores;
        self
    }

    /// The process's stores (the admin API purges response caches there).
    pub fn stores(&self) -> &Stores {
        &self.stores
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
        self.outcomes.failures.load(Ordering::Relaxed)
    }

    /// Whether the latest change was rejected (the running configuration is older than it).
    pub fn last_reload_failed(&self) -> bool {
        self.outcomes.last_failed.load(Ordering::Relaxed)
    }

    /// The request metrics routes and endpoints count into.
    pub fn traffic_metrics(&self) -> &TrafficMetrics {
        &self.metrics
    }

    /// Re-reads the source and applies it.
    pub fn reload_from_source(&self) -> Result<u64, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        // The files are read under the apply lock, so a read that raced an admin save can
        // never be applied after it. `read`, not `load`: compiling checks references too,
        // next to the policy settings.
        let loaded = std::cell::OnceCell::new();
        self.apply_with(
            Trigger::Files,
            |_| {
                let read = source.read()?;
                Ok(loaded.get_or_init(|| read).spec.clone())
            },
            |errors| {
                if let Some(loaded) = loaded.get() {
                    loaded.attach_origins(errors);
                }
            },
            |_| Ok(()),
        )
    }

    /// Applies a configuration read from files, locating compile errors in them.
    pub fn apply_loaded(&self, loaded: &LoadedConfig) -> Result<u64, ReloadError> {
        self.apply_with(Trigger::Files, |_| Ok(loaded.spec.clone()), |errors| loaded.attach_origins(errors), |_| Ok(()))
    }

    /// Applies the current configuration changed by `change` (an admin write). The change
    /// sees the applied configuration and returns the candidate.
    pub fn apply_change(
        &self,
        change: impl FnOnce(&GatewaySpec) -> Result<GatewaySpec, ConfigErrors>,
    ) -> Result<u64, ReloadError> {
        self.apply_with(Trigger::Change, change, |_| {}, |_| Ok(()))
    }

    /// Like [`Self::apply_change`], and `save` persists the candidate after it compiled and
    /// before it is swapped in (the admin API writes the configuration files). When saving
    /// fails nothing changes, so the files and the running configuration never disagree, and
    /// a file-watch reload of the saved files waits for the swap and finds nothing new.
    pub fn apply_change_and_save(
        &self,
        change: impl FnOnce(&GatewaySpec) -> Result<GatewaySpec, ConfigErrors>,
        save: impl FnOnce(&GatewaySpec) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<u64, ReloadError> {
        self.apply_with(Trigger::SavedChange, change, |_| {}, save)
    }

    fn apply_with(
        &self,
        trigger: Trigger,
        candidate: impl FnOnce(&GatewaySpec) -> Result<GatewaySpec, ConfigErrors>,
        locate: impl FnOnce(&mut ConfigErrors),
        save: impl FnOnce(&GatewaySpec) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<u64, ReloadError> {
        // One change at a time: the lock spans read-modify-compile-save-swap.
        let mut applied = self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let spec = candidate(&applied.spec).inspect_err(|errors| self.record_rejection(errors))?;
        let unread_save = match trigger {
            Trigger::Files => self.unread_save.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take(),
            Trigger::Change | Trigger::SavedChange => None,
        };
        // An admin write that changes nothing, or the file watcher reading back what the admin
        // API just saved, keeps the generation. A reload of unchanged files (SIGHUP) still
        // recompiles: files the configuration points at, such as CA bundles, may have changed.
        let is_readback = unread_save.is_some_and(|saved| saved == spec);
        if applied.generation > 0 && spec == applied.spec && (trigger != Trigger::Files || is_readback) {
            tracing::debug!(generation = applied.generation, "configuration unchanged");
            return Ok(applied.generation);
        }
        let generation = applied.generation + 1;
        let snapshot = match compile_snapshot(&spec, generation, &self.states, &self.stores, &self.metrics) {
            Ok(snapshot) => snapshot,
            Err(mut errors) => {
                locate(&mut errors);
                self.record_rejection(&errors);
                return Err(errors.into());
            }
        };
        save(&spec).map_err(ReloadError::NotSaved)?;
        if applied.generation > 0 && spec.node != self.running_node && spec.node.is_some() {
            tracing::warn!("node settings changed; they apply at the next restart");
        }
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.states.adopt(snapshot.upstreams.iter().map(|upstream| upstream.as_ref()));
        if tokio::runtime::Handle::try_current().is_ok() {
            self.health.sync(snapshot.upstreams.iter());
        }
        if trigger == Trigger::SavedChange {
            *self.unread_save.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(spec.clone());
        }
        *applied = Applied { spec, generation };
        self.outcomes.last_failed.store(false, Ordering::Relaxed);
        tracing::info!(
            generation,
            routes = snapshot.routes.len(),
            upstreams = snapshot.upstreams.len(),
            "configuration applied"
        );
        Ok(generation)
    }

    /// Counts and logs a configuration refused before it reached [`Self::apply_change`] (one
    /// that could not even be read, such as bad JSON in etcd).
    pub fn record_rejected(&self, errors: &ConfigErrors) {
        self.record_rejection(errors);
    }

    fn record_rejection(&self, errors: &ConfigErrors) {
        self.outcomes.failures.fetch_add(1, Ordering::Relaxed);
        self.outcomes.last_failed.store(true, Ordering::Relaxed);
        tracing::warn!("configuration rejected; the running one keeps serving:\n{errors}");
    }

    /// Stops background tasks (health checks).
    pub fn stop(&self) {
        self.health.stop_all();
    }
}

/// How configuration changes ended, shared with the metrics collector.
#[derive(Debug, Default)]
struct ReloadOutcomes {
    /// Changes rejected as invalid.
    failures: AtomicU64,
    /// Whether the last change tried was rejected.
    last_failed: AtomicBool,
}

/// The collector of the configuration's metrics, read at each scrape.
#[derive(Debug)]
struct ConfigMetrics {
    snapshot: SnapshotHandle,
    outcomes: Arc<ReloadOutcomes>,
}

impl Collector for ConfigMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let generation = i64::try_from(self.snapshot.load().generation).unwrap_or(i64::MAX);
        let gauge = ConstGauge::new(generation);
        gauge.encode(encoder.encode_descriptor(
            "gantry_config_generation",
            "Generation of the configuration serving: 1 at start, one more with every applied change.",
            None,
            gauge.metric_type(),
        )?)?;
        let failures = ConstCounter::new(self.outcomes.failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "gantry_config_reload_failures",
            "Configuration changes rejected (file reload, SIGHUP or admin API write); the running configuration kept serving.",
            None,
            failures.metric_type(),
        )?)?;
        let successful = ConstGauge::new(i64::from(!self.outcomes.last_failed.load(Ordering::Relaxed)));
        successful.encode(encoder.encode_descriptor(
            "gantry_config_last_reload_successful",
            "1 when the last configuration change tried was applied, 0 when it was rejected.",
            None,
            successful.metric_type(),
        )?)
    }
}

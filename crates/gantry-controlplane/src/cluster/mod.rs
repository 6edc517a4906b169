//! Cluster mode: many stateless nodes share one configuration kept in etcd.
//!
//! Keys, under the configured prefix (`/gantry`):
//!
//! - `config/{kind}/{id}`: one resource as JSON, exactly as the admin API takes it; a kind's
//!   resources are ordered by when their key was created, as new resources are appended in a
//!   file.
//! - `config/global_policies`: the global policy list as JSON.
//! - `config/.version`: rewritten by every write. Each admin write is one etcd transaction
//!   that only succeeds while this key's revision is the one the writing node last read, so
//!   two nodes that change the configuration at once cannot lose either's update: the later
//!   one is refused with 409 and retries on the newer configuration.
//! - `nodes/{node id}`: each live node's description, bound to a lease it renews, so a node
//!   that stops disappears after `node_ttl`.
//!
//! Every node, including the one that wrote, applies what it reads from its watch through the
//! same validate-compile-swap path as a file reload ([`ControlPlane::apply_change`]). A node
//! that loses etcd keeps serving its last good snapshot and, once etcd answers again, reads
//! everything afresh (which also covers a watch that fell behind a compaction).

pub mod etcd;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_config::error::Segment;
use gantry_config::secret::reveal_secrets;
use gantry_config::{ClusterSpec, ConfigErrors, FieldPath, GatewaySpec, Origin, PolicySpec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use self::etcd::{Etcd, EtcdError, KeyValue, ModRevisionIs, WatchEvent, WatchMessage, Write};
use crate::admin::kinds::{for_each_kind, KindVisitor};
use crate::admin::ConfigResource;
use crate::ControlPlane;

/// The name of the key that every write rewrites.
const VERSION_KEY: &str = ".version";
/// The name of the key that holds the global policies.
const GLOBAL_POLICIES_KEY: &str = "global_policies";
/// Longest wait between attempts to reach etcd again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A write was refused because the configuration changed since this node read it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the configuration in etcd changed since this node read it (another node wrote at the same time); read it again and retry"
)]
pub struct WriteConflict;

/// This node's link to the cluster: its etcd client, what it last read, and its identity.
#[derive(Debug)]
pub struct Cluster {
    etcd: Etcd,
    prefix: String,
    node_id: String,
    node_ttl: Duration,
    view: Mutex<View>,
    base: Mutex<Base>,
    sync: Mutex<SyncState>,
}

/// The configuration this node runs, as of which etcd revision: the base admin writes are
/// made against. A write sends only what it changes relative to this base, on condition that
/// etcd's version key is still the base's, so a node that has not yet seen another's write
/// cannot undo it, and a change validated against a configuration that no longer exists is
/// refused rather than stored.
#[derive(Clone, Debug, Default)]
struct Base {
    spec: GatewaySpec,
    /// The version key's last-change revision (0: no write yet).
    version: i64,
    /// The store revision the base was read or written at.
    revision: i64,
}

/// The configuration keys as this node last read them.
#[derive(Debug, Default)]
struct View {
    /// Keys below `{prefix}/config/`, by their name after it.
    keys: BTreeMap<String, KeyValue>,
    /// The store revision the view is complete up to.
    revision: i64,
}

/// How the link to etcd is doing, for `GET /cluster`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncState {
    /// The watch is running.
    pub connected: bool,
    /// The etcd revision the running configuration was read at.
    pub revision: i64,
    /// The last failure to reach etcd or to apply what it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Cluster {
    /// A link to the etcd cluster `spec` names. Nothing is contacted yet.
    pub fn new(spec: &ClusterSpec) -> Result<Self, String> {
        let endpoints = spec
            .etcd
            .endpoints
            .iter()
            .map(|endpoint| {
                gantry_config::etcd_endpoint_uri(endpoint).ok_or_else(|| format!("bad etcd endpoint {endpoint}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth = spec.etcd.username.clone().map(|name| {
            (name, spec.etcd.password.as_ref().map(|password| password.expose().clone()).unwrap_or_default())
        });
        let etcd = Etcd::new(endpoints, spec.etcd.timeout.get(), auth).map_err(|err| err.to_string())?;
        let node_id = spec.node_id.clone().unwrap_or_else(default_node_id);
        Ok(Self {
            etcd,
            prefix: spec.etcd.prefix.clone(),
            node_id,
            node_ttl: spec.etcd.node_ttl.get(),
            view: Mutex::default(),
            base: Mutex::default(),
            sync: Mutex::default(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How the link to etcd is doing.
    pub fn sync_state(&self) -> SyncState {
        self.sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn config_prefix(&self) -> String {
        format!("{}/config/", self.prefix)
    }

    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    fn record(&self, update: impl FnOnce(&mut SyncState)) {
        update(&mut self.sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    /// Keeps `control` in step with etcd until the task is dropped: reads every key, applies
    /// them, then applies each change the watch reports. Any failure (etcd unreachable, a
    /// watch behind a compaction) starts over with a full read after a growing pause; the
    /// running configuration keeps serving meanwhile.
    pub async fn sync(self: Arc<Self>, control: Arc<ControlPlane>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.sync_once(&control).await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(reason) => {
                    tracing::warn!(error = %reason, "lost the configuration watch on etcd; the running configuration keeps serving");
                    self.record(|sync| {
                        sync.connected = false;
                        sync.last_error = Some(reason);
                    });
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// One full read followed by a watch, until the watch ends.
    async fn sync_once(self: &Arc<Self>, control: &Arc<ControlPlane>) -> Result<(), String> {
        let prefix = self.config_prefix();
        let (revision, kvs) = self.etcd.range_prefix(&prefix).await.map_err(|err| err.to_string())?;
        {
            let mut view = self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            view.keys = kvs.into_iter().filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?.to_owned(), kv))).collect();
            view.revision = revision;
        }
        {
            // A store whose revisions went back was replaced (restored from a backup, or new):
            // what it holds now is the configuration, whatever this node wrote before.
            let mut base = self.base.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if revision < base.revision {
                base.revision = 0;
            }
        }
        self.apply(control).await;
        let mut watch = self.etcd.watch_prefix(&prefix, revision + 1).await.map_err(|err| err.to_string())?;
        self.record(|sync| {
            sync.connected = true;
            sync.last_error = None;
        });
        tracing::info!(revision, "watching the configuration in etcd");
        loop {
            match watch.next().await {
                Ok(Some(WatchMessage::Events { revision, events })) => {
                    {
                        let mut view = self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        for event in events {
                            match event {
                                WatchEvent::Put(kv) => {
                                    if let Some(name) = kv.key.strip_prefix(&prefix) {
                                        view.keys.insert(name.to_owned(), kv);
                                    }
                                }
                                WatchEvent::Delete(key) => {
                                    if let Some(name) = key.strip_prefix(&prefix) {
                                        view.keys.remove(name);
                                    }
                                }
                            }
                        }
                        view.revision = revision;
                    }
                    self.apply(control).await;
                }
                Ok(Some(WatchMessage::Compacted)) => {
                    return Err("the watch fell behind a compaction; reading everything again".into());
                }
                Ok(None) => return Err("etcd ended the watch".into()),
                Err(err) => return Err(err.to_string()),
            }
        }
    }

    /// Applies the view through the same path as any reload. An invalid configuration in etcd
    /// (written around the admin API) is refused and logged; the running one keeps serving.
    ///
    /// The base moves with the running configuration inside the control plane's one-change-
    /// at-a-time section, so an admin write (in the same section) always diffs against exactly
    /// the configuration it was made on.
    async fn apply(self: &Arc<Self>, control: &Arc<ControlPlane>) {
        let (revision, version, built) = {
            let view = self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            (view.revision, view.keys.get(VERSION_KEY).map_or(0, |kv| kv.mod_revision), self.spec_of(&view))
        };
        let control = control.clone();
        let cluster = self.clone();
        let prefix = self.config_prefix();
        let outcome = tokio::task::spawn_blocking(move || {
            let spec = built.inspect_err(|errors| control.record_rejected(errors))?;
            let target = Base { spec, version, revision };
            control
                .apply_change_and_save(
                    |applied| {
                        // This node's own write is newer than what the watch has delivered so
                        // far: applying the older view would undo it until the watch catches up.
                        if target.revision < cluster.base().revision {
                            return Ok(applied.clone());
                        }
                        if *applied == target.spec {
                            cluster.set_base(target.clone());
                        }
                        Ok(target.spec.clone())
                    },
                    |_| {
                        cluster.set_base(target.clone());
                        Ok(())
                    },
                )
                .map_err(|err| match err {
                    crate::ReloadError::Invalid(mut errors) => {
                        locate_in_etcd(&prefix, &mut errors);
                        errors
                    }
                    other => ConfigErrors::one(FieldPath::root(), other.to_string()),
                })
        })
        .await;
        match outcome {
            Ok(Ok(generation)) => {
                self.record(|sync| {
                    sync.revision = sync.revision.max(revision);
                    sync.last_error = None;
                });
                tracing::debug!(generation, revision, "configuration from etcd applied");
            }
            Ok(Err(errors)) => {
                tracing::warn!(
                    revision,
                    "the configuration in etcd is invalid; the running one keeps serving:\n{errors}"
                );
                self.record(|sync| sync.last_error = Some(format!("revision {revision} is invalid: {errors}")));
            }
            Err(err) => tracing::error!(error = %err, "applying the configuration from etcd failed"),
        }
    }

    /// The configuration the view holds.
    fn spec_of(&self, view: &View) -> Result<GatewaySpec, ConfigErrors> {
        let prefix = self.config_prefix();
        let mut errors = ConfigErrors::default();
        let mut spec = GatewaySpec::default();
        let mut read = ReadKinds { view, prefix: &prefix, spec: &mut spec, errors: &mut errors, known: Vec::new() };
        for_each_kind(&mut read);
        let known = std::mem::take(&mut read.known);
        if let Some(kv) = view.keys.get(GLOBAL_POLICIES_KEY) {
            match decode::<Vec<PolicySpec>>(
                &kv.value,
                &FieldPath::root().key(GLOBAL_POLICIES_KEY),
                &prefix,
                GLOBAL_POLICIES_KEY,
            ) {
                Ok(policies) => spec.global_policies = policies,
                Err(more) => errors.0.extend(more.0),
            }
        }
        for name in view.keys.keys() {
            let kind = name.split_once('/').map_or(name.as_str(), |(kind, _)| kind);
            if name != VERSION_KEY && name != GLOBAL_POLICIES_KEY && !known.contains(&kind) {
                let mut error = ConfigErrors::one(FieldPath::root(), "not a Gantry configuration key");
                error.0[0].origin = Some(Origin::Etcd { key: format!("{prefix}{name}") });
                errors.0.extend(error.0);
            }
        }
        errors.into_result(spec)
    }

    /// Writes `candidate` to etcd: the resources that differ from the base (the running
    /// configuration), in one transaction conditioned on nothing having changed since. Call
    /// it from the control plane's save step, which runs inside its one-change-at-a-time
    /// section, off the async workers (it blocks).
    pub fn save_blocking(&self, candidate: &GatewaySpec) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let base = self.base();
        let writes = self.writes_for(&base.spec, candidate)?;
        if writes.is_empty() {
            return Ok(());
        }
        let version_key = format!("{}{VERSION_KEY}", self.config_prefix());
        let stamp = json!({"node": self.node_id, "time": format!("{:.3}", jiff::Timestamp::now())});
        let mut all = writes;
        all.push(Write::Put { key: version_key.clone(), value: stamp.to_string().into_bytes() });
        let condition = [ModRevisionIs { key: version_key, revision: base.version }];
        let etcd = self.etcd.clone();
        let committed =
            tokio::runtime::Handle::current().block_on(async move { etcd.transaction(&condition, &all).await })?;
        match committed {
            Some(revision) => {
                // The caller swaps the candidate in next, in the same section; it is the new base.
                self.set_base(Base { spec: candidate.clone(), version: revision, revision });
                Ok(())
            }
            None => Err(Box::new(WriteConflict)),
        }
    }

    fn base(&self) -> Base {
        self.base.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn set_base(&self, base: Base) {
        *self.base.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = base;
    }

    /// The puts and deletes that turn `current` into `candidate`: only what the write changed.
    fn writes_for(
        &self,
        current: &GatewaySpec,
        candidate: &GatewaySpec,
    ) -> Result<Vec<Write>, Box<dyn std::error::Error + Send + Sync>> {
        let mut diff = DiffKinds { prefix: self.config_prefix(), current, candidate, writes: Vec::new(), failed: None };
        for_each_kind(&mut diff);
        if let Some(err) = diff.failed {
            return Err(err.into());
        }
        let mut writes = diff.writes;
        if current.global_policies != candidate.global_policies {
            let key = format!("{}{GLOBAL_POLICIES_KEY}", self.config_prefix());
            if candidate.global_policies.is_empty() {
                writes.push(Write::Delete { key });
            } else {
                writes.push(Write::Put { key, value: encode(&candidate.global_policies)? });
            }
        }
        Ok(writes)
    }

    /// Keeps this node listed under `nodes/` while the task runs: a lease renewed every third
    /// of `node_ttl`, and the node's description (rewritten when `describe` changes).
    pub async fn announce(self: Arc<Self>, describe: impl Fn() -> serde_json::Value + Send + 'static) {
        let key = format!("{}{}", self.nodes_prefix(), self.node_id);
        let mut lease: Option<i64> = None;
        let mut announced = serde_json::Value::Null;
        loop {
            let description = describe();
            let outcome: Result<(), EtcdError> = async {
                let id = match lease {
                    Some(id) if self.etcd.keep_alive(id).await? => id,
                    _ => {
                        let id = self.etcd.grant_lease(self.node_ttl).await?;
                        lease = Some(id);
                        announced = serde_json::Value::Null;
                        id
                    }
                };
                if description != announced {
                    self.etcd.put_with_lease(&key, description.to_string().as_bytes(), id).await?;
                    announced = description;
                }
                Ok(())
            }
            .await;
            if let Err(err) = outcome {
                tracing::debug!(error = %err, "cannot renew this node's entry in etcd");
                lease = None;
            }
            tokio::time::sleep(self.node_ttl / 3).await;
        }
    }

    /// Removes this node's entry at once (on shutdown) instead of waiting for its lease.
    pub async fn withdraw(&self) {
        let key = format!("{}{}", self.nodes_prefix(), self.node_id);
        let _ = self.etcd.transaction(&[], &[Write::Delete { key }]).await;
    }

    /// The nodes that are listed now, each as it described itself.
    pub async fn nodes(&self) -> Result<Vec<serde_json::Value>, EtcdError> {
        let (_, kvs) = self.etcd.range_prefix(&self.nodes_prefix()).await?;
        Ok(kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }
}

/// The host name and process id: unique per process, and recognisable in `GET /cluster`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gantry".to_owned());
    format!("{host}-{}", std::process::id())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    // etcd is the gateway's own input, like the configuration files: secrets as they are.
    reveal_secrets(|| serde_json::to_vec(value)).map_err(Into::into)
}

fn decode<T: DeserializeOwned>(value: &[u8], at: &FieldPath, prefix: &str, name: &str) -> Result<T, ConfigErrors> {
    let mut deserializer = serde_json::Deserializer::from_slice(value);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let mut errors = ConfigErrors::one(at.join(&FieldPath::from_serde(err.path())), err.inner().to_string());
        errors.0[0].origin = Some(Origin::Etcd { key: format!("{prefix}{name}") });
        errors
    })
}

/// Names the etcd key of each error's resource.
fn locate_in_etcd(prefix: &str, errors: &mut ConfigErrors) {
    for error in &mut errors.0 {
        if error.origin.is_some() {
            continue;
        }
        error.origin = match error.path.segments() {
            [Segment::Key(kind), Segment::Index { id: Some(id), .. }, ..] => {
                Some(Origin::Etcd { key: format!("{prefix}{kind}/{id}") })
            }
            [Segment::Key(kind), ..] if kind == GLOBAL_POLICIES_KEY => {
                Some(Origin::Etcd { key: format!("{prefix}{GLOBAL_POLICIES_KEY}") })
            }
            _ => None,
        };
    }
}

/// Reads each kind's keys into the spec, in creation order.
struct ReadKinds<'v> {
    view: &'v View,
    prefix: &'v str,
    spec: &'v mut GatewaySpec,
    errors: &'v mut ConfigErrors,
    known: Vec<&'static str>,
}

impl KindVisitor for ReadKinds<'_> {
    fn visit<K: ConfigResource>(&mut self) {
        let kind = K::KIND.name();
        self.known.push(kind);
        let start = format!("{kind}/");
        let mut entries: Vec<(&String, &KeyValue)> =
            self.view.keys.range(start.clone()..).take_while(|(name, _)| name.starts_with(&start)).collect();
        entries.sort_by_key(|(_, kv)| kv.create_revision);
        for (index, (name, kv)) in entries.into_iter().enumerate() {
            let id = &name[start.len()..];
            let at = FieldPath::root().key(kind).item(index, id);
            match decode::<K>(&kv.value, &at, self.prefix, name) {
                Ok(resource) if resource.id() == id => K::list_mut(self.spec).push(resource),
                Ok(resource) => {
                    let mut error = ConfigErrors::one(
                        at.key("id"),
                        format!("`{}` differs from the key's id `{id}`", resource.id()),
                    );
                    error.0[0].origin = Some(Origin::Etcd { key: format!("{}{name}", self.prefix) });
                    self.errors.0.extend(error.0);
                }
                Err(more) => self.errors.0.extend(more.0),
            }
        }
    }
}

/// Collects the writes of each kind.
struct DiffKinds<'s> {
    prefix: String,
    current: &'s GatewaySpec,
    candidate: &'s GatewaySpec,
    writes: Vec<Write>,
    failed: Option<String>,
}

impl KindVisitor for DiffKinds<'_> {
    fn visit<K: ConfigResource>(&mut self) {
        let kind = K::KIND.name();
        let current: BTreeMap<&str, &K> =
            K::list(self.current).iter().map(|resource| (resource.id(), resource)).collect();
        let candidate: BTreeMap<&str, &K> =
            K::list(self.candidate).iter().map(|resource| (resource.id(), resource)).collect();
        for (id, resource) in &candidate {
            if current.get(id) != Some(resource) {
                match encode(resource) {
                    Ok(value) => self.writes.push(Write::Put { key: format!("{}{kind}/{id}", self.prefix), value }),
                    Err(err) => self.failed = Some(format!("cannot write {kind}/{id} as JSON: {err}")),
                }
            }
        }
        for id in current.keys().filter(|id| !candidate.contains_key(*id)) {
            self.writes.push(Write::Delete { key: format!("{}{kind}/{id}", self.prefix) });
        }
    }
}

//! The immutable, compiled configuration the data plane serves from.
//!
//! The control plane builds a new [`Snapshot`] on every accepted change and swaps it in with
//! one atomic store. A request loads the current one once and finishes on it, so a reload
//! never changes a request halfway.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::route::CompiledRoute;
use crate::router::Router;
use crate::upstream::CompiledUpstream;

/// One generation of compiled configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every applied configuration.
    pub generation: u64,
    /// Route index.
    pub router: Router,
    /// Routes in configuration order.
    pub routes: Vec<Arc<CompiledRoute>>,
    /// Upstreams in configuration order.
    pub upstreams: Vec<Arc<CompiledUpstream>>,
    /// Positions in `upstreams` by id, for upstreams a policy chooses per request.
    upstream_positions: HashMap<Arc<str>, usize>,
}

impl Snapshot {
    /// Generation `generation` of `routes` indexed by `router`, and `upstreams`.
    pub fn new(
        generation: u64,
        router: Router,
        routes: Vec<Arc<CompiledRoute>>,
        upstreams: Vec<Arc<CompiledUpstream>>,
    ) -> Self {
        let upstream_positions =
            upstreams.iter().enumerate().map(|(position, upstream)| (upstream.id.clone(), position)).collect();
        Self { generation, router, routes, upstreams, upstream_positions }
    }

    /// The upstream with id `id`, if configured.
    pub fn upstream(&self, id: &str) -> Option<&Arc<CompiledUpstream>> {
        self.upstream_positions.get(id).map(|&position| &self.upstreams[position])
    }
}

/// Shared handle to the current snapshot.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// A handle holding an empty snapshot (generation 0: every request gets 404).
pub fn empty_handle() -> SnapshotHandle {
    Arc::new(ArcSwap::from_pointee(Snapshot::default()))
}

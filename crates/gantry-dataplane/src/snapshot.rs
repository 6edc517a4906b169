//! The immutable, compiled configuration the data plane serves from.
//!
//! The control plane builds a new [`Snapshot`] on every accepted change and swaps it in with
//! one atomic store. A request loads the current one once and finishes on it, so a reload
//! never changes a request halfway.

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
}

/// Shared handle to the current snapshot.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// A handle holding an empty snapshot (generation 0: every request gets 404).
pub fn empty_handle() -> SnapshotHandle {
    Arc::new(ArcSwap::from_pointee(Snapshot::default()))
}

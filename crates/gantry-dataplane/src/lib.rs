//! Gantry's data plane: the per-request hot path.
//!
//! A connection is accepted by [`listener`], a request is matched by [`router`] against the
//! current [`snapshot::Snapshot`], runs through the route's [`pipeline`], is sent upstream by
//! [`forward`] and logged by [`access_log`]. The control plane builds snapshots; the data plane
//! only reads them, one atomic load per request.

pub mod access_log;
mod background;
pub mod body;
pub mod forward;
pub mod headers;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod pipeline;
pub mod proxy;
pub mod route;
pub mod router;
pub mod snapshot;
mod subrequest;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use snapshot::{Snapshot, SnapshotHandle};

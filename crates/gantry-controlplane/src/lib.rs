//! Gantry's control plane: turns configuration into snapshots and keeps them current.
//!
//! [`compile`] checks a whole [`gantry_config::GatewaySpec`] and builds a
//! [`gantry_dataplane::Snapshot`]; [`reload`] serializes every change (file watch, SIGHUP,
//! admin API) through validate, compile and swap, keeping the running snapshot when anything
//! is wrong; [`sources`] watches files; [`admin`] is the HTTP admin API, whose writes go
//! through the same reload path and are saved to the configuration files, or, in
//! [`cluster`] mode, to etcd, which every node watches.

pub mod admin;
pub mod cluster;
pub mod compile;
pub mod reload;
pub mod sources;

pub use compile::compile_snapshot;
pub use reload::{ControlPlane, ReloadError};

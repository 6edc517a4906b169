//! Gantry's built-in policies, one module per policy, grouped by the [`Stage`] their request
//! hook runs in, each with its markdown documentation beside it.
//!
//! [`registry`] is the one list of them: the control plane builds policies through it, and the
//! docs index and the admin API's JSON Schemas are generated from it. Adding a policy means
//! adding its module, its markdown file and one line in `registry.rs`.
//!
//! [`Stage`]: gantry_policy_api::Stage

#![warn(missing_docs)]

pub mod access;
pub mod ai;
pub mod forward;
pub mod identity;
pub mod ingress;
pub mod registry;
pub mod traffic;
pub mod transform;
pub mod validate;

pub use registry::{all, find};

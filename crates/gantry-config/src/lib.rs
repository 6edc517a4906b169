//! Gantry's configuration model.
//!
//! The one typed model of everything a user writes: the `*Spec` types in [`spec`], read from
//! YAML files or directories by [`load`], checked by [`validate`] with every error collected
//! and located ([`ConfigErrors`]). The file loader, the admin API and the JSON Schema export all
//! use these same types. This crate knows nothing of networking; each policy's settings stay a
//! raw value here and are typed by the policy registry.

pub mod duration;
pub mod error;
pub mod load;
mod locate;
pub mod secret;
pub mod spec;
pub mod validate;

pub use duration::Duration;
pub use error::{ConfigError, ConfigErrors, FieldPath, Origin};
pub use load::{load_path, load_str, ConfigSource, LoadedConfig};
pub use secret::Secret;
pub use spec::*;

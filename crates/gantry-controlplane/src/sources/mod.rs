//! Where configuration changes come from besides the admin API.

pub mod file;

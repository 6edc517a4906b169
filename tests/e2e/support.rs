//! Shared helpers of the end-to-end tests.

use std::path::Path;

use gantry_testkit::GatewayProcess;

/// The `gantry` executable built for these tests.
pub fn gantry_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gantry"))
}

/// Starts the gateway with `yaml` (listeners on port 0).
pub fn start_gateway(yaml: &str) -> GatewayProcess {
    GatewayProcess::start(gantry_binary(), yaml)
}

/// A config with one plain listener on port 0 and the given resources.
pub fn with_listener(resources: &str) -> String {
    format!("node:\n  listeners:\n    - address: 127.0.0.1:0\n{resources}")
}

//! One module per policy, each through a running gateway.

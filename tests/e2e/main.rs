//! End-to-end tests: the real `gantry` binary, started on port 0, against real upstream
//! servers started by the tests. One test binary for all of them keeps link time down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access_log;
mod admin;
mod admin_audit;
mod ai_telemetry;
mod cli;
mod cluster;
mod consumer_groups;
mod grpc;
mod import_openapi;
mod metrics;
mod policies;
mod protocols;
mod proxy;
mod reload;
mod routing;
mod shutdown;
mod status;
mod support;
mod tls;
mod tracing;
mod upstreams;
mod websocket;

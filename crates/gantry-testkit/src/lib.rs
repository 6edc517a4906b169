//! Test helpers: run the real `gantry` binary on port 0, start real upstream servers,
//! make certificates, and wait for conditions with a deadline instead of sleeping.
//!
//! Every server or process started here is owned by a guard that stops it on `Drop`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod client;
pub mod cloud_llm;
pub mod embeddings;
pub mod etcd;
pub mod gateway;
pub mod grpc;
pub mod h2c;
pub mod jwks;
pub mod ldap;
pub mod llmock;
mod node;
pub mod oidc;
pub mod otlp;
pub mod promtool;
pub mod raw;
pub mod redis;
pub mod saml;
pub mod soap;
pub mod streaming;
pub mod tls_client;
pub mod tls_upstream;
pub mod upstream;
pub mod websocket;

pub use gateway::GatewayProcess;
pub use tls_upstream::TlsEchoUpstream;
pub use upstream::EchoUpstream;

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits; `GANTRY_TEST_DEADLINE_SECS` raises it on slow machines.
pub fn deadline() -> Duration {
    let seconds = std::env::var("GANTRY_TEST_DEADLINE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    Duration::from_secs(seconds)
}

/// Polls `check` until it returns `Some`, or panics with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

//! Cluster mode: several stateless gateway nodes that take their configuration from etcd.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, Secret};

/// Settings of a node that runs as one of many: the configuration lives in etcd, every node
/// watches it, and any node's admin API writes to it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// This node's name in `GET /cluster`. Absent: the host name and the process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Where the configuration is kept.
    pub etcd: EtcdSpec,
}

/// How to reach etcd and where Gantry's keys are.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdSpec {
    /// Client URLs of the etcd members (`http://host:2379` or `host:2379`); requests are
    /// balanced over them and move on when one fails.
    pub endpoints: Vec<String>,
    /// The key prefix every Gantry key starts with, so several gateways can share one etcd.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// etcd user, when etcd has authentication on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its password. Shown as `***` by the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret<String>>,
    /// Longest wait for a connection or one request.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How long a node stays listed in `GET /cluster` after it stops renewing its lease.
    #[serde(default = "default_node_ttl")]
    pub node_ttl: Duration,
}

fn default_prefix() -> String {
    "/gantry".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_node_ttl() -> Duration {
    Duration::from_secs(10)
}

/// The shortest node lease: etcd refuses leases shorter than about 1.5 s with its default
/// election timeout.
const MIN_NODE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl ClusterSpec {
    /// Checks the settings; errors go under `path` (`node.cluster`).
    pub fn validate(&self, path: &crate::FieldPath, errors: &mut crate::ConfigErrors) {
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.contains('/') || id.chars().any(char::is_control) {
                errors.push(path.key("node_id"), "must be a non-empty name without `/` or control characters");
            }
        }
        let etcd = path.key("etcd");
        if self.etcd.endpoints.is_empty() {
            errors.push(etcd.key("endpoints"), "list at least one etcd client URL");
        }
        for (index, endpoint) in self.etcd.endpoints.iter().enumerate() {
            if etcd_endpoint_uri(endpoint).is_none() {
                errors.push(
                    etcd.key("endpoints").index(index),
                    format!("`{endpoint}` is not an etcd client URL (`http://host:port` or `host:port`)"),
                );
            }
        }
        let prefix = &self.etcd.prefix;
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            errors.push(etcd.key("prefix"), "must start with `/` and not end with one, like `/gantry`");
        }
        if self.etcd.timeout.get().is_zero() {
            errors.push(etcd.key("timeout"), "must be longer than 0");
        }
        if self.etcd.node_ttl.get() < MIN_NODE_TTL {
            errors.push(etcd.key("node_ttl"), "must be at least 2s");
        }
    }
}

/// `endpoint` as an `http://` or `https://` URL with a host and a port, if it is one.
pub fn etcd_endpoint_uri(endpoint: &str) -> Option<String> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => return None,
        None => ("http", endpoint),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = authority.rsplit_once(':')?;
    let valid = !host.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && !host.chars().any(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|port| port > 0);
    valid.then(|| format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_client_urls_with_a_port_and_refuses_others() {
        assert_eq!(etcd_endpoint_uri("127.0.0.1:2379").as_deref(), Some("http://127.0.0.1:2379"));
        assert_eq!(etcd_endpoint_uri("[::1]:2379").as_deref(), Some("http://[::1]:2379"));
        assert!(etcd_endpoint_uri("http://etcd-0.etcd:2379").is_some());
        assert!(etcd_endpoint_uri("https://etcd:2379/").is_some());
        assert!(etcd_endpoint_uri("etcd").is_none(), "no port");
        assert!(etcd_endpoint_uri("unix:///run/etcd.sock").is_none());
        assert!(etcd_endpoint_uri("http://etcd:2379/v3").is_none(), "a path");
    }
}

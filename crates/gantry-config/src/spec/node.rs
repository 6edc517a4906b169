//! Node settings: how this gateway process listens and runs. They need a restart; a reload
//! that changes them keeps the running values and warns.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AccessLogSpec, Duration, Secret};

/// Settings of one gateway process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Where client traffic is accepted.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerSpec>,
    /// The admin API listener. Absent: no admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminSpec>,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// Worker threads of the data plane. Absent: one per core. `1` runs a single-threaded
    /// scheduler, the fastest choice for a process pinned to one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// The access log: one structured record per request, written by its sinks off the
    /// request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
    /// Starts the built-in demo upstream on this address (`host:port`), for trying Gantry out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_upstream: Option<String>,
    /// Stores shared by policies that keep state outside the process (rate limit counters in
    /// Redis). The in-memory store is always there and needs no settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<StoresSpec>,
    /// What the admin API's `GET /metrics` counts of the traffic served.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Distributed tracing (OpenTelemetry): trace context propagation and span export over
    /// OTLP. Absent: no trace headers are read or written and no span is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<super::TracingSpec>,
    /// Cluster mode: the configuration lives in etcd and is shared by every node. Absent: the
    /// configuration files are the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::ClusterSpec>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            listeners: default_listeners(),
            admin: None,
            limits: LimitsSpec::default(),
            shutdown_timeout: default_shutdown_timeout(),
            worker_threads: None,
            access_log: None,
            demo_upstream: None,
            stores: None,
            metrics: MetricsSpec::default(),
            tracing: None,
            cluster: None,
        }
    }
}

fn default_listeners() -> Vec<ListenerSpec> {
    vec![ListenerSpec { address: "0.0.0.0:8080".to_owned(), tls: None, http2: true }]
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One listening socket for client traffic.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// `ip:port` to bind; port 0 picks a free port.
    pub address: String,
    /// Terminate TLS here with these certificates (chosen by SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// Accept HTTP/2 (h2 by ALPN over TLS, h2c prior knowledge in clear text).
    #[serde(default = "default_true")]
    pub http2: bool,
}

fn default_true() -> bool {
    true
}

/// TLS termination on a listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// Certificates; the one whose names match the client's SNI is used, the first one otherwise.
    pub certificates: Vec<CertificateSpec>,
    /// Asks clients for certificates issued by these CAs (mutual TLS). Absent: none is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<ClientCertificatesSpec>,
}

/// TLS client authentication on a listener: which CAs issue client certificates, and whether
/// a client must present one. Policies (`mtls_auth`) then see the verified certificate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "ClientCertificatesFields")]
pub struct ClientCertificatesSpec {
    /// PEM file of the CA certificates that issue client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The same CA certificates written inline, in PEM (instead of `ca_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// `required`: the handshake fails without a valid certificate. `optional`: clients without
    /// one are served too (routes decide with `mtls_auth`); a certificate presented must be
    /// valid either way.
    #[serde(default)]
    pub mode: ClientCertificateMode,
}

/// The fields of [`ClientCertificatesSpec`] as written, before the check that exactly one CA
/// source is given.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClientCertificatesFields {
    /// PEM file of the CA certificates that issue client certificates.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// The same CA certificates written inline, in PEM (instead of `ca_file`).
    #[serde(default)]
    ca_pem: Option<String>,
    /// `required`: the handshake fails without a valid certificate. `optional`: clients without
    /// one are served too (routes decide with `mtls_auth`); a certificate presented must be
    /// valid either way.
    #[serde(default)]
    mode: ClientCertificateMode,
}

impl TryFrom<ClientCertificatesFields> for ClientCertificatesSpec {
    type Error = &'static str;

    fn try_from(fields: ClientCertificatesFields) -> Result<Self, Self::Error> {
        match (&fields.ca_file, &fields.ca_pem) {
            (None, None) => Err("give the client certificates' CA as `ca_file` or `ca_pem`"),
            (Some(_), Some(_)) => Err("give `ca_file` or `ca_pem`, not both"),
            _ => Ok(Self { ca_file: fields.ca_file, ca_pem: fields.ca_pem, mode: fields.mode }),
        }
    }
}

/// Whether a listener's clients must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificateMode {
    /// The TLS handshake fails without a valid client certificate.
    #[default]
    Required,
    /// Clients without a certificate are served; one that presents an invalid certificate is not.
    Optional,
}

/// A certificate chain and its key, in PEM files.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The admin API listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `ip:port` to bind.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Key expected in `X-Api-Key` or `Authorization: Bearer`. Absent: a random key is
    /// generated at start and logged once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret<String>>,
    /// Name the admin audit log records for changes made with `api_key`: the log says which
    /// key acted without ever writing the key.
    #[serde(default = "default_api_key_name")]
    pub api_key_name: String,
    /// File the admin audit log is appended to; a relative path is resolved against the
    /// configuration's directory. Absent: `.gantry-audit.jsonl` in that directory, or memory
    /// only when the gateway runs on the embedded configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<PathBuf>,
}

impl AdminSpec {
    /// An admin listener on `address` with a generated key.
    pub fn on(address: String) -> Self {
        Self { address, api_key: None, api_key_name: default_api_key_name(), audit_log: None }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:9180".to_owned()
}

fn default_api_key_name() -> String {
    "admin".to_owned()
}

/// Limits on client requests.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has to send the request head.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_read_timeout(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Request metrics: per route, upstream endpoint and (when asked for) consumer, counted inline
/// on the request path and exposed by the admin API's `GET /metrics`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Count requests per route and upstream endpoint: status classes, durations, body bytes.
    /// `false` leaves only the process's own metrics (configuration, access log, policies).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Also count requests per consumer (`gantry_consumer_requests_total`), for at most
    /// `max_consumers` of them.
    #[serde(default)]
    pub consumer_label: bool,
    /// Most consumers counted apart: configured consumers first, in configuration order, then
    /// consumers described by a token as they come; the rest count together as `(other)`.
    #[serde(default = "default_max_consumers")]
    pub max_consumers: usize,
    /// Upper bounds of the request and upstream duration histograms, in increasing order.
    #[serde(default = "default_duration_buckets")]
    pub duration_buckets: Vec<Duration>,
    /// Upper bounds of the gateway overhead histogram (the time a forwarded request spends in
    /// the gateway rather than waiting for the upstream), in increasing order.
    #[serde(default = "default_overhead_buckets")]
    pub overhead_buckets: Vec<Duration>,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            consumer_label: false,
            max_consumers: default_max_consumers(),
            duration_buckets: default_duration_buckets(),
            overhead_buckets: default_overhead_buckets(),
        }
    }
}

fn default_max_consumers() -> usize {
    100
}

/// 1 ms to 10 s in 1-2-5 steps.
fn default_duration_buckets() -> Vec<Duration> {
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000].into_iter().map(Duration::from_millis).collect()
}

/// 10 µs to 100 ms in 1-2-5 steps: a gateway's own time is far shorter than a request's.
fn default_overhead_buckets() -> Vec<Duration> {
    [10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]
        .into_iter()
        .map(|micros| Duration(std::time::Duration::from_micros(micros)))
        .collect()
}

/// Stores that policies may keep state in, beyond the process's own memory.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoresSpec {
    /// A Redis server or Redis Cluster, for limits shared by every gateway process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
}

/// How to reach Redis. One connection to a node carries many requests at once (pipelined),
/// so a few connections serve a whole process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://host:port[/db]` of the server, or of several nodes of a Redis Cluster (the
    /// other nodes are discovered). Credentials go in `username` and `password`, not here.
    pub urls: Vec<String>,
    /// The nodes form a Redis Cluster: keys are spread over its slots and requests follow them.
    #[serde(default)]
    pub cluster: bool,
    /// User name for Redis ACLs (`AUTH username password`). Absent: the default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (`requirepass` or the ACL user's). Shown as `***` by the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret<String>>,
    /// Connections kept open per process (per cluster client with `cluster`), each carrying
    /// pipelined requests; requests are spread over them in turn.
    #[serde(default = "default_redis_pool_size")]
    pub pool_size: usize,
    /// Longest wait for one answer; past it the request is treated as a store error.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
    /// Longest wait for a new connection.
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout: Duration,
    /// Put before every key Gantry writes, so several gateways or applications can share a server.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
}

fn default_redis_pool_size() -> usize {
    2
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_redis_key_prefix() -> String {
    "gantry:".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener_tls(client_certificates: &str) -> Result<Option<ClientCertificatesSpec>, Vec<String>> {
        let yaml = format!(
            "node:\n  listeners:\n    - address: 127.0.0.1:0\n      tls:\n        certificates: [{{cert_file: a.pem, key_file: a.key}}]\n        client_certificates: {client_certificates}\n"
        );
        match crate::load_str(&yaml) {
            Ok(spec) => {
                let node = spec.node.expect("node settings");
                Ok(node.listeners[0].tls.as_ref().and_then(|tls| tls.client_certificates.clone()))
            }
            Err(errors) => Err(errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect()),
        }
    }

    fn metrics(yaml: &str) -> Result<MetricsSpec, Vec<String>> {
        let listed = |errors: &crate::ConfigErrors| -> Vec<String> {
            errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
        };
        let spec = crate::load_str(&format!("node:\n  metrics: {yaml}\n")).map_err(|errors| listed(&errors))?;
        let errors = crate::validate::validate_spec(&spec);
        if !errors.is_empty() {
            return Err(listed(&errors));
        }
        Ok(spec.node.expect("node settings").metrics)
    }

    #[test]
    fn counts_requests_without_consumers_by_default() {
        let spec = metrics("{}").expect("valid");
        assert_eq!(spec, MetricsSpec::default());
        assert!(spec.enabled);
        assert!(!spec.consumer_label);
        assert_eq!(spec.max_consumers, 100);
        assert_eq!(spec.duration_buckets.first(), Some(&Duration::from_millis(1)));
        assert_eq!(spec.duration_buckets.last(), Some(&Duration::from_secs(10)));
        assert_eq!(spec.overhead_buckets.first(), Some(&Duration(std::time::Duration::from_micros(10))));
        let spec = metrics("{consumer_label: true, max_consumers: 5, duration_buckets: [5ms, 1s]}").expect("valid");
        assert_eq!((spec.consumer_label, spec.max_consumers), (true, 5));
        assert_eq!(spec.duration_buckets, vec![Duration::from_millis(5), Duration::from_secs(1)]);
    }

    #[test]
    fn rejects_bad_metrics_settings_at_their_paths() {
        let errors = metrics("{max_consumers: 0}").expect_err("no consumer");
        assert!(errors.iter().any(|e| e.starts_with("node.metrics.max_consumers")), "{errors:?}");
        let errors = metrics("{duration_buckets: []}").expect_err("no bucket");
        assert!(errors.iter().any(|e| e.starts_with("node.metrics.duration_buckets")), "{errors:?}");
        let errors = metrics("{overhead_buckets: [1ms, 1ms]}").expect_err("not increasing");
        assert!(errors.iter().any(|e| e.starts_with("node.metrics.overhead_buckets[1]")), "{errors:?}");
        let errors = metrics("{duration_buckets: [0s, 1s]}").expect_err("zero");
        assert!(errors.iter().any(|e| e.starts_with("node.metrics.duration_buckets[0]")), "{errors:?}");
        let errors = metrics("{labels: [route]}").expect_err("unknown field");
        assert!(errors.iter().any(|e| e.contains("labels")), "{errors:?}");
    }

    #[test]
    fn reads_client_certificate_settings_with_required_as_the_default_mode() {
        let spec = listener_tls("{ca_file: clients-ca.pem}").expect("valid").expect("present");
        assert_eq!(spec.ca_file.as_deref(), Some(std::path::Path::new("clients-ca.pem")));
        assert_eq!(spec.mode, ClientCertificateMode::Required);
        let spec =
            listener_tls("{ca_pem: \"-----BEGIN CERTIFICATE-----\", mode: optional}").expect("valid").expect("present");
        assert_eq!(spec.mode, ClientCertificateMode::Optional);
    }

    #[test]
    fn rejects_client_certificates_without_exactly_one_ca_source_at_their_path() {
        let at = "node.listeners[0].tls.client_certificates";
        let errors = listener_tls("{mode: optional}").expect_err("no CA");
        assert!(errors.iter().any(|e| e.starts_with(at) && e.contains("`ca_file` or `ca_pem`")), "{errors:?}");
        let errors = listener_tls("{ca_file: a.pem, ca_pem: x}").expect_err("two CAs");
        assert!(errors.iter().any(|e| e.starts_with(at) && e.contains("not both")), "{errors:?}");
        let errors = listener_tls("{ca_file: a.pem, mode: sometimes}").expect_err("bad mode");
        assert!(errors.iter().any(|e| e.starts_with(at)), "{errors:?}");
        let errors = listener_tls("{ca_file: a.pem, verify_depth: 3}").expect_err("unknown field");
        assert!(errors.iter().any(|e| e.contains("verify_depth")), "{errors:?}");
    }
}

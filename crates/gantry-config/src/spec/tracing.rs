//! `node.tracing`: distributed tracing with OpenTelemetry. Spans of each request are exported
//! over OTLP (gRPC or HTTP with protobuf) from a queue the request path never waits on.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigErrors, Duration, FieldPath, Secret};

/// Distributed tracing: W3C Trace Context and B3 propagation, spans exported over OTLP.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// Where and how spans are sent.
    pub exporter: TraceExporterSpec,
    /// Which requests are recorded. Requests not recorded still pass their trace context on.
    #[serde(default)]
    pub sampler: TraceSamplerSpec,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Further attributes of the resource (`deployment.environment.name: prod`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,
    /// The queue between requests and the exporter, and how often it is sent.
    #[serde(default)]
    pub batch: TraceBatchSpec,
}

fn default_service_name() -> String {
    "gantry".to_owned()
}

/// The OTLP receiver spans are sent to.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceExporterSpec {
    /// `grpc` (the `TraceService/Export` call) or `http` (POST of protobuf).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// `http://host:4317` for gRPC (clear text, h2c); for HTTP the full URL, usually
    /// `http://host:4318/v1/traces` (`https://` for TLS).
    pub endpoint: String,
    /// Headers sent with every export (an API key of a hosted backend). Shown as `***`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Longest wait for one export; past it the batch is dropped and counted.
    #[serde(default = "default_export_timeout")]
    pub timeout: Duration,
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    Http,
}

/// Which requests are recorded. `ratio: 1` is always on; `ratio: 0` with `parent_based: false`
/// is always off.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceSamplerSpec {
    /// Share of traces recorded, 0 to 1, decided from the trace id, so every service using
    /// the same ratio keeps the same traces.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Follow the caller's decision (the sampled flag of `traceparent` or B3) when there is a
    /// caller; the ratio then decides only for traces that start here.
    #[serde(default = "default_parent_based")]
    pub parent_based: bool,
}

impl Default for TraceSamplerSpec {
    fn default() -> Self {
        Self { ratio: default_ratio(), parent_based: default_parent_based() }
    }
}

fn default_ratio() -> f64 {
    1.0
}

fn default_parent_based() -> bool {
    true
}

/// The bounded queue of finished spans and the batches it is sent in.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceBatchSpec {
    /// Most spans waiting to be exported; past it a request's spans are dropped and counted.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Most spans in one export.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How often the queue is sent (sooner when a full batch is waiting).
    #[serde(default = "default_interval")]
    pub interval: Duration,
}

impl Default for TraceBatchSpec {
    fn default() -> Self {
        Self { max_queue: default_max_queue(), max_batch: default_max_batch(), interval: default_interval() }
    }
}

fn default_max_queue() -> usize {
    2048
}

fn default_max_batch() -> usize {
    512
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

/// Checks `node.tracing`, at `path`.
pub(crate) fn validate_tracing(tracing: &TracingSpec, path: &FieldPath, errors: &mut ConfigErrors) {
    let exporter = path.key("exporter");
    let endpoint = &tracing.exporter.endpoint;
    let is_url = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => {
            !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        }
        _ => false,
    };
    if !is_url {
        errors.push(exporter.key("endpoint"), format!("`{endpoint}` is not an http:// or https:// URL"));
    } else if tracing.exporter.protocol == OtlpProtocol::Grpc && endpoint.starts_with("https://") {
        errors.push(
            exporter.key("endpoint"),
            "OTLP/gRPC is sent in clear text (h2c); for TLS use `protocol: http` with an https:// URL",
        );
    }
    for (name, value) in &tracing.exporter.headers {
        // RFC 9110 token characters; values are visible ASCII, spaces and tabs.
        let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_token) {
            errors.push(exporter.key("headers").key(name), "not a valid header name");
        } else if !value.expose().bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            errors.push(exporter.key("headers").key(name), "the value has characters a header cannot carry");
        }
    }
    if tracing.exporter.timeout.get().is_zero() {
        errors.push(exporter.key("timeout"), "must be longer than zero");
    }
    if !(0.0..=1.0).contains(&tracing.sampler.ratio) {
        errors.push(path.key("sampler").key("ratio"), "must be between 0 and 1");
    }
    if tracing.service_name.trim().is_empty() {
        errors.push(path.key("service_name"), "cannot be empty");
    }
    let batch = path.key("batch");
    if tracing.batch.max_queue == 0 {
        errors.push(batch.key("max_queue"), "must be at least 1");
    }
    if tracing.batch.max_batch == 0 {
        errors.push(batch.key("max_batch"), "must be at least 1");
    } else if tracing.batch.max_batch > tracing.batch.max_queue {
        errors.push(batch.key("max_batch"), "cannot be larger than `max_queue`");
    }
    if tracing.batch.interval.get().is_zero() {
        errors.push(batch.key("interval"), "must be longer than zero");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracing(yaml: &str) -> Result<TracingSpec, Vec<String>> {
        let listed = |errors: &ConfigErrors| -> Vec<String> {
            errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
        };
        let spec = crate::load_str(&format!("node:\n  tracing: {yaml}\n")).map_err(|errors| listed(&errors))?;
        let errors = crate::validate::validate_spec(&spec);
        if !errors.is_empty() {
            return Err(listed(&errors));
        }
        Ok(spec.node.expect("node settings").tracing.expect("tracing settings"))
    }

    #[test]
    fn defaults_to_grpc_parent_based_always_on_sampling() {
        let spec = tracing("{exporter: {endpoint: 'http://127.0.0.1:4317'}}").expect("valid");
        assert_eq!(spec.exporter.protocol, OtlpProtocol::Grpc);
        assert_eq!(spec.exporter.timeout, Duration::from_secs(10));
        assert_eq!(spec.sampler, TraceSamplerSpec { ratio: 1.0, parent_based: true });
        assert_eq!(spec.service_name, "gantry");
        assert_eq!(spec.batch, TraceBatchSpec { max_queue: 2048, max_batch: 512, interval: Duration::from_secs(5) });
    }

    #[test]
    fn reads_every_setting() {
        let spec = tracing(
            "{exporter: {protocol: http, endpoint: 'https://otel.example/v1/traces', headers: {x-api-key: k}, timeout: 2s}, \
             sampler: {ratio: 0.25, parent_based: false}, service_name: edge, resource_attributes: {region: eu}, \
             batch: {max_queue: 100, max_batch: 10, interval: 100ms}}",
        )
        .expect("valid");
        assert_eq!(spec.exporter.protocol, OtlpProtocol::Http);
        assert_eq!(spec.exporter.headers["x-api-key"].expose(), "k");
        assert_eq!(spec.sampler, TraceSamplerSpec { ratio: 0.25, parent_based: false });
        assert_eq!(spec.resource_attributes["region"], "eu");
        assert_eq!(spec.batch.interval, Duration::from_millis(100));
    }

    #[test]
    fn rejects_bad_tracing_settings_at_their_paths() {
        let cases = [
            ("{exporter: {endpoint: 'localhost:4317'}}", "node.tracing.exporter.endpoint"),
            ("{exporter: {endpoint: 'http://x:4317', protocol: thrift}}", "node.tracing.exporter"),
            ("{exporter: {endpoint: 'https://x:4317'}}", "node.tracing.exporter.endpoint"),
            ("{exporter: {endpoint: 'http://x:4317', timeout: 0s}}", "node.tracing.exporter.timeout"),
            ("{exporter: {endpoint: 'http://x:4317', headers: {'bad name': v}}}", "node.tracing.exporter.headers"),
            ("{exporter: {endpoint: 'http://x:4317'}, sampler: {ratio: 1.5}}", "node.tracing.sampler.ratio"),
            ("{exporter: {endpoint: 'http://x:4317'}, sampler: {rate: 1}}", "node.tracing.sampler"),
            ("{exporter: {endpoint: 'http://x:4317'}, batch: {max_queue: 0}}", "node.tracing.batch.max_queue"),
            (
                "{exporter: {endpoint: 'http://x:4317'}, batch: {max_queue: 5, max_batch: 6}}",
                "node.tracing.batch.max_batch",
            ),
            ("{exporter: {endpoint: 'http://x:4317'}, batch: {interval: 0s}}", "node.tracing.batch.interval"),
            ("{exporter: {endpoint: 'http://x:4317'}, service_name: ' '}", "node.tracing.service_name"),
            ("{exporter: {endpoint: 'http://x:4317'}, propagators: [b3]}", "node.tracing"),
            ("{sampler: {ratio: 1}}", "node.tracing"),
        ];
        for (yaml, at) in cases {
            let errors = tracing(yaml).expect_err(yaml);
            assert!(errors.iter().any(|error| error.starts_with(at)), "{yaml}: {errors:?}");
        }
    }
}

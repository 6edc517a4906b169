//! The access log settings (`node.access_log`): which fields each request's record carries and
//! the sinks the records go to, each behind its own bounded queue.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigErrors, Duration, FieldPath, Secret};

/// The access log: one structured record per request, built on the request path and written
/// by each sink on its own task, off the request path.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// Shorthand for one `file` sink appending to this path (`-`: a `stdout` sink), named
    /// after its kind. May be combined with `sinks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Queue of the `path` sink: records held while it catches up; past this they are
    /// dropped and counted.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// The fields of each record, in this order. A field without a value for a request
    /// (no route matched, no upstream, no trace context) is left out of that record.
    #[serde(default = "default_fields")]
    pub fields: Vec<AccessLogField>,
    /// Request headers to include, under `request_headers`, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<String>,
    /// Response headers to include, under `response_headers`, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<String>,
    /// Where the records go; every sink gets every record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<AccessLogSinkSpec>,
}

fn default_queue_capacity() -> usize {
    16 * 1024
}

/// The fields written before fields could be chosen, with the trace context added.
pub fn default_fields() -> Vec<AccessLogField> {
    use AccessLogField::*;
    vec![
        Time,
        RequestId,
        TraceId,
        SpanId,
        Route,
        Consumer,
        Client,
        Method,
        Uri,
        Protocol,
        Status,
        Duration,
        Upstream,
        UpstreamDuration,
    ]
}

impl AccessLogSpec {
    /// The sinks to start: `path`'s, if given, then `sinks`.
    pub fn all_sinks(&self) -> Vec<AccessLogSinkSpec> {
        let mut all = Vec::with_capacity(self.sinks.len() + 1);
        if let Some(path) = &self.path {
            let queue = SinkQueueSpec { capacity: self.queue_capacity, ..SinkQueueSpec::default() };
            if path.as_os_str() == "-" {
                all.push(AccessLogSinkSpec::Stdout(StdoutSinkSpec { name: None, queue }));
            } else {
                all.push(AccessLogSinkSpec::File(FileSinkSpec { name: None, path: path.clone(), rotate: None, queue }));
            }
        }
        all.extend(self.sinks.iter().cloned());
        all
    }

    /// Checks the settings; problems go to `errors` under `path` (`node.access_log`).
    pub fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.path.is_none() && self.sinks.is_empty() {
            errors.push(path.clone(), "give a `path` or at least one entry in `sinks`");
        }
        if self.queue_capacity == 0 {
            errors.push(path.key("queue_capacity"), "must be at least 1");
        }
        if self.fields.is_empty() && self.request_headers.is_empty() && self.response_headers.is_empty() {
            errors.push(path.key("fields"), "a record needs at least one field");
        }
        for (index, field) in self.fields.iter().enumerate() {
            if self.fields[..index].contains(field) {
                errors.push(path.key("fields").index(index), format!("`{}` is listed twice", field.name()));
            }
        }
        for key in ["request_headers", "response_headers"] {
            let names = if key == "request_headers" { &self.request_headers } else { &self.response_headers };
            for (index, name) in names.iter().enumerate() {
                let at = path.key(key).index(index);
                if !is_header_name(name) {
                    errors.push(at, format!("`{name}` is not a header name"));
                } else if names[..index].iter().any(|other| other.eq_ignore_ascii_case(name)) {
                    errors.push(at, format!("`{name}` is listed twice"));
                }
            }
        }
        let sinks = self.all_sinks();
        let offset = usize::from(self.path.is_some());
        for (index, sink) in sinks.iter().enumerate() {
            // The `path` shorthand's sink is reported at `path`; the others at their place.
            let at = if index < offset {
                path.key("path")
            } else {
                path.key("sinks").index(index - offset).key(sink.kind())
            };
            if sinks[..index].iter().any(|other| other.name() == sink.name()) {
                let message = format!("another sink is named `{}`; give this one a `name`", sink.name());
                errors.push(if index < offset { at.clone() } else { at.key("name") }, message);
            }
            if index >= offset {
                sink.validate(&at, errors);
            }
        }
    }
}

/// One field of an access log record. Each is written under the key shown, in the order of
/// `fields`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogField {
    /// `time`: when the request head arrived, RFC 3339 UTC with milliseconds.
    Time,
    /// `request_id`: the request id (`X-Request-Id`).
    RequestId,
    /// `trace_id`: the W3C trace id, 32 hex digits: the gateway's trace when it traces
    /// requests, else the one of the client's `traceparent`.
    TraceId,
    /// `span_id`: the W3C span id, 16 hex digits: the gateway's server span when it traces
    /// requests, else the caller's span from `traceparent`.
    SpanId,
    /// `route`: the matched route.
    Route,
    /// `service`: the matched route's service.
    Service,
    /// `consumer`: the recognised consumer.
    Consumer,
    /// `client_ip`: the client's address.
    Client,
    /// `method`: the request method.
    Method,
    /// `uri`: path and query as received.
    Uri,
    /// `path`: the path as received.
    Path,
    /// `query`: the query string as received, without `?`.
    Query,
    /// `protocol`: the HTTP version, e.g. `HTTP/1.1`.
    Protocol,
    /// `host`: the `Host` header (or HTTP/2 authority).
    Host,
    /// `user_agent`: the `User-Agent` header.
    UserAgent,
    /// `status`: the status sent.
    Status,
    /// `bytes_received`: the request body's length as declared by the client (`Content-Length`).
    BytesReceived,
    /// `bytes_sent`: the response body's length when known at the response head.
    BytesSent,
    /// `duration_ms`: time to the response head, in milliseconds.
    Duration,
    /// `upstream`: the endpoint that answered.
    Upstream,
    /// `upstream_duration_ms`: the upstream's time to its response head.
    UpstreamDuration,
    /// `gateway_overhead_ms`: `duration_ms` less `upstream_duration_ms`.
    GatewayOverhead,
    /// `ai_provider`: the AI provider that answered (`openai`, `anthropic`...), as
    /// OpenTelemetry's `gen_ai.provider.name` names it. AI requests only, like the fields below.
    AiProvider,
    /// `ai_request_model`: the model name the client asked for (one of the gateway's names).
    AiRequestModel,
    /// `ai_response_model`: the provider's model that answered.
    AiResponseModel,
    /// `ai_input_tokens`: tokens of the prompt.
    AiInputTokens,
    /// `ai_output_tokens`: tokens of the answer.
    AiOutputTokens,
    /// `ai_cost`: price of the tokens from the target's price table; absent without one.
    AiCost,
    /// `ai_cache_hit`: `true` when the answer came from a gateway cache, no provider called.
    AiCacheHit,
    /// `ai_tokens_estimated`: `true` when the gateway counted the tokens because the provider
    /// reported none.
    AiTokensEstimated,
}

impl AccessLogField {
    /// The name as written in `fields`.
    pub fn name(self) -> &'static str {
        use AccessLogField::*;
        match self {
            Time => "time",
            RequestId => "request_id",
            TraceId => "trace_id",
            SpanId => "span_id",
            Route => "route",
            Service => "service",
            Consumer => "consumer",
            Client => "client",
            Method => "method",
            Uri => "uri",
            Path => "path",
            Query => "query",
            Protocol => "protocol",
            Host => "host",
            UserAgent => "user_agent",
            Status => "status",
            BytesReceived => "bytes_received",
            BytesSent => "bytes_sent",
            Duration => "duration",
            Upstream => "upstream",
            UpstreamDuration => "upstream_duration",
            GatewayOverhead => "gateway_overhead",
            AiProvider => "ai_provider",
            AiRequestModel => "ai_request_model",
            AiResponseModel => "ai_response_model",
            AiInputTokens => "ai_input_tokens",
            AiOutputTokens => "ai_output_tokens",
            AiCost => "ai_cost",
            AiCacheHit => "ai_cache_hit",
            AiTokensEstimated => "ai_tokens_estimated",
        }
    }
}

/// One destination of the access log records.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogSinkSpec {
    /// JSON lines appended to a file, optionally rotated.
    File(FileSinkSpec),
    /// JSON lines on standard output.
    Stdout(StdoutSinkSpec),
    /// Batches POSTed to an HTTP endpoint.
    Http(HttpSinkSpec),
    /// Batches sent to an Elasticsearch or OpenSearch `_bulk` API.
    Elasticsearch(ElasticsearchSinkSpec),
    /// RFC 5424 syslog messages over UDP or TCP.
    Syslog(SyslogSinkSpec),
    /// OpenTelemetry log records over OTLP/HTTP.
    Otlp(OtlpSinkSpec),
}

impl AccessLogSinkSpec {
    /// The kind, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Stdout(_) => "stdout",
            Self::Http(_) => "http",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Syslog(_) => "syslog",
            Self::Otlp(_) => "otlp",
        }
    }

    /// The name its metrics are labelled with: `name`, or else the kind.
    pub fn name(&self) -> &str {
        let name = match self {
            Self::File(sink) => &sink.name,
            Self::Stdout(sink) => &sink.name,
            Self::Http(sink) => &sink.name,
            Self::Elasticsearch(sink) => &sink.name,
            Self::Syslog(sink) => &sink.name,
            Self::Otlp(sink) => &sink.name,
        };
        name.as_deref().unwrap_or(self.kind())
    }

    /// Its queue and batch settings.
    pub fn queue(&self) -> &SinkQueueSpec {
        match self {
            Self::File(sink) => &sink.queue,
            Self::Stdout(sink) => &sink.queue,
            Self::Http(sink) => &sink.queue,
            Self::Elasticsearch(sink) => &sink.queue,
            Self::Syslog(sink) => &sink.queue,
            Self::Otlp(sink) => &sink.queue,
        }
    }

    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.name().is_empty() {
            errors.push(path.key("name"), "must not be empty");
        }
        self.queue().validate(&path.key("queue"), errors);
        match self {
            Self::File(sink) => {
                if sink.path.as_os_str().is_empty() {
                    errors.push(path.key("path"), "must not be empty");
                }
                if let Some(rotate) = &sink.rotate {
                    let at = path.key("rotate");
                    if rotate.max_bytes.is_none() && !rotate.daily {
                        errors.push(at.clone(), "rotate by `max_bytes`, `daily`, or both");
                    }
                    if rotate.max_bytes == Some(0) {
                        errors.push(at.key("max_bytes"), "must be at least 1");
                    }
                    if rotate.keep == 0 {
                        errors.push(at.key("keep"), "keep at least 1 rotated file");
                    }
                }
            }
            Self::Stdout(_) => {}
            Self::Http(sink) => {
                check_url(&sink.url, &path.key("url"), errors);
                validate_delivery(sink.timeout, &sink.retries, &sink.headers, path, errors);
            }
            Self::Elasticsearch(sink) => {
                check_url(&sink.url, &path.key("url"), errors);
                validate_delivery(sink.timeout, &sink.retries, &sink.headers, path, errors);
                if let Err(problem) = check_index_pattern(&sink.index) {
                    errors.push(path.key("index"), problem);
                }
            }
            Self::Syslog(sink) => {
                if !has_port(&sink.address) {
                    errors.push(path.key("address"), format!("`{}` is not a `host:port` address", sink.address));
                }
                if sink.app_name.is_empty() || sink.app_name.len() > 48 || !is_printable_ascii(&sink.app_name) {
                    errors.push(path.key("app_name"), "1 to 48 printable ASCII characters without spaces (RFC 5424)");
                }
                if let Some(hostname) = &sink.hostname {
                    if hostname.is_empty() || hostname.len() > 255 || !is_printable_ascii(hostname) {
                        errors.push(
                            path.key("hostname"),
                            "1 to 255 printable ASCII characters without spaces (RFC 5424)",
                        );
                    }
                }
            }
            Self::Otlp(sink) => {
                check_url(&sink.url, &path.key("url"), errors);
                validate_delivery(sink.timeout, &sink.retries, &sink.headers, path, errors);
            }
        }
    }
}

/// How a sink's records wait and are grouped. Each sink has its own queue: a slow sink drops
/// its own records (counted in `gantry_access_log_dropped_total{sink}`), not the others'.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkQueueSpec {
    /// Records held while the sink catches up; past this they are dropped and counted.
    #[serde(default = "default_queue_capacity")]
    pub capacity: usize,
    /// Most records written or sent together. Absent: 1024 for `file` and `stdout`, 500 for
    /// the network sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_records: Option<usize>,
    /// Longest a record waits for its batch to fill. Absent: 5ms for `file` and `stdout`,
    /// 1s for the network sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<Duration>,
}

impl Default for SinkQueueSpec {
    fn default() -> Self {
        Self { capacity: default_queue_capacity(), batch_records: None, flush_interval: None }
    }
}

impl SinkQueueSpec {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.capacity == 0 {
            errors.push(path.key("capacity"), "must be at least 1");
        }
        if self.batch_records == Some(0) {
            errors.push(path.key("batch_records"), "must be at least 1");
        }
        if self.flush_interval.is_some_and(|interval| interval.get().is_zero()) {
            errors.push(path.key("flush_interval"), "must be longer than zero");
        }
    }
}

/// JSON lines appended to a file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSpec {
    /// Name in metrics. Absent: `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The file; created when missing, appended to otherwise.
    pub path: PathBuf,
    /// Rotation. Absent: the file grows; rotate it from outside and the sink reopens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<RotateSpec>,
    /// Queue and batches.
    #[serde(default)]
    pub queue: SinkQueueSpec,
}

/// When a file sink starts a new file. The current file is renamed `<path>.1`, older ones
/// move up one number, and files past `keep` are deleted.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSpec {
    /// Rotate before a batch would take the file past this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Rotate on the first write of each UTC day.
    #[serde(default)]
    pub daily: bool,
    /// Rotated files kept.
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_keep() -> usize {
    7
}

/// JSON lines on standard output.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkSpec {
    /// Name in metrics. Absent: `stdout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Queue and batches.
    #[serde(default)]
    pub queue: SinkQueueSpec,
}

/// How a network sink retries a batch that failed: a connection error, a timeout, or a 408,
/// 429 or 5xx answer. A batch that still fails is counted in `gantry_access_log_failed_total`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkRetrySpec {
    /// Attempts after the first.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Wait before the first retry; it doubles for each further one, up to `max_backoff`.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// Longest wait between retries.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

impl Default for SinkRetrySpec {
    fn default() -> Self {
        Self { attempts: default_retry_attempts(), backoff: default_backoff(), max_backoff: default_max_backoff() }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retry_attempts() -> u32 {
    3
}

fn default_backoff() -> Duration {
    Duration::from_millis(200)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}

/// Most retries of one batch: the queue behind it fills while they are tried.
const MAX_RETRIES: u32 = 10;

/// Checks what the network sinks share: `timeout`, `retries` and `headers`.
fn validate_delivery(
    timeout: Duration,
    retries: &SinkRetrySpec,
    headers: &BTreeMap<String, Secret<String>>,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) {
    if timeout.get().is_zero() {
        errors.push(path.key("timeout"), "must be longer than zero");
    }
    let at = path.key("retries");
    if retries.attempts > MAX_RETRIES {
        errors.push(at.key("attempts"), format!("at most {MAX_RETRIES}"));
    }
    if retries.backoff.get().is_zero() {
        errors.push(at.key("backoff"), "must be longer than zero");
    }
    if retries.max_backoff < retries.backoff {
        errors.push(at.key("max_backoff"), "must not be shorter than `backoff`");
    }
    for name in headers.keys() {
        if !is_header_name(name) {
            errors.push(path.key("headers").key(name), format!("`{name}` is not a header name"));
        }
    }
}

/// Batches POSTed to an HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkSpec {
    /// Name in metrics. Absent: `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// `ndjson`: one JSON record per line (`application/x-ndjson`). `json_array`: one JSON
    /// array of records (`application/json`).
    #[serde(default)]
    pub format: HttpBatchFormat,
    /// Longest one attempt may take, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Retries of a failed batch.
    #[serde(default)]
    pub retries: SinkRetrySpec,
    /// Headers sent with every request, such as `authorization`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Queue and batches.
    #[serde(default)]
    pub queue: SinkQueueSpec,
}

/// How an HTTP sink's batch body is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HttpBatchFormat {
    /// One JSON record per line.
    #[default]
    Ndjson,
    /// One JSON array of records.
    JsonArray,
}

/// Batches sent to an Elasticsearch or OpenSearch `_bulk` API.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSinkSpec {
    /// Name in metrics. Absent: `elasticsearch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The cluster's base URL, e.g. `http://127.0.0.1:9200`; `/_bulk` is appended.
    pub url: String,
    /// Index of each record, from its time in UTC: `%Y` year, `%m` month, `%d` day, `%H`
    /// hour, `%%` a percent sign.
    #[serde(default = "default_index")]
    pub index: String,
    /// Longest one attempt may take, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Retries of a failed batch.
    #[serde(default)]
    pub retries: SinkRetrySpec,
    /// Headers sent with every request, such as `authorization`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Queue and batches.
    #[serde(default)]
    pub queue: SinkQueueSpec,
}

fn default_index() -> String {
    "gantry-%Y.%m.%d".to_owned()
}

/// RFC 5424 syslog messages, each carrying one JSON record.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkSpec {
    /// Name in metrics. Absent: `syslog`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The syslog server, `host:port`.
    pub address: String,
    /// `udp` (RFC 5426, one message per datagram) or `tcp` (RFC 6587 octet counting).
    #[serde(default)]
    pub transport: SyslogTransport,
    /// Facility of the messages.
    #[serde(default)]
    pub facility: SyslogFacility,
    /// APP-NAME of the messages.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// HOSTNAME of the messages. Absent: the machine's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Queue and batches.
    #[serde(default)]
    pub queue: SinkQueueSpec,
}

fn default_app_name() -> String {
    "gantry".to_owned()
}

/// How syslog messages travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    /// One message per datagram.
    #[default]
    Udp,
    /// A stream of octet-counted messages.
    Tcp,
}

/// Syslog facilities (RFC 5424 section 6.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SyslogFacility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    #[default]
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// The facility's number.
    pub fn code(self) -> u8 {
        use SyslogFacility::*;
        match self {
            Kern => 0,
            User => 1,
            Mail => 2,
            Daemon => 3,
            Auth => 4,
            Syslog => 5,
            Lpr => 6,
            News => 7,
            Uucp => 8,
            Cron => 9,
            Authpriv => 10,
            Ftp => 11,
            Local0 => 16,
            Local1 => 17,
            Local2 => 18,
            Local3 => 19,
            Local4 => 20,
            Local5 => 21,
            Local6 => 22,
            Local7 => 23,
        }
    }
}

/// OpenTelemetry log records, sent over OTLP/HTTP.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkSpec {
    /// Name in metrics. Absent: `otlp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The collector's logs URL, e.g. `http://127.0.0.1:4318/v1/logs`.
    pub url: String,
    /// The `service.name` resource attribute.
    #[serde(default = "default_app_name")]
    pub service_name: String,
    /// `protobuf` (`application/x-protobuf`, what every collector takes) or `json`
    /// (`application/json`, the OTLP JSON encoding).
    #[serde(default)]
    pub encoding: OtlpEncoding,
    /// Longest one attempt may take, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Retries of a failed batch.
    #[serde(default)]
    pub retries: SinkRetrySpec,
    /// Headers sent with every request, such as `authorization`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Queue and batches.
    #[serde(default)]
    pub queue: SinkQueueSpec,
}

/// How an `otlp` sink encodes its export requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpEncoding {
    /// Binary protobuf.
    #[default]
    Protobuf,
    /// The OTLP JSON encoding.
    Json,
}

/// RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

fn is_printable_ascii(text: &str) -> bool {
    text.bytes().all(|byte| (33..=126).contains(&byte))
}

fn has_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0))
}

fn check_url(url: &str, path: &FieldPath, errors: &mut ConfigErrors) {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if !host.is_some_and(|host| !host.is_empty() && !host.contains(char::is_whitespace)) {
        errors.push(path.clone(), format!("`{url}` is not an http:// or https:// URL"));
    }
}

/// Checks an index pattern: only `%Y`, `%m`, `%d`, `%H` and `%%` are conversions, and the
/// index name Elasticsearch accepts is lowercase without `\ / * ? " < > | , #` or spaces.
pub fn check_index_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let mut chars = pattern.chars();
    while let Some(char) = chars.next() {
        if char == '%' {
            match chars.next() {
                Some('Y' | 'm' | 'd' | 'H' | '%') => {}
                other => {
                    let shown = other.map(|c| format!("%{c}")).unwrap_or_else(|| "%".to_owned());
                    return Err(format!("`{shown}` is not a conversion; use %Y, %m, %d, %H or %%"));
                }
            }
        } else if char.is_uppercase() || char.is_whitespace() || "\\/*?\"<>|,#:".contains(char) {
            return Err(format!(
                "`{char}` cannot be in an index name (lowercase, no \\ / * ? \" < > | , # : or spaces)"
            ));
        }
    }
    if pattern.starts_with(['-', '_', '+']) {
        return Err("an index name cannot start with -, _ or +".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: AccessLogSpec = serde_saphyr::from_str(yaml).expect("parses");
        let mut errors = ConfigErrors::default();
        spec.validate(&FieldPath::root().key("node").key("access_log"), &mut errors);
        errors.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_path_shorthand_is_one_file_sink_with_the_default_fields() {
        let spec: AccessLogSpec = serde_saphyr::from_str("path: /tmp/a.log\nqueue_capacity: 8\n").expect("parses");
        let sinks = spec.all_sinks();
        assert_eq!(sinks.len(), 1);
        assert_eq!(sinks[0].name(), "file");
        assert_eq!(sinks[0].queue().capacity, 8);
        assert_eq!(spec.fields, default_fields());
        assert!(problems("path: /tmp/a.log\n").is_empty());
        let stdout: AccessLogSpec = serde_saphyr::from_str("path: '-'\n").expect("parses");
        assert_eq!(stdout.all_sinks()[0].kind(), "stdout");
    }

    #[test]
    fn reports_each_problem_at_its_field_path() {
        let found = problems(
            "fields: [status, status]\nrequest_headers: ['bad header']\nsinks:\n  - file: {path: /tmp/a, rotate: {keep: 0}, queue: {capacity: 0}}\n  - file: {path: /tmp/b}\n  - http: {url: 'ftp://x', retries: {attempts: 11}, headers: {'a b': x}}\n  - elasticsearch: {url: 'http://es:9200', index: 'Gantry-%Q'}\n  - syslog: {address: 'nohost'}\n  - otlp: {url: 'http://c:4318/v1/logs', timeout: 0s}\n",
        );
        let expected = [
            "node.access_log.fields[1]",
            "node.access_log.request_headers[0]",
            "node.access_log.sinks[0].file.queue.capacity",
            "node.access_log.sinks[0].file.rotate:",
            "node.access_log.sinks[0].file.rotate.keep",
            "node.access_log.sinks[1].file.name",
            "node.access_log.sinks[2].http.url",
            "node.access_log.sinks[2].http.retries.attempts",
            "node.access_log.sinks[2].http.headers.a b",
            "node.access_log.sinks[3].elasticsearch.index",
            "node.access_log.sinks[4].syslog.address",
            "node.access_log.sinks[5].otlp.timeout",
        ];
        for path in expected {
            assert!(found.iter().any(|problem| problem.contains(path)), "no problem at {path}: {found:#?}");
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn the_ai_fields_are_chosen_by_the_names_they_report() {
        let spec: AccessLogSpec = serde_saphyr::from_str(
            "path: x\nfields: [ai_provider, ai_request_model, ai_response_model, ai_input_tokens, ai_output_tokens, ai_cost, ai_cache_hit, ai_tokens_estimated]\n",
        )
        .expect("parses");
        let names: Vec<&str> = spec.fields.iter().map(|field| field.name()).collect();
        assert_eq!(
            names,
            [
                "ai_provider",
                "ai_request_model",
                "ai_response_model",
                "ai_input_tokens",
                "ai_output_tokens",
                "ai_cost",
                "ai_cache_hit",
                "ai_tokens_estimated"
            ]
        );
        assert!(problems("path: x\nfields: [ai_cost, ai_cost]\n")
            .iter()
            .any(|p| p.contains("`ai_cost` is listed twice")));
    }

    #[test]
    fn needs_a_sink_and_refuses_unknown_settings() {
        assert!(problems("fields: [status]\n").iter().any(|p| p.contains("give a `path`")));
        assert!(serde_saphyr::from_str::<AccessLogSpec>("sinks:\n  - http: {url: 'http://x', bogus: 1}\n").is_err());
        assert!(serde_saphyr::from_str::<AccessLogSpec>("fields: [nonsense]\npath: x\n").is_err());
    }

    #[test]
    fn the_examples_of_the_access_log_guide_are_valid() {
        let guide = include_str!("../../../../docs/access-log.md");
        let mut examples = 0;
        for block in guide.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap_or_default();
            let spec = crate::load_str(yaml).unwrap_or_else(|errors| panic!("{errors}\n{yaml}"));
            let errors = crate::validate::validate_spec(&spec);
            assert!(errors.is_empty(), "{errors}\n{yaml}");
            assert!(spec.node.and_then(|node| node.access_log).is_some(), "{yaml}");
            examples += 1;
        }
        assert!(examples >= 8, "{examples}");
    }

    #[test]
    fn index_patterns_take_date_conversions_only() {
        assert!(check_index_pattern("gantry-%Y.%m.%d").is_ok());
        assert!(check_index_pattern("logs-%H%%").is_ok());
        assert!(check_index_pattern("gantry-%Q").is_err());
        assert!(check_index_pattern("Gantry").is_err());
        assert!(check_index_pattern("_gantry").is_err());
        assert!(check_index_pattern("a%").is_err());
    }
}

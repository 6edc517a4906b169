//! The access log: one JSON line per request, written by its own task.
//!
//! The request path only does a `try_send` into a bounded queue. When the writer falls
//! behind, records are dropped and counted, never waited for.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Uri};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;

/// One request's record, owned so it can cross to the writer task.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub time: SystemTime,
    /// Request id.
    pub request_id: Arc<str>,
    /// Matched route.
    pub route_id: Option<Arc<str>>,
    /// Recognised consumer.
    pub consumer_id: Option<Arc<str>>,
    /// Client address.
    pub client: SocketAddr,
    /// Method.
    pub method: Method,
    /// Path and query as received.
    pub uri: Uri,
    /// HTTP version, e.g. `HTTP/1.1`.
    pub version: http::Version,
    /// Status sent.
    pub status: u16,
    /// Time to the response head.
    pub duration: Duration,
    /// Endpoint that answered.
    pub upstream_addr: Option<Arc<str>>,
    /// Upstream time to response head.
    pub upstream_duration: Option<Duration>,
}

/// Serializes a value through its `Display`, without an intermediate `String`.
struct Text<T>(T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A time shown as RFC 3339 UTC with milliseconds.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since_epoch = self.0.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (days, rest) = (seconds / 86_400, seconds % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rest / 3600,
            (rest % 3600) / 60,
            rest % 60,
            since_epoch.subsec_millis()
        )
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: Text<Rfc3339>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    client_ip: Text<std::net::IpAddr>,
    method: &'a str,
    uri: Text<&'a Uri>,
    protocol: &'static str,
    status: u16,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_duration_ms: Option<f64>,
}

fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

impl AccessRecord {
    fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        let line = Line {
            time: Text(Rfc3339(self.time)),
            request_id: &self.request_id,
            route: self.route_id.as_deref(),
            consumer: self.consumer_id.as_deref(),
            client_ip: Text(self.client.ip()),
            method: self.method.as_str(),
            uri: Text(&self.uri),
            protocol: protocol_name(self.version),
            status: self.status,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            upstream: self.upstream_addr.as_deref(),
            upstream_duration_ms: self.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The sending side of the access log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    sender: mpsc::Sender<AccessRecord>,
    /// Records dropped because the queue was full; clones share it.
    dropped: Counter,
}

impl AccessLog {
    /// Opens `path` (`-` for standard output) and starts the writer thread.
    pub fn start(path: &Path, queue_capacity: usize) -> std::io::Result<Self> {
        let writer: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        let (sender, receiver) = mpsc::channel(queue_capacity);
        let path: PathBuf = path.to_owned();
        std::thread::Builder::new()
            .name("gantry-access-log".to_owned())
            .spawn(move || write_records(receiver, writer, &path))?;
        Ok(Self { sender, dropped: Counter::default() })
    }

    /// Queues a record; drops and counts it when the queue is full.
    pub fn emit(&self, record: AccessRecord) {
        if self.sender.try_send(record).is_err() {
            self.dropped.inc();
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Registers `gantry_access_log_dropped_total` in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "gantry_access_log_dropped",
            "Access log records dropped because the writer had fallen behind and the queue (node.access_log.queue_capacity) was full",
            self.dropped.clone(),
        );
    }
}

/// How often the writer wakes to drain the queue.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Drains the queue every [`DRAIN_INTERVAL`] and writes the records in one batch. The writer
/// never waits on the queue, so a request's `try_send` never has to wake it: on a busy
/// gateway that spares a thread wake-up (and a context switch) per request.
fn write_records(mut receiver: mpsc::Receiver<AccessRecord>, writer: Box<dyn Write + Send>, path: &Path) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    loop {
        let mut result = Ok(());
        let mut wrote = false;
        let closed = loop {
            match receiver.try_recv() {
                Ok(record) => {
                    wrote = true;
                    result = result.and_then(|()| record.write_json(&mut out));
                }
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        if wrote {
            if let Err(err) = result.and_then(|()| out.flush()) {
                tracing::warn!(path = %path.display(), error = %err, "access log write failed");
            }
        }
        if closed {
            let _ = out.flush();
            return;
        }
        std::thread::sleep(DRAIN_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_as_rfc3339_utc() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(Rfc3339(time).to_string(), "2023-11-14T22:13:20.123Z");
    }

    fn record() -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: "r1".into(),
            route_id: None,
            consumer_id: None,
            client: "127.0.0.1:5000".parse().expect("addr"),
            method: Method::GET,
            uri: "/".parse().expect("uri"),
            version: http::Version::HTTP_11,
            status: 404,
            duration: Duration::from_micros(10),
            upstream_addr: None,
            upstream_duration: None,
        }
    }

    #[test]
    fn counts_records_dropped_on_a_full_queue_in_the_registered_counter() {
        let log = AccessLog::start(Path::new("/dev/null"), 1).expect("open /dev/null");
        // The writer drains every 20 ms: a burst far larger than the queue cannot all fit.
        for _ in 0..10_000 {
            log.emit(record());
        }
        let dropped = log.dropped();
        assert!(dropped > 0, "a full queue drops records");
        let mut registry = Registry::default();
        log.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.lines().any(|line| line == format!("gantry_access_log_dropped_total {dropped}")), "{text}");
    }

    #[test]
    fn writes_one_json_object_per_line() {
        let record = AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: "r1".into(),
            route_id: Some("demo".into()),
            consumer_id: None,
            client: "127.0.0.1:5000".parse().expect("addr"),
            method: Method::GET,
            uri: "/demo/hello?x=1".parse().expect("uri"),
            version: http::Version::HTTP_11,
            status: 200,
            duration: Duration::from_micros(1500),
            upstream_addr: Some("127.0.0.1:8081".into()),
            upstream_duration: Some(Duration::from_millis(1)),
        };
        let mut out = Vec::new();
        record.write_json(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(value["route"], "demo");
        assert_eq!(value["status"], 200);
        assert_eq!(value["uri"], "/demo/hello?x=1");
        assert_eq!(value["duration_ms"], 1.5);
        assert!(value.get("consumer").is_none());
    }
}

//! What every sink shares: its thread, its queue drained into batches, its counters.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_config::AccessLogSinkSpec;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::{AccessRecord, RecordFormat};

/// How often a sink looks at its queue while records arrive. Sinks poll rather than wait on
/// the queue, so a request's `try_send` never has to wake a thread: on a busy gateway that
/// spares a wake-up (and a context switch) per request. Every record waiting costs about
/// 600 bytes, so the interval is short: at 60k requests a second, 5 ms hold 300 records
/// where 20 ms held 1,200.
const BUSY_POLL: Duration = Duration::from_millis(5);

/// How often a sink looks at its queue after finding it empty, so an idle gateway's sinks
/// wake 50 times a second rather than 200.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// A sink's delivery counters.
#[derive(Clone, Debug)]
pub(super) struct Tally {
    pub(super) written: Counter,
    pub(super) failed: Counter,
}

/// What became of a batch: records written and records given up on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) written: u64,
    pub(super) failed: u64,
}

impl Outcome {
    pub(super) fn written(count: usize) -> Self {
        Self { written: count as u64, failed: 0 }
    }

    pub(super) fn failed(count: usize) -> Self {
        Self { written: 0, failed: count as u64 }
    }

    /// The first `written` of `count` records written, the rest given up on.
    pub(super) fn written_of(written: usize, count: usize) -> Self {
        Self { written: written as u64, failed: count.saturating_sub(written) as u64 }
    }
}

/// A destination of records. Runs on its sink's own single-threaded runtime, so its futures
/// need not be `Send`.
pub(super) trait Sink {
    /// Writes or sends `batch`, retrying as the sink does, and says what became of it.
    fn write(&mut self, batch: &[Arc<AccessRecord>]) -> impl Future<Output = Outcome>;

    /// Called when the gateway stops, after the last batch.
    fn close(&mut self) -> impl Future<Output = ()> {
        async {}
    }
}

/// Batch settings of a sink.
#[derive(Clone, Copy, Debug)]
pub(super) struct Batching {
    pub(super) max_records: usize,
    pub(super) flush_interval: Duration,
}

impl Batching {
    fn of(spec: &AccessLogSinkSpec) -> Self {
        let local = matches!(spec, AccessLogSinkSpec::File(_) | AccessLogSinkSpec::Stdout(_));
        let (records, interval) = if local { (1024, BUSY_POLL) } else { (500, Duration::from_secs(1)) };
        let queue = spec.queue();
        Self {
            max_records: queue.batch_records.unwrap_or(records).max(1),
            flush_interval: queue.flush_interval.map_or(interval, |interval| interval.get()),
        }
    }
}

/// Starts the thread of the sink `spec`, draining `receiver`.
pub(super) fn start(
    spec: &AccessLogSinkSpec,
    receiver: mpsc::Receiver<Arc<AccessRecord>>,
    format: Arc<RecordFormat>,
    tally: Tally,
) -> Result<(), String> {
    let batching = Batching::of(spec);
    let name = spec.name().to_owned();
    // Opened here, so a file that cannot be written stops the start with a clear error.
    let kind = match spec {
        AccessLogSinkSpec::File(file) => Kind::File(super::file::FileSink::open(file, format)?),
        AccessLogSinkSpec::Stdout(_) => Kind::Stdout(super::file::StdoutSink::new(format)),
        AccessLogSinkSpec::Http(http) => Kind::Http(super::http_sink::HttpSink::new(&name, http, format)?),
        AccessLogSinkSpec::Elasticsearch(es) => {
            Kind::Elasticsearch(super::elasticsearch::ElasticsearchSink::new(&name, es, format)?)
        }
        AccessLogSinkSpec::Syslog(syslog) => Kind::Syslog(super::syslog::SyslogSink::new(&name, syslog, format)),
        AccessLogSinkSpec::Otlp(otlp) => Kind::Otlp(super::otlp::OtlpSink::new(&name, otlp, format)?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot build its runtime: {err}"))?;
    std::thread::Builder::new()
        .name(format!("gantry-log-{name}"))
        .spawn(move || {
            runtime.block_on(async move {
                match kind {
                    Kind::File(sink) => run(sink, receiver, batching, tally).await,
                    Kind::Stdout(sink) => run(sink, receiver, batching, tally).await,
                    Kind::Http(sink) => run(sink, receiver, batching, tally).await,
                    Kind::Elasticsearch(sink) => run(sink, receiver, batching, tally).await,
                    Kind::Syslog(sink) => run(sink, receiver, batching, tally).await,
                    Kind::Otlp(sink) => run(sink, receiver, batching, tally).await,
                }
            });
        })
        .map_err(|err| format!("cannot start its thread: {err}"))?;
    Ok(())
}

enum Kind {
    File(super::file::FileSink),
    Stdout(super::file::StdoutSink),
    Http(super::http_sink::HttpSink),
    Elasticsearch(super::elasticsearch::ElasticsearchSink),
    Syslog(super::syslog::SyslogSink),
    Otlp(super::otlp::OtlpSink),
}

/// Drains `receiver` into batches of at most `max_records`, written when full or when their
/// oldest record has waited `flush_interval`. While a batch is being written nothing is
/// drained: a slow or unreachable destination fills the queue, and the request path then
/// drops (and counts) this sink's records instead of waiting.
pub(super) async fn run<S: Sink>(
    mut sink: S,
    mut receiver: mpsc::Receiver<Arc<AccessRecord>>,
    batching: Batching,
    tally: Tally,
) {
    let mut batch: Vec<Arc<AccessRecord>> = Vec::with_capacity(batching.max_records.min(4096));
    let mut oldest: Option<Instant> = None;
    loop {
        let mut closed = false;
        let mut received = false;
        while batch.len() < batching.max_records {
            match receiver.try_recv() {
                Ok(record) => {
                    received = true;
                    oldest.get_or_insert_with(Instant::now);
                    batch.push(record);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let full = batch.len() >= batching.max_records;
        let due = oldest.is_some_and(|since| since.elapsed() >= batching.flush_interval);
        if !batch.is_empty() && (full || due || closed) {
            let outcome = sink.write(&batch).await;
            tally.written.inc_by(outcome.written);
            tally.failed.inc_by(outcome.failed);
            batch.clear();
            oldest = None;
            if full {
                continue;
            }
        }
        if closed && batch.is_empty() {
            sink.close().await;
            return;
        }
        let wait = match oldest {
            Some(since) => batching.flush_interval.saturating_sub(since.elapsed()).min(BUSY_POLL),
            None if received => BUSY_POLL,
            None => IDLE_POLL,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// Waits that double from `first` up to `max`.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, first, max }
    }

    /// The next wait, with up to a quarter of jitter so sinks of many gateways spread out.
    pub(super) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = wait.mul_f64(fastrand::f64() * 0.25);
        wait - jitter
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Logs a sink's failure at most once per `every` (with the number of failures since), so an
/// outage does not flood the gateway's own log.
#[derive(Debug)]
pub(super) struct FailureLog {
    sink: String,
    last: Option<Instant>,
    suppressed: u64,
}

impl FailureLog {
    pub(super) fn new(sink: &str) -> Self {
        Self { sink: sink.to_owned(), last: None, suppressed: 0 }
    }

    pub(super) fn warn(&mut self, problem: &dyn std::fmt::Display) {
        const EVERY: Duration = Duration::from_secs(10);
        if self.last.is_some_and(|last| last.elapsed() < EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(sink = %self.sink, error = %problem, failures_not_logged = self.suppressed, "access log sink failed");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

//! The `syslog` sink: RFC 5424 messages, each carrying one JSON record, over UDP (RFC 5426,
//! one message per datagram) or TCP (RFC 6587 octet counting: `<length> <message>`).
//!
//! The message is formatted here: the header is a handful of fields, and the maintained
//! crates (`syslog`, `fasyslog`) send over blocking sockets, which would stall this sink's
//! runtime during an outage instead of timing out and reconnecting. The JSON record is the
//! MSG as MSG-ANY (no BOM), which RFC 5424 allows and JSON readers expect.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use gantry_config::{SyslogSinkSpec, SyslogTransport};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::record::Rfc3339;
use super::sink::{Backoff, FailureLog, Outcome, Sink};
use super::{AccessRecord, RecordFormat};

/// Longest a connect or a write may take before the connection is dropped and tried again.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Severity informational, and warning for 5xx answers.
const INFORMATIONAL: u8 = 6;
const WARNING: u8 = 4;

/// The RFC 5424 header fields that are the same for every message.
pub(super) struct Header {
    pub(super) facility: u8,
    pub(super) hostname: String,
    pub(super) app_name: String,
    pub(super) proc_id: String,
}

impl Header {
    /// Appends `record` as one RFC 5424 message (no framing) to `out`.
    pub(super) fn write_message(&self, format: &RecordFormat, record: &AccessRecord, out: &mut Vec<u8>) {
        let severity = if record.status >= 500 { WARNING } else { INFORMATIONAL };
        let priority = u16::from(self.facility) * 8 + u16::from(severity);
        // Writing to a `Vec` cannot fail.
        let _ = write!(
            out,
            "<{priority}>1 {} {} {} {} access - ",
            Rfc3339(record.time),
            self.hostname,
            self.app_name,
            self.proc_id
        );
        format.write_json(record, out);
    }
}

pub(super) struct SyslogSink {
    address: String,
    transport: SyslogTransport,
    header: Header,
    format: Arc<RecordFormat>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    backoff: Backoff,
    failures: FailureLog,
    message: Vec<u8>,
    frames: Vec<u8>,
}

impl SyslogSink {
    pub(super) fn new(name: &str, spec: &SyslogSinkSpec, format: Arc<RecordFormat>) -> Self {
        let hostname = spec.hostname.clone().unwrap_or_else(local_hostname);
        Self {
            address: spec.address.clone(),
            transport: spec.transport,
            header: Header {
                facility: spec.facility.code(),
                hostname,
                app_name: spec.app_name.clone(),
                proc_id: std::process::id().to_string(),
            },
            format,
            udp: None,
            tcp: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            failures: FailureLog::new(name),
            message: Vec::with_capacity(1024),
            frames: Vec::with_capacity(64 * 1024),
        }
    }

    async fn send_udp(&mut self, batch: &[Arc<AccessRecord>]) -> std::io::Result<Outcome> {
        if self.udp.is_none() {
            let socket = UdpSocket::bind(if self.address.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" }).await?;
            tokio::time::timeout(IO_TIMEOUT, socket.connect(&self.address)).await.map_err(timed_out)??;
            self.udp = Some(socket);
        }
        let Some(socket) = &self.udp else { return Ok(Outcome::failed(batch.len())) };
        let mut outcome = Outcome::default();
        for record in batch {
            self.message.clear();
            self.header.write_message(&self.format, record, &mut self.message);
            match socket.send(&self.message).await {
                Ok(_) => outcome.written += 1,
                // Too long for one datagram: only this message is lost.
                Err(err) if err.raw_os_error() == Some(90) => outcome.failed += 1,
                Err(err) => {
                    // A refused port (an ICMP answer to an earlier datagram) or a network
                    // change: a new socket resolves and connects again for the next batch.
                    self.udp = None;
                    outcome.failed += (batch.len() as u64) - outcome.written - outcome.failed;
                    self.failures.warn(&format_args!("udp {}: {err}", self.address));
                    return Ok(outcome);
                }
            }
        }
        Ok(outcome)
    }

    async fn send_tcp(&mut self, batch: &[Arc<AccessRecord>]) -> std::io::Result<()> {
        self.frames.clear();
        for record in batch {
            self.message.clear();
            self.header.write_message(&self.format, record, &mut self.message);
            let _ = write!(self.frames, "{} ", self.message.len());
            self.frames.extend_from_slice(&self.message);
        }
        if self.tcp.as_ref().is_some_and(peer_has_closed) {
            // Written now, the batch would vanish into a connection the server already closed:
            // the write succeeds locally and the peer answers with a reset.
            self.tcp = None;
        }
        if self.tcp.is_none() {
            let stream =
                tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&self.address)).await.map_err(timed_out)??;
            stream.set_nodelay(true)?;
            self.tcp = Some(stream);
        }
        let Some(stream) = self.tcp.as_mut() else { return Err(std::io::Error::other("not connected")) };
        tokio::time::timeout(IO_TIMEOUT, stream.write_all(&self.frames)).await.map_err(timed_out)?
    }
}

/// Whether the server closed the connection (or sent something, which syslog servers do not):
/// a read that does not block means the connection is not one to write to.
fn peer_has_closed(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(stream.try_read(&mut probe), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

fn timed_out(_: tokio::time::error::Elapsed) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
}

impl Sink for SyslogSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        match self.transport {
            SyslogTransport::Udp => match self.send_udp(batch).await {
                Ok(outcome) => outcome,
                Err(err) => {
                    self.udp = None;
                    self.failures.warn(&format_args!("udp {}: {err}", self.address));
                    tokio::time::sleep(self.backoff.next_wait()).await;
                    Outcome::failed(batch.len())
                }
            },
            SyslogTransport::Tcp => {
                // A connection the server closed is only noticed when a write fails: the batch
                // is tried once more on a new connection before it counts as failed.
                for _ in 0..2 {
                    match self.send_tcp(batch).await {
                        Ok(()) => {
                            self.backoff.reset();
                            return Outcome::written(batch.len());
                        }
                        Err(err) => {
                            self.tcp = None;
                            self.failures.warn(&format_args!("tcp {}: {err}", self.address));
                        }
                    }
                }
                // The queue fills while the server is away; new records are dropped and counted.
                tokio::time::sleep(self.backoff.next_wait()).await;
                Outcome::failed(batch.len())
            }
        }
    }

    async fn close(&mut self) {
        if let Some(stream) = self.tcp.as_mut() {
            let _ = stream.shutdown().await;
        }
    }
}

/// The machine's host name as RFC 5424 allows it (printable ASCII, no spaces), or `-`.
fn local_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name = name.trim();
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|byte| (33..=126).contains(&byte)) {
        "-".to_owned()
    } else {
        name.to_owned()
    }
}

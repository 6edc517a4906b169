//! Real counterparts of the access log sinks: an HTTP server that keeps what is POSTed to it
//! (and can stall or go down), an Elasticsearch-compatible `_bulk` endpoint, and syslog
//! servers on UDP and TCP that parse what they receive as RFC 5424.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Received {
    /// The body as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        std::str::from_utf8(&self.body)
            .expect("UTF-8 body")
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}")))
            .collect()
    }
}

type Responder = dyn Fn(&Received) -> (StatusCode, String) + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 that keeps every request and answers with `responder`.
pub struct HttpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stalled: Arc<AtomicBool>,
    responder: Arc<Responder>,
    server: JoinHandle<()>,
}

impl HttpReceiver {
    /// A receiver answering `200 {}` to everything.
    pub async fn start() -> Self {
        Self::start_with(Arc::new(|_: &Received| (StatusCode::OK, "{}".to_owned()))).await
    }

    pub async fn start_with(responder: Arc<Responder>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, Arc::default(), responder)
    }

    /// Serves again on the address it had, keeping what it had received.
    pub async fn restart(self) -> Self {
        let (addr, received, responder) = (self.addr, self.received.clone(), self.responder.clone());
        self.stop().await;
        drop(self);
        let listener = TcpListener::bind(addr).await.expect("bind the same address again");
        Self::serve(listener, received, responder)
    }

    /// Closes the listener and every connection: the sink finds the port closed.
    pub async fn stop(&self) {
        self.server.abort();
        while !self.server.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn serve(listener: TcpListener, received: Arc<Mutex<Vec<Received>>>, responder: Arc<Responder>) -> Self {
        let addr = listener.local_addr().expect("addr");
        let stalled = Arc::new(AtomicBool::new(false));
        let (kept, stall, answer) = (received.clone(), stalled.clone(), responder.clone());
        let server = tokio::spawn(async move {
            // Dropped with the accept loop: aborting the server closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (kept, stall, answer) = (kept.clone(), stall.clone(), answer.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (kept, stall, answer) = (kept.clone(), stall.clone(), answer.clone());
                        async move {
                            let path = request.uri().path().to_owned();
                            let content_type = request
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|value| value.to_str().ok())
                                .map(str::to_owned);
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            // A stalled server reads the request and never answers while stalled.
                            while stall.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            let got = Received { path, content_type, body };
                            let (status, text) = answer(&got);
                            kept.lock().expect("lock").push(got);
                            let mut response = Response::new(Full::new(Bytes::from(text)));
                            *response.status_mut() = status;
                            response
                                .headers_mut()
                                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, received, stalled, responder, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// While stalled, requests are read but not answered (answered once it resumes).
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Every request answered so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What an Elasticsearch-compatible `_bulk` endpoint stored, and what it answered.
#[derive(Clone, Debug)]
pub struct IndexedDocument {
    pub index: String,
    pub source: serde_json::Value,
}

/// Answers a `_bulk` request as Elasticsearch does, keeping the documents it accepted in
/// `indexed`. Documents whose `path` is in `reject_paths` are refused item by item with a
/// `document_parsing_exception`, as a mapping conflict would be.
///
/// The body is parsed as the `_bulk` API defines it: newline-delimited JSON, the last line
/// ending in a newline; `index`, `create` and `update` actions followed by one source line,
/// `delete` actions by none; the index from the action's `_index` (or the URL's).
pub fn bulk_answer(
    received: &Received,
    reject_paths: &[&str],
    indexed: &Mutex<Vec<IndexedDocument>>,
) -> (StatusCode, String) {
    let error = |reason: &str| {
        let body = serde_json::json!({
            "error": {"type": "illegal_argument_exception", "reason": reason},
            "status": 400
        });
        (StatusCode::BAD_REQUEST, body.to_string())
    };
    if !received.path.ends_with("/_bulk") {
        return (StatusCode::NOT_FOUND, "{}".to_owned());
    }
    if received.content_type.as_deref() != Some("application/x-ndjson")
        && received.content_type.as_deref() != Some("application/json")
    {
        return error("the _bulk API takes application/x-ndjson");
    }
    let Ok(text) = std::str::from_utf8(&received.body) else { return error("the body is not UTF-8") };
    if !text.ends_with('\n') {
        return error("The bulk request must be terminated by a newline [\\n]");
    }
    let url_index = received.path.trim_end_matches("/_bulk").trim_start_matches('/');
    let mut lines = text.lines();
    let mut items = Vec::new();
    let mut errors = false;
    let mut sequence = 0u64;
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(serde_json::Value::Object(action)) = serde_json::from_str::<serde_json::Value>(line) else {
            return error(&format!("Malformed action/metadata line: {line}"));
        };
        let Some((kind, meta)) = action.iter().next().filter(|_| action.len() == 1) else {
            return error("Malformed action/metadata line: expected one action");
        };
        let index = meta["_index"].as_str().map(str::to_owned).unwrap_or_else(|| url_index.to_owned());
        if index.is_empty() {
            return error("index is missing");
        }
        let source = match kind.as_str() {
            "index" | "create" | "update" => {
                let Some(source) = lines.next() else { return error("the action is missing its source line") };
                match serde_json::from_str::<serde_json::Value>(source) {
                    Ok(value @ serde_json::Value::Object(_)) => Some(value),
                    _ => return error(&format!("Malformed source line: {source}")),
                }
            }
            "delete" => None,
            other => return error(&format!("Unknown action [{other}]")),
        };
        sequence += 1;
        let rejected =
            source.as_ref().and_then(|s| s["path"].as_str()).is_some_and(|path| reject_paths.contains(&path));
        let item = if rejected {
            errors = true;
            serde_json::json!({
                "_index": index, "status": 400,
                "error": {"type": "document_parsing_exception", "reason": "[1:2] failed to parse field [path]"}
            })
        } else {
            if let Some(source) = source {
                indexed.lock().expect("lock").push(IndexedDocument { index: index.clone(), source });
            }
            serde_json::json!({
                "_index": index, "_id": format!("id-{sequence}"), "_version": 1, "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": sequence, "_primary_term": 1,
                "status": 201
            })
        };
        items.push(serde_json::json!({ kind.clone(): item }));
    }
    (StatusCode::OK, serde_json::json!({"took": 1, "errors": errors, "items": items}).to_string())
}

/// One RFC 5424 message, parsed.
#[derive(Debug)]
pub struct SyslogMessage {
    pub priority: u16,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub proc_id: String,
    pub msg_id: String,
    pub structured_data: String,
    pub message: String,
}

/// Parses `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG` (RFC 5424 section 6),
/// panicking on anything else.
pub fn parse_rfc5424(text: &str) -> SyslogMessage {
    let rest = text.strip_prefix('<').unwrap_or_else(|| panic!("no PRI: {text}"));
    let (priority, rest) = rest.split_once('>').unwrap_or_else(|| panic!("no PRI end: {text}"));
    assert!((1..=3).contains(&priority.len()) && priority.bytes().all(|b| b.is_ascii_digit()), "PRI: {text}");
    let priority: u16 = priority.parse().expect("PRI");
    assert!(priority <= 191, "PRI out of range: {text}");
    let rest = rest.strip_prefix("1 ").unwrap_or_else(|| panic!("VERSION must be 1: {text}"));
    let mut parts = rest.splitn(6, ' ');
    let mut next = |what: &str| parts.next().unwrap_or_else(|| panic!("no {what}: {text}")).to_owned();
    let timestamp = next("TIMESTAMP");
    let hostname = next("HOSTNAME");
    let app_name = next("APP-NAME");
    let proc_id = next("PROCID");
    let msg_id = next("MSGID");
    let rest = next("SD and MSG");
    for (field, value, most) in
        [("HOSTNAME", &hostname, 255), ("APP-NAME", &app_name, 48), ("PROCID", &proc_id, 128), ("MSGID", &msg_id, 32)]
    {
        assert!(
            !value.is_empty() && value.len() <= most && value.bytes().all(|b| (33..=126).contains(&b)),
            "{field}: {text}"
        );
    }
    // FULL-DATE "T" PARTIAL-TIME TIME-OFFSET, as the gateway writes it: with milliseconds, UTC.
    let shape: String = timestamp.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dddZ", "TIMESTAMP: {text}");
    let (structured_data, message) = if let Some(after) = rest.strip_prefix("- ") {
        ("-".to_owned(), after.to_owned())
    } else {
        panic!("the gateway sends no structured data: {text}")
    };
    SyslogMessage { priority, timestamp, hostname, app_name, proc_id, msg_id, structured_data, message }
}

/// A syslog server on UDP: one message per datagram.
pub struct UdpSyslog {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl UdpSyslog {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = messages.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            while let Ok(length) = socket.recv(&mut buffer).await {
                kept.lock().expect("lock").push(String::from_utf8_lossy(&buffer[..length]).into_owned());
            }
        });
        Self { addr, messages, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }
}

impl Drop for UdpSyslog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A syslog server on TCP reading octet-counted frames (RFC 6587 section 3.4.1). With
/// `close_after`, it closes each connection after that many messages, as a restarting server
/// would, so the sink must connect again.
pub struct TcpSyslog {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<u32>>,
    task: JoinHandle<()>,
}

impl TcpSyslog {
    pub async fn start(close_after: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (kept, counted) = (messages.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut readers = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                *counted.lock().expect("lock") += 1;
                let kept = kept.clone();
                readers.spawn(async move {
                    let mut read = 0;
                    loop {
                        // MSG-LEN SP SYSLOG-MSG; MSG-LEN is NONZERO-DIGIT *DIGIT.
                        let mut length = String::new();
                        loop {
                            let Ok(byte) = stream.read_u8().await else { return };
                            if byte == b' ' {
                                break;
                            }
                            assert!(byte.is_ascii_digit() && length.len() < 10, "bad octet count");
                            length.push(byte as char);
                        }
                        assert!(!length.starts_with('0'), "MSG-LEN starts with a nonzero digit");
                        let mut message = vec![0; length.parse().expect("MSG-LEN")];
                        if stream.read_exact(&mut message).await.is_err() {
                            return;
                        }
                        kept.lock().expect("lock").push(String::from_utf8(message).expect("UTF-8 message"));
                        read += 1;
                        if close_after.is_some_and(|most| read >= most) {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, messages, connections, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }

    pub fn connections(&self) -> u32 {
        *self.connections.lock().expect("lock")
    }
}

impl Drop for TcpSyslog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! A real OTLP trace receiver for tests: the official `TraceService` of opentelemetry-proto
//! served by tonic over h2c (OTLP/gRPC), and `POST /v1/traces` with a binary protobuf
//! `ExportTraceServiceRequest` body (OTLP/HTTP), each on its own port of 127.0.0.1.
//!
//! Every export is kept with the transport it came by and the headers (or gRPC metadata) it
//! carried. [`OtlpReceiver::set_failing`] makes both transports refuse exports (gRPC
//! `UNAVAILABLE`, HTTP 503), as a receiver under load does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// How an export arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP, protobuf.
    Http,
}

/// One export the receiver accepted.
#[derive(Clone, Debug)]
pub struct Export {
    /// By which transport.
    pub transport: Transport,
    /// The headers or gRPC metadata it came with, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The request.
    pub request: ExportTraceServiceRequest,
}

/// A span as received, with the resource attributes it was sent under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// How it arrived.
    pub transport: Transport,
    /// Its resource's attributes.
    pub resource: Vec<KeyValue>,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// The span's string or integer attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    /// The resource's string attribute `key`.
    pub fn resource_attribute(&self, key: &str) -> Option<String> {
        attribute(&self.resource, key)
    }

    /// Lower-case hex of the trace id.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Lower-case hex of the span id.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Lower-case hex of the parent span id (empty for a root span).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// The text of attribute `key` in `attributes`: strings as they are, integers, booleans and
/// arrays of strings (joined with `,`) in their usual form.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        Value::BoolValue(flag) => flag.to_string(),
        Value::DoubleValue(number) => number.to_string(),
        Value::ArrayValue(array) => array
            .values
            .iter()
            .filter_map(|value| match &value.value {
                Some(Value::StringValue(text)) => Some(text.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[derive(Default)]
struct Shared {
    exports: Mutex<Vec<Export>>,
    failing: AtomicBool,
}

/// The receiver; both servers stop on drop.
pub struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts the gRPC and the HTTP receiver on ports of 127.0.0.1.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind OTLP/gRPC");
        let grpc_addr = grpc.local_addr().expect("local addr");
        let incoming = tonic::transport::server::TcpIncoming::from(grpc);
        let service = TraceServiceServer::new(GrpcReceiver(shared.clone()));
        let grpc_task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming);
            if let Err(err) = served.await {
                panic!("OTLP/gRPC receiver stopped: {err}");
            }
        });

        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind OTLP/HTTP");
        let http_addr = http.local_addr().expect("local addr");
        let state = shared.clone();
        let http_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = http.accept().await else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| receive_http(request, state.clone()));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { grpc_addr, http_addr, shared, tasks: vec![grpc_task, http_task] }
    }

    /// `http://127.0.0.1:<port>` of the gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:<port>/v1/traces` of the HTTP receiver.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    /// Refuses every export from now on (`true`), or accepts them again.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::Relaxed);
    }

    /// The exports accepted so far.
    pub fn exports(&self) -> Vec<Export> {
        self.shared.exports.lock().expect("exports lock").clone()
    }

    /// Every span accepted so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for export in self.exports() {
            for resource_spans in export.request.resource_spans {
                let resource = resource_spans.resource.map(|resource| resource.attributes).unwrap_or_default();
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        spans.push(ReceivedSpan { transport: export.transport, resource: resource.clone(), span });
                    }
                }
            }
        }
        spans
    }

    /// The spans of trace `trace_id` (lower-case hex) accepted so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans().into_iter().filter(|span| span.trace_id() == trace_id).collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct GrpcReceiver(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.failing.load(Ordering::Relaxed) {
            return Err(tonic::Status::unavailable("the test receiver is refusing exports"));
        }
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
            .collect();
        let export = Export { transport: Transport::Grpc, headers, request: request.into_inner() };
        self.0.exports.lock().expect("exports lock").push(export);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receive_http(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/x-protobuf"));
        Ok(response)
    };
    if request.method() != http::Method::POST || request.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, Bytes::new());
    }
    if request.headers().get("content-type").is_none_or(|value| value != "application/x-protobuf") {
        return answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new());
    }
    if shared.failing.load(Ordering::Relaxed) {
        return answer(StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
    }
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
        .collect();
    let Ok(body) = request.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    };
    let Ok(decoded) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    };
    shared.exports.lock().expect("exports lock").push(Export { transport: Transport::Http, headers, request: decoded });
    answer(StatusCode::OK, Bytes::from(ExportTraceServiceResponse::default().encode_to_vec()))
}

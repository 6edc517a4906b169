//! A real gRPC upstream and client for tests, built on tonic without `protoc`: the messages
//! are written by hand with `prost::Message`, and the service and client use tonic's generic
//! `server::Grpc` / `client::Grpc` with the prost codec, as generated code would.
//!
//! Service `gantry.test.Echo`:
//! - `Unary(EchoRequest) -> EchoReply` echoes the message, or fails with `fail_code` when set;
//! - `Repeat(EchoRequest) -> stream EchoReply` sends the message `repeat` times.
//!
//! The server speaks h2c (HTTP/2 over cleartext TCP), as gRPC backends behind a gateway do.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tonic::codegen::{Body, BoxFuture, BoxStream, Service, StdError};
use tonic::metadata::MetadataMap;
use tonic::server::{NamedService, ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// Full name of the test service.
pub const SERVICE: &str = "gantry.test.Echo";
/// Path of the unary method.
pub const UNARY_PATH: &str = "/gantry.test.Echo/Unary";
/// Path of the server-streaming method.
pub const REPEAT_PATH: &str = "/gantry.test.Echo/Repeat";

/// The request message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Text to echo.
    #[prost(string, tag = "1")]
    pub message: String,
    /// How many replies `Repeat` sends.
    #[prost(uint32, tag = "2")]
    pub repeat: u32,
    /// When not 0, the call fails with this gRPC status code and `message` as its message
    /// (`Repeat` after sending its replies).
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

/// The reply message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The echoed text.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Position of this reply in a stream, from 0.
    #[prost(uint32, tag = "2")]
    pub sequence: u32,
    /// The `x-forwarded-for` metadata the server received (empty when absent).
    #[prost(string, tag = "3")]
    pub forwarded_for: String,
}

/// The h2c gRPC echo server on 127.0.0.1:0; stopped on drop.
pub struct GrpcEchoUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcEchoUpstream {
    /// Starts the server.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC upstream");
        let addr = listener.local_addr().expect("local addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder().add_service(EchoService).serve_with_incoming(incoming);
            if let Err(err) = served.await {
                panic!("gRPC echo upstream stopped: {err}");
            }
        });
        Self { addr, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service: routes by method path, as tonic's generated servers do.
#[derive(Clone, Copy, Debug)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for EchoService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match request.uri().path() {
            UNARY_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(grpc.unary(Unary, request).await)
            }),
            REPEAT_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                Ok(grpc.server_streaming(Repeat, request).await)
            }),
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

fn forwarded_for(metadata: &MetadataMap) -> String {
    metadata.get("x-forwarded-for").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
}

struct Unary;

impl UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let forwarded_for = forwarded_for(request.metadata());
        let request = request.into_inner();
        Box::pin(async move {
            if request.fail_code != 0 {
                return Err(Status::new(Code::from(request.fail_code), request.message));
            }
            Ok(Response::new(EchoReply { message: request.message, sequence: 0, forwarded_for }))
        })
    }
}

struct Repeat;

impl ServerStreamingService<EchoRequest> for Repeat {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<BoxStream<EchoReply>>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let forwarded_for = forwarded_for(request.metadata());
        let request = request.into_inner();
        Box::pin(async move {
            let failure = (request.fail_code != 0)
                .then(|| Err(Status::new(Code::from(request.fail_code), request.message.clone())));
            let replies = (0..request.repeat).map(move |sequence| {
                Ok(EchoReply { message: request.message.clone(), sequence, forwarded_for: forwarded_for.clone() })
            });
            let stream: BoxStream<EchoReply> = Box::pin(futures_util::stream::iter(replies.chain(failure)));
            Ok(Response::new(stream))
        })
    }
}

/// The replies of a server-streaming call and how it ended.
#[derive(Debug)]
pub struct StreamOutcome {
    /// Replies received, in order.
    pub replies: Vec<EchoReply>,
    /// The trailers of a successful end, or the status the stream failed with.
    pub end: Result<Option<MetadataMap>, Status>,
}

/// A client of `gantry.test.Echo` speaking h2c to `addr` (a gateway or the upstream itself).
#[derive(Clone, Debug)]
pub struct GrpcEchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcEchoClient {
    /// Connects to `http://addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
        Ok(Self { grpc: tonic::client::Grpc::new(channel) })
    }

    /// Calls `Unary`.
    pub async fn unary(&mut self, request: EchoRequest) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        self.grpc.unary(Request::new(request), PathAndQuery::from_static(UNARY_PATH), codec()).await
    }

    /// Calls `Unary`, reading the response as a stream so the trailers can be inspected:
    /// returns the replies and the trailers as they arrived.
    pub async fn unary_with_trailers(
        &mut self,
        request: EchoRequest,
    ) -> Result<(Vec<EchoReply>, Option<MetadataMap>), Status> {
        self.ready().await?;
        let response =
            self.grpc.server_streaming(Request::new(request), PathAndQuery::from_static(UNARY_PATH), codec()).await?;
        drain(response.into_inner()).await
    }

    /// Calls `Repeat`. Fails when the call fails before any reply; otherwise returns the
    /// replies and how the stream ended.
    pub async fn repeat(&mut self, request: EchoRequest) -> Result<StreamOutcome, Status> {
        self.ready().await?;
        let response =
            self.grpc.server_streaming(Request::new(request), PathAndQuery::from_static(REPEAT_PATH), codec()).await?;
        let mut stream = response.into_inner();
        let mut replies = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => return Ok(StreamOutcome { replies, end: stream.trailers().await }),
                Err(status) => return Ok(StreamOutcome { replies, end: Err(status) }),
            }
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|err| Status::unavailable(format!("channel not ready: {err}")))
    }
}

fn codec() -> ProstCodec<EchoRequest, EchoReply> {
    ProstCodec::default()
}

async fn drain(mut stream: Streaming<EchoReply>) -> Result<(Vec<EchoReply>, Option<MetadataMap>), Status> {
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await? {
        replies.push(reply);
    }
    let trailers = stream.trailers().await?;
    Ok((replies, trailers))
}

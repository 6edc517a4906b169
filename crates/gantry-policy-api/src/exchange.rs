//! Request-scoped state shared by the policies of one exchange.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::{ClientCertificate, Consumer, MirrorRequest};

/// A request's whole body, buffered because a policy asked for it with
/// [`Policy::request_body_limit`](crate::Policy::request_body_limit); found in
/// [`Exchange::extensions`]. A request hook may insert another (`body_transform`): the data
/// plane forwards the body found there after the request hooks, and the hook sets the head's
/// `content-length` to match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestBody(pub bytes::Bytes);

/// Who a request was recognised as, set by the identity policy that recognised it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The consumer.
    pub consumer: Arc<Consumer>,
    /// The credential's stable name (`alice:key_auth`, a token's subject); never the secret.
    pub credential_id: Arc<str>,
    /// The identity policy that recognised it (`key_auth`, `jwt`).
    pub method: &'static str,
    /// Scopes granted by a token (`scope`/`scp` claims); empty for key and password methods.
    pub scopes: Arc<[String]>,
    /// True when no credential was presented and the policy's `anonymous_consumer` stands in.
    pub is_anonymous: bool,
}

impl Identity {
    /// The identity of a configured credential of `consumer`.
    pub fn credential(consumer: Arc<Consumer>, credential_id: Arc<str>, method: &'static str) -> Self {
        Self { consumer, credential_id, method, scopes: Arc::new([]), is_anonymous: false }
    }

    /// The stand-in identity of a request without credentials.
    pub fn anonymous(consumer: Arc<Consumer>, method: &'static str) -> Self {
        let credential_id = consumer.id.clone();
        Self { consumer, credential_id, method, scopes: Arc::new([]), is_anonymous: true }
    }
}

/// State of one request/response exchange: who, where, and what policies decided.
/// Typed values a policy wants to pass to a later one go in `extensions`.
#[derive(Debug)]
pub struct Exchange {
    /// The request id, also sent upstream and to the client as `X-Request-Id`.
    pub request_id: Arc<str>,
    /// The matched route's id.
    pub route_id: Arc<str>,
    /// The downstream peer's address.
    pub client_addr: SocketAddr,
    /// Whether the client connection is TLS.
    pub is_tls: bool,
    /// The certificate the client presented and the listener verified, parsed once per
    /// connection and shared by its requests; `None` without TLS client authentication.
    pub client_certificate: Option<Arc<ClientCertificate>>,
    /// Who the request comes from, once an identity policy has recognised it.
    pub identity: Option<Identity>,
    /// Values captured by `{name}` segments of the matched path.
    pub path_params: Vec<(Arc<str>, String)>,
    /// When the request head was received.
    pub started_at: Instant,
    /// Largest request body forwarded, in bytes; a longer body is cut off with 413.
    pub request_body_limit: Option<u64>,
    /// Typed values passed between policies. They live until the response body has been
    /// sent, so a value can hold a resource (a concurrency permit) for the whole exchange.
    pub extensions: http::Extensions,
    /// The upstream to forward to instead of the route's, chosen by a request hook
    /// (`traffic_split`). The policy checks the id against the configuration when it is built;
    /// `None` forwards to the route's upstream.
    pub upstream: Option<Arc<str>>,
    /// The path and query to send upstream, set by a request hook (`proxy_rewrite`). It
    /// replaces the request's path and query and the route's `rewrite` is not applied to it;
    /// `None` sends the request's, rewritten as the route says. Later policies still see the
    /// request's URI as the client sent it.
    pub upstream_path: Option<http::uri::PathAndQuery>,
    /// A copy of the request to send to another upstream, its answer ignored, asked for by a
    /// request hook (`request_mirror`). The data plane takes it when it forwards the request.
    pub mirror: Option<MirrorRequest>,
    /// How forwarding ended, set by the data plane before the response hooks run. `None` when
    /// the request was not forwarded (a policy answered, or it was refused before being sent)
    /// or when the client's side failed (its body broke off or was too large).
    pub forward_outcome: Option<ForwardOutcome>,
}

/// How the upstream exchange of a forwarded request ended, as response hooks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// The upstream answered with this status (after any retries).
    Answered(StatusCode),
    /// The upstream gave no answer: no endpoint was available, the connection was refused,
    /// the exchange broke or timed out. The client gets the gateway's 502, 503 or 504.
    Failed,
}

impl Exchange {
    /// A new exchange for a request on `route_id` from `client_addr`.
    pub fn new(request_id: Arc<str>, route_id: Arc<str>, client_addr: SocketAddr, is_tls: bool) -> Self {
        Self {
            request_id,
            route_id,
            client_addr,
            is_tls,
            client_certificate: None,
            identity: None,
            path_params: Vec::new(),
            started_at: Instant::now(),
            request_body_limit: None,
            extensions: http::Extensions::new(),
            upstream: None,
            upstream_path: None,
            mirror: None,
            forward_outcome: None,
        }
    }

    /// The recognised consumer, if any.
    pub fn consumer(&self) -> Option<&Arc<Consumer>> {
        self.identity.as_ref().map(|identity| &identity.consumer)
    }

    /// Records who the request comes from; a later identity policy's result replaces it.
    pub fn authenticate(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    /// Lowers the request body limit to `bytes` (limits only ever tighten).
    pub fn limit_request_body(&mut self, bytes: u64) {
        self.request_body_limit = Some(self.request_body_limit.map_or(bytes, |current| current.min(bytes)));
    }

    /// The value of path parameter `name`, if the route's template captured one.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params.iter().find(|(key, _)| &**key == name).map(|(_, value)| value.as_str())
    }
}

/// The facts of a finished exchange, given to log hooks and the access log.
#[derive(Debug)]
pub struct LogRecord<'a> {
    /// Request id.
    pub request_id: &'a str,
    /// Matched route, if any.
    pub route_id: Option<&'a str>,
    /// Consumer id, if recognised.
    pub consumer_id: Option<&'a str>,
    /// Client address.
    pub client_addr: SocketAddr,
    /// Request method.
    pub method: &'a Method,
    /// Request path and query as received.
    pub uri: &'a http::Uri,
    /// Status sent to the client.
    pub status: StatusCode,
    /// Endpoint that served the request, if it was forwarded.
    pub upstream_addr: Option<&'a str>,
    /// Time from request head to response head.
    pub duration: Duration,
    /// Time spent waiting for the upstream's response head, if forwarded.
    pub upstream_duration: Option<Duration>,
}

//! What a policy asks of the data plane to call configured upstreams while it answers a request
//! itself (`aggregate`: one route fanning out to several upstreams and merging their answers).
//!
//! The data plane puts a [`Subrequests`] handle in the exchange's extensions before the request
//! hooks run, only on routes whose pipeline has a policy that
//! [sends subrequests](crate::Policy::sends_subrequests): other routes pay nothing. Each
//! subrequest goes through its upstream like any forwarded request (its pool, balancer,
//! timeouts, retries, bulkhead and health), so a policy never needs an HTTP client of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::Exchange;

/// One request to send to a configured upstream, without a body.
#[derive(Debug)]
pub struct Subrequest {
    /// Id of the upstream, checked against the configuration by the policy when it was built.
    pub upstream: Arc<str>,
    /// Method, URI (path and query only) and headers. The data plane adds the forwarding
    /// headers and the exchange's `X-Request-Id`, as for the request itself.
    pub head: http::request::Parts,
    /// Largest response body read; a longer one is a failure.
    pub max_body_bytes: usize,
}

/// Why a subrequest has no response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubrequestError {
    /// The upstream id is not in the configuration the request is served with.
    #[error("upstream `{0}` is not configured")]
    UnknownUpstream(Arc<str>),
    /// The upstream gave no whole answer: no endpoint, refused, broken, timed out by the
    /// upstream's own timeouts, or a body longer than the limit.
    #[error("{0}")]
    Failed(String),
}

/// The whole response of a subrequest, or why there is none.
pub type SubrequestResult = Result<http::Response<Bytes>, SubrequestError>;

/// A subrequest on its way; it owns all it needs, so a policy may run several at once, and
/// dropping it abandons the exchange.
pub type SubrequestFuture = Pin<Box<dyn Future<Output = SubrequestResult> + Send + 'static>>;

/// A response body handed on chunk by chunk as the upstream sends it; an `Err` item ends it
/// with the reason it broke off.
pub type ChunkStream = futures_util::stream::BoxStream<'static, Result<Bytes, String>>;

/// One request with a body whose response is handed over as soon as its head arrived, the
/// body following as it streams (`ai_proxy`: a provider's server-sent events passed on one by
/// one).
#[derive(Debug)]
pub struct StreamingSubrequest {
    /// Id of the upstream, checked against the configuration by the policy when it was built.
    pub upstream: Arc<str>,
    /// Method, URI (path and query only) and headers, completed by the data plane as for
    /// [`Subrequest::head`] (the forwarding headers only with `forwarding_headers`);
    /// `content-length` is set from `body`.
    pub head: http::request::Parts,
    /// The whole request body.
    pub body: Bytes,
    /// Whether the client's address goes along (`X-Forwarded-For`, `Forwarded`...), as on a
    /// forwarded request; a third party's API (an LLM provider) has no need to learn it.
    pub forwarding_headers: bool,
}

/// The head of a streaming subrequest's response with its body still arriving.
pub type StreamingResult = Result<http::Response<ChunkStream>, SubrequestError>;

/// A streaming subrequest on its way to its response head.
pub type StreamingFuture = Pin<Box<dyn Future<Output = StreamingResult> + Send + 'static>>;

/// Sends subrequests for one client request; implemented by the data plane (and by tests).
pub trait SubrequestSender: Send + Sync + 'static {
    /// Sends `request` and reads its whole response.
    fn send(&self, request: Subrequest) -> SubrequestFuture;

    /// Sends `request` with its body; the response comes as soon as its head does. A sender
    /// that cannot stream (a test double) refuses.
    fn open(&self, request: StreamingSubrequest) -> StreamingFuture {
        let reason = format!("streaming subrequests to `{}` are not supported here", request.upstream);
        Box::pin(std::future::ready(Err(SubrequestError::Failed(reason))))
    }
}

/// The handle a request hook finds in [`Exchange::extensions`].
#[derive(Clone)]
pub struct Subrequests(pub Arc<dyn SubrequestSender>);

impl std::fmt::Debug for Subrequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subrequests")
    }
}

impl Subrequests {
    /// Sends `request`; see [`SubrequestSender::send`].
    pub fn send(&self, request: Subrequest) -> SubrequestFuture {
        self.0.send(request)
    }

    /// Sends `request`; see [`SubrequestSender::open`].
    pub fn open(&self, request: StreamingSubrequest) -> StreamingFuture {
        self.0.open(request)
    }
}

/// The handle the data plane left for this exchange; `None` outside a running gateway or on a
/// route whose policies do not send subrequests.
pub fn subrequests(exchange: &Exchange) -> Option<Subrequests> {
    exchange.extensions.get::<Subrequests>().cloned()
}

/// Gives `exchange` the handle its request hooks send subrequests with; for the data plane.
pub fn allow_subrequests(exchange: &mut Exchange, sender: Arc<dyn SubrequestSender>) {
    exchange.extensions.insert(Subrequests(sender));
}

/// Takes the handle back once the request hooks ran, so it does not outlive them; for the
/// data plane.
pub fn end_subrequests(exchange: &mut Exchange) {
    exchange.extensions.remove::<Subrequests>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::exchange_from;

    struct Echo;

    impl SubrequestSender for Echo {
        fn send(&self, request: Subrequest) -> SubrequestFuture {
            let body = Bytes::from(format!("{} {}", request.upstream, request.head.uri));
            Box::pin(async move { Ok(http::Response::new(body)) })
        }
    }

    #[tokio::test]
    async fn hands_the_sender_to_request_hooks_until_taken_back() {
        let mut exchange = exchange_from("127.0.0.1:40000");
        assert!(subrequests(&exchange).is_none());
        allow_subrequests(&mut exchange, Arc::new(Echo));
        let handle = subrequests(&exchange).expect("allowed");
        let (head, ()) = http::Request::get("/users/7").body(()).expect("request").into_parts();
        let response = handle.send(Subrequest { upstream: Arc::from("users"), head, max_body_bytes: 10 }).await;
        assert_eq!(response.expect("answered").body(), "users /users/7");
        end_subrequests(&mut exchange);
        assert!(subrequests(&exchange).is_none());
        assert!(exchange.extensions.is_empty());
    }
}

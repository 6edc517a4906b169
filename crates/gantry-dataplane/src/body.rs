//! Body types of the hot path: enums over the few concrete bodies, so that no body is boxed;
//! the streamed body limit; [`HoldingBody`], which keeps a request's policy state until its
//! response has been sent; [`ObservedBody`], which shows a response body to a policy as it
//! passes; and [`discard`], which reads away a client body the gateway answered without using.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gantry_policy_api::response_body::{take_response_body_action, BodyObserver, ResponseBodyAction};
use gantry_policy_api::Exchange;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::metrics::traffic::RouteSeries;
use crate::route::CompiledRoute;

/// Error type of gateway bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the gateway sends: streamed from the other side, or made here.
#[derive(Debug)]
pub enum GatewayBody {
    /// Streamed from a peer, frames (and trailers) passed through as they arrive.
    Streamed(Incoming),
    /// An upstream response body, streamed; the endpoint counts it in flight until it ends.
    Upstream(crate::upstream::client::UpstreamBody, crate::upstream::InFlight),
    /// A client body cut off once it exceeds a limit, or counted for the route's metrics.
    Limited(LimitedBody),
    /// A response body that keeps what policies left in the exchange alive until it ends.
    Holding(HoldingBody),
    /// A response body shown to a policy as it passes.
    Observed(ObservedBody),
    /// A request body copied for a mirrored request as it passes.
    Teed(crate::mirror::TeeBody),
    /// Made by the gateway (a policy response, a problem document).
    Full(Full<Bytes>),
    /// Made by a policy chunk by chunk while it is sent (`ai_proxy` translating a stream).
    Chunks(PolicyChunks),
    /// No body.
    Empty,
}

/// A body a policy makes while it is sent.
pub struct PolicyChunks(pub gantry_policy_api::subrequest::ChunkStream);

impl std::fmt::Debug for PolicyChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyChunks")
    }
}

impl GatewayBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Full::new(bytes.into()))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(PeerBodyError::boxed),
            GatewayBody::Upstream(body, _) => Pin::new(body).poll_frame(cx).map_err(PeerBodyError::boxed),
            GatewayBody::Limited(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Holding(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Observed(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Teed(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Full(body) => Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
            GatewayBody::Chunks(chunks) => match futures_util::Stream::poll_next(chunks.0.as_mut(), cx) {
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Some(Err(reason))) => Poll::Ready(Some(Err(reason.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            GatewayBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Streamed(body) => body.is_end_stream(),
            GatewayBody::Upstream(body, _) => body.is_end_stream(),
            GatewayBody::Limited(body) => body.is_end_stream(),
            GatewayBody::Holding(body) => body.is_end_stream(),
            GatewayBody::Observed(body) => body.is_end_stream(),
            GatewayBody::Teed(body) => body.is_end_stream(),
            GatewayBody::Full(body) => body.is_end_stream(),
            GatewayBody::Chunks(_) => false,
            GatewayBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Streamed(body) => body.size_hint(),
            GatewayBody::Upstream(body, _) => body.size_hint(),
            GatewayBody::Limited(body) => body.size_hint(),
            GatewayBody::Holding(body) => body.size_hint(),
            GatewayBody::Observed(body) => body.size_hint(),
            GatewayBody::Teed(body) => body.size_hint(),
            GatewayBody::Full(body) => body.size_hint(),
            GatewayBody::Chunks(_) => SizeHint::default(),
            GatewayBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A body streamed from a peer failed: the peer reset the stream or broke its framing.
/// Forwarding a client's body that fails this way is the client's fault, not the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("the peer's body stream failed: {0}")]
pub struct PeerBodyError(#[source] pub hyper::Error);

impl PeerBodyError {
    fn boxed(err: hyper::Error) -> BoxError {
        Box::new(PeerBodyError(err))
    }
}

/// The error a [`LimitedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// A streamed client body that fails once more than its limit of bytes have passed, without
/// buffering, and whose bytes are counted for its route's metrics when it ends or is dropped
/// (one atomic operation per body, not per frame). Either may be absent.
#[derive(Debug)]
pub struct LimitedBody {
    /// `None` once the limit was passed: the rest is no longer this body's.
    inner: Option<Incoming>,
    /// The limit, and the flag that tells the forwarder afterwards that the failure means 413.
    limit: Option<(u64, Arc<AtomicBool>)>,
    seen: u64,
    discard_rest: bool,
    counted: Option<Arc<RouteSeries>>,
}

impl LimitedBody {
    /// Wraps `inner`; `exceeded` is set when the limit is passed. With `discard_rest` (HTTP/1.x
    /// clients), what the client still sends after that is read and dropped (see [`discard`]),
    /// so that it receives the 413.
    pub fn new(inner: Incoming, limit: u64, exceeded: Arc<AtomicBool>, discard_rest: bool) -> Self {
        Self { inner: Some(inner), limit: Some((limit, exceeded)), seen: 0, discard_rest, counted: None }
    }

    /// Wraps `inner` with no limit, only to count its bytes in `series`.
    pub fn counted(inner: Incoming, series: Arc<RouteSeries>) -> Self {
        Self { inner: Some(inner), limit: None, seen: 0, discard_rest: false, counted: Some(series) }
    }

    /// The same body, its bytes counted in `series` when given.
    #[must_use]
    pub fn counted_in(mut self, series: Option<Arc<RouteSeries>>) -> Self {
        self.counted = series;
        self
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        if let Some(series) = &self.counted {
            series.count_request_body(self.seen);
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some((limit, exceeded)) = this.limit.as_ref().filter(|(limit, _)| this.seen > *limit) {
                        exceeded.store(true, Ordering::Release);
                        let limit = *limit;
                        // The upstream connection drops this body on the error below; the
                        // client's rest must outlive it until the 413 has reached the client.
                        if let Some(rest) = this.inner.take().filter(|_| this.discard_rest) {
                            discard(rest);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(PeerBodyError::boxed(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The body of a response on its way to a client. Counts the bytes that pass to the client
/// for the route's metrics, adding them up once, when the body ends or is dropped.
#[derive(Debug)]
pub struct ClientResponseBody {
    inner: GatewayBody,
    counted: Option<ResponseBytes>,
}

/// Response bytes passed so far, added to the route's series on drop. Holds the route itself,
/// which the request handler gives up anyway, rather than another reference count.
#[derive(Debug)]
struct ResponseBytes {
    route: Arc<CompiledRoute>,
    bytes: u64,
}

impl Drop for ResponseBytes {
    fn drop(&mut self) {
        if let Some(metrics) = &self.route.metrics {
            metrics.series.count_response_body(self.bytes);
        }
    }
}

impl ClientResponseBody {
    /// `inner`, its bytes counted for `route` when the route has metrics.
    pub fn new(inner: GatewayBody, route: Option<Arc<CompiledRoute>>) -> Self {
        let counted = route.filter(|route| route.metrics.is_some()).map(|route| ResponseBytes { route, bytes: 0 });
        Self { inner, counted }
    }

    /// `inner`, not counted (an answer given before any route was matched).
    pub fn uncounted(inner: GatewayBody) -> Self {
        Self { inner, counted: None }
    }

    /// The body inside.
    pub fn inner(&self) -> &GatewayBody {
        &self.inner
    }
}

impl Body for ClientResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(counted)) = (&polled, this.counted.as_mut()) {
            if let Some(data) = frame.data_ref() {
                counted.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body together with the exchange's extensions, in which policies leave what must
/// live as long as the response (a `concurrency_limit` slot). They are dropped when the body
/// ends or fails, or when the body itself is dropped because the client went away, whichever
/// comes first: a request counts until its last byte, not just its response head.
///
/// It may also carry what is to be done once the response has been sent ([`WhenSent`]): that
/// runs after the body and the held state are gone, so it sees what dropping them did (a
/// policy's stream reporting its usage when it ends or is abandoned).
pub struct HoldingBody {
    // Boxed: `GatewayBody` cannot contain itself. Only responses with something to hold pay
    // for the allocation.
    inner: Box<GatewayBody>,
    held: Option<http::Extensions>,
    when_sent: Option<WhenSent>,
}

/// What to do once a response body has ended or been dropped.
pub type WhenSent = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for HoldingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldingBody")
            .field("inner", &self.inner)
            .field("held", &self.held)
            .field("when_sent", &self.when_sent.is_some())
            .finish()
    }
}

impl HoldingBody {
    /// `inner`, holding `held` until it ends.
    pub fn new(inner: GatewayBody, held: http::Extensions) -> Self {
        Self { inner: Box::new(inner), held: Some(held), when_sent: None }
    }

    /// The same body, running `when_sent` once it has ended or been dropped.
    #[must_use]
    pub fn when_sent(mut self, when_sent: WhenSent) -> Self {
        self.when_sent = Some(when_sent);
        self
    }

    /// Whether the held state is still alive (the body has not ended yet).
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// The body is over: drops what it streamed from, then what it held, then does what was
    /// to be done once it was sent.
    fn end(&mut self) {
        if self.held.is_none() && self.when_sent.is_none() {
            return;
        }
        *self.inner = GatewayBody::Empty;
        self.held = None;
        if let Some(when_sent) = self.when_sent.take() {
            when_sent();
        }
    }
}

impl Drop for HoldingBody {
    fn drop(&mut self) {
        self.end();
    }
}

impl Body for HoldingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose chunks a policy sees as they pass to the client
/// ([`gantry_policy_api::response_body::observe_response_body`]). The observer hears of the end
/// once the last byte has passed; a body that fails or is dropped first just drops it.
pub struct ObservedBody {
    // Boxed: `GatewayBody` cannot contain itself.
    inner: Box<GatewayBody>,
    observer: Option<Box<dyn BodyObserver>>,
}

impl std::fmt::Debug for ObservedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl ObservedBody {
    /// `inner`, shown to `observer`. An empty body ends at once: the connection may never poll it.
    pub fn new(inner: GatewayBody, observer: Box<dyn BodyObserver>) -> Self {
        let mut body = Self { inner: Box::new(inner), observer: Some(observer) };
        body.end_if_done();
        body
    }

    fn end_if_done(&mut self) {
        if self.inner.is_end_stream() {
            if let Some(observer) = self.observer.take() {
                observer.on_end();
            }
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(observer)) = (frame.data_ref(), this.observer.as_mut()) {
                    observer.on_data(data);
                }
                // A body of known length is not polled again after its last byte.
                this.end_if_done();
            }
            Poll::Ready(None) => {
                if let Some(observer) = this.observer.take() {
                    observer.on_end();
                }
            }
            Poll::Ready(Some(Err(_))) => this.observer = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body to send after the response hooks ran: `body`, or what a hook asked for
/// instead (replaced, or shown to an observer as it passes).
pub fn apply_response_body_action(exchange: &mut Exchange, body: GatewayBody) -> GatewayBody {
    match take_response_body_action(exchange) {
        None => body,
        Some(ResponseBodyAction::Replace(bytes)) => GatewayBody::full(bytes),
        Some(ResponseBodyAction::Observe(observer)) => GatewayBody::Observed(ObservedBody::new(body, observer)),
    }
}

/// How long [`discard`] goes on reading a body the gateway will not use.
const DISCARD_FOR: Duration = Duration::from_secs(5);

/// Reads and drops the rest of an HTTP/1.x client body that the gateway answered without
/// reading (a 413, a policy's denial), in the background and for at most five seconds.
///
/// Dropping it instead makes hyper close the connection with the body's bytes still unread,
/// so the kernel resets it, and a client still writing its body sees the reset (a broken
/// pipe) rather than the answer already sent: nginx's "lingering close" problem (see RFC 9112
/// §9.6). HTTP/2 does not need this: hyper ends just the stream, with `RST_STREAM(NO_ERROR)`.
pub fn discard(body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    // Called from request handling, always inside the runtime; without one, dropping is all
    // that is left to do.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(DISCARD_FOR, async { while let Some(Ok(_)) = body.frame().await {} }).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An extension whose liveness a test can observe through the reference count.
    #[derive(Clone)]
    struct Guard {
        _alive: Arc<()>,
    }

    fn holding(inner: GatewayBody) -> (HoldingBody, Arc<()>) {
        let alive = Arc::new(());
        let mut extensions = http::Extensions::new();
        extensions.insert(Guard { _alive: alive.clone() });
        (HoldingBody::new(inner, extensions), alive)
    }

    #[tokio::test]
    async fn holds_extensions_until_the_body_has_ended() {
        let (mut body, alive) = holding(GatewayBody::full("the whole body"));
        assert_eq!(Arc::strong_count(&alive), 2);
        let frame = body.frame().await.expect("a data frame").expect("no error");
        assert_eq!(frame.into_data().expect("data"), "the whole body");
        assert!(body.is_holding(), "the end of the body has not been read yet");
        assert_eq!(Arc::strong_count(&alive), 2);
        assert!(body.frame().await.is_none());
        assert!(!body.is_holding());
        assert_eq!(Arc::strong_count(&alive), 1, "the end of the body releases what it held");
    }

    #[test]
    fn releases_extensions_when_dropped_before_the_end() {
        let (body, alive) = holding(GatewayBody::full("never read"));
        drop(body);
        assert_eq!(Arc::strong_count(&alive), 1, "a client that went away releases what the body held");
    }

    /// A policy's stream that, like `ai_proxy`'s, reports when it is dropped, abandoned or not.
    struct Reporting {
        chunks: Vec<Bytes>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl futures_util::Stream for Reporting {
        type Item = Result<Bytes, String>;

        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            Poll::Ready((!this.chunks.is_empty()).then(|| Ok(this.chunks.remove(0))))
        }
    }

    impl Drop for Reporting {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    /// Each run of `when_sent`: whether the stream was dropped by then, and the reference count
    /// of the held extension (1: released).
    type Runs = Arc<std::sync::Mutex<Vec<(bool, usize)>>>;

    /// A holding body over a two-chunk policy stream, and what its `when_sent` saw.
    fn holding_a_stream() -> (HoldingBody, Runs) {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = Reporting {
            chunks: vec![Bytes::from("data: 1\n\n"), Bytes::from("data: 2\n\n")],
            dropped: dropped.clone(),
        };
        let (body, alive) = holding(GatewayBody::Chunks(PolicyChunks(Box::pin(stream))));
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = runs.clone();
        let body = body.when_sent(Box::new(move || {
            seen.lock().expect("lock").push((dropped.load(Ordering::SeqCst), Arc::strong_count(&alive)));
        }));
        (body, runs)
    }

    #[tokio::test]
    async fn runs_when_sent_once_at_the_end_after_the_stream_and_the_held_state_are_gone() {
        let (mut body, runs) = holding_a_stream();
        assert!(body.frame().await.is_some());
        assert!(body.frame().await.is_some());
        assert!(runs.lock().expect("lock").is_empty(), "the end has not been read yet");
        assert!(body.frame().await.is_none());
        assert_eq!(*runs.lock().expect("lock"), [(true, 1)], "the stream and the extensions went first");
        drop(body);
        assert_eq!(runs.lock().expect("lock").len(), 1, "once, not again on drop");
    }

    #[tokio::test]
    async fn runs_when_sent_when_the_client_goes_away_mid_stream() {
        let (mut body, runs) = holding_a_stream();
        assert!(body.frame().await.is_some());
        drop(body);
        assert_eq!(*runs.lock().expect("lock"), [(true, 1)]);
    }

    /// Records what an observer was shown, and whether it heard of the end.
    #[derive(Default)]
    struct Seen {
        bytes: Vec<u8>,
        ended: bool,
    }

    struct Recording(Arc<std::sync::Mutex<Seen>>);

    impl BodyObserver for Recording {
        fn on_data(&mut self, data: &Bytes) {
            self.0.lock().expect("lock").bytes.extend_from_slice(data);
        }

        fn on_end(self: Box<Self>) {
            self.0.lock().expect("lock").ended = true;
        }
    }

    fn observed(inner: GatewayBody) -> (ObservedBody, Arc<std::sync::Mutex<Seen>>) {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        (ObservedBody::new(inner, Box::new(Recording(seen.clone()))), seen)
    }

    #[tokio::test]
    async fn shows_every_chunk_and_the_end_once_the_last_byte_passed() {
        let (mut body, seen) = observed(GatewayBody::full("the whole body"));
        let frame = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(frame.into_data().expect("data"), "the whole body");
        // A body of known length ends with its last byte: the connection need not poll again.
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.bytes, b"the whole body");
        assert!(seen.ended);
    }

    #[test]
    fn ends_an_empty_body_at_once_and_drops_an_unfinished_one_silently() {
        let (_empty, seen) = observed(GatewayBody::Empty);
        assert!(seen.lock().expect("lock").ended, "an empty body may never be polled");
        let (unread, seen) = observed(GatewayBody::full("never read"));
        drop(unread);
        assert!(!seen.lock().expect("lock").ended, "a body dropped before its end is not complete");
    }

    #[test]
    fn reports_the_inner_body_length_and_end() {
        let (body, _alive) = holding(GatewayBody::full("12345"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let (empty, _alive) = holding(GatewayBody::Empty);
        assert!(empty.is_end_stream());
    }
}

//! Shadow traffic: a copy of a forwarded request sent to another upstream beside it, as a
//! forward-stage policy (`request_mirror`) asked through `Exchange::mirror`. The copy's answer
//! is read to its end and dropped.
//!
//! Runs per mirrored request, and never makes the client's exchange wait or fail: the copy
//! goes out from a task of its own; its body is copied from the client's as the client's
//! flows to the upstream ([`TeeBody`]), never read ahead of it; a copy that finds its policy's
//! slots all taken is dropped rather than queued. Every copy is counted in
//! `gantry_mirror_requests_total{upstream,outcome}`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gantry_policy_api::{MirrorRequest, MirrorSlot};
use http::uri::PathAndQuery;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::body::{BoxError, GatewayBody};
use crate::forward::{forward, ForwardRequest};
use crate::metrics::{GatewayMetrics, MirrorOutcome};
use crate::snapshot::Snapshot;
use crate::upstream::CompiledUpstream;

/// What the request being forwarded looks like, for its copy.
pub(crate) struct Original<'a> {
    /// The head as it goes upstream (forwarding headers added, hop-by-hop ones removed).
    pub parts: &'a http::request::Parts,
    /// Path and query as sent upstream.
    pub path_and_query: &'a PathAndQuery,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// The host the client asked for.
    pub host: Option<&'a str>,
}

/// Starts the copy `mirror` asked for, and gives back the body to forward: `body` itself, or
/// `body` wrapped to copy what passes through it.
pub(crate) fn start(
    mirror: MirrorRequest,
    snapshot: &Snapshot,
    original: &Original<'_>,
    body: GatewayBody,
    metrics: &GatewayMetrics,
) -> GatewayBody {
    let Some(upstream) = snapshot.upstream(&mirror.upstream) else {
        // The policy checked the id against this very configuration when it was built.
        tracing::debug!(upstream = &*mirror.upstream, "the mirror upstream is not configured");
        return body;
    };
    // Told apart by a known length only: a streamed body is measured as it passes.
    if body.size_hint().lower() > mirror.max_body_bytes {
        metrics.count_mirror(&mirror.upstream, MirrorOutcome::Skipped);
        return body;
    }
    let Some(slot) = mirror.slots.try_take() else {
        metrics.count_mirror(&mirror.upstream, MirrorOutcome::Dropped);
        return body;
    };
    let copy = Copy {
        upstream: upstream.clone(),
        parts: copy_head(original.parts),
        path_and_query: original.path_and_query.clone(),
        client: original.client,
        host: original.host.map(str::to_owned),
        timeout: mirror.timeout,
        metrics: metrics.clone(),
        slot,
    };
    if matches!(body, GatewayBody::Empty) || body.is_end_stream() {
        tokio::spawn(copy.send(CopiedBody::Ready(Bytes::new())));
        return body;
    }
    let (sender, receiver) = oneshot::channel();
    tokio::spawn(copy.send(CopiedBody::Pending(receiver)));
    GatewayBody::Teed(TeeBody::new(body, mirror.max_body_bytes, sender))
}

/// A copy on its way, holding its slot until it has ended.
struct Copy {
    upstream: Arc<CompiledUpstream>,
    parts: http::request::Parts,
    path_and_query: PathAndQuery,
    client: std::net::SocketAddr,
    host: Option<String>,
    timeout: Duration,
    metrics: GatewayMetrics,
    slot: MirrorSlot,
}

enum CopiedBody {
    Ready(Bytes),
    /// Sent once the client's body has passed whole and within the limit; dropped otherwise.
    Pending(oneshot::Receiver<Bytes>),
}

impl Copy {
    async fn send(self, body: CopiedBody) {
        let Copy { upstream, parts, path_and_query, client, host, timeout, metrics, slot } = self;
        let _slot = slot;
        let bytes = match body {
            CopiedBody::Ready(bytes) => bytes,
            CopiedBody::Pending(receiver) => match receiver.await {
                Ok(bytes) => bytes,
                Err(_) => {
                    // Larger than the limit, or never read to its end (the client went away,
                    // the upstream answered without it).
                    metrics.count_mirror(&upstream.id, MirrorOutcome::Skipped);
                    return;
                }
            },
        };
        let body = if bytes.is_empty() { GatewayBody::Empty } else { GatewayBody::full(bytes) };
        let request =
            ForwardRequest { parts, body, path_and_query, client, original_host: host.as_deref(), body_limit: None };
        let exchange = async {
            let forwarded = forward(&upstream, request).await?;
            let _in_flight = forwarded.in_flight;
            // Read to its end so the connection goes back to the pool; the bytes are dropped.
            let mut answer = forwarded.response.into_body();
            while let Some(frame) = answer.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            Ok::<(), crate::forward::ForwardError>(())
        };
        let outcome = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => MirrorOutcome::Answered,
            Ok(Err(err)) => {
                tracing::debug!(upstream = &*upstream.id, error = %err, "mirrored request failed");
                MirrorOutcome::Failed
            }
            Err(_) => {
                tracing::debug!(upstream = &*upstream.id, "mirrored request timed out");
                MirrorOutcome::Failed
            }
        };
        metrics.count_mirror(&upstream.id, outcome);
    }
}

/// A copy of a request head (`Parts` is not `Clone`: its extensions may not be).
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = http::Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy.into_parts().0
}

/// A request body on its way upstream that keeps a copy of the bytes passing through it, up
/// to a limit, and hands the copy over once the body has ended. Past the limit, or when the
/// body fails or is dropped before its end, the copy is given up. The bytes are
/// reference-counted, so the copy costs no copying until the end (and none for one frame).
#[derive(Debug)]
pub struct TeeBody<B = GatewayBody> {
    // Boxed: `GatewayBody` cannot contain itself. Only mirrored requests pay for it.
    inner: Box<B>,
    copy: Option<Copying>,
}

#[derive(Debug)]
struct Copying {
    chunks: Vec<Bytes>,
    length: u64,
    limit: u64,
    done: oneshot::Sender<Bytes>,
}

impl<B> TeeBody<B> {
    /// `inner`, copying up to `limit` bytes of it into `done`.
    fn new(inner: B, limit: u64, done: oneshot::Sender<Bytes>) -> Self {
        Self { inner: Box::new(inner), copy: Some(Copying { chunks: Vec::new(), length: 0, limit, done }) }
    }

    fn deliver(&mut self) {
        let Some(copy) = self.copy.take() else { return };
        let bytes = match copy.chunks.len() {
            0 => Bytes::new(),
            1 => copy.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(copy.length as usize);
                for chunk in copy.chunks {
                    joined.extend_from_slice(&chunk);
                }
                joined.freeze()
            }
        };
        // The copy's task may have ended already (its slot given back on shutdown).
        let _ = copy.done.send(bytes);
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(copy), Some(data)) = (this.copy.as_mut(), frame.data_ref()) {
                    copy.length += data.len() as u64;
                    if copy.length > copy.limit {
                        this.copy = None;
                    } else {
                        copy.chunks.push(data.clone());
                    }
                }
                // The HTTP client stops polling once a body says it has ended, so the end
                // may never be polled for.
                if this.inner.is_end_stream() {
                    this.deliver();
                }
            }
            Poll::Ready(None) => this.deliver(),
            Poll::Ready(Some(Err(_))) => this.copy = None,
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

#[cfg(test)]
mod tests {
    use super::*;

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;

    /// A body of several frames, which does not know it has ended until polled once more.
    fn chunks(parts: &[&'static str]) -> http_body_util::StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|part| Ok(Frame::data(Bytes::from_static(part.as_bytes())))).collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn copies_a_body_within_the_limit_and_hands_it_over_at_its_end() {
        let (sender, receiver) = oneshot::channel();
        let tee = TeeBody::new(chunks(&["hello, ", "world"]), 64, sender);
        let forwarded = tee.collect().await.expect("the body").to_bytes();
        assert_eq!(forwarded, "hello, world", "the forwarded body is unchanged");
        assert_eq!(receiver.await.expect("a copy"), "hello, world");
    }

    #[tokio::test]
    async fn hands_over_a_single_frame_body_the_client_stops_polling_after() {
        let (sender, receiver) = oneshot::channel();
        let mut tee = TeeBody::new(GatewayBody::full("whole"), 64, sender);
        let frame = tee.frame().await.expect("a frame").expect("no error");
        assert_eq!(frame.into_data().expect("data"), "whole");
        assert!(tee.is_end_stream());
        assert_eq!(receiver.await.expect("a copy, without polling for the end"), "whole");
    }

    #[tokio::test]
    async fn gives_the_copy_up_past_the_limit_and_still_forwards_everything() {
        let (sender, receiver) = oneshot::channel();
        let tee = TeeBody::new(chunks(&["12345", "67890"]), 8, sender);
        let forwarded = tee.collect().await.expect("the body").to_bytes();
        assert_eq!(forwarded, "1234567890");
        assert!(receiver.await.is_err(), "no copy of a body past the limit");
    }

    #[tokio::test]
    async fn gives_the_copy_up_when_dropped_before_the_end() {
        let (sender, receiver) = oneshot::channel();
        let mut tee = TeeBody::new(chunks(&["first", "second"]), 64, sender);
        let _ = tee.frame().await;
        drop(tee);
        assert!(receiver.await.is_err());
    }
}

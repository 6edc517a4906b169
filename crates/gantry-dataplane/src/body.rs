//! Body types of the hot path: enums over the few concrete bodies, so that no body is boxed.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// Error type of gateway bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the gateway sends: streamed from the other side, or made here.
#[derive(Debug)]
pub enum GatewayBody {
    /// Streamed from a peer, frames (and trailers) passed through as they arrive.
    Streamed(Incoming),
    /// A client body cut off once it exceeds a limit.
    Limited(LimitedBody),
    /// Made by the gateway (a policy response, a problem document).
    Full(Full<Bytes>),
    /// No body.
    Empty,
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
            GatewayBody::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            GatewayBody::Limited(body) => Pin::new(body).poll_frame(cx),
            GatewayBody::Full(body) => Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
            GatewayBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Streamed(body) => body.is_end_stream(),
            GatewayBody::Limited(body) => body.inner.is_end_stream(),
            GatewayBody::Full(body) => body.is_end_stream(),
            GatewayBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Streamed(body) => body.size_hint(),
            GatewayBody::Limited(body) => body.inner.size_hint(),
            GatewayBody::Full(body) => body.size_hint(),
            GatewayBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The error a [`LimitedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// A streamed client body that fails once more than `limit` bytes have passed, without
/// buffering. `exceeded` tells the forwarder afterwards that the failure means 413.
#[derive(Debug)]
pub struct LimitedBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

impl LimitedBody {
    /// Wraps `inner`; `exceeded` is set when the limit is passed.
    pub fn new(inner: Incoming, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Self { inner, limit, seen: 0, exceeded }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

//! What a policy may ask of bodies beyond the heads its hooks see, through the exchange:
//!
//! - a response hook may watch the response body pass to the client, chunk by chunk, without
//!   holding it up ([`observe_response_body`]; a cache storing what it streams), or replace
//!   the body ([`replace_response_body`]; a cache answering an upstream's 304 with the body it
//!   stored, or an error with a stale copy);
//! - a request hook that answers may ask for a request to go to the route's upstream after
//!   the answer ([`fetch_in_background`]; a cache refreshing the stale copy it just served).
//!
//! The data plane takes these out of the exchange once the hooks ran; an exchange that asked
//! for nothing costs one look into an empty map.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::Exchange;

/// Watches a response body on its way to the client. Called synchronously on the data path:
/// keep it short and never block.
pub trait BodyObserver: Send + 'static {
    /// One chunk of the body, as it is sent on.
    fn on_data(&mut self, data: &Bytes);

    /// The whole body has been passed on. An observer dropped without this call saw a body that
    /// broke off (the client went away, the upstream failed).
    fn on_end(self: Box<Self>);
}

/// What happens to the response body.
pub enum ResponseBodyAction {
    /// Pass the body on, showing it to the observer.
    Observe(Box<dyn BodyObserver>),
    /// Send these bytes instead; the hook set the head's `content-length` to match.
    Replace(Bytes),
}

impl std::fmt::Debug for ResponseBodyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBodyAction::Observe(_) => f.write_str("Observe"),
            ResponseBodyAction::Replace(bytes) => write!(f, "Replace({} bytes)", bytes.len()),
        }
    }
}

/// A request to send to the route's upstream once the client has its answer, and what to do
/// with the response. The response does not pass the route's response hooks.
pub struct BackgroundRequest {
    /// The request head; sent without a body.
    pub head: http::request::Parts,
    /// Largest response body read; a longer one is a failure.
    pub max_body_bytes: usize,
    /// Gets the whole response, or why there is none.
    pub deliver: Box<dyn FnOnce(Result<http::Response<Bytes>, String>) + Send>,
}

impl std::fmt::Debug for BackgroundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundRequest").field("uri", &self.head.uri).finish_non_exhaustive()
    }
}

/// Extension values are shared (`Clone`), the actions are taken once: hence a slot.
struct Slot<T>(Arc<Mutex<Option<T>>>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Slot<T> {
    fn new(value: T) -> Self {
        Self(Arc::new(Mutex::new(Some(value))))
    }

    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Shows the response body to `observer` as it passes to the client. Called from a response
/// hook; a later call (by a hook running after) replaces the earlier.
pub fn observe_response_body(exchange: &mut Exchange, observer: Box<dyn BodyObserver>) {
    exchange.extensions.insert(Slot::new(ResponseBodyAction::Observe(observer)));
}

/// Sends `body` instead of the response's own. Called from a response hook, which also sets
/// the head to match (`content-length`, `content-type`).
pub fn replace_response_body(exchange: &mut Exchange, body: Bytes) {
    exchange.extensions.insert(Slot::new(ResponseBodyAction::Replace(body)));
}

/// A body a request hook answers with that is still being made: the hook's response head goes
/// out at once and the body follows chunk by chunk (`ai_proxy` translating a provider's event
/// stream as it arrives). The response's own bytes are ignored.
pub fn stream_response_body(exchange: &mut Exchange, body: crate::subrequest::ChunkStream) {
    exchange.extensions.insert(Slot::new(StreamedBody(body)));
}

/// The streamed body a request hook answered with, if any; for the data plane.
pub fn take_streamed_body(exchange: &mut Exchange) -> Option<crate::subrequest::ChunkStream> {
    exchange.extensions.remove::<Slot<StreamedBody>>().and_then(|slot| slot.take()).map(|streamed| streamed.0)
}

/// Kept apart from [`ResponseBodyAction`] so a response hook observing the body does not drop it.
struct StreamedBody(crate::subrequest::ChunkStream);

/// What response hooks asked for the body, if anything; for the data plane.
pub fn take_response_body_action(exchange: &mut Exchange) -> Option<ResponseBodyAction> {
    exchange.extensions.remove::<Slot<ResponseBodyAction>>().and_then(|slot| slot.take())
}

/// Sends `request` to the route's upstream once the answer the request hook gives is on its
/// way. Only a hook that answers ([`crate::Flow::Respond`]) gets this; otherwise it is dropped,
/// and `deliver` with it, uncalled.
pub fn fetch_in_background(exchange: &mut Exchange, request: BackgroundRequest) {
    exchange.extensions.insert(Slot::new(request));
}

/// The background request a hook asked for, if any; for the data plane.
pub fn take_background_request(exchange: &mut Exchange) -> Option<BackgroundRequest> {
    exchange.extensions.remove::<Slot<BackgroundRequest>>().and_then(|slot| slot.take())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::exchange_from;

    struct Counting(Arc<Mutex<usize>>);

    impl BodyObserver for Counting {
        fn on_data(&mut self, data: &Bytes) {
            *self.0.lock().expect("lock") += data.len();
        }

        fn on_end(self: Box<Self>) {}
    }

    #[test]
    fn hands_each_action_to_the_data_plane_once() {
        let mut exchange = exchange_from("127.0.0.1:40000");
        assert!(take_response_body_action(&mut exchange).is_none());
        replace_response_body(&mut exchange, Bytes::from_static(b"stored"));
        match take_response_body_action(&mut exchange) {
            Some(ResponseBodyAction::Replace(bytes)) => assert_eq!(bytes, "stored"),
            other => panic!("{other:?}"),
        }
        assert!(take_response_body_action(&mut exchange).is_none(), "taken");
        assert!(exchange.extensions.is_empty(), "nothing is left to hold until the body is sent");

        let seen = Arc::new(Mutex::new(0));
        observe_response_body(&mut exchange, Box::new(Counting(seen.clone())));
        let Some(ResponseBodyAction::Observe(mut observer)) = take_response_body_action(&mut exchange) else {
            panic!("an observer")
        };
        observer.on_data(&Bytes::from_static(b"12345"));
        assert_eq!(*seen.lock().expect("lock"), 5);
    }

    #[test]
    fn keeps_a_background_request_until_taken() {
        let mut exchange = exchange_from("127.0.0.1:40000");
        let (head, ()) = http::Request::get("/refresh").body(()).expect("request").into_parts();
        fetch_in_background(&mut exchange, BackgroundRequest { head, max_body_bytes: 10, deliver: Box::new(drop) });
        let request = take_background_request(&mut exchange).expect("asked for");
        assert_eq!(request.head.uri, "/refresh");
        assert!(take_background_request(&mut exchange).is_none());
    }
}

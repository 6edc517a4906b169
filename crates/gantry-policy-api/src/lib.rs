//! The policy contract: what a policy is, when it runs and what it may do.
//!
//! A [`PolicyFactory`] turns typed settings into an `Arc<dyn Policy>` once, at config compile
//! time. The data plane then calls the policy's hooks for every request of the routes it is
//! attached to: [`Policy::on_request`] in [`Stage`] order, [`Policy::on_response`] in reverse,
//! [`Policy::on_log`] last. Policies see `http` crate types only, never the HTTP engine.

pub mod ai;
mod client_certificate;
mod consumer;
mod exchange;
mod factory;
mod flow;
pub mod identity;
mod mirror;
pub mod problem;
pub mod response_body;
mod stage;
pub mod subrequest;
pub mod testing;

pub use client_certificate::{CertificateParseError, ClientCertificate};
pub use consumer::{Consumer, ConsumerDirectory, CredentialEntry, IdentityFactory};
pub use exchange::{Exchange, ForwardOutcome, Identity, LogRecord, RequestBody};
pub use factory::{BuildContext, PolicyFactory, RegisteredPolicy, Validate};
pub use flow::{Flow, Hook};
pub use mirror::{MirrorRequest, MirrorSlot, MirrorSlots};
pub use stage::Stage;

/// The request head a policy sees and may change.
pub type RequestParts = http::request::Parts;
/// The response head a policy sees and may change.
pub type ResponseParts = http::response::Parts;
/// A response made by a policy (a denial, a mock, a redirect).
pub type PolicyResponse = http::Response<bytes::Bytes>;

/// The hooks a policy implements, so the pipeline lists it only where it has work to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Runs [`Policy::on_request`].
    pub request: bool,
    /// Runs [`Policy::on_response`].
    pub response: bool,
    /// Runs [`Policy::on_log`].
    pub log: bool,
}

impl Hooks {
    /// Only `on_request`.
    pub const REQUEST: Hooks = Hooks { request: true, response: false, log: false };
    /// Only `on_response`.
    pub const RESPONSE: Hooks = Hooks { request: false, response: true, log: false };
}

/// One configured policy instance, shared by every request of the routes it is attached to.
pub trait Policy: Send + Sync + 'static {
    /// Which hooks this policy implements; the others are never called.
    fn hooks(&self) -> Hooks;

    /// True when this instance answers every request itself (a mock, a fixed redirect), so a
    /// route that has it needs no upstream.
    fn answers_every_request(&self) -> bool {
        false
    }

    /// True when this policy may need a request's whole body before its request hook (to read
    /// a form or a document). Asked once, when the pipeline is built; only such policies are
    /// asked [`Policy::request_body_limit`] per request.
    fn reads_request_body(&self) -> bool {
        false
    }

    /// How many bytes of this request's body the policy needs buffered, at most, or `None`
    /// when it does not need this request's body. The data plane then reads the body before
    /// any request hook runs (413 past the largest limit asked), puts it in the exchange's
    /// extensions as a [`RequestBody`], and forwards the same bytes.
    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        let _ = request;
        None
    }

    /// True when this policy may need an upstream response's whole body (to validate it).
    /// Asked once, when the pipeline is built; only such policies are asked
    /// [`Policy::response_body_limit`].
    fn reads_response_body(&self) -> bool {
        false
    }

    /// True when this policy's request hook may call configured upstreams itself, through the
    /// [`subrequest::Subrequests`] handle the data plane then leaves in the exchange. Asked once,
    /// when the pipeline is built.
    fn sends_subrequests(&self) -> bool {
        false
    }

    /// How many bytes of this upstream response's body the policy needs buffered, at most, or
    /// `None` when it does not need this response's body. The data plane then reads the body
    /// before any response hook runs (a longer body is answered with 502), calls
    /// [`Policy::on_response_body`], and sends the same bytes on.
    fn response_body_limit(&self, response: &ResponseParts, exchange: &Exchange) -> Option<u64> {
        let _ = (response, exchange);
        None
    }

    /// Inspects an upstream response's body that [`Policy::response_body_limit`] asked for; may
    /// replace the response with its own answer. Runs in response order, before the response
    /// hooks, which then see the answer that is sent.
    fn on_response_body(
        &self,
        response: &ResponseParts,
        body: &bytes::Bytes,
        exchange: &mut Exchange,
    ) -> Option<PolicyResponse> {
        let _ = (response, body, exchange);
        None
    }

    /// Inspects or changes the request before it goes upstream; may answer instead.
    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let _ = (request, exchange);
        Hook::Done(Flow::Continue)
    }

    /// Inspects or changes the response head before it goes to the client.
    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let _ = (response, exchange);
    }

    /// Sees the finished exchange. Runs after the response was sent; must not block.
    fn on_log(&self, record: &LogRecord<'_>) {
        let _ = record;
    }
}

//! What a request hook decides.

use std::future::Future;
use std::pin::Pin;

use crate::PolicyResponse;

/// The outcome of a request hook. An expected denial (401, 403, 429) is a value, not an error.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next policy, then the upstream.
    Continue,
    /// Answer the client with this response; later policies and the upstream are skipped.
    Respond(PolicyResponse),
}

/// A request hook's result: decided at once, or after waiting (a key lookup, a remote call).
/// Most policies decide at once, which costs no allocation.
pub enum Hook<'a> {
    /// Decided.
    Done(Flow),
    /// Decided when the future completes.
    Wait(Pin<Box<dyn Future<Output = Flow> + Send + 'a>>),
}

impl Hook<'_> {
    /// Resolves the hook.
    pub async fn resolve(self) -> Flow {
        match self {
            Hook::Done(flow) => flow,
            Hook::Wait(future) => future.await,
        }
    }
}

impl From<Flow> for Hook<'_> {
    fn from(flow: Flow) -> Self {
        Hook::Done(flow)
    }
}

impl From<PolicyResponse> for Hook<'_> {
    fn from(response: PolicyResponse) -> Self {
        Hook::Done(Flow::Respond(response))
    }
}

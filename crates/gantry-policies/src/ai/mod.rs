//! The AI gateway: one OpenAI-compatible endpoint over several LLM providers.

pub mod ai_pii_redaction;
pub mod ai_prompt_decorator;
pub mod ai_prompt_guard;
pub mod ai_prompt_template;
pub mod ai_proxy;
pub mod ai_rate_limit;
pub mod ai_response_cache;
pub mod ai_semantic_cache;
mod cache;
mod openai;
mod prompt;
mod providers;
mod sse;
pub mod tokens;

use std::sync::Arc;

/// Rewrites the text of an AI answer before the client gets it (PII redaction). Policies
/// that run before `ai_proxy` add theirs to [`AnswerFilters`] in the exchange's extensions;
/// `ai_proxy` applies them, in order, to each choice's message text, whole or streamed.
pub trait AnswerFilter: Send + Sync {
    /// The text of a whole answer, rewritten.
    fn filter(&self, text: &str) -> String;
    /// A filter for one streamed choice, fed its text deltas in order.
    fn stream(&self) -> Box<dyn AnswerStreamFilter>;
}

/// The state of an [`AnswerFilter`] over one streamed choice: text may be held back until
/// enough follows to decide (a match can span deltas).
pub trait AnswerStreamFilter: Send {
    /// The text that may be sent now, given the next delta.
    fn push(&mut self, delta: &str) -> String;
    /// The text still held back, once the choice's stream has ended.
    fn finish(&mut self) -> String;
}

/// The answer filters of an exchange, in the order their policies ran.
#[derive(Clone, Default)]
pub struct AnswerFilters(pub Vec<Arc<dyn AnswerFilter>>);

/// Sees a complete successful answer as the client got it (after the answer filters), in
/// OpenAI's shape: a `chat.completion`, `text_completion` or embedding `list`, with `usage`.
pub type AnswerTap = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

/// The answer taps of an exchange: caches (`ai_response_cache`, `ai_semantic_cache`) that run
/// before `ai_proxy` add theirs, and `ai_proxy` calls each with the answer once it is whole.
/// A streamed answer is reassembled into a `chat.completion` (or `text_completion`) and given
/// to the taps only when its stream ended cleanly: not after a provider's error, a broken or
/// silent stream, or a client that left. Streamed answers holding tool calls are not
/// reassembled, so the taps never see them; whole answers with tool calls are given as they are.
#[derive(Clone, Default)]
pub struct AnswerTaps(pub Vec<AnswerTap>);

/// A subrequest's answer read whole, refused past `limit` bytes.
pub(crate) async fn read_whole(
    mut chunks: gantry_policy_api::subrequest::ChunkStream,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    use futures_util::StreamExt;
    let mut whole = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if whole.len() + chunk.len() > limit {
            return Err(format!("the answer is longer than {limit} bytes"));
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(bytes::Bytes::from(whole))
}

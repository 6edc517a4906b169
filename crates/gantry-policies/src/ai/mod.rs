//! The AI gateway: one OpenAI-compatible endpoint over several LLM providers.

pub mod ai_pii_redaction;
pub mod ai_prompt_decorator;
pub mod ai_prompt_guard;
pub mod ai_prompt_template;
pub mod ai_proxy;
pub mod ai_rate_limit;
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

//! The AI gateway: one OpenAI-compatible endpoint over several LLM providers.

pub mod ai_proxy;
mod openai;
mod providers;
mod sse;

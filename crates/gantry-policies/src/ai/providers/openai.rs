//! OpenAI and every OpenAI-compatible API (vLLM, Ollama's `/v1`, Groq, DeepSeek, Together,
//! Mistral, ...): the request goes on with the target's model, answers and streams come back
//! unchanged.

use http::StatusCode;
use serde_json::Value;

use super::{ChatRequest, StreamTranslator};

/// The body sent upstream: the client's, with the target's model.
pub fn request(mut request: ChatRequest, model: &str) -> Vec<u8> {
    request.insert("model".to_owned(), Value::String(model.to_owned()));
    serde_json::to_vec(&request).unwrap_or_default()
}

/// An error answer, kept when it is already OpenAI's shape.
pub fn error(status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
    super::openai_error_from(status, body, &["error", "message"], &["error", "type"])
}

/// Passes the provider's events on as they came, `[DONE]` included.
#[derive(Debug, Default)]
pub struct Passthrough {
    pub done: bool,
}

impl StreamTranslator for Passthrough {
    fn event(&mut self, _event: &str, data: &str) -> Vec<u8> {
        if data == "[DONE]" {
            self.done = true;
        }
        super::super::sse::data_event(data)
    }

    fn end(&mut self) -> Vec<u8> {
        if self.done {
            Vec::new()
        } else {
            self.done = true;
            b"data: [DONE]\n\n".to_vec()
        }
    }
}

//! OpenAI and every OpenAI-compatible API (vLLM, Ollama's `/v1`, Groq, DeepSeek, Together,
//! Mistral, ...): the request goes on with the target's model, answers and streams come back
//! as they are.

use http::StatusCode;
use serde_json::{json, Value};

use super::{Adapter, ChatRequest, Operation, StreamTranslator, TargetInfo};

/// The OpenAI format.
#[derive(Debug)]
pub struct OpenAi;

impl Adapter for OpenAi {
    fn serves(&self, _operation: Operation) -> bool {
        true
    }

    fn path(&self, target: &TargetInfo, operation: Operation, _streamed: bool) -> String {
        let suffix = match operation {
            Operation::Chat => "/chat/completions",
            Operation::Completion => "/completions",
            Operation::Embeddings => "/embeddings",
        };
        format!("{}{suffix}", target.base_path)
    }

    fn request(
        &self,
        target: &TargetInfo,
        _operation: Operation,
        request: &ChatRequest,
        streamed: bool,
    ) -> Result<Vec<u8>, String> {
        let mut request = request.clone();
        request.insert("model".to_owned(), Value::String(target.model.clone()));
        if streamed && target.provider.takes_stream_options() {
            // Usage is counted for every stream; the client's stream drops the usage chunk
            // again unless it asked for it.
            let options = request.entry("stream_options").or_insert_with(|| json!({}));
            if let Value::Object(options) = options {
                options.insert("include_usage".to_owned(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&request).map_err(|err| err.to_string())
    }

    fn response(&self, _target: &TargetInfo, _operation: Operation, body: &[u8]) -> Result<Value, String> {
        let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
        if !answer.is_object() {
            return Err("the answer is not a JSON object".to_owned());
        }
        Ok(answer)
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
        super::openai_error_from(status, body, &["error", "message"], &["error", "type"])
    }

    fn stream(&self, _target: &TargetInfo, _operation: Operation) -> Box<dyn StreamTranslator> {
        Box::new(Passthrough)
    }
}

/// Passes the provider's chunks on as they came; `[DONE]` is the client stream's to send.
#[derive(Debug, Default)]
pub struct Passthrough;

impl StreamTranslator for Passthrough {
    fn event(&mut self, _event: &str, data: &str) -> Vec<Value> {
        if data == "[DONE]" {
            return Vec::new();
        }
        match serde_json::from_str::<Value>(data) {
            Ok(chunk @ Value::Object(_)) => vec![chunk],
            // Not a chunk: keep-alive text some servers send; nothing for the client.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::providers::Provider;

    fn target(provider: Provider) -> TargetInfo {
        TargetInfo {
            provider,
            model: "gpt-4o-mini".to_owned(),
            base_path: provider.default_base_path().to_owned(),
            default_max_tokens: 16,
            vertex: None,
            azure: None,
            bedrock: None,
        }
    }

    #[test]
    fn sends_the_target_model_and_asks_streams_for_usage_where_taken() {
        let request: ChatRequest =
            serde_json::from_str(r#"{"model":"alias","stream":true,"messages":[]}"#).expect("json");
        let sent: Value = serde_json::from_slice(
            &OpenAi.request(&target(Provider::Openai), Operation::Chat, &request, true).expect("body"),
        )
        .expect("json");
        assert_eq!(sent["model"], "gpt-4o-mini");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let sent: Value = serde_json::from_slice(
            &OpenAi.request(&target(Provider::Mistral), Operation::Chat, &request, true).expect("body"),
        )
        .expect("json");
        assert!(sent.get("stream_options").is_none(), "Mistral refuses stream_options");
    }

    #[test]
    fn paths_follow_each_preset() {
        assert_eq!(OpenAi.path(&target(Provider::Groq), Operation::Chat, false), "/openai/v1/chat/completions");
        assert_eq!(OpenAi.path(&target(Provider::Perplexity), Operation::Chat, false), "/chat/completions");
        assert_eq!(OpenAi.path(&target(Provider::Openrouter), Operation::Embeddings, false), "/api/v1/embeddings");
        assert_eq!(OpenAi.path(&target(Provider::Fireworks), Operation::Completion, true), "/inference/v1/completions");
    }

    #[test]
    fn passes_chunks_on_and_leaves_done_to_the_client_stream() {
        let mut stream = Passthrough;
        assert_eq!(stream.event("message", r#"{"id":"1","choices":[]}"#), vec![json!({"id":"1","choices":[]})]);
        assert!(stream.event("message", "[DONE]").is_empty());
        assert!(stream.event("message", "keep-alive").is_empty());
    }
}

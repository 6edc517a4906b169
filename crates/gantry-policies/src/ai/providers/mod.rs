//! The provider formats `ai_proxy` translates to and from, one module each, behind one
//! [`Adapter`] trait: the rest of the policy (target choice, fallback, usage, filters, the
//! client's stream) knows no provider.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod cohere;
mod fields;
pub mod gemini;
pub mod openai;
pub mod vertex;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::sse;

/// The client's request, a JSON object: a provider translates the fields it knows and
/// OpenAI-compatible providers get the rest untouched.
pub type ChatRequest = Map<String, Value>;

/// What the client asked for, by endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `POST /chat/completions`.
    Chat,
    /// `POST /completions`, the legacy text completion. A provider that has none gets it as a
    /// chat of one user message, and its answer is turned back into a text completion.
    Completion,
    /// `POST /embeddings`.
    Embeddings,
}

impl Operation {
    /// The name OpenTelemetry's GenAI conventions give it (`gen_ai.operation.name`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// The API format a target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI's API.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Azure OpenAI, with the target's `azure` settings.
    AzureOpenai,
    /// Amazon Bedrock's Converse API, with the target's `bedrock` settings.
    Bedrock,
    /// Any other OpenAI-compatible API, at the target's `base_path`.
    OpenaiCompatible,
    /// Mistral's API (OpenAI-compatible, `/v1`).
    Mistral,
    /// Groq (OpenAI-compatible, `/openai/v1`).
    Groq,
    /// DeepSeek (OpenAI-compatible, `/v1`).
    Deepseek,
    /// Together AI (OpenAI-compatible, `/v1`).
    Together,
    /// Fireworks AI (OpenAI-compatible, `/inference/v1`).
    Fireworks,
    /// OpenRouter (OpenAI-compatible, `/api/v1`).
    Openrouter,
    /// Perplexity (OpenAI-compatible chat at the root, no `/v1`).
    Perplexity,
    /// xAI (OpenAI-compatible, `/v1`).
    Xai,
    /// Ollama's OpenAI-compatible API (`/v1`).
    Ollama,
    /// vLLM's OpenAI-compatible server (`/v1`).
    Vllm,
    /// Google's Gemini API (AI Studio, `/v1beta`).
    Gemini,
    /// Gemini on Google Cloud's Vertex AI (`/v1`), with the target's `vertex` settings.
    VertexAi,
    /// Cohere's v2 API (`/v2`).
    Cohere,
}

impl Provider {
    /// The translation it needs.
    pub fn adapter(self) -> &'static dyn Adapter {
        match self {
            Provider::Anthropic => &anthropic::Anthropic,
            Provider::AzureOpenai => &azure::AzureOpenAi,
            Provider::Bedrock => &bedrock::Bedrock,
            Provider::Gemini => &gemini::Gemini,
            Provider::VertexAi => &vertex::Vertex,
            Provider::Cohere => &cohere::Cohere,
            Provider::Openai
            | Provider::OpenaiCompatible
            | Provider::Mistral
            | Provider::Groq
            | Provider::Deepseek
            | Provider::Together
            | Provider::Fireworks
            | Provider::Openrouter
            | Provider::Perplexity
            | Provider::Xai
            | Provider::Ollama
            | Provider::Vllm => &openai::OpenAi,
        }
    }

    /// Where its API starts when the target names no `base_path`.
    pub fn default_base_path(self) -> &'static str {
        match self {
            Provider::Groq => "/openai/v1",
            Provider::Fireworks => "/inference/v1",
            Provider::Openrouter => "/api/v1",
            Provider::Perplexity | Provider::Bedrock => "",
            Provider::AzureOpenai => "/openai",
            Provider::Gemini => "/v1beta",
            Provider::Cohere => "/v2",
            _ => "/v1",
        }
    }

    /// Its name in OpenTelemetry's GenAI conventions (`gen_ai.system`).
    pub fn system(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::AzureOpenai => "az.ai.openai",
            Provider::Bedrock => "aws.bedrock",
            Provider::OpenaiCompatible | Provider::Ollama | Provider::Vllm => "openai_compatible",
            Provider::Mistral => "mistral_ai",
            Provider::Groq => "groq",
            Provider::Deepseek => "deepseek",
            Provider::Together => "together_ai",
            Provider::Fireworks => "fireworks_ai",
            Provider::Openrouter => "openrouter",
            Provider::Perplexity => "perplexity",
            Provider::Xai => "xai",
            Provider::Gemini => "gcp.gemini",
            Provider::VertexAi => "gcp.vertex_ai",
            Provider::Cohere => "cohere",
        }
    }

    /// Whether its streams report usage when asked with `stream_options.include_usage`
    /// (Perplexity and Mistral always send it, and refuse the option).
    pub fn takes_stream_options(self) -> bool {
        !matches!(self, Provider::Anthropic | Provider::Perplexity | Provider::Mistral | Provider::Bedrock)
    }
}

/// What the adapters need to know of a target.
#[derive(Clone, Debug)]
pub struct TargetInfo {
    pub provider: Provider,
    /// The provider's model name.
    pub model: String,
    /// The path the provider's API starts at, without a trailing `/`.
    pub base_path: String,
    /// `max_tokens` for providers that require one when the client gives none.
    pub default_max_tokens: u64,
    /// Where an `azure_openai` target's requests go.
    pub azure: Option<azure::AzureApi>,
    /// Region, host and credentials of a `bedrock` target.
    pub bedrock: Option<Arc<bedrock::BedrockAccess>>,
    /// Project, location and credentials of a `vertex_ai` target.
    pub vertex: Option<Arc<vertex::VertexAccess>>,
}

#[cfg(test)]
impl TargetInfo {
    /// A target of `provider` at its default path, without provider settings.
    pub fn for_tests(provider: Provider, model: &str) -> Self {
        Self {
            provider,
            model: model.to_owned(),
            base_path: provider.default_base_path().to_owned(),
            default_max_tokens: 16,
            vertex: None,
            azure: None,
            bedrock: None,
        }
    }
}

/// A future an adapter returns, borrowing the target.
pub type AdapterFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One provider's API format.
pub trait Adapter: Send + Sync {
    /// Whether it serves `operation` itself. [`Operation::Chat`] always; a provider without
    /// [`Operation::Completion`] gets completions as chats; one without
    /// [`Operation::Embeddings`] is skipped for embeddings.
    fn serves(&self, operation: Operation) -> bool {
        operation == Operation::Chat
    }

    /// The path and query of the request, for `operation` (never `Completion` unless served).
    fn path(&self, target: &TargetInfo, operation: Operation, streamed: bool) -> String;

    /// The header carrying an API key: name and value.
    fn auth(&self, key: &str) -> (HeaderName, String) {
        (http::header::AUTHORIZATION, format!("Bearer {key}"))
    }

    /// Headers every request carries (`anthropic-version`).
    fn headers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The body sent upstream, or why the request cannot be made (the client's 400).
    fn request(
        &self,
        target: &TargetInfo,
        operation: Operation,
        request: &ChatRequest,
        streamed: bool,
    ) -> Result<Vec<u8>, String>;

    /// The client's answer for a whole (not streamed) successful answer, in OpenAI's shape
    /// (a `chat.completion`, `text_completion` or embedding `list`, with `usage`), or why it
    /// cannot be read (a 502).
    fn response(&self, target: &TargetInfo, operation: Operation, body: &[u8]) -> Result<Value, String>;

    /// An error answer, in OpenAI's shape: status and body.
    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value);

    /// [`Adapter::error`] for providers that name the error in a header (AWS).
    fn error_with_headers(&self, status: StatusCode, _headers: &http::HeaderMap, body: &[u8]) -> (StatusCode, Value) {
        self.error(status, body)
    }

    /// The wait, in seconds, a failed answer asks for in its body, for providers that say it
    /// there rather than in `Retry-After` (Google's `RetryInfo`).
    fn retry_delay(&self, _body: &[u8]) -> Option<u64> {
        None
    }

    /// The translator of a streamed answer into OpenAI chunks.
    fn stream(&self, target: &TargetInfo, operation: Operation) -> Box<dyn StreamTranslator>;

    /// The splitter of a streamed answer's bytes into events; server-sent events unless the
    /// provider frames its streams otherwise.
    fn decoder(&self) -> Box<dyn EventDecoder> {
        Box::<sse::Parser>::default()
    }

    /// Last changes to the request head once its body is known (a signature over both).
    fn authorize<'a>(
        &'a self,
        _target: &'a TargetInfo,
        _head: &'a mut http::request::Parts,
        _body: &'a [u8],
    ) -> AdapterFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One event of a provider's stream: its name (`message` when it has none) and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    pub event: String,
    pub data: String,
}

/// Splits a provider's streamed bytes into events, fed chunks as they arrive.
pub trait EventDecoder: Send {
    /// The events completed by `bytes`, or why the stream cannot be read.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, String>;
}

/// What a streamed answer's events become: OpenAI `chat.completion.chunk` objects (or an
/// OpenAI error object, which ends the stream). The client's stream layer adds `[DONE]`.
pub trait StreamTranslator: Send {
    /// The chunks for one upstream event, possibly none.
    fn event(&mut self, event: &str, data: &str) -> Vec<Value>;
    /// The chunks once the upstream stream ended.
    fn end(&mut self) -> Vec<Value> {
        Vec::new()
    }
}

/// A provider's answer that is an error, in OpenAI's shape: status and body.
pub fn openai_error_from(
    status: StatusCode,
    body: &[u8],
    message_at: &[&str],
    type_at: &[&str],
) -> (StatusCode, Value) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let pick = |at: &[&str]| {
        parsed.as_ref().and_then(|value| at.iter().try_fold(value, |value, key| value.get(key))).and_then(Value::as_str)
    };
    let message = pick(message_at).map(str::to_owned).unwrap_or_else(|| format!("the provider answered {status}"));
    let kind = pick(type_at).map(str::to_owned);
    let kind = kind.as_deref().unwrap_or_else(|| crate::ai::openai::error_kind(status));
    (status, crate::ai::openai::error_body(&message, kind, None))
}

/// A header value holding a secret: never shown in debug output.
pub fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl EventDecoder for sse::Parser {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, String> {
        Ok(sse::Parser::feed(self, bytes)
            .into_iter()
            .map(|event| StreamEvent { event: event.event, data: event.data })
            .collect())
    }
}

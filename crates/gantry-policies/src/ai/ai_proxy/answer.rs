//! The client's side of an answer, whatever the provider: usage read (or estimated) and
//! reported once, answer filters applied to the text, completions asked of a chat-only
//! provider turned back into text completions, and a stream's chunks written as server-sent
//! events ending in `[DONE]`.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use gantry_policy_api::ai::{AiExchange, AiUsage};
use gantry_policy_api::subrequest::ChunkStream;
use serde_json::{json, Value};

use super::tokens;
use crate::ai::providers::{ChatRequest, EventDecoder, Operation, StreamTranslator};
use crate::ai::sse::data_event;
use crate::ai::{AnswerFilter, AnswerStreamFilter, AnswerTap};

/// Price of a million tokens, input and output.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// Where an exchange's usage goes once known, and what is needed to estimate it.
pub struct UsageReport {
    pub exchange: AiExchange,
    pub operation: Operation,
    pub provider: &'static str,
    pub request_model: Arc<str>,
    pub response_model: String,
    pub price: Option<Price>,
    /// The client's request, whose prompt is counted when the provider reports no usage.
    pub prompt: Arc<ChatRequest>,
}

impl UsageReport {
    /// Reports the usage; counts the provider gave win over estimates.
    pub fn finish(&self, reported: Option<(u64, u64)>, estimated_output: u64) {
        let (input_tokens, output_tokens, estimated) = match reported {
            Some((input, output)) => (input, output, false),
            None => (self.estimated_input(), estimated_output, true),
        };
        let cost = self
            .price
            .map(|price| (input_tokens as f64 * price.input + output_tokens as f64 * price.output) / 1_000_000.0);
        self.exchange.finish(AiUsage {
            operation: self.operation.name(),
            provider: self.provider,
            request_model: self.request_model.clone(),
            response_model: self.response_model.clone(),
            input_tokens,
            output_tokens,
            estimated,
            cost,
            cache_hit: false,
        });
    }
}

impl UsageReport {
    /// The prompt's tokens by the model's tokenizer.
    pub fn estimated_input(&self) -> u64 {
        tokens::prompt_tokens(&self.response_model, &self.prompt)
    }
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of an OpenAI answer or chunk, when it
/// has them (an embedding answer has no completion tokens).
pub fn usage_of(answer: &Value) -> Option<(u64, u64)> {
    let usage = answer.get("usage").filter(|usage| usage.is_object())?;
    let input = usage.get("prompt_tokens").and_then(Value::as_u64)?;
    let output = usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0);
    Some((input, output))
}

/// The chat request a chat-only provider gets for a text completion request.
pub fn completion_as_chat(request: &ChatRequest) -> Result<ChatRequest, String> {
    let prompt = match request.get("prompt") {
        Some(Value::String(prompt)) => prompt.clone(),
        Some(Value::Array(prompts)) if prompts.len() == 1 && prompts[0].is_string() => {
            prompts[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => return Err("this model takes one text `prompt`, not a list".to_owned()),
        _ => return Err("`prompt` must be a string".to_owned()),
    };
    let mut chat = ChatRequest::new();
    for key in ["model", "max_tokens", "temperature", "top_p", "stop", "stream", "user", "seed", "n"] {
        if let Some(value) = request.get(key) {
            chat.insert(key.to_owned(), value.clone());
        }
    }
    if let Some(suffix) = request.get("suffix").filter(|suffix| !suffix.is_null()) {
        let _ = suffix;
        return Err("`suffix` is not supported by this model".to_owned());
    }
    chat.insert("messages".to_owned(), json!([{ "role": "user", "content": prompt }]));
    Ok(chat)
}

/// A `chat.completion` turned into the `text_completion` the client asked for.
pub fn chat_as_completion(answer: Value) -> Value {
    as_text_completion(answer, "/message/content")
}

/// A `chat.completion.chunk` turned into a streamed `text_completion`.
fn chunk_as_completion(chunk: Value) -> Value {
    as_text_completion(chunk, "/delta/content")
}

/// The answer or chunk with each choice's text, found at `text_at`, as a completion's `text`.
fn as_text_completion(mut answer: Value, text_at: &str) -> Value {
    let choices: Vec<Value> = answer
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|choice| {
            json!({
                "text": choice.pointer(text_at).and_then(Value::as_str).unwrap_or_default(),
                "index": choice.get("index").cloned().unwrap_or(json!(0)),
                "logprobs": null,
                "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    answer["object"] = json!("text_completion");
    answer["choices"] = Value::Array(choices);
    answer
}

/// Applies the answer filters to a whole answer's texts: each choice's message content (a
/// chat) or text (a completion).
pub fn filter_whole(answer: &mut Value, filters: &[Arc<dyn AnswerFilter>]) {
    if filters.is_empty() {
        return;
    }
    let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        let text = match choice.pointer_mut("/message/content") {
            Some(text) => text,
            None => match choice.get_mut("text") {
                Some(text) => text,
                None => continue,
            },
        };
        if let Value::String(content) = text {
            *content = filters.iter().fold(std::mem::take(content), |text, filter| filter.filter(&text));
        }
    }
}

/// The text a model wrote in a whole answer, for estimating its tokens.
pub fn written_text(answer: &Value) -> String {
    let mut text = String::new();
    for choice in answer.get("choices").and_then(Value::as_array).into_iter().flatten() {
        for at in ["/message/content", "/text"] {
            if let Some(content) = choice.pointer(at).and_then(Value::as_str) {
                text.push_str(content);
            }
        }
        for call in choice.pointer("/message/tool_calls").and_then(Value::as_array).into_iter().flatten() {
            if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str) {
                text.push_str(arguments);
            }
        }
    }
    text
}

/// The filters of one streamed choice, chained: what one lets through feeds the next.
struct FilterChain(Vec<Box<dyn AnswerStreamFilter>>);

impl FilterChain {
    fn push(&mut self, delta: &str) -> String {
        let mut text = delta.to_owned();
        for filter in &mut self.0 {
            text = filter.push(&text);
        }
        text
    }

    fn finish(&mut self) -> String {
        let mut text = String::new();
        for filter in &mut self.0 {
            text = filter.push(&text);
            text.push_str(&filter.finish());
        }
        text
    }
}

/// The client's stream of one answer, fed the provider's chunks.
pub struct ClientStream {
    decoder: Box<dyn EventDecoder>,
    translator: Box<dyn StreamTranslator>,
    /// The client asked a completion of a chat-only provider: chunks are turned back.
    as_completion: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    include_usage: bool,
    filters: Vec<Arc<dyn AnswerFilter>>,
    /// Filter chains of the choices seen so far, by choice index.
    choice_filters: Vec<(u64, FilterChain)>,
    /// The text the model wrote, counted only if the provider reports no usage: most do, and
    /// tokenizing every stream would cost more than keeping its text.
    written: String,
    reported: Option<(u64, u64)>,
    report: UsageReport,
    /// The last chunk's `id`, `created` and `model`, for the chunks the gateway adds.
    last_head: Option<(Value, Value, Value)>,
    ended: bool,
    taps: Vec<AnswerTap>,
    /// The answer put back together from what the client was sent, when taps want it.
    assembly: Option<Assembly>,
}

impl ClientStream {
    pub fn new(
        decoder: Box<dyn EventDecoder>,
        translator: Box<dyn StreamTranslator>,
        as_completion: bool,
        include_usage: bool,
        filters: Vec<Arc<dyn AnswerFilter>>,
        report: UsageReport,
    ) -> Self {
        Self {
            decoder,
            translator,
            as_completion,
            include_usage,
            filters,
            choice_filters: Vec::new(),
            written: String::new(),
            reported: None,
            report,
            last_head: None,
            ended: false,
            taps: Vec::new(),
            assembly: None,
        }
    }

    /// Gives `taps` the whole answer once the stream has ended cleanly.
    pub fn with_taps(mut self, taps: Vec<AnswerTap>) -> Self {
        self.assembly = (!taps.is_empty()).then(Assembly::default);
        self.taps = taps;
        self
    }

    /// The client's bytes for the next provider bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for event in self.decoder.feed(bytes)? {
            for chunk in self.translator.event(&event.event, &event.data) {
                self.write(chunk, &mut out);
            }
        }
        Ok(out)
    }

    /// The client's last bytes once the provider's stream ended.
    pub fn end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in self.translator.end() {
            self.write(chunk, &mut out);
        }
        if self.ended {
            return out;
        }
        // Text still held back by filters of choices that never got a finish reason.
        let held: Vec<(u64, String)> =
            self.choice_filters.iter_mut().map(|(index, chain)| (*index, chain.finish())).collect();
        for (index, text) in held {
            if !text.is_empty() {
                let chunk =
                    self.added_chunk(json!([{ "index": index, "delta": { "content": text }, "finish_reason": null }]));
                self.send(chunk, &mut out);
            }
        }
        if self.include_usage && self.reported.is_none() {
            let (input, output) = (self.report.estimated_input(), self.written_tokens());
            let mut chunk = self.added_chunk(json!([]));
            chunk["usage"] =
                json!({ "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output });
            self.send(chunk, &mut out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.finish_usage();
        self.ended = true;
        self.tap_answer();
        out
    }

    /// Gives the taps the reassembled answer, if every choice finished and none called tools.
    fn tap_answer(&mut self) {
        let Some(assembly) = self.assembly.take() else { return };
        let usage = self.reported.unwrap_or_else(|| (self.report.estimated_input(), self.written_tokens()));
        let Some(answer) = assembly.answer(usage) else { return };
        let answer = if self.as_completion { chat_as_completion(answer) } else { answer };
        for tap in &self.taps {
            tap(&answer);
        }
    }

    fn finish_usage(&self) {
        let estimated_output = if self.reported.is_some() { 0 } else { self.written_tokens() };
        self.report.finish(self.reported, estimated_output);
    }

    fn written_tokens(&self) -> u64 {
        let mut counter = tokens::CompletionCounter::new(&self.report.response_model);
        counter.push(&self.written);
        counter.tokens()
    }

    /// A chunk the gateway adds, with the stream's id, time and model.
    fn added_chunk(&self, choices: Value) -> Value {
        let (id, created, model) =
            self.last_head.clone().unwrap_or((json!(""), json!(0), json!(self.report.response_model)));
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices })
    }

    fn write(&mut self, mut chunk: Value, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if chunk.get("error").is_some() {
            // A provider's error mid-stream ends the stream: the client gets it, then `[DONE]`.
            self.send(chunk, out);
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.finish_usage();
            self.ended = true;
            return;
        }
        if self.last_head.is_none() {
            let field = |name: &str| chunk.get(name).cloned().unwrap_or(Value::Null);
            self.last_head = Some((field("id"), field("created"), field("model")));
        }
        if let Some(usage) = usage_of(&chunk) {
            self.reported = Some(usage);
            if !self.include_usage {
                match chunk.get("choices").and_then(Value::as_array) {
                    Some(choices) if !choices.is_empty() => {
                        if let Some(object) = chunk.as_object_mut() {
                            object.remove("usage");
                        }
                    }
                    _ => return,
                }
            }
        }
        let filters = &self.filters;
        let choice_filters = &mut self.choice_filters;
        let written = &mut self.written;
        for choice in chunk.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = choice.get("finish_reason").is_some_and(|reason| !reason.is_null());
            let Some(delta) = choice.get_mut("delta") else {
                continue;
            };
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    written.push_str(arguments);
                }
            }
            let text = delta.get("content").and_then(Value::as_str).map(str::to_owned);
            if let Some(text) = &text {
                written.push_str(text);
            }
            if filters.is_empty() || (text.is_none() && !finished) {
                continue;
            }
            let at = match choice_filters.iter().position(|(known, _)| *known == index) {
                Some(at) => at,
                None => {
                    choice_filters.push((index, FilterChain(filters.iter().map(|filter| filter.stream()).collect())));
                    choice_filters.len() - 1
                }
            };
            let chain = &mut choice_filters[at].1;
            let mut passed = chain.push(text.as_deref().unwrap_or_default());
            if finished {
                passed.push_str(&chain.finish());
            }
            if text.is_some() || !passed.is_empty() {
                delta["content"] = Value::String(passed);
            }
        }
        self.send(chunk, out);
    }

    fn send(&mut self, chunk: Value, out: &mut Vec<u8>) {
        if let Some(assembly) = &mut self.assembly {
            if chunk.get("error").is_none() {
                assembly.add(&chunk);
            }
        }
        let chunk = if self.as_completion && chunk.get("error").is_none() { chunk_as_completion(chunk) } else { chunk };
        out.extend(data_event(&chunk.to_string()));
    }
}

/// A streamed chat answer put back together from its chunks, for the answer taps.
#[derive(Default)]
struct Assembly {
    id: Value,
    created: Value,
    model: Value,
    /// By choice index: text so far and finish reason.
    choices: Vec<(u64, String, Option<Value>)>,
    /// Tool calls are not reassembled: such an answer is not given to the taps.
    tool_calls: bool,
}

impl Assembly {
    fn add(&mut self, chunk: &Value) {
        for (field, slot) in [("id", &mut self.id), ("created", &mut self.created), ("model", &mut self.model)] {
            if slot.is_null() {
                *slot = chunk.get(field).cloned().unwrap_or(Value::Null);
            }
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match self.choices.iter().position(|(known, _, _)| *known == index) {
                Some(at) => at,
                None => {
                    self.choices.push((index, String::new(), None));
                    self.choices.len() - 1
                }
            };
            let (_, text, finish) = &mut self.choices[at];
            if let Some(delta) = choice.get("delta") {
                if delta.get("tool_calls").is_some_and(|calls| !calls.is_null())
                    || delta.get("function_call").is_some_and(|call| !call.is_null())
                {
                    self.tool_calls = true;
                }
                if let Some(content) = delta.get("content").and_then(Value::as_str) {
                    text.push_str(content);
                }
            }
            if let Some(reason) = choice.get("finish_reason").filter(|reason| !reason.is_null()) {
                *finish = Some(reason.clone());
            }
        }
    }

    /// The `chat.completion` with `usage` (input, output), unless a choice never finished or
    /// tools were called.
    fn answer(mut self, (input, output): (u64, u64)) -> Option<Value> {
        if self.tool_calls || self.choices.is_empty() || self.choices.iter().any(|(_, _, finish)| finish.is_none()) {
            return None;
        }
        self.choices.sort_by_key(|(index, _, _)| *index);
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, text, finish)| {
                json!({
                    "index": index,
                    "message": { "role": "assistant", "content": text },
                    "logprobs": null,
                    "finish_reason": finish,
                })
            })
            .collect();
        Some(json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": { "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output },
        }))
    }
}

impl Drop for ClientStream {
    /// A stream the client left, or that broke, still reports what was used so far.
    fn drop(&mut self) {
        if !self.ended {
            self.finish_usage();
        }
    }
}

/// The client's stream: each upstream chunk's complete events translated and sent on at
/// once; a provider silent for `idle` breaks it off.
pub fn translate(upstream: ChunkStream, client: ClientStream, idle: std::time::Duration) -> ChunkStream {
    let state = (upstream, client, false);
    Box::pin(futures_util::stream::unfold(state, move |(mut upstream, mut client, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let Ok(next) = tokio::time::timeout(idle, upstream.next()).await else {
                let reason = format!("the provider sent nothing for {idle:?}");
                return Some((Err(reason), (upstream, client, true)));
            };
            match next {
                Some(Ok(bytes)) => match client.feed(&bytes) {
                    Ok(out) if out.is_empty() => {}
                    Ok(out) => return Some((Ok(Bytes::from(out)), (upstream, client, false))),
                    Err(reason) => return Some((Err(reason), (upstream, client, true))),
                },
                Some(Err(reason)) => return Some((Err(reason), (upstream, client, true))),
                None => {
                    let out = client.end();
                    return Some((Ok(Bytes::from(out)), (upstream, client, true)));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tap_tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ai::providers::{self, ChatRequest};

    /// A client stream passing OpenAI chunks on, and what its tap was given.
    fn tapped(include_usage: bool) -> (ClientStream, Arc<Mutex<Vec<Value>>>) {
        let report = UsageReport {
            exchange: AiExchange::default(),
            operation: Operation::Chat,
            provider: "openai",
            request_model: Arc::from("chat"),
            response_model: "gpt-4o-mini".to_owned(),
            price: None,
            prompt: Arc::new(ChatRequest::new()),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let tap: AnswerTap = Arc::new(move |answer: &Value| into.lock().expect("lock").push(answer.clone()));
        let stream = ClientStream::new(
            Box::<crate::ai::sse::Parser>::default(),
            Box::new(providers::openai::Passthrough),
            false,
            include_usage,
            Vec::new(),
            report,
        )
        .with_taps(vec![tap]);
        (stream, seen)
    }

    fn chunk(index: u64, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    }

    const USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":5,\"total_tokens\":16}}\n\n";

    #[test]
    fn a_stream_that_ended_cleanly_is_given_to_the_taps_as_one_chat_completion() {
        let (mut stream, seen) = tapped(false);
        for event in [
            chunk(0, json!({"role": "assistant", "content": ""}), None),
            chunk(1, json!({"role": "assistant", "content": "Second"}), None),
            chunk(0, json!({"content": "Hello"}), None),
            chunk(0, json!({"content": " there"}), None),
            chunk(0, json!({}), Some("stop")),
            chunk(1, json!({}), Some("length")),
            USAGE.to_owned(),
        ] {
            stream.feed(event.as_bytes()).expect("feed");
        }
        assert!(seen.lock().expect("lock").is_empty(), "not before the stream ends");
        stream.end();
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0],
            json!({
                "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "logprobs": null, "finish_reason": "stop"},
                    {"index": 1, "message": {"role": "assistant", "content": "Second"}, "logprobs": null, "finish_reason": "length"},
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
            })
        );
    }

    #[test]
    fn broken_errored_unfinished_and_tool_calling_streams_are_not_given_to_the_taps() {
        // The client left (or the provider broke off): the stream is dropped before its end.
        let (mut stream, seen) = tapped(true);
        stream.feed(chunk(0, json!({"content": "Hel"}), None).as_bytes()).expect("feed");
        drop(stream);
        assert!(seen.lock().expect("lock").is_empty());

        // A provider's error mid-stream.
        let (mut stream, seen) = tapped(true);
        stream.feed(chunk(0, json!({"content": "Hel"}), None).as_bytes()).expect("feed");
        stream.feed(b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n").expect("feed");
        stream.end();
        assert!(seen.lock().expect("lock").is_empty());

        // Ended without a finish reason.
        let (mut stream, seen) = tapped(true);
        stream.feed(chunk(0, json!({"content": "Hel"}), None).as_bytes()).expect("feed");
        stream.end();
        assert!(seen.lock().expect("lock").is_empty());

        // Tool calls.
        let (mut stream, seen) = tapped(true);
        let call = json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{}"}}]});
        stream.feed(chunk(0, call, Some("tool_calls")).as_bytes()).expect("feed");
        stream.end();
        assert!(seen.lock().expect("lock").is_empty());
    }
}

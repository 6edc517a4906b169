//! The prompt of an AI request as the request-side AI policies (`ai_prompt_guard`,
//! `ai_prompt_decorator`, `ai_prompt_template`, `ai_pii_redaction`) see it: the JSON body of
//! a Chat Completions (`messages`), Completions (`prompt`) or Embeddings (`input`) request,
//! its texts, and the body written back for the policies after them and `ai_proxy`.

use std::borrow::Cow;

use bytes::Bytes;
use gantry_policy_api::{Exchange, Flow, PolicyResponse, RequestBody, RequestParts};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Map, Value};

use super::openai::error_response;

/// Largest request body these policies read, unless configured otherwise: `ai_proxy`'s own
/// default.
pub(crate) fn default_max_request_bytes() -> u64 {
    1024 * 1024
}

/// Whether a request carries a prompt to look at: only `POST`s do.
pub(crate) fn has_prompt(request: &RequestParts) -> bool {
    request.method == Method::POST
}

/// A request's body as these policies read it.
pub(crate) enum Body {
    /// No body: the policies after decide what an empty request means.
    Empty,
    /// A JSON object.
    Json(Map<String, Value>),
    /// Not a JSON object: the OpenAI-shaped 400 to answer.
    Invalid(Flow),
}

/// The request's body, parsed.
pub(crate) fn read_body(exchange: &Exchange) -> Body {
    let Some(body) = exchange.extensions.get::<RequestBody>().filter(|body| !body.0.is_empty()) else {
        return Body::Empty;
    };
    let message = match serde_json::from_slice::<Value>(&body.0) {
        Ok(Value::Object(object)) => return Body::Json(object),
        Ok(_) => "the request body is not a JSON object".to_owned(),
        Err(err) => format!("the request body is not a JSON object: {err}"),
    };
    Body::Invalid(Flow::Respond(invalid_request(&message, None)))
}

/// The prompt body the request-side policies look at, or what the hook answers instead:
/// `Continue` for a request with no prompt to look at (not a `POST`, no body), the 400 for a
/// body that is not a JSON object.
pub(crate) fn prompt_body(request: &RequestParts, exchange: &Exchange) -> Result<Map<String, Value>, Box<Flow>> {
    if !has_prompt(request) {
        return Err(Box::new(Flow::Continue));
    }
    match read_body(exchange) {
        Body::Json(body) => Ok(body),
        Body::Empty => Err(Box::new(Flow::Continue)),
        Body::Invalid(answer) => Err(Box::new(answer)),
    }
}

/// Puts the rewritten body in place of the client's, for the policies after and the upstream.
pub(crate) fn replace_body(request: &mut RequestParts, exchange: &mut Exchange, body: &Map<String, Value>) {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => Bytes::from(bytes),
        Err(err) => {
            // A map of JSON values always serializes; keep the client's body if it ever does not.
            tracing::warn!(route = %exchange.route_id, error = %err, "rewritten AI request body not written");
            return;
        }
    };
    request.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    request.headers.remove(TRANSFER_ENCODING);
    exchange.extensions.insert(RequestBody(bytes));
}

/// A 400 in OpenAI's error shape.
pub(crate) fn invalid_request(message: &str, code: Option<&str>) -> PolicyResponse {
    error_response(StatusCode::BAD_REQUEST, message, "invalid_request_error", code)
}

/// Answers the request with a 400 in OpenAI's error shape.
pub(crate) fn refuse(message: &str, code: &str) -> Flow {
    Flow::Respond(invalid_request(message, Some(code)))
}

/// Where one text of a prompt is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TextAt {
    /// `messages[index]`, with its role.
    Message { index: usize, role: String },
    /// `prompt` (`index` 0 when it is one string) of a completion request.
    Prompt(usize),
    /// `input` (`index` 0 when it is one string) of an embeddings request.
    Input(usize),
}

impl TextAt {
    /// The role the text speaks in: a completion's prompt and an embedding's input are the
    /// user's.
    pub(crate) fn role(&self) -> &str {
        match self {
            TextAt::Message { role, .. } => role,
            TextAt::Prompt(_) | TextAt::Input(_) => "user",
        }
    }
}

impl std::fmt::Display for TextAt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextAt::Message { index, role } => write!(formatter, "messages[{index}] ({role})"),
            TextAt::Prompt(index) => write!(formatter, "prompt[{index}]"),
            TextAt::Input(index) => write!(formatter, "input[{index}]"),
        }
    }
}

/// The text of a message's `content`: the string, or its text parts joined by new lines
/// (image and audio parts have none). `None` for a message without text (an assistant's tool
/// calls).
pub(crate) fn content_text(content: &Value) -> Option<Cow<'_, str>> {
    match content {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts.iter().filter_map(part_text).collect();
            match texts.as_slice() {
                [] => None,
                [one] => Some(Cow::Borrowed(one)),
                more => Some(Cow::Owned(more.join("\n"))),
            }
        }
        _ => None,
    }
}

fn part_text(part: &Value) -> Option<&str> {
    (part.get("type").and_then(Value::as_str) == Some("text")).then(|| part.get("text").and_then(Value::as_str))?
}

/// Every text of the prompt, in order: each message's, then `prompt`'s, then `input`'s.
/// Token arrays (`prompt` or `input` given as numbers) have no text and are left out.
pub(crate) fn texts(body: &Map<String, Value>) -> Vec<(TextAt, Cow<'_, str>)> {
    let mut texts = Vec::new();
    if let Some(Value::Array(messages)) = body.get("messages") {
        for (index, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str).unwrap_or_default().to_owned();
            if let Some(text) = message.get("content").and_then(content_text) {
                texts.push((TextAt::Message { index, role }, text));
            }
        }
    }
    for (field, at) in [("prompt", TextAt::Prompt as fn(usize) -> TextAt), ("input", TextAt::Input)] {
        match body.get(field) {
            Some(Value::String(text)) => texts.push((at(0), Cow::Borrowed(text.as_str()))),
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    if let Value::String(text) = item {
                        texts.push((at(index), Cow::Borrowed(text.as_str())));
                    }
                }
            }
            _ => {}
        }
    }
    texts
}

/// Whether the body holds any prompt field at all (`messages`, `prompt` or `input`).
pub(crate) fn has_prompt_field(body: &Map<String, Value>) -> bool {
    ["messages", "prompt", "input"].iter().any(|field| body.contains_key(*field))
}

/// Calls `rewrite` on every text of the prompt, in the order of [`texts`], each text part of
/// a message on its own; returns whether any text changed.
pub(crate) fn rewrite_texts(body: &mut Map<String, Value>, mut rewrite: impl FnMut(&str) -> Option<String>) -> bool {
    let mut changed = false;
    let mut apply = |value: &mut Value| {
        if let Value::String(text) = value {
            if let Some(new) = rewrite(text) {
                *text = new;
                changed = true;
            }
        }
    };
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for message in messages.iter_mut() {
            match message.get_mut("content") {
                Some(content @ Value::String(_)) => apply(content),
                Some(Value::Array(parts)) => {
                    for part in parts.iter_mut() {
                        if part.get("type").and_then(Value::as_str) == Some("text") {
                            if let Some(text) = part.get_mut("text") {
                                apply(text);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for field in ["prompt", "input"] {
        match body.get_mut(field) {
            Some(text @ Value::String(_)) => apply(text),
            Some(Value::Array(items)) => items.iter_mut().for_each(&mut apply),
            _ => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn finds_the_texts_of_chat_completion_and_embedding_requests() {
        let body = object(json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": []},
            ],
            "prompt": ["one", [1, 2]],
            "input": "two",
        }));
        let found: Vec<(TextAt, String)> = texts(&body).into_iter().map(|(at, text)| (at, text.into_owned())).collect();
        assert_eq!(
            found,
            [
                (TextAt::Message { index: 0, role: "system".into() }, "Be brief.".into()),
                (TextAt::Message { index: 1, role: "user".into() }, "a\nb".into()),
                (TextAt::Prompt(0), "one".into()),
                (TextAt::Input(0), "two".into()),
            ]
        );
        assert_eq!(TextAt::Input(0).role(), "user");
    }

    #[test]
    fn rewrites_every_text_and_leaves_the_rest() {
        let mut body = object(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "a"}}]}],
            "prompt": "a",
            "input": ["a", "b"],
        }));
        assert!(rewrite_texts(&mut body, |text| (text == "a").then(|| "A".to_owned())));
        assert_eq!(
            Value::Object(body.clone()),
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url", "image_url": {"url": "a"}}]}],
                "prompt": "A",
                "input": ["A", "b"],
            })
        );
        assert!(!rewrite_texts(&mut body, |_| None));
    }
}

//! Reading the OpenAI request fields every translated provider maps the same way, each to
//! its own names.

use serde_json::{Map, Value};

use super::ChatRequest;

/// The text of a content that is a string or a list of parts, the parts' texts joined by
/// newlines.
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// The answer's token limit: `max_completion_tokens`, or the older `max_tokens`.
pub fn max_tokens(request: &ChatRequest) -> Option<u64> {
    request.get("max_completion_tokens").or_else(|| request.get("max_tokens")).and_then(Value::as_u64)
}

/// `stop` as a list of sequences (OpenAI takes one string or a list).
pub fn stop_sequences(request: &ChatRequest) -> Option<Value> {
    match request.get("stop") {
        Some(Value::String(stop)) => Some(Value::Array(vec![Value::String(stop.clone())])),
        Some(stop @ Value::Array(_)) => Some(stop.clone()),
        _ => None,
    }
}

/// Copies each field of `renames` (OpenAI's name, the provider's) that the request has, and
/// that is not null, into `body` under the provider's name.
pub fn copy_renamed(request: &ChatRequest, body: &mut Map<String, Value>, renames: &[(&str, &str)]) {
    for (openai, provider) in renames {
        if let Some(value) = request.get(*openai).filter(|value| !value.is_null()) {
            body.insert((*provider).to_owned(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).expect("an object")
    }

    #[test]
    fn reads_texts_limits_and_stops_and_renames_present_fields() {
        assert_eq!(text_of(&json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"text": "b"}])), "a\nb");
        assert_eq!(text_of(&json!("plain")), "plain");
        assert_eq!(text_of(&Value::Null), "");
        assert_eq!(max_tokens(&request(json!({"max_tokens": 5, "max_completion_tokens": 7}))), Some(7));
        assert_eq!(max_tokens(&request(json!({"max_tokens": 5}))), Some(5));
        assert_eq!(stop_sequences(&request(json!({"stop": "END"}))), Some(json!(["END"])));
        assert_eq!(stop_sequences(&request(json!({"stop": ["a", "b"]}))), Some(json!(["a", "b"])));
        assert_eq!(stop_sequences(&request(json!({"stop": null}))), None);
        let mut body = Map::new();
        copy_renamed(&request(json!({"top_p": 0.5, "seed": null})), &mut body, &[("top_p", "topP"), ("seed", "seed")]);
        assert_eq!(Value::Object(body), json!({"topP": 0.5}));
    }
}

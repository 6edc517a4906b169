//! Token counts estimated with OpenAI's own BPE vocabularies, for the exchanges whose provider
//! reports no usage (a stream without `include_usage`, an OpenAI-compatible server that leaves
//! `usage` out). Limits and budgets charge these counts, so they follow OpenAI's published
//! counting recipe rather than a characters-per-token guess.
//!
//! The vocabularies (`o200k_base` for the GPT-4o, o-series, GPT-4.1 and GPT-5 families,
//! `cl100k_base` for every other model, other providers' included: their tokenizers are not
//! public, and cl100k_base is within a few percent for English text) are parsed on first use,
//! once per process.

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

/// Tokens every chat message adds around its fields (`<|start|>{role}\n{content}<|end|>\n`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens a message's `name` adds beyond its text.
const TOKENS_PER_NAME: u64 = 1;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`).
const REPLY_PRIMING: u64 = 3;
/// What an image part costs at least: a low-detail image. The real cost depends on the
/// image's size, which the request does not give.
const TOKENS_PER_IMAGE: u64 = 85;

/// The overheads of tool definitions in OpenAI's recipe, which differ between the
/// vocabularies.
struct ToolOverheads {
    /// Each function.
    function: u64,
    /// A function that has properties.
    properties: u64,
    /// Each property.
    property: u64,
    /// Each enum value.
    enum_item: u64,
    /// Taken off once per property that has an enum.
    enum_discount: u64,
    /// Once after all functions.
    end: u64,
}

const O200K_TOOLS: ToolOverheads =
    ToolOverheads { function: 7, properties: 3, property: 3, enum_item: 3, enum_discount: 3, end: 12 };
const CL100K_TOOLS: ToolOverheads =
    ToolOverheads { function: 10, properties: 3, property: 3, enum_item: 3, enum_discount: 3, end: 12 };

/// One of the two vocabularies, as a model name selects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vocabulary {
    Cl100k,
    O200k,
}

impl Vocabulary {
    /// The vocabulary of `model`: a provider prefix (`openai/`, `azure/`) is ignored.
    fn of(model: &str) -> Self {
        let name = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
        let o200k = ["gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4"];
        let family = |prefix: &&str| {
            name.strip_prefix(*prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', ':']))
        };
        if o200k.iter().any(family) {
            Vocabulary::O200k
        } else {
            Vocabulary::Cl100k
        }
    }

    fn encoder(self) -> &'static CoreBPE {
        // Each singleton parses its embedded vocabulary once, on first use.
        match self {
            Vocabulary::Cl100k => tiktoken_rs::cl100k_base_singleton(),
            Vocabulary::O200k => tiktoken_rs::o200k_base_singleton(),
        }
    }

    fn tool_overheads(self) -> &'static ToolOverheads {
        match self {
            Vocabulary::Cl100k => &CL100K_TOOLS,
            Vocabulary::O200k => &O200K_TOOLS,
        }
    }

    /// Tokens of `text` as ordinary text: `<|endoftext|>` written by a client is text, as the
    /// API treats it.
    fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        u64::try_from(self.encoder().count_ordinary(text)).unwrap_or(u64::MAX)
    }
}

/// Tokens of the prompt of an OpenAI-style request: `messages` (Chat Completions) with
/// `tools` or `functions`, `prompt` (Completions) or `input` (Embeddings).
pub fn prompt_tokens(model: &str, request: &Map<String, Value>) -> u64 {
    let vocabulary = Vocabulary::of(model);
    let mut tokens = 0u64;
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        tokens =
            messages.iter().fold(REPLY_PRIMING, |sum, message| sum.saturating_add(message_tokens(vocabulary, message)));
        let functions = request
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| tools.iter().filter_map(|tool| tool.get("function")).collect::<Vec<_>>())
            .or_else(|| request.get("functions").and_then(Value::as_array).map(|list| list.iter().collect()))
            .unwrap_or_default();
        tokens = tokens.saturating_add(tool_tokens(vocabulary, &functions));
    }
    for field in ["prompt", "input"] {
        if let Some(value) = request.get(field) {
            tokens = tokens.saturating_add(input_tokens(vocabulary, value));
        }
    }
    tokens
}

/// One chat message: the overhead, then every text field (`role`, `content` and its text
/// parts, `name`, `tool_call_id`, `refusal`), and the name and arguments of its tool calls.
fn message_tokens(vocabulary: Vocabulary, message: &Value) -> u64 {
    let Some(fields) = message.as_object() else { return 0 };
    let mut tokens = TOKENS_PER_MESSAGE;
    for (key, value) in fields {
        let counted = match (key.as_str(), value) {
            ("name", Value::String(name)) => vocabulary.count(name) + TOKENS_PER_NAME,
            (_, Value::String(text)) => vocabulary.count(text),
            ("content", Value::Array(parts)) => parts.iter().map(|part| part_tokens(vocabulary, part)).sum(),
            ("tool_calls", Value::Array(calls)) => calls
                .iter()
                .filter_map(|call| call.get("function"))
                .map(|function| function_call_tokens(vocabulary, function))
                .sum(),
            ("function_call", function) => function_call_tokens(vocabulary, function),
            _ => 0,
        };
        tokens = tokens.saturating_add(counted);
    }
    tokens
}

/// A part of a message's `content` list: text, or an image at its least cost.
fn part_tokens(vocabulary: Vocabulary, part: &Value) -> u64 {
    match part.get("type").and_then(Value::as_str) {
        Some("image_url" | "input_image" | "image") => TOKENS_PER_IMAGE,
        _ => ["text", "refusal"]
            .iter()
            .filter_map(|key| part.get(*key).and_then(Value::as_str))
            .map(|text| vocabulary.count(text))
            .sum(),
    }
}

/// The name and arguments of a tool call the model made earlier in the conversation.
fn function_call_tokens(vocabulary: Vocabulary, function: &Value) -> u64 {
    ["name", "arguments"]
        .iter()
        .filter_map(|key| function.get(*key).and_then(Value::as_str))
        .map(|text| vocabulary.count(text))
        .sum()
}

/// Function definitions as OpenAI's recipe counts them: `name:description` per function and
/// `key:type:description` per top-level property, with each enum value, plus fixed
/// overheads.
fn tool_tokens(vocabulary: Vocabulary, functions: &[&Value]) -> u64 {
    if functions.is_empty() {
        return 0;
    }
    let overheads = vocabulary.tool_overheads();
    let mut tokens = 0u64;
    for function in functions {
        let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
        let description = text_field(function, "description");
        tokens += overheads.function + vocabulary.count(&format!("{name}:{}", trim_period(description)));
        let Some(properties) =
            function.get("parameters").and_then(|parameters| parameters.get("properties")).and_then(Value::as_object)
        else {
            continue;
        };
        if properties.is_empty() {
            continue;
        }
        tokens += overheads.properties;
        for (key, property) in properties {
            tokens += overheads.property;
            if let Some(values) = property.get("enum").and_then(Value::as_array) {
                tokens = tokens.saturating_sub(overheads.enum_discount);
                for value in values {
                    let text = match value {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    tokens += overheads.enum_item + vocabulary.count(&text);
                }
            }
            let kind = match property.get("type") {
                Some(Value::String(kind)) => kind.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let description = text_field(property, "description");
            tokens += vocabulary.count(&format!("{key}:{kind}:{}", trim_period(description)));
        }
    }
    tokens + overheads.end
}

fn text_field<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn trim_period(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

/// `prompt` or `input`: a text, a list of texts, or text already tokenized (a list of token
/// ids, or a list of such lists), whose length is its count.
fn input_tokens(vocabulary: Vocabulary, value: &Value) -> u64 {
    match value {
        Value::String(text) => vocabulary.count(text),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(|item| input_tokens(vocabulary, item)).sum(),
        _ => 0,
    }
}

/// Counts the tokens of an answer fed to it piece by piece, as a stream delivers it (text and
/// tool-call arguments). Counting each delta on its own would count too many (a word split
/// over two deltas is two tokens or more), and keeping the whole answer costs its size, so
/// text is counted up to the last point where the tokenizer is known to split anyway and only
/// the rest is kept.
#[derive(Debug)]
pub struct CompletionCounter {
    vocabulary: Vocabulary,
    counted: u64,
    pending: String,
}

/// Text kept before looking for a point to count up to, so that a stream of one-word deltas
/// is not tokenized word by word.
const PENDING_BEFORE_COUNTING: usize = 256;

impl CompletionCounter {
    /// A counter for an answer of `model`.
    pub fn new(model: &str) -> Self {
        Self { vocabulary: Vocabulary::of(model), counted: 0, pending: String::new() }
    }

    /// The next piece of the answer.
    pub fn push(&mut self, text: &str) {
        self.pending.push_str(text);
        if self.pending.len() < PENDING_BEFORE_COUNTING {
            return;
        }
        if let Some(split) = last_word_boundary(&self.pending) {
            let tokens = self.vocabulary.count(&self.pending[..split]);
            self.counted = self.counted.saturating_add(tokens);
            self.pending.drain(..split);
        }
    }

    /// Tokens of everything pushed so far.
    pub fn tokens(&self) -> u64 {
        self.counted.saturating_add(self.vocabulary.count(&self.pending))
    }
}

/// The byte offset of the last space that has a letter on either side. Both vocabularies'
/// pre-tokenizers end a piece after a run of letters and start the next at such a space
/// (` word`), and BPE merges never cross pieces, so the text before and after it count
/// separately to exactly the tokens they count to together.
fn last_word_boundary(text: &str) -> Option<usize> {
    let mut before: Option<char> = None;
    let mut space_at: Option<usize> = None;
    let mut found = None;
    for (at, character) in text.char_indices() {
        if let Some(space) = space_at.take() {
            if character.is_alphabetic() {
                found = Some(space);
            }
        }
        if character == ' ' && before.is_some_and(char::is_alphabetic) {
            space_at = Some(at);
        }
        before = Some(character);
    }
    found.filter(|&at| at > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn picks_o200k_for_the_gpt_4o_o_series_4_1_and_5_families_and_cl100k_otherwise() {
        for model in ["gpt-4o", "gpt-4o-mini-2024-07-18", "o1", "o3-mini", "gpt-4.1-nano", "gpt-5", "openai/gpt-4o"] {
            assert_eq!(Vocabulary::of(model), Vocabulary::O200k, "{model}");
        }
        for model in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo", "claude-sonnet-4-5", "llama3", "o1x", "gpt"] {
            assert_eq!(Vocabulary::of(model), Vocabulary::Cl100k, "{model}");
        }
    }

    #[test]
    fn counts_text_as_openais_tokenizer_does() {
        assert_eq!(Vocabulary::Cl100k.count("hello world"), 2);
        assert_eq!(Vocabulary::O200k.count("hello world"), 2);
        // tiktoken's own test: [83, 1609, 5963, 374, 2294, 0].
        assert_eq!(Vocabulary::Cl100k.count("tiktoken is great!"), 6);
        // Text that looks like a special token is counted as the characters it is.
        assert!(Vocabulary::Cl100k.count("<|endoftext|>") > 1);
    }

    /// The example conversation of OpenAI's cookbook "How to count tokens with tiktoken",
    /// with the prompt token counts the API reported for it.
    fn cookbook_messages() -> Value {
        json!([
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
        ])
    }

    #[test]
    fn counts_the_cookbook_conversation_as_the_api_reported_it() {
        let request = object(json!({"model": "x", "messages": cookbook_messages()}));
        assert_eq!(prompt_tokens("gpt-4", &request), 129);
        assert_eq!(prompt_tokens("gpt-3.5-turbo", &request), 129);
        assert_eq!(prompt_tokens("gpt-4o", &request), 124);
        assert_eq!(prompt_tokens("gpt-4o-mini", &request), 124);
    }

    #[test]
    fn counts_text_parts_and_images_of_a_content_list() {
        let plain = object(json!({"messages": [{"role": "user", "content": "What is in this picture?"}]}));
        let parts = object(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        ]}]}));
        assert_eq!(prompt_tokens("gpt-4o", &parts), prompt_tokens("gpt-4o", &plain) + TOKENS_PER_IMAGE);
    }

    #[test]
    fn counts_earlier_tool_calls_and_tool_results() {
        let without = object(json!({"messages": [{"role": "user", "content": "Weather in Paris?"}]}));
        let with = object(json!({"messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}
        ]}));
        let vocabulary = Vocabulary::Cl100k;
        let expected = prompt_tokens("gpt-4", &without)
            + 2 * TOKENS_PER_MESSAGE
            + vocabulary.count("assistant")
            + vocabulary.count("get_weather")
            + vocabulary.count("{\"city\":\"Paris\"}")
            + vocabulary.count("tool")
            + vocabulary.count("call_1")
            + vocabulary.count("18 degrees, sunny");
        assert_eq!(prompt_tokens("gpt-4", &with), expected);
    }

    /// The cookbook's function-calling example and the prompt tokens the API reported.
    #[test]
    fn counts_tools_as_the_cookbook_recipe_does() {
        let request = object(json!({
            "messages": [
                {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
                {"role": "user", "content": "What's the weather like in San Francisco?"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                        "unit": {"type": "string", "description": "The unit of temperature to return", "enum": ["celsius", "fahrenheit"]}
                    },
                    "required": ["location"]
                }
            }}]
        }));
        assert_eq!(prompt_tokens("gpt-4o", &request), 101);
        assert_eq!(prompt_tokens("gpt-4", &request), 105);
        let mut legacy = request.clone();
        let function = legacy.remove("tools").map(|tools| tools[0]["function"].clone());
        legacy.insert("functions".into(), json!([function]));
        assert_eq!(prompt_tokens("gpt-4o", &legacy), 101, "`functions` counts as `tools` does");
    }

    #[test]
    fn counts_prompts_and_embedding_inputs_in_every_shape() {
        let text = object(json!({"prompt": "hello world"}));
        assert_eq!(prompt_tokens("gpt-3.5-turbo-instruct", &text), 2);
        let texts = object(json!({"input": ["hello world", "tiktoken is great!"]}));
        assert_eq!(prompt_tokens("text-embedding-3-small", &texts), 8);
        let ids = object(json!({"input": [[15339, 1917], [1, 2, 3]]}));
        assert_eq!(prompt_tokens("text-embedding-3-small", &ids), 5);
        assert_eq!(prompt_tokens("gpt-4o", &object(json!({"model": "gpt-4o"}))), 0);
    }

    #[test]
    fn counts_a_streamed_answer_as_the_whole_text() {
        let answer = "The quick brown fox jumps over the lazy dog. ".repeat(40)
            + "Numbers like 1234567 and symbols like -> or ::<> end it, unfinished";
        for model in ["gpt-4", "gpt-4o"] {
            let whole = Vocabulary::of(model).count(&answer);
            for size in [1, 3, 7, 64, 1000] {
                let mut counter = CompletionCounter::new(model);
                let characters: Vec<char> = answer.chars().collect();
                for piece in characters.chunks(size) {
                    counter.push(&piece.iter().collect::<String>());
                }
                assert_eq!(counter.tokens(), whole, "{model}, deltas of {size} characters");
                assert!(counter.pending.len() < PENDING_BEFORE_COUNTING + size, "counted as it went");
            }
        }
        assert_eq!(CompletionCounter::new("gpt-4o").tokens(), 0);
    }

    #[test]
    fn finds_the_last_space_between_letters() {
        assert_eq!(last_word_boundary("one two"), Some(3));
        assert_eq!(last_word_boundary("one two three"), Some(7));
        assert_eq!(last_word_boundary("one  two"), None, "two spaces split differently");
        assert_eq!(last_word_boundary("one 2"), None);
        assert_eq!(last_word_boundary(" one"), None);
    }
}

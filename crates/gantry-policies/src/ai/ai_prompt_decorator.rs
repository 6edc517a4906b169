#![doc = include_str!("ai_prompt_decorator.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::prompt;

/// Settings of `ai_prompt_decorator`. Give `prepend`, `append` or both.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Messages put before the client's, in this order.
    #[serde(default)]
    pub prepend: Vec<Message>,
    /// Messages put after the client's, in this order.
    #[serde(default)]
    pub append: Vec<Message>,
    /// Largest request body read, in bytes; a longer one is answered 413.
    #[serde(default = "prompt::default_max_request_bytes")]
    pub max_request_bytes: u64,
}

/// One message added to the conversation.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Who speaks it.
    #[serde(default)]
    pub role: Role,
    /// Its text; not empty.
    pub content: String,
}

/// The role of an added message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions to the model.
    #[default]
    System,
    /// Instructions to the model, as OpenAI's reasoning models name them.
    Developer,
    /// The user's turn.
    User,
    /// The model's turn (a worked example).
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.prepend.is_empty() && self.append.is_empty() {
            errors.push(path.clone(), "give `prepend` or `append` messages, or both");
        }
        for (key, messages) in [("prepend", &self.prepend), ("append", &self.append)] {
            for (index, message) in messages.iter().enumerate() {
                if message.content.is_empty() {
                    errors.push(path.key(key).index(index).key("content"), "must not be empty");
                }
            }
        }
        if self.max_request_bytes == 0 {
            errors.push(path.key("max_request_bytes"), "must be at least 1");
        }
    }
}

/// Factory of the `ai_prompt_decorator` policy.
#[derive(Debug)]
pub struct AiPromptDecorator;

impl PolicyFactory for AiPromptDecorator {
    const NAME: &'static str = "ai_prompt_decorator";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("ai_prompt_decorator.md");
    type Config = Config;

    fn build(config: Config, _: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let message = |message: &Message| json!({ "role": message.role.name(), "content": message.content });
        Ok(Arc::new(CompiledPromptDecorator {
            prepend: config.prepend.iter().map(message).collect(),
            append: config.append.iter().map(message).collect(),
            max_request_bytes: config.max_request_bytes,
        }))
    }
}

/// The added messages, as the JSON values put in `messages`.
#[derive(Debug)]
struct CompiledPromptDecorator {
    prepend: Vec<Value>,
    append: Vec<Value>,
    max_request_bytes: u64,
}

impl Policy for CompiledPromptDecorator {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        prompt::has_prompt(request).then_some(self.max_request_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let mut body = match prompt::prompt_body(request, exchange) {
            Ok(body) => body,
            Err(flow) => return Hook::Done(*flow),
        };
        // An embeddings request generates no text: there is nothing to instruct.
        if !body.contains_key("messages") && !body.contains_key("prompt") && body.contains_key("input") {
            return Hook::Done(Flow::Continue);
        }
        // A request that would escape the added messages (a system prompt) by not being a chat
        // (a completion's `prompt`) is refused rather than passed on undecorated.
        let Some(Value::Array(messages)) = body.get_mut("messages") else {
            return Hook::Done(prompt::refuse(
                "this route only serves chat completions: `messages` must be a list of messages",
                "messages_required",
            ));
        };
        let client = std::mem::take(messages);
        let mut decorated = Vec::with_capacity(self.prepend.len() + client.len() + self.append.len());
        decorated.extend(self.prepend.iter().cloned());
        decorated.extend(client);
        decorated.extend(self.append.iter().cloned());
        *messages = decorated;
        prompt::replace_body(request, exchange, &body);
        Hook::Done(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
    use gantry_policy_api::{RegisteredPolicy, RequestBody};
    use http::header::CONTENT_LENGTH;
    use http::StatusCode;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<AiPromptDecorator>()
    }

    fn build(yaml: &str) -> Arc<dyn Policy> {
        build_policy(entry(), yaml).unwrap_or_else(|errors| panic!("settings refused: {errors}"))
    }

    /// The body sent on, or the refusal.
    fn decorate(policy: &dyn Policy, body: Value) -> Result<Value, Value> {
        let mut request = request_parts(http::Request::post("/v1/chat/completions").body(()).expect("request"));
        let mut exchange = exchange_from("192.0.2.1:1000");
        exchange.extensions.insert(RequestBody(body.to_string().into()));
        match run_request(policy, &mut request, &mut exchange) {
            Flow::Continue => {
                let sent = exchange.extensions.get::<RequestBody>().expect("a body").0.clone();
                let length =
                    request.headers.get(CONTENT_LENGTH).map(|length| length.to_str().expect("text").to_owned());
                if sent != body.to_string() {
                    assert_eq!(length, Some(sent.len().to_string()), "Content-Length follows the new body");
                }
                Ok(serde_json::from_slice(&sent).expect("JSON"))
            }
            Flow::Respond(response) => {
                assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                Err(serde_json::from_slice(response.body()).expect("JSON"))
            }
        }
    }

    #[test]
    fn puts_messages_before_and_after_the_clients_and_keeps_the_rest_of_the_body() {
        let decorator = build(
            "prepend:\n  - {role: system, content: Answer in French.}\n  - {role: user, content: I am a tourist.}\n\
             append:\n  - {content: Be brief.}",
        );
        let sent = decorate(
            &*decorator,
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
        )
        .expect("decorated");
        assert_eq!(
            sent,
            json!({"model": "m", "stream": true, "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "I am a tourist."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "system", "content": "Be brief."},
            ]})
        );
    }

    #[test]
    fn refuses_a_request_without_messages_rather_than_passing_it_undecorated() {
        let decorator = build("prepend: [{content: Never reveal the discount codes.}]");
        let refused =
            decorate(&*decorator, json!({"model": "m", "prompt": "the discount codes are"})).expect_err("refused");
        assert_eq!(refused["error"]["code"], "messages_required");
        let embeddings = json!({"model": "m", "input": ["the discount codes"]});
        assert_eq!(
            decorate(&*decorator, embeddings.clone()),
            Ok(embeddings),
            "embeddings generate no text to instruct"
        );
        let refused = decorate(&*decorator, json!({"model": "m", "messages": "{template://x}"})).expect_err("refused");
        assert_eq!(refused["error"]["type"], "invalid_request_error");
        let mut models = request_parts(http::Request::get("/v1/models").body(()).expect("request"));
        let mut exchange = exchange_from("192.0.2.1:1000");
        assert!(matches!(run_request(&*decorator, &mut models, &mut exchange), Flow::Continue));
        assert!(exchange.extensions.get::<RequestBody>().is_none());
    }

    #[test]
    fn reports_missing_and_empty_messages_at_their_paths() {
        let errors: Vec<String> =
            build_policy_error(entry(), "append: [{role: system, content: ''}]\nmax_request_bytes: 0")
                .iter()
                .map(|error| format!("{}: {}", error.path, error.message))
                .collect();
        assert_eq!(
            errors,
            [
                "global_policies[0].ai_prompt_decorator.append[0].content: must not be empty",
                "global_policies[0].ai_prompt_decorator.max_request_bytes: must be at least 1",
            ]
        );
        let nothing = build_policy_error(entry(), "max_request_bytes: 10");
        assert_eq!(nothing.0[0].message, "give `prepend` or `append` messages, or both");
        let role = build_policy_error(entry(), "prepend: [{role: tool, content: x}]");
        assert!(
            role.0[0].path.to_string().starts_with("global_policies[0].ai_prompt_decorator.prepend[0].role"),
            "{role}"
        );
    }
}

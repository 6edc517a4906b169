use super::*;
use crate::ai::providers::Provider;

fn target() -> TargetInfo {
    TargetInfo::for_tests(Provider::Cohere, "command-a-03-2025")
}

fn chat(value: Value) -> ChatRequest {
    serde_json::from_value(value).expect("a request object")
}

fn sent(request: &ChatRequest, operation: Operation) -> Value {
    let body = Cohere.request(&target(), operation, request, false).expect("translated");
    serde_json::from_slice(&body).expect("JSON")
}

#[test]
fn paths_and_key_follow_the_v2_reference() {
    let target = target();
    assert_eq!(Cohere.path(&target, Operation::Chat, false), "/v2/chat");
    assert_eq!(Cohere.path(&target, Operation::Chat, true), "/v2/chat", "`stream: true` in the body");
    assert_eq!(Cohere.path(&target, Operation::Embeddings, false), "/v2/embed");
    let (name, value) = Cohere.auth("co-key");
    assert_eq!((name.as_str(), value.as_str()), ("authorization", "Bearer co-key"));
    assert!(Cohere.serves(Operation::Embeddings));
    assert!(!Cohere.serves(Operation::Completion));
}

#[test]
fn translates_messages_tools_and_settings() {
    let request = chat(json!({
        "model": "chat",
        "stream": true,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/city.png", "detail": "low"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "get_weather_1byjy32y4hvq", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "get_weather_1byjy32y4hvq", "content": "[{\"temperature\": \"20C\"}]"},
            {"role": "assistant", "content": "It is 20C in Toronto."},
            {"role": "user", "content": "Thanks"}
        ],
        "temperature": 0.3,
        "top_p": 0.75,
        "max_tokens": 200,
        "stop": "END",
        "seed": 42,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "gets the weather of a given location",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
            "strict": true}}],
        "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "n": 1
    }));
    assert_eq!(
        sent(&request, Operation::Chat),
        json!({
            "model": "command-a-03-2025",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/city.png", "detail": "low"}}
                ]},
                {"role": "assistant", "tool_calls": [
                    {"id": "get_weather_1byjy32y4hvq", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "get_weather_1byjy32y4hvq", "content": "[{\"temperature\": \"20C\"}]"},
                {"role": "assistant", "content": "It is 20C in Toronto."},
                {"role": "user", "content": "Thanks"}
            ],
            "stream": true,
            "temperature": 0.3,
            "p": 0.75,
            "seed": 42,
            "max_tokens": 200,
            "stop_sequences": ["END"],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "gets the weather of a given location",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}],
            "tool_choice": "REQUIRED",
            "response_format": {"type": "json_object", "json_schema": {"type": "object"}}
        })
    );
    let none = chat(json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "none"}));
    assert_eq!(sent(&none, Operation::Chat)["tool_choice"], "NONE");
    let auto = chat(json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "auto"}));
    assert!(sent(&auto, Operation::Chat).get("tool_choice").is_none(), "Cohere's default");
    let odd = chat(json!({"messages": [{"role": "narrator", "content": "x"}]}));
    assert_eq!(super::request(&odd, "m").expect_err("refused"), "`messages[0].role` `narrator` is not supported");
}

#[test]
fn translates_the_documented_chat_answer() {
    // The example answer of Cohere's v2 Chat API reference.
    let answer = br#"{
      "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
      "finish_reason": "COMPLETE",
      "message": {
        "role": "assistant",
        "content": [{"type": "text", "text": "LLMs stand for Large Language Models, which are a type of neural network model."}]
      },
      "usage": {
        "billed_units": {"input_tokens": 5, "output_tokens": 418},
        "tokens": {"input_tokens": 71, "output_tokens": 418}
      }
    }"#;
    let completion = response(answer, "command-a-03-2025").expect("translated");
    assert_eq!(completion["id"], "c14c80c3-18eb-4519-9460-6c92edd8cfb4");
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "command-a-03-2025");
    assert_eq!(
        completion["choices"],
        json!([{"index": 0, "message": {"role": "assistant",
            "content": "LLMs stand for Large Language Models, which are a type of neural network model."},
            "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        completion["usage"],
        json!({"prompt_tokens": 71, "completion_tokens": 418, "total_tokens": 489}),
        "the tokens the model read, its prompt template included"
    );
}

#[test]
fn translates_a_tool_call_answer() {
    // The tool calling step of Cohere's tool use guide.
    let answer = br#"{
      "id": "7f6b3d5d-1e6c-4e5a-8a1e-5b2a6c9d0e11",
      "finish_reason": "TOOL_CALL",
      "message": {
        "role": "assistant",
        "tool_plan": "I will search for the weather in Toronto.",
        "tool_calls": [{"id": "get_weather_1byjy32y4hvq", "type": "function",
          "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}]
      },
      "usage": {"billed_units": {"input_tokens": 37, "output_tokens": 28}}
    }"#;
    let completion = response(answer, "m").expect("translated");
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null, "the plan is not the answer");
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "get_weather_1byjy32y4hvq", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Toronto\"}"}}])
    );
    assert_eq!(completion["usage"], json!({"prompt_tokens": 37, "completion_tokens": 28, "total_tokens": 65}));
    assert!(response(b"{}", "m").is_err());
    assert_eq!(finish_reason("MAX_TOKENS"), "length");
    assert_eq!(finish_reason("STOP_SEQUENCE"), "stop");
}

#[test]
fn maps_documented_errors() {
    let (status, body) = error(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"id": "e5a2f0c1-0f53-4a53-9d0e-5b5d1d0a0a0a", "message": "You are using a Trial key, which is limited to 10 API calls / minute."}"#,
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"error": {"message": "You are using a Trial key, which is limited to 10 API calls / minute.",
            "type": "rate_limit_error", "param": null, "code": null}})
    );
    let (_, body) = error(StatusCode::UNAUTHORIZED, br#"{"message": "invalid api token"}"#);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (_, body) = error(StatusCode::BAD_REQUEST, b"not json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[test]
fn embeddings_ask_for_floats_as_documents_by_default() {
    let request = chat(json!({"model": "embed", "input": ["first text", "second text"]}));
    assert_eq!(
        sent(&request, Operation::Embeddings),
        json!({"model": "command-a-03-2025", "texts": ["first text", "second text"],
            "input_type": "search_document", "embedding_types": ["float"]})
    );
    let query = chat(json!({"model": "embed", "input": "a query", "input_type": "search_query", "dimensions": 512}));
    let body = sent(&query, Operation::Embeddings);
    assert_eq!(body["input_type"], "search_query");
    assert_eq!(body["output_dimension"], 512);

    let answer = br#"{
      "id": "da6e531f-54c6-4a73-bf92-f60566d8d753",
      "embeddings": {"float": [[0.016296387, -0.008354187], [-0.04663086, 0.0234375]]},
      "texts": ["first text", "second text"],
      "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}},
      "response_type": "embeddings_by_type"
    }"#;
    let list = Cohere.response(&target(), Operation::Embeddings, answer).expect("translated");
    assert_eq!(
        list,
        json!({"object": "list", "model": "command-a-03-2025",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.016296387, -0.008354187]},
                {"object": "embedding", "index": 1, "embedding": [-0.04663086, 0.0234375]}
            ],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    );
}

/// The events of Cohere's streaming guides (a text answer, then a tool call), fed one by one.
#[test]
fn translates_documented_stream_events() {
    let events = [
        (
            "message-start",
            r#"{"type":"message-start","id":"29f14a5a-11de-4cae-9800-25e4747408ea","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}"#,
        ),
        (
            "content-start",
            r#"{"type":"content-start","index":0,"delta":{"message":{"content":{"type":"text","text":""}}}}"#,
        ),
        ("content-delta", r#"{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"A"}}}}"#),
        (
            "content-delta",
            r#"{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":" large language model"}}}}"#,
        ),
        ("content-end", r#"{"type":"content-end","index":0}"#),
        (
            "message-end",
            r#"{"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":3,"output_tokens":4},"tokens":{"input_tokens":69,"output_tokens":4}}}}"#,
        ),
    ];
    let mut stream = Stream::new("command-a-03-2025");
    let outputs: Vec<Vec<Value>> = events.iter().map(|(event, data)| stream.event(event, data)).collect();
    assert_eq!(outputs[0][0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(outputs[0][0]["id"], "29f14a5a-11de-4cae-9800-25e4747408ea");
    assert_eq!(outputs[0][0]["object"], "chat.completion.chunk");
    assert!(outputs[1].is_empty());
    assert_eq!(outputs[2][0]["choices"][0]["delta"], json!({"content": "A"}));
    assert_eq!(outputs[3][0]["choices"][0]["delta"], json!({"content": " large language model"}));
    assert!(outputs[4].is_empty());
    assert_eq!(outputs[5].len(), 2);
    assert_eq!(outputs[5][0]["choices"][0]["finish_reason"], "stop");
    assert_eq!(outputs[5][1]["choices"], json!([]));
    assert_eq!(outputs[5][1]["usage"], json!({"prompt_tokens": 69, "completion_tokens": 4, "total_tokens": 73}));
    assert!(stream.end().is_empty());

    let tool_events = [
        (
            "message-start",
            r#"{"type":"message-start","id":"msg-2","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}"#,
        ),
        ("tool-plan-delta", r#"{"type":"tool-plan-delta","delta":{"message":{"tool_plan":"I will"}}}"#),
        (
            "tool-call-start",
            r#"{"type":"tool-call-start","index":0,"delta":{"message":{"tool_calls":{"id":"get_weather_nsz5zm3w56q3","type":"function","function":{"name":"get_weather","arguments":""}}}}}"#,
        ),
        (
            "tool-call-delta",
            r#"{"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"{\n    \""}}}}}"#,
        ),
        (
            "tool-call-delta",
            r#"{"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"location\": \"Madrid\"}"}}}}}"#,
        ),
        ("tool-call-end", r#"{"type":"tool-call-end","index":0}"#),
        (
            "message-end",
            r#"{"type":"message-end","delta":{"finish_reason":"TOOL_CALL","usage":{"billed_units":{"input_tokens":37,"output_tokens":28},"tokens":{"input_tokens":913,"output_tokens":83}}}}"#,
        ),
    ];
    let mut stream = Stream::new("m");
    let outputs: Vec<Vec<Value>> = tool_events.iter().map(|(event, data)| stream.event(event, data)).collect();
    assert!(outputs[1].is_empty(), "the plan is not the answer");
    assert_eq!(
        outputs[2][0]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "get_weather_nsz5zm3w56q3", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(
        outputs[3][0]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\n    \""}}]})
    );
    let arguments: String = outputs[3..5]
        .iter()
        .filter_map(|chunks| chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).expect("JSON"), json!({"location": "Madrid"}));
    assert!(outputs[5].is_empty());
    assert_eq!(outputs[6][0]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(outputs[6][1]["usage"]["prompt_tokens"], 913);
}

#[test]
fn reads_events_named_only_by_their_data() {
    // Some deployments send bare `data:` lines: the type inside names the event.
    let mut stream = Stream::new("m");
    let out =
        stream.event("message", r#"{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Hi"}}}}"#);
    assert_eq!(out[0]["choices"][0]["delta"], json!({"content": "Hi"}));
    assert!(stream.event("message", "not json").is_empty());
}

use super::*;
use crate::ai::providers::Provider;

fn target() -> TargetInfo {
    TargetInfo::for_tests(Provider::Gemini, "gemini-2.5-flash")
}

fn chat(value: Value) -> ChatRequest {
    serde_json::from_value(value).expect("a request object")
}

fn sent(request: &ChatRequest, operation: Operation) -> Value {
    let body = Gemini.request(&target(), operation, request, false).expect("translated");
    serde_json::from_slice(&body).expect("JSON")
}

#[test]
fn paths_and_key_follow_the_gemini_api_reference() {
    let target = target();
    assert_eq!(Gemini.path(&target, Operation::Chat, false), "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(
        Gemini.path(&target, Operation::Chat, true),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        Gemini.path(&target, Operation::Embeddings, false),
        "/v1beta/models/gemini-2.5-flash:batchEmbedContents"
    );
    let (name, value) = Gemini.auth("AIza-test");
    assert_eq!((name.as_str(), value.as_str()), ("x-goog-api-key", "AIza-test"));
    assert!(Gemini.headers().is_empty());
    assert!(Gemini.serves(Operation::Embeddings));
    assert!(!Gemini.serves(Operation::Completion), "completions go as chats");
}

#[test]
fn translates_messages_tools_and_settings() {
    let request = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here and in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "gs://bucket/city.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 15}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "10:30"},
            {"role": "assistant", "content": "15 degrees at 10:30."},
            {"role": "user", "content": "Thanks"}
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 300,
        "stop": ["END"],
        "n": 2,
        "seed": 7,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "weather",
            "schema": {"type": "object", "properties": {"celsius": {"type": "number"}}}}},
        "logit_bias": {"50256": -100}
    }));
    assert_eq!(
        sent(&request, Operation::Chat),
        json!({
            "contents": [
                {"role": "user", "parts": [
                    {"text": "Weather here and in this picture?"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                    {"fileData": {"fileUri": "gs://bucket/city.png"}}
                ]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {"city": "Paris"}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"celsius": 15}}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "10:30"}}}
                ]},
                {"role": "model", "parts": [{"text": "15 degrees at 10:30."}]},
                {"role": "user", "parts": [{"text": "Thanks"}]}
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use metric units."}]},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
            "generationConfig": {
                "temperature": 0.2,
                "topP": 0.9,
                "candidateCount": 2,
                "seed": 7,
                "maxOutputTokens": 300,
                "stopSequences": ["END"],
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object", "properties": {"celsius": {"type": "number"}}}
            }
        })
    );
}

#[test]
fn maps_tool_choices_and_refuses_what_it_cannot_send() {
    for (choice, mode) in [("auto", "AUTO"), ("required", "ANY"), ("none", "NONE")] {
        let request = chat(json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": choice}));
        assert_eq!(sent(&request, Operation::Chat)["toolConfig"], json!({"functionCallingConfig": {"mode": mode}}));
    }
    let plain = chat(json!({"messages": [{"role": "user", "content": "Hi"}], "stop": "END"}));
    let body = sent(&plain, Operation::Chat);
    assert_eq!(
        body,
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"stopSequences": ["END"]}})
    );
    let orphan = chat(json!({"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "x"}]}));
    assert_eq!(
        request(&orphan).expect_err("refused"),
        "`messages[0].tool_call_id` names no tool call of an earlier message"
    );
    let odd = chat(json!({"messages": [{"role": "narrator", "content": "x"}]}));
    assert_eq!(request(&odd).expect_err("refused"), "`messages[0].role` `narrator` is not supported");
    assert!(request(&chat(json!({"model": "m"}))).is_err());
}

#[test]
fn translates_a_documented_answer_with_text() {
    // The shape of the "Text generation" answer of the Gemini API reference.
    let answer = br#"{
      "candidates": [
        {
          "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
          "finishReason": "STOP",
          "avgLogprobs": -0.21
        }
      ],
      "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 7, "totalTokenCount": 15,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
      "modelVersion": "gemini-2.0-flash",
      "responseId": "mAitaLmkHPPlz7IP7_HQ4Ak"
    }"#;
    let completion = response(answer, "gemini-2.5-flash").expect("translated");
    assert_eq!(completion["id"], "mAitaLmkHPPlz7IP7_HQ4Ak");
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gemini-2.0-flash");
    assert_eq!(
        completion["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "AI learns patterns from data."},
            "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(completion["usage"], json!({"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}));
}

#[test]
fn translates_function_calls_thoughts_and_blocked_prompts() {
    let answer = br#"{
      "candidates": [{
        "content": {"role": "model", "parts": [
          {"text": "Planning the call.", "thought": true},
          {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        ]},
        "finishReason": "STOP",
        "index": 0
      }],
      "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5, "thoughtsTokenCount": 12, "totalTokenCount": 37}
    }"#;
    let completion = response(answer, "gemini-2.5-flash").expect("translated");
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null, "thoughts are not the answer");
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_") && id.len() > 10), "{call}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"], json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}));
    assert_eq!(completion["model"], "gemini-2.5-flash", "the target's model when the answer names none");
    assert_eq!(completion["usage"], json!({"prompt_tokens": 20, "completion_tokens": 17, "total_tokens": 37}));

    let blocked = br#"{"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}}"#;
    let completion = response(blocked, "m").expect("translated");
    assert_eq!(completion["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(completion["choices"][0]["message"]["content"], "");
    assert_eq!(completion["usage"]["completion_tokens"], 0);
    assert!(response(b"{}", "m").is_err());
    assert!(response(b"<html>", "m").is_err());
}

#[test]
fn maps_finish_reasons() {
    let cases = [
        ("STOP", false, "stop"),
        ("STOP", true, "tool_calls"),
        ("MAX_TOKENS", false, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("PROHIBITED_CONTENT", false, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", false, "stop"),
        ("OTHER", false, "stop"),
    ];
    for (reason, called, expected) in cases {
        assert_eq!(finish_reason(reason, called), expected, "{reason}");
    }
}

#[test]
fn maps_documented_errors() {
    let (status, body) = error(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}"#,
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"error": {"message": "Resource has been exhausted (e.g. check quota).", "type": "rate_limit_error",
            "param": null, "code": null}})
    );
    let (status, body) = error(
        StatusCode::BAD_REQUEST,
        br#"[{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}]"#,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["message"], "API key not valid. Please pass a valid API key.");
    let (_, body) = error(
        StatusCode::SERVICE_UNAVAILABLE,
        br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
    );
    assert_eq!(body["error"]["type"], "server_error");
    let (status, body) = error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["type"], "server_error");
}

#[test]
fn embeddings_go_as_one_batch_and_come_back_as_openai_lists() {
    let request = chat(json!({"model": "embed", "input": ["first text", "second text"], "dimensions": 256}));
    assert_eq!(
        sent(&request, Operation::Embeddings),
        json!({"requests": [
            {"model": "models/gemini-2.5-flash", "content": {"parts": [{"text": "first text"}]}, "outputDimensionality": 256},
            {"model": "models/gemini-2.5-flash", "content": {"parts": [{"text": "second text"}]}, "outputDimensionality": 256}
        ]})
    );
    let one = chat(json!({"model": "embed", "input": "only"}));
    assert_eq!(sent(&one, Operation::Embeddings)["requests"].as_array().map(Vec::len), Some(1));
    let tokens = chat(json!({"model": "embed", "input": [[1, 2, 3]]}));
    assert!(Gemini.request(&target(), Operation::Embeddings, &tokens, false).is_err(), "token arrays are refused");

    let answer = br#"{"embeddings": [{"values": [0.1, -0.2]}, {"values": [0.3, 0.4]}]}"#;
    let list = Gemini.response(&target(), Operation::Embeddings, answer).expect("translated");
    assert_eq!(
        list,
        json!({"object": "list", "model": "gemini-2.5-flash", "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]}
        ]})
    );
    assert!(Gemini.response(&target(), Operation::Embeddings, b"{}").is_err());
}

/// The events of a streamed answer as `streamGenerateContent?alt=sse` sends them: text in
/// pieces, then the last candidate with its finish reason and the usage.
#[test]
fn translates_a_documented_stream_event_by_event() {
    let events = [
        r#"{"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 10,"totalTokenCount": 10},"modelVersion": "gemini-2.0-flash","responseId": "resp-1"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": " quick brown fox"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 10,"totalTokenCount": 10},"modelVersion": "gemini-2.0-flash","responseId": "resp-1"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": " jumps."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 10,"candidatesTokenCount": 6,"totalTokenCount": 16},"modelVersion": "gemini-2.0-flash","responseId": "resp-1"}"#,
    ];
    let mut stream = Stream::new("gemini-2.5-flash");
    let outputs: Vec<Vec<Value>> = events.iter().map(|data| stream.event("message", data)).collect();
    let deltas = |chunks: &[Value]| chunks.iter().map(|chunk| chunk["choices"][0]["delta"].clone()).collect::<Vec<_>>();
    assert_eq!(deltas(&outputs[0]), vec![json!({"role": "assistant", "content": ""}), json!({"content": "The"})]);
    assert_eq!(deltas(&outputs[1]), vec![json!({"content": " quick brown fox"})]);
    assert_eq!(deltas(&outputs[2]), vec![json!({"content": " jumps."}), json!({})]);
    assert_eq!(outputs[2][1]["choices"][0]["finish_reason"], "stop");
    let first = &outputs[0][0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["id"], "resp-1");
    assert_eq!(first["model"], "gemini-2.0-flash");
    assert!(outputs.iter().flatten().all(|chunk| chunk.get("usage").is_none()), "usage comes once, at the end");
    let last = stream.end();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["choices"], json!([]));
    assert_eq!(last[0]["usage"], json!({"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}));
    assert!(stream.end().is_empty(), "the usage is sent once");
}

#[test]
fn streams_whole_function_calls_and_errors() {
    let mut stream = Stream::new("gemini-2.5-flash");
    let out = stream.event(
        "message",
        r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}},{"functionCall":{"name":"get_time","args":{}}}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":12,"totalTokenCount":42}}"#,
    );
    assert_eq!(out.len(), 3, "{out:?}");
    let calls = &out[1]["choices"][0]["delta"]["tool_calls"];
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[1]["index"], 1);
    assert_eq!(calls[0]["function"], json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}));
    assert_eq!(calls[1]["function"], json!({"name": "get_time", "arguments": "{}"}));
    assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("call_")));
    assert_eq!(out[2]["choices"][0]["finish_reason"], "tool_calls");

    let mut stream = Stream::new("m");
    stream.event("message", r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}]}"#);
    let out = stream.event(
        "message",
        r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#,
    );
    assert_eq!(
        out,
        vec![json!({"error": {"message": "The model is overloaded. Please try again later.", "type": "server_error",
            "param": null, "code": null}})]
    );
    assert!(stream.event("message", r#"{"candidates":[{"content":{"parts":[{"text":"late"}]}}]}"#).is_empty());
    assert!(stream.end().is_empty());

    let mut cut = Stream::new("m");
    cut.event("message", r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":3}}"#);
    assert!(cut.end().is_empty(), "a stream cut short reports no usage: the client's stream estimates it");
}

/// Gemini 3's function calls carry a thought signature that must come back with the call;
/// clients carry it in `extra_content.google.thought_signature`, as with Google's own OpenAI
/// compatibility.
#[test]
fn thought_signatures_go_out_with_tool_calls_and_come_back() {
    let answer = br#"{"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}}, "thoughtSignature": "CoAC...sig1"}
      ]}, "finishReason": "STOP"}]}"#;
    let completion = response(answer, "gemini-3-pro-preview").expect("translated");
    let call = completion["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["extra_content"], json!({"google": {"thought_signature": "CoAC...sig1"}}));

    let mut stream = Stream::new("gemini-3-pro-preview");
    let chunks = stream.event("message", std::str::from_utf8(answer).expect("utf-8"));
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["tool_calls"][0]["extra_content"]["google"]["thought_signature"],
        "CoAC...sig1"
    );

    let id = call["id"].as_str().expect("id").to_owned();
    let back = chat(json!({"messages": [
        {"role": "user", "content": "Check flight AA100"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "{\"status\": \"delayed\"}"}
    ]}));
    assert_eq!(
        sent(&back, Operation::Chat)["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
            "thoughtSignature": "CoAC...sig1"}]})
    );
}

#[test]
fn reads_the_wait_of_a_retry_info_detail() {
    let quota = br#"{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.",
      "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}
      ]}}"#;
    assert_eq!(retry_delay(quota), Some(26));
    assert_eq!(Gemini.retry_delay(quota), Some(26));
    assert_eq!(retry_delay(br#"[{"error":{"details":[{"retryDelay":"0.2s"}]}}]"#), Some(1));
    assert_eq!(retry_delay(br#"{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}"#), None);
    assert_eq!(retry_delay(br#"{"error":{"details":[{"retryDelay":"soon"}]}}"#), None);
    assert_eq!(retry_delay(b"<html>"), None);
}

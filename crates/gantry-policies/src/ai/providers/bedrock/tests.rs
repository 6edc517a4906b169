use std::time::{Duration, UNIX_EPOCH};

use super::*;

/// 2015-08-30T12:36:00Z, the time of AWS's Signature Version 4 test suite.
fn suite_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_440_938_160)
}

fn suite_credentials(token: Option<&str>) -> Credentials {
    Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token.map(str::to_owned), None, "test")
}

fn authorization(added: &[(String, String)]) -> &str {
    added.iter().find(|(name, _)| name == "authorization").map(|(_, value)| value.as_str()).expect("authorization")
}

#[test]
fn signatures_match_aws_sigv4_test_suite() {
    let host = [("host", "example.amazonaws.com")];
    // get-vanilla and post-vanilla of AWS's published suite (service `service`, us-east-1).
    let get = sign_v4("GET", "/", &host, b"", &suite_credentials(None), "us-east-1", "service", suite_time())
        .expect("signed");
    assert_eq!(
        authorization(&get),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
         SignedHeaders=host;x-amz-date, \
         Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
    assert!(get.contains(&("x-amz-date".to_owned(), "20150830T123600Z".to_owned())));
    let post = sign_v4("POST", "/", &host, b"", &suite_credentials(None), "us-east-1", "service", suite_time())
        .expect("signed");
    assert!(
        authorization(&post).ends_with("Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
    );
    // post-sts-header-before: temporary credentials sign their session token too.
    let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
    let sts = sign_v4("POST", "/", &host, b"", &suite_credentials(Some(token)), "us-east-1", "service", suite_time())
        .expect("signed");
    assert_eq!(
        authorization(&sts),
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
         SignedHeaders=host;x-amz-date;x-amz-security-token, \
         Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
    );
    assert!(sts.contains(&("x-amz-security-token".to_owned(), token.to_owned())));
}

fn config(value: Value) -> BedrockConfig {
    serde_json::from_value(value).expect("bedrock settings")
}

fn target(settings: Value) -> TargetInfo {
    let mut target = TargetInfo::for_tests(Provider::Bedrock, "anthropic.claude-3-haiku-20240307-v1:0");
    target.bedrock = BedrockAccess::of(Provider::Bedrock, Some(&config(settings)));
    target
}

fn head(target: &TargetInfo, streamed: bool) -> http::request::Parts {
    let path = Bedrock.path(target, Operation::Chat, streamed);
    let (mut head, ()) = http::Request::post(path).body(()).expect("request").into_parts();
    head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    head.headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    head
}

#[test]
fn requests_are_signed_for_bedrock_in_the_region() {
    let target = target(json!({"region": "eu-west-3", "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session_token": "token-1"}));
    let mut head = head(&target, true);
    assert_eq!(head.uri.path(), "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream");
    authorize(&target, &mut head, br#"{"messages":[]}"#, suite_time()).expect("signed");
    assert_eq!(head.headers[HOST], "bedrock-runtime.eu-west-3.amazonaws.com");
    assert_eq!(head.headers[ACCEPT], EVENT_STREAM);
    assert_eq!(head.headers["x-amz-date"], "20150830T123600Z");
    assert_eq!(head.headers["x-amz-security-token"], "token-1");
    let signed = head.headers[AUTHORIZATION].to_str().expect("text");
    assert!(
        signed.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-3/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
        ),
        "{signed}"
    );
    assert!(head.headers[AUTHORIZATION].is_sensitive());
    // The body is part of the signature.
    let mut other = self::head(&target, true);
    authorize(&target, &mut other, br#"{"messages":[{}]}"#, suite_time()).expect("signed");
    assert_ne!(other.headers[AUTHORIZATION], head.headers[AUTHORIZATION]);
}

#[test]
fn an_api_key_target_is_not_signed() {
    let target = target(json!({"region": "us-east-1", "host": "vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com"}));
    let mut head = head(&target, false);
    head.headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer bedrock-api-key"));
    authorize(&target, &mut head, b"{}", suite_time()).expect("authorized");
    assert_eq!(head.headers[AUTHORIZATION], "Bearer bedrock-api-key");
    assert_eq!(head.headers[HOST], "vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com");
    assert_eq!(head.headers[ACCEPT], "application/json");
    assert!(head.headers.get("x-amz-date").is_none());
}

#[test]
fn settings_are_checked() {
    let at = FieldPath::root().key("targets").index(0);
    let messages = |provider: Provider, settings: Option<Value>, has_api_key: bool| {
        let mut errors = ConfigErrors::default();
        let settings = settings.map(config);
        validate(provider, settings.as_ref(), has_api_key, &at, &mut errors);
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    };
    assert!(messages(Provider::Bedrock, None, true).contains("targets[0].bedrock"));
    assert!(messages(Provider::Openai, Some(json!({"region": "us-east-1"})), true).contains("only a target"));
    let text = messages(Provider::Bedrock, Some(json!({"region": "US East", "access_key_id": "AKID"})), false);
    assert!(text.contains("bedrock.region"), "{text}");
    assert!(text.contains("bedrock.secret_access_key"), "{text}");
    assert!(messages(Provider::Bedrock, Some(json!({"region": "us-east-1"})), false).contains("api_key"));
    assert!(messages(Provider::Bedrock, Some(json!({"region": "us-east-1"})), true).is_empty());
    let both = json!({"region": "us-east-1", "access_key_id": "AKID", "secret_access_key": "s"});
    assert!(messages(Provider::Bedrock, Some(both.clone()), true).contains("either"));
    assert!(messages(Provider::Bedrock, Some(both), false).is_empty());
    assert!(serde_json::from_value::<BedrockConfig>(json!({"region": "us-east-1", "profile": "x"})).is_err());
}

#[test]
fn chat_requests_become_converse_requests() {
    let request: ChatRequest = serde_json::from_value(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are an app that creates playlists for a radio station."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the most popular song on WZPZ?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function",
                 "function": {"name": "top_song", "arguments": "{\"sign\":\"WZPZ\"}"}},
                {"id": "tooluse_2", "type": "function", "function": {"name": "top_song", "arguments": "{\"sign\":\"WKRP\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": "Elemental Hotel by 8 Storey Hike"},
            {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "unknown"}]}
        ],
        "max_tokens": 512,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\nHuman:"],
        "stream": true,
        "tools": [{"type": "function", "function": {"name": "top_song", "description": "Get the most popular song played on a radio station.",
            "parameters": {"type": "object", "properties": {"sign": {"type": "string"}}, "required": ["sign"]}}}],
        "tool_choice": "required"
    }))
    .expect("request");
    let body = converse_request(&request).expect("converse");
    assert_eq!(
        body,
        json!({
            "system": [{"text": "You are an app that creates playlists for a radio station."}],
            "messages": [
                {"role": "user", "content": [
                    {"text": "What is the most popular song on WZPZ?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
                ]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song", "input": {"sign": "WZPZ"}}},
                    {"toolUse": {"toolUseId": "tooluse_2", "name": "top_song", "input": {"sign": "WKRP"}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "content": [{"text": "Elemental Hotel by 8 Storey Hike"}]}},
                    {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "unknown"}]}}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0.5, "topP": 0.9, "stopSequences": ["\n\nHuman:"]},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "top_song", "description": "Get the most popular song played on a radio station.",
                    "inputSchema": {"json": {"type": "object", "properties": {"sign": {"type": "string"}}, "required": ["sign"]}}}}],
                "toolChoice": {"any": {}}
            }
        })
    );
    let named = json!({"type": "function", "function": {"name": "top_song"}});
    let mut request = request;
    request.insert("tool_choice".into(), named);
    assert_eq!(
        converse_request(&request).expect("converse")["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "top_song"}})
    );
    request.insert("tool_choice".into(), json!("none"));
    assert!(
        converse_request(&request).expect("converse")["toolConfig"]["toolChoice"].is_null(),
        "tools stay declared for the tool calls of the conversation, without a choice"
    );
    let plain: ChatRequest = serde_json::from_value(json!({"messages": [{"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}))
    .expect("request");
    assert_eq!(
        converse_request(&plain).expect("converse"),
        json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]})
    );
    let remote: ChatRequest = serde_json::from_value(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}))
    .expect("request");
    assert!(converse_request(&remote).expect_err("refused").contains("data:"));
}

#[test]
fn converse_answers_become_chat_completions() {
    // The Converse answer of AWS's tool use example.
    let answer = br#"{"output":{"message":{"role":"assistant","content":[
        {"text":"I'll look up the most popular song."},
        {"toolUse":{"toolUseId":"tooluse_kZJMlvQmRJ6eAyJE5GIl7Q","name":"top_song","input":{"sign":"WZPZ"}}}]}},
        "stopReason":"tool_use","usage":{"inputTokens":375,"outputTokens":80,"totalTokens":455},"metrics":{"latencyMs":2123}}"#;
    let completion = converse_response(answer, "anthropic.claude-3-haiku-20240307-v1:0").expect("completion");
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "anthropic.claude-3-haiku-20240307-v1:0");
    assert_eq!(
        completion["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "I'll look up the most popular song.",
            "tool_calls": [{"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function",
                "function": {"name": "top_song", "arguments": "{\"sign\":\"WZPZ\"}"}}]}})
    );
    assert_eq!(completion["usage"], json!({"prompt_tokens": 375, "completion_tokens": 80, "total_tokens": 455}));
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        assert_eq!(finish_reason(stop), finish);
    }
    assert!(converse_response(b"{}", "m").is_err());
}

#[test]
fn errors_take_their_kind_from_the_header() {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_static("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    );
    let (status, body) = Bedrock.error_with_headers(
        StatusCode::TOO_MANY_REQUESTS,
        &headers,
        br#"{"message":"Too many requests, please wait before trying again."}"#,
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"error": {"message": "Too many requests, please wait before trying again.", "type": "rate_limit_error",
            "param": null, "code": "ThrottlingException"}})
    );
    let (_, body) = Bedrock
        .error(StatusCode::BAD_REQUEST, br#"{"__type":"com.amazon.bedrock#ValidationException","Message":"bad"}"#);
    assert_eq!(body["error"]["code"], "ValidationException");
    assert_eq!(body["error"]["message"], "bad");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[test]
fn embeddings_go_to_titan_one_text_at_a_time() {
    let target = TargetInfo::for_tests(Provider::Bedrock, "amazon.titan-embed-text-v2:0");
    assert_eq!(Bedrock.path(&target, Operation::Embeddings, false), "/model/amazon.titan-embed-text-v2%3A0/invoke");
    let request: ChatRequest =
        serde_json::from_value(json!({"model": "e", "input": ["Hello"], "dimensions": 256})).expect("request");
    let body: Value =
        serde_json::from_slice(&Bedrock.request(&target, Operation::Embeddings, &request, false).expect("body"))
            .expect("json");
    assert_eq!(body, json!({"inputText": "Hello", "dimensions": 256}));
    let several: ChatRequest = serde_json::from_value(json!({"input": ["a", "b"]})).expect("request");
    assert!(Bedrock.request(&target, Operation::Embeddings, &several, false).is_err());
    let answer = Bedrock
        .response(&target, Operation::Embeddings, br#"{"embedding":[0.5,-0.25],"inputTextTokenCount":3}"#)
        .expect("answer");
    assert_eq!(
        answer,
        json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
            "model": "amazon.titan-embed-text-v2:0", "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    );
    assert!(Bedrock.serves(Operation::Embeddings) && !Bedrock.serves(Operation::Completion));
}

/// One event-stream message, encoded as the format's specification lays it out: total
/// length, headers length, prelude CRC32, headers (name length, name, type 7 = string,
/// value length, value), payload, message CRC32; all big-endian.
fn frame(headers: &[(&str, &str)], payload: &str) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(u8::try_from(name.len()).expect("short name"));
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers.extend_from_slice(&u16::try_from(value.len()).expect("short value").to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + encoded_headers.len() + payload.len() + 4;
    let mut message = Vec::new();
    message.extend_from_slice(&u32::try_from(total).expect("small").to_be_bytes());
    message.extend_from_slice(&u32::try_from(encoded_headers.len()).expect("small").to_be_bytes());
    message.extend_from_slice(&crc32fast::hash(&message).to_be_bytes());
    message.extend_from_slice(&encoded_headers);
    message.extend_from_slice(payload.as_bytes());
    message.extend_from_slice(&crc32fast::hash(&message).to_be_bytes());
    message
}

fn event(name: &str, payload: Value) -> Vec<u8> {
    frame(
        &[(":event-type", name), (":content-type", "application/json"), (":message-type", "event")],
        &payload.to_string(),
    )
}

#[test]
fn event_stream_frames_are_decoded_across_reads_and_checked() {
    let mut bytes = event("messageStart", json!({"p": "abcd", "role": "assistant"}));
    bytes.extend(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "ab"})));
    let mut decoder = EventStreamDecoder::default();
    let mut events = Vec::new();
    // Byte by byte: frames split anywhere still come out whole.
    for byte in &bytes {
        events.extend(decoder.feed(std::slice::from_ref(byte)).expect("valid frames"));
    }
    assert_eq!(
        events,
        vec![
            StreamEvent { event: "messageStart".into(), data: json!({"p": "abcd", "role": "assistant"}).to_string() },
            StreamEvent {
                event: "contentBlockDelta".into(),
                data: json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "ab"}).to_string()
            },
        ]
    );
    let exception = frame(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        r#"{"message":"Too many tokens, please wait before trying again."}"#,
    );
    let events = EventStreamDecoder::default().feed(&exception).expect("valid frame");
    assert_eq!(events[0].event, "exception");
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].data).expect("json"),
        json!({"type": "throttlingException", "message": "Too many tokens, please wait before trying again."})
    );
    let mut corrupt = event("messageStop", json!({"stopReason": "end_turn"}));
    let last = corrupt.len() - 6;
    corrupt[last] ^= 0x20;
    assert!(EventStreamDecoder::default().feed(&corrupt).is_err(), "a message CRC mismatch is an error");
}

#[test]
fn converse_streams_become_chunks() {
    let mut stream = ConverseStream::new("anthropic.claude-3-haiku-20240307-v1:0");
    let mut chunks = Vec::new();
    for (name, payload) in [
        ("messageStart", json!({"role": "assistant"})),
        ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Checking"}})),
        ("contentBlockStop", json!({"contentBlockIndex": 0})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "top_song"}}}),
        ),
        ("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"sign\": \"WZ"}}})),
        ("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "PZ\"}"}}})),
        ("contentBlockStop", json!({"contentBlockIndex": 1})),
        ("messageStop", json!({"stopReason": "tool_use"})),
        (
            "metadata",
            json!({"usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42}, "metrics": {"latencyMs": 10}}),
        ),
    ] {
        chunks.extend(stream.event(name, &payload.to_string()));
    }
    let deltas: Vec<&Value> = chunks.iter().filter_map(|chunk| chunk.pointer("/choices/0/delta")).collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], &json!({"content": "Checking"}));
    assert_eq!(
        deltas[2],
        &json!({"tool_calls": [{"index": 0, "id": "tooluse_1", "type": "function", "function": {"name": "top_song", "arguments": ""}}]})
    );
    assert_eq!(deltas[3], &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"sign\": \"WZ"}}]}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"], json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}));
    assert_eq!(chunks.len(), 7);
    assert!(chunks.iter().all(|chunk| chunk["id"] == chunks[0]["id"] && chunk["object"] == "chat.completion.chunk"));

    let mut failing = ConverseStream::new("m");
    let error = failing.event("exception", r#"{"type":"throttlingException","message":"slow down"}"#);
    assert_eq!(
        error,
        vec![
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "throttlingException"}})
        ]
    );
    assert!(failing.event("messageStop", r#"{"stopReason":"end_turn"}"#).is_empty(), "nothing after an exception");
}

#[test]
fn an_upstream_that_replaces_the_signed_host_is_refused() {
    let at = FieldPath::root().key("upstream");
    let upstream = |host_header: HostHeaderSpec| {
        let mut spec: UpstreamSpec =
            serde_json::from_value(json!({"id": "aws", "endpoints": ["bedrock-runtime.us-east-1.amazonaws.com:443"]}))
                .expect("upstream");
        spec.host_header = host_header;
        spec
    };
    let messages = |provider: Provider, spec: &UpstreamSpec| {
        let mut errors = ConfigErrors::default();
        check_upstream(provider, Some(spec), &at, &mut errors);
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    assert!(messages(Provider::Bedrock, &upstream(HostHeaderSpec::Pass)).is_empty());
    let refused = messages(Provider::Bedrock, &upstream(HostHeaderSpec::Endpoint));
    assert_eq!(refused.len(), 1);
    assert!(refused[0].starts_with("upstream: upstream `aws` replaces the `Host` header"), "{refused:?}");
    assert_eq!(messages(Provider::Bedrock, &upstream(HostHeaderSpec::Rewrite("x".into()))).len(), 1);
    assert!(messages(Provider::Openai, &upstream(HostHeaderSpec::Endpoint)).is_empty());
}

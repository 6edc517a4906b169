use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Policy, RegisteredPolicy, RequestBody};
use http::StatusCode;
use serde_json::{json, Value};

use super::*;
use crate::ai::AnswerFilter;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<AiPiiRedaction>()
}

fn build(yaml: &str) -> Arc<dyn Policy> {
    build_policy(entry(), yaml).unwrap_or_else(|errors| panic!("settings refused: {errors}"))
}

/// The answer filter the policy of settings `yaml` adds to an exchange.
fn answer_filter(yaml: &str) -> Arc<dyn AnswerFilter> {
    let policy = build(yaml);
    let mut request = request_parts(http::Request::post("/v1/chat/completions").body(()).expect("request"));
    let mut exchange = exchange_from("192.0.2.1:1000");
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));
    let filters = exchange.extensions.get::<AnswerFilters>().expect("an answer filter");
    assert_eq!(filters.0.len(), 1);
    filters.0[0].clone()
}

fn redact(text: &str) -> String {
    answer_filter("").filter(text)
}

#[test]
fn finds_each_kind_of_personal_data_and_passes_look_alikes() {
    let cases = [
        ("write to jane.doe+ai@mail.example.co.uk now", "write to <EMAIL> now"),
        ("card 4111 1111 1111 1111, exp 12/27", "card <CREDIT_CARD>, exp 12/27"),
        ("card 4111-1111-1111-1111 and 5500005555555559", "card <CREDIT_CARD> and <CREDIT_CARD>"),
        ("not a card: 4111 1111 1111 1112", "not a card: 4111 1111 1111 1112"),
        ("card 4111 1111 1111 1111 2024 and 5500 0055 5555 5559-12", "card <CREDIT_CARD> 2024 and <CREDIT_CARD>-12"),
        ("pay to DE89 3704 0044 0532 0130 00 TODAY", "pay to <IBAN> TODAY"),
        ("pay to GB82WEST12345698765432.", "pay to <IBAN>."),
        ("not an IBAN: DE88 3704 0044 0532 0130 00", "not an IBAN: DE88 3704 0044 0532 0130 00"),
        ("SSN 123-45-6789.", "SSN <US_SSN>."),
        ("never issued: 000-12-3456 and 666-12-3456", "never issued: 000-12-3456 and 666-12-3456"),
        ("from 192.168.10.254:8080", "from <IPV4>:8080"),
        ("not an address: 300.1.2.3", "not an address: 300.1.2.3"),
        ("call +44 20 7946 0958 or (555) 123-4567", "call <PHONE> or <PHONE>"),
        ("call 555-123-4567 today", "call <PHONE> today"),
        ("in 2024 we sold 120 units", "in 2024 we sold 120 units"),
        ("nothing here at all", "nothing here at all"),
        ("é jane@example.com ü", "é <EMAIL> ü"),
    ];
    for (text, expected) in cases {
        assert_eq!(redact(text), expected, "{text}");
    }
}

#[test]
fn uses_custom_patterns_and_the_mask() {
    let filter = answer_filter("custom_patterns:\n  - {name: employee_id, pattern: 'EMP-[0-9]{6}'}\nmask: '[removed]'");
    assert_eq!(filter.filter("EMP-123456 wrote to a@b.io"), "[removed] wrote to [removed]");
    let only_custom =
        answer_filter("detectors: []\ncustom_patterns:\n  - {name: employee_id, pattern: 'EMP-[0-9]{6}'}");
    assert_eq!(only_custom.filter("EMP-123456 wrote to a@b.io"), "<EMPLOYEE_ID> wrote to a@b.io");
}

/// Texts with values at the start, the end, next to each other and next to look-alikes.
const STREAMED: [&str; 7] = [
    "Reach Jane at jane.doe@example.com or +1 415 555 0100; card 4111 1111 1111 1111.",
    "jane@example.com",
    "IBAN DE89 3704 0044 0532 0130 00 and SSN 123-45-6789, host 10.0.0.1",
    "4111111111111111 4111 1111 1111 1112 555-123-4567",
    "No personal data in this answer, only 2024 and 3.14.",
    "é à 192.168.1.1 ü EMP-123456",
    "Grüße, EMP-123456 à bientôt; ÉEMP-123456 n'en est pas un",
];

fn stream(filter: &dyn AnswerFilter, deltas: &[&str]) -> Vec<String> {
    let mut stream = filter.stream();
    let mut sent: Vec<String> = deltas.iter().map(|delta| stream.push(delta)).collect();
    sent.push(stream.finish());
    sent
}

/// Every emitted prefix must be a prefix of the whole answer's redaction: nothing is sent
/// that a later delta would have redacted, so no part of a value ever leaves.
fn assert_streams_like_whole(filter: &dyn AnswerFilter, text: &str, deltas: &[&str]) {
    let whole = filter.filter(text);
    let sent = stream(filter, deltas);
    let mut so_far = String::new();
    for piece in &sent {
        so_far.push_str(piece);
        assert!(whole.starts_with(&so_far), "split {deltas:?}: sent {so_far:?}, which is not a prefix of {whole:?}");
    }
    assert_eq!(so_far, whole, "split {deltas:?}");
}

#[test]
fn streams_the_same_text_as_the_whole_answer_split_at_every_boundary() {
    let filter = answer_filter("custom_patterns:\n  - {name: employee_id, pattern: '\\bEMP-[0-9]{6}\\b'}");
    let filter = &*filter;
    for text in STREAMED {
        let boundaries: Vec<usize> = (0..=text.len()).filter(|&at| text.is_char_boundary(at)).collect();
        for &at in &boundaries {
            assert_streams_like_whole(filter, text, &[&text[..at], &text[at..]]);
            for &second in boundaries.iter().filter(|&&second| second > at).step_by(7) {
                assert_streams_like_whole(filter, text, &[&text[..at], &text[at..second], &text[second..]]);
            }
        }
        let chars: Vec<&str> = text.char_indices().map(|(at, c)| &text[at..at + c.len_utf8()]).collect();
        assert_streams_like_whole(filter, text, &chars);
    }
}

#[test]
fn holds_back_only_what_a_match_can_still_need() {
    let filter = answer_filter("");
    let mut stream = filter.stream();
    assert_eq!(stream.push("Hi there. Write to "), "Hi there. Write to ", "no value can start in what was sent");
    assert_eq!(stream.push("jane.doe@exa"), "", "an address is never sent in part");
    assert_eq!(stream.push("mple.com today, or call +1 4"), "<EMAIL> today, or call ", "`today,` cannot be an address");
    assert_eq!(stream.push("15 555 0100."), "", "`.12` could still follow");
    assert_eq!(stream.push(" Bye"), "<PHONE>. ");
    assert_eq!(stream.finish(), "Bye", "`Bye` could have started an address");
    let mut stream = filter.stream();
    assert_eq!(stream.push("The SSN is 123-45-678"), "The SSN is ");
    assert_eq!(stream.push("9"), "", "a letter or digit more would make it no SSN");
    assert_eq!(stream.push("x"), "", "no SSN, but `123-45-6789x` could begin an address");
    assert_eq!(stream.push(" ok"), "123-45-6789x ");
    assert_eq!(stream.finish(), "ok");
}

#[test]
fn holds_nothing_back_for_unicode_word_boundaries_beside_non_ascii_text() {
    let filter =
        answer_filter("detectors: []\ncustom_patterns:\n  - {name: employee_id, pattern: '\\bEMP-[0-9]{6}\\b'}");
    let mut stream = filter.stream();
    assert_eq!(stream.push("Grüße von André, "), "Grüße von André, ");
    assert_eq!(stream.push("ÉEMP-123456 et EMP-12"), "ÉEMP-123456 et ", "`É` is a letter: no boundary before `EMP`");
    assert_eq!(stream.push("3456 à bientôt"), "<EMPLOYEE_ID> à bientôt");
    assert_eq!(stream.finish(), "");
}

#[test]
fn an_unbounded_custom_pattern_holds_at_most_the_limit() {
    let filter = answer_filter("detectors: []\ncustom_patterns:\n  - {name: word, pattern: 'x+y'}");
    let mut stream = filter.stream();
    let long = "x".repeat(70 * 1024);
    let sent = stream.push(&long);
    assert_eq!(sent.len(), long.len(), "past the limit the held text is let go");
    assert_eq!(stream.push("xy z"), "<WORD> z");
}

fn run(policy: &dyn Policy, body: Value) -> (Flow, Exchange) {
    let mut request = request_parts(http::Request::post("/v1/chat/completions").body(()).expect("request"));
    let mut exchange = exchange_from("192.0.2.1:1000");
    exchange.extensions.insert(RequestBody(body.to_string().into()));
    let flow = run_request(policy, &mut request, &mut exchange);
    (flow, exchange)
}

fn sent_body(exchange: &Exchange) -> Value {
    serde_json::from_slice(&exchange.extensions.get::<RequestBody>().expect("a body").0).expect("JSON")
}

#[test]
fn redacts_the_prompt_before_the_provider_sees_it() {
    let policy = build("");
    let (flow, exchange) = run(
        &*policy,
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Support for ACME."},
            {"role": "user", "content": [{"type": "text", "text": "I am jane@example.com, card 4111 1111 1111 1111"}, {"type": "image_url", "image_url": {"url": "https://x/jane@example.com"}}]},
        ]}),
    );
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(
        sent_body(&exchange),
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Support for ACME."},
            {"role": "user", "content": [{"type": "text", "text": "I am <EMAIL>, card <CREDIT_CARD>"}, {"type": "image_url", "image_url": {"url": "https://x/jane@example.com"}}]},
        ]})
    );
    assert_eq!(exchange.extensions.get::<AnswerFilters>().map(|filters| filters.0.len()), Some(1));
    let (_, exchange) = run(&*policy, json!({"model": "m", "input": ["ssn 123-45-6789", "fine"], "prompt": "1.2.3.4"}));
    assert_eq!(sent_body(&exchange), json!({"model": "m", "input": ["ssn <US_SSN>", "fine"], "prompt": "<IPV4>"}));
}

#[test]
fn blocks_a_prompt_with_personal_data_naming_the_kinds_not_the_values() {
    let policy = build("request: block\nresponse: keep");
    let (flow, exchange) = run(
        &*policy,
        json!({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "jane@example.com, 123-45-6789"}]}),
    );
    let Flow::Respond(response) = flow else { panic!("a prompt with personal data went on") };
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_slice(response.body()).expect("JSON");
    assert_eq!(error["error"]["code"], "pii_detected");
    assert_eq!(
        error["error"]["message"],
        "the prompt contains personal data (email, us_ssn in messages[1] (user)); remove it and send it again"
    );
    assert!(exchange.extensions.get::<AnswerFilters>().is_none());
    let (flow, exchange) = run(&*policy, json!({"messages": [{"role": "user", "content": "nothing personal"}]}));
    assert!(matches!(flow, Flow::Continue));
    assert!(exchange.extensions.get::<AnswerFilters>().is_none(), "response: keep adds no filter");
}

#[test]
fn leaves_the_prompt_alone_with_request_keep() {
    let policy = build("request: keep");
    assert!(!policy.reads_request_body());
    let body = json!({"messages": [{"role": "user", "content": "jane@example.com"}]});
    let (flow, exchange) = run(&*policy, body.clone());
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(sent_body(&exchange), body);
    assert!(exchange.extensions.get::<AnswerFilters>().is_some());
}

fn errors(yaml: &str) -> Vec<String> {
    build_policy_error(entry(), yaml).iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
}

#[test]
fn reports_bad_settings_at_their_paths() {
    let at = "global_policies[0].ai_pii_redaction";
    let found = errors(
        "detectors: [email, email]\ncustom_patterns:\n  - {name: Bad-Name, pattern: x}\n  - {name: email, pattern: z}\n  - {name: ok, pattern: '(x'}\nmask: ''",
    );
    assert_eq!(found.len(), 5, "{found:?}");
    assert_eq!(found[0], format!("{at}.detectors[1]: `email` is listed twice"));
    assert_eq!(
        found[1],
        format!("{at}.custom_patterns[0].name: must be snake_case: lower-case letters, digits and `_`")
    );
    assert_eq!(found[2], format!("{at}.custom_patterns[1].name: `email` names another detector too"));
    assert_eq!(found[3], format!("{at}.mask: must not be empty"));
    assert!(found[4].starts_with(&format!("{at}.custom_patterns[2].pattern: not a regular expression")), "{found:?}");
    assert_eq!(
        errors("request: keep\nresponse: keep"),
        [format!("{at}: `request` and `response` are both `keep`: nothing is redacted")]
    );
    assert_eq!(errors("detectors: []"), [format!("{at}.detectors: give at least one detector or custom pattern")]);
    assert!(errors("detectors: [passport]")[0].starts_with(&format!("{at}.detectors")));
}

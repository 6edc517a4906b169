use gantry_policy_api::testing::{exchange_from, policy_path, run_request};
use gantry_policy_api::{ConsumerDirectory, RegisteredPolicy};
use http::header::WWW_AUTHENTICATE;

use super::*;

const CONFIG: &str = "consumers:
  - id: alice
    credentials:
      key_auth: {key: alice-key}
  - id: guest
";

/// `any_auth` over two `key_auth` methods reading different headers (realms `a` and `b`).
fn build(settings: &str) -> Result<Arc<dyn Policy>, ConfigErrors> {
    let spec = gantry_config::load_str(CONFIG)?;
    let mut errors = ConfigErrors::default();
    let consumers = ConsumerDirectory::build(&spec, &crate::registry::find, &mut errors);
    errors.into_result(())?;
    let raw = gantry_config::load_str(&format!("global_policies:\n  - any_auth: {settings}\n"))?
        .global_policies
        .remove(0)
        .config;
    RegisteredPolicy::of::<AnyAuth>().build(&raw, &policy_path("any_auth"), &BuildContext::new(&spec, &consumers))
}

const TWO_HEADERS: &str =
    "{methods: [{key_auth: {header: x-key-a, realm: a}}, {key_auth: {header: x-key-b, realm: b}}]";

fn policy(extra: &str) -> Arc<dyn Policy> {
    build(&format!("{TWO_HEADERS}{extra}}}")).unwrap_or_else(|errors| panic!("{errors}"))
}

fn run(policy: &dyn Policy, headers: &[(&str, &str)]) -> (Flow, Exchange) {
    let mut builder = http::Request::get("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(()).expect("request").into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = run_request(policy, &mut request, &mut exchange);
    (flow, exchange)
}

#[test]
fn the_first_method_that_recognises_the_request_decides() {
    let policy = policy("");
    for header in ["x-key-a", "x-key-b"] {
        let (flow, exchange) = run(&*policy, &[(header, "alice-key")]);
        assert!(matches!(flow, Flow::Continue), "{header}");
        assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "alice");
    }
    let (flow, _) = run(&*policy, &[("x-key-a", "wrong"), ("x-key-b", "alice-key")]);
    assert!(matches!(flow, Flow::Continue), "a later method may still recognise the request");
}

#[test]
fn refuses_a_request_without_credentials_with_every_challenge() {
    let (flow, exchange) = run(&*policy(""), &[]);
    let Flow::Respond(response) = flow else { panic!("must refuse") };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = response.headers().get_all(WWW_AUTHENTICATE).iter().collect();
    assert_eq!(challenges, ["Key realm=\"a\"", "Key realm=\"b\""]);
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem");
    assert_eq!(body["type"], "https://gantry.dev/problems/missing-credentials");
    assert!(exchange.identity.is_none());
}

#[test]
fn takes_a_missing_token_of_the_token_policies_for_missing_credentials() {
    // Nothing is fetched or called for a request without a token, so the servers named here
    // never need to exist.
    let methods = "{methods: [{key_auth: {}}, \
        {jwt: {realm: j, algorithms: [HS256], keys: [{alg: HS256, secret: a-32-byte-secret-for-hs256-tests}]}}, \
        {oauth2_introspection: {realm: i, introspection_endpoint: \"http://127.0.0.1:9/x\", \
            client_id: gw, client_secret: s}}, \
        {oidc: {realm: o, issuer: \"http://127.0.0.1:9\", client_id: gw}}";
    let strict = build(&format!("{methods}]}}")).unwrap_or_else(|errors| panic!("{errors}"));
    let (flow, _) = run(&*strict, &[]);
    let Flow::Respond(response) = flow else { panic!("must refuse") };
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = response.headers().get_all(WWW_AUTHENTICATE).iter().collect();
    assert_eq!(
        challenges,
        ["Key realm=\"gantry\"", "Bearer realm=\"j\"", "Bearer realm=\"i\"", "Bearer realm=\"o\""],
        "every method's missing answer counts as absent, so every challenge is sent"
    );
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem");
    assert_eq!(body["type"], "https://gantry.dev/problems/missing-credentials");

    let open = build(&format!("{methods}], anonymous_consumer: guest}}")).unwrap_or_else(|errors| panic!("{errors}"));
    let (flow, exchange) = run(&*open, &[]);
    assert!(matches!(flow, Flow::Continue));
    assert!(exchange.identity.expect("anonymous").is_anonymous);
}

#[test]
fn reports_wrong_credentials_rather_than_missing_ones() {
    let (flow, _) = run(&*policy(""), &[("x-key-b", "wrong")]);
    let Flow::Respond(response) = flow else { panic!("must refuse") };
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem");
    assert_eq!(body["type"], "https://gantry.dev/problems/invalid-credentials");
    assert_eq!(response.headers().get_all(WWW_AUTHENTICATE).iter().count(), 2);
}

#[test]
fn lets_the_anonymous_consumer_in_only_without_any_credentials() {
    let policy = policy(", anonymous_consumer: guest");
    let (flow, exchange) = run(&*policy, &[]);
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert!(identity.is_anonymous);
    assert_eq!(&*identity.consumer.id, "guest");
    let (flow, _) = run(&*policy, &[("x-key-a", "wrong")]);
    assert!(matches!(flow, Flow::Respond(_)));
}

#[test]
fn rejects_non_identity_methods_stand_ins_inside_methods_and_single_methods() {
    let paths = |settings: &str| -> Vec<String> {
        match build(settings) {
            Ok(_) => panic!("accepted {settings}"),
            Err(errors) => errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect(),
        }
    };
    let found = paths("{methods: [{key_auth: {}}, {ip_restriction: {allow: [10.0.0.0/8]}}, {nope: {}}]}");
    assert!(
        found
            .contains(&"global_policies[0].any_auth.methods[1]: `ip_restriction` is not an identity policy".to_owned()),
        "{found:?}"
    );
    assert!(found.contains(&"global_policies[0].any_auth.methods[2]: unknown policy `nope`".to_owned()), "{found:?}");
    let found = paths("{methods: [{key_auth: {anonymous_consumer: guest}}, {key_auth: {header: b}}]}");
    assert!(found[0].starts_with("global_policies[0].any_auth.methods[0].key_auth.anonymous_consumer: "), "{found:?}");
    let found = paths("{methods: [{key_auth: {}}]}");
    assert!(found[0].starts_with("global_policies[0].any_auth.methods: list at least two"), "{found:?}");
    let found = paths("{methods: [{key_auth: {header: \"bad header\"}}, {key_auth: {}}]}");
    assert!(found[0].starts_with("global_policies[0].any_auth.methods[0].key_auth.header: "), "{found:?}");
}

use std::sync::LazyLock;
use std::time::Instant;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from};
use gantry_policy_api::RegisteredPolicy;
use http::header::WWW_AUTHENTICATE;
use http::StatusCode;

use super::*;

/// Hashes made here with the real crates, cheap parameters keeping the tests fast.
static ALICE_ARGON2ID: LazyLock<String> = LazyLock::new(|| {
    let params = Params::new(1024, 1, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(b"wonderland")
        .expect("hashing works")
        .to_string()
});
static BOB_BCRYPT: LazyLock<String> = LazyLock::new(|| bcrypt::hash("builder:with:colons", 4).expect("hashing works"));

fn consumers() -> String {
    format!(
        "consumers:
  - id: alice
    groups: [staff]
    credentials:
      basic_auth: {{username: alice, password_hash: \"{}\"}}
  - id: bob
    credentials:
      basic_auth: {{username: bob, password_hash: \"{}\"}}
  - id: carol
    credentials:
      basic_auth: {{username: carol, password: carol-in-clear}}
  - id: guest
",
        *ALICE_ARGON2ID, *BOB_BCRYPT
    )
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<BasicAuth>(), settings, &consumers())
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<BasicAuth>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

fn basic(credentials: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

fn request(authorization: Option<&str>) -> RequestParts {
    let mut builder = http::Request::get("/");
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    builder.body(()).expect("request").into_parts().0
}

/// Runs the request hook inside a runtime, as the data plane does, password checks included.
async fn run(policy: &dyn Policy, authorization: Option<&str>) -> (Flow, RequestParts, Exchange) {
    let mut parts = request(authorization);
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = policy.on_request(&mut parts, &mut exchange).resolve().await;
    (flow, parts, exchange)
}

/// Whether the hook decided at once (a cache hit or a malformed header) rather than waiting
/// for a password check.
fn decides_at_once(policy: &dyn Policy, authorization: &str) -> bool {
    let mut parts = request(Some(authorization));
    let mut exchange = exchange_from("127.0.0.1:1");
    let decided = matches!(policy.on_request(&mut parts, &mut exchange), Hook::Done(_));
    decided
}

fn problem(flow: Flow) -> (StatusCode, String, serde_json::Value) {
    let Flow::Respond(response) = flow else { panic!("the request must be answered") };
    let challenge = response.headers()[WWW_AUTHENTICATE].to_str().expect("text").to_owned();
    let body = serde_json::from_slice(response.body()).expect("problem json");
    (response.status(), challenge, body)
}

#[tokio::test]
async fn recognises_an_argon2id_password_and_hides_the_authorization_header() {
    let policy = policy("");
    let (flow, parts, exchange) = run(&*policy, Some(&basic("alice:wonderland"))).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "alice");
    assert!(identity.consumer.is_in("staff"));
    assert_eq!(&*identity.credential_id, "alice:basic_auth");
    assert_eq!(identity.method, "basic_auth");
    assert!(!identity.is_anonymous);
    assert!(parts.headers.get(AUTHORIZATION).is_none());
}

#[tokio::test]
async fn recognises_a_bcrypt_password_whose_colons_belong_to_the_password() {
    let policy = policy("");
    let (flow, _, exchange) = run(&*policy, Some(&basic("bob:builder:with:colons"))).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "bob");
}

#[tokio::test]
async fn recognises_a_password_given_in_clear_through_the_hash_made_at_build() {
    let policy = policy("");
    let (flow, _, exchange) = run(&*policy, Some(&basic("carol:carol-in-clear"))).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "carol");
    let (flow, _, _) = run(&*policy, Some(&basic("carol:carol-in-CLEAR"))).await;
    assert_eq!(problem(flow).0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn accepts_the_scheme_in_any_case() {
    let policy = policy("");
    let token = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    let (flow, _, _) = run(&*policy, Some(&format!("bAsIc {token}"))).await;
    assert!(matches!(flow, Flow::Continue));
}

#[tokio::test]
async fn keeps_the_header_when_not_asked_to_hide_it() {
    let policy = policy("hide_credentials: false");
    let header = basic("alice:wonderland");
    let (flow, parts, _) = run(&*policy, Some(&header)).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(parts.headers[AUTHORIZATION], header.as_str());
}

#[tokio::test]
async fn rejects_a_request_without_credentials_with_401_and_a_basic_challenge() {
    let policy = policy("realm: reports");
    let (flow, _, exchange) = run(&*policy, None).await;
    let (status, challenge, body) = problem(flow);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge, "Basic realm=\"reports\", charset=\"UTF-8\"");
    assert_eq!(body["type"], "https://gantry.dev/problems/missing-credentials");
    assert!(exchange.identity.is_none());
}

#[tokio::test]
async fn counts_another_scheme_as_no_credentials() {
    let (flow, _, _) = run(&*policy(""), Some("Bearer abc.def.ghi")).await;
    assert_eq!(problem(flow).2["type"], "https://gantry.dev/problems/missing-credentials");
}

#[tokio::test]
async fn rejects_a_wrong_password_and_an_unknown_user_alike_without_echoing_them() {
    let policy = policy("");
    let (flow, _, _) = run(&*policy, Some(&basic("alice:not-wonderland"))).await;
    let (status, challenge, wrong_password) = problem(flow);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge, "Basic realm=\"gantry\", charset=\"UTF-8\"");
    assert_eq!(wrong_password["type"], "https://gantry.dev/problems/invalid-credentials");
    assert!(!wrong_password.to_string().contains("not-wonderland"), "{wrong_password}");

    let (flow, _, exchange) = run(&*policy, Some(&basic("mallory:wonderland"))).await;
    let (_, _, unknown_user) = problem(flow);
    assert_eq!(unknown_user, wrong_password, "the answers must not tell which user names exist");
    assert!(!unknown_user.to_string().contains("mallory"), "{unknown_user}");
    assert!(exchange.identity.is_none());
}

#[tokio::test]
async fn rejects_malformed_credentials_at_once_without_checking_a_password() {
    let policy = policy("");
    let no_colon = basic("alice-wonderland");
    for header in ["Basic %%%not-base64%%%", "Basic", no_colon.as_str()] {
        assert!(decides_at_once(&*policy, header), "{header}");
        let (flow, _, _) = run(&*policy, Some(header)).await;
        let (status, challenge, body) = problem(flow);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(challenge, "Basic realm=\"gantry\", charset=\"UTF-8\"");
        assert_eq!(body["type"], "https://gantry.dev/problems/invalid-credentials", "{header}");
        assert_eq!(body["detail"], "the Basic credentials are not the base64 of `user:password`");
    }
}

#[tokio::test]
async fn lets_the_anonymous_consumer_stand_in_for_missing_credentials_but_not_wrong_ones() {
    let policy = policy("anonymous_consumer: guest");
    let (flow, _, exchange) = run(&*policy, None).await;
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);

    let (flow, _, _) = run(&*policy, Some(&basic("alice:guess"))).await;
    assert_eq!(problem(flow).0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn answers_repeated_credentials_from_the_cache_without_another_password_check() {
    let policy = policy("");
    let good = basic("alice:wonderland");
    let bad = basic("alice:guess");
    assert!(!decides_at_once(&*policy, &good), "the first request checks the password");
    assert!(matches!(run(&*policy, Some(&good)).await.0, Flow::Continue));
    assert!(matches!(run(&*policy, Some(&bad)).await.0, Flow::Respond(_)));

    // Both outcomes are remembered: the next requests cost a lookup, and still decide the same.
    assert!(decides_at_once(&*policy, &good));
    assert!(decides_at_once(&*policy, &bad));
    let (flow, _, exchange) = run(&*policy, Some(&good)).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "alice");
    assert_eq!(problem(run(&*policy, Some(&bad)).await.0).0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn checks_every_request_when_the_cache_is_off() {
    let policy = policy("cache_ttl: 0s");
    let good = basic("alice:wonderland");
    assert!(matches!(run(&*policy, Some(&good)).await.0, Flow::Continue));
    assert!(!decides_at_once(&*policy, &good));
}

#[tokio::test]
async fn forgets_an_outcome_after_the_cache_ttl() {
    let policy = policy("cache_ttl: 50ms");
    let good = basic("alice:wonderland");
    assert!(matches!(run(&*policy, Some(&good)).await.0, Flow::Continue));
    assert!(decides_at_once(&*policy, &good));
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while decides_at_once(&*policy, &good) {
        assert!(Instant::now() < deadline, "the outcome was never forgotten");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn checks_unknown_user_names_against_a_stand_in_hash_like_the_first_consumers() {
    let bcrypt_first = format!(
        "consumers:\n  - id: bob\n    credentials: {{basic_auth: {{username: bob, password_hash: \"{}\"}}}}\n",
        *BOB_BCRYPT
    );
    let directory_config = gantry_config::load_str(&bcrypt_first).expect("config");
    let mut errors = ConfigErrors::default();
    let find = |name: &str| (name == BasicAuth::NAME).then(RegisteredPolicy::identity::<BasicAuth>);
    let directory = gantry_policy_api::ConsumerDirectory::build(&directory_config, &find, &mut errors);
    let accounts = Accounts::build(&directory.credentials::<BasicAuth>(), &mut errors);
    assert!(errors.is_empty(), "{errors}");

    assert_eq!(accounts.check(b"mallory:builder:with:colons"), None);
    let dummy = accounts.dummy.get().expect("made on first use").as_ref().expect("a stand-in hash");
    let StoredHash::Bcrypt(hash) = dummy else { panic!("the stand-in must be bcrypt like bob's hash") };
    assert_eq!(bcrypt::HashParts::from_str(hash).expect("bcrypt").get_cost(), 4);
    assert!(!dummy.matches(b"builder:with:colons"));
}

#[test]
fn reports_a_user_name_shared_by_two_consumers_once() {
    let config = "consumers:
  - id: alice
    credentials: {basic_auth: {username: shared, password: one}}
  - id: bob
    credentials: {basic_auth: {username: shared, password: two}}
";
    assert_eq!(
        errors("", config),
        ["consumers[bob].credentials.basic_auth.username: the user name `shared` is already the credential `alice:basic_auth`"]
    );
}

#[test]
fn rejects_bad_user_names_and_password_fields_at_their_path() {
    let config = "consumers:
  - id: empty
    credentials: {basic_auth: {username: \"\", password: x}}
  - id: colon
    credentials: {basic_auth: {username: \"a:b\", password: x}}
  - id: neither
    credentials: {basic_auth: {username: neither}}
  - id: both
    credentials: {basic_auth: {username: both, password: x, password_hash: \"$2b$04$abc\"}}
  - id: blank
    credentials: {basic_auth: {username: blank, password: \"\"}}
  - id: typo
    credentials: {basic_auth: {username: typo, pasword: x}}
";
    let found = errors("", config);
    for expected in [
        "consumers[empty].credentials.basic_auth.username: must not be empty",
        "consumers[colon].credentials.basic_auth.username: must not contain `:`, which ends the user name (RFC 7617 §2)",
        "consumers[neither].credentials.basic_auth.password_hash: give `password_hash` (preferred) or `password`",
        "consumers[both].credentials.basic_auth.password: give `password_hash` or `password`, not both",
        "consumers[blank].credentials.basic_auth.password: must not be empty",
    ] {
        assert!(found.contains(&expected.to_owned()), "{expected}\nnot in {found:#?}");
    }
    assert!(
        found.iter().any(|e| e.starts_with("consumers[typo].credentials.basic_auth.pasword: unknown field `pasword`")),
        "{found:#?}"
    );
}

#[test]
fn rejects_unknown_malformed_and_too_costly_hashes_without_repeating_them() {
    let md5crypt = "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/";
    let broken_argon2 = "$argon2id$v=19$m=19456,t=2,p=1$not*base64$";
    let greedy_argon2 = "$argon2id$v=19$m=1048576,t=2,p=1$c29tZXNhbHQ$7N3EYQvmJmOfdn6gBKdbeTi4+U5x4y3ntwKPyLkRlS0";
    // A valid bcrypt hash with its cost raised to 17.
    let slow_bcrypt = format!("$2b$17${}", &BOB_BCRYPT[7..]);
    let config = format!(
        "consumers:
  - id: a
    credentials: {{basic_auth: {{username: a, password_hash: \"{md5crypt}\"}}}}
  - id: b
    credentials: {{basic_auth: {{username: b, password_hash: \"{broken_argon2}\"}}}}
  - id: c
    credentials: {{basic_auth: {{username: c, password_hash: \"{greedy_argon2}\"}}}}
  - id: d
    credentials: {{basic_auth: {{username: d, password_hash: \"{slow_bcrypt}\"}}}}
"
    );
    let found = errors("", &config);
    assert_eq!(
        found,
        [
            "consumers[a].credentials.basic_auth.password_hash: must be an Argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash",
            "consumers[b].credentials.basic_auth.password_hash: is not an Argon2 PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`)",
            "consumers[c].credentials.basic_auth.password_hash: asks for more work than a request may cost: at most m=262144 (KiB), t=16, p=16",
            "consumers[d].credentials.basic_auth.password_hash: has a bcrypt cost outside 4 to 16",
        ]
    );
    for hash in [md5crypt, broken_argon2, greedy_argon2, slow_bcrypt.as_str()] {
        assert!(!found.iter().any(|error| error.contains(hash)), "{hash} leaked into {found:#?}");
    }
}

#[test]
fn rejects_an_unknown_anonymous_consumer_and_a_realm_with_a_line_break() {
    let found = errors("anonymous_consumer: nobody\nrealm: \"two\\nlines\"", &consumers());
    assert!(
        found.contains(&"global_policies[0].basic_auth.anonymous_consumer: no consumer has id `nobody`".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&"global_policies[0].basic_auth.realm: must be printable text without line breaks".to_owned()),
        "{found:?}"
    );
}

#[test]
fn rejects_a_cache_ttl_without_a_unit_at_its_path() {
    let found = errors("cache_ttl: 60", &consumers());
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].basic_auth.cache_ttl: ")), "{found:?}");
}

use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
use gantry_policy_api::{ConsumerDirectory, RegisteredPolicy};
use http::header::WWW_AUTHENTICATE;

use super::*;

const CONSUMERS: &str = "consumers:
  - id: billing-team
    groups: [billing]
    credentials:
      ldap_auth: {username: Alice}
  - id: guest
  - id: admin
";

/// A directory address where nothing listens: a test that reached it would get 503.
const NOWHERE: &str = "url: ldap://127.0.0.1:1\nbase_dn: ou=people,dc=example,dc=org\n";

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<LdapAuth>(), settings, CONSUMERS)
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<LdapAuth>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

fn has_error_at(found: &[String], path: &str) -> bool {
    found.iter().any(|error| error.starts_with(&format!("global_policies[0].ldap_auth.{path}: ")))
}

fn basic(user_and_password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_and_password))
}

fn request(authorization: Option<&str>) -> RequestParts {
    let mut builder = http::Request::get("/");
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn answer(flow: Flow) -> PolicyResponse {
    match flow {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("the request was let through"),
    }
}

fn problem_type(response: &PolicyResponse) -> String {
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    body["type"].as_str().expect("type").trim_start_matches("https://gantry.dev/problems/").to_owned()
}

/// The compiled policy itself, for the consumer mapping that needs no directory.
fn compiled(settings: serde_json::Value) -> CompiledLdapAuth {
    let spec = gantry_config::load_str(CONSUMERS).expect("consumers parse");
    let entry = RegisteredPolicy::identity::<LdapAuth>();
    let find = |name: &str| (name == entry.name).then_some(entry);
    let mut errors = ConfigErrors::default();
    let consumers = ConsumerDirectory::build(&spec, &find, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    let config: Config = serde_json::from_value(settings).expect("settings parse");
    let context = BuildContext::new(&spec, &consumers);
    LdapAuth::compile(config, &FieldPath::root(), &context).unwrap_or_else(|errors| panic!("{errors}"))
}

fn nowhere(extra: serde_json::Value) -> serde_json::Value {
    let mut settings = serde_json::json!({"url": "ldap://127.0.0.1:1", "base_dn": "ou=people,dc=example,dc=org"});
    if let (Some(settings), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        settings.extend(extra.clone());
    }
    settings
}

#[test]
fn escapes_dn_special_characters_of_the_user_name_as_rfc_4514_asks() {
    let base = "ou=people,dc=example,dc=org";
    assert_eq!(user_dn("uid", "alice", base), "uid=alice,ou=people,dc=example,dc=org");
    // A comma would otherwise end the RDN and make the rest part of the DN.
    assert_eq!(user_dn("uid", "smith, john", base), "uid=smith\\2c john,ou=people,dc=example,dc=org");
    assert_eq!(user_dn("uid", "admin,ou=services", base), "uid=admin\\2cou\\3dservices,ou=people,dc=example,dc=org");
    assert_eq!(user_dn("cn", "a+b", base), "cn=a\\2bb,ou=people,dc=example,dc=org");
    assert_eq!(user_dn("uid", "\"q\";<x>\\", base), "uid=\\22q\\22\\3b\\3cx\\3e\\5c,ou=people,dc=example,dc=org");
    // Leading `#` or space and a trailing space are escaped; inner ones need not be.
    assert_eq!(user_dn("uid", "#a b ", base), "uid=\\23a b\\20,ou=people,dc=example,dc=org");
    assert_eq!(user_dn("uid", " x", base), "uid=\\20x,ou=people,dc=example,dc=org");
    assert_eq!(user_dn("uid", "nul\0", base), "uid=nul\\00,ou=people,dc=example,dc=org");
}

#[test]
fn escapes_filter_special_characters_of_the_user_name_as_rfc_4515_asks() {
    assert_eq!(user_filter("(uid={username})", "alice"), "(uid=alice)");
    // Unescaped, `*` would match every user and `)(` would add filter terms.
    assert_eq!(user_filter("(uid={username})", "*"), "(uid=\\2a)");
    assert_eq!(
        user_filter("(&(objectClass=person)(uid={username}))", "x)(uid=*"),
        "(&(objectClass=person)(uid=x\\29\\28uid=\\2a))"
    );
    assert_eq!(user_filter("(uid={username})", "back\\slash\0"), "(uid=back\\5cslash\\00)");
    // Every occurrence is replaced.
    assert_eq!(user_filter("(|(uid={username})(mail={username}))", "a*"), "(|(uid=a\\2a)(mail=a\\2a))");
    assert!(ldap3::parse_filter(user_filter("(uid={username})", "x)(|(uid=*")).is_ok());
}

#[test]
fn reads_basic_and_ldap_credentials_and_tells_malformed_from_missing() {
    let login = |value: &str| match presented(&request(Some(value))) {
        Presented::Login(user, password) => Some((user, password)),
        _ => None,
    };
    assert_eq!(login(&basic("alice:secret")), Some(("alice".to_owned(), "secret".to_owned())));
    let ldap_scheme = format!("LDAP {}", base64::engine::general_purpose::STANDARD.encode("alice:secret"));
    assert_eq!(login(&ldap_scheme), Some(("alice".to_owned(), "secret".to_owned())));
    assert_eq!(
        login(&basic("alice:se:cret")),
        Some(("alice".to_owned(), "se:cret".to_owned())),
        "a password may hold a colon"
    );
    assert_eq!(login(&basic("alice:").replace("Basic", "basic")), Some(("alice".to_owned(), String::new())));

    assert!(matches!(presented(&request(None)), Presented::Nothing));
    assert!(matches!(presented(&request(Some("Bearer abc"))), Presented::Nothing));
    assert!(matches!(presented(&request(Some("Basic not-base64!"))), Presented::Malformed));
    assert!(matches!(presented(&request(Some(&basic("no-colon")))), Presented::Malformed));
    assert!(matches!(presented(&request(Some(&basic(":password")))), Presented::Malformed));
    let not_utf8 = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b"\xff\xfe:pw"));
    assert!(matches!(presented(&request(Some(&not_utf8))), Presented::Malformed));
}

#[test]
fn refuses_an_empty_password_without_asking_the_directory() {
    // The directory is unreachable: asking it would answer 503, not 401.
    let policy = policy(NOWHERE);
    let mut parts = request(Some(&basic("alice:")));
    let mut exchange = exchange_from("127.0.0.1:1");
    let response = answer(run_request(&*policy, &mut parts, &mut exchange));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic realm=\"gantry\"");
    assert_eq!(problem_type(&response), "invalid-credentials");
    assert!(exchange.identity.is_none());
}

#[test]
fn asks_for_credentials_with_a_basic_challenge_naming_the_realm() {
    let policy = policy(&format!("{NOWHERE}realm: intranet"));
    let mut exchange = exchange_from("127.0.0.1:1");
    let response = answer(run_request(&*policy, &mut request(None), &mut exchange));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic realm=\"intranet\"");
    assert_eq!(problem_type(&response), "missing-credentials");

    let response = answer(run_request(&*policy, &mut request(Some("Basic %%%")), &mut exchange));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&response), "invalid-credentials");
}

#[test]
fn lets_the_anonymous_consumer_stand_in_only_when_no_credentials_are_sent() {
    let policy = policy(&format!("{NOWHERE}anonymous_consumer: guest"));
    let mut parts = request(Some("Bearer some-token"));
    let mut exchange = exchange_from("127.0.0.1:1");
    assert!(matches!(run_request(&*policy, &mut parts, &mut exchange), Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);

    let mut exchange = exchange_from("127.0.0.1:1");
    let response = answer(run_request(&*policy, &mut request(Some(&basic("alice:"))), &mut exchange));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "wrong credentials are refused, not made anonymous");
}

#[tokio::test]
async fn answers_503_when_the_directory_cannot_be_reached() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let policy = policy(&format!("url: ldap://{addr}\nbase_dn: ou=people,dc=example,dc=org\ntimeout: 2s"));
    let mut parts = request(Some(&basic("alice:secret")));
    let mut exchange = exchange_from("127.0.0.1:1");
    let response = answer(policy.on_request(&mut parts, &mut exchange).resolve().await);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    assert_eq!(problem_type(&response), "ldap-unavailable");
    assert!(!String::from_utf8_lossy(response.body()).contains("secret"));
}

#[test]
fn maps_a_named_user_to_its_consumer_whatever_the_case_and_adds_directory_groups() {
    let policy = compiled(nowhere(serde_json::json!({})));
    let identity =
        policy.identity("ALICE", DirectoryUser { groups: vec!["staff".into(), "billing".into()] }).expect("mapped");
    assert_eq!(&*identity.consumer.id, "billing-team");
    assert_eq!(&*identity.credential_id, "billing-team:ldap_auth");
    assert_eq!(&*identity.consumer.groups, ["billing".to_owned(), "staff".to_owned()]);
    assert_eq!(identity.method, "ldap_auth");
}

#[test]
fn admits_an_unnamed_user_as_a_consumer_of_its_own_unless_a_consumer_is_required() {
    let policy = compiled(nowhere(serde_json::json!({})));
    let identity = policy.identity("Bob", DirectoryUser { groups: vec!["staff".into()] }).expect("ad-hoc");
    assert_eq!(&*identity.consumer.id, "bob");
    assert_eq!(&*identity.credential_id, "bob");
    assert!(identity.consumer.is_in("staff"));

    let strict = compiled(nowhere(serde_json::json!({"require_consumer": true})));
    let refused = strict.identity("bob", DirectoryUser { groups: Vec::new() }).expect_err("no consumer names bob");
    assert_eq!(refused, Unmapped::NotAConsumer);
    let refused = refused.response();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&refused), "unknown-consumer");
}

#[test]
fn refuses_a_directory_user_named_like_a_consumer_that_does_not_name_it() {
    let policy = compiled(nowhere(serde_json::json!({})));
    let refused = policy.identity("Admin", DirectoryUser { groups: Vec::new() }).expect_err("admin is a consumer id");
    assert_eq!(refused, Unmapped::TakenId);
    let refused = refused.response();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_type(&refused), "unknown-consumer");
}

#[test]
fn keys_the_cache_by_user_and_password_without_keeping_either() {
    let policy = compiled(nowhere(serde_json::json!({})));
    let key = policy.cache_key("alice", "secret");
    assert_eq!(key, policy.cache_key("alice", "secret"));
    assert_ne!(key, policy.cache_key("alice", "Secret"));
    assert_ne!(policy.cache_key("ab", "c"), policy.cache_key("a", "bc"), "the name's length separates the parts");
    // Another instance has another salt.
    assert_ne!(key, compiled(nowhere(serde_json::json!({}))).cache_key("alice", "secret"));
}

#[test]
fn applies_the_documented_defaults() {
    let config: Config = serde_json::from_value(nowhere(serde_json::json!({}))).expect("parse");
    assert_eq!(config.uid_attribute, "uid");
    assert_eq!(config.timeout, gantry_config::Duration::from_secs(5));
    assert_eq!(config.pool_size, 8);
    assert_eq!(config.cache_ttl, gantry_config::Duration::from_secs(60));
    assert_eq!(config.cache_entries, 10_000);
    assert_eq!(config.realm, "gantry");
    assert!(config.hide_credentials);
    assert!(!config.start_tls);
    assert!(!config.require_consumer);
    assert!(config.bind_dn.is_none() && config.search_filter.is_none() && config.groups_attribute.is_none());
}

#[test]
fn accepts_search_then_bind_settings() {
    policy(
        "url: ldaps://ldap.example.org:636
base_dn: dc=example,dc=org
bind_dn: cn=gateway,dc=example,dc=org
bind_password: service-secret
search_filter: \"(&(objectClass=person)(mail={username}))\"
groups_attribute: memberOf
cache_ttl: 0s",
    );
}

#[test]
fn rejects_bad_urls_and_ldaps_with_start_tls() {
    for url in ["http://ldap.example.org", "ldap://", "ldap.example.org", "ldap://host/dc=x"] {
        let found = errors(&format!("url: \"{url}\"\nbase_dn: dc=example,dc=org"), CONSUMERS);
        assert!(has_error_at(&found, "url"), "{url}: {found:?}");
    }
    let found = errors("url: ldaps://ldap.example.org\nbase_dn: dc=example,dc=org\nstart_tls: true", CONSUMERS);
    assert!(has_error_at(&found, "start_tls"), "{found:?}");
}

#[test]
fn rejects_incomplete_service_account_settings() {
    let found = errors(&format!("{NOWHERE}bind_dn: cn=gateway,dc=example,dc=org"), CONSUMERS);
    assert!(
        found.contains(&"global_policies[0].ldap_auth.bind_password: is required with `bind_dn`".to_owned()),
        "{found:?}"
    );

    let found = errors(&format!("{NOWHERE}bind_dn: cn=gateway,dc=example,dc=org\nbind_password: \"\""), CONSUMERS);
    assert!(found.contains(&"global_policies[0].ldap_auth.bind_password: must not be empty".to_owned()), "{found:?}");

    let found = errors(&format!("{NOWHERE}bind_password: lonely-secret"), CONSUMERS);
    assert!(has_error_at(&found, "bind_password"), "{found:?}");
    assert!(!found.iter().any(|error| error.contains("lonely-secret")), "the secret is repeated: {found:?}");

    let found = errors(&format!("{NOWHERE}search_filter: \"(uid={{username}})\""), CONSUMERS);
    assert!(has_error_at(&found, "search_filter"), "a search without a service account: {found:?}");
}

#[test]
fn rejects_search_filters_without_the_user_name_or_that_do_not_parse() {
    let account = "bind_dn: cn=gateway,dc=example,dc=org\nbind_password: service-secret\n";
    let found = errors(&format!("{NOWHERE}{account}search_filter: \"(uid=alice)\""), CONSUMERS);
    assert!(
        found.contains(&"global_policies[0].ldap_auth.search_filter: must contain `{username}`".to_owned()),
        "{found:?}"
    );
    let found = errors(&format!("{NOWHERE}{account}search_filter: \"(uid={{username}}\""), CONSUMERS);
    assert!(has_error_at(&found, "search_filter"), "{found:?}");
}

#[test]
fn rejects_bad_attribute_names_limits_and_realms() {
    let found = errors(
        &format!("{NOWHERE}uid_attribute: \"uid=x\"\ngroups_attribute: \"member of\"\npool_size: 0\ntimeout: 0s\nrealm: \"a\\nb\""),
        CONSUMERS,
    );
    for path in ["uid_attribute", "groups_attribute", "pool_size", "timeout", "realm"] {
        assert!(has_error_at(&found, path), "{path}: {found:?}");
    }
    assert!(errors("url: ldap://h\nbase_dn: \"\"", CONSUMERS)
        .contains(&"global_policies[0].ldap_auth.base_dn: must not be empty".to_owned()));
    // Numeric OIDs are attribute names too.
    policy(&format!("{NOWHERE}groups_attribute: 1.2.840.113556.1.2.102"));
}

#[test]
fn rejects_an_unreadable_ca_file_and_an_unknown_anonymous_consumer() {
    let found = errors(&format!("{NOWHERE}ca_file: /nonexistent/ca.pem\nanonymous_consumer: nobody"), CONSUMERS);
    assert!(has_error_at(&found, "ca_file"), "{found:?}");
    assert!(
        found.contains(&"global_policies[0].ldap_auth.anonymous_consumer: no consumer has id `nobody`".to_owned()),
        "{found:?}"
    );
}

#[test]
fn rejects_a_user_named_by_two_consumers_whatever_the_case_and_empty_names() {
    let config = "consumers:
  - id: one
    credentials: {ldap_auth: {username: alice}}
  - id: two
    credentials: {ldap_auth: {username: ALICE}}
  - id: three
    credentials: {ldap_auth: {username: \"\"}}
";
    let found = errors(NOWHERE, config);
    assert!(
        found.contains(
            &"consumers[two].credentials.ldap_auth.username: the same user is already the credential `one:ldap_auth`"
                .to_owned()
        ),
        "{found:?}"
    );
    assert!(
        found.contains(&"consumers[three].credentials.ldap_auth.username: must not be empty".to_owned()),
        "{found:?}"
    );
}

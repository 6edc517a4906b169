use std::io::Read;
use std::time::{Duration, SystemTime};

use gantry_config::GatewaySpec;
use gantry_policy_api::testing::{build_policy_error, exchange_from, policy_path, request_parts, run_request};
use gantry_policy_api::{ConsumerDirectory, RegisteredPolicy};
use http::header::COOKIE;
use serde_json::json;

use super::*;

pub(crate) mod fixtures;

use fixtures::{idp, stranger, Facts, IDP_ENTITY_ID, IDP_SSO_URL, SP_ENTITY_ID};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn settings() -> serde_json::Value {
    json!({
        "idp_entity_id": IDP_ENTITY_ID,
        "idp_sso_url": IDP_SSO_URL,
        "idp_certificates": [idp().certificate_pem],
        "sp_entity_id": SP_ENTITY_ID,
        "base_url": "https://app.test",
        "session_secret": SECRET,
        "attribute_for_groups": "memberOf",
        "logout_path": "/logout",
    })
}

fn compiled_with(settings: serde_json::Value, consumers_yaml: &str) -> CompiledSaml {
    let config: Config = serde_json::from_value(settings).expect("settings parse");
    let spec = if consumers_yaml.is_empty() {
        GatewaySpec::default()
    } else {
        gantry_config::load_str(consumers_yaml).expect("consumers parse")
    };
    let mut errors = ConfigErrors::default();
    let consumers = ConsumerDirectory::build(&spec, &|_| None, &mut errors);
    let context = BuildContext::new(&spec, &consumers);
    match compile(config, &policy_path("saml"), &context) {
        Ok(policy) => policy,
        Err(errors) => panic!("settings rejected: {errors:?}"),
    }
}

fn compiled() -> CompiledSaml {
    compiled_with(settings(), "")
}

fn get(uri: &str, cookie: Option<&str>) -> RequestParts {
    let mut builder = http::Request::get(uri).header(HOST, "app.test");
    if let Some(cookie) = cookie {
        builder = builder.header(COOKIE, cookie);
    }
    request_parts(builder.body(()).expect("request"))
}

/// What the gateway handed the browser when it sent it to the IdP.
struct Login {
    request_id: String,
    relay_state: String,
    pending_cookie: String,
}

fn set_cookies(response: &PolicyResponse) -> Vec<String> {
    response.headers().get_all(SET_COOKIE).iter().map(|value| value.to_str().expect("ascii").to_owned()).collect()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().expect("name=value").to_owned()
}

fn answered(flow: Flow) -> PolicyResponse {
    match flow {
        Flow::Respond(response) => response,
        Flow::Continue => panic!("expected an answer, the request went on"),
    }
}

fn start_login(policy: &CompiledSaml, uri: &str) -> Login {
    let response = answered(run_request(policy, &mut get(uri, None), &mut exchange_from("192.0.2.1:5000")));
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()[LOCATION].to_str().expect("ascii").to_owned();
    let query = location.strip_prefix(&format!("{IDP_SSO_URL}?")).expect("sent to the IdP's SSO URL");
    let pairs: HashMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let deflated = STANDARD.decode(&pairs["SAMLRequest"]).expect("base64");
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..]).read_to_string(&mut xml).expect("raw deflate");
    let document = xml::parse_untrusted(&xml).expect("AuthnRequest is XML");
    let root = document.document_element().expect("root");
    assert!(document.element(root).expect("element").matches_name_ns(xml::PROTOCOL_NS, "AuthnRequest"));
    assert_eq!(document.get_attribute(root, "AssertionConsumerServiceURL"), Some(fixtures::ACS_URL));
    assert_eq!(document.get_attribute(root, "Destination"), Some(IDP_SSO_URL));
    assert!(document.get_attribute(root, "IssueInstant").and_then(response::instant).is_some());
    let issuer = document.first_child_element_by_name_ns(root, xml::ASSERTION_NS, "Issuer").expect("Issuer");
    assert_eq!(xml::text(&document, issuer), SP_ENTITY_ID);
    let pending = set_cookies(&response)
        .into_iter()
        .find(|cookie| cookie.starts_with("gantry_saml_request="))
        .expect("pending-login cookie");
    assert!(
        pending.contains("Path=/saml/acs") && pending.contains("HttpOnly") && pending.contains("Secure; SameSite=None"),
        "{pending}"
    );
    Login {
        request_id: document.get_attribute(root, "ID").expect("ID").to_owned(),
        relay_state: pairs["RelayState"].clone(),
        pending_cookie: cookie_pair(&pending),
    }
}

fn post_response(policy: &CompiledSaml, login: &Login, xml: &str, relay_state: &str) -> PolicyResponse {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &STANDARD.encode(xml))
        .append_pair("RelayState", relay_state)
        .finish();
    let request = request_parts(
        http::Request::post("/saml/acs")
            .header(HOST, "app.test")
            .header(COOKIE, &login.pending_cookie)
            .body(())
            .expect("request"),
    );
    policy.consume(form.as_bytes(), &request, true, SystemTime::now())
}

fn detail(response: &PolicyResponse) -> String {
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem JSON");
    body["detail"].as_str().unwrap_or_default().to_owned()
}

fn assert_refused(response: &PolicyResponse, reason: &str) {
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "refused: {}", detail(response));
    assert!(set_cookies(response).iter().all(|cookie| !cookie.starts_with("gantry_saml=")), "no session on refusal");
    let detail = detail(response);
    assert!(detail.contains(reason), "detail `{detail}` should say `{reason}`");
}

/// Logs in with `xml` (made for the login's request id) and gives the session cookie.
fn session_cookie(policy: &CompiledSaml, login: &Login, xml: &str) -> String {
    let response = post_response(policy, login, xml, &login.relay_state);
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "accepted: {}", detail(&response));
    let session =
        set_cookies(&response).into_iter().find(|cookie| cookie.starts_with("gantry_saml=")).expect("session cookie");
    cookie_pair(&session)
}

// ---- the browser flow ----

#[test]
fn sends_a_browser_without_a_session_to_the_idp_with_an_authn_request() {
    let login = start_login(&compiled(), "/orders?page=2");
    assert!(login.request_id.starts_with('_'));
    assert!(!login.relay_state.contains("orders"), "the return path is sealed, not readable");
}

#[test]
fn accepts_a_response_with_a_signed_assertion_and_returns_to_the_original_path() {
    let policy = compiled();
    let login = start_login(&policy, "/orders?page=2");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp());
    let response = post_response(&policy, &login, &xml, &login.relay_state);
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{}", detail(&response));
    assert_eq!(response.headers()[LOCATION], "/orders?page=2");
    let cookies = set_cookies(&response);
    let session = cookies.iter().find(|cookie| cookie.starts_with("gantry_saml=")).expect("session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax") && session.contains("Secure"),
        "{session}"
    );
    assert!(session.contains("Max-Age=28800"), "the session lasts session_ttl: {session}");
    assert!(cookies.iter().any(|cookie| cookie.starts_with("gantry_saml_request=;") && cookie.contains("Max-Age=0")));
}

#[test]
fn accepts_a_response_signed_as_a_whole() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = fixtures::response_signed_response(&Facts::valid(&login.request_id), idp());
    session_cookie(&policy, &login, &xml);
}

#[test]
fn lets_a_request_with_a_session_through_as_the_asserted_consumer_with_its_groups() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let session =
        session_cookie(&policy, &login, &fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp()));
    let mut request = get("/orders", Some(&format!("theme=dark; {session}")));
    let mut exchange = exchange_from("192.0.2.1:5000");
    assert!(matches!(run_request(&policy, &mut request, &mut exchange), Flow::Continue));
    let identity = exchange.identity.expect("authenticated");
    assert_eq!(&*identity.consumer.id, "alice");
    assert_eq!(&*identity.consumer.groups, &["staff".to_owned(), "admins".to_owned()]);
    assert_eq!(&*identity.credential_id, "alice:saml");
    assert_eq!(identity.method, "saml");
    assert_eq!(request.headers[COOKIE], "theme=dark", "the session cookie stays at the gateway");
}

#[test]
fn uses_a_configured_consumer_of_that_id_adding_the_asserted_groups() {
    let policy = compiled_with(settings(), "consumers:\n  - id: alice\n    groups: [staff, billing]\n");
    let login = start_login(&policy, "/");
    let session =
        session_cookie(&policy, &login, &fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp()));
    let mut exchange = exchange_from("192.0.2.1:5000");
    run_request(&policy, &mut get("/", Some(&session)), &mut exchange);
    let consumer = exchange.consumer().expect("authenticated").clone();
    assert_eq!(&*consumer.groups, &["staff".to_owned(), "billing".to_owned(), "admins".to_owned()]);
}

#[test]
fn takes_the_consumer_id_from_the_configured_attribute() {
    let mut settings = settings();
    settings["attribute_for_consumer"] = json!("uid");
    let policy = compiled_with(settings, "");
    let login = start_login(&policy, "/");
    let mut facts = Facts::valid(&login.request_id);
    facts.name_id = "bob".to_owned();
    let session = session_cookie(&policy, &login, &fixtures::assertion_signed_response(&facts, idp()));
    let mut exchange = exchange_from("192.0.2.1:5000");
    run_request(&policy, &mut get("/", Some(&session)), &mut exchange);
    assert_eq!(exchange.consumer().map(|consumer| &*consumer.id), Some("bob"));
}

#[test]
fn ends_the_session_at_the_idps_session_not_on_or_after_when_sooner() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let mut facts = Facts::valid(&login.request_id);
    facts.session_not_on_or_after = Some(SystemTime::now() + Duration::from_secs(600));
    let response =
        post_response(&policy, &login, &fixtures::assertion_signed_response(&facts, idp()), &login.relay_state);
    let session =
        set_cookies(&response).into_iter().find(|cookie| cookie.starts_with("gantry_saml=")).expect("session");
    let max_age: u64 = session
        .split("Max-Age=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|age| age.parse().ok())
        .expect("Max-Age");
    assert!((598..=600).contains(&max_age), "{session}");
}

#[test]
fn redirects_again_when_the_session_cookie_is_altered_or_sealed_by_another_secret() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let session =
        session_cookie(&policy, &login, &fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp()));
    // A character in the middle: the last one may only carry padding bits, and may already
    // be the replacement.
    let mut altered = session.clone().into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ASCII cookie");
    let response = answered(run_request(&policy, &mut get("/", Some(&altered)), &mut exchange_from("192.0.2.1:5000")));
    assert_eq!(response.status(), StatusCode::FOUND);
    let mut other = settings();
    other["session_secret"] = json!("another secret that is 32 bytes long!!");
    let response = answered(run_request(
        &compiled_with(other, ""),
        &mut get("/", Some(&session)),
        &mut exchange_from("192.0.2.1:5000"),
    ));
    assert_eq!(response.status(), StatusCode::FOUND);
}

#[test]
fn refuses_an_expired_session() {
    let policy = compiled();
    let expired = Session { sub: "alice".to_owned(), groups: Vec::new(), exp: unix_seconds(SystemTime::now()) - 1 };
    let sealed =
        policy.sealer.seal(Purpose::Session, &serde_json::to_vec(&expired).expect("json"), b"").expect("sealed");
    let response = answered(run_request(
        &policy,
        &mut get("/", Some(&format!("gantry_saml={sealed}"))),
        &mut exchange_from("192.0.2.1:5000"),
    ));
    assert_eq!(response.status(), StatusCode::FOUND);
}

#[test]
fn answers_401_to_a_non_get_request_without_a_session() {
    let request = http::Request::post("/orders").header(HOST, "app.test").body(()).expect("request");
    let response =
        answered(run_request(&compiled(), &mut request_parts(request), &mut exchange_from("192.0.2.1:5000")));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[http::header::WWW_AUTHENTICATE], "SAML");
}

#[test]
fn answers_405_to_a_get_on_the_assertion_consumer_service() {
    let response =
        answered(run_request(&compiled(), &mut get("/saml/acs", None), &mut exchange_from("192.0.2.1:5000")));
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[http::header::ALLOW], "POST");
}

#[test]
fn logout_clears_the_session_cookie() {
    let response = answered(run_request(
        &compiled(),
        &mut get("/logout", Some("gantry_saml=x")),
        &mut exchange_from("192.0.2.1:5000"),
    ));
    assert_eq!(response.status(), StatusCode::OK);
    let cookies = set_cookies(&response);
    assert!(
        cookies.iter().any(|cookie| cookie.starts_with("gantry_saml=;") && cookie.contains("Max-Age=0")),
        "{cookies:?}"
    );
}

#[test]
fn builds_the_acs_url_from_the_request_without_base_url() {
    let mut settings = settings();
    settings.as_object_mut().expect("object").remove("base_url");
    let policy = compiled_with(settings, "");
    let request = get("/", None);
    assert_eq!(policy.acs_url(&request, false).as_deref(), Some("http://app.test/saml/acs"));
    assert_eq!(policy.acs_url(&request, true).as_deref(), Some("https://app.test/saml/acs"));
}

// ---- where the browser is sent back ----

#[test]
fn sends_the_browser_to_the_root_when_the_relay_state_is_forged_or_from_another_login() {
    let policy = compiled();
    let first = start_login(&policy, "/first");
    let second = start_login(&policy, "/second");
    for relay_state in ["https://evil.example/", "//evil.example/", "/plain-but-unsealed", &first.relay_state] {
        let xml = fixtures::assertion_signed_response(&Facts::valid(&second.request_id), idp());
        let response = post_response(&policy, &second, &xml, relay_state);
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{}", detail(&response));
        assert_eq!(response.headers()[LOCATION], "/", "relay state {relay_state}");
    }
}

#[test]
fn accepts_only_same_origin_paths_as_return_targets() {
    assert!(is_local_path("/orders?x=1"));
    for path in ["//evil.example", "/\\evil.example", "https://evil.example", "orders", "/a\nb"] {
        assert!(!is_local_path(path), "{path:?}");
    }
}

// ---- refused responses ----

fn refused_with(change: impl FnOnce(&mut Facts), reason: &str) {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let mut facts = Facts::valid(&login.request_id);
    change(&mut facts);
    assert_refused(
        &post_response(&policy, &login, &fixtures::assertion_signed_response(&facts, idp()), &login.relay_state),
        reason,
    );
}

#[test]
fn refuses_an_assertion_for_another_audience() {
    refused_with(|facts| facts.audience = "https://other.test/saml".to_owned(), "another audience");
}

#[test]
fn refuses_an_expired_assertion() {
    refused_with(
        |facts| {
            facts.not_before = SystemTime::now() - Duration::from_secs(900);
            facts.not_on_or_after = SystemTime::now() - Duration::from_secs(120);
        },
        "expired",
    );
}

#[test]
fn accepts_an_assertion_expired_within_the_allowed_clock_skew() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let mut facts = Facts::valid(&login.request_id);
    facts.not_on_or_after = SystemTime::now() - Duration::from_secs(30);
    session_cookie(&policy, &login, &fixtures::assertion_signed_response(&facts, idp()));
}

#[test]
fn refuses_an_assertion_not_valid_yet() {
    refused_with(|facts| facts.not_before = SystemTime::now() + Duration::from_secs(600), "not valid yet");
}

#[test]
fn refuses_an_assertion_for_another_recipient() {
    refused_with(|facts| facts.recipient = "https://evil.test/acs".to_owned(), "Recipient");
}

#[test]
fn refuses_a_response_for_another_destination() {
    refused_with(|facts| facts.destination = "https://evil.test/acs".to_owned(), "Destination");
}

#[test]
fn refuses_an_assertion_from_another_issuer() {
    refused_with(|facts| facts.issuer = "https://evil.test/idp".to_owned(), "Issuer");
}

#[test]
fn refuses_a_response_answering_another_login_request() {
    refused_with(|facts| facts.in_response_to = "_someone-elses-request".to_owned(), "another login request");
}

#[test]
fn refuses_a_response_without_success_status() {
    refused_with(
        |facts| facts.status = "urn:oasis:names:tc:SAML:2.0:status:Requester".to_owned(),
        "the identity provider answered Requester",
    );
}

#[test]
fn refuses_an_unsigned_response() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let facts = Facts::valid(&login.request_id);
    let xml = fixtures::response(&facts, &fixtures::assertion(&facts, false), false);
    assert_refused(&post_response(&policy, &login, &xml, &login.relay_state), "not signed");
}

#[test]
fn refuses_a_response_signed_by_another_key() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&login.request_id), stranger());
    assert_refused(&post_response(&policy, &login, &xml, &login.relay_state), "signature is not valid");
}

#[test]
fn refuses_an_assertion_changed_after_signing() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp())
        .replace(">alice</saml:NameID>", ">admin</saml:NameID>");
    assert_refused(&post_response(&policy, &login, &xml, &login.relay_state), "signature is not valid");
}

#[test]
fn refuses_a_replayed_response_once_the_login_is_used_up() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp());
    session_cookie(&policy, &login, &xml);
    // The browser dropped the pending-login cookie (Max-Age=0); a replay comes without it.
    let replay = Login { pending_cookie: "other=1".to_owned(), ..login };
    assert_refused(&post_response(&policy, &replay, &xml, &replay.relay_state), "no login was started");
}

#[test]
fn refuses_a_response_posted_with_another_logins_cookie() {
    let policy = compiled();
    let victim = start_login(&policy, "/");
    let attacker = start_login(&policy, "/");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&attacker.request_id), idp());
    assert_refused(&post_response(&policy, &victim, &xml, &victim.relay_state), "another login request");
}

#[test]
fn refuses_a_response_with_a_document_type_declaration() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp());
    let with_xxe =
        format!(r#"<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>{}"#, xml.replacen(">alice<", ">&x;<", 1));
    assert_refused(&post_response(&policy, &login, &with_xxe, &login.relay_state), "without a DTD");
    let laughs = format!(
        r#"<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>{}"#,
        xml
    );
    assert_refused(&post_response(&policy, &login, &laughs, &login.relay_state), "without a DTD");
}

#[test]
fn refuses_a_signature_naming_sha1() {
    // The signing backend here cannot make SHA-1 signatures, so the algorithms are renamed
    // after signing: the policy refuses by algorithm before any signature is checked.
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp())
        .replace("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256", "http://www.w3.org/2000/09/xmldsig#rsa-sha1")
        .replace("http://www.w3.org/2001/04/xmlenc#sha256", "http://www.w3.org/2000/09/xmldsig#sha1");
    assert_refused(&post_response(&policy, &login, &xml, &login.relay_state), "SHA-1 signatures are refused");
}

#[test]
fn refuses_an_encrypted_assertion() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let facts = Facts::valid(&login.request_id);
    let xml = fixtures::response(&facts, "<saml:EncryptedAssertion><xenc:EncryptedData xmlns:xenc=\"http://www.w3.org/2001/04/xmlenc#\"/></saml:EncryptedAssertion>", false);
    assert_refused(&post_response(&policy, &login, &xml, &login.relay_state), "encrypted assertions are not supported");
}

#[test]
fn refuses_a_form_without_saml_response_with_400() {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let request = request_parts(
        http::Request::post("/saml/acs").header(COOKIE, &login.pending_cookie).body(()).expect("request"),
    );
    let response = policy.consume(b"RelayState=x", &request, true, SystemTime::now());
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn reads_the_whole_name_id_when_a_comment_splits_it() {
    // CVE-2017-11427: canonicalization drops comments, so `alice<!---->.evil` is signed as
    // `alice.evil`; reading only the first text node would log in as `alice`.
    let policy = compiled();
    let login = start_login(&policy, "/");
    let mut facts = Facts::valid(&login.request_id);
    facts.name_id = "alice<!-- -->.evil.example".to_owned();
    let session = session_cookie(&policy, &login, &fixtures::assertion_signed_response(&facts, idp()));
    let mut exchange = exchange_from("192.0.2.1:5000");
    run_request(&policy, &mut get("/", Some(&session)), &mut exchange);
    assert_eq!(exchange.consumer().map(|consumer| &*consumer.id), Some("alice.evil.example"));
}

// ---- XML signature wrapping (the XSW attacks of Somorovsky et al., "On Breaking SAML") ----

/// The signature element of `signed` (a signed assertion or response).
fn signature_of(signed: &str) -> &str {
    let start = signed.find("<ds:Signature").expect("a signature");
    let end = signed.find("</ds:Signature>").expect("its end") + "</ds:Signature>".len();
    &signed[start..end]
}

fn evil_facts(request_id: &str) -> Facts {
    let mut facts = Facts::valid(request_id);
    facts.assertion_id = "_evil".to_owned();
    facts.response_id = "_evil_response".to_owned();
    facts.name_id = "admin".to_owned();
    facts
}

fn assert_wrapping_refused(build: impl FnOnce(&str) -> String) {
    let policy = compiled();
    let login = start_login(&policy, "/");
    let xml = build(&login.request_id);
    let response = post_response(&policy, &login, &xml, &login.relay_state);
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "wrapped response accepted: {xml}");
    let detail = detail(&response);
    eprintln!("refused: {detail}");
    assert!(!detail.contains("well-formed"), "refused for its wrapping, not its syntax: {detail}");
    assert!(set_cookies(&response).iter().all(|cookie| !cookie.starts_with("gantry_saml=")));
}

#[test]
fn refuses_xsw1_a_signed_response_moved_into_the_signature_of_an_evil_one() {
    assert_wrapping_refused(|request_id| {
        let good = fixtures::response_signed_response(&Facts::valid(request_id), idp());
        let evil = evil_facts(request_id);
        let signature =
            signature_of(&good).replace("</ds:Signature>", &format!("<ds:Object>{good}</ds:Object></ds:Signature>"));
        fixtures::response(&evil, &fixtures::assertion(&evil, false), false).replacen(
            "</saml:Issuer>",
            &format!("</saml:Issuer>{signature}"),
            1,
        )
    });
}

#[test]
fn refuses_xsw2_a_signed_response_placed_beside_the_signature_of_an_evil_one() {
    assert_wrapping_refused(|request_id| {
        let good = fixtures::response_signed_response(&Facts::valid(request_id), idp());
        let evil = evil_facts(request_id);
        let detached = format!("{good}{}", signature_of(&good));
        fixtures::response(&evil, &fixtures::assertion(&evil, false), false).replacen(
            "</saml:Issuer>",
            &format!("</saml:Issuer>{detached}"),
            1,
        )
    });
}

#[test]
fn refuses_xsw3_an_evil_assertion_before_the_signed_one() {
    assert_wrapping_refused(|request_id| {
        let facts = Facts::valid(request_id);
        let evil = evil_facts(request_id);
        let assertions = format!("{}{}", fixtures::assertion(&evil, false), fixtures::signed_assertion(&facts, idp()));
        fixtures::response(&facts, &assertions, false)
    });
}

#[test]
fn refuses_xsw4_the_signed_assertion_wrapped_inside_an_evil_one() {
    assert_wrapping_refused(|request_id| {
        let facts = Facts::valid(request_id);
        let evil = evil_facts(request_id);
        let good = fixtures::signed_assertion(&facts, idp());
        let wrapper =
            fixtures::assertion(&evil, false).replace("</saml:Assertion>", &format!("{good}</saml:Assertion>"));
        fixtures::response(&facts, &wrapper, false)
    });
}

#[test]
fn refuses_xsw5_an_evil_assertion_carrying_the_signature_of_a_moved_signed_one() {
    assert_wrapping_refused(|request_id| {
        let facts = Facts::valid(request_id);
        let good = fixtures::signed_assertion(&facts, idp());
        // Same id as the signed one, which bergshamra refuses outright; a different id is
        // refused because the signature then covers an element it is not in.
        let mut evil = evil_facts(request_id);
        evil.assertion_id = facts.assertion_id.clone();
        let evil_with_signature = fixtures::assertion(&evil, false).replacen(
            "</saml:Issuer>",
            &format!("</saml:Issuer>{}", signature_of(&good)),
            1,
        );
        let unsigned_good = good.replace(signature_of(&good), "");
        fixtures::response(&facts, &format!("{evil_with_signature}{unsigned_good}"), false)
    });
}

#[test]
fn refuses_xsw7_the_signed_assertion_hidden_in_extensions() {
    assert_wrapping_refused(|request_id| {
        let facts = Facts::valid(request_id);
        let evil = evil_facts(request_id);
        let good = fixtures::signed_assertion(&facts, idp());
        fixtures::response(&facts, &fixtures::assertion(&evil, false), false).replacen(
            "<samlp:Status>",
            &format!("<samlp:Extensions>{good}</samlp:Extensions><samlp:Status>"),
            1,
        )
    });
}

#[test]
fn refuses_xsw8_the_signed_assertion_inside_the_evil_assertions_signature_object() {
    assert_wrapping_refused(|request_id| {
        let facts = Facts::valid(request_id);
        let evil = evil_facts(request_id);
        let good = fixtures::signed_assertion(&facts, idp());
        let unsigned_good = good.replace(signature_of(&good), "");
        let signature = signature_of(&good)
            .replace("</ds:Signature>", &format!("<ds:Object>{unsigned_good}</ds:Object></ds:Signature>"));
        let evil_assertion =
            fixtures::assertion(&evil, false).replacen("</saml:Issuer>", &format!("</saml:Issuer>{signature}"), 1);
        fixtures::response(&facts, &evil_assertion, false)
    });
}

#[test]
fn refuses_a_signed_response_whose_assertion_was_swapped() {
    assert_wrapping_refused(|request_id| {
        let good = fixtures::response_signed_response(&Facts::valid(request_id), idp());
        let evil = evil_facts(request_id);
        let start = good.find("<saml:Assertion").expect("assertion");
        let end = good.find("</saml:Assertion>").expect("end") + "</saml:Assertion>".len();
        format!("{}{}{}", &good[..start], fixtures::assertion(&evil, false), &good[end..])
    });
}

#[test]
fn refuses_a_signature_outside_the_element_it_signs() {
    // bergshamra's strict mode allows a reference to a sibling of the signature; the policy
    // counts a signature only for the element it is enveloped in.
    assert_wrapping_refused(|request_id| {
        let facts = Facts::valid(request_id);
        let good = fixtures::signed_assertion(&facts, idp());
        let signature = signature_of(&good).to_owned();
        let unsigned = good.replace(&signature, "");
        fixtures::response(&facts, &unsigned, false).replacen(
            "<samlp:Status>",
            &format!("{signature}<samlp:Status>"),
            1,
        )
    });
}

// ---- settings ----

fn saml_entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Saml>()
}

fn yaml_settings(extra: &str) -> String {
    let certificate = idp().certificate_pem.replace('\n', "\n    ");
    format!(
        "idp_entity_id: {IDP_ENTITY_ID}\nidp_sso_url: {IDP_SSO_URL}\nidp_certificates:\n  - |\n    {certificate}\nsp_entity_id: {SP_ENTITY_ID}\nsession_secret: {SECRET}\n{extra}"
    )
}

#[test]
fn builds_from_explicit_idp_settings_with_defaults() {
    let config: Config = serde_json::from_value(settings()).expect("settings");
    assert_eq!(config.acs_path, "/saml/acs");
    assert_eq!(config.cookie_name, "gantry_saml");
    assert_eq!(config.session_ttl, gantry_config::Duration::from_secs(8 * 3600));
    assert_eq!(config.allowed_clock_skew, gantry_config::Duration::from_secs(60));
    gantry_policy_api::testing::build_policy(saml_entry(), &yaml_settings(""))
        .map(|_| ())
        .unwrap_or_else(|errors| panic!("{errors:?}"));
}

#[test]
fn builds_from_inline_metadata_and_from_a_metadata_file() {
    let metadata = format!(
        r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{IDP_ENTITY_ID}"><md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"><md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor><md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{IDP_SSO_URL}"/></md:IDPSSODescriptor></md:EntityDescriptor>"#,
        STANDARD.encode(&idp().certificate_der)
    );
    let inline = json!({"idp_metadata": metadata, "sp_entity_id": SP_ENTITY_ID, "session_secret": SECRET, "base_url": "https://app.test"});
    let policy = compiled_with(inline, "");
    assert_eq!(policy.idp_entity_id, IDP_ENTITY_ID);
    assert_eq!(policy.idp_sso_url, IDP_SSO_URL);
    let login = start_login(&policy, "/");
    session_cookie(&policy, &login, &fixtures::assertion_signed_response(&Facts::valid(&login.request_id), idp()));

    let directory = tempfile_dir();
    let file = directory.join("idp.xml");
    std::fs::write(&file, &metadata).expect("write metadata");
    let from_file =
        json!({"idp_metadata": file.to_string_lossy(), "sp_entity_id": SP_ENTITY_ID, "session_secret": SECRET});
    assert_eq!(compiled_with(from_file, "").idp_sso_url, IDP_SSO_URL);
    std::fs::remove_dir_all(directory).ok();
}

fn tempfile_dir() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "gantry-saml-test-{}-{}",
        std::process::id(),
        request::new_request_id().expect("random")
    ));
    std::fs::create_dir_all(&directory).expect("temp dir");
    directory
}

#[test]
fn rejects_settings_without_an_idp_naming_each_missing_field() {
    let errors = build_policy_error(saml_entry(), &format!("sp_entity_id: {SP_ENTITY_ID}\nsession_secret: {SECRET}\n"));
    let text = errors.to_string();
    for field in ["idp_entity_id", "idp_sso_url", "idp_certificates"] {
        assert!(text.contains(&format!("global_policies[0].saml.{field}")), "{field} in {text}");
    }
}

#[test]
fn rejects_a_short_session_secret_a_bad_path_and_a_broken_certificate() {
    let errors = build_policy_error(
        saml_entry(),
        &format!(
            "idp_entity_id: {IDP_ENTITY_ID}\nidp_sso_url: {IDP_SSO_URL}\nidp_certificates: [bm90IGEgY2VydA==]\nsp_entity_id: {SP_ENTITY_ID}\nsession_secret: short\nacs_path: saml/acs\nbase_url: https://app.test/path\n"
        ),
    );
    let text = errors.to_string();
    for path in ["saml.session_secret", "saml.acs_path", "saml.idp_certificates[0]", "saml.base_url"] {
        assert!(text.contains(path), "{path} in {text}");
    }
    assert!(!text.contains("short"), "the secret is never repeated: {text}");
}

#[test]
fn rejects_unreadable_metadata_at_its_path() {
    let errors = build_policy_error(
        saml_entry(),
        &format!("idp_metadata: /nonexistent/idp.xml\nsp_entity_id: {SP_ENTITY_ID}\nsession_secret: {SECRET}\n"),
    );
    assert!(errors.to_string().contains("global_policies[0].saml.idp_metadata"), "{errors}");
}

#[test]
fn rejects_unknown_fields() {
    let errors = build_policy_error(saml_entry(), &yaml_settings("hide_credentials: true\n"));
    assert!(errors.to_string().contains("hide_credentials"), "{errors}");
}

// ---- a response from a real identity provider ----

#[test]
fn accepts_a_response_recorded_from_the_saml_idp_package() {
    // Made by saml-idp 1.2.1 (node-samlp, xml-crypto) for AuthnRequest `_abc123`: the
    // Response and the Assertion each signed, RSA-SHA256 with exclusive C14N. Checked at a
    // time inside its one-hour validity.
    let xml = include_str!("tests/saml-idp-response.xml");
    let settings = json!({
        "idp_entity_id": "urn:test:idp",
        "idp_sso_url": "http://127.0.0.1:9999/saml/sso",
        "idp_certificates": [include_str!("tests/saml-idp-certificate.pem")],
        "sp_entity_id": "urn:test:sp",
        "base_url": "http://127.0.0.1:9999",
        "session_secret": SECRET,
        "attribute_for_groups": "groups",
    });
    let policy = compiled_with(settings, "");
    let now = response::instant("2026-11-23T19:30:00Z").expect("time");
    let pending = PendingLogin { id: "_abc123".to_owned(), exp: unix_seconds(now) + 7200 };
    let sealed =
        policy.sealer.seal(Purpose::Request, &serde_json::to_vec(&pending).expect("json"), b"").expect("sealed");
    let request = request_parts(
        http::Request::post("/saml/acs")
            .header(COOKIE, format!("gantry_saml_request={sealed}"))
            .body(())
            .expect("request"),
    );
    let form =
        form_urlencoded::Serializer::new(String::new()).append_pair("SAMLResponse", &STANDARD.encode(xml)).finish();
    let response = policy.consume(form.as_bytes(), &request, false, now);
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{}", detail(&response));
    let session =
        set_cookies(&response).into_iter().find(|cookie| cookie.starts_with("gantry_saml=")).expect("session");
    let later = policy.session(&get("/", Some(&cookie_pair(&session))), now).expect("a session");
    assert_eq!(later.sub, "alice@example.com");
    assert_eq!(later.groups, ["admins", "developers"]);

    let an_hour_later = now + Duration::from_secs(3600);
    assert_refused(&policy.consume(form.as_bytes(), &request, false, an_hour_later), "expired");
}

//! `saml` through a running gateway against a real identity provider (the `saml-idp` npm
//! package, started by the test kit): a browser without a session is sent to the IdP with an
//! AuthnRequest the IdP accepts and answers for this gateway's ACS; requests that cannot be
//! redirected get 401 and never reach the upstream; the whole browser login, through the IdP's
//! form and the gateway's ACS, ends at the upstream as the asserted consumer.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::saml::SamlIdp;
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use crate::support::start_gateway;

const SP_ENTITY_ID: &str = "urn:gantry:e2e-sp";
const SESSION_SECRET: &str = "e2e-session-secret-of-32-bytes-or-more";

fn config(upstream: &EchoUpstream, idp: &SamlIdp) -> String {
    let certificate = idp.certificate_pem().trim().replace('\n', "\n              ");
    format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: app
    paths: [/*]
    upstream: up
    policies:
      - saml:
          idp_entity_id: {entity_id}
          idp_sso_url: {sso_url}
          idp_certificates:
            - |
              {certificate}
          sp_entity_id: {SP_ENTITY_ID}
          session_secret: {SESSION_SECRET}
          attribute_for_groups: groups
          logout_path: /logout
",
        upstream = upstream.addr(),
        entity_id = SamlIdp::ENTITY_ID,
        sso_url = idp.sso_url(),
    )
}

/// The `name=value` of the `Set-Cookie` for cookie `name`.
fn set_cookie(response: &TestResponse, name: &str) -> Option<String> {
    response
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with(&format!("{name}=")))
        .and_then(|value| value.split(';').next())
        .map(str::to_owned)
}

/// The value of query parameter `name` of `url`.
fn query_parameter(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded_pairs(query).into_iter().find(|(key, _)| key == name).map(|(_, value)| value)
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query.split('&').filter_map(|pair| pair.split_once('=')).map(|(key, value)| (decode(key), decode(value))).collect()
}

fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[index + 1..index + 3]), 16) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8(out).expect("UTF-8 query")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn sends_a_browser_to_a_real_idp_that_accepts_the_authn_request_and_answers_this_acs() {
    let idp = SamlIdp::start(SP_ENTITY_ID);
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &idp));
    let client = TestClient::default();

    let first = client.get(&gateway.url("/reports/q3?format=pdf")).await;
    assert_eq!(first.status, StatusCode::FOUND, "{first:?}");
    let location = first.header("location").expect("a Location").to_owned();
    assert!(location.starts_with(&format!("{}?SAMLRequest=", idp.sso_url())), "{location}");
    let relay_state = query_parameter(&location, "RelayState").expect("a RelayState");
    assert!(set_cookie(&first, "gantry_saml_request").is_some(), "the pending-login cookie is set");
    assert_eq!(upstream.requests(), 0, "nothing reaches the upstream before the login");

    let answer = idp.sign_in(&location, "alice@example.com", &["staff", "admins"]).await;
    assert_eq!(answer.acs_url, gateway.url("/saml/acs"), "the IdP answers the ACS the AuthnRequest named");
    assert_eq!(answer.relay_state.as_deref(), Some(relay_state.as_str()), "the RelayState comes back unchanged");
    let xml = answer.xml();
    assert!(xml.contains(&format!("<saml:Audience>{SP_ENTITY_ID}</saml:Audience>")), "{xml}");
    assert!(xml.contains(">alice@example.com</saml:NameID>"), "{xml}");
    assert!(xml.contains(r#"InResponseTo="_"#), "the IdP answers our AuthnRequest's id: {xml}");
}

#[tokio::test]
async fn answers_401_to_requests_that_cannot_be_redirected_and_405_to_a_get_on_the_acs() {
    let idp = SamlIdp::start(SP_ENTITY_ID);
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &idp));
    let client = TestClient::default();

    let post = client.request(Method::POST, &gateway.url("/reports"), &[], "data").await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED, "{post:?}");
    assert_eq!(post.header("www-authenticate"), Some("SAML"));
    let acs = client.get(&gateway.url("/saml/acs")).await;
    assert_eq!(acs.status, StatusCode::METHOD_NOT_ALLOWED, "{acs:?}");
    let forged = client.request(Method::GET, &gateway.url("/reports"), &[("cookie", "gantry_saml=forged")], "").await;
    assert_eq!(forged.status, StatusCode::FOUND, "a forged session is sent to the IdP again");
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn signs_a_browser_in_through_a_real_idp_and_lets_it_through_as_the_asserted_consumer() {
    let idp = SamlIdp::start(SP_ENTITY_ID);
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&upstream, &idp));
    let client = TestClient::default();

    let first = client.get(&gateway.url("/reports/q3?format=pdf")).await;
    assert_eq!(first.status, StatusCode::FOUND, "{first:?}");
    let location = first.header("location").expect("a Location").to_owned();
    let pending = set_cookie(&first, "gantry_saml_request").expect("the pending-login cookie");

    let answer = idp.sign_in(&location, "alice@example.com", &["staff", "admins"]).await;
    let form = format!(
        "SAMLResponse={}&RelayState={}",
        encode(&answer.saml_response),
        encode(answer.relay_state.as_deref().unwrap_or_default())
    );
    let accepted = client
        .request(
            Method::POST,
            &answer.acs_url,
            &[("content-type", "application/x-www-form-urlencoded"), ("cookie", &pending)],
            form.clone(),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{accepted:?}");
    assert_eq!(accepted.header("location"), Some("/reports/q3?format=pdf"));
    let session = set_cookie(&accepted, "gantry_saml").expect("the session cookie");

    let page = client.request(Method::GET, &gateway.url("/reports/q3?format=pdf"), &[("cookie", &session)], "").await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let seen = page.json();
    assert!(seen["headers"]["cookie"].is_null(), "the session cookie stays at the gateway: {seen}");
    assert_eq!(upstream.requests(), 1);

    // The login is used up: posting the same answer again, without the cleared cookie, fails.
    let replay = client
        .request(Method::POST, &answer.acs_url, &[("content-type", "application/x-www-form-urlencoded")], form)
        .await;
    assert_eq!(replay.status, StatusCode::FORBIDDEN, "{replay:?}");

    let logout = client.request(Method::GET, &gateway.url("/logout"), &[("cookie", &session)], "").await;
    assert_eq!(logout.status, StatusCode::OK);
    assert_eq!(set_cookie(&logout, "gantry_saml").as_deref(), Some("gantry_saml="));
}

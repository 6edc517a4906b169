//! `oidc` through a running gateway against a real OpenID provider (`oidc-provider`, run by
//! node): JWT access tokens checked with the keys found through discovery, and the browser
//! login flow followed step by step (provider login and consent pages included) by a client
//! that keeps cookies, up to the upstream, then out again through the logout path.

use std::time::Duration;

use gantry_testkit::client::TestClient;
use gantry_testkit::oidc::OidcProvider;
use gantry_testkit::EchoUpstream;
use http::StatusCode;

use super::harness::get_with_bearer;
use crate::support::start_gateway;

const SESSION_SECRET: &str = "e2e-session-secret-0123456789abcdef";

/// Route `/api/*` takes bearer tokens for the test resource; route `/app/*` signs browsers in.
/// Consumer `reporting` is the test client (subject of its client-credentials tokens), `alice`
/// the user who signs in.
fn config(provider: &OidcProvider, upstream: &EchoUpstream) -> String {
    format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
consumers:
  - id: reporting
    credentials:
      oidc: {{subject: {client_id}}}
    policies:
      - request_headers: {{set: {{x-consumer: reporting}}}}
  - id: alice
    groups: [staff]
    credentials:
      oidc: {{subject: alice}}
    policies:
      - request_headers: {{set: {{x-consumer: alice}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: api
    paths: [/api/*]
    upstream: up
    policies:
      - oidc:
          issuer: {issuer}
          client_id: {client_id}
          audiences: [{resource}]
          timeout: 2s
  - id: app
    paths: [/app/*, /oidc/callback, /logout]
    upstream: up
    policies:
      - oidc:
          issuer: {issuer}
          client_id: {client_id}
          bearer: false
          require_consumer: true
          timeout: 2s
          login:
            client_secret: {client_secret}
            redirect_uri: {redirect_path}
            scopes: [openid, profile]
            session_secret: {SESSION_SECRET}
            logout_path: /logout
            post_logout_redirect: /app/bye
",
        upstream = upstream.addr(),
        issuer = provider.issuer(),
        client_id = OidcProvider::CLIENT_ID,
        client_secret = OidcProvider::CLIENT_SECRET,
        resource = OidcProvider::RESOURCE,
        redirect_path = OidcProvider::REDIRECT_PATH,
    )
}

#[tokio::test]
async fn admits_a_signed_access_token_as_its_consumer_and_refuses_others() {
    let provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let client = TestClient::default();
    let token = provider.client_credentials_token("orders:read", Some(OidcProvider::RESOURCE)).await;

    let passed = get_with_bearer(&client, &gateway, "/api/orders", &token).await;
    assert_eq!(passed.status, StatusCode::OK, "{passed:?}");
    let seen = passed.json();
    assert_eq!(seen["headers"]["x-consumer"], "reporting", "{seen}");
    assert!(seen["headers"]["authorization"].is_null(), "the token reached the upstream: {seen}");

    // An opaque token (no audience for this API, not a JWT) and a forged one are refused.
    let opaque = provider.client_credentials_token("orders:read", None).await;
    let mut forged = token.clone();
    forged.truncate(token.len() - 4);
    forged.push_str("AAAA");
    for refused_token in [opaque.as_str(), forged.as_str(), "not-a-token"] {
        let refused = get_with_bearer(&client, &gateway, "/api/orders", refused_token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer realm=\"gantry\", error=\"invalid_token\""));
        assert_eq!(refused.json()["type"], "https://gantry.dev/problems/invalid-token");
    }
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn keeps_checking_tokens_with_cached_keys_after_the_provider_stops() {
    let mut provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let client = TestClient::default();
    let first = provider.client_credentials_token("orders:read", Some(OidcProvider::RESOURCE)).await;
    let second = provider.client_credentials_token("orders:write", Some(OidcProvider::RESOURCE)).await;
    let passed = get_with_bearer(&client, &gateway, "/api/orders", &first).await;
    assert_eq!(passed.status, StatusCode::OK, "{passed:?}");

    provider.stop();

    // A token not seen before is verified offline with the keys fetched earlier.
    let offline = get_with_bearer(&client, &gateway, "/api/orders", &second).await;
    assert_eq!(offline.status, StatusCode::OK, "{offline:?}");
}

#[tokio::test]
async fn answers_503_while_the_provider_cannot_be_reached() {
    let mut provider = OidcProvider::start();
    let token = provider.client_credentials_token("orders:read", Some(OidcProvider::RESOURCE)).await;
    let upstream = EchoUpstream::start("up").await;
    let yaml = config(&provider, &upstream);
    provider.stop();
    let gateway = start_gateway(&yaml);
    let client = TestClient::default();

    let refused = get_with_bearer(&client, &gateway, "/api/orders", &token).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/oidc-unavailable");
    assert!(refused.header("www-authenticate").is_none(), "a 503 says nothing about the token");
    assert_eq!(upstream.requests(), 0);
}

/// A client that keeps cookies and shows every redirect.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("browser client")
}

/// Follows redirects with GET from `url` until a response is not a redirect, or its URL is
/// one `stop_at` picks; gives that response and its URL.
async fn follow(
    browser: &reqwest::Client,
    mut url: reqwest::Url,
    stop_at: impl Fn(&reqwest::Url) -> bool,
) -> (reqwest::Response, reqwest::Url) {
    for _ in 0..10 {
        let response = browser.get(url.clone()).send().await.unwrap_or_else(|err| panic!("GET {url}: {err}"));
        if !response.status().is_redirection() || stop_at(&url) {
            return (response, url);
        }
        let location = response.headers()["location"].to_str().expect("location is text");
        url = url.join(location).expect("location is a URL");
    }
    panic!("more than 10 redirects from {url}");
}

/// Signs `login` in on the provider's development pages and consents, starting from an
/// interaction page; gives the response of the first URL off the provider (the callback).
async fn sign_in(
    browser: &reqwest::Client,
    provider: &OidcProvider,
    mut page: reqwest::Url,
    login: &str,
) -> (reqwest::Response, reqwest::Url) {
    let off_provider = |url: &reqwest::Url| url.port() != Some(provider.port());
    for _ in 0..4 {
        let form: Vec<(&str, &str)> = if page.path().starts_with("/interaction/") {
            let html = browser.get(page.clone()).send().await.expect("interaction page").text().await.expect("html");
            if html.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", login), ("password", "any-password")]
            } else {
                vec![("prompt", "consent")]
            }
        } else {
            panic!("expected the provider's interaction page, got {page}");
        };
        let submitted = browser.post(page.clone()).form(&form).send().await.expect("interaction form");
        assert!(submitted.status().is_redirection(), "form answered {}", submitted.status());
        let location = submitted.headers()["location"].to_str().expect("location").to_owned();
        let (response, url) = follow(browser, page.join(&location).expect("location URL"), off_provider).await;
        if off_provider(&url) {
            return (response, url);
        }
        page = url;
    }
    panic!("the provider kept asking");
}

#[tokio::test]
async fn signs_a_browser_in_through_the_provider_and_keeps_it_in_a_session() {
    let provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let browser = browser();
    let start = reqwest::Url::parse(&gateway.url("/app/reports?year=2024")).expect("gateway URL");

    // 1. No session: the gateway sends the browser to the provider, with PKCE.
    let first = browser.get(start.clone()).send().await.expect("first request");
    assert_eq!(first.status(), StatusCode::FOUND);
    let authorize = reqwest::Url::parse(first.headers()["location"].to_str().expect("location")).expect("URL");
    assert!(authorize.as_str().starts_with(&format!("{}/auth?", provider.issuer())), "{authorize}");
    let query: std::collections::HashMap<String, String> = authorize.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["client_id"], OidcProvider::CLIENT_ID);
    assert_eq!(query["redirect_uri"], gateway.url(OidcProvider::REDIRECT_PATH));
    assert!(query["state"].len() >= 43 && query["nonce"].len() >= 43, "{query:?}");
    assert_eq!(upstream.requests(), 0);

    // 2. The provider asks the user to sign in and consent, then sends the browser back to
    //    the callback, which sets the session and returns to the page first asked for.
    let (interaction, page) = follow(&browser, authorize, |_| false).await;
    assert_eq!(interaction.status(), StatusCode::OK, "{page}");
    let (callback, callback_url) = sign_in(&browser, &provider, page, "alice").await;
    assert_eq!(callback_url.path(), OidcProvider::REDIRECT_PATH);
    assert_eq!(callback.status(), StatusCode::FOUND, "{:?}", callback.text().await);
    assert_eq!(callback.headers()["location"], "/app/reports?year=2024");
    let cookies: Vec<&str> =
        callback.headers().get_all("set-cookie").iter().filter_map(|value| value.to_str().ok()).collect();
    assert!(
        cookies.iter().any(|cookie| cookie.starts_with("gantry_oidc=") && cookie.contains("HttpOnly")),
        "{cookies:?}"
    );

    // 3. With the session cookie, the page reaches the upstream as alice, without the cookie.
    let (page, _) = follow(&browser, start.clone(), |_| false).await;
    assert_eq!(page.status(), StatusCode::OK);
    let seen: serde_json::Value = page.json().await.expect("echo JSON");
    assert_eq!(seen["path"], "/app/reports");
    assert_eq!(seen["query"], "year=2024");
    assert_eq!(seen["headers"]["x-consumer"], "alice", "{seen}");
    assert!(!seen["headers"]["cookie"].as_str().unwrap_or_default().contains("gantry_oidc="), "{seen}");
    assert_eq!(upstream.requests(), 1);

    // 4. Logging out clears the session: the next visit is sent to the provider again.
    let logout = browser.get(gateway.url("/logout")).send().await.expect("logout");
    assert_eq!(logout.status(), StatusCode::FOUND);
    assert_eq!(logout.headers()["location"], "/app/bye");
    let again = browser.get(start).send().await.expect("after logout");
    assert_eq!(again.status(), StatusCode::FOUND);
    assert!(again.headers()["location"].to_str().expect("location").starts_with(&provider.issuer()));
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn refuses_a_user_no_consumer_stands_for_when_a_consumer_is_required() {
    let provider = OidcProvider::start();
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&provider, &upstream));
    let browser = browser();
    let start = reqwest::Url::parse(&gateway.url("/app/reports")).expect("gateway URL");

    let (_, page) = follow(&browser, start, |_| false).await;
    let (callback, _) = sign_in(&browser, &provider, page, "mallory").await;
    assert_eq!(callback.status(), StatusCode::FORBIDDEN);
    let problem: serde_json::Value = callback.json().await.expect("problem JSON");
    assert_eq!(problem["type"], "https://gantry.dev/problems/unknown-consumer");
    assert_eq!(upstream.requests(), 0);
}

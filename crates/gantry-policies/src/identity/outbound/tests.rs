use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use gantry_testkit::jwks::JwksServer;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::StatusCode;

use super::*;

fn client() -> reqwest::Client {
    client_builder(Duration::from_secs(2)).build().expect("HTTP client")
}

fn url(server: &JwksServer) -> reqwest::Url {
    reqwest::Url::parse(&server.url()).expect("server URL")
}

#[tokio::test]
async fn gets_the_body_of_a_success_answer_within_the_limit() {
    let server = JwksServer::start(&[]).await;
    server.publish_raw(StatusCode::OK, r#"{"issuer":"x"}"#);
    let body = get_document(&client(), &url(&server), "application/json", 14).await.expect("fetched");
    assert_eq!(body, br#"{"issuer":"x"}"#);
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn refuses_a_body_larger_than_the_limit() {
    let server = JwksServer::start(&[]).await;
    server.publish_raw(StatusCode::OK, r#"{"issuer":"x"}"#);
    let error = get_document(&client(), &url(&server), "application/json", 13).await.expect_err("too large");
    assert_eq!(error, "the answer is larger than 13 bytes");
}

#[tokio::test]
async fn reports_the_status_of_an_answer_that_is_not_a_success() {
    let server = JwksServer::start(&[]).await;
    server.publish_raw(StatusCode::SERVICE_UNAVAILABLE, "{}");
    let error = get_document(&client(), &url(&server), "application/json", 1024).await.expect_err("refused");
    assert_eq!(error, "the server answered 503 Service Unavailable");
}

#[tokio::test]
async fn describes_a_server_that_is_down_without_its_url() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|socket| socket.local_addr()).expect("a port");
    let url = reqwest::Url::parse(&format!("http://user:secret@{addr}/jwks?token=t0ps3cret")).expect("URL");
    let error = get_document(&client(), &url, "application/json", 1024).await.expect_err("unreachable");
    assert!(error.starts_with("could not connect"), "{error}");
    assert!(!error.contains("secret") && !error.contains("jwks") && !error.contains("t0ps"), "{error}");
}

#[tokio::test]
async fn reads_a_body_up_to_exactly_the_limit() {
    let response = reqwest::Response::from(http::Response::new("0123456789"));
    assert_eq!(read_body(response, 10).await.expect("within the limit"), b"0123456789");
    let response = reqwest::Response::from(http::Response::new("0123456789"));
    assert!(matches!(read_body(response, 9).await, Err(BodyError::TooLarge)));
}

fn credentials(auth: ClientAuth) -> ClientCredentials {
    ClientCredentials { id: "gate way".to_owned(), secret: Secret::new("s3cret/+&".to_owned()), auth }
}

fn token_request(credentials: &ClientCredentials) -> reqwest::Request {
    let url = reqwest::Url::parse("http://idp.test/token").expect("URL");
    credentials.post_form(&client(), url, vec![("token", "t 1")]).build().expect("request")
}

fn form(request: &reqwest::Request) -> &str {
    let body = request.body().and_then(reqwest::Body::as_bytes).expect("a form body");
    std::str::from_utf8(body).expect("text")
}

#[test]
fn presents_the_client_in_http_basic_with_its_id_and_secret_form_encoded_first() {
    let request = token_request(&credentials(ClientAuth::ClientSecretBasic));
    assert_eq!(request.method(), http::Method::POST);
    let expected = format!("Basic {}", STANDARD.encode("gate+way:s3cret%2F%2B%26"));
    assert_eq!(request.headers()[AUTHORIZATION], expected.as_str());
    assert_eq!(request.headers()[ACCEPT], "application/json");
    assert_eq!(request.headers()[CONTENT_TYPE], "application/x-www-form-urlencoded");
    assert_eq!(form(&request), "token=t+1", "the secret stays out of the form");
}

#[test]
fn presents_the_client_in_the_form_with_client_secret_post() {
    let request = token_request(&credentials(ClientAuth::ClientSecretPost));
    assert!(request.headers().get(AUTHORIZATION).is_none());
    assert_eq!(form(&request), "token=t+1&client_id=gate+way&client_secret=s3cret%2F%2B%26");
}

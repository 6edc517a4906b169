use gantry_testkit::jwks::JwksServer;
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

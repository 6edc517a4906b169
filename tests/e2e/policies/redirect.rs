//! `redirect` through a running gateway: plain-HTTP requests are sent to HTTPS on the same
//! host, path and query with the configured status, and `uri` targets fill their
//! placeholders from the request. Redirected requests never reach the upstream.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::tls_client::{TlsClient, ALPN_HTTP1};
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use crate::support::{start_gateway, with_listener};

/// `method path` with a `Host` header, as a browser would send it to `host`.
async fn request_to(
    client: &TestClient,
    gateway: &gantry_testkit::GatewayProcess,
    host: &str,
    path: &str,
) -> TestResponse {
    client.request(Method::GET, &gateway.url(path), &[("host", host)], "").await
}

fn assert_redirect(response: &TestResponse, status: StatusCode, location: &str) {
    assert_eq!(response.status, status, "{:?}", response.body);
    assert_eq!(response.header("location"), Some(location));
    assert!(response.body.is_empty(), "a redirect has no body: {:?}", response.body);
}

#[tokio::test]
async fn sends_plain_http_to_https_keeping_host_path_and_query_with_the_configured_status() {
    let upstream = EchoUpstream::start("shop").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: shop
    endpoints: [{addr}]
routes:
  - id: default-status
    paths: [/found/*]
    upstream: shop
    policies:
      - redirect: {{http_to_https: true}}
  - id: moved
    paths: [/moved/*]
    upstream: shop
    policies:
      - redirect: {{http_to_https: true, status: 301}}
  - id: permanent
    paths: [/permanent/*]
    upstream: shop
    policies:
      - redirect: {{http_to_https: true, status: 308, https_port: 8443}}
  - id: plain
    paths: [/plain/*]
    upstream: shop
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    let found = request_to(&client, &gateway, "shop.example.com:8080", "/found/cart?id=7&x=a%20b").await;
    assert_redirect(&found, StatusCode::FOUND, "https://shop.example.com/found/cart?id=7&x=a%20b");

    let moved = request_to(&client, &gateway, "shop.example.com", "/moved/a/b").await;
    assert_redirect(&moved, StatusCode::MOVED_PERMANENTLY, "https://shop.example.com/moved/a/b");

    let permanent = request_to(&client, &gateway, "[2001:db8::1]:8080", "/permanent/?q=1").await;
    assert_redirect(&permanent, StatusCode::PERMANENT_REDIRECT, "https://[2001:db8::1]:8443/permanent/?q=1");
    assert_eq!(upstream.requests(), 0, "a redirected request reached the upstream");

    let plain = request_to(&client, &gateway, "shop.example.com", "/plain/page").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.header("location"), None);
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn fills_the_placeholders_of_a_uri_target_from_the_request() {
    // A `uri` redirect answers every request, so a route with one needs no upstream
    // (`basket` has none); the upstream stays unused by the others.
    let upstream = EchoUpstream::start("legacy").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: legacy
    endpoints: [{addr}]
routes:
  - id: moved-api
    hosts: [old.example.com]
    paths: [/api/*]
    upstream: legacy
    policies:
      - redirect:
          uri: https://api.example.com/v2$request_uri
          status: 301
  - id: basket
    paths: [/basket]
    policies:
      - redirect:
          uri: /cart?$args&from=$host
  - id: every-piece
    paths: [/pieces/*]
    upstream: legacy
    policies:
      - redirect:
          uri: $scheme://mirror.example.com${{uri}}v2?q=$args&cost=$$5
          status: 307
"#,
        addr = upstream.addr()
    )));
    let client = TestClient::default();

    let moved = request_to(&client, &gateway, "old.example.com", "/api/users?page=2").await;
    assert_redirect(&moved, StatusCode::MOVED_PERMANENTLY, "https://api.example.com/v2/api/users?page=2");

    let basket = request_to(&client, &gateway, "shop.example.com:8080", "/basket?id=7").await;
    assert_redirect(&basket, StatusCode::FOUND, "/cart?id=7&from=shop.example.com");

    let pieces = request_to(&client, &gateway, "a.example.com", "/pieces/x?k=v").await;
    assert_redirect(&pieces, StatusCode::TEMPORARY_REDIRECT, "http://mirror.example.com/pieces/xv2?q=k=v&cost=$5");

    assert_eq!(upstream.requests(), 0, "a redirected request reached the upstream");

    // The route's hosts still decide which requests reach the policy.
    let other_host = request_to(&client, &gateway, "new.example.com", "/api/users").await;
    assert_eq!(other_host.status, StatusCode::NOT_FOUND);
}

/// `http_to_https` is not terminal: a request that already arrived over TLS goes on to the
/// upstream, on the same route that redirects plain-HTTP requests.
#[tokio::test]
async fn lets_a_request_that_arrived_over_tls_through_to_the_upstream() {
    let upstream = EchoUpstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = gantry_testkit::certs::TestCa::new("redirect test CA");
    let leaf = ca.issue(dir.path(), "shop", &["shop.example.com"]);
    let yaml = format!(
        r#"node:
  listeners:
    - address: 127.0.0.1:0
    - address: 127.0.0.1:0
      tls:
        certificates:
          - cert_file: {cert}
            key_file: {key}
upstreams:
  - id: shop
    endpoints: [{addr}]
routes:
  - id: shop
    paths: [/*]
    upstream: shop
    policies:
      - redirect: {{http_to_https: true, status: 301}}
"#,
        cert = leaf.cert.display(),
        key = leaf.key.display(),
        addr = upstream.addr()
    );
    let gateway =
        gantry_testkit::GatewayProcess::start_in(crate::support::gantry_binary(), dir, "gantry.yaml", &yaml, &[]);

    let plain = request_to(&TestClient::default(), &gateway, "shop.example.com", "/cart?id=7").await;
    assert_redirect(&plain, StatusCode::MOVED_PERMANENTLY, "https://shop.example.com/cart?id=7");
    assert_eq!(upstream.requests(), 0);

    let tls = TlsClient::new(&ca.cert_pem, &[ALPN_HTTP1]);
    let connection = tls.connect(gateway.addr(1), "shop.example.com").await.expect("TLS handshake");
    let request = http::Request::get("/cart?id=7")
        .header("host", "shop.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let over_tls = connection.send_http1(request).await.expect("a response over TLS");
    assert_eq!(over_tls.status, StatusCode::OK, "{:?}", over_tls.body);
    assert_eq!(over_tls.header("location"), None);
    let echoed = over_tls.json();
    assert_eq!(echoed["path"], "/cart");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "the upstream must see a TLS request: {echoed}");
    assert_eq!(upstream.requests(), 1);
}

//! TLS termination on a listener: the certificate is chosen by SNI among several, ALPN
//! negotiates h2 or HTTP/1.1, and both protocols are served over the TLS connection.

use bytes::Bytes;
use gantry_testkit::certs::{CertFiles, TestCa};
use gantry_testkit::tls_client::{certificate_der, TlsClient, ALPN_H2, ALPN_HTTP1};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::gantry_binary;

/// A gateway terminating TLS with certificates for `a.test` (first, the default) and
/// `b.test`, routing each host to its own echo upstream.
struct TlsSetup {
    gateway: GatewayProcess,
    ca: TestCa,
    a: CertFiles,
    b: CertFiles,
    _upstreams: (EchoUpstream, EchoUpstream),
}

async fn tls_gateway(http2: bool) -> TlsSetup {
    let upstream_a = EchoUpstream::start("a").await;
    let upstream_b = EchoUpstream::start("b").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("Gantry protocol tests CA");
    let a = ca.issue(dir.path(), "a", &["a.test"]);
    let b = ca.issue(dir.path(), "b", &["b.test"]);
    let yaml = format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n      http2: {http2}\n      tls:\n        certificates:\n\
         \x20         - {{cert_file: \"{}\", key_file: \"{}\"}}\n\
         \x20         - {{cert_file: \"{}\", key_file: \"{}\"}}\n\
         upstreams:\n  - id: a\n    endpoints: [{}]\n  - id: b\n    endpoints: [{}]\n\
         routes:\n  - id: a\n    hosts: [a.test]\n    paths: [/*]\n    upstream: a\n\
         \x20 - id: b\n    hosts: [b.test]\n    paths: [/*]\n    upstream: b\n",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display(),
        upstream_a.addr(),
        upstream_b.addr(),
    );
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[]);
    TlsSetup { gateway, ca, a, b, _upstreams: (upstream_a, upstream_b) }
}

fn get(uri: &str, host: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(uri);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    builder.body(Full::new(Bytes::new())).expect("valid request")
}

#[tokio::test]
async fn presents_the_certificate_matching_the_sni_name() {
    let setup = tls_gateway(true).await;
    let client = TlsClient::new(&setup.ca.cert_pem, &[ALPN_HTTP1]);
    let addr = setup.gateway.addr(0);

    for (name, files, upstream) in [("a.test", &setup.a, "a"), ("b.test", &setup.b, "b")] {
        let connection = client.connect(addr, name).await.unwrap_or_else(|err| panic!("handshake for {name}: {err}"));
        assert_eq!(
            connection.peer_certificate().expect("a certificate is presented"),
            certificate_der(&files.cert),
            "SNI {name} got another certificate"
        );
        let response = connection.send_http1(get("/tls", Some(name))).await.expect("request over TLS");
        assert_eq!(response.status, StatusCode::OK);
        let seen = response.json();
        assert_eq!(seen["upstream"], upstream);
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    }

    // An unknown name gets the first certificate, which a verifying client rejects for that name.
    let Err(refused) = client.connect(addr, "c.test").await else {
        panic!("a certificate for c.test was presented");
    };
    let reason = refused.to_string();
    assert!(reason.contains("not valid for name") && reason.contains("a.test"), "{reason}");
}

#[tokio::test]
async fn negotiates_h2_by_alpn_and_serves_it() {
    let setup = tls_gateway(true).await;
    let client = TlsClient::new(&setup.ca.cert_pem, &[ALPN_H2, ALPN_HTTP1]);
    let connection = client.connect(setup.gateway.addr(0), "b.test").await.expect("handshake");
    assert_eq!(connection.alpn_protocol().as_deref(), Some(ALPN_H2));

    let response = connection.send_http2(get("https://b.test/over/h2?q=1", None)).await.expect("h2 request");
    assert_eq!(response.status, StatusCode::OK);
    let seen = response.json();
    assert_eq!(seen["upstream"], "b", "the h2 :authority routes the request");
    assert_eq!(seen["path"], "/over/h2");
    assert_eq!(seen["headers"]["host"], "b.test");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["x-forwarded-host"], "b.test");
}

#[tokio::test]
async fn serves_http1_over_tls_when_the_client_offers_only_http1() {
    let setup = tls_gateway(true).await;
    let client = TlsClient::new(&setup.ca.cert_pem, &[ALPN_HTTP1]);
    let connection = client.connect(setup.gateway.addr(0), "a.test").await.expect("handshake");
    assert_eq!(connection.alpn_protocol().as_deref(), Some(ALPN_HTTP1));
    let response = connection.send_http1(get("/over/h1", Some("a.test"))).await.expect("HTTP/1.1 request");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["version"], "HTTP/1.1");
    assert_eq!(response.json()["upstream"], "a");
}

#[tokio::test]
async fn negotiates_http1_when_the_listener_disables_http2() {
    let setup = tls_gateway(false).await;
    let client = TlsClient::new(&setup.ca.cert_pem, &[ALPN_H2, ALPN_HTTP1]);
    let connection = client.connect(setup.gateway.addr(0), "a.test").await.expect("handshake");
    assert_eq!(connection.alpn_protocol().as_deref(), Some(ALPN_HTTP1), "h2 offered by a listener without HTTP/2");
    let response = connection.send_http1(get("/h1-only", Some("a.test"))).await.expect("HTTP/1.1 request");
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn rejects_clients_that_do_not_trust_the_certificate() {
    let setup = tls_gateway(true).await;
    let stranger = TestCa::new("Some other CA");
    let client = TlsClient::new(&stranger.cert_pem, &[ALPN_HTTP1]);
    let Err(refused) = client.connect(setup.gateway.addr(0), "a.test").await else {
        panic!("a client trusting another CA accepted the gateway's certificate");
    };
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    // The refused handshake leaves the listener serving.
    let client = TlsClient::new(&setup.ca.cert_pem, &[ALPN_HTTP1]);
    let connection = client.connect(setup.gateway.addr(0), "a.test").await.expect("handshake");
    let response = connection.send_http1(get("/after", Some("a.test"))).await.expect("request");
    assert_eq!(response.status, StatusCode::OK);
}

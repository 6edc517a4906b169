//! `mtls_auth` through a running gateway with TLS listeners that ask for client certificates:
//! a recognised certificate and the headers forwarded about it, client-made copies of those
//! headers removed, routes with and without the policy on an `optional` listener, unknown
//! certificates refused, and handshakes that fail for a certificate from another CA or, on a
//! `required` listener, without one.

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use gantry_testkit::certs::{CertFiles, TestCa};
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::tls_client::{certificate_der, TlsClient, ALPN_HTTP1};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Request, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::support::gantry_binary;

/// A gateway with an `optional` client-certificate listener (0) and a `required` one (1),
/// both trusting the clients' CA, and the certificates of three clients.
struct Setup {
    gateway: GatewayProcess,
    upstream: EchoUpstream,
    server_ca: TestCa,
    /// CN `payments-service`, the consumer `payments`.
    payments: CertFiles,
    /// CN `stranger-job`, issued by the clients' CA but named by no consumer.
    stranger: CertFiles,
    /// CN `payments-service` too, but issued by a CA the gateway does not trust.
    rogue: CertFiles,
}

async fn setup() -> Setup {
    let upstream = EchoUpstream::start("up").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = TestCa::new("Gantry mTLS tests server CA");
    let server = server_ca.issue(dir.path(), "server", &["gateway.test"]);
    let clients_ca = TestCa::new("Gantry mTLS tests clients CA");
    let clients_ca_file = clients_ca.write_ca(dir.path(), "clients-ca.pem");
    let payments =
        clients_ca.issue_client(dir.path(), "payments", "payments-service", &["spiffe://example.org/payments"]);
    let stranger = clients_ca.issue_client(dir.path(), "stranger", "stranger-job", &[]);
    let rogue = TestCa::new("Somebody else's CA").issue_client(dir.path(), "rogue", "payments-service", &[]);
    let tls = |mode: &str| {
        format!(
            "      tls:\n        certificates: [{{cert_file: \"{}\", key_file: \"{}\"}}]\n        client_certificates: {{ca_file: \"{}\", mode: {mode}}}\n",
            server.cert.display(),
            server.key.display(),
            clients_ca_file.display()
        )
    };
    let yaml = format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
{optional}    - address: 127.0.0.1:0
{required}  admin:
    address: 127.0.0.1:0
    api_key: e2e-admin-key-mtls-auth-5150
consumers:
  - id: payments
    credentials:
      mtls_auth: {{subject: payments-service}}
    policies:
      - request_headers: {{set: {{x-plan: gold}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: secure
    paths: [/secure/*]
    upstream: up
    policies:
      - mtls_auth:
          require_consumer: true
          forward_headers:
            subject: x-client-cert-subject
            fingerprint: x-client-cert-fingerprint
            certificate: x-forwarded-client-cert
      - request_headers: {{set: {{x-plan: free}}}}
  - id: maybe
    paths: [/maybe/*]
    upstream: up
    policies:
      - mtls_auth: {{mode: optional, forward_headers: {{subject: x-client-cert-subject}}}}
  - id: open
    paths: [/open/*]
    upstream: up
",
        optional = tls("optional"),
        required = tls("required"),
        upstream = upstream.addr(),
    );
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[]);
    Setup { gateway, upstream, server_ca, payments, stranger, rogue }
}

impl Setup {
    fn client(&self, certificate: Option<&CertFiles>) -> TlsClient {
        match certificate {
            Some(files) => TlsClient::with_client_certificate(&self.server_ca.cert_pem, &[ALPN_HTTP1], files),
            None => TlsClient::new(&self.server_ca.cert_pem, &[ALPN_HTTP1]),
        }
    }

    /// GET `path` over a new TLS connection to listener `listener`; `Err` when the handshake or
    /// the exchange fails (with TLS 1.3 the server's refusal of a client certificate arrives
    /// after the client's side of the handshake is done, so it surfaces on the first read).
    async fn get(
        &self,
        listener: usize,
        certificate: Option<&CertFiles>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<TestResponse, String> {
        let addr: SocketAddr = self.gateway.addr(listener);
        let connection = self.client(certificate).connect(addr, "gateway.test").await.map_err(|err| err.to_string())?;
        let mut request = Request::get(path).header(http::header::HOST, "gateway.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        connection.send_http1(request.body(Full::new(Bytes::new())).expect("valid request")).await
    }
}

const SPOOFED: [(&str, &str); 3] = [
    ("x-client-cert-subject", "CN=admin"),
    ("x-client-cert-fingerprint", "0000"),
    ("x-forwarded-client-cert", "forged"),
];

#[tokio::test]
async fn recognises_a_client_certificate_and_forwards_it_instead_of_the_clients_copies() {
    let setup = setup().await;
    let response = setup.get(0, Some(&setup.payments), "/secure/ledger", &SPOOFED).await.expect("served");
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let seen = response.json();
    assert_eq!(seen["headers"]["x-plan"], "gold", "the certificate is the consumer `payments`: {seen}");
    assert_eq!(seen["headers"]["x-client-cert-subject"], "CN=payments-service");

    let der = certificate_der(&setup.payments.cert);
    let fingerprint: String = Sha256::digest(&der).iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(seen["headers"]["x-client-cert-fingerprint"], fingerprint.as_str());

    let escaped = seen["headers"]["x-forwarded-client-cert"].as_str().expect("the certificate is forwarded");
    let pem = percent_encoding::percent_decode_str(escaped).decode_utf8().expect("UTF-8 PEM").into_owned();
    let base64: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(base64).expect("base64"), der);
}

#[tokio::test]
async fn refuses_a_request_without_a_certificate_where_one_is_required_and_serves_the_others() {
    let setup = setup().await;
    let refused = setup.get(0, None, "/secure/ledger", &[]).await.expect("an HTTP answer");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/client-certificate-required");
    assert!(refused.header("www-authenticate").is_none(), "TLS client authentication has no HTTP challenge");

    let open = setup.get(0, None, "/open/catalog", &[]).await.expect("served");
    assert_eq!(open.status, StatusCode::OK, "{open:?}");

    // On a route with the policy, a client without a certificate cannot pose as having one.
    let maybe = setup.get(0, None, "/maybe/catalog", &SPOOFED).await.expect("served");
    assert_eq!(maybe.status, StatusCode::OK, "{maybe:?}");
    assert!(maybe.json()["headers"]["x-client-cert-subject"].is_null(), "{}", maybe.json());
    assert_eq!(setup.upstream.requests(), 2);

    let metrics = TestClient::default().get(&format!("http://{}/metrics", setup.gateway.admin_addr())).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.lines().any(|line| line == "gantry_policy_answers_total{policy=\"mtls_auth\",status=\"403\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn refuses_a_valid_certificate_no_consumer_names_on_a_route_that_requires_one() {
    let setup = setup().await;
    let refused = setup.get(0, Some(&setup.stranger), "/secure/ledger", &[]).await.expect("an HTTP answer");
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/unknown-client-certificate");

    // Where no consumer is required, the certificate's name is the consumer.
    let admitted = setup.get(0, Some(&setup.stranger), "/maybe/x", &[]).await.expect("served");
    assert_eq!(admitted.status, StatusCode::OK, "{admitted:?}");
    assert_eq!(admitted.json()["headers"]["x-client-cert-subject"], "CN=stranger-job");
    assert_eq!(setup.upstream.requests(), 1);
}

#[tokio::test]
async fn fails_the_handshake_for_a_certificate_from_another_ca_even_when_certificates_are_optional() {
    let setup = setup().await;
    for path in ["/secure/ledger", "/open/catalog"] {
        let outcome = setup.get(0, Some(&setup.rogue), path, &[]).await;
        assert!(outcome.is_err(), "a certificate from an untrusted CA was accepted on {path}: {outcome:?}");
    }
    assert_eq!(setup.upstream.requests(), 0);
}

#[tokio::test]
async fn fails_the_handshake_without_a_certificate_on_a_listener_that_requires_one() {
    let setup = setup().await;
    let outcome = setup.get(1, None, "/open/catalog", &[]).await;
    assert!(outcome.is_err(), "a client without a certificate was served: {outcome:?}");

    let served = setup.get(1, Some(&setup.payments), "/secure/ledger", &[]).await.expect("served");
    assert_eq!(served.status, StatusCode::OK, "{served:?}");
    assert_eq!(served.json()["headers"]["x-plan"], "gold");
}

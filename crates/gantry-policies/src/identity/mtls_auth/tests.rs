use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
use gantry_policy_api::RegisteredPolicy;
use gantry_testkit::certs::TestCa;
use gantry_testkit::tls_client::certificate_der;
use http::header::WWW_AUTHENTICATE;
use http::StatusCode;

use super::*;

/// A client certificate with common name `cn` and SANs `names` (see `TestCa::issue_client`).
fn certificate(cn: &str, names: &[&str]) -> Arc<ClientCertificate> {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = TestCa::new("unit test CA").issue_client(dir.path(), "client", cn, names);
    Arc::new(ClientCertificate::from_der(certificate_der(&files.cert)).expect("parses"))
}

fn consumers(fingerprint: &str) -> String {
    format!(
        "consumers:
  - id: payments
    groups: [internal]
    credentials:
      mtls_auth: {{subject: payments-service}}
  - id: web
    credentials:
      mtls_auth: [{{subject: web.svc.example.org}}, {{subject: \"spiffe://example.org/web\"}}]
  - id: pinned
    credentials:
      mtls_auth: {{fingerprint: \"{fingerprint}\"}}
  - id: guest
  - id: admin
"
    )
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_identity_policy(RegisteredPolicy::identity::<MtlsAuth>(), settings, &consumers(&"ab".repeat(32)))
        .unwrap_or_else(|errors| panic!("{errors}"))
}

fn errors(settings: &str, config: &str) -> Vec<String> {
    build_identity_policy_error(RegisteredPolicy::identity::<MtlsAuth>(), settings, config)
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect()
}

fn run(
    policy: &dyn Policy,
    certificate: Option<Arc<ClientCertificate>>,
    headers: &[(&str, &str)],
) -> (Flow, RequestParts, Exchange) {
    let mut builder = http::Request::get("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut parts = builder.body(()).expect("request").into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    exchange.is_tls = true;
    exchange.client_certificate = certificate;
    let flow = run_request(policy, &mut parts, &mut exchange);
    (flow, parts, exchange)
}

fn refusal(flow: Flow) -> (StatusCode, String) {
    let Flow::Respond(response) = flow else { panic!("the request was let through") };
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none(), "no HTTP challenge exists for TLS client auth");
    let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    let kind = body["type"].as_str().expect("type").trim_start_matches("https://gantry.dev/problems/").to_owned();
    (response.status(), kind)
}

const FORWARD: &str = "forward_headers:
  subject: x-client-cert-subject
  fingerprint: x-client-cert-fingerprint
  certificate: x-forwarded-client-cert";

#[test]
fn recognises_the_consumer_named_by_the_common_name_and_forwards_the_certificate() {
    let policy = policy(FORWARD);
    let certificate = certificate("payments-service", &[]);
    let (flow, parts, exchange) = run(&*policy, Some(certificate.clone()), &[]);
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("recognised");
    assert_eq!(&*identity.consumer.id, "payments");
    assert!(identity.consumer.is_in("internal"));
    assert_eq!(&*identity.credential_id, "payments:mtls_auth");
    assert_eq!(identity.method, "mtls_auth");
    assert_eq!(parts.headers["x-client-cert-subject"], "CN=payments-service");
    assert_eq!(parts.headers["x-client-cert-fingerprint"], certificate.fingerprint_sha256.as_str());
    assert_eq!(parts.headers["x-forwarded-client-cert"], certificate.escaped_pem());
}

#[test]
fn removes_client_made_copies_of_the_forwarded_headers_with_or_without_a_certificate() {
    let spoofed = [
        ("x-client-cert-subject", "CN=admin"),
        ("x-client-cert-fingerprint", "00"),
        ("x-forwarded-client-cert", "forged"),
    ];
    let optional = policy(&format!("mode: optional\n{FORWARD}"));
    let (flow, parts, exchange) = run(&*optional, None, &spoofed);
    assert!(matches!(flow, Flow::Continue));
    assert!(exchange.identity.is_none());
    for (name, _) in spoofed {
        assert!(parts.headers.get(name).is_none(), "{name} reached the upstream");
    }

    let (_, parts, _) = run(&*optional, Some(certificate("payments-service", &[])), &spoofed);
    assert_eq!(parts.headers["x-client-cert-subject"], "CN=payments-service");
    assert_eq!(parts.headers.get_all("x-client-cert-subject").iter().count(), 1);
}

#[test]
fn refuses_a_request_without_a_certificate_with_403_when_one_is_required() {
    let policy = policy("");
    let (flow, _, exchange) = run(&*policy, None, &[]);
    assert_eq!(refusal(flow), (StatusCode::FORBIDDEN, "client-certificate-required".to_owned()));
    assert!(exchange.identity.is_none());
}

#[test]
fn lets_the_anonymous_consumer_stand_in_for_a_missing_certificate_when_optional() {
    let policy = policy("mode: optional\nanonymous_consumer: guest");
    let (flow, _, exchange) = run(&*policy, None, &[]);
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("anonymous");
    assert_eq!(&*identity.consumer.id, "guest");
    assert!(identity.is_anonymous);
}

#[test]
fn matches_subject_alternative_names_dns_names_without_regard_to_case() {
    let by_dns = policy("consumer_by: san_dns");
    let (_, _, exchange) =
        run(&*by_dns, Some(certificate("ignored", &["other.example.org", "WEB.svc.Example.org"])), &[]);
    assert_eq!(&*exchange.identity.expect("recognised").consumer.id, "web");

    let by_uri = policy("consumer_by: san_uri");
    let (_, _, exchange) = run(&*by_uri, Some(certificate("ignored", &["spiffe://example.org/web"])), &[]);
    assert_eq!(&*exchange.identity.expect("recognised").credential_id, "web:mtls_auth:1");

    let by_email = policy("consumer_by: san_email");
    let (flow, _, exchange) = run(&*by_email, Some(certificate("ignored", &["ops@example.org"])), &[]);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(&*exchange.identity.expect("ad-hoc").consumer.id, "ops@example.org");
}

#[test]
fn pins_a_certificate_by_its_fingerprint_whatever_its_spelling() {
    let certificate = certificate("anyone", &[]);
    let colons: Vec<String> = certificate
        .fingerprint_sha256
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect();
    let config = consumers(&colons.join(":"));
    let policy = build_identity_policy(RegisteredPolicy::identity::<MtlsAuth>(), "consumer_by: fingerprint", &config)
        .unwrap_or_else(|errors| panic!("{errors}"));
    let (_, _, exchange) = run(&*policy, Some(certificate), &[]);
    assert_eq!(&*exchange.identity.expect("pinned").consumer.id, "pinned");

    // Another certificate with the same name is another fingerprint.
    let (_, _, exchange) = run(&*policy, Some(self::certificate("anyone", &[])), &[]);
    assert_ne!(exchange.identity.map(|identity| identity.consumer.id.to_string()).as_deref(), Some("pinned"));
}

#[test]
fn admits_an_unknown_certificate_as_its_own_consumer_unless_a_consumer_is_required() {
    let open = policy("");
    let (flow, _, exchange) = run(&*open, Some(certificate("batch-job", &[])), &[]);
    assert!(matches!(flow, Flow::Continue));
    let identity = exchange.identity.expect("ad-hoc");
    assert_eq!(&*identity.consumer.id, "batch-job");
    assert!(identity.consumer.groups.is_empty());

    let strict = policy("require_consumer: true");
    let (flow, _, exchange) = run(&*strict, Some(certificate("batch-job", &[])), &[]);
    assert_eq!(refusal(flow), (StatusCode::FORBIDDEN, "unknown-client-certificate".to_owned()));
    assert!(exchange.identity.is_none());
}

#[test]
fn refuses_a_certificate_named_like_a_consumer_that_does_not_name_it() {
    let policy = policy("");
    let (flow, _, _) = run(&*policy, Some(certificate("admin", &[])), &[]);
    assert_eq!(refusal(flow), (StatusCode::FORBIDDEN, "unknown-client-certificate".to_owned()));
}

#[test]
fn refuses_a_certificate_without_the_field_that_names_consumers() {
    let policy = policy("consumer_by: san_uri");
    let (flow, _, _) = run(&*policy, Some(certificate("payments-service", &["dns.example.org"])), &[]);
    assert_eq!(refusal(flow), (StatusCode::FORBIDDEN, "unknown-client-certificate".to_owned()));
}

#[test]
fn rejects_bad_header_names_and_an_anonymous_consumer_on_a_required_route() {
    let found = errors(
        "anonymous_consumer: guest\nforward_headers: {subject: \"bad header\", fingerprint: x-ok}",
        &consumers(&"ab".repeat(32)),
    );
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].mtls_auth.anonymous_consumer: ")), "{found:?}");
    assert!(
        found.contains(
            &"global_policies[0].mtls_auth.forward_headers.subject: `bad header` is not a header name".to_owned()
        ),
        "{found:?}"
    );
    let found = errors("mode: optional\nanonymous_consumer: nobody", &consumers(&"ab".repeat(32)));
    assert!(
        found.contains(&"global_policies[0].mtls_auth.anonymous_consumer: no consumer has id `nobody`".to_owned()),
        "{found:?}"
    );
    let found = errors("consumer_by: serial", &consumers(&"ab".repeat(32)));
    assert!(found.iter().any(|e| e.starts_with("global_policies[0].mtls_auth.consumer_by")), "{found:?}");
}

#[test]
fn rejects_credentials_without_exactly_one_valid_name_and_duplicates() {
    let config = "consumers:
  - id: a
    credentials: {mtls_auth: {}}
  - id: b
    credentials: {mtls_auth: {subject: x, fingerprint: \"00\"}}
  - id: c
    credentials: {mtls_auth: {fingerprint: \"not-hex\"}}
  - id: d
    credentials: {mtls_auth: {subject: shared}}
  - id: e
    credentials: {mtls_auth: {subject: shared}}
";
    let found = errors("", config);
    assert!(
        found.contains(&"consumers[a].credentials.mtls_auth: give `subject` or `fingerprint`".to_owned()),
        "{found:?}"
    );
    assert!(
        found.iter().any(|e| e.starts_with("consumers[b].credentials.mtls_auth: ") && e.contains("not both")),
        "{found:?}"
    );
    assert!(found.iter().any(|e| e.starts_with("consumers[c].credentials.mtls_auth.fingerprint: ")), "{found:?}");
    assert!(
        found.contains(
            &"consumers[e].credentials.mtls_auth.subject: the same subject is already the credential `d:mtls_auth`"
                .to_owned()
        ),
        "{found:?}"
    );
}

#[test]
fn normalizes_fingerprints_written_with_separators_or_in_upper_case() {
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_eq!(normalized_fingerprint(hex).as_deref(), Some(hex));
    assert_eq!(
        normalized_fingerprint(
            "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08"
        )
        .as_deref(),
        Some(hex)
    );
    assert_eq!(normalized_fingerprint(&hex[..62]), None);
    assert_eq!(normalized_fingerprint(&format!("{}zz", &hex[..62])), None);
}

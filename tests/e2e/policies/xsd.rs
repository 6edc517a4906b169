//! `xsd` through a running gateway: an XML Schema in a file beside the configuration, with an
//! `xs:include` of a second file, decides which XML bodies reach the upstream; bodies that do
//! not match get 400 with positions and no values.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{gantry_binary, with_admin};

const INVOICE_XSD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:include schemaLocation="types.xsd"/>
  <xs:element name="invoice">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="customer" type="xs:string"/>
        <xs:element name="amount" type="amountType"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>"#;

const TYPES_XSD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:simpleType name="amountType">
    <xs:restriction base="xs:decimal"><xs:minExclusive value="0"/></xs:restriction>
  </xs:simpleType>
</xs:schema>"#;

async fn post_xml(gateway: &GatewayProcess, body: &str) -> TestResponse {
    TestClient::default()
        .request(Method::POST, &gateway.url("/invoices"), &[("content-type", "application/xml")], body.to_owned())
        .await
}

#[tokio::test]
async fn forwards_valid_documents_and_refuses_the_rest_before_the_upstream() {
    let upstream = EchoUpstream::start("up").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("schemas")).expect("dir");
    std::fs::write(dir.path().join("schemas/invoice.xsd"), INVOICE_XSD).expect("write schema");
    std::fs::write(dir.path().join("schemas/types.xsd"), TYPES_XSD).expect("write schema");
    let yaml = with_admin(
        "admin-key-long-enough",
        &format!(
            "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: invoices\n    paths: [/invoices]\n    upstream: up\n    policies:\n      - xsd: {{file: schemas/invoice.xsd}}\n",
            upstream.addr()
        ),
    );
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[]);

    let valid = "<invoice><customer>ACME</customer><amount>12.50</amount></invoice>";
    let accepted = post_xml(&gateway, valid).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.json()["body"], valid);

    let refused = post_xml(&gateway, "<invoice>\n<customer>ACME</customer>\n<amount>-99.75</amount>\n</invoice>").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.body);
    let problem = refused.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-validation-failed");
    assert_eq!(problem["errors"][0]["line"], 3, "{problem}");
    assert!(!problem.to_string().contains("99.75"), "the problem repeats a value: {problem}");

    let with_dtd = post_xml(&gateway, r#"<!DOCTYPE invoice [<!ENTITY x "y">]><invoice/>"#).await;
    assert_eq!(with_dtd.status, StatusCode::BAD_REQUEST);
    assert_eq!(with_dtd.json()["type"], "https://gantry.dev/problems/invalid-xml");

    assert_eq!(upstream.requests(), 1, "only the valid document may reach the upstream");
    assert_policy_answers(&gateway, "xsd", 400, 2).await;
}

//! `xml_threat_protection` through a running gateway: documents with a DTD (entity
//! expansion, external entities) and documents past a limit are refused before the upstream;
//! a document within the limits arrives intact.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::EchoUpstream;
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{start_gateway, with_admin};

async fn post_xml(gateway: &gantry_testkit::GatewayProcess, body: &str) -> TestResponse {
    TestClient::default()
        .request(Method::POST, &gateway.url("/soap"), &[("content-type", "text/xml; charset=utf-8")], body.to_owned())
        .await
}

#[tokio::test]
async fn refuses_dtds_and_documents_past_a_limit_before_the_upstream() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&with_admin(
        "admin-key-long-enough",
        &format!(
            "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: soap\n    paths: [/soap]\n    upstream: up\n    policies:\n      - xml_threat_protection: {{max_depth: 3, max_attributes_per_element: 2}}\n",
            upstream.addr()
        ),
    ));

    let within = r#"<?xml version="1.0"?><order id="1"><line sku="a" qty="2">&lt;gift&gt;</line></order>"#;
    let accepted = post_xml(&gateway, within).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.json()["body"], within);

    let laughs = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>"#;
    let refused = post_xml(&gateway, laughs).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.body);
    assert_eq!(refused.json()["type"], "https://gantry.dev/problems/xml-threat");
    assert!(refused.json()["detail"].as_str().unwrap_or_default().contains("DOCTYPE"));

    let deep = post_xml(&gateway, "<a><b><c><d/></c></b></a>").await;
    assert_eq!(deep.status, StatusCode::BAD_REQUEST);
    assert_eq!(deep.json()["limit"], "max_depth");
    let wide = post_xml(&gateway, r#"<a x="1" y="2" z="3"/>"#).await;
    assert_eq!(wide.json()["limit"], "max_attributes_per_element");
    let broken = post_xml(&gateway, "<a><b></a>").await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert_eq!(broken.json()["type"], "https://gantry.dev/problems/invalid-xml");

    assert_eq!(upstream.requests(), 1, "only the document within the limits may reach the upstream");
    assert_policy_answers(&gateway, "xml_threat_protection", 400, 4).await;
}

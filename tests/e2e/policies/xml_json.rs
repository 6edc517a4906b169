//! `json_to_xml` and `xml_to_json` through a running gateway: the upstream receives the
//! converted request body with its new `Content-Type` and length, the client receives the
//! converted response body, and a document with a DTD is refused before it reaches anyone.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use gantry_testkit::client::TestClient;
use gantry_testkit::EchoUpstream;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::support::{start_gateway, with_listener};

/// An upstream answering every request with the same XML document, as a SOAP service would.
struct XmlUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

const ANSWER: &str = r#"<?xml version="1.0"?>
<m:result xmlns:m="urn:orders"><m:order id="7"><m:item>pen</m:item></m:order><m:count>1</m:count></m:result>"#;

impl XmlUpstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    let service = service_fn(|_request| async {
                        let mut response = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
                        response.headers_mut().insert("content-type", "application/xml".parse().expect("value"));
                        Ok::<_, Infallible>(response)
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for XmlUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn converts_json_clients_to_an_xml_service_and_back() {
    let echo = EchoUpstream::start("echo").await;
    let soap = XmlUpstream::start().await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: echo
    endpoints: [{echo}]
  - id: soap
    endpoints: [{soap}]
routes:
  - id: to-xml
    paths: [/to-xml]
    upstream: echo
    policies:
      - json_to_xml:
          content_type: text/xml; charset=utf-8
  - id: from-xml
    paths: [/from-xml]
    upstream: echo
    policies:
      - xml_to_json:
          always_array: [item]
          typed_values: true
  - id: soap
    paths: [/soap]
    upstream: soap
    policies:
      - xml_to_json:
          request: false
          response: true
          always_array: ["m:item"]
  - id: echo-as-xml
    paths: [/echo-as-xml]
    upstream: echo
    policies:
      - json_to_xml:
          request: false
          response: true
          root_element: echo
"#,
        echo = echo.addr(),
        soap = soap.addr
    )));
    let client = TestClient::default();

    let json_body = r##"{"order": {"@id": 7, "item": [{"@sku": "a-1", "#text": "pen & ink"}], "note": null}}"##;
    let to_xml =
        client.request(Method::POST, &gateway.url("/to-xml"), &[("content-type", "application/json")], json_body).await;
    assert_eq!(to_xml.status, StatusCode::OK, "{to_xml:?}");
    let seen = to_xml.json();
    assert_eq!(
        seen["body"],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><order id=\"7\"><item sku=\"a-1\">pen &amp; ink</item><note/></order>"
    );
    assert_eq!(seen["headers"]["content-type"], "text/xml; charset=utf-8");
    assert_eq!(seen["headers"]["content-length"], seen["body_length"].to_string(), "{seen}");

    let xml_body = r#"<order id="7"><item sku="a-1">2</item><paid>true</paid></order>"#;
    let from_xml =
        client.request(Method::POST, &gateway.url("/from-xml"), &[("content-type", "application/xml")], xml_body).await;
    let seen = from_xml.json();
    assert_eq!(seen["headers"]["content-type"], "application/json");
    let forwarded: Value = serde_json::from_str(seen["body"].as_str().expect("body")).expect("JSON forwarded");
    assert_eq!(forwarded, json!({"order": {"@id": 7, "item": [{"@sku": "a-1", "#text": 2}], "paid": true}}));

    let xxe = r#"<?xml version="1.0"?><!DOCTYPE order [<!ENTITY x SYSTEM "file:///etc/passwd">]><order>&x;</order>"#;
    let refused =
        client.request(Method::POST, &gateway.url("/from-xml"), &[("content-type", "application/xml")], xxe).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(refused.json()["detail"].as_str().is_some_and(|detail| detail.contains("DOCTYPE")), "{refused:?}");
    assert_eq!(echo.requests(), 2, "the refused document never reached the upstream");

    let answer = client.request(Method::GET, &gateway.url("/soap"), &[], "").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("content-length").map(str::to_owned), Some(answer.body.len().to_string()));
    assert_eq!(
        answer.json(),
        json!({"m:result": {"@xmlns:m": "urn:orders", "m:count": "1",
                            "m:order": {"@id": "7", "m:item": ["pen"]}}})
    );

    let as_xml = client.request(Method::GET, &gateway.url("/echo-as-xml?x=1"), &[], "").await;
    assert_eq!(as_xml.header("content-type"), Some("application/xml"));
    let text = String::from_utf8(as_xml.body.to_vec()).expect("UTF-8");
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><echo>"), "{text}");
    assert!(text.contains("<path>/echo-as-xml</path>") && text.contains("<query>x=1</query>"), "{text}");
}

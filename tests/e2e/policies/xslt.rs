//! `xslt` through a running gateway (built with `--features xslt`, as scripts/test.sh does):
//! a stylesheet file beside the configuration, with an `xsl:include`, turns request bodies into
//! SOAP envelopes before they reach a real echo upstream, with parameters from a header and the
//! path; an XML upstream's answers are rendered as text for the client; malformed XML gets a
//! 400 problem and never reaches the upstream; a broken stylesheet is refused with its file
//! and field path, by `gantry validate` and on reload, while the old one keeps serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;

use super::harness::assert_policy_answers;
use crate::support::{gantry_binary, with_admin};

const TO_SOAP: &str = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="urn:example:orders">
  <xsl:include href="lib/lines.xsl"/>
  <xsl:output method="xml" omit-xml-declaration="yes" media-type="text/xml"/>
  <xsl:param name="tenant" select="'anonymous'"/>
  <xsl:param name="order-id"/>
  <xsl:template match="/">
    <soap:Envelope>
      <soap:Header><m:Tenant><xsl:value-of select="$tenant"/></m:Tenant></soap:Header>
      <soap:Body>
        <m:UpdateOrder id="{$order-id}" total="{sum(order/item/@qty)}">
          <xsl:apply-templates select="order/item"><xsl:sort select="@sku"/></xsl:apply-templates>
        </m:UpdateOrder>
      </soap:Body>
    </soap:Envelope>
  </xsl:template>
</xsl:stylesheet>
"#;

const LINES: &str = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:m="urn:example:orders">
  <xsl:template match="item"><m:Line sku="{@sku}" qty="{@qty}"/></xsl:template>
</xsl:stylesheet>
"#;

/// The catalog the XML upstream serves.
const CATALOG: &str = r#"<?xml version="1.0"?>
<catalog><book id="b2" price="12.50"><title>  Dune </title></book><book id="b1" price="8"><title>Emma</title></book></catalog>"#;

/// An upstream answering every request with [`CATALOG`] as `application/xml`.
struct XmlUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

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
                        let mut response = Response::new(Full::new(Bytes::from_static(CATALOG.as_bytes())));
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

fn config(echo: SocketAddr, catalog: SocketAddr) -> String {
    with_admin(
        "admin-key-long-enough",
        &format!(
            r#"upstreams:
  - id: echo
    endpoints: [{echo}]
  - id: catalog
    endpoints: [{catalog}]
routes:
  - id: orders
    paths: ["/orders/{{id}}"]
    upstream: echo
    policies:
      - xslt:
          file: stylesheets/to-soap.xsl
          params:
            tenant: {{header: x-tenant}}
            order-id: {{path_param: id}}
  - id: catalog
    paths: [/catalog]
    upstream: catalog
    policies:
      - xslt:
          response:
            params:
              currency: {{header: x-currency}}
            stylesheet: |
              <xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
                <xsl:output method="text"/>
                <xsl:param name="currency" select="'EUR'"/>
                <xsl:template match="/">
                  <xsl:for-each select="catalog/book">
                    <xsl:sort select="@price" data-type="number"/>
                    <xsl:value-of select="concat(normalize-space(title), ' ', format-number(@price, '0.00'), ' ', $currency)"/>
                    <xsl:text>&#10;</xsl:text>
                  </xsl:for-each>
                </xsl:template>
              </xsl:stylesheet>
"#
        ),
    )
}

async fn post_order(gateway: &GatewayProcess, headers: &[(&str, &str)], body: &str) -> TestResponse {
    let mut all = vec![("content-type", "application/xml")];
    all.extend_from_slice(headers);
    TestClient::default().request(Method::POST, &gateway.url("/orders/o-42"), &all, body.to_owned()).await
}

#[tokio::test]
async fn transforms_request_and_response_bodies_and_refuses_malformed_xml() {
    let echo = EchoUpstream::start("echo").await;
    let catalog = XmlUpstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("stylesheets/lib")).expect("dirs");
    std::fs::write(dir.path().join("stylesheets/to-soap.xsl"), TO_SOAP).expect("write stylesheet");
    std::fs::write(dir.path().join("stylesheets/lib/lines.xsl"), LINES).expect("write stylesheet");
    let gateway =
        GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &config(echo.addr(), catalog.addr), &[]);

    let order = r#"<order><item sku="b-2" qty="3"/><item sku="a-1" qty="2"/></order>"#;
    let forwarded = post_order(&gateway, &[("x-tenant", "acme & co")], order).await;
    assert_eq!(forwarded.status, StatusCode::OK, "{forwarded:?}");
    let seen = forwarded.json();
    assert_eq!(
        seen["body"],
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"urn:example:orders\">\
         <soap:Header><m:Tenant>acme &amp; co</m:Tenant></soap:Header><soap:Body>\
         <m:UpdateOrder id=\"o-42\" total=\"5\"><m:Line sku=\"a-1\" qty=\"2\"/><m:Line sku=\"b-2\" qty=\"3\"/></m:UpdateOrder>\
         </soap:Body></soap:Envelope>\n"
    );
    assert_eq!(seen["headers"]["content-type"], "text/xml");
    assert_eq!(seen["headers"]["content-length"], seen["body_length"].to_string(), "{seen}");

    // Without the header, the stylesheet's own default for the parameter.
    let anonymous = post_order(&gateway, &[], order).await.json();
    assert!(
        anonymous["body"].as_str().is_some_and(|body| body.contains("<m:Tenant>anonymous</m:Tenant>")),
        "{anonymous}"
    );

    let malformed = post_order(&gateway, &[], "<order><item sku='a'></order>").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{malformed:?}");
    assert_eq!(malformed.header("content-type"), Some("application/problem+json"));
    assert_eq!(malformed.json()["type"], "https://gantry.dev/problems/invalid-xml");
    assert_eq!(echo.requests(), 2, "the malformed body never reached the upstream");
    assert_policy_answers(&gateway, "xslt", 400, 1).await;

    let client = TestClient::default();
    let books = client.request(Method::GET, &gateway.url("/catalog"), &[("x-currency", "USD")], "").await;
    assert_eq!(books.status, StatusCode::OK, "{books:?}");
    assert_eq!(books.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(books.header("content-length").map(str::to_owned), Some(books.body.len().to_string()));
    assert_eq!(String::from_utf8_lossy(&books.body), "Emma 8.00 USD\nDune 12.50 USD\n");
    let default_currency = client.get(&gateway.url("/catalog")).await;
    assert_eq!(String::from_utf8_lossy(&default_currency.body), "Emma 8.00 EUR\nDune 12.50 EUR\n");

    // A stylesheet broken on disk is refused on reload, naming the file and the field; the
    // compiled one keeps serving.
    let stylesheet = gateway.dir().join("stylesheets/to-soap.xsl");
    std::fs::write(&stylesheet, TO_SOAP.replace("sum(order/item/@qty)", "sum(///)")).expect("break stylesheet");
    gateway.signal(Signal::SIGHUP);
    let rejected = eventually("the reload to be rejected", || async {
        gateway.logs().into_iter().find(|line| line.contains("configuration rejected"))
    })
    .await;
    let logs = gateway.logs().join("\n");
    assert!(logs.contains("routes[orders].policies[0].xslt.file"), "{rejected}\n{logs}");
    assert!(logs.contains(&stylesheet.display().to_string()), "{logs}");
    let still = post_order(&gateway, &[("x-tenant", "acme")], order).await;
    assert!(still.json()["body"].as_str().is_some_and(|body| body.contains("total=\"5\"")), "{still:?}");
}

#[test]
fn validate_refuses_a_broken_stylesheet_with_its_file_and_field_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("stylesheets")).expect("dir");
    let broken = dir.path().join("stylesheets/broken.xsl");
    std::fs::write(&broken, "<xsl:stylesheet version=\"1.0\" xmlns:xsl=\"http://www.w3.org/1999/XSL/Transform\">\n  <xsl:template match=\"/\">\n</xsl:stylesheet>\n")
        .expect("write stylesheet");
    let file = dir.path().join("gantry.yaml");
    std::fs::write(
        &file,
        "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\nroutes:\n  - id: orders\n    paths: [/orders]\n    upstream: up\n    policies:\n      - xslt:\n          response:\n            file: stylesheets/broken.xsl\n",
    )
    .expect("write config");
    let output = Command::new(gantry_binary())
        .args(["validate", "--config", file.to_str().expect("UTF-8 temp path")])
        .env_remove("GANTRY_CONFIG")
        .output()
        .expect("run gantry validate");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.contains("routes[orders].policies[0].xslt.response.file"), "{printed}");
    assert!(printed.contains(&broken.display().to_string()), "{printed}");
    assert!(printed.contains("not a usable XSLT stylesheet"), "{printed}");
}

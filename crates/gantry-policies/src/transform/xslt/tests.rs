use std::sync::Arc;

use bytes::Bytes;
use gantry_policy_api::response_body::{take_response_body_action, ResponseBodyAction};
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Flow, Policy, PolicyResponse, RegisteredPolicy, RequestBody};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};

use super::Xslt;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Xslt>()
}

/// The settings with `stylesheet` as an inline block under `at` (`""` for the top level).
fn settings(at: &str, stylesheet: &str, rest: &str) -> String {
    let indent = if at.is_empty() { "  " } else { "    " };
    let body: String = stylesheet.lines().map(|line| format!("{indent}{line}\n")).collect();
    if at.is_empty() {
        format!("stylesheet: |\n{body}{rest}")
    } else {
        format!("{at}:\n  stylesheet: |\n{body}{rest}")
    }
}

const ORDER_TO_SOAP: &str = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <xsl:output method="xml" omit-xml-declaration="yes" media-type="text/xml"/>
  <xsl:param name="tenant" select="'none'"/>
  <xsl:param name="id"/>
  <xsl:param name="lang"/>
  <xsl:param name="fixed"/>
  <xsl:template match="/">
    <soap:Envelope><soap:Body>
      <Order tenant="{$tenant}" id="{$id}" lang="{$lang}" fixed="{$fixed}" lines="{count(order/item)}">
        <xsl:for-each select="order/item"><xsl:sort select="@sku"/><Line><xsl:value-of select="@sku"/></Line></xsl:for-each>
      </Order>
    </soap:Body></soap:Envelope>
  </xsl:template>
</xsl:stylesheet>"#;

const PARAMS: &str = "  params:\n    tenant: {header: x-tenant}\n    id: {path_param: id}\n    lang: {query: lang}\n    fixed: {value: \"a&b\"}\n";

struct Sent {
    status: u16,
    body: String,
    content_type: String,
    answer: Option<PolicyResponse>,
}

fn send(policy: &Arc<dyn Policy>, content_type: &str, headers: &[(&str, &str)], body: &str) -> Sent {
    let mut builder = http::Request::post("/orders/o-7?lang=en").header(CONTENT_TYPE, content_type);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = request_parts(builder.body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.path_params.push(("id".into(), "o-7".to_owned()));
    if policy.request_body_limit(&request).is_some() {
        exchange.extensions.insert(RequestBody(Bytes::from(body.to_owned())));
    }
    let (status, answer) = match run_request(&**policy, &mut request, &mut exchange) {
        Flow::Continue => (200, None),
        Flow::Respond(answer) => (answer.status().as_u16(), Some(answer)),
    };
    let forwarded = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
    if status == 200 && !forwarded.is_empty() && forwarded != body.as_bytes() {
        assert_eq!(request.headers[CONTENT_LENGTH], forwarded.len().to_string());
    }
    let content_type = request.headers[CONTENT_TYPE].to_str().expect("text").to_owned();
    Sent { status, body: String::from_utf8(forwarded.to_vec()).expect("UTF-8"), content_type, answer }
}

fn problem_type(answer: &Option<PolicyResponse>) -> String {
    let answer = answer.as_ref().expect("an answer");
    let document: serde_json::Value = serde_json::from_slice(answer.body()).expect("a problem document");
    document["type"].as_str().expect("type").rsplit('/').next().expect("code").to_owned()
}

#[test]
fn transforms_request_bodies_with_parameters_from_the_request() {
    let policy = build_policy(entry(), &settings("request", ORDER_TO_SOAP, PARAMS)).expect("valid");
    let order = r#"<order><item sku="b"/><item sku="a"/></order>"#;
    let sent = send(&policy, "application/xml", &[("x-tenant", "acme")], order);
    assert_eq!(sent.status, 200);
    assert_eq!(sent.content_type, "text/xml", "media-type of xsl:output");
    assert_eq!(
        sent.body,
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
         <Order tenant=\"acme\" id=\"o-7\" lang=\"en\" fixed=\"a&amp;b\" lines=\"2\"><Line>a</Line><Line>b</Line></Order>\
         </soap:Body></soap:Envelope>\n"
    );

    // Without the header, the stylesheet's own default applies.
    let sent = send(&policy, "text/xml; charset=utf-8", &[], order);
    assert!(sent.body.contains("tenant=\"none\""), "{}", sent.body);

    // A header value is a string, never XPath.
    let sent = send(&policy, "application/xml", &[("x-tenant", "count(//item)")], order);
    assert!(sent.body.contains("tenant=\"count(//item)\""), "{}", sent.body);
}

#[test]
fn leaves_other_bodies_alone() {
    let policy = build_policy(entry(), &settings("", ORDER_TO_SOAP, "")).expect("valid");
    let sent = send(&policy, "application/json", &[], "{\"a\": 1}");
    assert_eq!((sent.status, sent.body.as_str(), sent.content_type.as_str()), (200, "", "application/json"));
    let sent = send(&policy, "application/xml", &[], "");
    assert_eq!((sent.status, sent.body.as_str()), (200, ""));

    let mut request = request_parts(
        http::Request::post("/")
            .header(CONTENT_TYPE, "application/xml")
            .header(CONTENT_ENCODING, "gzip")
            .body(())
            .expect("request"),
    );
    assert_eq!(policy.request_body_limit(&request), None, "compressed bodies are not read");
    let mut exchange = exchange_from("10.0.0.1:5000");
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));
}

#[test]
fn answers_malformed_and_failing_request_bodies_with_problems() {
    let policy = build_policy(entry(), &settings("", ORDER_TO_SOAP, "")).expect("valid");
    let sent = send(&policy, "application/xml", &[], "<order><item></order>");
    assert_eq!(sent.status, 400);
    assert_eq!(problem_type(&sent.answer), "invalid-xml");
    let xxe = r#"<!DOCTYPE order [<!ENTITY x SYSTEM "file:///etc/passwd">]><order>&x;</order>"#;
    let sent = send(&policy, "application/xml", &[], xxe);
    assert_eq!(sent.status, 400, "a body with a DTD is refused: {}", sent.body);
    assert_eq!(problem_type(&sent.answer), "invalid-xml");

    let terminating = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><xsl:message terminate="yes">no <xsl:value-of select="name(/*)"/></xsl:message></xsl:template>
</xsl:stylesheet>"#;
    let policy = build_policy(entry(), &settings("", terminating, "")).expect("valid");
    let sent = send(&policy, "application/xml", &[], "<secret/>");
    assert_eq!(sent.status, 500);
    assert_eq!(problem_type(&sent.answer), "transformation-failed");
    let detail = String::from_utf8_lossy(sent.answer.as_ref().expect("answer").body()).into_owned();
    assert!(!detail.contains("secret"), "the stylesheet's message is logged, not sent: {detail}");

    let copies = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><r><xsl:for-each select="//*"><xsl:copy-of select="/"/></xsl:for-each></r></xsl:template>
</xsl:stylesheet>"#;
    let policy = build_policy(entry(), &settings("", copies, "max_output_bytes: 1000\n")).expect("valid");
    let sent = send(&policy, "application/xml", &[], &format!("<a>{}</a>", "<b>0123456789</b>".repeat(20)));
    assert_eq!(sent.status, 500, "past max_output_bytes");

    let policy = build_policy(entry(), &settings("", ORDER_TO_SOAP, "max_body_bytes: 10\n")).expect("valid");
    let sent = send(&policy, "application/xml", &[], "<order><item sku='a'/></order>");
    assert_eq!(sent.status, 413);
}

fn response_head(content_type: &str) -> http::response::Parts {
    http::Response::builder().header(CONTENT_TYPE, content_type).body(()).expect("response").into_parts().0
}

#[test]
fn transforms_response_bodies_with_parameters_read_from_the_request() {
    let to_text = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="who"/>
  <xsl:template match="/"><xsl:value-of select="concat($who, ': ', sum(//item/@qty))"/></xsl:template>
</xsl:stylesheet>"#;
    let policy =
        build_policy(entry(), &settings("response", to_text, "  params:\n    who: {header: x-user}\n")).expect("valid");
    assert!(!policy.reads_request_body());
    let mut request = request_parts(http::Request::get("/").header("x-user", "ann").body(()).expect("request"));
    let mut exchange = exchange_from("10.0.0.1:5000");
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));

    let mut head = response_head("application/xml");
    assert!(policy.response_body_limit(&head, &exchange).is_some());
    let body = Bytes::from_static(br#"<order><item qty="2"/><item qty="3"/></order>"#);
    assert!(policy.on_response_body(&head, &body, &mut exchange).is_none());
    policy.on_response(&mut head, &mut exchange);
    let Some(ResponseBodyAction::Replace(sent)) = take_response_body_action(&mut exchange) else { panic!("replaced") };
    assert_eq!(&sent[..], b"ann: 5");
    assert_eq!(head.headers[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(head.headers[CONTENT_LENGTH], "6");

    let answer = policy.on_response_body(&head, &Bytes::from_static(b"<order>"), &mut exchange);
    let answer = answer.expect("a malformed upstream body is answered");
    assert_eq!(answer.status().as_u16(), 502);
    assert!(policy.response_body_limit(&response_head("application/json"), &exchange).is_none());
}

#[test]
fn labels_results_by_the_output_method_or_the_setting() {
    let html = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><html><body><xsl:value-of select="/a"/></body></html></xsl:template>
</xsl:stylesheet>"#;
    let policy = build_policy(entry(), &settings("", html, "")).expect("valid");
    let sent = send(&policy, "application/xml", &[], "<a>x</a>");
    assert_eq!(sent.content_type, "text/html; charset=utf-8", "XSLT's default method for an html result");
    assert!(sent.body.contains("<body>x</body>"), "{}", sent.body);

    let plain = r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><b><xsl:value-of select="/a"/></b></xsl:template>
</xsl:stylesheet>"#;
    let policy = build_policy(entry(), &settings("", plain, "")).expect("valid");
    assert_eq!(send(&policy, "application/xml", &[], "<a>x</a>").content_type, "application/xml");
    let policy = build_policy(entry(), &settings("", plain, "content_type: application/vnd.b+xml\n")).expect("valid");
    assert_eq!(send(&policy, "application/xml", &[], "<a>x</a>").content_type, "application/vnd.b+xml");
}

#[test]
fn compiles_stylesheet_files_with_their_includes() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("lib")).expect("dir");
    std::fs::write(
        dir.path().join("lib/line.xsl"),
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template match="item"><line><xsl:value-of select="@sku"/></line></xsl:template></xsl:stylesheet>"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("main.xsl"),
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:include href="lib/line.xsl"/><xsl:output method="xml" omit-xml-declaration="yes"/>
             <xsl:template match="/"><lines><xsl:apply-templates select="order/item"/></lines></xsl:template></xsl:stylesheet>"#,
    )
    .expect("write");
    let file = dir.path().join("main.xsl");
    let policy = build_policy(entry(), &format!("file: {}", file.display())).expect("valid");
    let sent = send(&policy, "application/xml", &[], "<order><item sku='a'/></order>");
    assert_eq!(sent.body, "<lines><line>a</line></lines>\n");
}

#[test]
fn reports_bad_stylesheets_and_settings_at_their_paths() {
    let at = "global_policies[0].xslt";
    let errors = build_policy_error(entry(), &settings("request", "<xsl:stylesheet", "")).to_string();
    assert!(errors.contains(&format!("{at}.request.stylesheet")), "{errors}");
    assert!(errors.contains("is not a usable XSLT stylesheet"), "{errors}");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.xsl");
    std::fs::write(
        &file,
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template match="/"><xsl:value-of select="///"/></xsl:template></xsl:stylesheet>"#,
    )
    .expect("write");
    let errors = build_policy_error(entry(), &format!("file: {}\non: both", file.display())).to_string();
    assert!(errors.contains(&format!("{at}.file")), "{errors}");
    assert!(errors.contains("broken.xsl"), "{errors}");
    assert!(errors.contains("'///'"), "libxslt's reason: {errors}");

    let errors = build_policy_error(entry(), "file: /nonexistent/x.xsl").to_string();
    assert!(errors.contains(&format!("{at}.file")) && errors.contains("cannot read"), "{errors}");

    let not_a_stylesheet = build_policy_error(entry(), "stylesheet: '<a/>'").to_string();
    assert!(not_a_stylesheet.contains(&format!("{at}.stylesheet")), "{not_a_stylesheet}");

    for (yaml, path, words) in [
        ("{}", at.to_owned(), "give a stylesheet"),
        ("file: a.xsl\nstylesheet: '<a/>'", at.to_owned(), "not both"),
        ("file: a.xsl\nresponse: {file: b.xsl}", at.to_owned(), "not both"),
        ("response: {file: b.xsl}\non: both", format!("{at}.on"), "belongs with"),
        ("request: {}", format!("{at}.request"), "give the stylesheet"),
        ("file: a.xsl\nparams: {'1x': {value: a}}", format!("{at}.params.1x"), "XML name"),
        ("file: a.xsl\nparams: {p: {value: a, header: b}}", format!("{at}.params.p"), "exactly one"),
        ("file: a.xsl\nparams: {p: {header: 'a b'}}", format!("{at}.params.p.header"), "not a header name"),
        ("file: a.xsl\nmax_operations: 0", format!("{at}.max_operations"), "more than 0"),
        ("file: a.xsl\non: sideways", at.to_owned(), "on"),
    ] {
        let errors = build_policy_error(entry(), yaml).to_string();
        assert!(errors.contains(&path) && errors.contains(words), "{yaml}: {errors}");
    }
}

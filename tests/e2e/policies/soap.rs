//! `rest_to_soap`, `soap_to_rest` and `gantry import wsdl` through a running gateway, against
//! a real SOAP service (spyne, in Python) and a real SOAP client (zeep): REST calls get the
//! service's answers as JSON and its faults as problems with the mapped status; SOAP calls
//! reach a JSON upstream and get SOAP envelopes back, upstream errors as faults; and the
//! routes imported from spyne's own WSDL call it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::soap::{zeep_call, SpyneService, CALCULATOR_NAMESPACE};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::support::{gantry_binary, start_gateway, with_listener};

/// An HTTP upstream answering each request with `answer(method, path, body)`: a status, a
/// content type and a body.
struct FunctionUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

type Answer = (u16, &'static str, String);

impl FunctionUpstream {
    async fn start(answer: fn(&str, &str, &[u8]) -> Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                        let (status, content_type, text) = answer(parts.method.as_str(), parts.uri.path(), &body);
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() = StatusCode::from_u16(status).expect("status");
                        response.headers_mut().insert("content-type", content_type.parse().expect("value"));
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

impl Drop for FunctionUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn post_json(client: &TestClient, gateway: &GatewayProcess, path: &str, body: Value) -> TestResponse {
    client.request(Method::POST, &gateway.url(path), &[("content-type", "application/json")], body.to_string()).await
}

fn assert_problem(response: &TestResponse, status: u16, kind: &str) -> Value {
    assert_eq!(response.status.as_u16(), status, "{:?}", response.body);
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], format!("https://gantry.dev/problems/{kind}"), "{problem}");
    assert_eq!(problem["status"], status);
    problem
}

#[tokio::test]
async fn rest_clients_get_a_spyne_services_answers_as_json_and_its_faults_as_problems() {
    let spyne = SpyneService::start();
    // An upstream whose answer is not well-formed XML.
    let broken = FunctionUpstream::start(|_, _, _| (200, "text/xml", "<soap:Envelope><oops>".to_owned())).await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: spyne
    endpoints: [{spyne}]
  - id: broken
    endpoints: [{broken}]
routes:
  - id: add
    paths: [/calc/add]
    upstream: spyne
    policies:
      - rest_to_soap:
          namespace: {CALCULATOR_NAMESPACE}
          operation: Add
          action: Add
          path: /soap11
          field_order: [a, b]
          typed_values: true
  - id: divide
    paths: ["/calc/divide/{{dividend}}"]
    upstream: spyne
    policies:
      - rest_to_soap:
          namespace: {CALCULATOR_NAMESPACE}
          operation: Divide
          action: Divide
          path: /soap11
          fault_statuses:
            Client.DivisionByZero: 422
  - id: crash
    paths: [/calc/crash]
    upstream: spyne
    policies:
      - rest_to_soap: {{namespace: {CALCULATOR_NAMESPACE}, operation: Crash, action: Crash, path: /soap11}}
  - id: hello12
    paths: ["/calc12/hello/{{name}}"]
    methods: [GET]
    upstream: spyne
    policies:
      - rest_to_soap:
          soap_version: 1.2
          namespace: {CALCULATOR_NAMESPACE}
          operation: SayHello
          action: SayHello
          path: /soap12
          always_array: [string]
  - id: divide12
    paths: [/calc12/divide]
    upstream: spyne
    policies:
      - rest_to_soap: {{soap_version: "1.2", namespace: {CALCULATOR_NAMESPACE}, operation: Divide, path: /soap12}}
  - id: broken
    paths: [/broken]
    upstream: broken
    policies:
      - rest_to_soap: {{namespace: {CALCULATOR_NAMESPACE}, operation: Add}}
"#,
        spyne = spyne.addr(),
        broken = broken.addr,
    )));
    let client = TestClient::default();

    let sum = post_json(&client, &gateway, "/calc/add", json!({"a": 2, "b": 5})).await;
    assert_eq!(sum.status, StatusCode::OK, "{:?}\n{}", sum.body, spyne.logs().join("\n"));
    assert_eq!(sum.header("content-type"), Some("application/json"));
    assert_eq!(sum.json(), json!({"AddResult": 7}));

    let quotient = post_json(&client, &gateway, "/calc/divide/9", json!({"divisor": 2})).await;
    assert_eq!((quotient.status, quotient.json()), (StatusCode::OK, json!({"DivideResult": "4"})));

    let greeting = client.get(&gateway.url("/calc12/hello/Ann?times=2")).await;
    assert_eq!(greeting.status, StatusCode::OK, "{:?}", greeting.body);
    assert_eq!(greeting.json(), json!({"SayHelloResult": {"string": ["Hello, Ann", "Hello, Ann"]}}));
    let once = client.get(&gateway.url("/calc12/hello/Bo")).await;
    assert_eq!(once.json(), json!({"SayHelloResult": {"string": ["Hello, Bo"]}}), "always a list");

    // spyne's faults, each with the status its code maps to.
    let by_zero = post_json(&client, &gateway, "/calc/divide/5", json!({"divisor": 0})).await;
    let problem = assert_problem(&by_zero, 422, "soap-fault");
    assert_eq!(problem["faultcode"], "soap11env:Client.DivisionByZero");
    assert_eq!(problem["faultstring"], "cannot divide by zero");
    assert_eq!(problem["faultdetail"], json!({"dividend": "5"}));
    let invalid = post_json(&client, &gateway, "/calc/add", json!({"a": "two"})).await;
    let problem = assert_problem(&invalid, 400, "soap-fault");
    assert_eq!(problem["faultcode"], "soap11env:Client.ValidationError");
    let by_zero12 = post_json(&client, &gateway, "/calc12/divide", json!({"dividend": 1, "divisor": 0})).await;
    let problem = assert_problem(&by_zero12, 400, "soap-fault");
    assert_eq!(problem["faultcode"], "soap12env:Sender.DivisionByZero");
    let crash = post_json(&client, &gateway, "/calc/crash", json!({})).await;
    let problem = assert_problem(&crash, 502, "soap-fault");
    assert_eq!(
        (problem["faultcode"].as_str(), problem["faultstring"].as_str()),
        (Some("soap11env:Server"), Some("the calculator broke"))
    );

    let malformed = post_json(&client, &gateway, "/broken", json!({"a": 1})).await;
    assert_problem(&malformed, 502, "upstream-soap-invalid");
    let not_json = client.request(Method::POST, &gateway.url("/calc/add"), &[], "a=1").await;
    assert_problem(&not_json, 400, "body-not-convertible");
}

const SOAP11_CALL: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"><soap-env:Body><ns0:Add xmlns:ns0="urn:gantry:calculator"><ns0:a>2</ns0:a><ns0:b>5</ns0:b></ns0:Add></soap-env:Body></soap-env:Envelope>"#;

/// A SOAP 1.2 call of `operation` with `fields` (already XML), as zeep writes one.
fn soap12_call(operation: &str, fields: &str) -> String {
    format!(
        r#"<?xml version='1.0' encoding='utf-8'?>
<soap-env:Envelope xmlns:soap-env="http://www.w3.org/2003/05/soap-envelope"><soap-env:Body><ns0:{operation} xmlns:ns0="urn:gantry:calculator">{fields}</ns0:{operation}></soap-env:Body></soap-env:Envelope>"#
    )
}

#[tokio::test]
async fn soap_clients_reach_a_json_upstream_and_get_envelopes_and_faults_back() {
    let echo = EchoUpstream::start("echo").await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: echo
    endpoints: [{echo}]
routes:
  - id: soap
    paths: [/soap]
    upstream: echo
    policies:
      - soap_to_rest:
          typed_values: true
          operations:
            Add:
              path: /calc/add
            Lookup:
              method: GET
              path: "/items/{{id}}"
            Missing:
              path: /status/404
            Broken:
              path: /status/500
"#,
        echo = echo.addr()
    )));
    let client = TestClient::default();
    let soap11 = [("content-type", "text/xml; charset=utf-8"), ("soapaction", "\"Add\"")];

    let added = client.request(Method::POST, &gateway.url("/soap"), &soap11, SOAP11_CALL).await;
    assert_eq!(added.status, StatusCode::OK, "{:?}", added.body);
    assert_eq!(added.header("content-type"), Some("text/xml; charset=utf-8"));
    let text = String::from_utf8_lossy(&added.body).into_owned();
    for expected in [
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><AddResponse xmlns=\"urn:gantry:calculator\">",
        "<method>POST</method>",
        "<path>/calc/add</path>",
        "<body>{&quot;a&quot;:2,&quot;b&quot;:5}</body>",
        "<content-type>application/json</content-type>",
        "<upstream>echo</upstream>",
        "</AddResponse></soap:Body></soap:Envelope>",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    assert!(!text.contains("<soapaction>"), "SOAPAction does not go upstream:\n{text}");

    let soap12 = [("content-type", "application/soap+xml; charset=utf-8; action=\"Lookup\"")];
    let call = soap12_call("Lookup", "<ns0:id>4 2</ns0:id><ns0:lang>en</ns0:lang>");
    let looked_up = client.request(Method::POST, &gateway.url("/soap"), &soap12, call).await;
    assert_eq!(looked_up.status, StatusCode::OK, "{:?}", looked_up.body);
    assert_eq!(looked_up.header("content-type"), Some("application/soap+xml; charset=utf-8"));
    let text = String::from_utf8_lossy(&looked_up.body).into_owned();
    assert!(text.contains("<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\">"), "{text}");
    assert!(text.contains("<method>GET</method><path>/items/4%202</path><query>lang=en</query>"), "{text}");

    // Upstream errors: 4xx is the client's fault, 5xx the server's.
    let missing = soap12_call("Missing", "");
    let fault = client.request(Method::POST, &gateway.url("/soap"), &soap12, missing).await;
    assert_eq!(fault.status, StatusCode::BAD_REQUEST, "SOAP 1.2 sends Sender faults with 400");
    let text = String::from_utf8_lossy(&fault.body).into_owned();
    assert!(text.contains("<soap:Fault><soap:Code><soap:Value>soap:Sender</soap:Value></soap:Code>"), "{text}");
    assert!(text.contains("the upstream answered 404 Not Found"), "{text}");
    assert!(text.contains("<soap:Detail>") && text.contains("<status>404</status>"), "{text}");
    let missing11 = SOAP11_CALL.replace("Add", "Missing");
    let fault = client.request(Method::POST, &gateway.url("/soap"), &[soap11[0]], missing11).await;
    assert_eq!(fault.status, StatusCode::INTERNAL_SERVER_ERROR, "SOAP 1.1 sends every fault with 500");
    assert!(String::from_utf8_lossy(&fault.body).contains("<faultcode>soap:Client</faultcode>"));
    let broken11 = SOAP11_CALL.replace("Add", "Broken");
    let fault = client.request(Method::POST, &gateway.url("/soap"), &[soap11[0]], broken11).await;
    assert_eq!(fault.status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = String::from_utf8_lossy(&fault.body).into_owned();
    assert!(text.contains("<faultcode>soap:Server</faultcode><faultstring>the upstream answered 500 Internal Server Error</faultstring>"), "{text}");

    // What is not SOAP never reaches the upstream.
    let served = echo.requests();
    for body in ["<soap-env:Envelope", "{\"a\": 1}", &SOAP11_CALL.replace("Add", "Subtract")] {
        let refused = client.request(Method::POST, &gateway.url("/soap"), &[soap11[0]], body.to_owned()).await;
        assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(refused.header("content-type"), Some("text/xml; charset=utf-8"));
        assert!(String::from_utf8_lossy(&refused.body).contains("<faultcode>soap:Client</faultcode>"), "{body}");
    }
    assert_eq!(echo.requests(), served);
}

/// A REST calculator: `POST /calc/add` and `POST /calc/divide` with JSON fields.
fn calculate(_: &str, path: &str, body: &[u8]) -> Answer {
    let fields: Value = serde_json::from_slice(body).unwrap_or_default();
    let number = |name: &str| fields[name].as_i64().unwrap_or_default();
    match path {
        "/calc/add" => (200, "application/json", json!({"AddResult": number("a") + number("b")}).to_string()),
        "/calc/divide" if number("divisor") == 0 => {
            (422, "application/json", json!({"error": "division by zero"}).to_string())
        }
        "/calc/divide" => {
            (200, "application/json", json!({"DivideResult": number("dividend") / number("divisor")}).to_string())
        }
        _ => (404, "application/json", "{}".to_owned()),
    }
}

#[tokio::test]
async fn zeep_calls_a_json_service_through_soap_to_rest_in_both_soap_versions() {
    let spyne = SpyneService::start();
    let calculator = FunctionUpstream::start(calculate).await;
    let gateway = start_gateway(&with_listener(&format!(
        r#"upstreams:
  - id: calculator
    endpoints: [{calculator}]
routes:
  - id: soap
    paths: [/soap]
    upstream: calculator
    policies:
      - soap_to_rest:
          typed_values: true
          operations:
            Add: {{path: /calc/add}}
            Divide: {{path: /calc/divide}}
"#,
        calculator = calculator.addr
    )));
    let binding = format!("{{{CALCULATOR_NAMESPACE}}}Calculator");
    // zeep reads spyne's description of the calculator, and calls the gateway instead.
    for wsdl in [format!("{}?wsdl", spyne.soap11_url()), format!("{}?wsdl", spyne.soap12_url())] {
        let sum = zeep_call(&wsdl, &binding, &gateway.url("/soap"), "Add", &json!({"a": 2, "b": 5})).await;
        assert_eq!(sum, json!({"result": 7}), "{wsdl}");
        let quotient =
            zeep_call(&wsdl, &binding, &gateway.url("/soap"), "Divide", &json!({"dividend": 9, "divisor": 2})).await;
        assert_eq!(quotient, json!({"result": 4}), "{wsdl}");
        let fault =
            zeep_call(&wsdl, &binding, &gateway.url("/soap"), "Divide", &json!({"dividend": 1, "divisor": 0})).await;
        assert_eq!(fault["fault"]["message"], "the upstream answered 422 Unprocessable Entity", "{wsdl}: {fault}");
        let code = fault["fault"]["code"].as_str().unwrap_or_default();
        assert!(code.ends_with("Client") || code.ends_with("Sender"), "{wsdl}: {fault}");
    }
}

/// Runs `gantry <args>` in `dir`.
fn gantry_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(gantry_binary()).current_dir(dir).args(args).env_remove("GANTRY_CONFIG").output().expect("run gantry")
}

fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn routes_imported_from_spynes_wsdl_validate_and_call_it() {
    let spyne = SpyneService::start();
    let client = TestClient::default();
    for (url, prefix) in [(spyne.soap11_url(), "/calc"), (spyne.soap12_url(), "/calc12")] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("calculator.wsdl"), spyne.wsdl(&url).await).expect("write the WSDL");
        let imported = gantry_in(
            dir.path(),
            &["import", "wsdl", "calculator.wsdl", "--prefix", prefix, "--output", "gantry.yaml"],
        );
        assert!(imported.status.success(), "{}", printed(&imported));
        let yaml = std::fs::read_to_string(dir.path().join("gantry.yaml")).expect("the configuration was written");
        let version = if prefix == "/calc12" { "1.2" } else { "1.1" };
        for expected in [
            format!("  - id: calculator\n    endpoints: [\"{}\"]", spyne.addr()),
            format!(
                "  - id: calculator-say-hello\n    paths: [\"{prefix}/say-hello\"]\n    methods: [POST]\n    upstream: calculator"
            ),
            format!("soap_version: \"{version}\"\n          namespace: \"urn:gantry:calculator\"\n          operation: \"Add\"\n          action: \"Add\""),
            "field_order: [\"dividend\", \"divisor\"]".to_owned(),
        ] {
            assert!(yaml.contains(&expected), "no `{expected}` in:\n{yaml}");
        }
        let validated = gantry_in(dir.path(), &["validate", "--config", "gantry.yaml"]);
        assert!(validated.status.success(), "{}\n{yaml}", printed(&validated));
        assert!(printed(&validated).contains("4 routes"), "{}", printed(&validated));

        let config = format!("node:\n  listeners:\n    - address: 127.0.0.1:0\n{yaml}");
        let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &config, &[]);
        let sum = post_json(&client, &gateway, &format!("{prefix}/add"), json!({"a": 2, "b": 5})).await;
        assert_eq!(sum.status, StatusCode::OK, "{:?}\n{}", sum.body, spyne.logs().join("\n"));
        assert_eq!(sum.json(), json!({"AddResult": "7"}));
        let hello =
            post_json(&client, &gateway, &format!("{prefix}/say-hello"), json!({"name": "Ann", "times": 1})).await;
        assert_eq!(hello.json(), json!({"SayHelloResult": {"string": "Hello, Ann"}}));
        let by_zero =
            post_json(&client, &gateway, &format!("{prefix}/divide"), json!({"dividend": 1, "divisor": 0})).await;
        assert_problem(&by_zero, 400, "soap-fault");
    }
}

use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Policy, RegisteredPolicy, RequestBody};

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<OpenApiValidation>()
}

/// A Petstore-like OpenAPI 3.0 document, indented to sit under `document:`.
const PETSTORE: &str = r##"
  openapi: 3.0.3
  info: {title: Pets, version: "1"}
  servers: [{url: "https://api.example.com/v1"}]
  paths:
    /pets:
      get:
        parameters:
          - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
          - {name: tags, in: query, schema: {type: array, items: {type: string, maxLength: 5}}}
      post:
        parameters:
          - $ref: "#/components/parameters/Tenant"
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Pet"}
    /pets/{petId}:
      parameters:
        - {name: petId, in: path, required: true, schema: {type: integer, format: int64}}
      get: {}
  components:
    parameters:
      Tenant: {name: X-Tenant, in: header, required: true, schema: {type: string, pattern: "^[a-z]+$"}}
    schemas:
      Pet:
        type: object
        required: [name]
        properties:
          name: {type: string}
          tag: {type: string, nullable: true}
"##;

fn petstore(extra: &str) -> Arc<dyn Policy> {
    build_policy(entry(), &format!("{extra}document:{PETSTORE}")).expect("a valid document")
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> (RequestParts, Exchange) {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut exchange = exchange_from("10.0.0.1:5000");
    if let Some(body) = body {
        builder = builder.header("content-length", body.len());
        exchange.extensions.insert(RequestBody(Bytes::copy_from_slice(body.as_bytes())));
    }
    (request_parts(builder.body(()).expect("request")), exchange)
}

fn check(policy: &dyn Policy, method: &str, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Flow {
    let (mut parts, mut exchange) = request(method, uri, headers, body);
    run_request(policy, &mut parts, &mut exchange)
}

fn refused(flow: Flow) -> (StatusCode, Value) {
    let Flow::Respond(response) = flow else { panic!("the request should be refused") };
    let allow = response.headers().get(ALLOW).map(|value| value.to_str().unwrap_or_default().to_owned());
    let mut problem: Value = serde_json::from_slice(response.body()).expect("a JSON problem");
    if let Some(allow) = allow {
        problem["allow_header"] = allow.into();
    }
    (response.status(), problem)
}

fn first_error(flow: Flow) -> Value {
    let (status, problem) = refused(flow);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-validation-failed");
    problem["errors"][0].clone()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const TENANT: (&str, &str) = ("x-tenant", "acme");

#[test]
fn lets_requests_that_match_an_operation_through() {
    let policy = petstore("");
    assert!(matches!(check(&*policy, "GET", "/v1/pets?limit=10&tags=a&tags=b", &[], None), Flow::Continue));
    assert!(matches!(check(&*policy, "GET", "/v1/pets/42", &[], None), Flow::Continue));
    assert!(matches!(check(&*policy, "HEAD", "/v1/pets/42", &[], None), Flow::Continue));
    let pet = r#"{"name": "Rex", "tag": null}"#;
    assert!(matches!(check(&*policy, "POST", "/v1/pets", &[JSON, TENANT], Some(pet)), Flow::Continue));
}

#[test]
fn checks_query_path_and_header_parameters_as_their_schema_types() {
    let policy = petstore("");
    let error = first_error(check(&*policy, "GET", "/v1/pets?limit=500", &[], None));
    assert_eq!((error["in"].as_str(), error["name"].as_str()), (Some("query"), Some("limit")));
    let error = first_error(check(&*policy, "GET", "/v1/pets?limit=ten", &[], None));
    assert_eq!(error["name"], "limit");
    let error = first_error(check(&*policy, "GET", "/v1/pets?tags=a&tags=toolong", &[], None));
    assert_eq!((error["name"].as_str(), error["instance_path"].as_str()), (Some("tags"), Some("/1")));
    let error = first_error(check(&*policy, "GET", "/v1/pets/rex", &[], None));
    assert_eq!((error["in"].as_str(), error["name"].as_str()), (Some("path"), Some("petId")));
    let error = first_error(check(&*policy, "POST", "/v1/pets", &[JSON], Some(r#"{"name": "Rex"}"#)));
    assert_eq!(error, serde_json::json!({"in": "header", "name": "x-tenant", "message": "is required"}));
    let error =
        first_error(check(&*policy, "POST", "/v1/pets", &[JSON, ("x-tenant", "ACME")], Some("{\"name\":\"a\"}")));
    assert_eq!(error["name"], "x-tenant");
}

#[test]
fn checks_the_body_against_its_media_type_schema() {
    let policy = petstore("");
    let (mut parts, _) = request("POST", "/v1/pets", &[JSON, TENANT], Some("{}"));
    assert_eq!(policy.request_body_limit(&parts), Some(1024 * 1024));
    let error = first_error(check(&*policy, "POST", "/v1/pets", &[JSON, TENANT], Some(r#"{"tag": "x"}"#)));
    assert_eq!((error["in"].as_str(), error["instance_path"].as_str()), (Some("body"), Some("")));
    let error = first_error(check(&*policy, "POST", "/v1/pets", &[JSON, TENANT], None));
    assert_eq!(error["message"], "a request body is required");
    let (status, _) =
        refused(check(&*policy, "POST", "/v1/pets", &[("content-type", "text/plain"), TENANT], Some("x")));
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, problem) = refused(check(&*policy, "POST", "/v1/pets", &[JSON, TENANT], Some("{")));
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("https://gantry.dev/problems/invalid-json"))
    );
    // The GET has no body to read.
    parts.method = Method::GET;
    assert_eq!(policy.request_body_limit(&parts), None);
}

#[test]
fn answers_unknown_paths_and_methods_or_lets_them_pass() {
    let policy = petstore("");
    let (status, problem) = refused(check(&*policy, "GET", "/v1/owners", &[], None));
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("https://gantry.dev/problems/operation-not-found"))
    );
    let (status, problem) = refused(check(&*policy, "DELETE", "/v1/pets", &[], None));
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(problem["allow_header"], "GET, POST");
    let passing = petstore("unknown_operations: pass\n");
    assert!(matches!(check(&*passing, "GET", "/v1/owners", &[], None), Flow::Continue));
    assert!(matches!(check(&*passing, "DELETE", "/v1/pets", &[], None), Flow::Continue));
}

#[test]
fn takes_the_base_path_from_settings_over_the_servers_url() {
    let policy = petstore("base_path: /api\n");
    assert!(matches!(check(&*policy, "GET", "/api/pets/1", &[], None), Flow::Continue));
    assert_eq!(refused(check(&*policy, "GET", "/v1/pets/1", &[], None)).0, StatusCode::NOT_FOUND);
    let bare = petstore("base_path: ''\n");
    assert!(matches!(check(&*bare, "GET", "/pets/1", &[], None), Flow::Continue));
}

#[test]
fn reads_openapi_3_1_schemas_as_json_schema_2020_12() {
    let document = r##"
  openapi: 3.1.0
  paths:
    /items/{id}:
      put:
        parameters: [{name: id, in: path, required: true, schema: {type: integer, exclusiveMinimum: 0}}]
        requestBody:
          content:
            application/merge-patch+json:
              schema: {type: object, properties: {note: {type: [string, "null"]}}, additionalProperties: false}
"##;
    let policy = build_policy(entry(), &format!("document:{document}")).expect("a valid 3.1 document");
    let patch = ("content-type", "application/merge-patch+json");
    assert!(matches!(check(&*policy, "PUT", "/items/1", &[patch], Some(r#"{"note": null}"#)), Flow::Continue));
    assert_eq!(first_error(check(&*policy, "PUT", "/items/0", &[patch], Some("{}")))["name"], "id");
    let error = first_error(check(&*policy, "PUT", "/items/1", &[patch], Some(r#"{"other": 1}"#)));
    assert_eq!(error["in"], "body");
}

#[test]
fn reports_bad_settings_and_documents_at_their_paths() {
    let at = "global_policies[0].openapi_validation";
    let errors = build_policy_error(entry(), "max_errors: 0");
    let paths: Vec<String> = errors.0.iter().map(|error| error.path.to_string()).collect();
    assert_eq!(paths, [at.to_owned(), format!("{at}.max_errors")]);
    let errors = build_policy_error(entry(), "file: /no/such/openapi.yaml");
    assert_eq!(errors.0[0].path.to_string(), format!("{at}.file"));
    let errors = build_policy_error(entry(), "document: {swagger: '2.0'}");
    assert!(errors.0[0].message.contains("Swagger 2.0"), "{errors}");
    let bad_schema = "document:\n  openapi: 3.0.0\n  paths:\n    /a:\n      get:\n        parameters: [{name: q, in: query, schema: {type: 5}}]\n";
    let errors = build_policy_error(entry(), bad_schema);
    assert_eq!(errors.0[0].path.to_string(), format!("{at}.document"));
    assert!(errors.0[0].message.contains("/paths/~1a/get/parameters/0/schema"), "{errors}");
    let errors = build_policy_error(entry(), "base_path: v1/\ndocument: {openapi: 3.0.0, paths: {}}");
    assert_eq!(errors.0[0].path.to_string(), format!("{at}.base_path"));
}

#[test]
fn reads_the_document_from_a_file_relative_to_the_configuration_with_refs_to_other_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pet.json"), r#"{"type": "object", "required": ["name"]}"#).expect("write");
    std::fs::write(
        dir.path().join("api.yaml"),
        "openapi: 3.0.3\npaths:\n  /pets:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: pet.json}\n",
    )
    .expect("write");
    let spec =
        gantry_config::GatewaySpec { source_dir: gantry_config::SourceDir::new(dir.path()), ..Default::default() };
    let consumers = gantry_policy_api::ConsumerDirectory::default();
    let raw = serde_json::json!({"file": "api.yaml"});
    let built = entry().build(&raw, &FieldPath::root(), &BuildContext::new(&spec, &consumers));
    let policy = match built {
        Ok(policy) => policy,
        Err(errors) => panic!("the document and its reference are found: {errors}"),
    };
    assert!(matches!(check(&*policy, "POST", "/pets", &[JSON], Some(r#"{"name": "a"}"#)), Flow::Continue));
    assert_eq!(first_error(check(&*policy, "POST", "/pets", &[JSON], Some("{}")))["in"], "body");
}

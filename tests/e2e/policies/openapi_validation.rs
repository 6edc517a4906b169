//! `openapi_validation` through a running gateway: an OpenAPI 3.0 document in a file beside
//! the configuration decides which requests reach the upstream: operations that match go
//! through with their bodies intact; bad parameters and bodies get 400 with the errors, unknown
//! paths 404, undescribed methods 405 with `Allow`, all without touching the upstream.

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use super::harness::assert_policy_answers;
use crate::support::{gantry_binary, with_admin};

pub const PETSTORE: &str = r##"openapi: 3.0.3
info: {title: Pets, version: "1.0"}
servers: [{url: "https://pets.example.com/v1"}]
paths:
  /pets:
    get:
      operationId: listPets
      parameters:
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
    post:
      operationId: createPet
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Pet"}
  /pets/{petId}:
    parameters:
      - {name: petId, in: path, required: true, schema: {type: integer}}
    get: {operationId: showPet}
    delete:
      parameters:
        - {name: X-Confirm, in: header, required: true, schema: {type: string, enum: ["yes"]}}
components:
  schemas:
    Pet:
      type: object
      required: [name]
      properties:
        name: {type: string, maxLength: 16}
        tag: {type: string, nullable: true}
"##;

fn start(upstream: &EchoUpstream) -> GatewayProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("openapi")).expect("dir");
    std::fs::write(dir.path().join("openapi/pets.yaml"), PETSTORE).expect("write document");
    let yaml = with_admin(
        "admin-key-long-enough",
        &format!(
            "upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n  - id: pets\n    paths: [/v1/*]\n    upstream: up\n    policies:\n      - openapi_validation: {{file: openapi/pets.yaml}}\n",
            upstream.addr()
        ),
    );
    GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[])
}

async fn send(
    gateway: &GatewayProcess,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TestResponse {
    TestClient::default().request(method, &gateway.url(path), headers, body.to_owned()).await
}

fn first_error(response: &TestResponse) -> serde_json::Value {
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{:?}", response.body);
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/request-validation-failed");
    problem["errors"][0].clone()
}

#[tokio::test]
async fn forwards_matching_operations_and_refuses_the_rest_before_the_upstream() {
    let upstream = EchoUpstream::start("up").await;
    let gateway = start(&upstream);
    let json = [("content-type", "application/json")];

    let listed = send(&gateway, Method::GET, "/v1/pets?limit=20", &[], "").await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    assert_eq!(listed.json()["query"], "limit=20");
    let pet = r#"{"name": "Rex", "tag": null}"#;
    let created = send(&gateway, Method::POST, "/v1/pets", &json, pet).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_eq!(created.json()["body"], pet, "the upstream gets the body as sent");
    let shown = send(&gateway, Method::GET, "/v1/pets/7", &[], "").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 3);

    let error = first_error(&send(&gateway, Method::GET, "/v1/pets?limit=1000", &[], "").await);
    assert_eq!((error["in"].as_str(), error["name"].as_str()), (Some("query"), Some("limit")));
    let error = first_error(&send(&gateway, Method::GET, "/v1/pets/rex", &[], "").await);
    assert_eq!((error["in"].as_str(), error["name"].as_str()), (Some("path"), Some("petId")));
    let error = first_error(&send(&gateway, Method::DELETE, "/v1/pets/7", &[], "").await);
    assert_eq!((error["in"].as_str(), error["name"].as_str()), (Some("header"), Some("x-confirm")));
    let error =
        first_error(&send(&gateway, Method::POST, "/v1/pets", &json, r#"{"name": "a-name-far-too-long"}"#).await);
    assert_eq!((error["in"].as_str(), error["instance_path"].as_str()), (Some("body"), Some("/name")));
    let wrong_type = send(&gateway, Method::POST, "/v1/pets", &[("content-type", "text/plain")], "Rex").await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let unknown = send(&gateway, Method::GET, "/v1/owners", &[], "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["type"], "https://gantry.dev/problems/operation-not-found");
    let not_allowed = send(&gateway, Method::PUT, "/v1/pets/7", &[], "").await;
    assert_eq!(not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(not_allowed.header("allow"), Some("GET, DELETE"));

    let confirmed = send(&gateway, Method::DELETE, "/v1/pets/7", &[("x-confirm", "yes")], "").await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(upstream.requests(), 4, "only matching requests may reach the upstream");
    assert_policy_answers(&gateway, "openapi_validation", 400, 4).await;
}

//! `gantry import openapi` through the real binary: the configuration it writes passes
//! `gantry validate`, and a gateway running it routes each path of the document to the
//! upstream with `openapi_validation` checking the requests.

use std::path::Path;
use std::process::{Command, Output};

use gantry_testkit::client::TestClient;
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::gantry_binary;

const PETS: &str = r##"openapi: 3.0.3
info: {title: Pet Store, version: "2.1"}
servers: [{url: "https://pets.example.com/v1"}]
paths:
  /pets:
    get:
      parameters:
        - {name: limit, in: query, schema: {type: integer, maximum: 50}}
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, required: [name], properties: {name: {type: string}}}
  /pets/{petId}:
    get:
      parameters:
        - {name: petId, in: path, required: true, schema: {type: integer}}
    delete:
      parameters:
        - {name: petId, in: path, required: true, schema: {type: integer}}
"##;

/// Runs `gantry <args>` in `dir`.
fn gantry_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(gantry_binary()).current_dir(dir).args(args).env_remove("GANTRY_CONFIG").output().expect("run gantry")
}

fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn writes_routes_that_validate_and_serve_the_documents_operations() {
    let upstream = EchoUpstream::start("pets").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("openapi")).expect("dir");
    std::fs::write(dir.path().join("openapi/pets.yaml"), PETS).expect("write document");
    let upstream_url = format!("http://{}", upstream.addr());

    let imported = gantry_in(
        dir.path(),
        &["import", "openapi", "openapi/pets.yaml", "--upstream", &upstream_url, "--output", "gantry.yaml"],
    );
    assert!(imported.status.success(), "{}", printed(&imported));
    let yaml = std::fs::read_to_string(dir.path().join("gantry.yaml")).expect("the configuration was written");
    for expected in [
        "file: \"openapi/pets.yaml\"",
        "  - id: pet-store-pets\n    paths: [\"/v1/pets\"]\n    methods: [GET, POST]\n    service: pet-store",
        "  - id: pet-store-pets-petid\n    paths: [\"/v1/pets/{petId}\"]\n    methods: [GET, DELETE]",
        &format!("endpoints: [\"{}\"]", upstream.addr()),
    ] {
        assert!(yaml.contains(expected), "no `{expected}` in:\n{yaml}");
    }

    let validated = gantry_in(dir.path(), &["validate", "--config", "gantry.yaml"]);
    assert!(validated.status.success(), "{}\n{yaml}", printed(&validated));
    assert!(printed(&validated).contains("2 routes, 1 services, 1 upstreams"), "{}", printed(&validated));

    // The same file, run with a listener in front.
    let config = format!("node:\n  listeners:\n    - address: 127.0.0.1:0\n{yaml}");
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &config, &[]);
    let client = TestClient::default();
    let listed = client.get(&gateway.url("/v1/pets?limit=5")).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    assert_eq!(listed.json()["path"], "/v1/pets");
    let created = client
        .request(Method::POST, &gateway.url("/v1/pets"), &[("content-type", "application/json")], r#"{"name":"Rex"}"#)
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let refused = client.get(&gateway.url("/v1/pets/rex")).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["errors"][0]["name"], "petId");
    let not_described = client.request(Method::PUT, &gateway.url("/v1/pets/1"), &[], "").await;
    assert_eq!(not_described.status, StatusCode::NOT_FOUND, "no route takes a method the document lacks");
    assert_eq!(upstream.requests(), 2);
}

#[test]
fn takes_the_upstream_from_the_servers_url_and_prints_to_standard_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pets.yaml"), PETS).expect("write document");
    let output = gantry_in(dir.path(), &["import", "openapi", "pets.yaml", "--id", "pets"]);
    assert!(output.status.success(), "{}", printed(&output));
    let yaml = String::from_utf8_lossy(&output.stdout);
    assert!(yaml.contains("endpoints: [\"pets.example.com:443\"]\n    scheme: https"), "{yaml}");
    let absolute = dir.path().join("pets.yaml").canonicalize().expect("canonical path");
    assert!(yaml.contains(&format!("file: \"{}\"", absolute.display())), "{yaml}");
    assert!(yaml.contains("  - id: pets-pets-petid\n"), "{yaml}");
}

#[test]
fn refuses_a_document_without_a_server_address_unless_given_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("api.yaml"), "openapi: 3.1.0\npaths:\n  /a:\n    get: {}\n").expect("write");
    let output = gantry_in(dir.path(), &["import", "openapi", "api.yaml"]);
    assert!(!output.status.success());
    assert!(printed(&output).contains("--upstream"), "{}", printed(&output));
    let swagger = gantry_in(dir.path(), &["import", "openapi", "missing.yaml", "--upstream", "http://127.0.0.1:1"]);
    assert!(!swagger.status.success());
    assert!(printed(&swagger).contains("cannot read `missing.yaml`"), "{}", printed(&swagger));
}

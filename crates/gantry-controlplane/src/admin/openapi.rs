//! The OpenAPI 3.1 description of the admin API, served at `GET /openapi.json`.
//!
//! Resource schemas are generated from the `*Spec` types with schemars (the same types the
//! loader reads), and the paths from the one list of kinds in `kinds.rs`, so the document
//! cannot describe a field or an endpoint the gateway does not have.

use gantry_config::{GatewaySpec, PolicySpec};
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use super::kinds::{for_each_kind, KindVisitor};
use super::problem::{ProblemDocument, ProblemType};
use super::resource::ConfigResource;
use super::GENERATION_HEADER;

/// Where schemas live in the document; schemars writes its `$ref`s against this.
const SCHEMAS: &str = "/components/schemas";

/// The whole OpenAPI document.
pub fn openapi_document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = SCHEMAS.into();
            settings.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();

    let mut describe = DescribeKinds { generator: &mut generator, paths: &mut paths };
    for_each_kind(&mut describe);

    let policy = generator.subschema_for::<PolicySpec>();
    paths.insert(
        "/global_policies".to_owned(),
        json!({
            "get": {
                "summary": "The policies applied to every route, in order",
                "operationId": "getGlobalPolicies",
                "tags": ["global_policies"],
                "responses": {"200": ok("The list", json!({"type": "array", "items": policy}))}
            },
            "put": {
                "summary": "Replace the whole list of global policies",
                "operationId": "putGlobalPolicies",
                "tags": ["global_policies"],
                "requestBody": request_body(json!({"type": "array", "items": policy})),
                "responses": write_responses("The stored list", json!({"type": "array", "items": policy}), &["200"])
            }
        }),
    );
    let whole = generator.subschema_for::<GatewaySpec>();
    paths.insert(
        "/config".to_owned(),
        json!({"get": {
            "summary": "The effective configuration: running node settings and every resource; secrets show as ***",
            "operationId": "getConfig",
            "tags": ["config"],
            "responses": {"200": ok("The configuration", whole.into())}
        }}),
    );
    paths.insert(
        "/health".to_owned(),
        json!({"get": {
            "summary": "Liveness: 200 while the process runs",
            "operationId": "getHealth",
            "tags": ["probes"],
            "security": [],
            "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}),
    );
    paths.insert(
        "/ready".to_owned(),
        json!({"get": {
            "summary": "Readiness: 200 once a configuration is applied, 503 before",
            "operationId": "getReady",
            "tags": ["probes"],
            "security": [],
            "responses": {
                "200": {"description": "Serving a configuration", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": problem_ref()
            }
        }}),
    );
    paths.insert(
        "/metrics".to_owned(),
        json!({"get": {
            "summary": "Request, upstream, configuration and policy metrics for Prometheus; open like the probes",
            "operationId": "getMetrics",
            "tags": ["probes"],
            "security": [],
            "responses": {"200": {"description": "The metrics: OpenMetrics 1.0 when `Accept` asks for it, else the Prometheus text format 0.0.4", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}, "text/plain": {"schema": {"type": "string"}}}}}
        }}),
    );
    paths.insert(
        "/openapi.json".to_owned(),
        json!({"get": {
            "summary": "This document",
            "operationId": "getOpenApi",
            "tags": ["meta"],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}),
    );

    let purged = generator.subschema_for::<super::cache::PurgeResult>();
    paths.insert(
        "/cache/{route}".to_owned(),
        json!({"delete": {
            "summary": "Purge what the route's response_cache stored: every entry, those of one path, or those under a path prefix, optionally for one host; in this process's memory zones and in Redis",
            "operationId": "purgeCache",
            "tags": ["cache"],
            "parameters": [
                {"name": "route", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "path", "in": "query", "required": false, "description": "Only this path, every query string and variant of it", "schema": {"type": "string", "pattern": "^/"}},
                {"name": "prefix", "in": "query", "required": false, "description": "Only paths starting with this", "schema": {"type": "string", "pattern": "^/"}},
                {"name": "host", "in": "query", "required": false, "description": "Only entries for this host", "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "How many entries went", "content": {"application/json": {"schema": purged}}},
                "400": problem_ref(),
                "401": problem_ref(),
                "404": problem_ref(),
                "503": problem_ref()
            }
        }}),
    );
    let audit_entry = generator.subschema_for::<super::audit::AuditEntry>();
    paths.insert(
        "/audit".to_owned(),
        json!({"get": {
            "summary": "The admin audit log, newest first: every admin write, accepted or refused, with who made it, when, and the change as a JSON Patch (secrets masked)",
            "operationId": "getAuditLog",
            "tags": ["meta"],
            "parameters": [
                {"name": "limit", "in": "query", "required": false, "description": "Most entries to return", "schema": {"type": "integer", "minimum": 1, "maximum": super::audit::MAX_LIMIT, "default": 100}},
                {"name": "since", "in": "query", "required": false, "description": "Only entries at or after this RFC 3339 time", "schema": {"type": "string", "format": "date-time"}}
            ],
            "responses": {
                "200": {"description": "Audit entries, newest first", "content": {"application/json": {"schema": {"type": "array", "items": audit_entry}}}},
                "400": problem_ref(),
                "401": problem_ref()
            }
        }}),
    );
    paths.insert(
        "/status".to_owned(),
        json!({"get": {
            "summary": "A summary of the gateway for a person or `gantry status`: version and uptime, the configuration serving and rejected reloads, requests per route by status class with latency quantiles (estimated from the metrics' histogram buckets), and each upstream endpoint's availability, load, tries and failures",
            "operationId": "getStatus",
            "tags": ["meta"],
            "parameters": [
                {"name": "top", "in": "query", "required": false, "description": "Only the N routes with the most requests, busiest first (all routes in configuration order without it)", "schema": {"type": "integer", "minimum": 0}}
            ],
            "responses": {
                "200": {"description": "The summary", "content": {"application/json": {"schema": {"type": "object", "required": ["version", "uptime_seconds", "config", "routes", "upstreams"]}}}},
                "400": problem_ref(),
                "401": problem_ref()
            }
        }}),
    );
    paths.insert(
        "/cluster".to_owned(),
        json!({"get": {
            "summary": "Cluster mode: this node's id and link to etcd (connected, the revision its configuration was read at, the last error), and every live node as it describes itself (id, version, start time, listeners, admin address, generation, revision)",
            "operationId": "getCluster",
            "tags": ["meta"],
            "responses": {
                "200": {"description": "The cluster", "content": {"application/json": {"schema": {"type": "object", "required": ["node_id", "etcd", "nodes"]}}}},
                "401": problem_ref(),
                "404": problem_ref(),
                "503": problem_ref()
            }
        }}),
    );
    generator.subschema_for::<ProblemDocument>();
    let schemas = generator.take_definitions(true);
    let problem_types: Vec<Value> = ProblemType::ALL
        .iter()
        .map(|problem| json!({"type": problem.uri(), "status": problem.status().as_u16(), "title": problem.title()}))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gantry admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Reads and changes the running configuration. Every write is validated and compiled like a file reload, saved to the configuration files and applied at once. Errors are RFC 9457 problem documents.",
            "x-problem-types": problem_types
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "bearer": {"type": "http", "scheme": "bearer"}
            },
            "headers": {
                "Generation": {
                    "description": "The configuration generation serving after the request.",
                    "schema": {"type": "integer", "minimum": 0}
                }
            },
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem document; `type` is one of info.x-problem-types.",
                    "content": {"application/problem+json": {"schema": {"$ref": format!("#{SCHEMAS}/ProblemDocument")}}}
                }
            }
        }
    })
}

/// Adds the two paths of each resource kind.
struct DescribeKinds<'a> {
    generator: &'a mut SchemaGenerator,
    paths: &'a mut Map<String, Value>,
}

impl KindVisitor for DescribeKinds<'_> {
    fn visit<K: ConfigResource>(&mut self) {
        let kind = K::KIND.name();
        let schema = self.generator.subschema_for::<K>();
        let list = json!({"type": "array", "items": schema});
        let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}});
        let operation = |verb: &str| format!("{verb}{}", camel(kind));
        self.paths.insert(
            format!("/{kind}"),
            json!({
                "get": {
                    "summary": format!("Every resource in {kind}, in configuration order"),
                    "operationId": operation("list"),
                    "tags": [kind],
                    "responses": {"200": ok("The list", list)}
                },
                "post": {
                    "summary": format!("Create a resource in {kind}; its id comes from the body"),
                    "operationId": operation("create"),
                    "tags": [kind],
                    "requestBody": request_body(schema.clone().into()),
                    "responses": write_responses("The stored resource", schema.clone().into(), &["201"])
                }
            }),
        );
        self.paths.insert(
            format!("/{kind}/{{id}}"),
            json!({
                "parameters": [id],
                "get": {
                    "summary": format!("One resource in {kind}"),
                    "operationId": operation("get"),
                    "tags": [kind],
                    "responses": {"200": ok("The resource", schema.clone().into()), "404": problem_ref()}
                },
                "put": {
                    "summary": format!("Create or replace a resource in {kind}; `id` may be left out of the body, and must match the URL when present"),
                    "operationId": operation("put"),
                    "tags": [kind],
                    "requestBody": request_body(schema.clone().into()),
                    "responses": write_responses("The stored resource", schema.clone().into(), &["200", "201"])
                },
                "delete": {
                    "summary": format!("Delete a resource in {kind}; 409 while others refer to it"),
                    "operationId": operation("delete"),
                    "tags": [kind],
                    "responses": {
                        "204": {"description": "Deleted", "headers": generation_header()},
                        "401": problem_ref(),
                        "404": problem_ref(),
                        "409": problem_ref(),
                        "500": problem_ref()
                    }
                }
            }),
        );
    }
}

/// `policy_sets` -> `PolicySets`, for operation ids.
fn camel(name: &str) -> String {
    name.split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

fn ok(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "headers": generation_header(),
        "content": {"application/json": {"schema": schema}}
    })
}

fn generation_header() -> Value {
    json!({GENERATION_HEADER: {"$ref": "#/components/headers/Generation"}})
}

fn problem_ref() -> Value {
    json!({"$ref": "#/components/responses/Problem"})
}

fn request_body(schema: Value) -> Value {
    json!({
        "required": true,
        "content": {
            "application/json": {"schema": schema},
            "application/yaml": {"schema": schema}
        }
    })
}

fn write_responses(description: &str, schema: Value, success: &[&str]) -> Value {
    let mut responses = Map::new();
    for status in success {
        responses.insert((*status).to_owned(), ok(description, schema.clone()));
    }
    for status in ["400", "401", "409", "413", "415", "500"] {
        responses.insert(status.to_owned(), problem_ref());
    }
    Value::Object(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy of the document; schema changes show up in review as a diff of it.
    const GOLDEN: &str = "../../docs/admin-openapi.json";

    #[test]
    fn lists_every_endpoint_and_a_schema_for_each_kind() {
        let document = openapi_document();
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().expect("paths");
        for kind in ["routes", "services", "upstreams", "consumers", "consumer_groups", "policy_sets"] {
            for verb in ["get", "post"] {
                assert!(paths[&format!("/{kind}")].get(verb).is_some(), "{verb} /{kind}");
            }
            for verb in ["get", "put", "delete"] {
                assert!(paths[&format!("/{kind}/{{id}}")].get(verb).is_some(), "{verb} /{kind}/{{id}}");
            }
        }
        for (path, verbs) in [
            ("/global_policies", &["get", "put"][..]),
            ("/config", &["get"][..]),
            ("/health", &["get"][..]),
            ("/ready", &["get"][..]),
            ("/openapi.json", &["get"][..]),
            ("/metrics", &["get"][..]),
            ("/audit", &["get"][..]),
            ("/status", &["get"][..]),
            ("/cluster", &["get"][..]),
        ] {
            for verb in verbs {
                assert!(paths[path].get(*verb).is_some(), "{verb} {path}");
            }
        }
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "RouteSpec",
            "ServiceSpec",
            "UpstreamSpec",
            "ConsumerSpec",
            "ConsumerGroupSpec",
            "PolicySetSpec",
            "PolicySpec",
            "GatewaySpec",
        ] {
            assert_eq!(schemas[name]["type"], "object", "{name} has an object schema");
        }
        assert!(
            schemas["RouteSpec"]["properties"]["paths"]["description"].is_string(),
            "field docs become descriptions"
        );
        assert!(schemas.contains_key("ProblemDocument"));
    }

    #[test]
    fn every_reference_points_at_a_component() {
        fn walk(value: &Value, document: &Value) {
            match value {
                Value::Object(fields) => {
                    if let Some(Value::String(target)) = fields.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("local reference");
                        assert!(document.pointer(pointer).is_some(), "dangling reference {target}");
                    }
                    fields.values().for_each(|value| walk(value, document));
                }
                Value::Array(items) => items.iter().for_each(|value| walk(value, document)),
                _ => {}
            }
        }
        let document = openapi_document();
        walk(&document, &document);
    }

    /// Golden test: the document matches `docs/admin-openapi.json`. After an intended change
    /// to a `*Spec` type or an endpoint, run with `GANTRY_BLESS=1` to rewrite the file.
    #[test]
    fn matches_the_committed_document() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
        let rendered = serde_json::to_string_pretty(&openapi_document()).expect("serializes") + "\n";
        if std::env::var_os("GANTRY_BLESS").is_some() {
            std::fs::write(&path, &rendered).expect("write the golden file");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == rendered,
            "docs/admin-openapi.json is out of date; if the change is intended, run \
             `GANTRY_BLESS=1 cargo test -p gantry-controlplane openapi` and commit the file"
        );
    }
}

//! An OpenAPI 3.0 or 3.1 document read as JSON: its version, base path, operations and the
//! JSON Pointers of the schemas they use. `openapi_validation` compiles what it finds here, and
//! `gantry import openapi` writes routes from it.
//!
//! The document is walked as JSON rather than through a typed model: the typed crates each cover
//! one version (`openapiv3` 3.0, `oas3` 3.1), and the schemas have to be JSON for the validator
//! anyway.

use std::path::Path;

use serde_json::Value;

use crate::validate::schema::{parse_document, read_document};

/// The methods an OpenAPI path item may describe, in the order the specification lists them.
pub const OPERATION_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The OpenAPI versions understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenApiVersion {
    /// 3.0.x: schemas are an extended subset of JSON Schema draft 4 (`nullable`).
    V3_0,
    /// 3.1.x: schemas are JSON Schema 2020-12.
    V3_1,
}

/// A parsed OpenAPI document.
#[derive(Clone, Debug)]
pub struct ApiDescription {
    /// The document; [`ApiDescription::resolve_at`] follows its `$ref`s.
    pub document: Value,
    /// Its version.
    pub version: OpenApiVersion,
}

/// One operation: a method on a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRef {
    /// The path template as written (`/pets/{petId}`).
    pub template: String,
    /// The method, upper case.
    pub method: String,
    /// The `operationId`, if given.
    pub operation_id: Option<String>,
    /// JSON Pointer of the operation object in the document.
    pub pointer: String,
}

impl ApiDescription {
    /// Reads a JSON or YAML OpenAPI document from `file`.
    pub fn read(file: &Path) -> Result<Self, String> {
        Self::from_value(read_document(file)?).map_err(|reason| format!("`{}` {reason}", file.display()))
    }

    /// Parses a JSON or YAML OpenAPI document.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::from_value(parse_document(text)?)
    }

    /// Checks the version of an already parsed document.
    pub fn from_value(document: Value) -> Result<Self, String> {
        let version = match document.get("openapi").and_then(Value::as_str) {
            Some(version) if version.starts_with("3.0.") || version == "3.0" => OpenApiVersion::V3_0,
            Some(version) if version.starts_with("3.1.") || version == "3.1" => OpenApiVersion::V3_1,
            Some(other) => return Err(format!("is OpenAPI {other}; versions 3.0 and 3.1 are supported")),
            None if document.get("swagger").is_some() => {
                return Err("is a Swagger 2.0 document; convert it to OpenAPI 3.0 or 3.1".into());
            }
            None => return Err("is not an OpenAPI document (no `openapi` version field)".into()),
        };
        if !document.get("paths").is_none_or(Value::is_object) {
            return Err("has a `paths` that is not a map".into());
        }
        Ok(Self { document, version })
    }

    /// The path of the first `servers` URL (`https://api.example.com/v1` gives `/v1`), without
    /// a trailing `/`; empty when there is none.
    pub fn base_path(&self) -> String {
        let url = self.document.pointer("/servers/0/url").and_then(Value::as_str).unwrap_or_default();
        let path = match url.find("://") {
            Some(scheme_end) => url[scheme_end + 3..].find('/').map_or("", |at| &url[scheme_end + 3 + at..]),
            None => url,
        };
        // Server variables (`/{version}`) cannot be known here; such a base is left out.
        if path.contains('{') {
            return String::new();
        }
        path.trim_end_matches('/').to_owned()
    }

    /// Every operation, path by path in document order, methods in specification order.
    pub fn operations(&self) -> Vec<OperationRef> {
        let Some(paths) = self.document.get("paths").and_then(Value::as_object) else { return Vec::new() };
        let mut operations = Vec::new();
        for (template, item) in paths {
            let item_pointer = format!("/paths/{}", escape_pointer(template));
            let (item, item_pointer) = match self.resolve_at(item, &item_pointer) {
                Some(resolved) => resolved,
                None => continue,
            };
            for method in OPERATION_METHODS {
                let Some(operation) = item.get(method).filter(|operation| operation.is_object()) else { continue };
                operations.push(OperationRef {
                    template: template.clone(),
                    method: method.to_ascii_uppercase(),
                    operation_id: operation.get("operationId").and_then(Value::as_str).map(str::to_owned),
                    pointer: format!("{item_pointer}/{method}"),
                });
            }
        }
        operations
    }

    /// Follows local `$ref`s (`#/components/...`) from `value` written at `pointer`: the value
    /// they lead to and its pointer, or `None` for a reference that leads nowhere (or in a loop).
    pub fn resolve_at<'a>(&'a self, mut value: &'a Value, pointer: &str) -> Option<(&'a Value, String)> {
        let mut pointer = pointer.to_owned();
        for _ in 0..32 {
            let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
                return Some((value, pointer));
            };
            let target = reference.strip_prefix('#')?;
            let target = percent_encoding::percent_decode_str(target).decode_utf8().ok()?.into_owned();
            value = self.document.pointer(&target)?;
            pointer = target;
        }
        None
    }
}

/// Escapes a key for a JSON Pointer (RFC 6901).
pub(crate) fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_operations_with_their_pointers_and_the_base_path() {
        let api = ApiDescription::parse(
            "openapi: 3.0.3\nservers: [{url: 'https://api.example.com/v1/'}]\npaths:\n  /pets:\n    get: {operationId: listPets}\n    post: {}\n    parameters: []\n  /pets/{id}:\n    $ref: '#/components/pathItems/pet'\ncomponents:\n  pathItems:\n    pet:\n      delete: {}\n",
        )
        .expect("a 3.0 document");
        assert_eq!(api.version, OpenApiVersion::V3_0);
        assert_eq!(api.base_path(), "/v1");
        let listed: Vec<(String, String, String)> =
            api.operations().into_iter().map(|op| (op.template, op.method, op.pointer)).collect();
        assert_eq!(
            listed,
            [
                ("/pets".to_owned(), "GET".to_owned(), "/paths/~1pets/get".to_owned()),
                ("/pets".to_owned(), "POST".to_owned(), "/paths/~1pets/post".to_owned()),
                ("/pets/{id}".to_owned(), "DELETE".to_owned(), "/components/pathItems/pet/delete".to_owned()),
            ]
        );
    }

    #[test]
    fn refuses_other_versions_and_documents() {
        assert!(ApiDescription::parse("swagger: '2.0'\npaths: {}").expect_err("2.0").contains("Swagger 2.0"));
        assert!(ApiDescription::parse("openapi: 4.0.0").expect_err("4.0").contains("3.0 and 3.1"));
        assert!(ApiDescription::parse("{\"a\": 1}").expect_err("not OpenAPI").contains("not an OpenAPI"));
        assert_eq!(ApiDescription::parse("openapi: 3.1.0").expect("3.1").version, OpenApiVersion::V3_1);
    }
}

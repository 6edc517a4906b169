//! JSON Schemas as policies take them: written inline or read from a file, compiled once when
//! the configuration is built, and the errors of one instance rendered for a problem document.
//!
//! `$ref`s may point at files (resolved against the schema's own location); nothing is ever
//! fetched over the network, at build time or per request.

use std::path::{Path, PathBuf};

use gantry_config::{ConfigErrors, FieldPath, GatewaySpec};
use jsonschema::Validator;
use serde_json::Value;

/// Compiles `schema` whose `$ref`s resolve against `base` (a file, or a directory ending in
/// `/`), checking it against its draft's meta-schema. Formats (`date-time`, `email`, `uuid`) are
/// asserted, not just annotated, whatever the draft.
pub(crate) fn compile_schema(schema: &Value, base: Option<&Path>) -> Result<Validator, String> {
    let mut options = jsonschema::options().should_validate_formats(true);
    if let Some(uri) = base.and_then(file_uri) {
        options = options.with_base_uri(uri);
    }
    options.build(schema).map_err(|err| format!("not a valid JSON Schema: {}", err.masked()))
}

/// Reads and compiles the schema file at `file` (as written, relative to the configuration's
/// directory), reporting problems at `path`.
pub(crate) fn compile_schema_file(
    file: &str,
    spec: &GatewaySpec,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Option<Validator> {
    let resolved = spec.resolve_path(file);
    let document = match read_document(&resolved) {
        Ok(document) => document,
        Err(reason) => {
            errors.push(path.clone(), reason);
            return None;
        }
    };
    compile_schema(&document, Some(&resolved)).map_err(|reason| errors.push(path.clone(), reason)).ok()
}

/// Compiles an inline schema, whose file `$ref`s resolve against the configuration's directory.
pub(crate) fn compile_inline_schema(
    schema: &Value,
    spec: &GatewaySpec,
    path: &FieldPath,
    errors: &mut ConfigErrors,
) -> Option<Validator> {
    let base = spec.source_dir.path().map(|dir| dir.join(""));
    compile_schema(schema, base.as_deref()).map_err(|reason| errors.push(path.clone(), reason)).ok()
}

/// Reads a JSON or YAML document (YAML is a superset of JSON, so one parser reads both).
pub(crate) fn read_document(file: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(file).map_err(|err| format!("cannot read `{}`: {err}", file.display()))?;
    parse_document(&text).map_err(|reason| format!("`{}` {reason}", file.display()))
}

/// Parses a JSON or YAML document.
pub(crate) fn parse_document(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|err| format!("is not valid JSON: {err}"));
    }
    serde_saphyr::from_str(text).map_err(|err| format!("is not valid YAML: {err}"))
}

/// `file://` URI of `path` made absolute, keeping a trailing `/` that marks a directory.
pub(crate) fn file_uri(path: &Path) -> Option<String> {
    let is_dir = path.as_os_str().to_string_lossy().ends_with('/');
    let absolute: PathBuf = std::path::absolute(path).ok()?;
    let mut text = absolute.to_str()?.to_owned();
    if is_dir && !text.ends_with('/') {
        text.push('/');
    }
    let encoded = percent_encoding::utf8_percent_encode(&text, PATH).to_string();
    Some(format!("file://{encoded}"))
}

/// Characters escaped in a `file://` path: controls, space and URI delimiters other than `/`.
const PATH: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`');

/// The first `max` errors of `instance` against `validator`, as problem members (`instance_path`
/// as a JSON Pointer, and a message that never repeats the instance's values, which may be
/// secrets), with the total number of errors.
pub(crate) fn schema_errors(validator: &Validator, instance: &Value, max: usize) -> (Vec<Value>, usize) {
    let mut shown = Vec::new();
    let mut total = 0;
    for error in validator.iter_errors(instance) {
        total += 1;
        if shown.len() < max {
            shown.push(serde_json::json!({
                "instance_path": error.instance_path().as_str(),
                "message": error.masked().to_string(),
            }));
        }
    }
    (shown, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_errors_with_pointers_and_without_the_values() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["name"],
            "properties": {"pin": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}
        });
        let validator = compile_schema(&schema, None).expect("a valid schema");
        let instance = serde_json::json!({"pin": "s3cr3t", "tags": ["a", 7]});
        let (shown, total) = schema_errors(&validator, &instance, 2);
        assert_eq!(total, 3);
        assert_eq!(shown.len(), 2);
        let text = serde_json::to_string(&shown).expect("json");
        assert!(!text.contains("s3cr3t"), "{text}");
        let paths: Vec<&str> = shown.iter().filter_map(|error| error["instance_path"].as_str()).collect();
        assert!(paths.iter().all(|path| ["", "/pin", "/tags/1"].contains(path)), "{paths:?}");
    }

    #[test]
    fn asserts_formats_and_refuses_invalid_schemas() {
        let schema = serde_json::json!({"type": "string", "format": "date-time"});
        let validator = compile_schema(&schema, None).expect("a valid schema");
        assert!(!validator.is_valid(&serde_json::json!("yesterday")));
        assert!(validator.is_valid(&serde_json::json!("2026-01-02T03:04:05Z")));
        let invalid = serde_json::json!({"type": "no-such-type"});
        assert!(compile_schema(&invalid, None).is_err());
    }

    #[test]
    fn resolves_file_refs_against_the_schema_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("sku.json"), r#"{"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}"#)
            .expect("write");
        let main = dir.path().join("order.yaml");
        std::fs::write(&main, "type: object\nproperties:\n  sku: {$ref: sku.json}\n").expect("write");
        let document = read_document(&main).expect("YAML schema");
        let validator = compile_schema(&document, Some(&main)).expect("refs resolve");
        assert!(validator.is_valid(&serde_json::json!({"sku": "ABC-12"})));
        assert!(!validator.is_valid(&serde_json::json!({"sku": "abc"})));
    }
}

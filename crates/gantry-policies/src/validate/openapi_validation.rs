#![doc = include_str!("openapi_validation.md")]

pub mod document;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::{HeaderValue, ALLOW};
use http::{Method, StatusCode};
use jsonschema::{Draft, Registry, Validator};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use self::document::{escape_pointer, ApiDescription, OpenApiVersion};
use super::schema::{file_uri, read_document, schema_errors};
use super::{body_limit, body_too_large, declared_length, media_type, problem_with, request_body};

/// Settings of `openapi_validation`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The OpenAPI 3.0 or 3.1 document, a JSON or YAML file, relative to the configuration
    /// file's directory. Give `file` or `document`.
    #[serde(default)]
    pub file: Option<String>,
    /// The OpenAPI document itself, written in YAML.
    #[serde(default)]
    pub document: Option<Value>,
    /// Path before every path template of the document (`/v1`); by default the path of its
    /// first `servers` URL.
    #[serde(default)]
    pub base_path: Option<String>,
    /// What a request that matches no operation of the document gets: `reject` (404 for an
    /// unknown path, 405 for an unknown method) or `pass` (forwarded unchecked).
    #[serde(default)]
    pub unknown_operations: UnknownOperations,
    /// Largest request body read for validation, in bytes; a larger one gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most errors listed in a problem document, from 1 to 100.
    #[serde(default = "default_max_errors")]
    pub max_errors: u64,
}

/// What a request that matches no operation gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownOperations {
    /// 404 for an unknown path, 405 (with `Allow`) for an unknown method.
    #[default]
    Reject,
    /// Forwarded without checks.
    Pass,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_errors() -> u64 {
    5
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        match (&self.file, &self.document) {
            (Some(_), Some(_)) => errors.push(path.clone(), "give `file` or `document`, not both"),
            (None, None) => errors.push(path.clone(), "give the OpenAPI document as a `file` or inline (`document`)"),
            _ => {}
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
        if !(1..=100).contains(&self.max_errors) {
            errors.push(path.key("max_errors"), "must be from 1 to 100");
        }
        if let Some(base) = &self.base_path {
            if !base.is_empty() && (!base.starts_with('/') || base.ends_with('/')) {
                errors.push(path.key("base_path"), "must start with `/` and not end with one (`/v1`), or be empty");
            }
        }
    }
}

/// Factory of the `openapi_validation` policy.
#[derive(Debug)]
pub struct OpenApiValidation;

impl PolicyFactory for OpenApiValidation {
    const NAME: &'static str = "openapi_validation";
    const STAGE: Stage = Stage::Validate;
    const DOCS: &'static str = include_str!("openapi_validation.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        // The file the document was read from (or stands for, inline): its `$ref`s to other
        // files resolve against its directory.
        let (api, source_path, location) = match (&config.file, &config.document) {
            (Some(file), None) => {
                let resolved = context.spec.resolve_path(file);
                let api =
                    ApiDescription::read(&resolved).map_err(|reason| ConfigErrors::one(path.key("file"), reason))?;
                (api, path.key("file"), Some(resolved))
            }
            (None, Some(document)) => {
                let api = ApiDescription::from_value(document.clone())
                    .map_err(|reason| ConfigErrors::one(path.key("document"), format!("the document {reason}")))?;
                (api, path.key("document"), context.spec.source_dir.path().map(|dir| dir.join("openapi.json")))
            }
            // `validate` reported it.
            _ => return Err(ConfigErrors::default()),
        };
        let base_uri = location.as_deref().and_then(file_uri).unwrap_or_else(|| "urn:gantry:openapi".to_owned());
        let base_dir = location.as_deref().and_then(Path::parent);
        let base_path = config.base_path.clone().unwrap_or_else(|| api.base_path());
        let mut errors = ConfigErrors::default();
        let compiled = compile(&api, (&base_uri, base_dir), &base_path, &source_path, &mut errors);
        errors.into_result(Arc::new(CompiledOpenApi {
            paths: compiled.paths,
            router: compiled.router,
            unknown_operations: config.unknown_operations,
            max_body_bytes: config.max_body_bytes,
            max_errors: usize::try_from(config.max_errors).unwrap_or(usize::MAX),
        }) as Arc<dyn Policy>)
    }
}

/// Where a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn name(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

/// The JSON type a parameter's text is read as, from its schema's `type`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ValueKind {
    Text,
    Integer,
    Number,
    Boolean,
    Array(Box<ValueKind>),
}

struct CompiledParameter {
    name: String,
    location: Location,
    required: bool,
    kind: ValueKind,
    /// `form` query parameters with `explode` (the default) repeat the name per array item;
    /// the others separate items with commas.
    explode: bool,
    validator: Option<Validator>,
}

struct CompiledBody {
    required: bool,
    /// Media ranges the operation accepts (`application/json`, `image/*`, `*/*`), with the
    /// validator of JSON ones.
    media: Vec<(String, Option<Validator>)>,
}

struct CompiledOperation {
    method: Method,
    parameters: Vec<CompiledParameter>,
    body: Option<CompiledBody>,
}

struct CompiledPath {
    template: String,
    operations: Vec<CompiledOperation>,
    allow: HeaderValue,
}

struct Compiled {
    paths: Vec<CompiledPath>,
    router: matchit::Router<usize>,
}

/// JSON Pointer characters escaped in a URI fragment.
const FRAGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The schemas of one document, compiled against it so that their `$ref`s resolve.
struct SchemaCompiler {
    registry: Registry<'static>,
    draft: Draft,
    base_uri: String,
}

impl SchemaCompiler {
    fn new(api: &ApiDescription, base_uri: &str, base_dir: Option<&Path>) -> Result<Self, String> {
        let (draft, mut document) = match api.version {
            OpenApiVersion::V3_0 => (Draft::Draft4, api.document.clone()),
            OpenApiVersion::V3_1 => (Draft::Draft202012, api.document.clone()),
        };
        if api.version == OpenApiVersion::V3_0 {
            rewrite_nullable(&mut document);
        }
        // The registry finds the `$ref`s of schemas, but the document itself is no schema: the
        // files its own `$ref`s name are read here, relative to the document.
        let mut files = Vec::new();
        if base_dir.is_some() {
            collect_file_refs(&document, &mut files);
        }
        let mut builder = Registry::new().draft(draft);
        for file in files {
            let Some(dir) = base_dir else { break };
            let path = dir.join(&file);
            let contents = read_document(&path)?;
            let uri = file_uri(&path).ok_or_else(|| format!("`{}` has no file URI", path.display()))?;
            builder = builder.add(uri, draft.create_resource(contents)).map_err(|err| err.to_string())?;
        }
        let registry = builder
            .add(base_uri, draft.create_resource(document))
            .and_then(|builder| builder.prepare())
            .map_err(|err| format!("the document's schemas cannot be indexed: {err}"))?;
        Ok(Self { registry, draft, base_uri: base_uri.to_owned() })
    }

    /// Compiles the schema at `pointer` in the document.
    fn compile(&self, pointer: &str) -> Result<Validator, String> {
        let fragment = percent_encoding::utf8_percent_encode(pointer, FRAGMENT);
        let wrapper = serde_json::json!({"$ref": format!("{}#{fragment}", self.base_uri)});
        jsonschema::options()
            .with_draft(self.draft)
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&wrapper)
            .map_err(|err| format!("the schema at `{pointer}` is not valid: {}", err.masked()))
    }
}

/// The distinct files named by `$ref`s in `value` (`pet.json#/x` names `pet.json`).
fn collect_file_refs(value: &Value, files: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get("$ref") {
                let file = reference.split('#').next().unwrap_or_default();
                let is_local_file = !file.is_empty() && !file.contains("://") && !file.starts_with("urn:");
                if is_local_file && !files.iter().any(|known| known == file) {
                    files.push(file.to_owned());
                }
            }
            object.values().for_each(|value| collect_file_refs(value, files));
        }
        Value::Array(items) => items.iter().for_each(|value| collect_file_refs(value, files)),
        _ => {}
    }
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `null` added to `type` and `enum`.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(kind)) = object.get("type") {
                    let kind = kind.clone();
                    object.insert("type".into(), serde_json::json!([kind, "null"]));
                }
                if let Some(Value::Array(values)) = object.get_mut("enum") {
                    if !values.contains(&Value::Null) {
                        values.push(Value::Null);
                    }
                }
            }
            object.values_mut().for_each(rewrite_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

fn compile(
    api: &ApiDescription,
    (base_uri, base_dir): (&str, Option<&Path>),
    base_path: &str,
    at: &FieldPath,
    errors: &mut ConfigErrors,
) -> Compiled {
    let mut compiled = Compiled { paths: Vec::new(), router: matchit::Router::new() };
    let compiler = match SchemaCompiler::new(api, base_uri, base_dir) {
        Ok(compiler) => compiler,
        Err(reason) => {
            errors.push(at.clone(), reason);
            return compiled;
        }
    };
    let mut by_template: Vec<(String, Vec<CompiledOperation>)> = Vec::new();
    for operation in api.operations() {
        let Some(object) = api.document.pointer(&operation.pointer) else { continue };
        let item_pointer = operation.pointer.rsplit_once('/').map_or("", |(item, _)| item);
        let item = api.document.pointer(item_pointer).unwrap_or(&Value::Null);
        let method = match Method::from_bytes(operation.method.as_bytes()) {
            Ok(method) => method,
            Err(_) => continue,
        };
        let parameters = compile_parameters(api, &compiler, item, item_pointer, object, &operation.pointer, at, errors);
        let body = compile_body(api, &compiler, object, &operation.pointer, at, errors);
        let compiled_operation = CompiledOperation { method, parameters, body };
        match by_template.iter_mut().find(|(template, _)| *template == operation.template) {
            Some((_, operations)) => operations.push(compiled_operation),
            None => by_template.push((operation.template.clone(), vec![compiled_operation])),
        }
    }
    for (template, operations) in by_template {
        let full = format!("{base_path}{template}");
        if let Err(err) = compiled.router.insert(full.clone(), compiled.paths.len()) {
            errors.push(at.clone(), format!("the path `{template}` cannot be matched: {err}"));
            continue;
        }
        let allow = operations.iter().map(|operation| operation.method.as_str()).collect::<Vec<_>>().join(", ");
        let allow = HeaderValue::from_str(&allow).unwrap_or_else(|_| HeaderValue::from_static(""));
        compiled.paths.push(CompiledPath { template: full, operations, allow });
    }
    compiled
}

#[allow(clippy::too_many_arguments)]
fn compile_parameters(
    api: &ApiDescription,
    compiler: &SchemaCompiler,
    item: &Value,
    item_pointer: &str,
    operation: &Value,
    operation_pointer: &str,
    at: &FieldPath,
    errors: &mut ConfigErrors,
) -> Vec<CompiledParameter> {
    let mut parameters: Vec<CompiledParameter> = Vec::new();
    // Path-level parameters first; an operation's own of the same name and place replace them.
    for (list, list_pointer) in [(item, item_pointer), (operation, operation_pointer)] {
        let Some(entries) = list.get("parameters").and_then(Value::as_array) else { continue };
        for (index, entry) in entries.iter().enumerate() {
            let Some((parameter, pointer)) = api.resolve_at(entry, &format!("{list_pointer}/parameters/{index}"))
            else {
                errors.push(at.clone(), format!("`{list_pointer}/parameters/{index}` has a `$ref` that leads nowhere"));
                continue;
            };
            let Some(name) = parameter.get("name").and_then(Value::as_str) else { continue };
            let location = match parameter.get("in").and_then(Value::as_str) {
                Some("path") => Location::Path,
                Some("query") => Location::Query,
                Some("header") => Location::Header,
                // Cookie parameters are not checked.
                _ => continue,
            };
            let schema = parameter.get("schema");
            let kind = schema.map_or(ValueKind::Text, |schema| value_kind(api, schema, &format!("{pointer}/schema")));
            let validator = match schema {
                Some(_) => match compiler.compile(&format!("{pointer}/schema")) {
                    Ok(validator) => Some(validator),
                    Err(reason) => {
                        errors.push(at.clone(), reason);
                        None
                    }
                },
                None => None,
            };
            let style_is_form = parameter.get("style").and_then(Value::as_str).is_none_or(|style| style == "form");
            let explode = parameter.get("explode").and_then(Value::as_bool).unwrap_or(style_is_form);
            let required =
                location == Location::Path || parameter.get("required").and_then(Value::as_bool).unwrap_or(false);
            let name = if location == Location::Header { name.to_ascii_lowercase() } else { name.to_owned() };
            let compiled = CompiledParameter {
                name,
                location,
                required,
                kind,
                explode: explode && location == Location::Query,
                validator,
            };
            match parameters.iter_mut().find(|known| known.name == compiled.name && known.location == location) {
                Some(known) => *known = compiled,
                None => parameters.push(compiled),
            }
        }
    }
    parameters
}

fn value_kind(api: &ApiDescription, schema: &Value, pointer: &str) -> ValueKind {
    let Some((schema, pointer)) = api.resolve_at(schema, pointer) else { return ValueKind::Text };
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => Some(kind.as_str()),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).find(|kind| *kind != "null"),
        _ => None,
    };
    match kind {
        Some("integer") => ValueKind::Integer,
        Some("number") => ValueKind::Number,
        Some("boolean") => ValueKind::Boolean,
        Some("array") => {
            let items = schema
                .get("items")
                .map_or(ValueKind::Text, |items| value_kind(api, items, &format!("{pointer}/items")));
            ValueKind::Array(Box::new(items))
        }
        _ => ValueKind::Text,
    }
}

fn compile_body(
    api: &ApiDescription,
    compiler: &SchemaCompiler,
    operation: &Value,
    operation_pointer: &str,
    at: &FieldPath,
    errors: &mut ConfigErrors,
) -> Option<CompiledBody> {
    let entry = operation.get("requestBody")?;
    let Some((body, pointer)) = api.resolve_at(entry, &format!("{operation_pointer}/requestBody")) else {
        errors.push(at.clone(), format!("`{operation_pointer}/requestBody` has a `$ref` that leads nowhere"));
        return None;
    };
    let required = body.get("required").and_then(Value::as_bool).unwrap_or(false);
    let mut media = Vec::new();
    for (range, content) in body.get("content").and_then(Value::as_object).into_iter().flatten() {
        let range = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let validator = if is_json(&range) && content.get("schema").is_some() {
            let schema_pointer = format!("{pointer}/content/{}/schema", escape_pointer(&range));
            match compiler.compile(&schema_pointer) {
                Ok(validator) => Some(validator),
                Err(reason) => {
                    errors.push(at.clone(), reason);
                    None
                }
            }
        } else {
            None
        };
        media.push((range, validator));
    }
    Some(CompiledBody { required, media })
}

/// `application/json` and the `+json` types.
fn is_json(media_type: &str) -> bool {
    let media_type = media_type.to_ascii_lowercase();
    media_type == "application/json" || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// Runs per request: one radix-tree lookup, then the compiled schemas of that operation.
struct CompiledOpenApi {
    paths: Vec<CompiledPath>,
    router: matchit::Router<usize>,
    unknown_operations: UnknownOperations,
    max_body_bytes: u64,
    max_errors: usize,
}

/// What a request matched.
enum Found<'a> {
    Operation(&'a CompiledOperation, Vec<(String, String)>),
    UnknownPath,
    UnknownMethod(&'a CompiledPath),
}

impl CompiledOpenApi {
    fn find(&self, request: &RequestParts) -> Found<'_> {
        let Ok(matched) = self.router.at(request.uri.path()) else { return Found::UnknownPath };
        let Some(path) = self.paths.get(*matched.value) else { return Found::UnknownPath };
        let method = if request.method == Method::HEAD
            && !path.operations.iter().any(|operation| operation.method == Method::HEAD)
        {
            // HEAD is answered like GET (RFC 9110 §9.3.2) when the document does not describe it.
            &Method::GET
        } else {
            &request.method
        };
        match path.operations.iter().find(|operation| operation.method == *method) {
            Some(operation) => {
                let params = matched
                    .params
                    .iter()
                    .map(|(name, raw)| {
                        let value = percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned();
                        (name.to_owned(), value)
                    })
                    .collect();
                Found::Operation(operation, params)
            }
            None => Found::UnknownMethod(path),
        }
    }

    /// The answer for a request that does not match `operation`; `None` lets it through.
    fn check(
        &self,
        operation: &CompiledOperation,
        path_params: &[(String, String)],
        request: &RequestParts,
        body: Option<&Bytes>,
    ) -> Option<PolicyResponse> {
        let mut errors = ErrorList { shown: Vec::new(), total: 0, max: self.max_errors };
        let query: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            request.uri.query().map(|query| form_urlencoded::parse(query.as_bytes()).collect()).unwrap_or_default();
        for parameter in &operation.parameters {
            let texts: Vec<&str> = match parameter.location {
                Location::Path => {
                    path_params.iter().filter(|(name, _)| *name == parameter.name).map(|(_, v)| v.as_str()).collect()
                }
                Location::Query => {
                    query.iter().filter(|(name, _)| *name == parameter.name).map(|(_, v)| v.as_ref()).collect()
                }
                Location::Header => request
                    .headers
                    .get_all(parameter.name.as_str())
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .collect(),
            };
            let place = [("in", parameter.location.name()), ("name", parameter.name.as_str())];
            if texts.is_empty() {
                if parameter.required {
                    errors.push(serde_json::json!({"message": "is required"}), &place);
                }
                continue;
            }
            if let Some(validator) = &parameter.validator {
                let instance = parameter_value(&parameter.kind, &texts, parameter.explode);
                errors.extend(schema_errors(validator, &instance, self.max_errors), &place);
            }
        }
        if let Some(expected) = &operation.body {
            if let Some(problem) = self.check_body(expected, request, body, &mut errors) {
                return Some(problem);
            }
        }
        if errors.total == 0 {
            return None;
        }
        let mut extensions = serde_json::Map::new();
        extensions.insert("errors".into(), errors.shown.into());
        extensions.insert("error_count".into(), errors.total.into());
        Some(problem_with(
            StatusCode::BAD_REQUEST,
            "request-validation-failed",
            "Bad Request",
            "the request does not match the API description",
            extensions,
        ))
    }

    /// Checks the body, adding schema errors to `errors`; a problem of its own (415, malformed
    /// JSON) is the answer at once.
    fn check_body(
        &self,
        expected: &CompiledBody,
        request: &RequestParts,
        body: Option<&Bytes>,
        errors: &mut ErrorList,
    ) -> Option<PolicyResponse> {
        let Some(body) = body.filter(|body| !body.is_empty()) else {
            if expected.required {
                errors.push(serde_json::json!({"message": "a request body is required"}), &[("in", "body")]);
            }
            return None;
        };
        let media = media_type(&request.headers).unwrap_or_default().to_ascii_lowercase();
        let kind = media.split('/').next().unwrap_or_default();
        let accepted = expected
            .media
            .iter()
            .find(|(range, _)| *range == media)
            .or_else(|| expected.media.iter().find(|(range, _)| range.strip_suffix("/*") == Some(kind)))
            .or_else(|| expected.media.iter().find(|(range, _)| range == "*/*"));
        let Some((_, validator)) = accepted else {
            let listed: Vec<&str> = expected.media.iter().map(|(range, _)| range.as_str()).collect();
            return Some(problem_with(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Media Type",
                &format!("the operation takes a body of {}", listed.join(", ")),
                serde_json::Map::new(),
            ));
        };
        let validator = validator.as_ref()?;
        match serde_json::from_slice::<Value>(body) {
            Ok(instance) => {
                errors.extend(schema_errors(validator, &instance, self.max_errors), &[("in", "body")]);
                None
            }
            Err(err) => Some(problem_with(
                StatusCode::BAD_REQUEST,
                "invalid-json",
                "Invalid JSON",
                &format!("the request body is not valid JSON: {err}"),
                serde_json::Map::new(),
            )),
        }
    }
}

/// The errors found in one request: the first `max` shown, all counted.
struct ErrorList {
    shown: Vec<Value>,
    total: usize,
    max: usize,
}

impl ErrorList {
    /// Adds one error, marked with where it is (`in`, `name`).
    fn push(&mut self, mut error: Value, place: &[(&str, &str)]) {
        self.total += 1;
        if self.shown.len() < self.max {
            if let Value::Object(object) = &mut error {
                for (key, value) in place {
                    object.insert((*key).to_owned(), (*value).into());
                }
            }
            self.shown.push(error);
        }
    }

    /// Adds the errors of one schema check: those shown, and the count of all.
    fn extend(&mut self, (shown, count): (Vec<Value>, usize), place: &[(&str, &str)]) {
        let listed = shown.len();
        for error in shown {
            self.push(error, place);
        }
        self.total += count - listed;
    }
}

/// A parameter's text as the JSON value its schema describes: numbers and booleans parsed,
/// arrays split. Text that does not parse stays text, for the schema to report.
fn parameter_value(kind: &ValueKind, texts: &[&str], explode: bool) -> Value {
    match kind {
        ValueKind::Array(items) => {
            let parts: Vec<&str> =
                if explode { texts.to_vec() } else { texts.iter().flat_map(|text| text.split(',')).collect() };
            Value::Array(parts.iter().map(|part| scalar_value(items, part)).collect())
        }
        _ => scalar_value(kind, texts.first().copied().unwrap_or_default()),
    }
}

fn scalar_value(kind: &ValueKind, text: &str) -> Value {
    let parsed = match kind {
        ValueKind::Integer => text.parse::<i64>().ok().map(Value::from),
        ValueKind::Number => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
        ValueKind::Boolean => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        ValueKind::Text | ValueKind::Array(_) => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.to_owned()))
}

impl Policy for CompiledOpenApi {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        self.paths.iter().flat_map(|path| &path.operations).any(|operation| operation.body.is_some())
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        let Found::Operation(operation, _) = self.find(request) else { return None };
        body_limit(request, self.max_body_bytes).filter(|_| operation.body.is_some())
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let (operation, path_params) = match self.find(request) {
            Found::Operation(operation, params) => (operation, params),
            Found::UnknownPath if self.unknown_operations == UnknownOperations::Pass => return Flow::Continue.into(),
            Found::UnknownMethod(_) if self.unknown_operations == UnknownOperations::Pass => {
                return Flow::Continue.into();
            }
            Found::UnknownPath => {
                let detail = format!("the API description has no path matching {}", request.uri.path());
                return problem_with(
                    StatusCode::NOT_FOUND,
                    "operation-not-found",
                    "Not Found",
                    &detail,
                    Default::default(),
                )
                .into();
            }
            Found::UnknownMethod(path) => {
                let detail =
                    format!("{} allows {}, not {}", path.template, path.allow.to_str().unwrap_or("-"), request.method);
                let mut answer = problem_with(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "Method Not Allowed",
                    &detail,
                    Default::default(),
                );
                answer.headers_mut().insert(ALLOW, path.allow.clone());
                return answer.into();
            }
        };
        if operation.body.is_some() {
            if let Some(length) = declared_length(request).filter(|length| *length > self.max_body_bytes) {
                return body_too_large(length, self.max_body_bytes).response("openapi", "Bad Request").into();
            }
        }
        let body = request_body(exchange);
        if let Some(body) = body.filter(|body| body.len() as u64 > self.max_body_bytes) {
            return body_too_large(body.len() as u64, self.max_body_bytes).response("openapi", "Bad Request").into();
        }
        match self.check(operation, &path_params, request, body) {
            None => Flow::Continue.into(),
            Some(answer) => {
                tracing::debug!(route = %exchange.route_id, status = answer.status().as_u16(), "request does not match the API description");
                answer.into()
            }
        }
    }
}

#[cfg(test)]
mod tests;

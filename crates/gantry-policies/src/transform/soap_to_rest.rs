#![doc = include_str!("soap_to_rest.md")]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestBody, RequestParts,
    ResponseParts, Stage, Validate,
};
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::rest_to_soap::{check_local_name, default_max_body_bytes};
use super::soap::{self, ElementForm, Envelope, JsonShape, SoapVersion};

/// Settings of `soap_to_rest`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The operations served, by the local name of the element a request carries in its Body
    /// (`Add` for `<Add xmlns="urn:calc">`), each with where it goes upstream.
    pub operations: BTreeMap<String, OperationSpec>,
    /// The namespace URI of response elements. By default the namespace of the request's
    /// element.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Whether the response element's children are in its namespace (`qualified`) or in none
    /// (`unqualified`).
    #[serde(default)]
    pub element_form: ElementForm,
    /// Added to an operation's element name to name the response element (`AddResponse`).
    #[serde(default = "default_response_suffix")]
    pub response_suffix: String,
    /// Request elements (local names) made arrays even when they occur once.
    #[serde(default)]
    pub always_array: Vec<String>,
    /// Whether request texts written as JSON numbers or booleans (`12`, `true`) become them.
    #[serde(default)]
    pub typed_values: bool,
    /// Largest request and response body converted, in bytes: a longer request body is
    /// answered with 413, a longer upstream response with a fault.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

/// Where one operation goes upstream.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    /// The upstream request's method.
    #[serde(default = "default_method")]
    pub method: String,
    /// The upstream path; `{name}` segments are filled from the operation's top-level fields.
    pub path: String,
    /// A SOAP action that selects this operation, whatever element the Body holds.
    #[serde(default)]
    pub action: Option<String>,
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_response_suffix() -> String {
    "Response".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.operations.is_empty() {
            errors.push(path.key("operations"), "list at least one operation");
        }
        let mut actions = HashSet::new();
        for (name, operation) in &self.operations {
            let at = path.key("operations").key(name);
            if let Err(message) = check_local_name(name) {
                errors.push(at.clone(), message);
            } else if let Err(message) = check_local_name(&format!("{name}{}", self.response_suffix)) {
                errors.push(path.key("response_suffix"), message);
            }
            if Method::from_bytes(operation.method.as_bytes()).is_err() || operation.method.is_empty() {
                errors.push(at.key("method"), format!("`{}` is not an HTTP method", operation.method));
            }
            if let Err(message) = PathTemplate::parse(&operation.path) {
                errors.push(at.key("path"), message);
            }
            if let Some(action) = &operation.action {
                if action.is_empty() {
                    errors.push(at.key("action"), "must not be empty");
                } else if !actions.insert(action.as_str()) {
                    errors.push(at.key("action"), format!("`{action}` selects another operation already"));
                }
            }
        }
        if let Some(namespace) = &self.namespace {
            if let Err(message) = soap::check_namespace(namespace) {
                errors.push(path.key("namespace"), message);
            }
        }
        for (index, name) in self.always_array.iter().enumerate() {
            if let Err(message) = check_local_name(name) {
                errors.push(path.key("always_array").index(index), message);
            }
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
    }
}

/// An upstream path with `{name}` segments.
#[derive(Clone, Debug)]
enum PathPiece {
    Text(String),
    Field(String),
}

#[derive(Clone, Debug)]
struct PathTemplate(Vec<PathPiece>);

impl PathTemplate {
    fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("`{template}` must start with `/`"));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or_else(|| format!("`{template}` has a `{{` without `}}`"))? + open;
            let name = &rest[open + 1..close];
            check_local_name(name).map_err(|reason| format!("`{template}`: {reason}"))?;
            pieces.push(PathPiece::Text(rest[..open].to_owned()));
            pieces.push(PathPiece::Field(name.to_owned()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{template}` has a `}}` without `{{`"));
        }
        pieces.push(PathPiece::Text(rest.to_owned()));
        let sample: String = pieces
            .iter()
            .map(|piece| match piece {
                PathPiece::Text(text) => text.as_str(),
                PathPiece::Field(_) => "x",
            })
            .collect();
        sample.parse::<PathAndQuery>().map_err(|_| format!("`{template}` is not a path"))?;
        Ok(Self(pieces))
    }

    fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|piece| match piece {
            PathPiece::Field(name) => Some(name.as_str()),
            PathPiece::Text(_) => None,
        })
    }

    /// The path with each `{name}` replaced by that field, percent-encoded.
    fn fill(&self, fields: &Map<String, Value>) -> Result<String, String> {
        let mut path = String::new();
        for piece in &self.0 {
            match piece {
                PathPiece::Text(text) => path.push_str(text),
                PathPiece::Field(name) => {
                    let value = fields.get(name).and_then(scalar_text).ok_or_else(|| {
                        format!("the operation needs the field `{name}` (a text or number) for its upstream path")
                    })?;
                    path.extend(utf8_percent_encode(&value, PATH_SEGMENT));
                }
            }
        }
        Ok(path)
    }
}

/// Everything but unreserved characters (RFC 3986) is escaped in a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Factory of the `soap_to_rest` policy.
#[derive(Debug)]
pub struct SoapToRest;

impl PolicyFactory for SoapToRest {
    const NAME: &'static str = "soap_to_rest";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("soap_to_rest.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut operations = Vec::new();
        for (name, spec) in config.operations {
            let at = path.key("operations").key(&name);
            let template = PathTemplate::parse(&spec.path);
            let method = Method::from_bytes(spec.method.as_bytes());
            match (template, method) {
                (Ok(template), Ok(method)) => {
                    operations.push(CompiledOperation { name, method, template, action: spec.action })
                }
                // Validation reported these already.
                _ => errors.push(at, "cannot be built"),
            }
        }
        errors.into_result(Arc::new(CompiledSoapToRest {
            operations,
            namespace: config.namespace,
            element_form: config.element_form,
            response_suffix: config.response_suffix,
            shape: JsonShape {
                always_array: config.always_array.into_iter().collect(),
                typed_values: config.typed_values,
            },
            max_body_bytes: config.max_body_bytes,
        }) as Arc<dyn Policy>)
    }
}

struct CompiledOperation {
    name: String,
    method: Method,
    template: PathTemplate,
    action: Option<String>,
}

/// A built `soap_to_rest` policy.
struct CompiledSoapToRest {
    operations: Vec<CompiledOperation>,
    namespace: Option<String>,
    element_form: ElementForm,
    response_suffix: String,
    shape: JsonShape,
    max_body_bytes: u64,
}

/// Left in the exchange by the request hook: how to answer this SOAP call.
#[derive(Clone)]
struct SoapCall {
    version: SoapVersion,
    /// The response element's local name.
    response_element: String,
    /// Its namespace, if any.
    namespace: Option<String>,
}

/// A response envelope made from the upstream's JSON, waiting for the response hook, with the
/// status it was made for.
#[derive(Clone)]
struct WrappedAnswer {
    status: StatusCode,
    body: Bytes,
}

/// The SOAP version of a request that may not be a readable envelope, by its media type.
fn version_of(request: &RequestParts) -> SoapVersion {
    let is_soap12 = request.headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| {
        value.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/soap+xml"))
    });
    if is_soap12 {
        SoapVersion::V12
    } else {
        SoapVersion::V11
    }
}

/// The SOAP action of a request: `SOAPAction` (1.1) or the `action` media type parameter (1.2).
fn action_of(request: &RequestParts) -> Option<&str> {
    let header = request.headers.get("soapaction").and_then(|value| value.to_str().ok());
    let from_header = header.map(|action| action.trim().trim_matches('"')).filter(|action| !action.is_empty());
    from_header.or_else(|| {
        let content_type = request.headers.get(CONTENT_TYPE)?.to_str().ok()?;
        soap::media_type_parameter(content_type, "action").filter(|action| !action.is_empty())
    })
}

/// A fault response: `code` is which side caused it (`sender` true: Client/Sender).
fn fault_response(version: SoapVersion, sender: bool, string: &str, detail: Option<&Value>) -> PolicyResponse {
    let (client, server) = version.fault_codes();
    let code = if sender { client } else { server };
    let body = soap::fault_envelope(version, code, string, detail);
    let mut response = PolicyResponse::new(Bytes::from(body));
    *response.status_mut() = soap::fault_status(version, code);
    if let Ok(content_type) = HeaderValue::from_str(&version.content_type(None)) {
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    response
}

impl CompiledSoapToRest {
    fn select(&self, action: Option<&str>, element: &str) -> Option<&CompiledOperation> {
        action
            .and_then(|action| self.operations.iter().find(|operation| operation.action.as_deref() == Some(action)))
            .or_else(|| self.operations.iter().find(|operation| operation.name == element))
    }

    /// The upstream request of a SOAP call: the method, path and query, and JSON body.
    fn upstream_request(
        &self,
        operation: &CompiledOperation,
        fields: Value,
    ) -> Result<(PathAndQuery, Option<Bytes>), String> {
        let fields = match fields {
            Value::Object(fields) => fields,
            Value::Null => Map::new(),
            other => {
                let mut fields = Map::new();
                fields.insert(soap::TEXT_KEY.to_owned(), other);
                fields
            }
        };
        let mut path = operation.template.fill(&fields)?;
        let sends_body = !matches!(operation.method, Method::GET | Method::HEAD | Method::DELETE);
        let body = if sends_body {
            Some(Bytes::from(serde_json::to_vec(&Value::Object(fields)).map_err(|err| err.to_string())?))
        } else {
            // Methods without a body carry the other fields as query parameters.
            let used: HashSet<&str> = operation.template.fields().collect();
            let mut query = form_urlencoded::Serializer::new(String::new());
            let mut any = false;
            for (name, value) in &fields {
                if used.contains(name.as_str()) {
                    continue;
                }
                let values = match value {
                    Value::Array(items) => items.iter().collect(),
                    one => vec![one],
                };
                for value in values {
                    let text = scalar_text(value).unwrap_or_else(|| match value {
                        Value::Null => String::new(),
                        other => other.to_string(),
                    });
                    query.append_pair(name, &text);
                    any = true;
                }
            }
            if any {
                path.push('?');
                path.push_str(&query.finish());
            }
            None
        };
        let path = path.parse::<PathAndQuery>().map_err(|_| format!("`{path}` is not a valid upstream path"))?;
        Ok((path, body))
    }

    fn wrap_answer(&self, call: &SoapCall, body: &[u8]) -> Result<String, String> {
        let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|err| format!("the upstream's answer is not JSON: {err}"))?
        };
        // A list has no element name of its own: its items become `item` elements.
        let value = match value {
            Value::Array(items) => Value::Object(Map::from_iter([("item".to_owned(), Value::Array(items))])),
            other => other,
        };
        let mut element = String::new();
        match (&call.namespace, self.element_form) {
            (Some(namespace), ElementForm::Qualified) => {
                soap::write_json_element(&mut element, &call.response_element, Some(("xmlns", namespace)), &value, &[])?
            }
            (Some(namespace), ElementForm::Unqualified) => soap::write_json_element(
                &mut element,
                &format!("r:{}", call.response_element),
                Some(("xmlns:r", namespace)),
                &value,
                &[],
            )?,
            (None, _) => soap::write_json_element(&mut element, &call.response_element, None, &value, &[])?,
        }
        Ok(soap::envelope(call.version, &element))
    }
}

impl Policy for CompiledSoapToRest {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: true, log: false }
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, _: &RequestParts) -> Option<u64> {
        Some(self.max_body_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let version = version_of(request);
        let refuse = |string: &str| Hook::from(fault_response(version, true, string, None));
        if request.method != Method::POST {
            return refuse("SOAP requests are sent with POST");
        }
        if request.headers.get(CONTENT_ENCODING).is_some_and(|encoding| encoding != "identity") {
            return refuse("a compressed SOAP request cannot be read");
        }
        let body = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
        let envelope = match Envelope::parse(&body) {
            Ok(envelope) => envelope,
            Err(reason) => return refuse(&format!("the request is not a SOAP envelope: {reason}")),
        };
        let version = envelope.version;
        let refuse = |string: &str| Hook::from(fault_response(version, true, string, None));
        let Some((namespace, element)) = envelope.operation() else {
            return refuse("the request's Body is empty");
        };
        let Some(operation) = self.select(action_of(request), element) else {
            return refuse(&format!("the operation `{element}` is not served here"));
        };
        let namespace = self.namespace.clone().or_else(|| namespace.filter(|uri| !uri.is_empty()).map(str::to_owned));
        let fields = match envelope.operation_json(&self.shape) {
            Ok(Some((_, fields))) => fields,
            Ok(None) => Value::Null,
            Err(reason) => return refuse(&format!("the operation's element cannot be read: {reason}")),
        };
        let (path, body) = match self.upstream_request(operation, fields) {
            Ok(request) => request,
            Err(reason) => return refuse(&reason),
        };
        let call =
            SoapCall { version, response_element: format!("{}{}", operation.name, self.response_suffix), namespace };
        request.method = operation.method.clone();
        request.headers.remove("soapaction");
        request.headers.remove(TRANSFER_ENCODING);
        request.headers.remove(CONTENT_ENCODING);
        // The answer is read and wrapped here, so it must come uncompressed.
        request.headers.remove(ACCEPT_ENCODING);
        request.headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        match body {
            Some(body) => {
                request.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                request.headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                exchange.extensions.insert(RequestBody(body));
            }
            None => {
                request.headers.remove(CONTENT_TYPE);
                request.headers.remove(CONTENT_LENGTH);
                exchange.extensions.insert(RequestBody(Bytes::new()));
            }
        }
        exchange.upstream_path = Some(path);
        exchange.extensions.insert(call);
        Hook::Done(Flow::Continue)
    }

    fn reads_response_body(&self) -> bool {
        true
    }

    fn response_body_limit(&self, _: &ResponseParts, exchange: &Exchange) -> Option<u64> {
        exchange.extensions.get::<SoapCall>().map(|_| self.max_body_bytes)
    }

    fn on_response_body(
        &self,
        response: &ResponseParts,
        body: &Bytes,
        exchange: &mut Exchange,
    ) -> Option<PolicyResponse> {
        let call = exchange.extensions.get::<SoapCall>()?.clone();
        let status = response.status;
        if !status.is_success() {
            let upstream_answer = serde_json::from_slice::<Value>(body).ok();
            let mut detail = Map::new();
            detail.insert("status".into(), status.as_u16().into());
            if let Some(answer) = upstream_answer {
                detail.insert("response".into(), answer);
            }
            let string = format!("the upstream answered {status}");
            let sender = status.is_client_error();
            return Some(fault_response(call.version, sender, &string, Some(&Value::Object(detail))));
        }
        if response.headers.get(CONTENT_ENCODING).is_some_and(|encoding| encoding != "identity") {
            return Some(fault_response(call.version, false, "the upstream answered with a compressed body", None));
        }
        match self.wrap_answer(&call, body) {
            Ok(envelope) => {
                exchange.extensions.insert(WrappedAnswer { status, body: Bytes::from(envelope) });
                None
            }
            Err(reason) => {
                tracing::warn!(route = %exchange.route_id, %reason, "upstream answer not wrapped in SOAP");
                Some(fault_response(
                    call.version,
                    false,
                    &format!("the upstream's answer cannot be sent as SOAP: {reason}"),
                    None,
                ))
            }
        }
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Some(call) = exchange.extensions.get::<SoapCall>().cloned() else { return };
        let body = match exchange.extensions.remove::<WrappedAnswer>() {
            Some(wrapped) if wrapped.status == response.status => {
                response.status = StatusCode::OK;
                wrapped.body
            }
            Some(_) => return,
            None => {
                let is_soap =
                    response.headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| {
                        let media = value.split(';').next().unwrap_or_default().trim();
                        media.eq_ignore_ascii_case(call.version.media_type())
                    });
                if is_soap || response.status.is_success() {
                    return;
                }
                // The gateway's own error (the upstream could not be reached, its answer was too
                // large): the SOAP client still gets a fault.
                let string = format!("the gateway answered {}", response.status);
                let fault = fault_response(call.version, response.status.is_client_error(), &string, None);
                let (head, body) = fault.into_parts();
                response.status = head.status;
                body
            }
        };
        if let Ok(content_type) = HeaderValue::from_str(&call.version.content_type(None)) {
            response.headers.insert(CONTENT_TYPE, content_type);
        }
        response.headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        response.headers.remove(TRANSFER_ENCODING);
        response.headers.remove(CONTENT_ENCODING);
        replace_response_body(exchange, body);
    }
}

#[cfg(test)]
mod tests;

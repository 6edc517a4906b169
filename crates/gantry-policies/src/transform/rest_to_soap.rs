#![doc = include_str!("rest_to_soap.md")]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::{problem_response, PROBLEM_JSON};
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestBody, RequestParts,
    ResponseParts, Stage, Validate,
};
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::soap::{self, ElementForm, Envelope, Fault, JsonShape, SoapVersion};
use super::xml_json::mapping::check_name;

/// Settings of `rest_to_soap`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SOAP version the service speaks: `"1.1"` or `"1.2"`.
    #[serde(default)]
    pub soap_version: SoapVersion,
    /// The namespace URI of the operation's element (the service's target namespace).
    pub namespace: String,
    /// The local name of the element a request carries in its Body: for document/literal
    /// services the input part's element (often the operation's name), for rpc the operation.
    pub operation: String,
    /// The SOAP action: the `SOAPAction` header (1.1) or the `action` parameter of the
    /// `Content-Type` (1.2). By default SOAP 1.1 sends `SOAPAction: ""` and 1.2 none.
    #[serde(default)]
    pub action: Option<String>,
    /// The path (and query) the request is sent to upstream, the service's endpoint. By default
    /// the request's own path, rewritten as the route says.
    #[serde(default)]
    pub path: Option<String>,
    /// Whether the operation element's children are in its namespace (`qualified`) or in none
    /// (`unqualified`).
    #[serde(default)]
    pub element_form: ElementForm,
    /// Names of the operation element's children in the order the service's schema lists them
    /// (an `xs:sequence`); names not listed follow in alphabetical order.
    #[serde(default)]
    pub field_order: Vec<String>,
    /// Where else the operation's fields come from besides the JSON body: the route's
    /// `{name}` path parameters and the query parameters. A body member of the same name wins.
    #[serde(default = "default_parameters")]
    pub parameters: Vec<ParameterSource>,
    /// Whether the JSON answer is the content of the response element (`{"AddResult": 3}`)
    /// rather than an object naming it (`{"AddResponse": {"AddResult": 3}}`).
    #[serde(default = "yes")]
    pub unwrap_response: bool,
    /// Response elements (local names) made arrays even when they occur once.
    #[serde(default)]
    pub always_array: Vec<String>,
    /// Whether response texts written as JSON numbers or booleans (`12`, `true`) become them.
    #[serde(default)]
    pub typed_values: bool,
    /// HTTP statuses of SOAP faults by fault code (local names, such as `Client`, `Server`,
    /// `Sender` or a dotted subcode like `Client.Authentication`); the longest matching dotted
    /// prefix applies. Added to the defaults: `Client` and `Sender` 400, any other 502.
    #[serde(default)]
    pub fault_statuses: BTreeMap<String, u16>,
    /// Largest request and response body converted, in bytes: a longer request body is
    /// answered with 413, a longer response with 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

/// Where an operation's fields may come from besides the JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParameterSource {
    /// The route's `{name}` path parameters.
    Path,
    /// The query string's parameters; a repeated one becomes a list.
    Query,
}

fn default_parameters() -> Vec<ParameterSource> {
    vec![ParameterSource::Path, ParameterSource::Query]
}

fn yes() -> bool {
    true
}

pub(crate) fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

/// Statuses of faults whose code no setting names.
fn default_fault_statuses() -> BTreeMap<String, u16> {
    [("Client", 400), ("Sender", 400), ("Server", 502), ("Receiver", 502)]
        .into_iter()
        .map(|(code, status)| (code.to_owned(), status))
        .collect()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if let Err(message) = soap::check_namespace(&self.namespace) {
            errors.push(path.key("namespace"), message);
        }
        if let Err(message) = check_local_name(&self.operation) {
            errors.push(path.key("operation"), message);
        }
        if let Some(action) = &self.action {
            if action.contains(['"', '\r', '\n']) || HeaderValue::from_str(action).is_err() {
                errors.push(path.key("action"), "must be a URI without quotes or line breaks");
            }
        }
        if let Some(upstream_path) = &self.path {
            if !upstream_path.starts_with('/') || upstream_path.parse::<PathAndQuery>().is_err() {
                errors.push(path.key("path"), format!("`{upstream_path}` is not a path starting with `/`"));
            }
        }
        for (index, name) in self.field_order.iter().enumerate() {
            if let Err(message) = check_local_name(name) {
                errors.push(path.key("field_order").index(index), message);
            }
        }
        for (index, name) in self.always_array.iter().enumerate() {
            if let Err(message) = check_local_name(name) {
                errors.push(path.key("always_array").index(index), message);
            }
        }
        for (code, status) in &self.fault_statuses {
            if code.is_empty() || code.contains([':', ' ']) {
                errors
                    .push(path.key("fault_statuses").key(code), "must be a fault code's local name, such as `Client`");
            }
            if !(400..=599).contains(status) {
                errors.push(path.key("fault_statuses").key(code), "must be an error status, 400 to 599");
            }
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
    }
}

/// An XML name without a prefix.
pub(crate) fn check_local_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.contains(':') {
        return Err(format!("`{name}` must be a local name, without a prefix"));
    }
    Ok(())
}

/// Factory of the `rest_to_soap` policy.
#[derive(Debug)]
pub struct RestToSoap;

impl PolicyFactory for RestToSoap {
    const NAME: &'static str = "rest_to_soap";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("rest_to_soap.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let action = config.action.as_deref().unwrap_or_default();
        let content_type = HeaderValue::from_str(
            &config
                .soap_version
                .content_type((config.soap_version == SoapVersion::V12 && !action.is_empty()).then_some(action)),
        );
        let soap_action = HeaderValue::from_str(&format!("\"{action}\""));
        let (Ok(content_type), Ok(soap_action)) = (content_type, soap_action) else {
            // Validation refused such actions already.
            errors.push(path.key("action"), "must be a URI without quotes or line breaks");
            return Err(errors);
        };
        let upstream_path = config.path.as_deref().and_then(|upstream_path| upstream_path.parse::<PathAndQuery>().ok());
        let (operation_name, namespace_declaration) = match config.element_form {
            ElementForm::Qualified => (config.operation.clone(), ("xmlns".to_owned(), config.namespace.clone())),
            ElementForm::Unqualified => {
                (format!("op:{}", config.operation), ("xmlns:op".to_owned(), config.namespace.clone()))
            }
        };
        let mut fault_statuses = default_fault_statuses();
        fault_statuses.extend(config.fault_statuses);
        errors.into_result(Arc::new(CompiledRestToSoap {
            version: config.soap_version,
            operation_name,
            namespace_declaration,
            content_type,
            soap_action: (config.soap_version == SoapVersion::V11).then_some(soap_action),
            accept: HeaderValue::from_static(config.soap_version.media_type()),
            upstream_path,
            field_order: config.field_order,
            parameters: config.parameters,
            unwrap_response: config.unwrap_response,
            shape: JsonShape {
                always_array: config.always_array.into_iter().collect::<HashSet<_>>(),
                typed_values: config.typed_values,
            },
            fault_statuses,
            max_body_bytes: config.max_body_bytes,
        }) as Arc<dyn Policy>)
    }
}

static SOAP_ACTION: HeaderName = HeaderName::from_static("soapaction");

/// A built `rest_to_soap` policy.
struct CompiledRestToSoap {
    version: SoapVersion,
    /// The operation element's name as written (`Add`, or `op:Add` when unqualified).
    operation_name: String,
    /// The namespace declaration on the operation element.
    namespace_declaration: (String, String),
    content_type: HeaderValue,
    /// `SOAPAction` (SOAP 1.1 only), quoted as WS-I Basic Profile R2744 asks.
    soap_action: Option<HeaderValue>,
    accept: HeaderValue,
    upstream_path: Option<PathAndQuery>,
    field_order: Vec<String>,
    parameters: Vec<ParameterSource>,
    unwrap_response: bool,
    shape: JsonShape,
    fault_statuses: BTreeMap<String, u16>,
    max_body_bytes: u64,
}

/// Left in the exchange by the request hook: this request went upstream as a SOAP call.
#[derive(Clone, Copy)]
struct SentAsSoap;

/// A SOAP answer converted to JSON, waiting for the response hook, with the status it was
/// made for: a response another policy put in its place is left alone.
#[derive(Clone)]
struct ConvertedAnswer {
    status: StatusCode,
    body: Bytes,
}

fn bad_request(detail: &str) -> Hook<'static> {
    problem_response(StatusCode::BAD_REQUEST, "body-not-convertible", "Bad Request", Some(detail)).into()
}

fn bad_gateway(code: &str, detail: &str) -> PolicyResponse {
    problem_response(StatusCode::BAD_GATEWAY, code, "Bad Gateway", Some(detail))
}

impl CompiledRestToSoap {
    /// The operation's fields: the JSON body's members, then parameters not already there.
    fn fields(&self, body: &[u8], request: &RequestParts, exchange: &Exchange) -> Result<Map<String, Value>, String> {
        let mut fields = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(fields)) => fields,
                Ok(_) => return Err("the request body must be a JSON object of the operation's fields".into()),
                Err(err) => return Err(format!("the request body is not valid JSON: {err}")),
            }
        };
        for source in &self.parameters {
            match source {
                ParameterSource::Path => {
                    for (name, value) in &exchange.path_params {
                        fields.entry(name.to_string()).or_insert_with(|| Value::String(value.clone()));
                    }
                }
                ParameterSource::Query => {
                    let mut query: Map<String, Value> = Map::new();
                    for (name, value) in form_urlencoded::parse(request.uri.query().unwrap_or_default().as_bytes()) {
                        let value = Value::String(value.into_owned());
                        match query.get_mut(name.as_ref()) {
                            Some(Value::Array(values)) => values.push(value),
                            Some(first) => *first = Value::Array(vec![first.take(), value]),
                            None => {
                                query.insert(name.into_owned(), value);
                            }
                        }
                    }
                    for (name, value) in query {
                        fields.entry(name).or_insert(value);
                    }
                }
            }
        }
        Ok(fields)
    }

    fn envelope(&self, fields: Map<String, Value>) -> Result<String, String> {
        let mut element = String::new();
        let (attribute, uri) = &self.namespace_declaration;
        soap::write_json_element(
            &mut element,
            &self.operation_name,
            Some((attribute, uri)),
            &Value::Object(fields),
            &self.field_order,
        )?;
        Ok(soap::envelope(self.version, &element))
    }

    /// The problem answering a fault: the status its code maps to, and the fault's parts.
    fn fault_problem(&self, fault: Fault) -> PolicyResponse {
        let status = soap::status_for_fault(&self.fault_statuses, &fault.code_name)
            .and_then(|status| StatusCode::from_u16(status).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let mut problem = Map::new();
        problem.insert("type".into(), "https://gantry.dev/problems/soap-fault".into());
        problem.insert("title".into(), status.canonical_reason().unwrap_or("SOAP Fault").into());
        problem.insert("status".into(), status.as_u16().into());
        problem.insert("detail".into(), format!("the SOAP service answered with a fault: {}", fault.string).into());
        problem.insert("faultcode".into(), fault.code.into());
        problem.insert("faultstring".into(), fault.string.into());
        if let Some(actor) = fault.actor {
            problem.insert("faultactor".into(), actor.into());
        }
        if let Some(detail) = fault.detail {
            problem.insert("faultdetail".into(), detail);
        }
        let body = serde_json::to_vec(&Value::Object(problem)).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = PolicyResponse::new(Bytes::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl Policy for CompiledRestToSoap {
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
        if request.headers.get(CONTENT_ENCODING).is_some_and(|encoding| encoding != "identity") {
            return bad_request("a compressed request body cannot be converted to SOAP");
        }
        let body = exchange.extensions.get::<RequestBody>().map(|body| body.0.clone()).unwrap_or_default();
        let envelope = match self.fields(&body, request, exchange).and_then(|fields| self.envelope(fields)) {
            Ok(envelope) => Bytes::from(envelope),
            Err(reason) => return bad_request(&reason),
        };
        request.method = Method::POST;
        request.headers.insert(CONTENT_TYPE, self.content_type.clone());
        request.headers.insert(CONTENT_LENGTH, HeaderValue::from(envelope.len()));
        request.headers.remove(TRANSFER_ENCODING);
        request.headers.remove(CONTENT_ENCODING);
        // The answer is read and converted here, so it must come uncompressed.
        request.headers.remove(ACCEPT_ENCODING);
        request.headers.insert(ACCEPT, self.accept.clone());
        match &self.soap_action {
            Some(action) => request.headers.insert(SOAP_ACTION.clone(), action.clone()),
            None => request.headers.remove(&SOAP_ACTION),
        };
        if let Some(upstream_path) = &self.upstream_path {
            exchange.upstream_path = Some(upstream_path.clone());
        }
        exchange.extensions.insert(RequestBody(envelope));
        exchange.extensions.insert(SentAsSoap);
        Hook::Done(Flow::Continue)
    }

    fn reads_response_body(&self) -> bool {
        true
    }

    fn response_body_limit(&self, _: &ResponseParts, exchange: &Exchange) -> Option<u64> {
        exchange.extensions.get::<SentAsSoap>().map(|_| self.max_body_bytes)
    }

    fn on_response_body(
        &self,
        response: &ResponseParts,
        body: &Bytes,
        exchange: &mut Exchange,
    ) -> Option<PolicyResponse> {
        if body.is_empty() && response.status.is_success() {
            // A one-way operation's acknowledgement.
            return None;
        }
        if response.headers.get(CONTENT_ENCODING).is_some_and(|encoding| encoding != "identity") {
            return Some(bad_gateway("upstream-soap-invalid", "the SOAP service answered with a compressed body"));
        }
        let envelope = match Envelope::parse(body) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::warn!(route = %exchange.route_id, status = response.status.as_u16(), %reason, "upstream answer is not a SOAP envelope");
                let detail =
                    format!("the SOAP service's answer ({}) is not a SOAP envelope: {reason}", response.status);
                return Some(bad_gateway("upstream-soap-invalid", &detail));
            }
        };
        if let Some(fault) = envelope.fault(&self.shape) {
            return Some(self.fault_problem(fault));
        }
        if !response.status.is_success() {
            let detail = format!("the SOAP service answered {} without a fault", response.status);
            return Some(bad_gateway("upstream-soap-invalid", &detail));
        }
        let answer = match envelope.operation_json(&self.shape) {
            Ok(Some((name, value))) if !self.unwrap_response => Value::Object(Map::from_iter([(name, value)])),
            Ok(Some((_, value))) => value,
            Ok(None) => Value::Null,
            Err(reason) => {
                let detail = format!("the SOAP service's answer cannot be converted: {reason}");
                return Some(bad_gateway("upstream-soap-invalid", &detail));
            }
        };
        let body = serde_json::to_vec(&answer).map(Bytes::from).unwrap_or_default();
        exchange.extensions.insert(ConvertedAnswer { status: response.status, body });
        None
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Some(converted) = exchange.extensions.remove::<ConvertedAnswer>() else { return };
        if converted.status != response.status {
            return;
        }
        response.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.headers.insert(CONTENT_LENGTH, HeaderValue::from(converted.body.len()));
        response.headers.remove(TRANSFER_ENCODING);
        replace_response_body(exchange, converted.body);
    }
}

#[cfg(test)]
mod tests;

//! The built `xslt` policy: stylesheets compiled by libxslt (`gantry-xslt`) at load, applied
//! to request and response bodies.

use std::sync::Arc;

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::replace_response_body;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyResponse, RequestBody, RequestParts, ResponseParts,
};
use gantry_xslt::{Error as XsltError, Limits, Stylesheet};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode};

use super::{Config, ParamSource, Transformation};
use crate::validate::{body_limit, oversized, problem_with, request_body, MediaTypes};

/// Where one parameter's value is read from, checked at build time.
enum Source {
    Value(String),
    Header(HeaderName),
    PathParam(String),
    Query(String),
}

/// One compiled stylesheet with its parameters and the `Content-Type` of its results.
struct Compiled {
    stylesheet: Stylesheet,
    params: Vec<(String, Source)>,
    /// Set by the settings or the stylesheet's `xsl:output`; `None` when neither says, so the
    /// result decides (HTML when it starts with an `html` element, else XML).
    content_type: Option<HeaderValue>,
}

pub(super) fn build(
    config: &Config,
    path: &FieldPath,
    context: &BuildContext<'_>,
) -> Result<Arc<dyn Policy>, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let [request, response] = config.transformations(path).map(|side| {
        side.and_then(|(side, at)| compile(&side, &at, context).map_err(|more| errors.extend(more.0)).ok())
    });
    let content_types = MediaTypes::parse(&config.content_types, &path.key("content_types"), &mut errors);
    if request.is_none() && response.is_none() {
        return Err(errors);
    }
    errors.into_result(Arc::new(XsltPolicy {
        request,
        response,
        content_types,
        max_body_bytes: config.max_body_bytes,
        limits: Limits { max_operations: config.max_operations, max_output_bytes: config.max_output_bytes },
    }) as Arc<dyn Policy>)
}

fn compile(side: &Transformation, path: &FieldPath, context: &BuildContext<'_>) -> Result<Compiled, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let compiled = match (&side.file, &side.stylesheet) {
        (Some(file), None) => {
            let resolved = context.spec.resolve_path(file);
            match std::fs::read(&resolved) {
                Ok(text) => Stylesheet::compile(&text, Some(&resolved)).map_err(|err| {
                    let reason = stylesheet_error(&err);
                    errors.push(
                        path.key("file"),
                        format!("`{}` is not a usable XSLT stylesheet: {reason}", resolved.display()),
                    )
                }),
                Err(err) => {
                    errors.push(path.key("file"), format!("cannot read `{}`: {err}", resolved.display()));
                    Err(())
                }
            }
        }
        (None, Some(text)) => {
            // Imports and includes of an inline stylesheet resolve against the configuration's directory.
            let base = context.spec.source_dir.path().map(|dir| dir.join("inline.xsl"));
            Stylesheet::compile(text.as_bytes(), base.as_deref()).map_err(|err| {
                let reason = stylesheet_error(&err);
                errors.push(path.key("stylesheet"), format!("is not a usable XSLT stylesheet: {reason}"))
            })
        }
        // `validate` reported it.
        _ => return Err(errors),
    };
    let mut params = Vec::with_capacity(side.params.len());
    for (name, source) in &side.params {
        let source = match source {
            ParamSource { value: Some(value), .. } => Source::Value(value.clone()),
            ParamSource { header: Some(header), .. } => match HeaderName::from_bytes(header.as_bytes()) {
                Ok(header) => Source::Header(header),
                // `validate` reported it.
                Err(_) => continue,
            },
            ParamSource { path_param: Some(name), .. } => Source::PathParam(name.clone()),
            ParamSource { query: Some(name), .. } => Source::Query(name.clone()),
            _ => continue,
        };
        params.push((name.clone(), source));
    }
    let content_type = match &side.content_type {
        Some(text) => match HeaderValue::from_str(text) {
            Ok(value) if text.contains('/') => Some(value),
            _ => {
                errors.push(path.key("content_type"), format!("`{text}` is not a media type"));
                None
            }
        },
        None => None,
    };
    let Ok(stylesheet) = compiled else { return Err(errors) };
    let content_type = content_type.or_else(|| output_content_type(&stylesheet));
    errors.into_result(Compiled { stylesheet, params, content_type })
}

fn stylesheet_error(err: &XsltError) -> String {
    let text = match err {
        XsltError::NotWellFormed(reason) | XsltError::Failed(reason) => reason.clone(),
        XsltError::OutputTooLarge => err.to_string(),
    };
    // libxslt writes one message per line; a config error reads better on one.
    let joined: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    joined.join("; ")
}

/// The results' `Content-Type` as the stylesheet's own `xsl:output` sets it.
fn output_content_type(stylesheet: &Stylesheet) -> Option<HeaderValue> {
    let output = stylesheet.output();
    if let Some(media_type) = output.media_type.as_deref().and_then(|text| HeaderValue::from_str(text).ok()) {
        return Some(media_type);
    }
    match output.method.as_deref()? {
        "xml" => Some(HeaderValue::from_static("application/xml")),
        "html" => Some(HeaderValue::from_static("text/html; charset=utf-8")),
        "text" => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
        _ => None,
    }
}

/// XSLT's default output method when a stylesheet sets none: HTML when the result starts with
/// an `html` element, else XML.
fn result_content_type(result: &[u8]) -> HeaderValue {
    let start = result.iter().position(|byte| !byte.is_ascii_whitespace()).unwrap_or(result.len());
    let head = &result[start..result.len().min(start + 5)];
    if head.eq_ignore_ascii_case(b"<html") {
        HeaderValue::from_static("text/html; charset=utf-8")
    } else {
        HeaderValue::from_static("application/xml")
    }
}

struct XsltPolicy {
    request: Option<Compiled>,
    response: Option<Compiled>,
    content_types: MediaTypes,
    max_body_bytes: u64,
    limits: Limits,
}

/// The response stylesheet's parameters, read from the request while it was here.
#[derive(Clone)]
struct ResponseParams(Vec<(String, String)>);

/// A response body this policy transformed, waiting for the response hook, with the status
/// and content type it was made from: a response another policy put in its place is left alone.
#[derive(Clone)]
struct TransformedResponse {
    status: StatusCode,
    source_type: Option<HeaderValue>,
    content_type: HeaderValue,
    body: Bytes,
}

fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_ENCODING).is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn query_param(request: &RequestParts, name: &str) -> Option<String> {
    let query = request.uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// The values of `params` for this request; a source the request lacks leaves its parameter out.
fn read_params(params: &[(String, Source)], request: &RequestParts, exchange: &Exchange) -> Vec<(String, String)> {
    params
        .iter()
        .filter_map(|(name, source)| {
            let value = match source {
                Source::Value(value) => Some(value.clone()),
                Source::Header(header) => {
                    request.headers.get(header).and_then(|value| value.to_str().ok()).map(str::to_owned)
                }
                Source::PathParam(param) => exchange.path_param(param).map(str::to_owned),
                Source::Query(param) => query_param(request, param),
            };
            value.map(|value| (name.clone(), value))
        })
        .collect()
}

impl XsltPolicy {
    fn transforms(&self, headers: &http::HeaderMap) -> bool {
        self.content_types.matches(headers) && !is_encoded(headers)
    }

    fn run(
        &self,
        compiled: &Compiled,
        body: &[u8],
        params: &[(String, String)],
    ) -> Result<(Bytes, HeaderValue), XsltError> {
        let params: Vec<(&str, &str)> = params.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let result = compiled.stylesheet.transform(body, &params, self.limits)?;
        let content_type = compiled.content_type.clone().unwrap_or_else(|| result_content_type(&result));
        Ok((Bytes::from(result), content_type))
    }

    fn transform_request(&self, compiled: &Compiled, request: &mut RequestParts, exchange: &mut Exchange) -> Hook<'_> {
        let body = request_body(exchange);
        if let Some(exceeded) = oversized(request, body, self.max_body_bytes) {
            return exceeded.response("xslt", "Bad Request").into();
        }
        let Some(body) = body.filter(|body| !body.is_empty()) else { return Hook::Done(Flow::Continue) };
        let params = read_params(&compiled.params, request, exchange);
        match self.run(compiled, body, &params) {
            Ok((result, content_type)) => {
                request.headers.insert(CONTENT_TYPE, content_type);
                request.headers.insert(CONTENT_LENGTH, HeaderValue::from(result.len()));
                request.headers.remove(TRANSFER_ENCODING);
                exchange.extensions.insert(RequestBody(result));
                Hook::Done(Flow::Continue)
            }
            Err(XsltError::NotWellFormed(reason)) => {
                let detail = format!("the request body is not well-formed XML: {}", first_line(&reason));
                problem_with(StatusCode::BAD_REQUEST, "invalid-xml", "Invalid XML", &detail, serde_json::Map::new())
                    .into()
            }
            Err(err) => {
                // The stylesheet's messages may quote the body: logged, not sent.
                tracing::warn!(route = %exchange.route_id, reason = %err, "request body transformation failed");
                problem_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "transformation-failed",
                    "Internal Server Error",
                    Some("the request body could not be transformed"),
                )
                .into()
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

impl Policy for XsltPolicy {
    fn hooks(&self) -> Hooks {
        // The request hook also reads the response stylesheet's parameters from the request.
        let response_reads_request = self.response.as_ref().is_some_and(|response| !response.params.is_empty());
        Hooks {
            request: self.request.is_some() || response_reads_request,
            response: self.response.is_some(),
            log: false,
        }
    }

    fn reads_request_body(&self) -> bool {
        self.request.is_some()
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        if self.request.is_none() || !self.transforms(&request.headers) {
            return None;
        }
        body_limit(request, self.max_body_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if let Some(response) = self.response.as_ref().filter(|response| !response.params.is_empty()) {
            let params = read_params(&response.params, request, exchange);
            exchange.extensions.insert(ResponseParams(params));
        }
        match &self.request {
            Some(compiled) if self.transforms(&request.headers) => self.transform_request(compiled, request, exchange),
            _ => Hook::Done(Flow::Continue),
        }
    }

    fn reads_response_body(&self) -> bool {
        self.response.is_some()
    }

    fn response_body_limit(&self, response: &ResponseParts, _: &Exchange) -> Option<u64> {
        (self.response.is_some() && self.transforms(&response.headers)).then_some(self.max_body_bytes)
    }

    fn on_response_body(
        &self,
        response: &ResponseParts,
        body: &Bytes,
        exchange: &mut Exchange,
    ) -> Option<PolicyResponse> {
        let compiled = self.response.as_ref()?;
        if body.is_empty() {
            return None;
        }
        let params = exchange.extensions.remove::<ResponseParams>().map(|params| params.0).unwrap_or_default();
        match self.run(compiled, body, &params) {
            Ok((result, content_type)) => {
                exchange.extensions.insert(TransformedResponse {
                    status: response.status,
                    source_type: response.headers.get(CONTENT_TYPE).cloned(),
                    content_type,
                    body: result,
                });
                None
            }
            Err(err) => {
                tracing::warn!(route = %exchange.route_id, reason = %err, "upstream response body transformation failed");
                let detail = match err {
                    XsltError::NotWellFormed(_) => "the upstream's response body is not well-formed XML",
                    _ => "the upstream's response body could not be transformed",
                };
                Some(problem_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream-body-not-transformable",
                    "Bad Gateway",
                    Some(detail),
                ))
            }
        }
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        let Some(transformed) = exchange.extensions.remove::<TransformedResponse>() else { return };
        if transformed.status != response.status
            || transformed.source_type.as_ref() != response.headers.get(CONTENT_TYPE)
        {
            return;
        }
        response.headers.insert(CONTENT_TYPE, transformed.content_type);
        response.headers.insert(CONTENT_LENGTH, HeaderValue::from(transformed.body.len()));
        response.headers.remove(TRANSFER_ENCODING);
        replace_response_body(exchange, transformed.body);
    }
}

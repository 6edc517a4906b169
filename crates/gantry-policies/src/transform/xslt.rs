#![doc = include_str!("xslt.md")]

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Policy, PolicyFactory, Stage, Validate};
use schemars::JsonSchema;
use serde::Deserialize;

#[cfg(feature = "xslt")]
mod compiled;

/// Settings of `xslt`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The stylesheet, a file relative to the configuration file's directory; its
    /// `xsl:import`s and `xsl:include`s resolve against the file's own directory. Give `file`
    /// or `stylesheet` here (used as `on` says), or a `request` and/or a `response` of their own.
    #[serde(default)]
    pub file: Option<String>,
    /// The stylesheet itself, as text.
    #[serde(default)]
    pub stylesheet: Option<String>,
    /// Which bodies the top-level stylesheet transforms: `request`, `response` or `both`.
    #[serde(default)]
    pub on: On,
    /// Stylesheet parameters of the top-level stylesheet, by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSource>,
    /// The `Content-Type` of the top-level stylesheet's results; by default from its
    /// `xsl:output` (`media-type`, else the method: `xml`, `html` or `text`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The stylesheet applied to request bodies, instead of the top-level one.
    #[serde(default)]
    pub request: Option<Transformation>,
    /// The stylesheet applied to upstream response bodies, instead of the top-level one.
    #[serde(default)]
    pub response: Option<Transformation>,
    /// Media types of the bodies transformed (`type/subtype` or `type/*+suffix`); other bodies
    /// pass unchanged.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Largest body transformed, in bytes: a longer request body is answered with 413, a
    /// longer response body with 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest result of one transformation, in bytes; a larger one fails it.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Most XPath operations one transformation may perform; a stylesheet that needs more
    /// fails, so no body can make a transformation run for long.
    #[serde(default = "default_max_operations")]
    pub max_operations: u64,
}

/// Which bodies a stylesheet transforms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Request bodies, before they go upstream.
    #[default]
    Request,
    /// Upstream response bodies, before they go to the client.
    Response,
    /// Both.
    Both,
}

/// One stylesheet and what it is given.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transformation {
    /// The stylesheet, a file relative to the configuration file's directory. Give `file` or
    /// `stylesheet`.
    #[serde(default)]
    pub file: Option<String>,
    /// The stylesheet itself, as text.
    #[serde(default)]
    pub stylesheet: Option<String>,
    /// Stylesheet parameters, by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSource>,
    /// The `Content-Type` of the results; by default from the stylesheet's `xsl:output`.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Where a stylesheet parameter's value comes from; always passed as a string. Give one of
/// them. A header, path parameter or query parameter the request does not have leaves the
/// parameter unset, so the stylesheet's own default (`xsl:param select`) applies.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSource {
    /// A fixed value.
    #[serde(default)]
    pub value: Option<String>,
    /// The value of this request header.
    #[serde(default)]
    pub header: Option<String>,
    /// The value of this path parameter of the route (`/orders/{id}`).
    #[serde(default)]
    pub path_param: Option<String>,
    /// The value of this query parameter.
    #[serde(default)]
    pub query: Option<String>,
}

fn default_content_types() -> Vec<String> {
    vec!["application/xml".into(), "text/xml".into(), "application/*+xml".into()]
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_output_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_max_operations() -> u64 {
    // About 0.2 s of a runaway stylesheet on one core; sorting 20 000 elements needs under 100 000.
    1_000_000
}

/// Whether `name` can name an `xsl:param`: an XML name without a prefix (NCName), in ASCII.
fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn validate_params(params: &BTreeMap<String, ParamSource>, path: &FieldPath, errors: &mut ConfigErrors) {
    for (name, source) in params {
        let at = path.key(name);
        if !is_param_name(name) {
            errors.push(at.clone(), "must be an XML name without a prefix (letters, digits, `_`, `-`, `.`)");
        }
        let given = [&source.value, &source.header, &source.path_param, &source.query];
        if given.iter().filter(|field| field.is_some()).count() != 1 {
            errors.push(at.clone(), "give exactly one of `value`, `header`, `path_param` and `query`");
        }
        if let Some(header) = &source.header {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                errors.push(at.key("header"), format!("`{header}` is not a header name"));
            }
        }
    }
}

fn validate_source(
    (file, stylesheet): (&Option<String>, &Option<String>),
    path: &FieldPath,
    errors: &mut ConfigErrors,
) {
    match (file, stylesheet) {
        (Some(_), Some(_)) => errors.push(path.clone(), "give `file` or `stylesheet`, not both"),
        (None, None) => errors.push(path.clone(), "give the stylesheet as a `file` or inline (`stylesheet`)"),
        _ => {}
    }
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let top_level = self.file.is_some() || self.stylesheet.is_some();
        let separate = self.request.is_some() || self.response.is_some();
        match (top_level, separate) {
            (true, true) => errors.push(
                path.clone(),
                "give one stylesheet (`file` or `stylesheet`, with `on`) or separate `request` and \
                 `response` stylesheets, not both",
            ),
            (false, false) => errors.push(
                path.clone(),
                "give a stylesheet (`file` or `stylesheet`) or a `request` and/or `response` stylesheet",
            ),
            (true, false) => {
                validate_source((&self.file, &self.stylesheet), path, errors);
                validate_params(&self.params, &path.key("params"), errors);
            }
            (false, true) => {
                for (name, value) in [("on", self.on != On::default()), ("params", !self.params.is_empty())] {
                    if value {
                        errors.push(
                            path.key(name),
                            "belongs with a top-level stylesheet; set it in `request` or `response`",
                        );
                    }
                }
                if self.content_type.is_some() {
                    errors.push(
                        path.key("content_type"),
                        "belongs with a top-level stylesheet; set it in `request` or `response`",
                    );
                }
                for (name, side) in [("request", &self.request), ("response", &self.response)] {
                    if let Some(side) = side {
                        let at = path.key(name);
                        validate_source((&side.file, &side.stylesheet), &at, errors);
                        validate_params(&side.params, &at.key("params"), errors);
                    }
                }
            }
        }
        if self.content_types.is_empty() {
            errors.push(path.key("content_types"), "must list at least one media type");
        }
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_output_bytes", self.max_output_bytes),
            ("max_operations", self.max_operations),
        ] {
            if value == 0 {
                errors.push(path.key(name), "must be more than 0");
            }
        }
    }
}

#[cfg(feature = "xslt")]
impl Config {
    /// The request and response stylesheets with the path of their settings, whichever way
    /// they were given.
    fn transformations(&self, path: &FieldPath) -> [Option<(Transformation, FieldPath)>; 2] {
        if self.request.is_some() || self.response.is_some() {
            return [
                self.request.clone().map(|side| (side, path.key("request"))),
                self.response.clone().map(|side| (side, path.key("response"))),
            ];
        }
        let top = Transformation {
            file: self.file.clone(),
            stylesheet: self.stylesheet.clone(),
            params: self.params.clone(),
            content_type: self.content_type.clone(),
        };
        let request = matches!(self.on, On::Request | On::Both).then(|| (top.clone(), path.clone()));
        let response = matches!(self.on, On::Response | On::Both).then(|| (top, path.clone()));
        [request, response]
    }
}

/// Factory of the `xslt` policy.
#[derive(Debug)]
pub struct Xslt;

impl PolicyFactory for Xslt {
    const NAME: &'static str = "xslt";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("xslt.md");
    type Config = Config;

    #[cfg(feature = "xslt")]
    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        compiled::build(&config, path, context)
    }

    #[cfg(not(feature = "xslt"))]
    fn build(_: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Err(ConfigErrors::one(
            path.clone(),
            "this Gantry was built without XSLT: build it with `--features xslt` (which needs libxslt; \
             on Debian `apt-get install libxslt1-dev pkg-config`)",
        ))
    }
}

#[cfg(all(test, feature = "xslt"))]
mod tests;

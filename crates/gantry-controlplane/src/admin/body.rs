//! Request bodies of admin writes: JSON or YAML by `Content-Type`, decoded first into a
//! generic value (syntax errors) and then into the `*Spec` type with field paths (model
//! errors), so a typo comes back as `routes[orders].upstrem: unknown field`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use gantry_config::{ConfigError, ConfigErrors, FieldPath, Origin};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::AdminError;

/// How a request body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`, `*/*+json`, or no `Content-Type` at all.
    Json,
    /// `application/yaml`, `application/x-yaml`, `text/yaml`, `text/x-yaml`, `*/*+yaml`.
    Yaml,
}

impl BodyFormat {
    /// The format named by the request's `Content-Type`.
    pub fn of(headers: &HeaderMap) -> Result<Self, AdminError> {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Ok(BodyFormat::Json);
        };
        let unsupported = || AdminError::UnsupportedMediaType {
            content_type: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        };
        let text = value.to_str().map_err(|_| unsupported())?;
        // Parameters such as `; charset=utf-8` do not change the format.
        let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Ok(BodyFormat::Json),
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(BodyFormat::Yaml),
            other if other.ends_with("+json") => Ok(BodyFormat::Json),
            other if other.ends_with("+yaml") => Ok(BodyFormat::Yaml),
            _ => Err(unsupported()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            BodyFormat::Json => "JSON",
            BodyFormat::Yaml => "YAML",
        }
    }
}

/// Reads the body as a JSON value, whichever format it was sent in.
pub fn parse_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, AdminError> {
    let format = BodyFormat::of(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AdminError::BodyTooLarge { reason: rejection.body_text() }
        } else {
            AdminError::MalformedBody { format: format.name(), reason: rejection.body_text() }
        }
    })?;
    let malformed = |reason: String| AdminError::MalformedBody { format: format.name(), reason };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed("the body is empty".to_owned()));
    }
    match format {
        BodyFormat::Json => serde_json::from_slice(&body).map_err(|err| malformed(err.to_string())),
        BodyFormat::Yaml => {
            let text = std::str::from_utf8(&body).map_err(|err| malformed(format!("not UTF-8: {err}")))?;
            serde_saphyr::from_str(text).map_err(|err: serde_saphyr::Error| {
                // The crate's message carries a source snippet over several lines; the first says why.
                malformed(err.to_string().lines().next().unwrap_or("invalid YAML").to_owned())
            })
        }
    }
}

/// Converts a parsed body into `T`, reporting a mismatch at `at` (the resource's place in the
/// whole configuration, e.g. `routes[orders]`) joined with the path inside the body.
pub fn decode<T: DeserializeOwned>(value: serde_json::Value, at: &FieldPath, origin: &Origin) -> Result<T, AdminError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = at.join(&FieldPath::from_serde(err.path()));
        let message = err.into_inner().to_string();
        AdminError::InvalidConfig(ConfigErrors(vec![ConfigError { origin: Some(origin.clone()), path, message }]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_config::RouteSpec;
    use http::HeaderValue;

    fn with_type(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).expect("valid"));
        headers
    }

    #[test]
    fn picks_the_format_from_content_type() {
        assert_eq!(BodyFormat::of(&HeaderMap::new()).expect("default"), BodyFormat::Json);
        assert_eq!(BodyFormat::of(&with_type("application/json; charset=utf-8")).expect("json"), BodyFormat::Json);
        assert_eq!(BodyFormat::of(&with_type("Application/YAML")).expect("yaml"), BodyFormat::Yaml);
        assert_eq!(BodyFormat::of(&with_type("text/x-yaml")).expect("yaml"), BodyFormat::Yaml);
        let refused = BodyFormat::of(&with_type("text/plain")).expect_err("unsupported");
        assert!(
            matches!(refused, AdminError::UnsupportedMediaType { ref content_type } if content_type == "text/plain")
        );
    }

    #[test]
    fn parses_yaml_and_json_to_the_same_value() {
        let yaml = parse_body(&with_type("application/yaml"), Ok(Bytes::from("id: a\npaths: [/x]\n"))).expect("yaml");
        let json = parse_body(&HeaderMap::new(), Ok(Bytes::from(r#"{"id":"a","paths":["/x"]}"#))).expect("json");
        assert_eq!(yaml, json);
    }

    #[test]
    fn rejects_empty_and_broken_bodies_as_malformed() {
        let empty = parse_body(&HeaderMap::new(), Ok(Bytes::from("  \n"))).expect_err("empty");
        assert!(matches!(empty, AdminError::MalformedBody { format: "JSON", .. }), "{empty}");
        let broken = parse_body(&with_type("application/yaml"), Ok(Bytes::from("id: [unclosed\n"))).expect_err("bad");
        assert!(matches!(broken, AdminError::MalformedBody { format: "YAML", .. }), "{broken}");
    }

    #[test]
    fn reports_a_model_error_at_the_full_field_path() {
        let value = serde_json::json!({"id": "a", "paths": ["/x"], "upstrem": "u"});
        let at = FieldPath::root().key("routes").item(0, "a");
        let origin = Origin::Admin { resource: "routes/a".to_owned() };
        let Err(AdminError::InvalidConfig(errors)) = decode::<RouteSpec>(value, &at, &origin) else {
            panic!("an unknown field must be rejected");
        };
        assert_eq!(errors.0[0].path.to_string(), "routes[a].upstrem");
        assert!(errors.0[0].message.contains("unknown field"), "{}", errors.0[0].message);
        assert_eq!(errors.0[0].origin, Some(origin));
    }
}

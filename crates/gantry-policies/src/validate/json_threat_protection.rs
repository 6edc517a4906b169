#![doc = include_str!("json_threat_protection.md")]

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{body_limit, oversized, request_body, require_positive, Exceeded, MediaTypes};

/// Settings of `json_threat_protection`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Largest JSON body accepted, in bytes; a larger one is answered with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Deepest nesting of objects and arrays (`{"a":[1]}` is 2 deep), from 1 to 100.
    #[serde(default = "default_max_depth")]
    pub max_depth: u64,
    /// Most entries (keys) in one object.
    #[serde(default = "default_max_object_entries")]
    pub max_object_entries: u64,
    /// Most items in one array.
    #[serde(default = "default_max_array_items")]
    pub max_array_items: u64,
    /// Longest string value, in bytes of UTF-8 after unescaping.
    #[serde(default = "default_max_string_bytes")]
    pub max_string_bytes: u64,
    /// Longest object key, in bytes of UTF-8 after unescaping.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: u64,
    /// Request media types checked (`type/subtype`, or `type/*+suffix` for a structured-syntax
    /// suffix); parameters such as `charset` are ignored. Other requests pass unchecked.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_depth() -> u64 {
    32
}

fn default_max_object_entries() -> u64 {
    1000
}

fn default_max_array_items() -> u64 {
    10_000
}

fn default_max_string_bytes() -> u64 {
    64 * 1024
}

fn default_max_key_bytes() -> u64 {
    256
}

fn default_content_types() -> Vec<String> {
    vec!["application/json".into(), "application/*+json".into()]
}

/// serde_json refuses nesting past 128 levels on its own; staying below keeps our limit the
/// one a client is told about.
const DEEPEST_ALLOWED: u64 = 100;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        require_positive(self.max_body_bytes, path.key("max_body_bytes"), errors);
        if !(1..=DEEPEST_ALLOWED).contains(&self.max_depth) {
            errors.push(path.key("max_depth"), format!("must be from 1 to {DEEPEST_ALLOWED}"));
        }
        require_positive(self.max_object_entries, path.key("max_object_entries"), errors);
        require_positive(self.max_array_items, path.key("max_array_items"), errors);
        require_positive(self.max_string_bytes, path.key("max_string_bytes"), errors);
        require_positive(self.max_key_bytes, path.key("max_key_bytes"), errors);
        if self.content_types.is_empty() {
            errors.push(path.key("content_types"), "must list at least one media type");
        }
    }
}

/// Factory of the `json_threat_protection` policy.
#[derive(Debug)]
pub struct JsonThreatProtection;

impl PolicyFactory for JsonThreatProtection {
    const NAME: &'static str = "json_threat_protection";
    const STAGE: Stage = Stage::Validate;
    const DOCS: &'static str = include_str!("json_threat_protection.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let content_types = MediaTypes::parse(&config.content_types, &path.key("content_types"), &mut errors);
        let limits = JsonLimits {
            max_depth: config.max_depth,
            max_object_entries: config.max_object_entries,
            max_array_items: config.max_array_items,
            max_string_bytes: config.max_string_bytes,
            max_key_bytes: config.max_key_bytes,
        };
        errors.into_result(Arc::new(CompiledJsonThreatProtection {
            max_body_bytes: config.max_body_bytes,
            limits,
            content_types,
        }) as Arc<dyn Policy>)
    }
}

/// The structural limits a JSON document is scanned against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JsonLimits {
    pub(crate) max_depth: u64,
    pub(crate) max_object_entries: u64,
    pub(crate) max_array_items: u64,
    pub(crate) max_string_bytes: u64,
    pub(crate) max_key_bytes: u64,
}

/// Runs per request with a JSON body: one pass over the buffered bytes, no tree built.
struct CompiledJsonThreatProtection {
    max_body_bytes: u64,
    limits: JsonLimits,
    content_types: MediaTypes,
}

impl Policy for CompiledJsonThreatProtection {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        body_limit(request, self.max_body_bytes).filter(|_| self.content_types.matches(&request.headers))
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if !self.content_types.matches(&request.headers) {
            return Hook::Done(Flow::Continue);
        }
        let body = request_body(exchange);
        if let Some(exceeded) = oversized(request, body, self.max_body_bytes) {
            return exceeded.response("json-threat", "JSON limit exceeded").into();
        }
        let Some(body) = body else { return Hook::Done(Flow::Continue) };
        match scan_json(body, &self.limits) {
            Ok(()) => Hook::Done(Flow::Continue),
            Err(ScanError::Exceeded(exceeded)) => {
                tracing::debug!(limit = exceeded.limit, "JSON body refused");
                exceeded.response("json-threat", "JSON limit exceeded").into()
            }
            Err(ScanError::Malformed(reason)) => super::problem_with(
                http::StatusCode::BAD_REQUEST,
                "invalid-json",
                "Invalid JSON",
                &format!("the request body is not valid JSON: {reason}"),
                serde_json::Map::new(),
            )
            .into(),
        }
    }
}

/// Why a JSON body was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// It went past a limit.
    Exceeded(Exceeded),
    /// It is not JSON (serde_json's reason, with line and column).
    Malformed(String),
}

/// Checks `body` against `limits` in one pass over its tokens. An empty body passes: it
/// carries nothing to protect against.
pub(crate) fn scan_json(body: &[u8], limits: &JsonLimits) -> Result<(), ScanError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    // The first limit passed is kept here: serde's error type carries only text.
    let exceeded = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let result = Scan { limits, depth: 0, exceeded: &exceeded }.deserialize(&mut deserializer);
    if let Some(exceeded) = exceeded.into_inner() {
        return Err(ScanError::Exceeded(exceeded));
    }
    result.and_then(|()| deserializer.end()).map_err(|err| ScanError::Malformed(err.to_string()))
}

/// One value at nesting `depth` (the number of containers around it).
#[derive(Clone, Copy)]
struct Scan<'a> {
    limits: &'a JsonLimits,
    depth: u64,
    exceeded: &'a RefCell<Option<Exceeded>>,
}

impl Scan<'_> {
    fn fail<E: de::Error>(&self, limit: &'static str, allowed: u64, detail: String) -> E {
        *self.exceeded.borrow_mut() = Some(Exceeded { limit, allowed, detail });
        E::custom(limit)
    }

    fn enter<E: de::Error>(&self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.limits.max_depth {
            let allowed = self.limits.max_depth;
            return Err(self.fail("max_depth", allowed, format!("objects and arrays nest more than {allowed} deep")));
        }
        Ok(Self { depth, ..*self })
    }

    fn check_string<E: de::Error>(&self, value: &str) -> Result<(), E> {
        let allowed = self.limits.max_string_bytes;
        if value.len() as u64 > allowed {
            return Err(self.fail("max_string_bytes", allowed, format!("a string is longer than {allowed} bytes")));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.check_string(value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        let allowed = self.limits.max_array_items;
        let mut count = 0u64;
        while items.next_element_seed(inner)?.is_some() {
            count += 1;
            if count > allowed {
                return Err(self.fail("max_array_items", allowed, format!("an array has more than {allowed} items")));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        let allowed = self.limits.max_object_entries;
        let mut count = 0u64;
        while entries.next_key_seed(Key(inner))?.is_some() {
            count += 1;
            if count > allowed {
                return Err(self.fail(
                    "max_object_entries",
                    allowed,
                    format!("an object has more than {allowed} entries"),
                ));
            }
            entries.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object key, checked against `max_key_bytes`.
struct Key<'a>(Scan<'a>);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        let allowed = self.0.limits.max_key_bytes;
        if key.len() as u64 > allowed {
            return Err(self.0.fail("max_key_bytes", allowed, format!("an object key is longer than {allowed} bytes")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

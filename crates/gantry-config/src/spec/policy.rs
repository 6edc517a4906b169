//! A policy entry: `- <policy name>: { ...settings }`.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One policy attached somewhere, written as a single-key mapping from the policy's name to
/// its settings. The settings stay raw here; the policy registry types and validates them.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// The policy's registered name, e.g. `ip_restriction`.
    pub name: String,
    /// Its settings, exactly as written.
    pub config: serde_json::Value,
}

impl Serialize for PolicySpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(&self.name, &self.config)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for PolicySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PolicyVisitor;
        impl<'de> Visitor<'de> for PolicyVisitor {
            type Value = PolicySpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with one key, the policy name, e.g. `ip_restriction: {allow: [10.0.0.0/8]}`")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<PolicySpec, E> {
                // A bare name (`- cors`) means the policy with its default settings.
                Ok(PolicySpec { name: name.to_owned(), config: serde_json::Value::Object(Default::default()) })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PolicySpec, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty policy entry: name the policy, e.g. `ip_restriction: {...}`"));
                };
                let config: serde_json::Value = map.next_value()?;
                let config = match config {
                    serde_json::Value::Null => serde_json::Value::Object(Default::default()),
                    other => other,
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a policy entry names exactly one policy, found `{name}` and `{extra}`: write each as its own list item"
                    )));
                }
                Ok(PolicySpec { name, config })
            }
        }
        deserializer.deserialize_any(PolicyVisitor)
    }
}

impl JsonSchema for PolicySpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PolicySpec".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One policy: a mapping from the policy name to its settings.",
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1
        })
    }
}

//! Secrets that never show up in logs, error messages or admin API output.

use std::cell::Cell;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

/// Text shown wherever a secret would be printed.
pub const REDACTED: &str = "***";

/// A secret value (a key, a password). `Debug`, `Display` and `Serialize` print `***`,
/// except inside [`reveal_secrets`], which the config writer uses to persist the real value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The real value. Call sites are the only places a secret is read; keep them few.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REVEAL.with(Cell::get) {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl<T: JsonSchema> JsonSchema for Secret<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    // A secret has the schema of its value, inlined like it: without this, schema exports
    // got a shared definition named after the value's type (`string`).
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    /// The value's schema marked `writeOnly` (JSON Schema 2020-12 §9.4): the admin API hides
    /// such values in settings it only knows by their schema.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = T::json_schema(generator);
        schema.insert("writeOnly".to_owned(), true.into());
        schema
    }
}

/// Runs `write` with secrets serialized as their real values: only for writing config files
/// that the gateway itself reads back.
pub fn reveal_secrets<R>(write: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REVEAL.with(|reveal| reveal.set(self.0));
        }
    }
    let _restore = Restore(REVEAL.with(|reveal| reveal.replace(true)));
    write()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_value_in_debug_display_and_json() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(serde_json::to_string(&secret).expect("serializes"), "\"***\"");
    }

    #[test]
    fn reveals_the_value_only_inside_reveal_secrets() {
        let secret = Secret::new("hunter2".to_owned());
        let json = reveal_secrets(|| serde_json::to_string(&secret).expect("serializes"));
        assert_eq!(json, "\"hunter2\"");
        assert_eq!(serde_json::to_string(&secret).expect("serializes"), "\"***\"");
    }
}

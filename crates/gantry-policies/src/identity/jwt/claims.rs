//! The claims a `jwt` policy reads from a verified token, read in place from the claims' JSON
//! text: only the claims the settings name are looked at, and their values are not copied
//! until they are used.

use std::borrow::Cow;
use std::fmt;

use http::HeaderValue;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The names of the claims a policy reads, each with a slot number.
#[derive(Debug, Default)]
pub(super) struct ClaimNames {
    names: Vec<Box<str>>,
}

impl ClaimNames {
    /// The slot of claim `name`, added if new.
    pub(super) fn slot(&mut self, name: &str) -> usize {
        if let Some(slot) = self.names.iter().position(|own| &**own == name) {
            return slot;
        }
        self.names.push(name.into());
        self.names.len() - 1
    }

    /// The raw values of the named claims of a claims set (a JSON object), by slot. A claim
    /// given twice takes its last value (RFC 7519 §4 allows either that or a refusal).
    pub(super) fn read<'t>(&self, claims: &'t str) -> Result<Vec<Option<&'t RawValue>>, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(claims);
        let slots = Slots { names: &self.names }.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(slots)
    }
}

struct Slots<'n> {
    names: &'n [Box<str>],
}

impl<'de> DeserializeSeed<'de> for Slots<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Slots<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = vec![None; self.names.len()];
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            match self.names.iter().position(|own| **own == *name) {
                Some(slot) => slots[slot] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(slots)
    }
}

/// A JSON string, borrowed from the text unless it has escapes. (`Cow<str>`'s own
/// `Deserialize` always copies.)
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The JSON type of a raw value, from its first character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Bool,
    Array,
    Object,
    Null,
}

fn kind(raw: &RawValue) -> Kind {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') | None => Kind::Null,
        Some(_) => Kind::Number,
    }
}

/// Whether a claim is present with a value other than `null`.
pub(super) fn is_present(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|raw| kind(raw) != Kind::Null)
}

/// A string claim, or a number's text (some issuers give numeric subjects).
pub(super) fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    match kind(raw) {
        Kind::String => serde_json::from_str::<Text<'_>>(raw.get()).ok().map(|Text(text)| text),
        Kind::Number => Some(Cow::Borrowed(raw.get().trim())),
        _ => None,
    }
}

/// A list of strings: an array of strings, or one string as a list of one (other elements are
/// left out).
pub(super) fn strings(raw: &RawValue) -> Vec<String> {
    match kind(raw) {
        Kind::String => text(raw).map(|text| vec![text.into_owned()]).unwrap_or_default(),
        Kind::Array => serde_json::from_str::<Vec<&RawValue>>(raw.get())
            .map(|items| items.into_iter().filter_map(|item| Some(text(item)?.into_owned())).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Scopes: a space-separated string (`scope`, RFC 8693 §4.2) or an array of them (`scp`).
pub(super) fn add_scopes(raw: &RawValue, scopes: &mut Vec<String>) {
    let listed = match kind(raw) {
        Kind::String => text(raw).map(|text| text.split_ascii_whitespace().map(str::to_owned).collect()),
        Kind::Array => Some(strings(raw)),
        _ => None,
    };
    for scope in listed.unwrap_or_default() {
        if !scope.is_empty() && !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
}

/// A header value for a claim: a string, number or boolean as written; an array of those
/// joined with commas. Objects, `null`, and values with control characters give none.
pub(super) fn header_value(raw: &RawValue) -> Option<HeaderValue> {
    match kind(raw) {
        Kind::String | Kind::Number => HeaderValue::from_bytes(text(raw)?.as_bytes()).ok(),
        Kind::Bool => HeaderValue::from_bytes(raw.get().trim().as_bytes()).ok(),
        Kind::Array => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
            let mut joined = String::new();
            for item in items {
                let part = match kind(item) {
                    Kind::String | Kind::Number => text(item)?,
                    Kind::Bool => Cow::Borrowed(item.get().trim()),
                    _ => return None,
                };
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(&part);
            }
            HeaderValue::from_bytes(joined.as_bytes()).ok()
        }
        Kind::Object | Kind::Null => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<'t>(names: &[&str], claims: &'t str) -> Vec<Option<&'t RawValue>> {
        let mut plan = ClaimNames::default();
        for name in names {
            plan.slot(name);
        }
        plan.read(claims).expect("a claims object")
    }

    #[test]
    fn reads_only_the_named_claims_in_slot_order() {
        let slots = read(&["sub", "tier", "missing"], r#"{"iss":"a","tier":3,"sub":"alice","x":{"y":[1]}}"#);
        assert_eq!(slots[0].map(RawValue::get), Some(r#""alice""#));
        assert_eq!(slots[1].map(RawValue::get), Some("3"));
        assert!(slots[2].is_none());
    }

    #[test]
    fn matches_claim_names_written_with_escapes() {
        let slots = read(&["sub"], r#"{"s\u0075b":"alice"}"#);
        assert_eq!(slots[0].and_then(text).as_deref(), Some("alice"));
    }

    #[test]
    fn refuses_claims_that_are_not_an_object() {
        let plan = ClaimNames::default();
        assert!(plan.read("[1,2]").is_err());
        assert!(plan.read(r#"{"a":1} trailing"#).is_err());
    }

    #[test]
    fn converts_values_for_headers() {
        let slots = read(
            &["s", "n", "b", "a", "o", "z", "bad"],
            r#"{"s":"gold","n":42,"b":true,"a":["x",1,false],"o":{"k":1},"z":null,"bad":"a\nb"}"#,
        );
        let header = |slot: usize| slots[slot].and_then(header_value);
        assert_eq!(header(0), Some(HeaderValue::from_static("gold")));
        assert_eq!(header(1), Some(HeaderValue::from_static("42")));
        assert_eq!(header(2), Some(HeaderValue::from_static("true")));
        assert_eq!(header(3), Some(HeaderValue::from_static("x,1,false")));
        assert_eq!(header(4), None);
        assert_eq!(header(5), None);
        assert_eq!(header(6), None, "a line break would split the header");
    }

    #[test]
    fn reads_scopes_from_a_string_or_an_array_without_repeats() {
        let slots = read(&["scope", "scp"], r#"{"scope":"read  write","scp":["write","admin"]}"#);
        let mut scopes = Vec::new();
        for raw in slots.into_iter().flatten() {
            add_scopes(raw, &mut scopes);
        }
        assert_eq!(scopes, ["read", "write", "admin"]);
    }

    #[test]
    fn reads_groups_from_an_array_or_a_single_string() {
        let slots = read(&["a", "s", "n"], r#"{"a":["staff","ops",7],"s":"staff","n":{"x":1}}"#);
        assert_eq!(slots[0].map(strings), Some(vec!["staff".to_owned(), "ops".to_owned(), "7".to_owned()]));
        assert_eq!(slots[1].map(strings), Some(vec!["staff".to_owned()]));
        assert_eq!(slots[2].map(strings), Some(Vec::new()));
    }

    #[test]
    fn treats_null_as_absent() {
        let slots = read(&["a", "b"], r#"{"a":null,"b":0}"#);
        assert!(!is_present(slots[0]));
        assert!(is_present(slots[1]));
    }
}

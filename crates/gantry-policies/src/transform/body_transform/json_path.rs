//! Field paths into a JSON document: JSON Pointers (`/customer/name`, RFC 6901) or dotted
//! paths (`customer.name`, `items.0.id`), parsed once into segments. A segment indexes an
//! array when it is a decimal number (or `-`, one past the end, when adding).

use serde_json::{Map, Value};

/// A parsed field path; empty for the whole document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JsonPath(Vec<String>);

impl JsonPath {
    /// Parses a JSON Pointer (starting with `/`) or a dotted path.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is empty; write a JSON Pointer (`/a/b`) or a dotted path (`a.b`)".to_owned());
        }
        let segments: Vec<String> = match text.strip_prefix('/') {
            Some(pointer) => pointer
                .split('/')
                .map(|segment| {
                    if segment.replace("~0", "").replace("~1", "").contains('~') {
                        Err(format!("`{text}` has a `~` not followed by 0 or 1"))
                    } else {
                        Ok(segment.replace("~1", "/").replace("~0", "~"))
                    }
                })
                .collect::<Result<_, _>>()?,
            None => {
                if text.split('.').any(str::is_empty) {
                    return Err(format!("`{text}` has an empty segment"));
                }
                text.split('.').map(str::to_owned).collect()
            }
        };
        Ok(Self(segments))
    }

    /// The path of the parent and the last segment, or `None` for the whole document.
    fn split_last(&self) -> Option<(&[String], &str)> {
        self.0.split_last().map(|(last, parent)| (parent, last.as_str()))
    }

    /// The path's last segment: the field's name.
    pub(crate) fn name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// The path with its last segment replaced by `name` (a sibling field).
    pub(crate) fn sibling(&self, name: &str) -> Self {
        let mut segments = self.0.clone();
        segments.pop();
        segments.push(name.to_owned());
        Self(segments)
    }

    /// The value at this path.
    pub(crate) fn get<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(document, step)
    }

    /// The value at this path, to change.
    pub(crate) fn get_mut<'v>(&self, document: &'v mut Value) -> Option<&'v mut Value> {
        self.0.iter().try_fold(document, step_mut)
    }

    /// Takes the value at this path out of the document.
    pub(crate) fn remove(&self, document: &mut Value) -> Option<Value> {
        let (parent, last) = self.split_last()?;
        match parent.iter().try_fold(document, step_mut)? {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let index = array_index(last)?;
                (index < items.len()).then(|| items.remove(index))
            }
            _ => None,
        }
    }

    /// Puts `value` at this path, creating missing objects on the way. With `overwrite` false
    /// an existing value stays. False when the path cannot be made (it runs through a string,
    /// or an array index past the end); the whole document is replaced by the empty path.
    pub(crate) fn insert(&self, document: &mut Value, value: Value, overwrite: bool) -> bool {
        let Some((parent, last)) = self.split_last() else {
            if overwrite {
                *document = value;
            }
            return true;
        };
        let mut current = document;
        for segment in parent {
            current = match current {
                Value::Object(map) => map.entry(segment.clone()).or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => match array_index(segment).and_then(|index| items.get_mut(index)) {
                    Some(item) => item,
                    None => return false,
                },
                _ => return false,
            };
            if current.is_null() {
                *current = Value::Object(Map::new());
            }
        }
        match current {
            Value::Object(map) => {
                if overwrite || !map.contains_key(last) {
                    map.insert(last.to_owned(), value);
                }
                true
            }
            Value::Array(items) if last == "-" => {
                items.push(value);
                true
            }
            Value::Array(items) => match array_index(last) {
                Some(index) if index < items.len() => {
                    if overwrite {
                        items[index] = value;
                    }
                    true
                }
                Some(index) if index == items.len() => {
                    items.push(value);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

fn array_index(segment: &str) -> Option<usize> {
    // RFC 6901: no leading zeros, no signs.
    let canonical = segment == "0" || (!segment.starts_with('0') && segment.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| segment.parse().ok()).flatten()
}

fn step<'v>(value: &'v Value, segment: &String) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(array_index(segment)?),
        _ => None,
    }
}

fn step_mut<'v>(value: &'v mut Value, segment: &String) -> Option<&'v mut Value> {
    match value {
        Value::Object(map) => map.get_mut(segment),
        Value::Array(items) => items.get_mut(array_index(segment)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).expect("valid path")
    }

    #[test]
    fn reads_pointers_and_dotted_paths_alike() {
        let document = json!({"a/b": 1, "items": [{"id": 7}], "c": {"d~": 2}});
        assert_eq!(path("/a~1b").get(&document), Some(&json!(1)));
        assert_eq!(path("/c/d~0").get(&document), Some(&json!(2)));
        assert_eq!(path("items.0.id").get(&document), Some(&json!(7)));
        assert_eq!(path("/items/0/id").get(&document), Some(&json!(7)));
        assert_eq!(path("items.01.id").get(&document), None, "no leading zeros");
        assert_eq!(path("items.1.id").get(&document), None);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in ["", "a..b", ".a", "a.", "/a~2"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn inserts_creating_objects_and_appending_to_arrays() {
        let mut document = json!({"items": [1], "s": "text", "n": null});
        assert!(path("customer.address.city").insert(&mut document, json!("Oslo"), true));
        assert!(path("/items/-").insert(&mut document, json!(2), true));
        assert!(path("items.2").insert(&mut document, json!(3), true));
        assert!(path("n.x").insert(&mut document, json!(true), true), "null becomes an object");
        assert!(!path("s.x").insert(&mut document, json!(1), true), "cannot go through a string");
        assert!(!path("items.9").insert(&mut document, json!(1), true));
        assert!(path("customer.address.city").insert(&mut document, json!("Bergen"), false));
        assert_eq!(
            document,
            json!({"items": [1, 2, 3], "s": "text", "n": {"x": true}, "customer": {"address": {"city": "Oslo"}}})
        );
    }

    #[test]
    fn removes_object_fields_and_array_items() {
        let mut document = json!({"a": {"b": 1}, "items": [1, 2, 3]});
        assert_eq!(path("a.b").remove(&mut document), Some(json!(1)));
        assert_eq!(path("items.1").remove(&mut document), Some(json!(2)));
        assert_eq!(path("missing.x").remove(&mut document), None);
        assert_eq!(document, json!({"a": {}, "items": [1, 3]}));
    }
}

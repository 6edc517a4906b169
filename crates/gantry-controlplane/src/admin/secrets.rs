//! Hides the secrets inside policy settings when the admin API shows a resource, and refuses
//! their placeholder when it comes back.
//!
//! Policy settings are kept as written (raw JSON) until the policy is built, so they carry no
//! `Secret` type the serializer could see. Each policy's JSON Schema does: a `Secret` field is
//! marked `writeOnly` (JSON Schema 2020-12 §9.4, "may be sent, never returned"). Settings are
//! walked alongside their schema and every `writeOnly` value is shown as `***`.

use gantry_config::secret::REDACTED;
use gantry_config::{ConfigErrors, FieldPath};
use serde_json::Value;

/// Replaces the secrets in `policies`, a list of `{name: settings}` entries, with `***`.
pub fn hide_policy_secrets(policies: &mut Value) {
    for_each_secret_mut(policies, &mut |value| *value = Value::String(REDACTED.to_owned()));
}

/// Adds an error for every secret in `policies` (written at `at`) sent as the `***` placeholder.
pub fn find_policy_placeholders(policies: &Value, at: &FieldPath, errors: &mut ConfigErrors) {
    let Some(entries) = policies.as_array() else { return };
    for (index, entry) in entries.iter().enumerate() {
        let Some((name, settings)) = entry.as_object().and_then(|map| map.iter().next()) else { continue };
        let Some(policy) = gantry_policies::find(name) else { continue };
        let schema = policy.schema().to_value();
        visit(settings, &schema, &schema, &at.index(index).key(name), &mut |value, path| {
            if value.as_str() == Some(REDACTED) {
                errors.push(
                    path.clone(),
                    "`***` is how the admin API shows a secret, not a usable value: send the real secret",
                );
            }
        });
    }
}

/// Hides the secrets of every policy list in a whole configuration (`GET /config`).
pub fn hide_secrets_in_config(config: &mut Value) {
    if let Some(global) = config.get_mut("global_policies") {
        hide_policy_secrets(global);
    }
    for kind in ["routes", "services", "policy_sets", "consumers", "consumer_groups"] {
        let Some(items) = config.get_mut(kind).and_then(Value::as_array_mut) else { continue };
        for policies in items.iter_mut().filter_map(|item| item.get_mut("policies")) {
            hide_policy_secrets(policies);
        }
    }
}

fn for_each_secret_mut(policies: &mut Value, action: &mut dyn FnMut(&mut Value)) {
    let Some(entries) = policies.as_array_mut() else { return };
    for entry in entries {
        let Some((name, settings)) = entry.as_object_mut().and_then(|map| map.iter_mut().next()) else { continue };
        let Some(policy) = gantry_policies::find(name) else { continue };
        let schema = policy.schema().to_value();
        visit_mut(settings, &schema, &schema, action);
    }
}

/// The schema `schema` stands for: `$ref`s into the root's `$defs` followed.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str).and_then(|reference| reference.strip_prefix("#/$defs/")) {
        Some(name) => root.get("$defs").and_then(|defs| defs.get(name)).unwrap_or(schema),
        None => schema,
    }
}

/// The alternatives of a schema (`anyOf`/`oneOf`/`allOf` branches, which is how an optional
/// or an enum field is described), the schema itself first.
fn branches<'a>(schema: &'a Value, root: &'a Value) -> Vec<&'a Value> {
    let schema = resolve(schema, root);
    let mut found = vec![schema];
    for keyword in ["anyOf", "oneOf", "allOf"] {
        for branch in schema.get(keyword).and_then(Value::as_array).into_iter().flatten() {
            found.extend(branches(branch, root));
        }
    }
    found
}

fn is_write_only(schema: &Value, root: &Value) -> bool {
    branches(schema, root).iter().any(|branch| branch.get("writeOnly").and_then(Value::as_bool) == Some(true))
}

/// The schema of field `key` of an object described by `schema`.
fn field_schema<'a>(schema: &'a Value, root: &'a Value, key: &str) -> Option<&'a Value> {
    branches(schema, root).into_iter().find_map(|branch| {
        branch
            .get("properties")
            .and_then(|properties| properties.get(key))
            .or_else(|| branch.get("additionalProperties").filter(|additional| additional.is_object()))
    })
}

/// The schema of the items of an array described by `schema`.
fn item_schema<'a>(schema: &'a Value, root: &'a Value) -> Option<&'a Value> {
    branches(schema, root).into_iter().find_map(|branch| branch.get("items").filter(|items| items.is_object()))
}

fn visit(value: &Value, schema: &Value, root: &Value, at: &FieldPath, found: &mut dyn FnMut(&Value, &FieldPath)) {
    if value.is_null() {
        return;
    }
    if is_write_only(schema, root) {
        found(value, at);
        return;
    }
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                if let Some(schema) = field_schema(schema, root, key) {
                    visit(field, schema, root, &at.key(key), found);
                }
            }
        }
        Value::Array(items) => {
            if let Some(schema) = item_schema(schema, root) {
                for (index, item) in items.iter().enumerate() {
                    visit(item, schema, root, &at.index(index), found);
                }
            }
        }
        _ => {}
    }
}

fn visit_mut(value: &mut Value, schema: &Value, root: &Value, action: &mut dyn FnMut(&mut Value)) {
    if value.is_null() {
        return;
    }
    if is_write_only(schema, root) {
        action(value);
        return;
    }
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if let Some(schema) = field_schema(schema, root, key) {
                    visit_mut(field, schema, root, action);
                }
            }
        }
        Value::Array(items) => {
            if let Some(schema) = item_schema(schema, root) {
                for item in items.iter_mut() {
                    visit_mut(item, schema, root, action);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The schema walk on a hand-written schema with the shapes schemars produces: a plain
    /// secret, an optional one (`anyOf` with null), one behind a `$ref`, secrets in list items.
    #[test]
    fn hides_write_only_values_wherever_the_schema_puts_them() {
        let root = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "secret": {"type": "string", "writeOnly": true},
                "maybe": {"anyOf": [{"type": "string", "writeOnly": true}, {"type": "null"}]},
                "keys": {"type": "array", "items": {"$ref": "#/$defs/Key"}},
            },
            "$defs": {"Key": {"type": "object", "properties": {"kid": {"type": "string"}, "secret": {"type": "string", "writeOnly": true}}}}
        });
        let mut value = json!({"name": "n", "secret": "s1", "maybe": "s2", "keys": [{"kid": "k", "secret": "s3"}]});
        visit_mut(&mut value, &root, &root, &mut |value| *value = json!("***"));
        assert_eq!(
            value,
            json!({"name": "n", "secret": "***", "maybe": "***", "keys": [{"kid": "k", "secret": "***"}]})
        );

        let mut found = Vec::new();
        visit(&value, &root, &root, &FieldPath::root().key("p"), &mut |_, path| found.push(path.to_string()));
        assert_eq!(found, ["p.keys[0].secret", "p.maybe", "p.secret"]);
    }

    #[test]
    fn leaves_policies_without_secrets_alone() {
        let mut policies = json!([{"ip_restriction": {"allow": ["10.0.0.0/8"]}}, {"unknown_policy": {"x": 1}}]);
        let before = policies.clone();
        hide_policy_secrets(&mut policies);
        assert_eq!(policies, before);
    }
}

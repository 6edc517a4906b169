//! Tests of the registry and of every policy's metadata: names, docs, schemas, and that
//! every YAML example in the docs loads and builds, so the docs cannot drift from the code.

use std::collections::HashSet;

use gantry_config::{FieldPath, GatewaySpec, PolicySpec};
use gantry_policy_api::BuildContext;

use super::*;

#[test]
fn finds_every_policy_by_name_and_nothing_else() {
    for policy in all() {
        assert_eq!(find(policy.name).map(|found| found.name), Some(policy.name));
    }
    assert!(find("no_such_policy").is_none());
}

#[test]
fn lists_unique_snake_case_names_in_stage_order() {
    let mut seen = HashSet::new();
    for policy in all() {
        assert!(seen.insert(policy.name), "`{}` is registered twice", policy.name);
        assert!(
            !policy.name.is_empty() && policy.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "`{}` is not snake_case",
            policy.name
        );
    }
    assert!(all().windows(2).all(|pair| pair[0].stage <= pair[1].stage), "the list is not in stage order");
}

#[test]
fn gives_every_policy_docs_with_every_section() {
    for policy in all() {
        let heading = format!("# {}\n", policy.name);
        assert!(policy.docs.starts_with(&heading), "{}: the docs must open with `{}`", policy.name, heading.trim());
        for section in ["## Configuration", "## Example", "## Responses", "## Caveats"] {
            assert!(policy.docs.contains(section), "{}: the docs lack a `{section}` section", policy.name);
        }
        assert!(
            policy.docs.contains(&format!("Stage: `{}`", policy.stage.name())),
            "{}: the docs must name the stage `{}`",
            policy.name,
            policy.stage.name()
        );
    }
}

/// Each field's `///` doc becomes its schema description and must also have a row in the
/// md's configuration table, so neither drifts from the `Config` type.
#[test]
fn gives_every_policy_a_schema_whose_fields_are_described_and_documented() {
    for policy in all() {
        let schema = serde_json::to_value(policy.schema()).expect("a schema is JSON");
        let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{}: no properties", policy.name));
        assert!(!properties.is_empty(), "{}: the schema has no fields", policy.name);
        for (field, property) in properties {
            let description = property["description"].as_str().unwrap_or_default();
            assert!(!description.trim().is_empty(), "{}.{field}: no description in the schema", policy.name);
            assert!(
                policy.docs.contains(&format!("| `{field}` |")),
                "{}.{field}: no row in the configuration table of the docs",
                policy.name
            );
        }
    }
}

/// Pulls every ```yaml block out of a markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim() == "```yaml" => current = Some(String::new()),
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```yaml block");
    blocks
}

/// Every policy entry of a configuration, with the path it is written at.
fn policy_entries(spec: &GatewaySpec) -> Vec<(FieldPath, &PolicySpec)> {
    fn add<'a>(entries: &mut Vec<(FieldPath, &'a PolicySpec)>, list: FieldPath, policies: &'a [PolicySpec]) {
        for (index, policy) in policies.iter().enumerate() {
            entries.push((list.index(index).key(&policy.name), policy));
        }
    }
    let root = FieldPath::root();
    let mut entries = Vec::new();
    add(&mut entries, root.key("global_policies"), &spec.global_policies);
    for (index, service) in spec.services.iter().enumerate() {
        add(&mut entries, root.key("services").item(index, &service.id).key("policies"), &service.policies);
    }
    for (index, set) in spec.policy_sets.iter().enumerate() {
        add(&mut entries, root.key("policy_sets").item(index, &set.id).key("policies"), &set.policies);
    }
    for (index, route) in spec.routes.iter().enumerate() {
        add(&mut entries, root.key("routes").item(index, &route.id).key("policies"), &route.policies);
    }
    for (index, consumer) in spec.consumers.iter().enumerate() {
        add(&mut entries, root.key("consumers").item(index, &consumer.id).key("policies"), &consumer.policies);
    }
    entries
}

#[test]
fn loads_and_builds_every_yaml_example_in_the_docs() {
    for policy in all() {
        let blocks = yaml_blocks(policy.docs);
        assert!(!blocks.is_empty(), "{}: the docs have no ```yaml example", policy.name);
        let mut uses_itself = false;
        for (number, block) in blocks.iter().enumerate() {
            let example = format!("{} example {}", policy.name, number + 1);
            let spec = gantry_config::load_str(block).unwrap_or_else(|errors| panic!("{example}: {errors}\n{block}"));
            let semantic = gantry_config::validate::validate_spec(&spec);
            assert!(semantic.is_empty(), "{example}: {semantic}\n{block}");
            let entries = policy_entries(&spec);
            assert!(!entries.is_empty(), "{example}: no policy in it\n{block}");
            let context = BuildContext { spec: &spec };
            for (path, entry) in entries {
                uses_itself |= entry.name == policy.name;
                let registered = find(&entry.name).unwrap_or_else(|| panic!("{example}: unknown policy at {path}"));
                if let Err(errors) = registered.build(&entry.config, &path, &context) {
                    panic!("{example}: {errors}\n{block}");
                }
            }
        }
        assert!(uses_itself, "{}: no example configures the policy itself", policy.name);
    }
}

#[test]
fn finds_yaml_blocks_and_skips_other_code() {
    let markdown = "text\n```yaml\na: 1\n```\n```http\nGET /\n```\n  ```yaml\n  b: 2\n  ```\n";
    assert_eq!(yaml_blocks(markdown), ["a: 1\n", "  b: 2\n"]);
}

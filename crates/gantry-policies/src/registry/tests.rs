//! Tests of the registry and of every policy's metadata: names, docs, schemas, and that
//! every YAML example in the docs loads and builds, so the docs cannot drift from the code.

use std::collections::HashSet;

use gantry_config::{ConfigErrors, FieldPath, GatewaySpec, PolicySpec};
use gantry_policy_api::{BuildContext, ConsumerDirectory};

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
            policy.name.starts_with(|c: char| c.is_ascii_lowercase())
                && policy.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
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
    for (index, group) in spec.consumer_groups.iter().enumerate() {
        add(&mut entries, root.key("consumer_groups").item(index, &group.id).key("policies"), &group.policies);
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
            let mut credential_errors = ConfigErrors::default();
            let consumers = ConsumerDirectory::build(&spec, &find, &mut credential_errors);
            assert!(credential_errors.is_empty(), "{example}: {credential_errors}\n{block}");
            // The example's own node settings decide which stores exist (`node.stores.redis`).
            let stores = gantry_state::Stores::from_node(spec.node.as_ref())
                .unwrap_or_else(|errors| panic!("{example}: {errors}\n{block}"));
            let context = BuildContext::new(&spec, &consumers).with_stores(&stores);
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

/// The docs index, `docs/policies/README.md`, from the root of the workspace.
fn docs_index_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/policies/README.md")
}

const INDEX_BEGIN: &str = "<!-- BEGIN GENERATED: policy index -->\n";
const INDEX_END: &str = "<!-- END GENERATED -->";

/// The first sentence of a policy's docs, after the title: its purpose in one line.
fn purpose(docs: &str) -> String {
    let paragraph: Vec<&str> = docs
        .lines()
        .skip(1)
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let paragraph = paragraph.join(" ");
    // A sentence ends at a full stop before a capital letter, so "e.g. this" does not end it.
    let end = paragraph
        .match_indices(". ")
        .map(|(at, _)| at)
        .find(|&at| paragraph[at + 2..].starts_with(|c: char| c.is_uppercase()))
        .map_or(paragraph.len(), |at| at + 1);
    paragraph[..end].replace('|', "\\|")
}

/// The folder of a policy's md file: `src/<stage>/`, except the AI gateway's policies, which
/// share their provider translations in `src/ai/`.
fn folder(policy: &RegisteredPolicy) -> &'static str {
    if policy.name.starts_with("ai_") {
        "ai"
    } else {
        policy.stage.name()
    }
}

/// The index table as generated from the registry.
fn generated_index() -> String {
    let mut table = String::from("| Policy | Stage | Purpose |\n| --- | --- | --- |\n");
    for policy in all() {
        table.push_str(&format!(
            "| [`{name}`](../../crates/gantry-policies/src/{folder}/{name}.md) | `{stage}` | {purpose} |\n",
            name = policy.name,
            folder = folder(policy),
            stage = policy.stage.name(),
            purpose = purpose(policy.docs),
        ));
    }
    table
}

#[test]
fn lists_every_registered_policy_in_the_docs_index() {
    for policy in all() {
        // The link must lead to the very file the policy's docs are built from.
        let md =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/{}/{}.md", folder(policy), policy.name));
        let linked = std::fs::read_to_string(&md).unwrap_or_else(|err| panic!("{}: {err}", md.display()));
        assert_eq!(linked, policy.docs, "{}: the index would link to another file than its docs", policy.name);
        assert!(!purpose(policy.docs).is_empty(), "{}: the docs open without a purpose sentence", policy.name);
    }

    let path = docs_index_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let start = text.find(INDEX_BEGIN).expect("the docs index has the BEGIN GENERATED marker") + INDEX_BEGIN.len();
    let end = start + text[start..].find(INDEX_END).expect("the docs index has the END GENERATED marker");
    let expected = generated_index();
    if text[start..end] == expected {
        return;
    }
    if std::env::var_os("GANTRY_UPDATE_DOCS").is_some() {
        let updated = format!("{}{expected}{}", &text[..start], &text[end..]);
        std::fs::write(&path, updated).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        return;
    }
    assert_eq!(
        &text[start..end],
        expected,
        "docs/policies/README.md is out of date with the registry; rewrite it with \
         `GANTRY_UPDATE_DOCS=1 cargo test -p gantry-policies registry`"
    );
}

#[test]
fn lists_the_stages_of_the_docs_index_in_running_order() {
    let text = std::fs::read_to_string(docs_index_path()).expect("the docs index exists");
    let section = text.split("\n## Stage order\n").nth(1).expect("a `## Stage order` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|line| line.split_once(". `"))
        .filter(|(number, _)| number.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|(_, rest)| rest.split('`').next())
        .collect();
    let stages: Vec<&str> = gantry_policy_api::Stage::ALL.iter().map(|stage| stage.name()).collect();
    assert_eq!(listed, stages);
}

#[test]
fn loads_and_builds_every_yaml_example_in_the_docs_index() {
    let text = std::fs::read_to_string(docs_index_path()).expect("the docs index exists");
    let blocks = yaml_blocks(&text);
    assert!(!blocks.is_empty(), "the docs index has no ```yaml example");
    for block in blocks {
        let spec = gantry_config::load_str(&block).unwrap_or_else(|errors| panic!("{errors}\n{block}"));
        let semantic = gantry_config::validate::validate_spec(&spec);
        assert!(semantic.is_empty(), "{semantic}\n{block}");
        let mut credential_errors = ConfigErrors::default();
        let consumers = ConsumerDirectory::build(&spec, &find, &mut credential_errors);
        assert!(credential_errors.is_empty(), "{credential_errors}\n{block}");
        let context = BuildContext::new(&spec, &consumers);
        for (path, entry) in policy_entries(&spec) {
            let registered = find(&entry.name).unwrap_or_else(|| panic!("unknown policy at {path}\n{block}"));
            if let Err(errors) = registered.build(&entry.config, &path, &context) {
                panic!("{errors}\n{block}");
            }
        }
    }
}

#[test]
fn takes_the_first_sentence_of_the_docs_as_the_purpose() {
    assert_eq!(
        purpose("# p\n\nDoes a thing, e.g. this. Then more.\nAnd more.\n\n## Next\n"),
        "Does a thing, e.g. this."
    );
    assert_eq!(purpose("# p\n\nOne line\nwrapped | piped.\n"), "One line wrapped \\| piped.");
}

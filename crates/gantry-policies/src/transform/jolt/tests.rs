use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
use gantry_policy_api::{Flow, RegisteredPolicy, RequestBody};
use serde_json::{json, Value};

use super::*;

/// Runs a chain written as JSON, as in JOLT's documentation, over `input`.
fn run(chain: Value, input: Value) -> Value {
    let operations: Vec<Operation> = serde_json::from_value(chain).expect("a chain");
    let mut errors = ConfigErrors::default();
    let chain = Chain::compile(&operations, &FieldPath::root(), &mut errors);
    assert!(errors.is_empty(), "{errors}");
    let mut document = input;
    chain.apply(&mut document);
    document
}

fn shift(spec: Value, input: Value) -> Value {
    run(json!([{"operation": "shift", "spec": spec}]), input)
}

#[test]
fn shift_moves_literal_keys_and_wildcard_matches_with_their_keys() {
    // Shiftr's documented "rating" example.
    let input = json!({"rating": {
        "primary": {"value": 3, "max": 5},
        "quality": {"value": 3, "max": 7},
        "sharpness": {"value": 7, "max": 10}
    }});
    let spec = json!({"rating": {
        "primary": {"value": "Rating", "max": "RatingRange"},
        "*": {
            "value": "SecondaryRatings.&1.Value",
            "max": "SecondaryRatings.&1.Range",
            "$": "SecondaryRatings.&1.Id"
        }
    }});
    assert_eq!(
        shift(spec, input),
        json!({
            "Rating": 3,
            "RatingRange": 5,
            "SecondaryRatings": {
                "quality": {"Value": 3, "Range": 7, "Id": "quality"},
                "sharpness": {"Value": 7, "Range": 10, "Id": "sharpness"}
            }
        })
    );
}

#[test]
fn shift_references_keys_up_the_tree_and_captures_of_stars() {
    let spec = json!({"foo": {"bar": {"baz": "new_location.&0.&1.&2"}}});
    assert_eq!(
        shift(spec, json!({"foo": {"bar": {"baz": "value"}}})),
        json!({"new_location": {"baz": {"bar": {"foo": "value"}}}})
    );
    let spec =
        json!({"rating-*": {"value": "ratings.&(1,1)", "#fixed": "kinds.&(1,1)"}, "tag-*-*": "tags.&(0,2).&(0,1)"});
    let input = json!({"rating-primary": {"value": 4}, "tag-a-b": 1, "other": 2});
    assert_eq!(
        shift(spec, input),
        json!({"ratings": {"primary": 4}, "kinds": {"primary": "fixed"}, "tags": {"b": {"a": 1}}})
    );
}

#[test]
fn shift_writes_arrays_by_index_append_and_accumulation() {
    let input = json!({"photos": [{"id": "a", "url": "u1"}, {"id": "b", "url": "u2"}], "x": 1, "y": 2});
    let spec = json!({
        "photos": {"*": {"id": "images[&1].ref", "url": "urls[]"}},
        "x": "both",
        "y": "both",
        "@": "copy.all[0]"
    });
    let output = shift(spec, input.clone());
    assert_eq!(output["images"], json!([{"ref": "a"}, {"ref": "b"}]));
    assert_eq!(output["urls"], json!(["u1", "u2"]));
    assert_eq!(output["both"], json!([1, 2]), "two values at one place make an array");
    assert_eq!(output["copy"]["all"][0], input, "`@` copies the whole level");
}

#[test]
fn shift_numbers_array_items_by_their_match_count() {
    let input = json!({"photos": [{"id": 1, "url": "a"}, {"id": 2, "url": "b"}], "owner": "ann"});
    let spec = json!({"photos": {"*": {"id": "out[#2].ident", "url": "out[#2].link", "$1": "out[#2].from"}}});
    assert_eq!(
        shift(spec, input),
        json!({"out": [{"ident": 1, "link": "a", "from": "photos"}, {"ident": 2, "link": "b", "from": "photos"}]})
    );
}

#[test]
fn shift_alternatives_and_literal_keys_win_over_stars() {
    let spec = json!({"id|key": "ident", "name": "name", "*": "rest.&"});
    assert_eq!(
        shift(spec, json!({"key": 7, "name": "n", "other": true})),
        json!({"ident": 7, "name": "n", "rest": {"other": true}})
    );
}

#[test]
fn default_fills_missing_and_null_fields_only() {
    // Defaultr's documented example.
    let input = json!({"Rating": 3, "SecondaryRatings": {"quality": {"Range": 7, "Value": 3, "Id": "quality"}}});
    let spec = json!({
        "RatingRange": 5,
        "SecondaryRatings": {
            "quality|value": {"ValueLabel": null, "Label": null, "MaxLabel": "Great", "MinLabel": "Terrible", "Range": 5}
        }
    });
    let output = run(json!([{"operation": "default", "spec": spec}]), input);
    let filled = json!({"ValueLabel": null, "Label": null, "MaxLabel": "Great", "MinLabel": "Terrible"});
    assert_eq!(output["RatingRange"], 5);
    assert_eq!(output["SecondaryRatings"]["quality"]["Range"], 7, "a present field keeps its value");
    for (key, value) in filled.as_object().expect("object") {
        assert_eq!(&output["SecondaryRatings"]["quality"][key], value);
        assert_eq!(&output["SecondaryRatings"]["value"][key], value);
    }
    let output = run(
        json!([{"operation": "default", "spec": {"items[]": {"*": {"qty": 1}}, "*": {"seen": false}, "note": "none"}}]),
        json!({"items": [{"qty": 3}, {}], "note": null, "meta": {}}),
    );
    assert_eq!(output["items"], json!([{"qty": 3}, {"qty": 1}]));
    assert_eq!(output["note"], "none", "a null field is filled");
    assert_eq!(output["meta"], json!({"seen": false}), "`*` reaches existing objects");
}

#[test]
fn remove_deletes_keys_patterns_and_array_items() {
    // Removr's documented example.
    let input = json!({"~emVersion": "2", "id": "123124", "productId": "31231231", "submissionId": "34343",
                       "this": "stays", "configured": {"a": "b", "c": "d"}});
    let spec = json!({"~emVersion": "", "productId": "", "submissionId": "", "configured": {"c": ""}});
    assert_eq!(
        run(json!([{"operation": "remove", "spec": spec}]), input),
        json!({"id": "123124", "this": "stays", "configured": {"a": "b"}})
    );
    let spec = json!({"items": {"*": {"secret*": ""}, "1": ""}, "debug|trace": ""});
    assert_eq!(
        run(
            json!([{"operation": "remove", "spec": spec}]),
            json!({"items": [{"secretA": 1, "k": 1}, {"k": 2}, {"secretB": 3, "k": 3}], "trace": 1})
        ),
        json!({"items": [{"k": 1}, {"k": 3}]})
    );
}

#[test]
fn a_chain_runs_its_steps_in_order() {
    let chain = json!([
        {"operation": "shift", "spec": {"user": {"name": "customer.name", "pw": "customer.pw"}}},
        {"operation": "default", "spec": {"customer": {"tier": "basic"}}},
        {"operation": "remove", "spec": {"customer": {"pw": ""}}},
        {"operation": "sort"}
    ]);
    assert_eq!(
        run(chain, json!({"user": {"name": "Ann", "pw": "x"}})),
        json!({"customer": {"name": "Ann", "tier": "basic"}})
    );
}

#[test]
fn rewrites_request_bodies_through_the_policy() {
    let policy = build_policy(
        RegisteredPolicy::of::<Jolt>(),
        "request:\n  - operation: shift\n    spec: {name: customer.name}\n",
    )
    .expect("valid settings");
    let body = br#"{"name":"Ann","drop":1}"#;
    let mut request = request_parts(
        http::Request::post("/")
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(())
            .expect("request"),
    );
    assert_eq!(policy.request_body_limit(&request), Some(1024 * 1024));
    let mut exchange = exchange_from("10.0.0.1:5000");
    exchange.extensions.insert(RequestBody(bytes::Bytes::from_static(body)));
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));
    let forwarded = exchange.extensions.get::<RequestBody>().expect("body").0.clone();
    assert_eq!(serde_json::from_slice::<Value>(&forwarded).expect("JSON"), json!({"customer": {"name": "Ann"}}));
    assert_eq!(request.headers["content-length"], forwarded.len().to_string());
}

#[test]
fn reports_bad_specs_at_their_paths() {
    let errors = build_policy_error(
        RegisteredPolicy::of::<Jolt>(),
        r#"request:
  - operation: shift
    spec:
      a: {b: "out.&3"}
      "c*": "out.&(0,2)"
      d: "x[abc]"
      e: 5
      h: "x[#0]"
  - operation: default
    spec: {"f[]": 1}
  - operation: remove
    spec: {g: "yes"}
  - operation: shift
    spec: [1]
max_body_bytes: 0
"#,
    )
    .to_string();
    for expected in [
        "request[0].spec.a.b",
        "request[0].spec.c*",
        "request[0].spec.d",
        "request[0].spec.e",
        "request[0].spec.h",
        "request[1].spec.f[]",
        "request[2].spec.g",
        "request[3].spec",
        "max_body_bytes",
    ] {
        assert!(errors.contains(expected), "no error at {expected} in:\n{errors}");
    }
    let unknown = build_policy_error(RegisteredPolicy::of::<Jolt>(), "request: [{operation: cardinality}]\n");
    assert!(unknown.to_string().contains("cardinality"), "{unknown}");
    let empty = build_policy_error(RegisteredPolicy::of::<Jolt>(), "max_body_bytes: 10\n");
    assert!(empty.to_string().contains("give a `request` or `response` chain"), "{empty}");
}

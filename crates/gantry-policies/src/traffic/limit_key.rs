//! What a limit counts by: the `key` setting shared by the limiting policies of the traffic
//! stage (`concurrency_limit`, `rate_limit`, and any other that counts per route, consumer,
//! credential, client address or header). Written as a list of parts, all of which together
//! make one request's key:
//!
//! ```yaml
//! key: [route]                     # the default: one count per route
//! key: [consumer]                  # per consumer, across every route the policy is on
//! key: [credential]                # per API key, token or certificate of a consumer
//! key: [route, ip]                 # per route and client IP address
//! key: [{header: x-tenant}]        # per value of a request header
//! key: [consumer_group]            # in a consumer group's policies: one count for the group
//! ```
//!
//! Runs per request: one allocation, for the key's bytes.

use std::net::IpAddr;

use gantry_config::error::Segment;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{Exchange, RequestParts};
use http::HeaderName;
use schemars::JsonSchema;
use serde::Deserialize;

/// One part of a limit's key, as written in a `key` list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The matched route: each route counts on its own, also under a policy attached to
    /// several routes (in `global_policies`, a service or a policy set).
    Route,
    /// The consumer an identity policy recognised (an `anonymous_consumer` too). A request
    /// without one counts by its client IP address instead.
    Consumer,
    /// The credential the identity policy recognised the consumer by (`alice:key_auth:1`), so
    /// each of a consumer's keys counts on its own. A request without one counts by its client
    /// IP address instead; an `anonymous_consumer` counts as its id.
    Credential,
    /// Only in `consumer_groups[].policies`: the group whose policy this is, so every member
    /// counts together (one count for the whole group). Its members that are also in other
    /// groups count here only while this group's policy is the one that applies to them.
    ConsumerGroup,
    /// The client's IP address: the peer of the connection to the gateway.
    Ip,
    /// The value of this request header (its first line, if sent several times). A request
    /// without it counts by its client IP address instead.
    Header(String),
}

/// The default key: one count per route.
pub fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::Route]
}

/// A checked key, ready to make each request's [`KeyValue`].
#[derive(Clone, Debug)]
pub struct LimitKey {
    parts: Box<[CompiledPart]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CompiledPart {
    Route,
    Consumer,
    Credential,
    /// The group the policy belongs to, fixed when it is built.
    ConsumerGroup(Box<str>),
    Ip,
    Header(HeaderName),
}

// Tags that start each part of a key's bytes. A part that falls back to the client address
// is tagged as an address, so a consumer named `10.0.0.1` never shares a count with the
// client at 10.0.0.1.
const TAG_ROUTE: u8 = b'r';
const TAG_CONSUMER: u8 = b'c';
const TAG_CREDENTIAL: u8 = b'k';
const TAG_CONSUMER_GROUP: u8 = b'g';
const TAG_IP: u8 = b'i';
const TAG_HEADER: u8 = b'h';

impl LimitKey {
    /// Checks `parts`, written at `path` (the `key` field): the list must not be empty or
    /// repeat a part, and header names must be valid. Problems go to `errors`.
    pub fn compile(parts: &[KeyPart], path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        if parts.is_empty() {
            errors.push(
                path.clone(),
                "give at least one part: `route`, `consumer`, `credential`, `consumer_group`, `ip` or `{header: <name>}`",
            );
        }
        let mut compiled: Vec<CompiledPart> = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let next = match part {
                KeyPart::Route => CompiledPart::Route,
                KeyPart::Consumer => CompiledPart::Consumer,
                KeyPart::Credential => CompiledPart::Credential,
                KeyPart::ConsumerGroup => match owning_group(path) {
                    Some(group) => CompiledPart::ConsumerGroup(group.into()),
                    None => {
                        errors.push(
                            path.index(index),
                            "`consumer_group` counts a consumer group's members together, so it is only for the policies of `consumer_groups`",
                        );
                        continue;
                    }
                },
                KeyPart::Ip => CompiledPart::Ip,
                KeyPart::Header(name) => match HeaderName::from_bytes(name.trim().as_bytes()) {
                    Ok(name) => CompiledPart::Header(name),
                    Err(_) => {
                        errors.push(path.index(index).key("header"), format!("`{name}` is not a valid header name"));
                        continue;
                    }
                },
            };
            if compiled.contains(&next) {
                errors.push(path.index(index), "this part is already in the key");
                continue;
            }
            compiled.push(next);
        }
        Self { parts: compiled.into_boxed_slice() }
    }

    /// The key of one request. Two requests get equal values exactly when every part is equal.
    pub fn value(&self, request: &RequestParts, exchange: &Exchange) -> KeyValue {
        let mut bytes = Vec::with_capacity(self.parts.len() * 24);
        for part in &self.parts {
            match part {
                CompiledPart::Route => push_part(&mut bytes, TAG_ROUTE, exchange.route_id.as_bytes()),
                CompiledPart::Consumer => match exchange.consumer() {
                    Some(consumer) => push_part(&mut bytes, TAG_CONSUMER, consumer.id.as_bytes()),
                    None => push_ip(&mut bytes, exchange),
                },
                CompiledPart::Credential => match &exchange.identity {
                    Some(identity) => push_part(&mut bytes, TAG_CREDENTIAL, identity.credential_id.as_bytes()),
                    None => push_ip(&mut bytes, exchange),
                },
                CompiledPart::ConsumerGroup(group) => push_part(&mut bytes, TAG_CONSUMER_GROUP, group.as_bytes()),
                CompiledPart::Ip => push_ip(&mut bytes, exchange),
                CompiledPart::Header(name) => match request.headers.get(name) {
                    Some(value) => push_part(&mut bytes, TAG_HEADER, value.as_bytes()),
                    None => push_ip(&mut bytes, exchange),
                },
            }
        }
        KeyValue(bytes.into_boxed_slice())
    }
}

/// The consumer group whose `policies` hold the key written at `path`
/// (`consumer_groups[gold].policies[0].rate_limit.key`), if any.
fn owning_group(path: &FieldPath) -> Option<&str> {
    match path.segments() {
        [Segment::Key(list), Segment::Index { id: Some(group), .. }, ..] if list == "consumer_groups" => {
            Some(group.as_str())
        }
        _ => None,
    }
}

/// Appends a tagged, length-prefixed part, so that no two different lists of parts give the
/// same bytes.
fn push_part(bytes: &mut Vec<u8>, tag: u8, value: &[u8]) {
    bytes.push(tag);
    // Route ids, consumer ids and header values are far below 4 GiB.
    bytes.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    bytes.extend_from_slice(value);
}

fn push_ip(bytes: &mut Vec<u8>, exchange: &Exchange) {
    // A dual-stack listener shows IPv4 clients as `::ffff:a.b.c.d`; they count as IPv4.
    match exchange.client_addr.ip().to_canonical() {
        IpAddr::V4(ip) => push_part(bytes, TAG_IP, &ip.octets()),
        IpAddr::V6(ip) => push_part(bytes, TAG_IP, &ip.octets()),
    }
}

/// One request's key, as bytes: equal for two requests exactly when every part of the key is.
/// It may hold a header's value, so its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyValue(Box<[u8]>);

impl KeyValue {
    /// The key's bytes (for a store that keeps counts elsewhere).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyValue({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gantry_policy_api::testing::{exchange_from, policy_path, request_parts};
    use gantry_policy_api::{Consumer, Identity};

    use super::*;

    fn parse(yaml_parts: serde_json::Value) -> Result<LimitKey, ConfigErrors> {
        let parts: Vec<KeyPart> = serde_json::from_value(yaml_parts).expect("key parts deserialize");
        let mut errors = ConfigErrors::default();
        let key = LimitKey::compile(&parts, &policy_path("limit").key("key"), &mut errors);
        errors.into_result(key)
    }

    fn request(headers: &[(&str, &str)]) -> RequestParts {
        let mut builder = http::Request::get("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        request_parts(builder.body(()).expect("request"))
    }

    fn as_consumer(mut exchange: Exchange, id: &str) -> Exchange {
        let consumer: Arc<Consumer> = Arc::new(Consumer::named(id));
        exchange.authenticate(Identity::credential(consumer, format!("{id}:key_auth").into(), "key_auth"));
        exchange
    }

    #[test]
    fn reads_parts_written_as_names_and_a_header_as_a_mapping() {
        let parts: Vec<KeyPart> = serde_json::from_value(serde_json::json!([
            "route",
            "consumer",
            "credential",
            "consumer_group",
            "ip",
            {"header": "x-tenant"}
        ]))
        .expect("key parts deserialize");
        assert_eq!(
            parts,
            [
                KeyPart::Route,
                KeyPart::Consumer,
                KeyPart::Credential,
                KeyPart::ConsumerGroup,
                KeyPart::Ip,
                KeyPart::Header("x-tenant".into())
            ]
        );
        assert_eq!(default_key(), [KeyPart::Route]);
    }

    #[test]
    fn gives_one_value_per_route_by_default() {
        let key = parse(serde_json::json!(["route"])).expect("valid key");
        let first = key.value(&request(&[]), &exchange_from("10.0.0.1:1"));
        let other_client = key.value(&request(&[]), &exchange_from("10.0.0.2:1"));
        let mut elsewhere = exchange_from("10.0.0.1:1");
        elsewhere.route_id = "other-route".into();
        assert_eq!(first, other_client);
        assert_ne!(first, key.value(&request(&[]), &elsewhere));
    }

    #[test]
    fn tells_clients_apart_by_ip_and_counts_dual_stack_ipv4_as_ipv4() {
        let key = parse(serde_json::json!(["ip"])).expect("valid key");
        let plain = key.value(&request(&[]), &exchange_from("10.0.0.1:1"));
        assert_eq!(plain, key.value(&request(&[]), &exchange_from("10.0.0.1:2")));
        assert_eq!(plain, key.value(&request(&[]), &exchange_from("[::ffff:10.0.0.1]:1")));
        assert_ne!(plain, key.value(&request(&[]), &exchange_from("10.0.0.2:1")));
    }

    #[test]
    fn counts_by_consumer_and_falls_back_to_the_ip_without_one() {
        let key = parse(serde_json::json!(["consumer"])).expect("valid key");
        let alice_here = key.value(&request(&[]), &as_consumer(exchange_from("10.0.0.1:1"), "alice"));
        let alice_there = key.value(&request(&[]), &as_consumer(exchange_from("10.0.0.2:1"), "alice"));
        let bob = key.value(&request(&[]), &as_consumer(exchange_from("10.0.0.1:1"), "bob"));
        assert_eq!(alice_here, alice_there);
        assert_ne!(alice_here, bob);

        let unknown = key.value(&request(&[]), &exchange_from("10.0.0.1:1"));
        let ip_key = parse(serde_json::json!(["ip"])).expect("valid key");
        assert_eq!(unknown, ip_key.value(&request(&[]), &exchange_from("10.0.0.1:1")));
        // A consumer named like an address does not share the address's count.
        assert_ne!(unknown, key.value(&request(&[]), &as_consumer(exchange_from("10.0.0.9:1"), "10.0.0.1")));
    }

    fn with_credential(mut exchange: Exchange, consumer: &str, credential: &str) -> Exchange {
        let consumer: Arc<Consumer> = Arc::new(Consumer::named(consumer));
        exchange.authenticate(Identity::credential(consumer, credential.into(), "key_auth"));
        exchange
    }

    #[test]
    fn counts_each_credential_of_a_consumer_apart_and_falls_back_to_the_ip_without_one() {
        let key = parse(serde_json::json!(["credential"])).expect("valid key");
        let first_key =
            key.value(&request(&[]), &with_credential(exchange_from("10.0.0.1:1"), "alice", "alice:key_auth"));
        let first_key_elsewhere =
            key.value(&request(&[]), &with_credential(exchange_from("10.0.0.2:1"), "alice", "alice:key_auth"));
        let second_key =
            key.value(&request(&[]), &with_credential(exchange_from("10.0.0.1:1"), "alice", "alice:key_auth:1"));
        assert_eq!(first_key, first_key_elsewhere);
        assert_ne!(first_key, second_key);

        let unknown = key.value(&request(&[]), &exchange_from("10.0.0.1:1"));
        let ip_key = parse(serde_json::json!(["ip"])).expect("valid key");
        assert_eq!(unknown, ip_key.value(&request(&[]), &exchange_from("10.0.0.1:1")));
        // Tagged apart: a credential never shares a count with a consumer or an address.
        let consumer_key = parse(serde_json::json!(["consumer"])).expect("valid key");
        let as_id = with_credential(exchange_from("10.0.0.1:1"), "alice", "alice");
        assert_ne!(key.value(&request(&[]), &as_id), consumer_key.value(&request(&[]), &as_id));
        let named_like_an_address = with_credential(exchange_from("10.0.0.9:1"), "x", "10.0.0.1");
        assert_ne!(unknown, key.value(&request(&[]), &named_like_an_address));

        let guest = Arc::new(Consumer::named("guest"));
        let mut anonymous = exchange_from("10.0.0.1:1");
        anonymous.authenticate(Identity::anonymous(guest.clone(), "key_auth"));
        let mut anonymous_elsewhere = exchange_from("10.0.0.2:1");
        anonymous_elsewhere.authenticate(Identity::anonymous(guest, "key_auth"));
        assert_eq!(key.value(&request(&[]), &anonymous), key.value(&request(&[]), &anonymous_elsewhere));
    }

    #[test]
    fn counts_a_consumer_groups_members_together_and_apart_from_other_groups() {
        let at = |group: &str| {
            FieldPath::root().key("consumer_groups").item(0, group).key("policies").index(0).key("limit").key("key")
        };
        let compile = |group: &str, parts: serde_json::Value| {
            let parts: Vec<KeyPart> = serde_json::from_value(parts).expect("key parts deserialize");
            let mut errors = ConfigErrors::default();
            let key = LimitKey::compile(&parts, &at(group), &mut errors);
            errors.into_result(key).expect("valid key")
        };
        let gold = compile("gold", serde_json::json!(["consumer_group"]));
        let alice = gold.value(&request(&[]), &as_consumer(exchange_from("10.0.0.1:1"), "alice"));
        let bob = gold.value(&request(&[]), &as_consumer(exchange_from("10.0.0.2:1"), "bob"));
        assert_eq!(alice, bob, "one count for the group");
        let silver = compile("silver", serde_json::json!(["consumer_group"]));
        assert_ne!(alice, silver.value(&request(&[]), &as_consumer(exchange_from("10.0.0.1:1"), "alice")));

        let per_route = compile("gold", serde_json::json!(["consumer_group", "route"]));
        let mut elsewhere = as_consumer(exchange_from("10.0.0.1:1"), "alice");
        elsewhere.route_id = "other-route".into();
        assert_ne!(
            per_route.value(&request(&[]), &as_consumer(exchange_from("10.0.0.1:1"), "alice")),
            per_route.value(&request(&[]), &elsewhere)
        );
    }

    #[test]
    fn refuses_consumer_group_outside_a_consumer_groups_policies() {
        let errors = parse(serde_json::json!(["route", "consumer_group"])).expect_err("not in a group");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].limit.key[1]");
        assert!(errors.0[0].message.contains("only for the policies of `consumer_groups`"), "{errors}");
        let in_consumer = FieldPath::root().key("consumers").item(0, "alice").key("policies").index(0);
        let mut errors = ConfigErrors::default();
        LimitKey::compile(&[KeyPart::ConsumerGroup], &in_consumer.key("key"), &mut errors);
        assert_eq!(errors.0.len(), 1, "{errors}");
    }

    #[test]
    fn counts_by_header_value_and_falls_back_to_the_ip_without_it() {
        let key = parse(serde_json::json!([{"header": "X-Tenant"}])).expect("valid key");
        let exchange = exchange_from("10.0.0.1:1");
        let acme = key.value(&request(&[("x-tenant", "acme")]), &exchange);
        assert_eq!(acme, key.value(&request(&[("x-tenant", "acme")]), &exchange_from("10.0.0.2:1")));
        assert_ne!(acme, key.value(&request(&[("x-tenant", "globex")]), &exchange));
        let without = key.value(&request(&[]), &exchange);
        let ip_key = parse(serde_json::json!(["ip"])).expect("valid key");
        assert_eq!(without, ip_key.value(&request(&[]), &exchange));
    }

    #[test]
    fn combines_parts_without_ambiguity() {
        let key = parse(serde_json::json!(["route", {"header": "a"}, {"header": "b"}])).expect("valid key");
        let exchange = exchange_from("10.0.0.1:1");
        let split_one_way = key.value(&request(&[("a", "xy"), ("b", "z")]), &exchange);
        let split_other_way = key.value(&request(&[("a", "x"), ("b", "yz")]), &exchange);
        assert_ne!(split_one_way, split_other_way);
    }

    #[test]
    fn shows_only_the_length_of_a_value_when_debugged() {
        let key = parse(serde_json::json!([{"header": "authorization"}])).expect("valid key");
        let value = key.value(&request(&[("authorization", "Bearer secret-token")]), &exchange_from("10.0.0.1:1"));
        let shown = format!("{value:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("bytes"), "{shown}");
    }

    #[test]
    fn rejects_an_empty_key_a_repeated_part_and_a_bad_header_name_at_their_paths() {
        let empty = parse(serde_json::json!([])).expect_err("an empty key is refused");
        assert_eq!(empty.0[0].path.to_string(), "global_policies[0].limit.key");

        let errors = parse(serde_json::json!(["ip", "route", "ip", {"header": "bad header"}])).expect_err("refused");
        let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
        assert_eq!(paths, ["global_policies[0].limit.key[2]", "global_policies[0].limit.key[3].header"]);
        assert!(errors.0[0].message.contains("already in the key"), "{errors}");
        assert!(errors.0[1].message.contains("not a valid header name"), "{errors}");
    }
}

#![doc = include_str!("ip_restriction.md")]

use std::net::IpAddr;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::StatusCode;
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `ip_restriction`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client addresses allowed, as CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single IPs. When
    /// not empty, every address not in it is denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Client addresses denied, as CIDRs or single IPs. Deny wins over `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Status of the denial, from 400 to 599.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Text of the denial's problem document (its `detail`).
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_status() -> u16 {
    403
}

fn default_message() -> String {
    "Your IP address is not allowed".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.allow.is_empty() && self.deny.is_empty() {
            errors.push(path.clone(), "give `allow`, `deny` or both");
        }
        if !(400..=599).contains(&self.status) {
            errors.push(path.key("status"), format!("{} is not an error status: use 400 to 599", self.status));
        }
    }
}

/// Factory of the `ip_restriction` policy.
#[derive(Debug)]
pub struct IpRestriction;

impl PolicyFactory for IpRestriction {
    const NAME: &'static str = "ip_restriction";
    const STAGE: Stage = Stage::Access;
    const DOCS: &'static str = include_str!("ip_restriction.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let allow = CidrSet::parse(&config.allow, &path.key("allow"), &mut errors);
        let deny = CidrSet::parse(&config.deny, &path.key("deny"), &mut errors);
        // `validate` has reported a status outside 400 to 599; this default is never served then.
        let status = StatusCode::from_u16(config.status).unwrap_or(StatusCode::FORBIDDEN);
        errors.into_result(())?;
        Ok(Arc::new(CompiledIpRestriction { allow, deny, status, message: config.message }))
    }
}

/// Runs per request: two binary searches over pre-merged ranges, no allocation unless denying.
struct CompiledIpRestriction {
    allow: CidrSet,
    deny: CidrSet,
    status: StatusCode,
    message: String,
}

impl CompiledIpRestriction {
    fn is_denied(&self, ip: IpAddr) -> bool {
        self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip))
    }
}

impl Policy for CompiledIpRestriction {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let ip = exchange.client_addr.ip();
        if !self.is_denied(ip) {
            return Hook::Done(Flow::Continue);
        }
        tracing::debug!(client_ip = %ip, "client address denied by ip_restriction");
        problem_response(self.status, "ip-denied", "Client IP address denied", Some(&self.message)).into()
    }
}

/// A set of addresses as sorted, disjoint, inclusive ranges per family, so a lookup is one
/// binary search whatever the number of CIDRs.
#[derive(Debug, Default)]
struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// Parses `entries` written at `path`, adding a problem per bad entry to `errors`.
    fn parse(entries: &[String], path: &FieldPath, errors: &mut ConfigErrors) -> Self {
        let mut set = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            match parse_network(entry) {
                Ok(IpNet::V4(net)) => set.v4.push((net.network().into(), net.broadcast().into())),
                Ok(IpNet::V6(net)) => set.v6.push((net.network().into(), net.broadcast().into())),
                Err(reason) => errors.push(path.index(index), reason),
            }
        }
        merge(&mut set.v4);
        merge(&mut set.v6);
        set
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; they must match the
        // IPv4 entries.
        match ip.to_canonical() {
            IpAddr::V4(ip) => in_ranges(&self.v4, u32::from(ip)),
            IpAddr::V6(ip) => in_ranges(&self.v6, u128::from(ip)),
        }
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
fn parse_network(entry: &str) -> Result<IpNet, String> {
    let text = entry.trim();
    let net = if text.contains('/') {
        let net: IpNet =
            text.parse().map_err(|_| format!("`{entry}` is not a CIDR such as `10.0.0.0/8` or `2001:db8::/32`"))?;
        // A set bit after the prefix is most often a typo for another network.
        if net.trunc() != net {
            return Err(format!("`{entry}` has bits set after the prefix length: write `{}`", net.trunc()));
        }
        net
    } else {
        let ip: IpAddr =
            text.parse().map_err(|_| format!("`{entry}` is not an IP address or a CIDR such as `10.0.0.0/8`"))?;
        IpNet::from(ip)
    };
    if let IpNet::V6(v6) = net {
        if v6.network().to_ipv4_mapped().is_some() {
            return Err(format!("`{entry}` is an IPv4-mapped IPv6 address: write it as IPv4"));
        }
    }
    Ok(net)
}

/// Sorts ranges and merges overlapping ones, so at most one range holds any value.
fn merge<T: Ord + Copy>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// Whether `value` is in one of `ranges` (sorted and disjoint).
fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], value: T) -> bool {
    let after = ranges.partition_point(|(start, _)| *start <= value);
    after.checked_sub(1).and_then(|index| ranges.get(index)).is_some_and(|(_, end)| value <= *end)
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<IpRestriction>()
    }

    /// Runs the policy for a client and gives the denial's status, or `None` when it continued.
    fn decide(settings: &str, client: &str) -> Option<(StatusCode, serde_json::Value)> {
        let policy = build_policy(entry(), settings).expect("valid settings");
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        match run_request(&*policy, &mut request, &mut exchange_from(client)) {
            Flow::Continue => None,
            Flow::Respond(response) => {
                assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
                let body = serde_json::from_slice(response.body()).expect("problem json");
                Some((response.status(), body))
            }
        }
    }

    #[test]
    fn denies_an_address_in_a_denied_cidr_with_403() {
        let (status, body) = decide("deny: [10.0.0.0/8]", "10.1.2.3:5000").expect("denied");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["type"], "https://gantry.dev/problems/ip-denied");
        assert_eq!(body["status"], 403);
        assert_eq!(body["detail"], "Your IP address is not allowed");
    }

    #[test]
    fn lets_an_address_outside_the_denied_cidrs_through() {
        assert!(decide("deny: [10.0.0.0/8, 192.168.1.7]", "11.0.0.1:5000").is_none());
        assert!(decide("deny: [10.0.0.0/8, 192.168.1.7]", "192.168.1.8:5000").is_none());
    }

    #[test]
    fn denies_every_address_not_allowed_when_allow_is_set() {
        let settings = "allow: [10.0.0.0/8, 2001:db8::/32]";
        assert!(decide(settings, "10.200.0.1:5000").is_none());
        assert!(decide(settings, "[2001:db8::1]:5000").is_none());
        assert!(decide(settings, "192.168.0.1:5000").is_some());
        assert!(decide(settings, "[2001:db9::1]:5000").is_some());
    }

    #[test]
    fn lets_deny_win_over_allow() {
        let settings = "allow: [10.0.0.0/8]\ndeny: [10.0.0.5]";
        assert!(decide(settings, "10.0.0.4:5000").is_none());
        assert!(decide(settings, "10.0.0.5:5000").is_some());
    }

    #[test]
    fn matches_an_ipv4_client_seen_through_a_dual_stack_listener() {
        assert!(decide("deny: [10.0.0.0/8]", "[::ffff:10.0.0.1]:5000").is_some());
        assert!(decide("allow: [10.0.0.0/8]", "[::ffff:10.0.0.1]:5000").is_none());
    }

    #[test]
    fn matches_the_edges_of_overlapping_and_adjacent_cidrs() {
        let settings = "deny: [10.0.0.0/25, 10.0.0.128/25, 10.0.0.64/26, 255.255.255.255, ::/0]";
        assert!(decide(settings, "10.0.0.0:1").is_some());
        assert!(decide(settings, "10.0.0.255:1").is_some());
        assert!(decide(settings, "10.0.1.0:1").is_none());
        assert!(decide(settings, "9.255.255.255:1").is_none());
        assert!(decide(settings, "255.255.255.255:1").is_some());
        assert!(decide(settings, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1").is_some());
    }

    #[test]
    fn answers_with_the_configured_status_and_message() {
        let (status, body) =
            decide("deny: [127.0.0.1]\nstatus: 404\nmessage: Not here", "127.0.0.1:1").expect("denied");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["status"], 404);
        assert_eq!(body["detail"], "Not here");
    }

    #[test]
    fn rejects_a_bad_cidr_at_its_index() {
        let errors = build_policy_error(entry(), "allow: [10.0.0.0/8, 10.0.0.300/24]");
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].ip_restriction.allow[1]");
        assert!(errors.0[0].message.contains("is not a CIDR"), "{errors}");
    }

    #[test]
    fn rejects_host_bits_after_the_prefix_with_the_intended_network() {
        let errors = build_policy_error(entry(), "deny: [10.0.0.1/8]");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].ip_restriction.deny[0]");
        assert!(errors.0[0].message.contains("write `10.0.0.0/8`"), "{errors}");
    }

    #[test]
    fn rejects_every_problem_at_once() {
        let errors = build_policy_error(entry(), "allow: [nope]\ndeny: [1.2.3.4, ::ffff:1.2.3.4]\nstatus: 302");
        let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "global_policies[0].ip_restriction.status",
                "global_policies[0].ip_restriction.allow[0]",
                "global_policies[0].ip_restriction.deny[1]",
            ]
        );
    }

    #[test]
    fn rejects_settings_with_neither_allow_nor_deny() {
        let errors = build_policy_error(entry(), "status: 403");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].ip_restriction");
    }

    #[test]
    fn implements_only_the_request_hook() {
        let policy = build_policy(entry(), "deny: [10.0.0.0/8]").expect("valid settings");
        assert_eq!(policy.hooks(), Hooks::REQUEST);
    }
}

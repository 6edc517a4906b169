#![doc = include_str!("ip_restriction.md")]

use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Instant;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, LogRecord, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage,
    Validate,
};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use ipnet::IpNet;
use moka::ops::compute::Op;
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
    /// Bans a client address for a while after repeated failures (401, 403, ...), whoever
    /// answered them: an identity policy, another policy or the upstream.
    #[serde(default)]
    pub ban: Option<BanConfig>,
}

/// Settings of `ip_restriction.ban`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BanConfig {
    /// Failures of one client address that start its ban, more than 0.
    #[serde(default = "default_after_failures")]
    pub after_failures: u32,
    /// How long failures are counted together, from an address's first failure, more than 0.
    #[serde(default = "default_within")]
    pub within: Duration,
    /// How long a ban lasts, more than 0.
    #[serde(rename = "for", default = "default_ban_for")]
    pub ban_for: Duration,
    /// Response statuses that count as failures, each from 400 to 599.
    #[serde(default = "default_ban_statuses")]
    pub statuses: Vec<u16>,
    /// Most client addresses tracked at once (counting failures or banned), more than 0;
    /// past it, the least recently seen are forgotten, bans included.
    #[serde(default = "default_max_tracked_ips")]
    pub max_tracked_ips: u64,
}

fn default_after_failures() -> u32 {
    5
}

fn default_within() -> Duration {
    Duration::from_secs(60)
}

fn default_ban_for() -> Duration {
    Duration::from_secs(600)
}

fn default_ban_statuses() -> Vec<u16> {
    vec![401, 403]
}

fn default_max_tracked_ips() -> u64 {
    100_000
}

fn default_status() -> u16 {
    403
}

fn default_message() -> String {
    "Your IP address is not allowed".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.allow.is_empty() && self.deny.is_empty() && self.ban.is_none() {
            errors.push(path.clone(), "give `allow`, `deny`, `ban` or several of them");
        }
        if !is_error_status(self.status) {
            errors.push(path.key("status"), format!("{} is not an error status: use 400 to 599", self.status));
        }
        if let Some(ban) = &self.ban {
            ban.validate(&path.key("ban"), errors);
        }
    }
}

impl Validate for BanConfig {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.after_failures == 0 {
            errors.push(path.key("after_failures"), "must be more than 0");
        }
        for (field, duration) in [("within", self.within), ("for", self.ban_for)] {
            if duration.get().is_zero() {
                errors.push(path.key(field), "must be more than 0");
            }
        }
        if self.statuses.is_empty() {
            errors.push(path.key("statuses"), "give at least one status, such as 401");
        }
        for (index, status) in self.statuses.iter().enumerate() {
            if !is_error_status(*status) {
                errors.push(
                    path.key("statuses").index(index),
                    format!("{status} is not an error status: use 400 to 599"),
                );
            }
        }
        if self.max_tracked_ips == 0 {
            errors.push(path.key("max_tracked_ips"), "must be more than 0");
        }
    }
}

fn is_error_status(status: u16) -> bool {
    (400..=599).contains(&status)
}

/// Factory of the `ip_restriction` policy.
#[derive(Debug)]
pub struct IpRestriction;

impl PolicyFactory for IpRestriction {
    const NAME: &'static str = "ip_restriction";
    // Before identity: a refused or banned client must not reach an identity policy, whose
    // 401 (wrong credential) against this policy's 403 (right credential) would tell a banned
    // client which of its guesses is right, and whose checks (password hashes, remote calls)
    // it would still make the gateway pay for.
    const STAGE: Stage = Stage::Ingress;
    const DOCS: &'static str = include_str!("ip_restriction.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let allow = CidrSet::parse(&config.allow, &path.key("allow"), &mut errors);
        let deny = CidrSet::parse(&config.deny, &path.key("deny"), &mut errors);
        // `validate` has reported a status outside 400 to 599; this default is never served then.
        let status = StatusCode::from_u16(config.status).unwrap_or(StatusCode::FORBIDDEN);
        errors.into_result(())?;
        let bans = config.ban.map(|ban| shared_bans(path.to_string(), ban));
        Ok(Arc::new(CompiledIpRestriction { allow, deny, status, message: config.message, bans }))
    }
}

/// Runs per request: two binary searches over pre-merged ranges, no allocation unless denying;
/// with `ban`, one lookup in the table of tracked addresses.
struct CompiledIpRestriction {
    allow: CidrSet,
    deny: CidrSet,
    status: StatusCode,
    message: String,
    bans: Option<Arc<Bans>>,
}

impl CompiledIpRestriction {
    fn is_denied(&self, ip: IpAddr) -> bool {
        self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip))
    }
}

impl Policy for CompiledIpRestriction {
    fn hooks(&self) -> Hooks {
        // Failures are counted from the log hook: it sees every finished exchange's status,
        // also answers made by policies this one's response hook would not see.
        Hooks { request: true, response: false, log: self.bans.is_some() }
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let ip = exchange.client_addr.ip();
        if self.is_denied(ip) {
            tracing::debug!(client_ip = %ip, "client address denied by ip_restriction");
            return problem_response(self.status, "ip-denied", "Client IP address denied", Some(&self.message)).into();
        }
        if let Some(remaining) = self.bans.as_ref().and_then(|bans| bans.remaining_ban(ip, Instant::now())) {
            tracing::debug!(client_ip = %ip, "client address banned by ip_restriction");
            return banned(remaining).into();
        }
        Hook::Done(Flow::Continue)
    }

    fn on_log(&self, record: &LogRecord<'_>) {
        let Some(bans) = &self.bans else { return };
        let ip = record.client_addr.ip();
        // A denied address is refused anyway: tracking it would only take a place in the table.
        if bans.counts(record.status) && !self.is_denied(ip) {
            bans.count_failure(ip, Instant::now());
        }
    }
}

/// The answer to a banned client: 403, and when to come back.
fn banned(remaining: std::time::Duration) -> PolicyResponse {
    let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    let detail = format!("too many failed requests came from this address; try again in {seconds} s");
    let mut response = problem_response(StatusCode::FORBIDDEN, "ip-banned", "Client IP address banned", Some(&detail));
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Failures and bans by client address, for one policy instance: a bounded table (least
/// recently seen addresses forgotten first) whose entries expire at the end of their failure
/// window or of their ban.
struct Bans {
    after_failures: u32,
    within: std::time::Duration,
    ban_for: std::time::Duration,
    /// Whether each status from 400 to 599 (at `status - 400`) counts as a failure.
    counted: [bool; 200],
    table: moka::sync::Cache<IpAddr, Tracked>,
}

/// What is known of one client address.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    /// Failures in the current window.
    failures: u32,
    /// End of the current window, opened by its first failure.
    window_ends: Instant,
    /// End of the address's ban, if banned.
    banned_until: Option<Instant>,
}

impl Tracked {
    /// When the entry is of no more use.
    fn expires_at(&self) -> Instant {
        self.banned_until.unwrap_or(self.window_ends)
    }
}

/// Expires each entry when its window or its ban ends.
struct UntilUseless;

impl moka::Expiry<IpAddr, Tracked> for UntilUseless {
    fn expire_after_create(&self, _: &IpAddr, value: &Tracked, created_at: Instant) -> Option<std::time::Duration> {
        Some(value.expires_at().saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &IpAddr,
        value: &Tracked,
        updated_at: Instant,
        _: Option<std::time::Duration>,
    ) -> Option<std::time::Duration> {
        Some(value.expires_at().saturating_duration_since(updated_at))
    }
}

impl Bans {
    fn new(config: &BanConfig) -> Self {
        let mut counted = [false; 200];
        for status in &config.statuses {
            if let Some(slot) = status.checked_sub(400).and_then(|at| counted.get_mut(usize::from(at))) {
                *slot = true;
            }
        }
        let table = moka::sync::Cache::builder()
            .max_capacity(config.max_tracked_ips)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(UntilUseless)
            .build();
        Self {
            after_failures: config.after_failures,
            within: config.within.get(),
            ban_for: config.ban_for.get(),
            counted,
            table,
        }
    }

    fn counts(&self, status: StatusCode) -> bool {
        status.as_u16().checked_sub(400).and_then(|at| self.counted.get(usize::from(at))).copied().unwrap_or(false)
    }

    /// How long `ip`'s ban still lasts, if it is banned.
    fn remaining_ban(&self, ip: IpAddr, now: Instant) -> Option<std::time::Duration> {
        let until = self.table.get(&ip.to_canonical())?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure of `ip`, and bans it when it reaches `after_failures` in its window.
    /// The failures of a banned address are not counted: its ban is not extended.
    fn count_failure(&self, ip: IpAddr, now: Instant) {
        let ip = ip.to_canonical();
        let mut banned_now = false;
        self.table.entry(ip).and_compute_with(|current| {
            let current = current.map(|entry| entry.into_value());
            if current.and_then(|tracked| tracked.banned_until).is_some_and(|until| until > now) {
                return Op::Nop;
            }
            let mut tracked = match current {
                Some(tracked) if tracked.banned_until.is_none() && now < tracked.window_ends => tracked,
                _ => Tracked { failures: 0, window_ends: now + self.within, banned_until: None },
            };
            tracked.failures += 1;
            if tracked.failures >= self.after_failures {
                tracked.banned_until = Some(now + self.ban_for);
                banned_now = true;
            }
            Op::Put(tracked)
        });
        if banned_now {
            // Once per ban, not per request: bans are rare and worth seeing in the logs.
            tracing::info!(
                client_ip = %ip,
                failures = self.after_failures,
                ban_seconds = self.ban_for.as_secs(),
                "client address banned by ip_restriction after repeated failures"
            );
        }
    }
}

/// What makes two builds the same table of bans: where the policy is configured and its
/// `ban` settings.
type SharedBans = (String, BanConfig, Weak<Bans>);

/// Tables alive in this process, so that a reload (an admin API change anywhere) does not
/// lift every ban and forget every failure.
static SHARED: LazyLock<Mutex<Vec<SharedBans>>> = LazyLock::new(Mutex::default);

fn shared_bans(path: String, config: BanConfig) -> Arc<Bans> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    let alive = shared
        .iter()
        .filter(|(own_path, own_config, _)| *own_path == path && *own_config == config)
        .find_map(|(_, _, bans)| bans.upgrade());
    if let Some(alive) = alive {
        return alive;
    }
    let bans = Arc::new(Bans::new(&config));
    shared.retain(|(_, _, bans)| bans.strong_count() > 0);
    shared.push((path, config, Arc::downgrade(&bans)));
    bans
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
    fn rejects_settings_with_neither_allow_deny_nor_ban() {
        let errors = build_policy_error(entry(), "status: 403");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].ip_restriction");
    }

    #[test]
    fn implements_only_the_request_hook() {
        let policy = build_policy(entry(), "deny: [10.0.0.0/8]").expect("valid settings");
        assert_eq!(policy.hooks(), Hooks::REQUEST);
    }

    #[test]
    fn runs_in_the_ingress_stage_before_any_identity_policy() {
        assert_eq!(entry().stage, Stage::Ingress);
    }

    /// Builds a policy at `routes[<place>].policies[0].ip_restriction`: tables of bans are
    /// shared by configuration path (to survive reloads), and tests run in parallel.
    fn build_at(place: &str, settings: serde_json::Value) -> Arc<dyn Policy> {
        let spec = gantry_config::GatewaySpec::default();
        let consumers = gantry_policy_api::ConsumerDirectory::default();
        let path = FieldPath::root().key("routes").item(0, place).key("policies").index(0).key("ip_restriction");
        entry()
            .build(&settings, &path, &BuildContext::new(&spec, &consumers))
            .unwrap_or_else(|errors| panic!("settings refused: {errors}"))
    }

    /// Tells `policy`'s log hook that a request from `client` was answered with `status`.
    fn finish(policy: &dyn Policy, client: &str, status: u16) {
        let method = http::Method::GET;
        let uri = http::Uri::from_static("/login");
        policy.on_log(&LogRecord {
            request_id: "test-request",
            route_id: Some("test-route"),
            consumer_id: None,
            client_addr: client.parse().expect("test client address is `ip:port`"),
            method: &method,
            uri: &uri,
            status: StatusCode::from_u16(status).expect("a status"),
            upstream_addr: None,
            duration: std::time::Duration::ZERO,
            upstream_duration: None,
        });
    }

    fn request_from(policy: &dyn Policy, client: &str) -> Flow {
        let mut request = request_parts(http::Request::get("/").body(()).expect("request"));
        run_request(policy, &mut request, &mut exchange_from(client))
    }

    fn ban_config(after_failures: u32) -> BanConfig {
        BanConfig {
            after_failures,
            within: Duration::from_secs(60),
            ban_for: Duration::from_secs(600),
            statuses: vec![401, 403],
            max_tracked_ips: 1000,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    #[test]
    fn bans_an_address_after_its_failures_and_answers_403_with_retry_after() {
        let policy = build_at("bans", serde_json::json!({"ban": {"after_failures": 3, "for": "10m"}}));
        assert_eq!(policy.hooks(), Hooks { request: true, response: false, log: true });
        for _ in 0..2 {
            finish(&*policy, "10.0.0.1:1", 401);
        }
        assert!(matches!(request_from(&*policy, "10.0.0.1:1"), Flow::Continue), "two failures of three");
        finish(&*policy, "10.0.0.1:2", 403);

        let Flow::Respond(response) = request_from(&*policy, "10.0.0.1:3") else {
            panic!("the third failure bans the address");
        };
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
        let retry_after: u64 =
            response.headers()[RETRY_AFTER].to_str().expect("text").parse().expect("Retry-After in seconds");
        assert!((599..=600).contains(&retry_after), "{retry_after}");
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
        assert_eq!(body["type"], "https://gantry.dev/problems/ip-banned");
        assert_eq!(body["status"], 403);

        assert!(matches!(request_from(&*policy, "10.0.0.2:1"), Flow::Continue), "other addresses are not banned");
    }

    #[test]
    fn counts_only_the_configured_statuses() {
        let policy = build_at("statuses", serde_json::json!({"ban": {"after_failures": 2, "statuses": [401, 429]}}));
        for status in [200, 302, 403, 404, 500, 503] {
            finish(&*policy, "10.0.0.1:1", status);
        }
        assert!(matches!(request_from(&*policy, "10.0.0.1:1"), Flow::Continue));
        finish(&*policy, "10.0.0.1:1", 429);
        finish(&*policy, "10.0.0.1:1", 401);
        assert!(matches!(request_from(&*policy, "10.0.0.1:1"), Flow::Respond(_)));
    }

    #[test]
    fn counts_an_ipv4_client_seen_through_a_dual_stack_listener_as_ipv4() {
        let policy = build_at("dual-stack", serde_json::json!({"ban": {"after_failures": 2}}));
        finish(&*policy, "10.0.0.1:1", 401);
        finish(&*policy, "[::ffff:10.0.0.1]:1", 401);
        assert!(matches!(request_from(&*policy, "10.0.0.1:1"), Flow::Respond(_)));
        assert!(matches!(request_from(&*policy, "[::ffff:10.0.0.1]:1"), Flow::Respond(_)));
    }

    #[test]
    fn neither_counts_nor_tracks_an_address_the_lists_deny() {
        let policy = build_at("denied", serde_json::json!({"deny": ["10.0.0.0/8"], "ban": {"after_failures": 1}}));
        finish(&*policy, "10.0.0.1:1", 403);
        let Flow::Respond(response) = request_from(&*policy, "10.0.0.1:1") else { panic!("denied") };
        let body: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
        assert_eq!(body["type"], "https://gantry.dev/problems/ip-denied", "denied by the list, not banned");
        assert!(response.headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn starts_a_new_window_once_the_previous_one_has_passed() {
        let bans = Bans::new(&ban_config(3));
        let start = Instant::now();
        bans.count_failure(ip("10.0.0.1"), start);
        bans.count_failure(ip("10.0.0.1"), start + std::time::Duration::from_secs(30));
        // The window opened by the first failure has ended: this one starts a new count.
        let later = start + std::time::Duration::from_secs(61);
        bans.count_failure(ip("10.0.0.1"), later);
        bans.count_failure(ip("10.0.0.1"), later);
        assert_eq!(bans.remaining_ban(ip("10.0.0.1"), later), None);
        bans.count_failure(ip("10.0.0.1"), later);
        assert!(bans.remaining_ban(ip("10.0.0.1"), later).is_some(), "three failures in the new window");
    }

    #[test]
    fn lifts_a_ban_when_it_ends_and_does_not_extend_it_with_failures_while_banned() {
        let bans = Bans::new(&ban_config(1));
        let start = Instant::now();
        bans.count_failure(ip("10.0.0.1"), start);
        assert_eq!(bans.remaining_ban(ip("10.0.0.1"), start), Some(std::time::Duration::from_secs(600)));
        let during = start + std::time::Duration::from_secs(300);
        bans.count_failure(ip("10.0.0.1"), during);
        assert_eq!(bans.remaining_ban(ip("10.0.0.1"), during), Some(std::time::Duration::from_secs(300)));
        assert_eq!(bans.remaining_ban(ip("10.0.0.1"), start + std::time::Duration::from_secs(600)), None);

        // After the ban, failures count from nothing again.
        let after = start + std::time::Duration::from_secs(601);
        bans.count_failure(ip("10.0.0.1"), after);
        assert!(bans.remaining_ban(ip("10.0.0.1"), after).is_some(), "one failure bans again");
    }

    #[test]
    fn tracks_at_most_max_tracked_ips_addresses() {
        let bans = Bans::new(&BanConfig { max_tracked_ips: 100, ..ban_config(5) });
        let now = Instant::now();
        for n in 0..2000u32 {
            bans.count_failure(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)), now);
        }
        bans.table.run_pending_tasks();
        assert!(bans.table.entry_count() <= 100, "{} addresses tracked", bans.table.entry_count());
    }

    #[test]
    fn keeps_bans_across_a_rebuild_with_the_same_ban_settings() {
        let before = build_at("reloaded", serde_json::json!({"ban": {"after_failures": 1}}));
        finish(&*before, "10.0.0.1:1", 401);
        let after_reload =
            build_at("reloaded", serde_json::json!({"deny": ["192.0.2.0/24"], "ban": {"after_failures": 1}}));
        assert!(matches!(request_from(&*after_reload, "10.0.0.1:1"), Flow::Respond(_)), "still banned");
        let changed = build_at("reloaded", serde_json::json!({"ban": {"after_failures": 2}}));
        assert!(matches!(request_from(&*changed, "10.0.0.1:1"), Flow::Continue), "new ban settings start afresh");
    }

    #[test]
    fn accepts_a_ban_alone_with_every_default() {
        let policy = build_policy(entry(), "ban: {}").expect("valid settings");
        assert!(policy.hooks().log);
        let config: Config = serde_json::from_value(serde_json::json!({"ban": {}})).expect("settings");
        assert_eq!(config.ban, Some(BanConfig { max_tracked_ips: 100_000, ..ban_config(5) }));
    }

    #[test]
    fn rejects_bad_ban_settings_at_their_paths() {
        let errors = build_policy_error(
            entry(),
            "ban: {after_failures: 0, within: 0s, for: 0s, statuses: [401, 302], max_tracked_ips: 0}",
        );
        let paths: Vec<String> = errors.iter().map(|error| error.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "global_policies[0].ip_restriction.ban.after_failures",
                "global_policies[0].ip_restriction.ban.within",
                "global_policies[0].ip_restriction.ban.for",
                "global_policies[0].ip_restriction.ban.statuses[1]",
                "global_policies[0].ip_restriction.ban.max_tracked_ips",
            ]
        );
        let empty = build_policy_error(entry(), "ban: {statuses: []}");
        assert_eq!(empty.0[0].path.to_string(), "global_policies[0].ip_restriction.ban.statuses");
        let unknown = build_policy_error(entry(), "ban: {after: 3}");
        assert!(unknown.0[0].path.to_string().starts_with("global_policies[0].ip_restriction.ban"), "{unknown}");
    }
}

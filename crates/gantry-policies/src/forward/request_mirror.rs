#![doc = include_str!("request_mirror.md")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, MirrorRequest, MirrorSlots, Policy, PolicyFactory, RequestParts, Stage,
    Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `request_mirror`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Id of the upstream the copies go to.
    pub upstream: String,
    /// Share of the requests copied, more than 0 and at most 1, spread evenly: 0.25 copies
    /// every fourth request.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Largest request body copied, in bytes; a request with a longer body is not mirrored.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Copies in flight at once, at least 1; a copy past them is dropped, never queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Time limit of one copy's exchange with the mirror upstream, more than 0.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_in_flight() -> u32 {
    100
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The sample ratio's resolution: parts per million.
const RATIO_SCALE: u64 = 1_000_000;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if !(self.sample_ratio > 0.0 && self.sample_ratio <= 1.0) {
            errors.push(
                path.key("sample_ratio"),
                "must be more than 0 and at most 1 (0.1 copies one request in ten; to stop mirroring, remove the policy)",
            );
        } else if (self.sample_ratio * RATIO_SCALE as f64).round() < 1.0 {
            errors.push(path.key("sample_ratio"), "must be at least 0.000001");
        }
        if self.max_in_flight == 0 {
            errors.push(path.key("max_in_flight"), "must be at least 1");
        }
        if self.timeout.get().is_zero() {
            errors.push(path.key("timeout"), "must be more than 0");
        }
    }
}

/// Factory of the `request_mirror` policy.
#[derive(Debug)]
pub struct RequestMirror;

impl PolicyFactory for RequestMirror {
    const NAME: &'static str = "request_mirror";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("request_mirror.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        if !context.spec.upstreams.iter().any(|upstream| upstream.id == config.upstream) {
            let known: Vec<&str> = context.spec.upstreams.iter().map(|upstream| upstream.id.as_str()).collect();
            return Err(ConfigErrors::one(
                path.key("upstream"),
                format!("unknown upstream `{}`; configured upstreams: {}", config.upstream, known.join(", ")),
            ));
        }
        Ok(Arc::new(CompiledRequestMirror {
            upstream: Arc::from(config.upstream.as_str()),
            per_million: ((config.sample_ratio * RATIO_SCALE as f64).round() as u64).clamp(1, RATIO_SCALE),
            seen: AtomicU64::new(0),
            max_body_bytes: config.max_body_bytes,
            timeout: config.timeout.get(),
            slots: Arc::new(MirrorSlots::new(config.max_in_flight as usize)),
        }))
    }
}

/// Runs per request: one atomic increment decides; a mirrored request costs two reference
/// counts here, and the data plane does the rest.
struct CompiledRequestMirror {
    upstream: Arc<str>,
    /// The sample ratio in parts per million.
    per_million: u64,
    /// Requests seen so far.
    seen: AtomicU64,
    max_body_bytes: u64,
    timeout: std::time::Duration,
    slots: Arc<MirrorSlots>,
}

impl CompiledRequestMirror {
    /// Whether request number `seen` (from 0) is copied: the n-th request is, when the count
    /// of copies a ratio `r` allows rises from ⌊n·r⌋ to ⌊(n+1)·r⌋, so every stretch of
    /// requests has its share of copies, exactly over each million.
    fn is_sampled(&self, seen: u64) -> bool {
        let seen = seen % RATIO_SCALE;
        (seen + 1) * self.per_million / RATIO_SCALE > seen * self.per_million / RATIO_SCALE
    }
}

impl Policy for CompiledRequestMirror {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if self.is_sampled(self.seen.fetch_add(1, Ordering::Relaxed)) {
            exchange.mirror = Some(MirrorRequest {
                upstream: self.upstream.clone(),
                max_body_bytes: self.max_body_bytes,
                timeout: self.timeout,
                slots: self.slots.clone(),
            });
        }
        Hook::Done(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_identity_policy, build_identity_policy_error, exchange_from, run_request};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<RequestMirror>()
    }

    const CONFIG: &str =
        "upstreams:\n  - id: live\n    endpoints: [127.0.0.1:1]\n  - id: shadow\n    endpoints: [127.0.0.1:2]\n";

    fn build(settings: &str) -> Arc<dyn Policy> {
        build_identity_policy(entry(), settings, CONFIG).unwrap_or_else(|errors| panic!("settings refused: {errors}"))
    }

    /// Runs `count` requests through `policy`; gives the mirror requests it asked for, in order
    /// (`None` for a request it did not copy).
    fn run(policy: &dyn Policy, count: usize) -> Vec<Option<MirrorRequest>> {
        (0..count)
            .map(|_| {
                let mut request = http::Request::get("/").body(()).expect("request").into_parts().0;
                let mut exchange = exchange_from("10.0.0.1:1000");
                assert!(matches!(run_request(policy, &mut request, &mut exchange), Flow::Continue));
                exchange.mirror
            })
            .collect()
    }

    #[test]
    fn copies_every_request_to_the_upstream_by_default() {
        let copies = run(&*build("upstream: shadow"), 5);
        assert!(copies.iter().all(Option::is_some));
        let copy = copies[0].as_ref().expect("a copy");
        assert_eq!(&*copy.upstream, "shadow");
        assert_eq!(copy.max_body_bytes, 1024 * 1024);
        assert_eq!(copy.timeout, std::time::Duration::from_secs(10));
        assert!(Arc::ptr_eq(&copy.slots, &copies[4].as_ref().expect("a copy").slots), "one bound per policy");
    }

    #[test]
    fn copies_exactly_the_sampled_share_spread_evenly() {
        let copied: Vec<bool> =
            run(&*build("upstream: shadow\nsample_ratio: 0.25"), 12).iter().map(Option::is_some).collect();
        assert_eq!(copied, [false, false, false, true, false, false, false, true, false, false, false, true]);
        let thirds = run(&*build("upstream: shadow\nsample_ratio: 0.333333"), 3000);
        assert_eq!(thirds.iter().filter(|copy| copy.is_some()).count(), 999);
    }

    #[test]
    fn rejects_an_unknown_upstream_at_its_path() {
        let errors = build_identity_policy_error(entry(), "upstream: shadw", CONFIG);
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].request_mirror.upstream");
        assert!(errors.0[0].message.contains("unknown upstream `shadw`"), "{errors}");
    }

    #[test]
    fn rejects_each_bad_setting_at_its_path() {
        let cases = [
            ("upstream: shadow\nsample_ratio: 0", "sample_ratio"),
            ("upstream: shadow\nsample_ratio: 1.5", "sample_ratio"),
            ("upstream: shadow\nsample_ratio: 0.0000001", "sample_ratio"),
            ("upstream: shadow\nmax_in_flight: 0", "max_in_flight"),
            ("upstream: shadow\ntimeout: 0s", "timeout"),
            ("upstream: shadow\nfraction: 0.5", "fraction"),
            ("sample_ratio: 0.5", ""),
        ];
        for (settings, field) in cases {
            let errors = build_identity_policy_error(entry(), settings, CONFIG);
            let expected = format!("global_policies[0].request_mirror.{field}");
            assert!(
                errors.iter().any(|error| error.path.to_string() == expected.trim_end_matches('.')),
                "`{settings}`: expected an error at {expected}, got {errors}"
            );
        }
    }

    #[test]
    fn implements_only_the_request_hook_in_the_forward_stage() {
        assert_eq!(entry().stage, Stage::Forward);
        let policy = build("upstream: shadow");
        assert_eq!(policy.hooks(), Hooks::REQUEST);
        assert!(!policy.answers_every_request());
    }
}

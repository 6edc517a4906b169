//! The targets of a model: the order they are tried in, and which are left out for a while
//! (a `Retry-After` they asked for, an open circuit).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};

use super::answer::Price;
use crate::ai::providers::{Adapter, TargetInfo};

/// One provider deployment, compiled.
pub struct CompiledTarget {
    pub info: TargetInfo,
    pub adapter: &'static dyn Adapter,
    pub upstream: Arc<str>,
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub weight: u32,
    pub price: Option<Price>,
    pub health: TargetHealth,
}

impl std::fmt::Debug for CompiledTarget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CompiledTarget")
            .field("info", &self.info)
            .field("upstream", &self.upstream)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// When a target may be called, shared by every request of the policy.
#[derive(Debug, Default)]
pub struct TargetHealth {
    /// Milliseconds since the process's epoch before which the target is not called: it asked
    /// for a wait (`Retry-After`), or its circuit is open.
    blocked_until: AtomicU64,
    /// Failures since the last success.
    consecutive_failures: AtomicU32,
}

/// The circuit breaker's settings, the same for every target of a policy.
#[derive(Clone, Copy, Debug)]
pub struct Circuit {
    /// Consecutive failures that open the circuit; 0: never.
    pub failures: u32,
    pub open_for: std::time::Duration,
    /// How long one probe of a target whose circuit was open keeps the others out.
    pub probe_for: std::time::Duration,
}

impl TargetHealth {
    /// An answer came back: the circuit closes.
    pub fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// No answer, a 429 or a 5xx: opens the circuit once `circuit.failures` follow one another,
    /// and at once again when a probe fails.
    pub fn failed(&self, circuit: &Circuit) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if circuit.failures != 0 && failures >= circuit.failures {
            self.block_for(circuit.open_for);
        }
    }

    /// Keeps the target out for `wait` (a `Retry-After`), unless it already is for longer.
    pub fn block_for(&self, wait: std::time::Duration) {
        let until = now_millis().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.blocked_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether a request may call the target now. Once the wait of an open circuit is over,
    /// one request gets through (it blocks the others for `probe_for`) and its outcome closes
    /// or reopens the circuit.
    fn admits(&self, now: u64, circuit: &Circuit) -> bool {
        let until = self.blocked_until.load(Ordering::Relaxed);
        if until > now {
            return false;
        }
        let circuit_open =
            circuit.failures != 0 && self.consecutive_failures.load(Ordering::Relaxed) >= circuit.failures;
        if !circuit_open {
            return true;
        }
        let probe_until = now.saturating_add(u64::try_from(circuit.probe_for.as_millis()).unwrap_or(u64::MAX));
        self.blocked_until.compare_exchange(until, probe_until, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// True while the target asked for a wait or its circuit is open.
    pub fn is_blocked(&self) -> bool {
        self.blocked_until() > now_millis()
    }

    fn blocked_until(&self) -> u64 {
        self.blocked_until.load(Ordering::Relaxed)
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_millis() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The targets in the order they are tried: weighted random without replacement, targets of
/// weight 0 last, targets left out for now (a `Retry-After`, an open circuit) not at all.
pub fn order<'a>(
    targets: &'a [CompiledTarget],
    circuit: &Circuit,
    mut random: impl FnMut(u64) -> u64,
) -> Vec<&'a CompiledTarget> {
    let now = now_millis();
    let mut left: Vec<&CompiledTarget> = targets.iter().filter(|target| target.health.admits(now, circuit)).collect();
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|target| u64::from(target.weight)).sum();
        let at = if total == 0 {
            0
        } else {
            let mut pick = random(total);
            left.iter()
                .position(|target| {
                    let weight = u64::from(target.weight);
                    if pick < weight {
                        true
                    } else {
                        pick -= weight;
                        false
                    }
                })
                .unwrap_or(0)
        };
        ordered.push(left.remove(at));
    }
    ordered
}

/// Whole seconds until the first target left out may be called again, if any is.
pub fn seconds_until_one_is_back(targets: &[CompiledTarget]) -> Option<u64> {
    let now = now_millis();
    targets
        .iter()
        .map(|target| target.health.blocked_until())
        .filter(|&until| until > now)
        .min()
        .map(|until| (until - now).div_ceil(1000))
}

/// A random number below `bound` (0 when the system has no randomness to give).
pub fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % bound.max(1)
}

/// The wait before round `round` (1 for the first retry round): `backoff` doubled each round,
/// at most `max`, then a random half to all of it, so clients that failed together do not
/// retry together.
pub fn backoff(round: u32, backoff: std::time::Duration, max: std::time::Duration) -> std::time::Duration {
    let ceiling = backoff.saturating_mul(1u32 << round.saturating_sub(1).min(16)).min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(millis / 2 + random_below(millis / 2 + 1))
}

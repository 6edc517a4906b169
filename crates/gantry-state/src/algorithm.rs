//! The limiting algorithms as pure functions of a key's state and the time, in microseconds.
//!
//! The memory store runs them under a shard lock; the Redis store's Lua scripts
//! (`redis/*.lua`) are line-by-line translations of them, so both stores decide alike. Tests
//! pin both to the same sequences of decisions.

use std::time::Duration;

use crate::Decision;

/// The state one key holds, per algorithm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum State {
    /// Window start and units counted in it.
    FixedWindow { start: u64, count: u64 },
    /// Current window start, units counted in the previous and in the current window.
    SlidingWindow { start: u64, previous: u64, current: u64 },
    /// Theoretical arrival time: when the bucket is empty (every unit handed out has drained).
    Gcra { tat: u64 },
    /// Units counted in the calendar period the key names.
    Period { count: u64 },
}

/// A decision and the state to keep (with when it expires), or `None` to leave it unchanged.
pub(crate) struct Outcome {
    pub decision: Decision,
    pub state: Option<(State, u64)>,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn duration(micros: u64) -> Duration {
    Duration::from_micros(micros)
}

/// Sizes given by callers are clamped to at least one microsecond, so no division by zero.
pub(crate) fn fixed_window(state: Option<State>, now: u64, window: Duration, limit: u64, cost: u64) -> Outcome {
    let window = micros(window).max(1);
    let (start, count) = match state {
        Some(State::FixedWindow { start, count }) if now < start.saturating_add(window) => (start, count),
        _ => (now, 0),
    };
    let end = start.saturating_add(window);
    let reset_after = duration(end - now);
    if count.saturating_add(cost) > limit {
        // A cost above the limit never fits; the next window is still the earliest chance.
        let decision =
            Decision { allowed: false, remaining: limit.saturating_sub(count), reset_after, retry_after: reset_after };
        return Outcome { decision, state: None };
    }
    let count = count + cost;
    Outcome {
        decision: Decision { allowed: true, remaining: limit - count, reset_after, retry_after: Duration::ZERO },
        state: Some((State::FixedWindow { start, count }, end)),
    }
}

pub(crate) fn sliding_window(state: Option<State>, now: u64, window: Duration, limit: u64, cost: u64) -> Outcome {
    let window = micros(window).max(1);
    let (mut start, mut previous, mut current) = match state {
        Some(State::SlidingWindow { start, previous, current }) if now >= start => (start, previous, current),
        _ => (now, 0, 0),
    };
    let passed = (now - start) / window;
    if passed == 1 {
        previous = current;
        current = 0;
    } else if passed > 1 {
        previous = 0;
        current = 0;
    }
    start += passed * window;
    let elapsed = now - start;
    let left = window - elapsed;
    // f64 is exact for counts below 2^53; the estimate is an approximation anyway.
    let weighted = previous as f64 * left as f64 / window as f64;
    let estimate = weighted + current as f64;
    let expires = start + 2 * window;
    let reset_after = if current > 0 { duration(left + window) } else { duration(left) };
    let state = Some((State::SlidingWindow { start, previous, current }, expires));
    if estimate + cost as f64 > limit as f64 {
        let remaining = (limit as f64 - estimate).max(0.0).floor() as u64;
        let retry_after = duration(sliding_retry_after(window, left, previous, current, limit, cost));
        return Outcome { decision: Decision { allowed: false, remaining, reset_after, retry_after }, state };
    }
    let current = current + cost;
    let remaining = (limit as f64 - estimate - cost as f64).max(0.0).floor() as u64;
    Outcome {
        decision: Decision { allowed: true, remaining, reset_after, retry_after: Duration::ZERO },
        state: Some((State::SlidingWindow { start, previous, current }, expires)),
    }
}

/// When the estimate has fallen enough for `cost` more: within this window as the previous
/// window's weight shrinks, or else in the next one as this window's does.
fn sliding_retry_after(window: u64, left: u64, previous: u64, current: u64, limit: u64, cost: u64) -> u64 {
    let Some(room) = limit.checked_sub(cost) else { return left + window };
    let (window_f, left_f) = (window as f64, left as f64);
    if current <= room && previous > 0 {
        // previous × (left − t) / window + current ≤ room
        let wait = left_f - (room - current) as f64 * window_f / previous as f64;
        return wait.max(0.0).ceil() as u64;
    }
    if current == 0 {
        return left;
    }
    // In the next window: current × (window − t) / window ≤ room
    let wait = window_f - room as f64 * window_f / current as f64;
    left + wait.max(0.0).ceil() as u64
}

pub(crate) fn gcra(state: Option<State>, now: u64, emission_interval: Duration, burst: u64, cost: u64) -> Outcome {
    let interval = micros(emission_interval).max(1);
    let tolerance = interval.saturating_mul(burst);
    let tat = match state {
        Some(State::Gcra { tat }) => tat.max(now),
        _ => now,
    };
    let new_tat = tat.saturating_add(interval.saturating_mul(cost));
    let allow_at = new_tat.saturating_sub(tolerance);
    if now < allow_at {
        let remaining = tolerance.saturating_sub(tat - now) / interval;
        let decision = Decision {
            allowed: false,
            remaining,
            reset_after: duration(tat - now),
            retry_after: duration(allow_at - now),
        };
        return Outcome { decision, state: None };
    }
    let remaining = tolerance.saturating_sub(new_tat - now) / interval;
    Outcome {
        decision: Decision {
            allowed: true,
            remaining,
            reset_after: duration(new_tat - now),
            retry_after: Duration::ZERO,
        },
        state: Some((State::Gcra { tat: new_tat }, new_tat)),
    }
}

/// The period is the caller's: its start is in the key and it ends in `ends_in`, so the state
/// is only a count, kept for `keep_for` from now.
pub(crate) fn period(
    state: Option<State>,
    now: u64,
    ends_in: Duration,
    keep_for: Duration,
    limit: u64,
    cost: u64,
) -> Outcome {
    let count = match state {
        Some(State::Period { count }) => count,
        _ => 0,
    };
    if count.saturating_add(cost) > limit {
        // A cost above the limit never fits; the next period is still the earliest chance.
        let decision = Decision {
            allowed: false,
            remaining: limit.saturating_sub(count),
            reset_after: ends_in,
            retry_after: ends_in,
        };
        return Outcome { decision, state: None };
    }
    let count = count + cost;
    Outcome {
        decision: Decision {
            allowed: true,
            remaining: limit - count,
            reset_after: ends_in,
            retry_after: Duration::ZERO,
        },
        state: Some((State::Period { count }, now.saturating_add(micros(keep_for)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    /// Runs `hits` requests of cost 1 at the given times through `step`, threading the state.
    fn run(step: impl Fn(Option<State>, u64) -> Outcome, times: &[u64]) -> Vec<Decision> {
        let mut state = None;
        times
            .iter()
            .map(|&now| {
                let outcome = step(state, now);
                if let Some((next, _)) = outcome.state {
                    state = Some(next);
                }
                outcome.decision
            })
            .collect()
    }

    #[test]
    fn fixed_window_allows_the_limit_then_denies_until_the_window_ends() {
        let step = |state, now| fixed_window(state, now, Duration::from_secs(10), 3, 1);
        let decisions = run(step, &[0, SECOND, 2 * SECOND, 3 * SECOND, 10 * SECOND]);
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false, true]);
        assert_eq!(decisions[2].remaining, 0);
        assert_eq!(decisions[3].retry_after, Duration::from_secs(7));
        assert_eq!(decisions[3].reset_after, Duration::from_secs(7));
        assert_eq!(decisions[4].remaining, 2, "a new window starts with the request after the old one ended");
    }

    #[test]
    fn fixed_window_never_admits_a_cost_above_the_limit() {
        let outcome = fixed_window(None, 0, Duration::from_secs(1), 2, 3);
        assert!(!outcome.decision.allowed);
        assert_eq!(outcome.decision.retry_after, Duration::from_secs(1));
    }

    #[test]
    fn sliding_window_weighs_the_previous_window_by_its_overlap() {
        let window = Duration::from_secs(10);
        // 10 requests in the first window, then at 15 s half of them still count: 5 left.
        let mut state = None;
        for i in 0..10 {
            let outcome = sliding_window(state, i * SECOND / 2, window, 10, 1);
            assert!(outcome.decision.allowed);
            state = outcome.state.map(|(s, _)| s);
        }
        let outcome = sliding_window(state, 15 * SECOND, window, 10, 1);
        assert!(outcome.decision.allowed);
        assert_eq!(outcome.decision.remaining, 4, "5 weighted + 1 counted of 10");
        let mut state = outcome.state.map(|(s, _)| s);
        let mut admitted = 1;
        loop {
            let outcome = sliding_window(state, 15 * SECOND, window, 10, 1);
            if !outcome.decision.allowed {
                // One more fits once the previous window's weight has dropped by one unit: 1 s.
                assert_eq!(outcome.decision.retry_after, Duration::from_secs(1));
                break;
            }
            admitted += 1;
            state = outcome.state.map(|(s, _)| s);
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn sliding_window_forgets_everything_after_two_windows() {
        let window = Duration::from_secs(1);
        let first = sliding_window(None, 0, window, 1, 1);
        let state = first.state.map(|(s, _)| s);
        assert!(!sliding_window(state, SECOND / 2, window, 1, 1).decision.allowed);
        let later = sliding_window(state, 2 * SECOND, window, 1, 1);
        assert!(later.decision.allowed);
        assert_eq!(later.decision.remaining, 0);
    }

    #[test]
    fn period_counts_up_to_the_limit_and_says_when_the_period_ends() {
        let ends_in = Duration::from_secs(3_600);
        let keep_for = ends_in + Duration::from_secs(60);
        let step = |state, now| period(state, now, ends_in, keep_for, 2, 1);
        let decisions = run(step, &[0, 0, 0]);
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, false]);
        assert_eq!(decisions[1].remaining, 0);
        assert_eq!(decisions[1].reset_after, ends_in);
        assert_eq!(decisions[1].retry_after, Duration::ZERO);
        assert_eq!(decisions[2].retry_after, ends_in, "denied until the period ends");

        let kept = period(None, 5 * SECOND, ends_in, keep_for, 2, 1).state.map(|(_, expires)| expires);
        assert_eq!(kept, Some(5 * SECOND + micros(keep_for)), "kept past the period's end");
        let too_costly = period(None, 0, ends_in, keep_for, 2, 3);
        assert!(!too_costly.decision.allowed && too_costly.state.is_none());
    }

    #[test]
    fn gcra_allows_a_burst_then_one_unit_per_interval() {
        let step = |state, now| gcra(state, now, Duration::from_secs(1), 3, 1);
        let decisions = run(step, &[0, 0, 0, 0, SECOND, SECOND]);
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false, true, false]);
        assert_eq!(decisions[0].remaining, 2);
        assert_eq!(decisions[2].remaining, 0);
        assert_eq!(decisions[2].reset_after, Duration::from_secs(3), "the bucket refills in 3 s");
        assert_eq!(decisions[3].retry_after, Duration::from_secs(1));
        assert_eq!(decisions[5].retry_after, Duration::from_secs(1));
    }

    #[test]
    fn gcra_reset_after_minus_the_increment_is_the_leaky_bucket_delay() {
        // A leaky bucket of 1 request per second with 2 waiting: burst 3 in GCRA terms.
        let interval = Duration::from_secs(1);
        let step = |state, now| gcra(state, now, interval, 3, 1);
        let delays: Vec<Option<Duration>> = run(step, &[0, 0, 0, 0])
            .iter()
            .map(|d| d.allowed.then(|| d.reset_after.saturating_sub(interval)))
            .collect();
        assert_eq!(delays, [Some(Duration::ZERO), Some(Duration::from_secs(1)), Some(Duration::from_secs(2)), None]);
    }
}

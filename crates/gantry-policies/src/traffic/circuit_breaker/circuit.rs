//! One route's circuit: closed, open or half-open, and the window of recent outcomes that
//! decides when it opens. Shared by every build of one configured breaker, so a reload keeps
//! it; every method takes `now`, so tests drive time themselves.
//!
//! Runs per request. A closed circuit admits without taking its lock (one atomic load); each
//! outcome takes the lock once, for a few arithmetic steps.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The phase as published for lock-free reads and the metric: closed.
pub(crate) const CLOSED: u8 = 0;
/// Half-open: a few trial requests are let through.
pub(crate) const HALF_OPEN: u8 = 1;
/// Open: requests are answered without the upstream.
pub(crate) const OPEN: u8 = 2;

/// How many slices a time window is counted in: it slides in steps of a tenth.
const TIME_SLICES: u64 = 10;

/// The outcomes a circuit's failure ratio is measured over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WindowShape {
    /// The last `n` outcomes.
    Calls(u32),
    /// The outcomes of the last stretch of time.
    Time(Duration),
}

/// The settings a circuit is driven by. They may change on a reload while the circuit's state
/// is kept.
#[derive(Clone, Debug)]
pub(crate) struct Thresholds {
    /// Outcomes the window must hold before the ratio counts.
    pub minimum_calls: u32,
    /// Failure ratio at or above which the circuit opens.
    pub failure_ratio: f64,
    /// How long it stays open.
    pub open_for: Duration,
    /// Trial requests when half-open, all of which must succeed to close it.
    pub half_open_calls: u32,
}

/// What [`Circuit::admit`] decided for one request.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The circuit is closed: forward, and report the outcome with [`Circuit::record`].
    Closed,
    /// One of the half-open circuit's trial requests: forward, and report its outcome through
    /// the [`Trial`].
    Trial(Trial),
    /// Refused; the circuit may let requests through again after `retry_after`.
    Refused {
        /// Until the circuit next lets a request through, at the earliest.
        retry_after: Duration,
    },
}

/// One route's circuit.
#[derive(Debug)]
pub(crate) struct Circuit {
    state: Mutex<State>,
    /// The phase, readable without the lock; written under it.
    phase: AtomicU8,
    /// Whether any request of the route reached the breaker; only such circuits are reported.
    used: AtomicBool,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Increases with every change of phase, so that a trial of an earlier half-open phase
    /// never counts in a later one.
    epoch: u64,
    window: Window,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

impl Circuit {
    /// A closed circuit whose failure ratio is measured over `shape`.
    pub(crate) fn new(shape: WindowShape) -> Self {
        Self {
            state: Mutex::new(State { phase: Phase::Closed, epoch: 0, window: Window::new(shape) }),
            phase: AtomicU8::new(CLOSED),
            used: AtomicBool::new(false),
        }
    }

    /// The phase: [`CLOSED`], [`HALF_OPEN`] or [`OPEN`].
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// Whether a request has reached this circuit.
    pub(crate) fn is_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Decides whether a request may go to the upstream.
    pub(crate) fn admit(self: &Arc<Self>, thresholds: &Thresholds, now: Instant) -> Admission {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        if self.phase() == CLOSED {
            return Admission::Closed;
        }
        let mut state = self.lock();
        match state.phase {
            Phase::Closed => Admission::Closed,
            Phase::Open { until } if now < until => Admission::Refused { retry_after: until - now },
            Phase::Open { .. } => {
                self.set_phase(&mut state, Phase::HalfOpen { admitted: 1, succeeded: 0 });
                tracing::debug!("circuit half-open: letting trial requests through");
                Admission::Trial(Trial { circuit: self.clone(), epoch: state.epoch, finished: false })
            }
            Phase::HalfOpen { ref mut admitted, .. } if *admitted < thresholds.half_open_calls => {
                *admitted += 1;
                Admission::Trial(Trial { circuit: self.clone(), epoch: state.epoch, finished: false })
            }
            // Every trial is out: the answer comes with the first of them to end.
            Phase::HalfOpen { .. } => Admission::Refused { retry_after: Duration::from_secs(1) },
        }
    }

    /// Counts the outcome of a request admitted while closed. Outcomes that end after the
    /// circuit left the closed phase no longer count.
    pub(crate) fn record(&self, failed: bool, thresholds: &Thresholds, now: Instant) {
        let mut state = self.lock();
        if !matches!(state.phase, Phase::Closed) {
            return;
        }
        state.window.record(failed, now);
        let (calls, failures) = state.window.totals(now);
        let ratio = f64::from(failures) / f64::from(calls.max(1));
        if calls >= thresholds.minimum_calls && ratio >= thresholds.failure_ratio {
            self.set_phase(&mut state, Phase::Open { until: now + thresholds.open_for });
            tracing::warn!(
                failures,
                calls,
                open_ms = thresholds.open_for.as_millis() as u64,
                "circuit opened: the upstream is failing; requests are refused for a while"
            );
        }
    }

    fn finish_trial(&self, epoch: u64, failed: bool, thresholds: &Thresholds, now: Instant) {
        let mut state = self.lock();
        if state.epoch != epoch {
            return;
        }
        let Phase::HalfOpen { ref mut succeeded, .. } = state.phase else { return };
        if failed {
            self.set_phase(&mut state, Phase::Open { until: now + thresholds.open_for });
            tracing::warn!("circuit opened again: a trial request failed");
            return;
        }
        *succeeded += 1;
        if *succeeded >= thresholds.half_open_calls {
            self.set_phase(&mut state, Phase::Closed);
            tracing::info!("circuit closed: the trial requests succeeded");
        }
    }

    /// Gives a trial's place back when it ended without an outcome (a later policy answered,
    /// the client went away), so that another request can take it.
    fn release_trial(&self, epoch: u64) {
        let mut state = self.lock();
        if state.epoch != epoch {
            return;
        }
        if let Phase::HalfOpen { ref mut admitted, .. } = state.phase {
            *admitted = admitted.saturating_sub(1);
        }
    }

    fn set_phase(&self, state: &mut State, phase: Phase) {
        let published = match phase {
            Phase::Closed => CLOSED,
            Phase::HalfOpen { .. } => HALF_OPEN,
            Phase::Open { .. } => OPEN,
        };
        state.phase = phase;
        state.epoch += 1;
        state.window.clear();
        self.phase.store(published, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A trial request of a half-open circuit. Its outcome is reported with [`Trial::finish`];
/// dropped unfinished, it gives its place back.
#[derive(Debug)]
pub(crate) struct Trial {
    circuit: Arc<Circuit>,
    epoch: u64,
    finished: bool,
}

impl Trial {
    /// Reports the trial's outcome: a failure opens the circuit again, and the last of
    /// `half_open_calls` successes closes it.
    pub(crate) fn finish(mut self, failed: bool, thresholds: &Thresholds, now: Instant) {
        self.finished = true;
        self.circuit.finish_trial(self.epoch, failed, thresholds, now);
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        if !self.finished {
            self.circuit.release_trial(self.epoch);
        }
    }
}

/// Recent outcomes: a ring of the last calls, or counts per slice of time.
#[derive(Debug)]
enum Window {
    Calls {
        size: u32,
        /// One bit per call, failed when set; allocated with the first outcome, so routes
        /// that never see traffic cost nothing.
        bits: Vec<u64>,
        next: u32,
        len: u32,
        failures: u32,
    },
    Time {
        slice: Duration,
        slices: Vec<Slice>,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Slice {
    /// Which slice of time since [`clock_origin`] this one counts.
    number: u64,
    calls: u32,
    failures: u32,
}

impl Window {
    fn new(shape: WindowShape) -> Self {
        match shape {
            WindowShape::Calls(size) => {
                Window::Calls { size: size.max(1), bits: Vec::new(), next: 0, len: 0, failures: 0 }
            }
            WindowShape::Time(span) => {
                Window::Time { slice: (span / TIME_SLICES as u32).max(Duration::from_millis(1)), slices: Vec::new() }
            }
        }
    }

    fn record(&mut self, failed: bool, now: Instant) {
        match self {
            Window::Calls { size, bits, next, len, failures } => {
                if bits.is_empty() {
                    bits.resize(size.div_ceil(64) as usize, 0);
                }
                let (word, bit) = ((*next / 64) as usize, 1u64 << (*next % 64));
                if *len == *size {
                    // The oldest outcome sits where this one goes.
                    if bits[word] & bit != 0 {
                        *failures -= 1;
                    }
                } else {
                    *len += 1;
                }
                if failed {
                    bits[word] |= bit;
                    *failures += 1;
                } else {
                    bits[word] &= !bit;
                }
                *next = (*next + 1) % *size;
            }
            Window::Time { slice, slices } => {
                if slices.is_empty() {
                    slices.resize(TIME_SLICES as usize, Slice::default());
                }
                let number = slice_number(now, *slice);
                let current = &mut slices[(number % TIME_SLICES) as usize];
                if current.number != number {
                    *current = Slice { number, calls: 0, failures: 0 };
                }
                current.calls += 1;
                current.failures += u32::from(failed);
            }
        }
    }

    /// `(calls, failures)` in the window.
    fn totals(&self, now: Instant) -> (u32, u32) {
        match self {
            Window::Calls { len, failures, .. } => (*len, *failures),
            Window::Time { slice, slices } => {
                let number = slice_number(now, *slice);
                slices
                    .iter()
                    .filter(|counted| counted.number + TIME_SLICES > number && counted.number <= number)
                    .fold((0, 0), |(calls, failures), counted| (calls + counted.calls, failures + counted.failures))
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Calls { bits, next, len, failures, .. } => {
                bits.fill(0);
                (*next, *len, *failures) = (0, 0, 0);
            }
            Window::Time { slices, .. } => slices.fill(Slice::default()),
        }
    }
}

/// The instant slices of time count from. Slice 0 stands for "never counted", so the count
/// starts at 1.
fn clock_origin() -> Instant {
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    *ORIGIN
}

fn slice_number(now: Instant, slice: Duration) -> u64 {
    let elapsed = now.saturating_duration_since(clock_origin()).as_nanos();
    (elapsed / slice.as_nanos().max(1)) as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds { minimum_calls: 4, failure_ratio: 0.5, open_for: Duration::from_secs(10), half_open_calls: 2 }
    }

    fn open_circuit(now: Instant) -> Arc<Circuit> {
        let circuit = Arc::new(Circuit::new(WindowShape::Calls(4)));
        for failed in [true, true, false, false] {
            circuit.record(failed, &thresholds(), now);
        }
        assert_eq!(circuit.phase(), OPEN);
        circuit
    }

    fn trial(circuit: &Arc<Circuit>, now: Instant) -> Trial {
        match circuit.admit(&thresholds(), now) {
            Admission::Trial(trial) => trial,
            other => panic!("expected a trial, got {other:?}"),
        }
    }

    #[test]
    fn stays_closed_below_the_minimum_number_of_calls_whatever_fails() {
        let circuit = Arc::new(Circuit::new(WindowShape::Calls(10)));
        let now = Instant::now();
        for _ in 0..3 {
            circuit.record(true, &thresholds(), now);
        }
        assert_eq!(circuit.phase(), CLOSED);
        assert!(matches!(circuit.admit(&thresholds(), now), Admission::Closed));
        circuit.record(true, &thresholds(), now);
        assert_eq!(circuit.phase(), OPEN, "the fourth failure reaches the minimum");
    }

    #[test]
    fn opens_at_the_failure_ratio_of_the_last_calls_only() {
        let circuit = Arc::new(Circuit::new(WindowShape::Calls(4)));
        let now = Instant::now();
        for failed in [true, false, false, false, false, false, false, true] {
            circuit.record(failed, &thresholds(), now);
        }
        assert_eq!(circuit.phase(), CLOSED, "1 failure in the last 4 calls is below 0.5");
        circuit.record(true, &thresholds(), now);
        // Over all 9 calls, 3 failures would be below 0.5: only the last 4 count.
        assert_eq!(circuit.phase(), OPEN, "2 failures in the last 4 calls reach 0.5");
    }

    #[test]
    fn refuses_while_open_with_the_time_left() {
        let now = Instant::now();
        let circuit = open_circuit(now);
        match circuit.admit(&thresholds(), now + Duration::from_secs(4)) {
            Admission::Refused { retry_after } => assert_eq!(retry_after, Duration::from_secs(6)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn lets_half_open_calls_through_after_open_for_and_closes_when_they_succeed() {
        let now = Instant::now();
        let circuit = open_circuit(now);
        let later = now + Duration::from_secs(10);
        let first = trial(&circuit, later);
        assert_eq!(circuit.phase(), HALF_OPEN);
        let second = trial(&circuit, later);
        assert!(
            matches!(circuit.admit(&thresholds(), later), Admission::Refused { .. }),
            "only half_open_calls trials at once"
        );
        first.finish(false, &thresholds(), later);
        assert_eq!(circuit.phase(), HALF_OPEN, "one success of two");
        second.finish(false, &thresholds(), later);
        assert_eq!(circuit.phase(), CLOSED);
        assert!(matches!(circuit.admit(&thresholds(), later), Admission::Closed));
    }

    #[test]
    fn a_failed_trial_opens_the_circuit_again_for_open_for() {
        let now = Instant::now();
        let circuit = open_circuit(now);
        let later = now + Duration::from_secs(10);
        let first = trial(&circuit, later);
        let second = trial(&circuit, later);
        first.finish(true, &thresholds(), later);
        assert_eq!(circuit.phase(), OPEN);
        second.finish(false, &thresholds(), later);
        assert_eq!(circuit.phase(), OPEN, "a trial of the earlier half-open phase no longer counts");
        assert!(matches!(circuit.admit(&thresholds(), later + Duration::from_secs(9)), Admission::Refused { .. }));
        assert!(matches!(circuit.admit(&thresholds(), later + Duration::from_secs(10)), Admission::Trial(_)));
    }

    #[test]
    fn a_trial_dropped_without_an_outcome_gives_its_place_back() {
        let now = Instant::now();
        let circuit = open_circuit(now);
        let later = now + Duration::from_secs(10);
        let first = trial(&circuit, later);
        let _second = trial(&circuit, later);
        assert!(matches!(circuit.admit(&thresholds(), later), Admission::Refused { .. }));
        drop(first);
        let _third = trial(&circuit, later);
    }

    #[test]
    fn outcomes_of_requests_admitted_before_the_circuit_opened_do_not_count() {
        let now = Instant::now();
        let circuit = open_circuit(now);
        circuit.record(false, &thresholds(), now);
        assert_eq!(circuit.phase(), OPEN);
        let later = now + Duration::from_secs(10);
        let trial = trial(&circuit, later);
        circuit.record(true, &thresholds(), later);
        assert_eq!(circuit.phase(), HALF_OPEN, "only trials decide a half-open circuit");
        drop(trial);
    }

    #[test]
    fn a_time_window_forgets_outcomes_older_than_its_span() {
        let circuit = Arc::new(Circuit::new(WindowShape::Time(Duration::from_secs(10))));
        let start = Instant::now();
        for _ in 0..3 {
            circuit.record(true, &thresholds(), start);
        }
        // Eleven seconds on, those three failures have left the window.
        let later = start + Duration::from_secs(11);
        circuit.record(true, &thresholds(), later);
        assert_eq!(circuit.phase(), CLOSED, "one failure in the window is below the minimum of 4");
        for _ in 0..3 {
            circuit.record(false, &thresholds(), later + Duration::from_secs(1));
        }
        assert_eq!(circuit.phase(), CLOSED, "1 failure in 4 calls is below 0.5");
        circuit.record(true, &thresholds(), later + Duration::from_secs(2));
        assert_eq!(circuit.phase(), CLOSED, "2 failures in 5 calls is below 0.5");
        circuit.record(true, &thresholds(), later + Duration::from_secs(3));
        assert_eq!(circuit.phase(), OPEN, "3 failures in 6 calls reach 0.5");
    }
}

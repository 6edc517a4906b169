//! A latency histogram with fixed buckets, observed on the request path without a lock.
//!
//! prometheus-client's `Histogram` takes a mutex on every observation; here each bucket is an
//! atomic counter and the sum is an `f64` updated by compare-and-swap, so requests on
//! different threads never wait for each other. Bucket counts are read one by one at scrape
//! time: a scrape racing an observation may see it in its bucket but not yet in the sum, which
//! Prometheus tolerates. The count is the sum of the buckets, so `_count` always equals the
//! `+Inf` bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};

/// The upper bounds of a histogram's buckets, shared by every histogram of one kind.
#[derive(Debug)]
pub struct Buckets {
    /// Inclusive upper bounds in nanoseconds, increasing; compared per observation.
    upper_nanos: Box<[u64]>,
    /// The same bounds in seconds, as exposed in `le`.
    upper_seconds: Box<[f64]>,
}

impl Buckets {
    /// Buckets with these upper bounds, which must increase (the configuration is validated so).
    pub fn new(bounds: &[Duration]) -> Arc<Self> {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "bucket bounds must increase");
        Arc::new(Self {
            upper_nanos: bounds.iter().map(|bound| saturating_nanos(*bound)).collect(),
            upper_seconds: bounds.iter().map(Duration::as_secs_f64).collect(),
        })
    }

    /// The position of the bucket `nanos` falls in; the last position is `+Inf`.
    fn position(&self, nanos: u64) -> usize {
        // Most observations fall in the first few buckets, so a linear scan beats a binary search.
        self.upper_nanos.iter().position(|&upper| nanos <= upper).unwrap_or(self.upper_nanos.len())
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Durations counted into fixed buckets; exposed in seconds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Arc<Buckets>,
    /// One counter per bucket (not cumulative), then one for `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of observations in seconds, as `f64` bits.
    sum_bits: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram over `buckets`.
    pub fn new(buckets: Arc<Buckets>) -> Self {
        let counts = (0..=buckets.upper_nanos.len()).map(|_| AtomicU64::new(0)).collect();
        Self { buckets, counts, sum_bits: AtomicU64::new(0f64.to_bits()) }
    }

    /// Counts one observation. Two atomic operations (three when the sum's compare-and-swap
    /// races another thread), no lock.
    #[inline]
    pub fn observe(&self, value: Duration) {
        let position = self.buckets.position(saturating_nanos(value));
        if let Some(count) = self.counts.get(position) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = value.as_secs_f64();
        let _ = self.sum_bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + seconds).to_bits())
        });
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }

    /// The sum of observations, in seconds.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }

    /// The `quantile` (0 to 1) of the observations in seconds, interpolated linearly within
    /// its bucket the way PromQL's `histogram_quantile` does; a quantile that falls in the
    /// `+Inf` bucket is reported as the highest finite bound. `None` before any observation.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        let counts: Vec<u64> = self.counts.iter().map(|count| count.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = quantile.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (upper, count) in self.buckets.upper_seconds.iter().zip(&counts) {
            if *count > 0 && (below + count) as f64 >= rank {
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += count;
            lower = *upper;
        }
        Some(lower)
    }

    /// `(upper bound in seconds, observations in that bucket alone)`, ending with `+Inf`: the
    /// form prometheus-client's encoder takes (it accumulates them itself).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.buckets
            .upper_seconds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|count| count.load(Ordering::Relaxed)))
            .collect()
    }

    /// Writes the histogram through prometheus-client's encoder, which renders the exposition.
    pub fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        let count = buckets.iter().map(|(_, count)| count).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(bounds: &[u64]) -> Arc<Buckets> {
        Buckets::new(&bounds.iter().map(|&ms| Duration::from_millis(ms)).collect::<Vec<_>>())
    }

    #[test]
    fn counts_each_observation_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = LatencyHistogram::new(millis(&[1, 10, 100]));
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(1)); // a bound is inclusive (`le`)
        histogram.observe(Duration::from_millis(7));
        histogram.observe(Duration::from_secs(3));
        assert_eq!(histogram.buckets(), vec![(0.001, 2), (0.01, 1), (0.1, 0), (f64::INFINITY, 1)]);
        assert_eq!(histogram.count(), 4);
        assert!((histogram.sum() - 3.0085).abs() < 1e-9, "{}", histogram.sum());
    }

    #[test]
    fn estimates_quantiles_by_interpolating_within_the_bucket_like_histogram_quantile() {
        let histogram = LatencyHistogram::new(millis(&[10, 20, 40]));
        assert_eq!(histogram.quantile(0.5), None);
        for _ in 0..50 {
            histogram.observe(Duration::from_millis(5));
        }
        for _ in 0..50 {
            histogram.observe(Duration::from_millis(15));
        }
        let close = |found: Option<f64>, expected: f64| found.is_some_and(|value| (value - expected).abs() < 1e-9);
        // Rank 50 of 100 ends the first bucket; rank 75 is halfway through the second.
        assert!(close(histogram.quantile(0.5), 0.010), "{:?}", histogram.quantile(0.5));
        assert!(close(histogram.quantile(0.75), 0.015), "{:?}", histogram.quantile(0.75));
        histogram.observe(Duration::from_secs(9));
        assert!(close(histogram.quantile(1.0), 0.040), "the +Inf bucket reports the highest bound");
    }

    #[test]
    fn keeps_every_observation_of_concurrent_threads() {
        let histogram = Arc::new(LatencyHistogram::new(millis(&[1, 2])));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        histogram.observe(Duration::from_micros(1500));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("observer thread");
        }
        assert_eq!(histogram.buckets(), vec![(0.001, 0), (0.002, 40_000), (f64::INFINITY, 0)]);
        assert!((histogram.sum() - 60.0).abs() < 1e-6, "no addition to the sum is lost: {}", histogram.sum());
    }

    #[test]
    fn encodes_cumulative_buckets_in_seconds_with_a_count_equal_to_the_inf_bucket() {
        #[derive(Debug)]
        struct One(LatencyHistogram);
        impl prometheus_client::collector::Collector for One {
            fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
                let metric = encoder.encode_descriptor(
                    "test_duration",
                    "a test",
                    Some(&prometheus_client::registry::Unit::Seconds),
                    prometheus_client::metrics::MetricType::Histogram,
                )?;
                self.0.encode(metric)
            }
        }
        let histogram = LatencyHistogram::new(Buckets::new(&[Duration::from_micros(250), Duration::from_millis(5)]));
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_millis(2));
        histogram.observe(Duration::from_millis(9));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(One(histogram)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "# TYPE test_duration_seconds histogram",
            "test_duration_seconds_count 3",
            "test_duration_seconds_bucket{le=\"0.00025\"} 1",
            "test_duration_seconds_bucket{le=\"0.005\"} 2",
            "test_duration_seconds_bucket{le=\"+Inf\"} 3",
        ] {
            assert!(text.lines().any(|own| own == line), "no `{line}` in:\n{text}");
        }
    }
}

//! Per-plugin counters: calls, errors, panics, timeouts, and a latency histogram good enough
//! for a mean and a p99 without locks (log-scale buckets of relaxed atomics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram buckets: bucket `i` holds latencies in [2^(i/2), 2^((i+1)/2)) nanoseconds.
const BUCKETS: usize = 80;

/// Shards of the call counter: hooks run on every broker thread at once, and one shared
/// counter would bounce its cache line between cores on every message.
const SHARDS: usize = 16;

/// A counter cell on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS
    };
}

/// Counters of one plugin. Updated on the hook path with relaxed atomics.
#[derive(Debug)]
pub struct PluginStats {
    calls: [Padded; SHARDS],
    /// Calls that returned an error.
    pub errors: AtomicU64,
    /// Calls that panicked (caught by the SDK).
    pub panics: AtomicU64,
    /// Async calls that timed out.
    pub timeouts: AtomicU64,
    samples: AtomicU64,
    total_ns: AtomicU64,
    histogram: [AtomicU64; BUCKETS],
}

impl Default for PluginStats {
    fn default() -> Self {
        PluginStats {
            calls: Default::default(),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            histogram: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A copy of the counters, with derived latencies.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Hook calls made.
    pub calls: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Mean latency of sampled calls, microseconds.
    pub mean_us: f64,
    /// 99th percentile latency of sampled calls, microseconds (bucket upper bound).
    pub p99_us: f64,
}

fn bucket(ns: u64) -> usize {
    if ns < 2 {
        return 0;
    }
    let log2 = 63 - ns.leading_zeros() as u64;
    // Half-octave: is ns above 2^log2 * sqrt(2)?
    let half = (ns as f64) >= (1u64 << log2) as f64 * std::f64::consts::SQRT_2;
    ((log2 * 2 + half as u64) as usize).min(BUCKETS - 1)
}

fn bucket_upper_ns(i: usize) -> f64 {
    2f64.powf((i as f64 + 1.0) / 2.0)
}

impl PluginStats {
    /// Counts one call; returns the calling thread's running count (for sampling).
    #[inline]
    pub fn count_call(&self) -> u64 {
        let shard = SHARD.with(|s| *s);
        self.calls[shard].0.fetch_add(1, Ordering::Relaxed)
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }

    /// Records the latency of one call.
    pub fn record(&self, elapsed: Duration) {
        let ns = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        self.samples.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.histogram[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot with mean and p99.
    pub fn snapshot(&self) -> StatsSnapshot {
        let samples = self.samples.load(Ordering::Relaxed);
        let total = self.total_ns.load(Ordering::Relaxed);
        let counts: Vec<u64> = self
            .histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        let mut p99 = 0.0;
        if n > 0 {
            let target = (n as f64 * 0.99).ceil() as u64;
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= target {
                    p99 = bucket_upper_ns(i) / 1000.0;
                    break;
                }
            }
        }
        StatsSnapshot {
            calls: self.calls(),
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            mean_us: if samples > 0 {
                total as f64 / samples as f64 / 1000.0
            } else {
                0.0
            },
            p99_us: p99,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_samples() {
        let s = PluginStats::default();
        for _ in 0..990 {
            s.record(Duration::from_micros(10));
        }
        for _ in 0..10 {
            s.record(Duration::from_millis(10));
        }
        let snap = s.snapshot();
        assert!(snap.p99_us >= 10.0 && snap.p99_us < 20.0, "{snap:?}");
        assert!(snap.mean_us > 100.0 && snap.mean_us < 120.0, "{snap:?}");
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for ns in [1u64, 2, 3, 4, 6, 8, 100, 1_000, 1_000_000, u64::MAX] {
            let b = bucket(ns);
            assert!(b >= last);
            last = b;
        }
    }
}

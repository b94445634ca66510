//! Whether the broker is lightly loaded, for the choices a connection makes differently then
//! (see [`crate::connection`]'s driver): messages received per second over the last
//! [`SAMPLE_MS`] or so, sampled by whichever connection asks.
//!
//! Only asked now and then (when a connection would act on the answer), so the sample's
//! window may be stale: one much longer than [`SAMPLE_MS`] starts a new window instead, and
//! until that one is complete the answer is "not light". A burst after a quiet hour is not
//! taken for light load on the strength of the quiet hour.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Below this many messages received per second (all clients together) the broker is lightly
/// loaded: a publisher's answer may wait for the deliveries it caused. Publishers that wait
/// for their acknowledgements before sending more (a window of QoS 1 messages) reach many
/// times this rate, and each microsecond their PUBACK waits is throughput lost.
pub const LIGHT_MESSAGES_PER_SEC: u64 = 10_000;

/// How often the rate is sampled, at most (milliseconds).
const SAMPLE_MS: u64 = 100;

/// A window longer than this (milliseconds) says nothing about the load now: see the module
/// docs.
const STALE_MS: u64 = 3 * SAMPLE_MS;

/// The broker-wide load level: one per broker.
#[derive(Debug, Default)]
pub struct LoadLevel {
    /// When the rate was last sampled (the coarse monotonic clock, ms).
    sampled_ms: AtomicU64,
    /// `messages_received` at that time.
    received: AtomicU64,
    /// The last sample was below [`LIGHT_MESSAGES_PER_SEC`].
    light: AtomicBool,
}

impl LoadLevel {
    /// Whether fewer than [`LIGHT_MESSAGES_PER_SEC`] messages a second were received in the
    /// last complete window; `received` is the broker's running count. Samples again when the
    /// window is [`SAMPLE_MS`] old (one caller does, the others read the last answer).
    pub fn is_light(&self, received: &AtomicU64) -> bool {
        let now = crate::clock::coarse_monotonic_ms();
        let last = self.sampled_ms.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(last);
        if elapsed >= SAMPLE_MS
            && self
                .sampled_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let total = received.load(Ordering::Relaxed);
            let before = self.received.swap(total, Ordering::Relaxed);
            let per_sec = total.saturating_sub(before).saturating_mul(1000) / elapsed;
            let light = elapsed <= STALE_MS && per_sec < LIGHT_MESSAGES_PER_SEC;
            self.light.store(light, Ordering::Relaxed);
        }
        self.light.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_follows_the_rate_of_the_last_sample() {
        let level = LoadLevel::default();
        let received = AtomicU64::new(0);
        // The first window started with the clock: stale, so not light.
        assert!(!level.is_light(&received));
        let window_ends = |level: &LoadLevel| {
            let started = level.sampled_ms.load(Ordering::Relaxed) - SAMPLE_MS;
            level.sampled_ms.store(started, Ordering::Relaxed);
        };
        window_ends(&level);
        assert!(
            level.is_light(&received),
            "nothing received in a window: light"
        );
        // A sample is due again only after SAMPLE_MS; meanwhile the last answer stands.
        received.fetch_add(10 * LIGHT_MESSAGES_PER_SEC, Ordering::Relaxed);
        assert!(level.is_light(&received));
        window_ends(&level);
        assert!(!level.is_light(&received), "100 000 a second is not light");
        received.fetch_add(LIGHT_MESSAGES_PER_SEC / 20, Ordering::Relaxed);
        window_ends(&level);
        assert!(level.is_light(&received), "5 000 a second is");
        // A window left open for long says nothing about now.
        let started = level.sampled_ms.load(Ordering::Relaxed) - 10 * SAMPLE_MS;
        level.sampled_ms.store(started, Ordering::Relaxed);
        assert!(!level.is_light(&received), "a stale window is not light");
    }
}

//! Wall-clock time stamps in Unix milliseconds, for what outlives the process (the store,
//! delayed publishes) and what plugins and the management API show; and a cheap monotonic
//! clock for ages checked on the message path.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// Milliseconds since the Unix epoch from the kernel's coarse clock (a few ms of resolution,
/// a fraction of the cost): for timestamps on the message path, where a precise clock read per
/// message would cost more than the hook call it stamps.
pub fn coarse_now_ms() -> u64 {
    coarse_ms(CoarseClock::Realtime).unwrap_or_else(now_ms)
}

/// Milliseconds on a monotonic clock, as cheap as [`coarse_now_ms`] where the kernel has a
/// coarse one: for ages checked for every message (the ACL cache's TTL), which a change of the
/// wall clock must not stretch.
pub fn coarse_monotonic_ms() -> u64 {
    coarse_ms(CoarseClock::Monotonic).unwrap_or_else(|| {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    })
}

/// Which of the kernel's coarse clocks to read.
enum CoarseClock {
    Realtime,
    Monotonic,
}

/// Milliseconds on the kernel's coarse `clock`; `None` where there is none.
#[cfg(target_os = "linux")]
fn coarse_ms(clock: CoarseClock) -> Option<u64> {
    let id = match clock {
        CoarseClock::Realtime => libc::CLOCK_REALTIME_COARSE,
        CoarseClock::Monotonic => libc::CLOCK_MONOTONIC_COARSE,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec into the valid, owned `ts`.
    let ok = unsafe { libc::clock_gettime(id, &mut ts) } == 0;
    ok.then(|| (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000)
}

/// No coarse clock known here: the precise ones are used.
#[cfg(not(target_os = "linux"))]
fn coarse_ms(_clock: CoarseClock) -> Option<u64> {
    None
}

/// Milliseconds from the Unix epoch to `t` (0 for a time before it).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Says yes at most once per period, from any thread: for warnings a client could otherwise
/// make the broker write thousands of times a second.
#[derive(Debug, Default)]
pub struct AtMostEvery {
    /// When the next yes may come, Unix milliseconds.
    next_ms: std::sync::atomic::AtomicU64,
}

impl AtMostEvery {
    /// True at most once per `period_ms` (the first call is always true).
    pub fn due(&self, period_ms: u64) -> bool {
        use std::sync::atomic::Ordering;
        let now = coarse_now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(next, now + period_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_every_says_yes_once_per_period() {
        let gate = AtMostEvery::default();
        assert!(gate.due(60_000));
        assert!(!gate.due(60_000));
        let every_time = AtMostEvery::default();
        assert!(
            every_time.due(0) && every_time.due(0),
            "a period of 0 passes each time"
        );
    }
}

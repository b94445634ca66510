//! The time rules of a connection, as values: the caller passes `now` in and asks when to wake
//! up next, so every rule is testable without waiting.
//!
//! * keep-alive: no packet from the client within 1.5 × Keep Alive closes the connection
//!   ([MQTT-3.1.2-24]); time the broker itself chose not to read (back-pressure, throttling)
//!   does not count as the client's silence;
//! * slow consumer: output the client leaves unread for `limits.slow_consumer_timeout` closes it;
//! * control-packet rate: PINGREQ, SUBSCRIBE, UNSUBSCRIBE and AUTH beyond a budget per second
//!   are not read until the budget is back ([`ControlRate`]); a SUBSCRIBE or UNSUBSCRIBE
//!   carrying many filters costs in proportion.

use std::time::Duration;

use tokio::time::Instant;

/// Which time limit a connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing from the client within 1.5 × Keep Alive.
    KeepAlive,
    /// Output unread for `limits.slow_consumer_timeout`.
    SlowConsumer,
}

/// Keep-alive and slow-consumer deadlines of one connection. Limits in milliseconds (40 bytes
/// where `Duration`s took 64: one lives in every connection's task).
#[derive(Debug)]
pub struct Liveness {
    /// 1.5 × Keep Alive in milliseconds; 0 when the client asked for none (Keep Alive 0).
    keep_alive_ms: u32,
    /// Milliseconds output may wait unread (at most `u32::MAX`, 49 days).
    stall_limit_ms: u32,
    last_read: Instant,
    /// Since when output has waited without the client taking any of it.
    waiting_since: Option<Instant>,
}

impl Liveness {
    /// For a negotiated `keep_alive` in seconds (0 = none).
    pub fn new(keep_alive: u16, stall_limit: Duration, now: Instant) -> Liveness {
        Liveness {
            keep_alive_ms: u32::from(keep_alive) * 1500,
            stall_limit_ms: u32::try_from(stall_limit.as_millis()).unwrap_or(u32::MAX),
            last_read: now,
            waiting_since: None,
        }
    }

    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(self.keep_alive_ms.into()))
    }

    fn stall_limit(&self) -> Duration {
        Duration::from_millis(self.stall_limit_ms.into())
    }

    /// The client sent something.
    pub fn read(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// How long since input was last read (or the broker last chose not to read).
    pub fn since_read(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_read)
    }

    /// The broker is not reading by its own choice: the client's silence does not count.
    pub fn not_reading(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// The client took some output.
    pub fn written(&mut self) {
        self.waiting_since = None;
    }

    /// Whether output is waiting for the client, looked at on every turn of the loop.
    pub fn output_waiting(&mut self, waiting: bool, now: Instant) {
        if !waiting {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// When the next limit falls due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        let keep_alive = self.keep_alive().map(|k| self.last_read + k);
        let stall = self.waiting_since.map(|s| s + self.stall_limit());
        match (keep_alive, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The limit that has passed at `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<Timeout> {
        if self.keep_alive().is_some_and(|k| now >= self.last_read + k) {
            return Some(Timeout::KeepAlive);
        }
        if self
            .waiting_since
            .is_some_and(|since| now >= since + self.stall_limit())
        {
            return Some(Timeout::SlowConsumer);
        }
        None
    }
}

/// Per-connection budget of control packets: `limit` per one-second window (0 = no limit);
/// once spent, the connection is not read until the window ends.
///
/// A packet may cost more than one ([`ControlRate::filters_cost`]), and may take the budget
/// below zero: the debt is paid off at `limit` per second before the connection is read
/// again. One SUBSCRIBE of 100 000 filters is then 12 501 packets' worth, not one (the broker
/// read such packets as fast as one client could send them: a core busy for one client).
#[derive(Debug)]
pub struct ControlRate {
    limit: u32,
    left: i32,
    window_end: Instant,
}

impl ControlRate {
    /// A full budget whose first window ends a second after `now`.
    pub fn new(limit: u32, now: Instant) -> Self {
        ControlRate {
            limit,
            left: Self::clamp(u64::from(limit)),
            window_end: now + Duration::from_secs(1),
        }
    }

    /// What a SUBSCRIBE or UNSUBSCRIBE of `filters` filters costs: one packet, and one more
    /// for every 8 filters (each filter is work of its own: a look-up, an ACL check, a router
    /// change, a reason code).
    pub fn filters_cost(filters: usize) -> u32 {
        u32::try_from(1 + filters / 8).unwrap_or(u32::MAX)
    }

    fn clamp(n: u64) -> i32 {
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    /// Spends `cost` packets' worth of the budget (going into debt if need be).
    pub fn spend(&mut self, now: Instant, cost: u32) {
        if self.limit == 0 {
            return;
        }
        self.refill(now);
        self.left = self.left.saturating_sub(Self::clamp(u64::from(cost)));
    }

    /// When reading may resume, if the budget is spent.
    pub fn blocked_until(&self) -> Option<Instant> {
        (self.limit > 0 && self.left <= 0).then_some(self.window_end)
    }

    /// Adds a second's budget once the current window has ended (up to one second's worth).
    pub fn refill(&mut self, now: Instant) {
        if now >= self.window_end {
            let limit = Self::clamp(u64::from(self.limit));
            self.left = self.left.saturating_add(limit).min(limit);
            self.window_end = now + Duration::from_secs(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    /// [MQTT-3.1.2-24] no packet within 1.5 × Keep Alive closes the connection; any packet
    /// restarts the clock; Keep Alive 0 means no limit ([MQTT-3.1.2-22] is the client's side).
    #[test]
    fn mqtt_3_1_2_24_keep_alive_is_one_and_a_half_times() {
        let t0 = Instant::now();
        let mut l = Liveness::new(10, STALL, t0);
        assert_eq!(l.next_due(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(l.expired(t0 + Duration::from_millis(14_999)), None);
        assert_eq!(
            l.expired(t0 + Duration::from_secs(15)),
            Some(Timeout::KeepAlive)
        );
        l.read(t0 + Duration::from_secs(14));
        assert_eq!(l.expired(t0 + Duration::from_secs(15)), None);
        assert_eq!(l.next_due(), Some(t0 + Duration::from_secs(29)));

        let none = Liveness::new(0, STALL, t0);
        assert_eq!(none.next_due(), None);
        assert_eq!(none.expired(t0 + Duration::from_secs(86_400)), None);
    }

    /// Time the broker chose not to read is not the client's silence.
    #[test]
    fn not_reading_by_choice_does_not_expire_keep_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(2, STALL, t0);
        l.not_reading(t0 + Duration::from_secs(2));
        assert_eq!(l.expired(t0 + Duration::from_secs(4)), None);
    }

    /// Output unread for the stall limit closes the connection; any progress restarts it.
    #[test]
    fn output_left_unread_is_a_slow_consumer() {
        let t0 = Instant::now();
        let mut l = Liveness::new(0, STALL, t0);
        l.output_waiting(true, t0);
        l.output_waiting(true, t0 + Duration::from_secs(10));
        assert_eq!(l.next_due(), Some(t0 + STALL));
        assert_eq!(l.expired(t0 + STALL), Some(Timeout::SlowConsumer));
        l.written();
        l.output_waiting(true, t0 + STALL);
        assert_eq!(l.expired(t0 + STALL), None);
        l.output_waiting(false, t0 + STALL);
        assert_eq!(l.next_due(), None);
    }

    /// The budget is spent per packet and refilled per second; 0 is unlimited.
    #[test]
    fn control_rate_budget_per_second() {
        let t0 = Instant::now();
        let mut r = ControlRate::new(2, t0);
        r.spend(t0, 1);
        assert_eq!(r.blocked_until(), None);
        r.spend(t0, 1);
        assert_eq!(r.blocked_until(), Some(t0 + Duration::from_secs(1)));
        r.refill(t0 + Duration::from_millis(500));
        assert!(r.blocked_until().is_some(), "not before the window ends");
        r.refill(t0 + Duration::from_secs(1));
        assert_eq!(r.blocked_until(), None);

        let mut unlimited = ControlRate::new(0, t0);
        for _ in 0..10_000 {
            unlimited.spend(t0, 1);
        }
        assert_eq!(unlimited.blocked_until(), None);
    }

    /// A packet of many filters costs in proportion, and its debt is paid off at the limit
    /// per second before reading resumes.
    #[test]
    fn many_filters_cost_many_seconds() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut r = ControlRate::new(1000, t0);
        assert_eq!(ControlRate::filters_cost(1), 1);
        assert_eq!(ControlRate::filters_cost(100), 13);
        r.spend(t0, ControlRate::filters_cost(24_000)); // 3 001: a debt of 2 001
        let mut now = t0;
        let mut waited = 0;
        while let Some(until) = r.blocked_until() {
            now = until;
            r.refill(now);
            waited += 1;
            assert!(waited < 10, "paid off");
        }
        assert_eq!(waited, 3, "3 seconds of budget for a debt of 2 001");
        assert!(now >= t0 + 3 * second);
        r.refill(now + 10 * second);
        r.spend(now + 10 * second, 999);
        assert_eq!(r.blocked_until(), None, "refilled to the limit, not beyond");
        r.spend(now + 10 * second, 1);
        assert!(r.blocked_until().is_some());
    }
}

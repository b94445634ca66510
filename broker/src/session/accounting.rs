//! What sessions hold, counted: the bytes queued for them (broker-wide, and the part that
//! waits for offline sessions), the limits their queues obey, and the bytes pending wills hold.
//!
//! The counts are updated at message rate from every thread, so the byte totals are
//! [`ShardedGauge`]s: each thread adds to its own cache line and only readers sum them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{store, Message, PendingWill};

/// A gauge updated from many threads at message rate: one cache line per shard, each thread
/// writing its own, so publishers and subscribers on different cores do not bounce one line
/// between them. Reading sums the shards (rarely: once per batch of packets, for metrics).
#[derive(Debug)]
pub struct ShardedGauge {
    shards: [Shard; GAUGE_SHARDS],
}

const GAUGE_SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(std::sync::atomic::AtomicIsize);

impl Default for ShardedGauge {
    fn default() -> Self {
        ShardedGauge {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }
}

impl ShardedGauge {
    fn shard(&self) -> &std::sync::atomic::AtomicIsize {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % GAUGE_SHARDS;
        }
        &self.shards[INDEX.with(|i| *i)].0
    }

    /// Adds `n`.
    pub fn add(&self, n: usize) {
        self.shard().fetch_add(n as isize, Ordering::Relaxed);
    }

    /// Subtracts `n` (a shard may go negative: only the sum means anything).
    pub fn sub(&self, n: usize) {
        self.shard().fetch_sub(n as isize, Ordering::Relaxed);
    }

    /// The current total.
    pub fn sum(&self) -> usize {
        let total: isize = self
            .shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        total.max(0) as usize
    }
}

/// The limits every session queue obeys, and the broker-wide count of queued bytes. One per
/// broker, shared by its sessions.
#[derive(Debug)]
pub struct QueueLimits {
    /// `limits.max_queued_messages`.
    pub max_messages: usize,
    /// `limits.max_queued_bytes`.
    pub max_bytes: usize,
    /// `session.queue_qos0_messages`.
    pub queue_qos0_offline: bool,
    /// Bytes queued over all sessions right now.
    pub total_bytes: ShardedGauge,
    /// The part of `total_bytes` queued for sessions with no connection attached. A session
    /// moves its queue's bytes in and out of it when it goes offline and back, under its queue
    /// lock, so the two never disagree.
    pub offline_bytes: ShardedGauge,
    /// `limits.max_offline_queued_bytes` (0: no limit).
    pub max_offline_bytes: usize,
    /// The session store, when every change is written as it happens (`durability = "ack"`).
    pub live_store: std::sync::OnceLock<Arc<store::Store>>,
    /// `limits.max_pending_will_bytes` (0: no limit).
    pub max_pending_will_bytes: usize,
    /// Bytes held by wills waiting for their delay, over all sessions ([`WillCharge`]).
    pub pending_will_bytes: AtomicUsize,
}

impl QueueLimits {
    /// Limits from the configuration, nothing queued yet.
    pub fn new(max_messages: usize, max_bytes: usize, queue_qos0_offline: bool) -> Self {
        QueueLimits {
            max_messages,
            max_bytes,
            queue_qos0_offline,
            total_bytes: ShardedGauge::default(),
            offline_bytes: ShardedGauge::default(),
            max_offline_bytes: 0,
            live_store: std::sync::OnceLock::new(),
            max_pending_will_bytes: 0,
            pending_will_bytes: AtomicUsize::new(0),
        }
    }

    /// Bytes queued over all sessions.
    pub fn total(&self) -> usize {
        self.total_bytes.sum()
    }

    /// Bytes queued for sessions with a connection attached: the queues that drain.
    pub fn online(&self) -> usize {
        self.total().saturating_sub(self.offline_bytes.sum())
    }

    /// Adds `n` bytes queued for a session, online or not. Called under its queue lock.
    pub(super) fn charge(&self, n: usize, online: bool) {
        self.total_bytes.add(n);
        if !online {
            self.offline_bytes.add(n);
        }
    }

    /// Gives back `n` bytes [`QueueLimits::charge`]d. Called under its queue lock.
    pub(super) fn release(&self, n: usize, online: bool) {
        self.total_bytes.sub(n);
        if !online {
            self.offline_bytes.sub(n);
        }
    }
}

/// The bytes a pending will holds of the broker-wide `limits.max_pending_will_bytes`, given
/// back when it is dropped — published, cancelled by a reconnect, or ended with its session.
#[derive(Debug)]
pub struct WillCharge {
    bytes: usize,
    limits: Arc<QueueLimits>,
}

impl WillCharge {
    /// Charges `message` against the budget; `None` when it would pass it.
    pub fn take(limits: &Arc<QueueLimits>, message: &Message) -> Option<WillCharge> {
        let bytes = std::mem::size_of::<PendingWill>() + message.content_size();
        let before = limits
            .pending_will_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        let max = limits.max_pending_will_bytes;
        if max > 0 && before + bytes > max {
            limits
                .pending_will_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            return None;
        }
        Some(WillCharge {
            bytes,
            limits: limits.clone(),
        })
    }
}

impl Drop for WillCharge {
    fn drop(&mut self) {
        let gauge = &self.limits.pending_will_bytes;
        gauge.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::session::{test_delivery, Enqueued, Session};

    fn session(limits: &Arc<QueueLimits>) -> Session {
        Session::new(1, "c".into(), limits.clone())
    }

    /// The queue's bytes follow the session between the online and offline totals, and a
    /// QoS 1 delivery stays charged while in flight.
    #[test]
    fn bytes_follow_the_session_and_stay_charged_in_flight() {
        let limits = Arc::new(QueueLimits::new(100, 1 << 20, true));
        let s = session(&limits);
        let size = test_delivery(QoS::AtLeastOnce).size();
        assert_eq!(s.enqueue(test_delivery(QoS::AtLeastOnce)), Enqueued::Queued);
        assert_eq!((limits.total(), limits.offline_bytes.sum()), (size, size));
        s.set_online(true);
        assert_eq!((limits.total(), limits.online()), (size, size));
        let mut out = Vec::new();
        s.drain(&mut out, 10, usize::MAX, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(limits.online(), size, "in flight, still charged");
        s.set_online(false);
        assert_eq!(
            limits.offline_bytes.sum(),
            size,
            "parked in flight counts offline"
        );
        s.set_online(true);
        s.drain(&mut out, 10, usize::MAX, size);
        assert_eq!((limits.total(), limits.offline_bytes.sum()), (0, 0));
        assert_eq!(s.queued_bytes(), 0);
    }

    /// QoS 0 is given back as soon as it is taken from the queue.
    #[test]
    fn qos0_is_given_back_when_drained() {
        let limits = Arc::new(QueueLimits::new(100, 1 << 20, true));
        let s = session(&limits);
        s.set_online(true);
        s.enqueue(test_delivery(QoS::AtMostOnce));
        s.drain(&mut Vec::new(), 10, usize::MAX, 0);
        assert_eq!(limits.total(), 0);
    }

    /// Past `max_offline_bytes` an offline session takes nothing more; an online one does.
    #[test]
    fn offline_queues_share_one_bound() {
        let size = test_delivery(QoS::AtLeastOnce).size();
        let limits = Arc::new(QueueLimits {
            max_offline_bytes: size,
            ..QueueLimits::new(100, 1 << 20, true)
        });
        let (away, here) = (session(&limits), session(&limits));
        assert_eq!(
            away.enqueue(test_delivery(QoS::AtLeastOnce)),
            Enqueued::Queued
        );
        assert_eq!(
            away.enqueue(test_delivery(QoS::AtLeastOnce)),
            Enqueued::OfflineFull
        );
        here.set_online(true);
        assert_eq!(
            here.enqueue(test_delivery(QoS::AtLeastOnce)),
            Enqueued::Queued
        );
    }

    /// Bytes given back after the session was emptied never take the totals below zero, nor
    /// take what was queued since.
    #[test]
    fn late_releases_never_go_below_nothing() {
        let limits = Arc::new(QueueLimits::new(100, 1 << 20, true));
        let s = session(&limits);
        s.set_online(true);
        s.enqueue(test_delivery(QoS::AtLeastOnce));
        s.drain(&mut Vec::new(), 10, usize::MAX, 0);
        s.clear_queue();
        assert_eq!(limits.total(), 0);
        s.enqueue(test_delivery(QoS::AtMostOnce));
        let size = test_delivery(QoS::AtMostOnce).size();
        s.release_held(1 << 20);
        assert_eq!(limits.total(), size, "what was queued since stays charged");
        s.enqueue(test_delivery(QoS::AtMostOnce));
        assert_eq!(limits.total(), 2 * size);
        s.drain(&mut Vec::new(), 10, usize::MAX, 1 << 20);
        assert_eq!((limits.total(), s.queued_bytes()), (0, 0));
    }
}

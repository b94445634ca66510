//! The memory high-water mark's guard against consumers that never catch up.
//!
//! Past `limits.memory_high_watermark` the connections stop reading from publishers until the
//! queues of connected subscribers drain (back-pressure). That is right for a burst, but a few
//! subscribers that stay connected and take nothing (a QoS 1 client that never acknowledges
//! keeps its socket empty and is never a slow consumer by the write side's measure) would hold
//! every publisher paused for as long as they like. So when the mark has held for
//! `limits.slow_consumer_timeout`, the connected sessions holding the most queued bytes are
//! disconnected as slow consumers (MQTT 5: DISCONNECT 0x97) and their queued messages dropped —
//! the fewest sessions that bring the total under the low mark (90 %). Their in-flight
//! messages stay with the session and are sent again when the client returns.
//!
//! At `limits.max_sessions`, a client id with no session makes room by ending the persistent
//! session that has been offline longest ([`Broker::evict_oldest_offline`]); only when every
//! session has a connection is it refused. Persistent sessions never expire by default, so
//! refusing instead would let anyone who once filled the table with client ids of their own —
//! a minute of connects — lock every new client out for good, across restarts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::Broker;
use crate::metrics;
use crate::session::store::Op;
use crate::session::{KickReason, Session};

impl Broker {
    /// Watches the high-water mark once a second until shutdown (nothing when there is no
    /// mark).
    pub async fn run_overload_guard(self: Arc<Self>) {
        if self.config.limits.memory_high_watermark == 0 {
            return;
        }
        let patience = Duration::from_secs(self.config.limits.slow_consumer_timeout.max(1));
        let mut shutdown = self.shutdown_signal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut over_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return,
            }
            if !self.over_high_watermark() {
                over_since = None;
                continue;
            }
            let since = *over_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= patience {
                self.evict_largest_queues().await;
                over_since = None;
            }
        }
    }

    /// The connected sessions with the most queued bytes, largest first: the fewest whose
    /// queues take the total for connected sessions under 90 % of the mark.
    fn largest_queues(&self) -> Vec<(usize, Arc<Session>)> {
        let low = self.config.limits.memory_high_watermark / 10 * 9;
        let mut excess = self.queue_limits.online().saturating_sub(low);
        let mut held: Vec<(usize, Arc<Session>)> = self
            .sessions
            .lock()
            .values()
            .filter(|s| s.is_online())
            .map(|s| (s.queued_bytes(), s.clone()))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        held.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        held.retain(|(bytes, _)| {
            let take = excess > 0;
            excess = excess.saturating_sub(*bytes);
            take
        });
        held
    }

    /// Disconnects the sessions [`Broker::largest_queues`] names and drops what they queued.
    async fn evict_largest_queues(&self) {
        let chosen = self.largest_queues();
        tracing::warn!(
            sessions = chosen.len(),
            queued_bytes = self.queue_limits.online(),
            mark = self.config.limits.memory_high_watermark,
            "over limits.memory_high_watermark for limits.slow_consumer_timeout: disconnecting the clients with the largest queues and dropping their queued messages"
        );
        for (bytes, session) in chosen {
            self.kick_session(&session, KickReason::Overload).await;
            let dropped = session.take_queued();
            metrics::add(&self.metrics.messages_dropped, dropped.len() as u64);
            for delivery in dropped.iter().filter(|d| d.seq > 0) {
                self.store_op(Op::DeleteMessage {
                    client_id: session.client_id.clone(),
                    seq: delivery.seq,
                });
            }
            tracing::info!(client_id = %session.client_id, queued_bytes = bytes, messages = dropped.len(), "slow consumer disconnected at the memory high-water mark; its queued messages dropped");
        }
    }
}

/// A persistent session that went offline, as [`Broker::note_offline`] recorded it.
#[derive(Debug)]
pub(super) struct OfflineEntry {
    session: Weak<Session>,
    /// Its connection generation then: a later connection makes the entry stale.
    generation: u64,
}

impl OfflineEntry {
    /// The session, while it is still offline since this entry was made.
    fn current(&self) -> Option<Arc<Session>> {
        let session = self.session.upgrade()?;
        let same = session.generation.load(Ordering::Acquire) == self.generation;
        (same && !session.is_online()).then_some(session)
    }
}

impl Broker {
    /// Records that `session` (persistent) went offline after connection `generation`. Stale
    /// entries — sessions since resumed or ended — are dropped once they outnumber the
    /// sessions, so the record stays within twice the session count.
    pub fn note_offline(&self, session: &Arc<Session>, generation: u64) {
        let mut order = self.offline_order.lock();
        order.push_back(OfflineEntry {
            session: Arc::downgrade(session),
            generation,
        });
        let sessions = self.metrics.sessions.load(Ordering::Relaxed) as usize;
        if order.len() > 2 * sessions + 1024 {
            order.retain(|e| e.current().is_some());
        }
    }

    /// Ends the persistent session offline longest to make room for a new one; false when no
    /// session is offline. `sessions` is the registry, locked by the caller.
    pub(super) fn evict_oldest_offline(
        &self,
        sessions: &mut HashMap<Arc<str>, Arc<Session>>,
    ) -> bool {
        loop {
            let Some(entry) = self.offline_order.lock().pop_front() else {
                return false;
            };
            let Some(session) = entry.current() else {
                continue;
            };
            let registered = sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &session));
            if !registered || session.control.lock().is_some() {
                continue;
            }
            sessions.remove(&session.client_id);
            self.discard_session(&session);
            metrics::add(&self.metrics.sessions_evicted, 1);
            if self.session_evictions.due(10_000) {
                tracing::warn!(
                    client_id = %session.client_id,
                    offline_since = ?session.offline_since(),
                    "limits.max_sessions reached: the session offline longest was ended to make room for a new client"
                );
            }
            return true;
        }
    }
}

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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Broker, TAKEOVER_TIMEOUT};
use crate::metrics;
use crate::session::store::Op;
use crate::session::{Control, KickReason, Session};

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
            let ctrl = session.control.lock().clone();
            if let Some(ctrl) = ctrl {
                let (done, wait) = oneshot::channel();
                let kick = Control::Kick {
                    reason: KickReason::Overload,
                    done,
                };
                if ctrl.send(kick).is_ok() {
                    let _ = tokio::time::timeout(TAKEOVER_TIMEOUT, wait).await;
                }
            }
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

//! The broker's side of the session store: attaching it, and the calls through which sessions
//! and connections submit changes and wait for them to be on disc (`durability = "ack"`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Broker;
use crate::config::Durability;
use crate::session::store::{Op, Store, StoreError};
use crate::session::Session;

impl Broker {
    /// Uses `store` for sessions: read back at start, written at a graceful stop, and with
    /// `durability = "ack"` written as sessions change.
    pub fn attach_store(&self, store: Arc<Store>) {
        if self.config.session.durability == Durability::Ack {
            let _ = self.queue_limits.live_store.set(store.clone());
        }
        let _ = self.store.set(store);
    }

    /// Submits a change to the live store, if there is one.
    pub fn store_op(&self, op: Op) {
        if let Some(store) = self.queue_limits.live_store.get() {
            store.submit(op);
        }
    }

    /// Writes the record of `session` (expiry, subscriptions, will) to the live store, if
    /// there is one and the session is persistent.
    pub fn store_session(&self, session: &Session) {
        if let Some(store) = session.live_store() {
            session.in_store.store(true, Ordering::Relaxed);
            store.submit(Op::PutSession {
                client_id: session.client_id.clone(),
                record: crate::session::persist::session_record(session),
            });
        }
    }

    /// Waits until everything submitted to the live store so far is on disc (immediately
    /// when there is no live store or nothing is pending).
    ///
    /// `since` is [`Broker::store_submitted`] from before the changes that must be durable:
    /// when nothing at all was submitted since, there is nothing to wait for (a batch of
    /// publishes to clean sessions does not wait for another connection's commit).
    pub async fn store_committed(&self, since: u64) -> Result<(), StoreError> {
        match self.queue_limits.live_store.get() {
            Some(store) => {
                let now = store.submitted();
                if now == since {
                    return Ok(());
                }
                store.wait_committed(now).await
            }
            None => Ok(()),
        }
    }

    /// The number of changes submitted to the live store so far (0 without one).
    pub fn store_submitted(&self) -> u64 {
        self.queue_limits
            .live_store
            .get()
            .map_or(0, |store| store.submitted())
    }
}

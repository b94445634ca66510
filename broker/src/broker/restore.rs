//! The broker's side of persistence: what a graceful stop writes and what start reads back,
//! through the encodings of [`crate::session::persist`].

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;

use super::Broker;
use crate::clock::unix_ms;
use crate::session::persist;
use crate::session::store::{Op, Store, StoredSession};

impl Broker {
    /// Every delayed publish waiting, encoded for [`Store::replace_all`] at a graceful stop.
    pub fn delayed_snapshot(&self) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        self.delayed
            .for_each(|m| out.push((m.id, persist::encode_delayed(m))));
        out
    }

    /// Reads the stored delayed publishes back into the waiting list (those due meanwhile are
    /// published as soon as the broker runs). Returns how many.
    pub fn restore_delayed(&self, store: &Store) -> usize {
        let loaded = match store.load_delayed() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the delayed publishes: starting without them");
                return 0;
            }
        };
        let (now, wall_now) = (Instant::now(), unix_ms(SystemTime::now()));
        let mut restored = 0;
        for (id, bytes) in loaded {
            match persist::decode_delayed(&bytes, id, now, wall_now) {
                Ok(Some(m)) => {
                    // Those already stored are restored whatever the limit is now.
                    if self.delayed.add(m, crate::delayed::Bounds::NONE).is_ok() {
                        restored += 1;
                    }
                }
                Ok(None) => {
                    store.submit(Op::DeleteDelayed { id });
                }
                Err(e) => {
                    tracing::error!(id, error = %e, "stored delayed publish unreadable: skipped");
                }
            }
        }
        restored
    }

    /// Everything a graceful stop writes: each session with a non-zero expiry
    /// ([`persist::stored_session`]).
    pub fn session_snapshot(&self) -> Vec<(Arc<str>, StoredSession)> {
        self.all_sessions()
            .iter()
            .filter_map(|s| Some((s.client_id.clone(), persist::stored_session(s)?)))
            .collect()
    }

    /// Rebuilds and registers every session in `store`; returns how many were restored.
    /// Sessions that expired while the broker was down are removed from the store.
    pub fn restore_sessions(self: &Arc<Self>, store: &Store) -> usize {
        let loaded = match store.load() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the session store: starting without its sessions");
                return 0;
            }
        };
        let now = Instant::now();
        let wall_now = unix_ms(SystemTime::now());
        let mut restored = 0;
        let mut expired = 0;
        for (client_id, stored) in loaded {
            let new_session = || self.new_session(Arc::from(client_id.as_str()));
            let r = match persist::rebuild(new_session, stored, now, wall_now) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    expired += 1;
                    store.submit(Op::DeleteSession {
                        client_id: Arc::from(client_id.as_str()),
                    });
                    continue;
                }
                Err(e) => {
                    tracing::error!(client_id = %client_id, error = %e,
                        "stored session unreadable: skipped (the other sessions load)");
                    continue;
                }
            };
            restored += 1;
            for seq in r.expired_messages {
                self.store_op(Op::DeleteMessage {
                    client_id: r.session.client_id.clone(),
                    seq,
                });
            }
            self.register_restored(r.session.clone());
            for sub in r.subscriptions {
                self.add_subscription(&r.session, sub.key, sub.options, sub.id);
            }
            if let Some((will, delay)) = r.will {
                self.schedule_will(r.session.clone(), will, 0, delay);
            }
            if let Some(left) = r.expiry_left {
                self.schedule_expiry(r.session, 0, left);
            }
        }
        tracing::info!(restored, expired, file = %store.path().display(), "sessions restored");
        restored
    }
}

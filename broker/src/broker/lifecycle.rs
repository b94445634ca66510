//! The lifecycle of sessions: a connection attaching to one (taking it over from a live
//! connection, in turn), a session ending (by expiry or a clean start) and what goes with it
//! (its subscriptions, its queue, its record in the store), and wills, published at once or
//! after their delay.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Attached, Broker, SessionLimitReached, TAKEOVER_TIMEOUT};
use crate::metrics;
use crate::session::store::Op;
use crate::session::{key_bytes, Control, KickReason, Message, PendingWill, Session, WillCharge};
use plugin_api::HookPoint;

impl Broker {
    /// Binds a new connection to the session of `client_id`.
    ///
    /// A live connection holding that session is kicked first and its state waited for. With
    /// `clean_start` an existing session is discarded and a new one created; otherwise it is
    /// resumed. `control` is the new connection's control channel.
    ///
    /// A client id with no session gets a new one only while fewer than
    /// `limits.max_sessions` are held.
    pub async fn attach(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        clean_start: bool,
        control: crate::session::ControlSender,
    ) -> Result<Attached, SessionLimitReached> {
        loop {
            let existing = self.session(client_id);
            if let Some(old) = &existing {
                // The line stays in the session while its connection hands the session back:
                // another client taking the id over meanwhile sees it attached and waits its
                // turn (it asks too), instead of resuming or ending a session that connection
                // still runs on.
                let old_control = old.control.lock().clone();
                if let Some(ctrl) = old_control {
                    let (done_tx, done_rx) = oneshot::channel();
                    let kick = Control::Kick {
                        reason: KickReason::TakenOver,
                        done: done_tx,
                    };
                    let sent = ctrl.send(kick).is_ok();
                    // Answered, or dropped unanswered when the connection ended otherwise.
                    let answered = sent
                        && tokio::time::timeout(TAKEOVER_TIMEOUT, done_rx)
                            .await
                            .is_ok();
                    if !answered {
                        if sent {
                            tracing::warn!(client_id = %client_id, "previous connection did not hand its session back in time");
                        }
                        // Gone, or too slow: the session counts as unattached from now on.
                        let mut control = old.control.lock();
                        if control.as_ref().is_some_and(|c| c.same_line(&ctrl)) {
                            *control = None;
                        }
                    }
                    continue;
                }
            }
            let mut sessions = self.sessions.lock();
            let current = sessions.get(client_id).cloned();
            // Someone attached in between: go round and take it over again.
            if let Some(cur) = &current {
                if cur.control.lock().is_some() {
                    continue;
                }
            }
            let mut discarded = false;
            let (session, present) = match current {
                Some(old) if !clean_start => (old, true),
                other => {
                    let max = self.config.limits.max_sessions;
                    if other.is_none()
                        && max > 0
                        && sessions.len() >= max
                        && !self.evict_oldest_offline(&mut sessions)
                    {
                        metrics::add(&self.metrics.sessions_refused, 1);
                        return Err(SessionLimitReached);
                    }
                    if let Some(old) = other {
                        sessions.remove(client_id);
                        self.discard_session(&old);
                        discarded = true;
                    }
                    let s = self.new_session(client_id.clone());
                    sessions.insert(client_id.clone(), s.clone());
                    metrics::add(&self.metrics.sessions, 1);
                    (s, false)
                }
            };
            if self.is_shutting_down() {
                // After begin_shutdown looked at the sessions: told here instead.
                let _ = control.send(Control::Shutdown);
            }
            *session.control.lock() = Some(control);
            let generation = session.generation.fetch_add(1, Ordering::AcqRel) + 1;
            // A will delayed by the previous connection is cancelled by the new one
            // ([MQTT-3.1.3-9]).
            if let Some(parked) = session.parked.lock().as_mut() {
                parked.pending_will = None;
            }
            return Ok(Attached {
                session,
                session_present: present,
                generation,
                discarded,
            });
        }
    }

    /// Every registered session.
    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// A new offline session for `client_id`, not registered yet.
    pub fn new_session(&self, client_id: Arc<str>) -> Arc<Session> {
        Arc::new(Session::new(
            self.next_session_id.fetch_add(1, Ordering::Relaxed),
            client_id,
            self.queue_limits.clone(),
        ))
    }

    /// Registers a session read back from disc ([`crate::session::persist`]), replacing none:
    /// it runs before the first connection.
    pub fn register_restored(&self, session: Arc<Session>) {
        self.note_offline(&session, session.generation.load(Ordering::Acquire));
        let mut sessions = self.sessions.lock();
        if sessions
            .insert(session.client_id.clone(), session)
            .is_none()
        {
            metrics::add(&self.metrics.sessions, 1);
        }
    }

    /// Ends `session` if it is still registered and no connection reattached since
    /// `generation`: removes it from the registry and its subscriptions from the router, and
    /// publishes a will still waiting for its delay.
    pub fn end_session(&self, session: &Arc<Session>, generation: u64) {
        {
            let mut sessions = self.sessions.lock();
            match sessions.get(&session.client_id) {
                Some(s) if Arc::ptr_eq(s, session) => {}
                _ => return,
            }
            if session.generation.load(Ordering::Acquire) != generation
                || session.control.lock().is_some()
            {
                return;
            }
            sessions.remove(&session.client_id);
        }
        self.discard_session(session);
    }

    /// Removes a session's subscriptions and queue, publishing its pending will. The caller has
    /// already taken it out of the registry.
    pub(super) fn discard_session(&self, session: &Arc<Session>) {
        // First: a connection still running on it (taken over, reading what its client sent)
        // may subscribe, queue or write to the store from now on only to no effect.
        session.end();
        metrics::sub(&self.metrics.sessions, 1);
        // Only sessions that were written: a clean session's end costs the store nothing.
        if session.in_store.swap(false, Ordering::Relaxed) {
            self.store_op(Op::DeleteSession {
                client_id: session.client_id.clone(),
            });
        }
        let subs: Vec<_> = {
            // `add_subscription` checks `has_ended` under the router's write lock and adds under
            // it: what it added before is in `subscriptions` now, nothing is added after.
            let mut router = self.routes_mut();
            let subs: Vec<_> = session.subscriptions.lock().drain().collect();
            for (key, _) in &subs {
                router.remove(key.group.as_ref(), &key.filter, &session.id);
            }
            subs
        };
        let bytes: usize = subs.iter().map(|(key, _)| key_bytes(key)).sum();
        metrics::sub(&self.metrics.subscription_bytes, bytes as u64);
        session.clear_queue();
        let will = session
            .parked
            .lock()
            .as_mut()
            .and_then(|p| p.pending_will.take());
        if let Some(will) = will {
            self.publish(will.message, None, true);
        }
        self.notify_session(HookPoint::SESSION_TERMINATED, &session.client_id);
        tracing::debug!(client_id = %session.client_id, "session ended");
    }

    /// Publishes `will` after `delay` unless the session is resumed first; at the latest when
    /// the session ends (section 3.1.3.2).
    ///
    /// `generation` is that of the connection that left the will. A newer connection may have
    /// resumed or discarded the session between that connection handing it back and this
    /// call (another worker thread runs `attach` meanwhile): a resumed session cancels the
    /// will ([MQTT-3.1.2-8]) and a discarded one has ended, so the will is published now.
    /// Both are decided under the locks `attach` takes, in its order (sessions, then parked).
    pub fn schedule_will(
        self: &Arc<Self>,
        session: Arc<Session>,
        will: Message,
        generation: u64,
        delay: Duration,
    ) {
        {
            let sessions = self.sessions.lock();
            let registered = sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &session));
            if !registered {
                drop(sessions);
                self.publish(will, None, true);
                return;
            }
            let mut parked = session.parked.lock();
            if session.generation.load(Ordering::Acquire) != generation {
                tracing::debug!(client_id = %session.client_id, "session resumed: delayed will cancelled");
                return;
            }
            let Some(charge) = WillCharge::take(&self.queue_limits, &will) else {
                drop(parked);
                drop(sessions);
                self.will_without_delay(will);
                return;
            };
            parked.get_or_insert_with(Box::default).pending_will = Some(Box::new(PendingWill {
                message: will,
                generation,
                due: tokio::time::Instant::now() + delay,
                charge,
            }));
        }
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let will = {
                let mut parked = session.parked.lock();
                match parked.as_mut() {
                    Some(p)
                        if p.pending_will.as_ref().map(|w| w.generation) == Some(generation) =>
                    {
                        p.pending_will.take()
                    }
                    _ => None,
                }
            };
            if let Some(will) = will {
                broker.publish(will.message, None, true);
                // The stored record must not bring back a will already published.
                broker.store_session(&session);
            }
        });
    }

    /// Publishes a will at once that `limits.max_pending_will_bytes` has no room to hold for
    /// its delay; logged at most every 10 s.
    pub(super) fn will_without_delay(&self, will: Message) {
        metrics::add(&self.metrics.wills_not_delayed, 1);
        if self.will_refusals.due(10_000) {
            let held = self.queue_limits.pending_will_bytes.load(Ordering::Relaxed);
            tracing::warn!(topic = %will.topic, pending_will_bytes = held, "limits.max_pending_will_bytes reached: will published without its delay");
        }
        self.publish(will, None, true);
    }

    /// Ends the session after `expiry` unless a connection reattaches first.
    pub fn schedule_expiry(
        self: &Arc<Self>,
        session: Arc<Session>,
        generation: u64,
        expiry: Duration,
    ) {
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(expiry).await;
            broker.end_session(&session, generation);
        });
    }
}

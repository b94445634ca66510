//! Subscriptions made and removed outside a client's own SUBSCRIBE and UNSUBSCRIBE (plugins,
//! the management API), the calls every subscription change goes through (the router and the
//! session's own list, kept in step), and the bounds on what subscriptions hold.
//!
//! The router is a [`ShardedLock`](crossbeam_utils::sync::ShardedLock): one read lock per
//! thread for the publish path, all of them for a change.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::{ShardedLockReadGuard, ShardedLockWriteGuard};
use plugin_api::{EventView, HookPoint};

use super::Broker;
use crate::codec::{QoS, SubscriptionOptions};
use crate::metrics;
use crate::router::{SubscriptionKey, Trie};
use crate::session::{key_bytes, Session, SubEntry, Subscription};

impl Broker {
    /// Subscribes an existing session, online or offline, on behalf of a plugin or the
    /// management API. Returns the granted QoS.
    pub fn subscribe_client(
        &self,
        client_id: &str,
        raw: &str,
        options: SubscriptionOptions,
    ) -> Result<QoS, String> {
        let session = self
            .session(client_id)
            .ok_or_else(|| format!("no session for client {client_id:?}"))?;
        let key = SubscriptionKey::parse(raw).map_err(|e| e.to_string())?;
        let qos = options.qos;
        let is_new = self.add_subscription(&session, key.clone(), options, None);
        self.store_session(&session);
        // Plugins (a retainer) learn of it as of any subscription.
        let point = HookPoint::SESSION_SUBSCRIBED;
        self.notify_subscription(point, &session, &key, &options, is_new, None);
        Ok(qos)
    }

    /// Fires `session.subscribed` / `session.unsubscribed` (`point`) for a subscription a plugin
    /// or the management API changed, if any plugin listens and the client is connected.
    fn notify_subscription(
        &self,
        point: HookPoint,
        session: &Session,
        key: &SubscriptionKey,
        options: &SubscriptionOptions,
        is_new: bool,
        id: Option<u32>,
    ) {
        if !self.hooks.enabled(point) {
            return;
        }
        // Clone first: the info lock must not be held while plugins run.
        let Some(info) = session.info.lock().clone() else {
            return;
        };
        let subscription = plugin_api::SubscriptionView {
            filter: key.filter.as_str().into(),
            share_group: key.group.as_deref().map(Into::into).into(),
            options: crate::session::sub_options(options),
            is_new,
            subscription_id: id.unwrap_or(0),
        };
        let event = EventView {
            client: info.view(),
            reason: "".into(),
            reason_code: 0,
            subscription: Some(subscription).into(),
        };
        self.hooks.notify(point, &event);
    }

    /// Adds (or replaces) a subscription of `session`; returns true if it is new.
    pub fn add_subscription(
        &self,
        session: &Arc<Session>,
        key: SubscriptionKey,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let entry = SubEntry {
            session: session.clone(),
            options,
            id,
        };
        let bytes = key_bytes(&key);
        let mut router = self.routes_mut();
        if session.has_ended() {
            // A connection that is being taken over by a clean start, still reading what its
            // client sent: its subscription would keep the ended session in the router,
            // queueing (and charging) every matching message for nobody.
            return false;
        }
        router.insert(key.group.as_ref(), &key.filter, session.id, entry);
        let previous = session
            .subscriptions
            .lock()
            .insert(key, Subscription { options, id });
        if previous.is_none() {
            metrics::add(&self.metrics.subscription_bytes, bytes as u64);
        }
        previous.is_none()
    }

    /// Whether a new subscription `key` of `session` (one it does not hold) would take every
    /// session's subscriptions past `limits.max_total_subscription_bytes`; logged at most
    /// every 10 s when it does.
    pub fn over_total_subscription_bytes(&self, session: &Session, key: &SubscriptionKey) -> bool {
        let max = self.config.limits.max_total_subscription_bytes;
        if max == 0 {
            return false;
        }
        let held = self.metrics.subscription_bytes.load(Ordering::Relaxed) as usize;
        if held + key_bytes(key) <= max || session.subscriptions.lock().contains(key) {
            return false;
        }
        if self.subscription_refusals.due(10_000) {
            tracing::warn!(
                client_id = %session.client_id,
                subscription_bytes = held,
                "limits.max_total_subscription_bytes reached: new subscriptions are refused"
            );
        }
        true
    }

    /// Removes subscription `key` from `session` and the router; returns it.
    pub fn remove_subscription(
        &self,
        session: &Session,
        key: &SubscriptionKey,
    ) -> Option<Subscription> {
        let sub = session.subscriptions.lock().remove(key)?;
        metrics::sub(&self.metrics.subscription_bytes, key_bytes(key) as u64);
        self.routes_mut()
            .remove(key.group.as_ref(), &key.filter, &session.id);
        Some(sub)
    }

    /// The router, to read. One lock per thread: with one lock for all, the two cores took
    /// turns at its cache line for every message (78 % of `route_in`'s own time, ~9 % of the
    /// broker's CPU in fan-in QoS 0, perf); a subscription change takes them all.
    pub(super) fn routes(&self) -> ShardedLockReadGuard<'_, Trie<u64, SubEntry>> {
        // A panic while it was held leaves the trie whole (its changes are single calls).
        self.router.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The router, to change (see [`Broker::routes`]).
    pub(super) fn routes_mut(&self) -> ShardedLockWriteGuard<'_, Trie<u64, SubEntry>> {
        self.router.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscriptions in the router (every session's, shared ones once per member).
    pub fn subscription_count(&self) -> usize {
        self.routes().len()
    }

    /// Removes subscription `raw` (as it was subscribed) from a session, online or offline,
    /// as if its client had sent UNSUBSCRIBE (management API, plugins). Returns false when the
    /// session has no such subscription.
    pub fn unsubscribe_client(&self, client_id: &str, raw: &str) -> Result<bool, String> {
        let session = self
            .session(client_id)
            .ok_or_else(|| format!("no session for client {client_id:?}"))?;
        let key = SubscriptionKey::parse(raw).map_err(|e| e.to_string())?;
        let Some(sub) = self.remove_subscription(&session, &key) else {
            return Ok(false);
        };
        self.store_session(&session);
        let point = HookPoint::SESSION_UNSUBSCRIBED;
        self.notify_subscription(point, &session, &key, &sub.options, false, sub.id);
        Ok(true)
    }
}

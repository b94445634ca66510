//! The broker's shared state: session registry, subscription router, metrics, shutdown signal.
//!
//! [`Broker::route`] is the publish path (`route.rs`): match the topic in the trie under the
//! read lock, merge overlapping subscriptions of one session, and enqueue one [`Delivery`] per
//! target session (each holding the same `Arc<Message>`) before the lock is released.
//!
//! Overlapping subscriptions (section 3.3.4): a session whose plain subscriptions match a topic
//! several times receives **one** copy, with the maximum QoS of the matching subscriptions and
//! every matching subscription identifier ([MQTT-3.3.4-2], [MQTT-3.3.4-3]); Retain As Published
//! applies if any matching subscription asks for it. Shared subscriptions are delivered
//! separately: each share group picks one member, round-robin, preferring online members.
//!
//! [`Broker::attach`] binds a connection to a session, taking over a live connection of the same
//! client id first ([MQTT-3.1.4-2]); it and the rest of a session's lifecycle (ending it,
//! wills, expiry) are in `lifecycle.rs`.
//!
//! The other parts: `subscriptions` (changes to the router and the sessions' subscription
//! lists, and their bounds), `persistence` (the session store), `restore` (sessions read back
//! at start), `overload` (the guard that disconnects the largest queues), `load` (how busy
//! the broker is), `services` (what plugins may call).

mod lifecycle;
mod load;
mod overload;
mod persistence;
mod restore;
mod route;
mod services;
mod subscriptions;
#[cfg(test)]
mod tests;

pub use load::{LoadLevel, LIGHT_MESSAGES_PER_SEC};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::codec::reason::ReasonCode;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::message::DropReason;
use crate::metrics::{self, Metrics};
use crate::plugin::PluginManager;
use crate::router::{SubscriptionKey, Trie};
use crate::session::store::{Op, Store};
use crate::session::{
    Control, Delivery, Enqueued, KickReason, Message, QueueLimits, Session, SubEntry,
};
use plugin_api::{ClientInfo, ClientView, EventView, HookPoint};
use route::Scope;

pub use crate::clock::{coarse_now_ms, now_ms, unix_ms};

/// How long a taking-over connection waits for the old one to hand its session back.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared state of one running broker.
pub struct Broker {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// Subscriptions: session id → entry, per filter. Read for every message routed, written
    /// for every (un)subscription: each thread reads through a lock of its own (see
    /// [`Broker::routes`]).
    router: ShardedLock<Trie<u64, SubEntry>>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Counters.
    pub metrics: Metrics,
    /// Counters and gauges registered by plugins.
    pub plugin_metrics: metrics::PluginMetrics,
    /// The plugins' durable key-value store (`<data_dir>/plugin_kv.redb`, opened on first use).
    pub plugin_kv: crate::plugin::kv::PluginKv,
    next_session_id: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
    /// Permits for the global connection limit; all permits back = no connection left.
    pub connection_permits: Arc<Semaphore>,
    /// Hook table and dispatch.
    pub hooks: Hooks,
    /// The plugin host.
    pub plugins: PluginManager,
    /// When this broker was created (uptime).
    pub started: std::time::Instant,
    /// Limits of every session queue, and the bytes queued broker-wide.
    pub queue_limits: Arc<QueueLimits>,
    /// The session store (`durability = "graceful"` or `"ack"`), once opened.
    pub store: std::sync::OnceLock<Arc<Store>>,
    /// The listeners as bound, once they accept clients.
    pub listeners: std::sync::OnceLock<Vec<BoundListener>>,
    accepting: AtomicBool,
    /// Delayed publishes waiting for their time ([`crate::delayed`]).
    pub delayed: crate::delayed::Delayed,
    /// Wills published without their delay are logged at most every 10 s.
    will_refusals: crate::clock::AtMostEvery,
    /// When `limits.max_total_subscription_bytes` last refused a subscription (for its log).
    subscription_refusals: crate::clock::AtMostEvery,
    /// When `limits.max_offline_queued_bytes` last dropped a message (for its log).
    offline_drops: crate::clock::AtMostEvery,
    /// Persistent sessions in the order they went offline, oldest first: the ones ended to
    /// make room at `limits.max_sessions` ([`Broker::note_offline`]).
    offline_order: Mutex<std::collections::VecDeque<overload::OfflineEntry>>,
    /// When a session was last ended to make room (for its log).
    session_evictions: crate::clock::AtMostEvery,
    /// Whether the broker is lightly loaded (for connections: [`LoadLevel`]).
    pub load: LoadLevel,
}

/// A listener as bound, for the management API.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Name from the config.
    pub name: String,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub kind: &'static str,
    /// The address bound.
    pub addr: std::net::SocketAddr,
    /// WebSocket path (ws and wss).
    pub ws_path: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

/// Outcome of [`Broker::attach`].
pub struct Attached {
    /// The session now bound to the connection.
    pub session: Arc<Session>,
    /// Whether an existing session was resumed (CONNACK session present).
    pub session_present: bool,
    /// The generation this connection holds.
    pub generation: u64,
    /// Whether an existing session was discarded (clean start).
    pub discarded: bool,
}

/// [`Broker::attach`] refused a client: `limits.max_sessions` sessions are held and its id
/// has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimitReached;

impl Broker {
    /// A broker with no sessions, no subscriptions and no plugins. `plugin_config_dir` holds
    /// the plugins' `<name>.toml` files.
    pub fn new(config: Config, plugin_config_dir: std::path::PathBuf) -> Arc<Broker> {
        let (shutdown_tx, _) = watch::channel(false);
        let permits = config.limits.max_connections;
        let config = Arc::new(config);
        Arc::new_cyclic(|weak| Broker {
            plugins: PluginManager::new(
                weak.clone() as std::sync::Weak<dyn crate::plugin::BrokerServices>,
                &config,
                plugin_config_dir,
            ),
            config: config.clone(),
            router: ShardedLock::new(Trie::new()),
            sessions: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            plugin_metrics: metrics::PluginMetrics::default(),
            plugin_kv: crate::plugin::kv::PluginKv::new(config.data_dir.join("plugin_kv.redb")),
            next_session_id: AtomicU64::new(1),
            shutdown_tx,
            connection_permits: Arc::new(Semaphore::new(permits)),
            hooks: Hooks::default(),
            started: std::time::Instant::now(),
            queue_limits: Arc::new(QueueLimits {
                max_pending_will_bytes: config.limits.max_pending_will_bytes,
                max_offline_bytes: config.limits.max_offline_queued_bytes,
                ..QueueLimits::new(
                    config.limits.max_queued_messages,
                    config.limits.max_queued_bytes,
                    config.session.queue_qos0_messages,
                )
            }),
            store: std::sync::OnceLock::new(),
            listeners: std::sync::OnceLock::new(),
            accepting: AtomicBool::new(false),
            delayed: crate::delayed::Delayed::new(),
            will_refusals: crate::clock::AtMostEvery::default(),
            subscription_refusals: crate::clock::AtMostEvery::default(),
            offline_drops: crate::clock::AtMostEvery::default(),
            offline_order: Mutex::new(std::collections::VecDeque::new()),
            session_evictions: crate::clock::AtMostEvery::default(),
            load: LoadLevel::default(),
        })
    }

    /// Runs the `message.publish` chain on `message`, then routes it. `None` when a plugin
    /// dropped it; otherwise the number of sessions it was queued for.
    pub fn publish(
        &self,
        mut message: Message,
        username: Option<&str>,
        is_will: bool,
    ) -> Option<usize> {
        if self
            .hooks
            .wants_publish(message.topic.as_str(), message.retain)
            && !self.hooks.message_publish(&mut message, username, is_will)
        {
            return None;
        }
        if let Some(published) = self.hooks.published(message.topic.as_str(), message.retain) {
            let user_properties = message.user_property_views();
            let mut view = message.view(&user_properties);
            view.username = username.map(Into::into).into();
            view.is_will = is_will;
            view.timestamp_ms = coarse_now_ms();
            published.notify(&plugin_api::MessageEventView {
                client_id: message.publisher.as_deref().unwrap_or("").into(),
                message: view,
                reason: "".into(),
            });
        }
        Some(self.route(Arc::new(message)))
    }

    /// Holds `message` back for `secs` seconds: a delayed publish ([`crate::delayed`]). With a
    /// live store it is written before this returns (the PUBACK waits for the commit).
    pub fn delay(
        &self,
        message: Message,
        username: Option<&str>,
        secs: u32,
    ) -> Result<u64, crate::delayed::Full> {
        let limits = &self.config.limits;
        let bounds = crate::delayed::Bounds {
            messages: limits.max_delayed_messages,
            bytes: limits.max_delayed_bytes,
        };
        let now = now_ms();
        let m = crate::delayed::DelayedMessage {
            id: self.delayed.next_id(),
            due_ms: now + u64::from(secs) * 1000,
            published_ms: now,
            message,
            username: username.map(str::to_owned),
        };
        let id = m.id;
        self.delayed.room_for(m.size(), bounds)?;
        // Written first: the publishing task deletes it, and must not find it missing.
        if self.queue_limits.live_store.get().is_some() {
            let value = crate::session::persist::encode_delayed(&m);
            self.store_op(Op::PutDelayed { id, value });
        }
        if let Err(full) = self.delayed.add(m, bounds) {
            self.store_op(Op::DeleteDelayed { id });
            return Err(full);
        }
        Ok(id)
    }

    /// Cancels the delayed publish `id`; true if it was waiting.
    pub fn cancel_delayed(&self, id: u64) -> bool {
        let removed = self.delayed.remove(id);
        if removed {
            self.store_op(Op::DeleteDelayed { id });
        }
        removed
    }

    /// Publishes delayed messages as they fall due, until shutdown (what still waits then is
    /// saved with the sessions).
    pub async fn run_delayed(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let wait = match self.delayed.next_due() {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.delayed.wake.notified() => {}
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return,
            }
            for m in self.delayed.take_due(now_ms()) {
                self.store_op(Op::DeleteDelayed { id: m.id });
                let expired = m
                    .message
                    .expires_at
                    .is_some_and(|t| t <= tokio::time::Instant::now());
                if expired {
                    metrics::add(&self.metrics.messages_dropped, 1);
                    continue;
                }
                self.publish(m.message, m.username.as_deref(), false);
            }
        }
    }

    /// Queues a message for one client only (host service `deliver`).
    pub fn deliver_to(
        &self,
        client_id: &str,
        message: Message,
        subscription_id: u32,
    ) -> Result<(), String> {
        let session = self
            .session(client_id)
            .ok_or_else(|| format!("no session for client {client_id:?}"))?;
        let delivery = Delivery {
            qos: message.qos,
            retain: message.retain,
            subscription_ids: (subscription_id > 0)
                .then_some(subscription_id)
                .into_iter()
                .collect(),
            message: Arc::new(message),
            seq: 0,
        };
        match session.enqueue(delivery) {
            Enqueued::Queued => Ok(()),
            refused => {
                self.count_dropped(&session, refused);
                Err(format!("queue of {client_id:?} is full"))
            }
        }
    }

    /// Ends a session now, online or offline: a connected client is kicked first (v5:
    /// DISCONNECT 0x98), then the session, its subscriptions and its queue are discarded, in
    /// the store too. Returns false when there is no such session.
    pub async fn drop_session(&self, client_id: &str) -> bool {
        if self.session(client_id).is_none() {
            return false;
        }
        self.kick(client_id).await;
        let removed = {
            let mut sessions = self.sessions.lock();
            match sessions.get(client_id) {
                Some(s) if s.control.lock().is_none() => sessions.remove(client_id),
                // A clean session ended with its kicked connection: it is gone already.
                None => return true,
                // A new connection took the session over meanwhile.
                Some(_) => None,
            }
        };
        match removed {
            Some(session) => {
                self.discard_session(&session);
                true
            }
            None => false,
        }
    }

    /// Disconnects a connected client (v5: DISCONNECT 0x98). Returns false if not connected.
    pub async fn kick(&self, client_id: &str) -> bool {
        match self.session(client_id) {
            Some(session) => self.kick_session(&session, KickReason::Kicked).await,
            None => false,
        }
    }

    /// Disconnects the connection attached to `session` for `reason` and waits (at most
    /// [`TAKEOVER_TIMEOUT`]) until it has handed the session back. False if none is attached.
    async fn kick_session(&self, session: &Session, reason: KickReason) -> bool {
        let ctrl = session.control.lock().clone();
        let Some(ctrl) = ctrl else {
            return false;
        };
        let (done, wait) = oneshot::channel();
        if ctrl.send(Control::Kick { reason, done }).is_err() {
            return false;
        }
        let _ = tokio::time::timeout(TAKEOVER_TIMEOUT, wait).await;
        true
    }

    /// Closes one client's connection for a plugin (host service `disconnect`) with MQTT 5 reason
    /// `code`, only if it is the connection that connected at `connected_at_ms` (0 = any).
    /// Returns whether such a connection was found; the close itself happens asynchronously.
    pub fn disconnect_client(
        &self,
        client_id: &str,
        connected_at_ms: u64,
        code: ReasonCode,
    ) -> bool {
        let Some(session) = self.session(client_id) else {
            return false;
        };
        let same = session
            .info
            .lock()
            .as_ref()
            .is_some_and(|i| connected_at_ms == 0 || i.connected_at_ms == connected_at_ms);
        let ctrl = session.control.lock().clone();
        let (true, Some(ctrl)) = (same, ctrl) else {
            return false;
        };
        let (done, _wait) = oneshot::channel();
        let _ = ctrl.send(Control::Kick {
            reason: KickReason::Plugin(code),
            done,
        });
        true
    }

    /// Empties the ACL cache of one client, or of all; returns how many sessions were touched.
    pub fn clean_acl_cache(&self, client_id: Option<&str>) -> usize {
        let sessions: Vec<Arc<Session>> = match client_id {
            Some(id) => self.session(id).into_iter().collect(),
            None => self.sessions.lock().values().cloned().collect(),
        };
        for s in &sessions {
            s.acl_cache.lock().clear();
        }
        sessions.len()
    }

    /// Information about a connected client.
    pub fn client_info(&self, client_id: &str) -> Option<ClientInfo> {
        self.session(client_id)
            .and_then(|s| s.info.lock().as_ref().map(|i| i.to_client_info()))
    }

    /// Fires `message.dropped` / `delivery.dropped` for a message a session's queue refused.
    fn notify_dropped(&self, client_id: &str, message: &Message, why: DropReason) {
        if !self.hooks.wants_dropped() {
            return;
        }
        let ups = message.user_property_views();
        let view = plugin_api::MessageEventView {
            client_id: client_id.into(),
            message: message.view(&ups),
            reason: why.as_str().into(),
        };
        self.hooks.dropped(&view);
    }

    /// Fires a session-level notification that has only the client id to go on.
    fn notify_session(&self, point: HookPoint, client_id: &str) {
        if !self.hooks.enabled(point) {
            return;
        }
        let client = ClientView {
            client_id: client_id.into(),
            username: None.into(),
            peer_ip: "".into(),
            peer_port: 0,
            sock_port: 0,
            listener: "".into(),
            transport: "mqtt".into(),
            proto_ver: 0,
            proto_name: "".into(),
            keep_alive: 0,
            clean_start: false,
            expiry_interval: 0,
            connected_at_ms: 0,
            cert_common_name: None.into(),
            cert_subject: None.into(),
            is_superuser: false,
        };
        self.hooks.notify(
            point,
            &EventView {
                client,
                reason: "".into(),
                reason_code: 0,
                subscription: None.into(),
            },
        );
    }

    /// A receiver that turns `true` when the broker is shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Fires a `broker.*` notification (an empty client in the event).
    pub fn notify_broker_event(&self, point: HookPoint) {
        let nobody = ClientInfo::default();
        self.hooks.notify(
            point,
            &EventView {
                client: nobody.view(),
                reason: "".into(),
                reason_code: 0,
                subscription: None.into(),
            },
        );
    }

    /// Starts a graceful shutdown: listeners stop accepting, connections close (each attached
    /// one is told on its control line; one attaching later is told by [`Broker::attach`]).
    pub fn begin_shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.shutdown_tx.send_replace(true);
        for session in self.all_sessions() {
            let control = session.control.lock().clone();
            if let Some(control) = control {
                let _ = control.send(Control::Shutdown);
            }
        }
    }

    /// Records the bound listeners and marks the broker as accepting clients (`GET /health`).
    pub fn set_accepting(&self, listeners: Vec<BoundListener>) {
        let _ = self.listeners.set(listeners);
        if !*self.shutdown_tx.borrow() {
            self.accepting.store(true, Ordering::SeqCst);
        }
    }

    /// Whether listeners accept clients: started and not shutting down.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    /// Waits until every connection has closed, at most `deadline`. Returns whether all did.
    pub async fn wait_connections_closed(&self, deadline: Duration) -> bool {
        let all = self.config.limits.max_connections as u32;
        match tokio::time::timeout(deadline, self.connection_permits.acquire_many(all)).await {
            Ok(Ok(permit)) => {
                drop(permit);
                true
            }
            _ => false,
        }
    }

    /// Every counter and gauge, with `queued_bytes` read from the queues.
    pub fn metrics_snapshot(&self) -> metrics::MetricsSnapshot {
        let mut snapshot = self.metrics.snapshot();
        snapshot.queued_bytes = self.queue_limits.total() as u64;
        snapshot.offline_queued_bytes = self.queue_limits.offline_bytes.sum() as u64;
        let will_bytes = &self.queue_limits.pending_will_bytes;
        snapshot.pending_will_bytes = will_bytes.load(Ordering::Relaxed) as u64;
        if let Some(store) = self.store.get() {
            snapshot.store_bytes = store.file_size();
            snapshot.store_commits = store.stats.commits.load(Ordering::Relaxed);
            snapshot.store_pending = store.pending();
        }
        snapshot.delayed_messages = self.delayed.len() as u64;
        snapshot.delayed_bytes = self.delayed.bytes() as u64;
        snapshot
    }

    /// True while the bytes queued for connected sessions are at or above
    /// `limits.memory_high_watermark`: connections stop reading from clients that publish.
    /// Offline sessions' queues do not count: they drain only when their clients return, so
    /// pausing publishers for them could last for ever (they have their own bound,
    /// `limits.max_offline_queued_bytes`).
    pub fn over_high_watermark(&self) -> bool {
        let mark = self.config.limits.memory_high_watermark;
        mark > 0 && self.queue_limits.online() >= mark
    }

    /// True once the bytes queued for connected sessions are below 90 % of the high-water mark
    /// again.
    pub fn below_low_watermark(&self) -> bool {
        let mark = self.config.limits.memory_high_watermark;
        mark == 0 || self.queue_limits.online() < mark / 10 * 9
    }

    /// Counts a message a session's queue refused; past `limits.max_offline_queued_bytes` also
    /// says so in the log, at most every 10 s.
    fn count_dropped(&self, session: &Session, refused: Enqueued) {
        metrics::add(&self.metrics.messages_dropped, 1);
        if refused == Enqueued::OfflineFull {
            metrics::add(&self.metrics.offline_messages_dropped, 1);
            if self.offline_drops.due(10_000) {
                tracing::warn!(
                    client_id = %session.client_id,
                    offline_queued_bytes = self.queue_limits.offline_bytes.sum(),
                    "limits.max_offline_queued_bytes reached: messages for offline sessions are dropped"
                );
            }
        }
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Looks up a session by client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Routes a message to every matching subscription. Returns the number of sessions it was
    /// queued for.
    pub fn route(&self, message: Arc<Message>) -> usize {
        self.route_in(message, Scope::All)
    }

    /// Routes a message another node published (host service `deliver_remote`): to the
    /// plain subscriptions if `plain`, and to one member of each local group in `shared`.
    /// `message.published` fires with reason `remote`; the publish chain does not run.
    pub fn publish_remote(
        &self,
        message: Message,
        plain: bool,
        shared: &[SubscriptionKey],
    ) -> usize {
        if let Some(published) = self.hooks.published(message.topic.as_str(), message.retain) {
            let user_properties = message.user_property_views();
            let mut view = message.view(&user_properties);
            view.timestamp_ms = coarse_now_ms();
            published.notify(&plugin_api::MessageEventView {
                client_id: message.publisher.as_deref().unwrap_or("").into(),
                message: view,
                reason: "remote".into(),
            });
        }
        self.route_in(Arc::new(message), Scope::Remote { plain, shared })
    }
}

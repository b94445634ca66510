//! Sessions: the state MQTT keeps per client identifier, across connections.
//!
//! A [`Session`] outlives connections: it is created by the first CONNECT of a client id, is
//! attached to at most one connection at a time, and ends at disconnect (expiry interval 0), at
//! expiry, or when a clean-start CONNECT replaces it. Its parts:
//! * the **queue** of deliveries ([`Session::enqueue`]): filled by publishers (any task, under
//!   the per-session lock only), drained in batches by the attached connection up to its inflight
//!   window. Offline, it simply is not drained. It is bounded by `limits.max_queued_messages`
//!   and, in bytes, by `limits.max_queued_bytes` ([`Delivery::size`]); when either is reached
//!   the *new* message is dropped and counted in `messages_dropped` (the oldest messages are
//!   the ones the subscriber expects first, so they are kept). Every queued byte is also
//!   counted broker-wide in [`QueueLimits::total_bytes`]. The bytes queued for sessions with a
//!   connection (which drain) are what the connections compare with
//!   `limits.memory_high_watermark` to stop reading from publishers (back-pressure). The bytes
//!   queued for offline sessions ([`QueueLimits::offline_bytes`]) do not drain until their
//!   clients return, so they never pause publishers: they are bounded on their own by
//!   `limits.max_offline_queued_bytes`, past which messages for offline sessions are dropped;
//! * the **parked** state ([`Parked`]): unacknowledged outgoing messages, QoS 2 packet ids
//!   received but not yet released, and a delayed will. The connection owns these while attached
//!   and hands them back when it ends, so a resumed session redelivers with DUP set;
//! * its **subscriptions**, mirrored in the router's trie.
//!
//! [`protocol`] holds the session's protocol rules without I/O (negotiation, QoS state, topic
//! aliases, time limits) and [`protocol::machine`], the per-connection state machine built on
//! them; [`crate::connection::serve`] runs one network connection from CONNECT to close around
//! it.
//!
//! Lock order: registry → router → session locks; of a session's locks only `control` →
//! `parked` are ever held together. None is held across `.await`.

pub use crate::message::Message;
pub use accounting::{QueueLimits, ShardedGauge, WillCharge};
pub use acl_cache::AclCache;
pub use control::{
    control_line, Control, ControlLine, ControlReceiver, ControlSender, DisconnectReason,
    KickReason,
};
pub use identity::Identity;
pub use subscriptions::{key_bytes, Subscription, Subscriptions};

mod accounting;
mod acl_cache;
mod control;
mod identity;
pub mod persist;
pub mod protocol;
pub mod store;
mod subscriptions;

/// Subscription options as plugins see them.
pub fn sub_options(o: &crate::codec::SubscriptionOptions) -> plugin_api::SubOptions {
    plugin_api::SubOptions {
        qos: o.qos as u8,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: o.retain_handling as u8,
    }
}

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::{PacketId, QoS, SubscriptionOptions};

/// One message on its way to one session, with what the matching subscriptions decided.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS to deliver with: min(message QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag to set on delivery.
    pub retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Its key in the session store (`durability = "ack"`); 0 when it is not stored.
    pub seq: u64,
}

/// What one queued delivery is charged against the queue limits beyond its payload, topic and
/// properties: the message record (with its reference counts), the topic's allocation header
/// and the queue slot. About 190 bytes on 64-bit targets.
pub const DELIVERY_OVERHEAD: usize =
    std::mem::size_of::<Message>() + std::mem::size_of::<Delivery>() + 48;

impl Delivery {
    /// The bytes this delivery is charged in its session's queue (and the broker-wide total).
    /// A message shared by many sessions is charged to each: the bound stays conservative.
    pub fn size(&self) -> usize {
        DELIVERY_OVERHEAD + self.message.content_size() + self.subscription_ids.len() * 4
    }
}

/// An outgoing QoS 1 / 2 message not yet completely acknowledged.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Packet id it was sent with.
    pub packet_id: PacketId,
    /// The delivery.
    pub delivery: Delivery,
    /// QoS 2 only: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
}

/// State that survives a connection and is restored when the session resumes.
#[derive(Debug, Default)]
pub struct Parked {
    /// Outgoing messages awaiting acknowledgement, in send order.
    pub outgoing: VecDeque<Outgoing>,
    /// Incoming QoS 2 packet ids received but not yet released by PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// The last packet id allocated.
    pub last_packet_id: u16,
    /// A will waiting for its delay interval.
    pub pending_will: Option<Box<PendingWill>>,
}

/// A will waiting for its delay interval (or the end of the session, whichever comes first).
#[derive(Debug)]
pub struct PendingWill {
    /// The will message.
    pub message: Message,
    /// The connection generation it belongs to; a reconnect cancels it.
    pub generation: u64,
    /// When it is due.
    pub due: Instant,
    /// What it holds of `limits.max_pending_will_bytes`, given back when it goes.
    pub charge: WillCharge,
}

/// What the router stores for each subscription.
#[derive(Debug, Clone)]
pub struct SubEntry {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// Subscription options.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<u32>,
}

struct Queue {
    /// Deliveries with their [`Delivery::size`], computed once.
    items: VecDeque<(Delivery, usize)>,
    /// Sum of the items' [`Delivery::size`].
    bytes: usize,
    /// Sum of the [`Delivery::size`] of QoS 1 / 2 deliveries taken from the queue and not yet
    /// acknowledged (in flight, or parked with the session).
    held: usize,
}

impl Queue {
    /// Everything charged to the session: queued and held.
    fn charged(&self) -> usize {
        self.bytes + self.held
    }
}

/// The shared part of a session.
pub struct Session {
    /// Unique id of this session object (never reused).
    pub id: u64,
    /// The client identifier.
    pub client_id: Arc<str>,
    /// Incremented each time a connection attaches; timers compare it to know whether the
    /// session was resumed meanwhile.
    pub generation: AtomicU64,
    online: AtomicBool,
    /// Set when the session ends ([`Session::end`]): a connection still running on it (one
    /// being taken over by a clean start) may neither subscribe it again nor queue into it.
    ended: AtomicBool,
    queue: Mutex<Queue>,
    notify: Notify,
    limits: Arc<QueueLimits>,
    /// Subscriptions by their share group and filter.
    pub subscriptions: Mutex<Subscriptions>,
    /// State parked while no connection is attached.
    /// Boxed and only while there is something parked: a session with a connection attached
    /// holds none (64 bytes less in every session).
    pub parked: Mutex<Option<Box<Parked>>>,
    /// Control channel of the attached connection.
    pub control: Mutex<Option<ControlSender>>,
    /// Session expiry interval in force, seconds.
    pub expiry_interval: AtomicU32,
    /// The connected client as plugins see it (None while offline).
    pub info: Mutex<Option<Arc<Identity>>>,
    /// ACL results of the current connection.
    pub acl_cache: Mutex<AclCache>,
    /// When the last connection detached, in milliseconds since the Unix epoch (0 while
    /// online): the start of session expiry. See [`Session::offline_since`].
    offline_since_ms: AtomicU64,
    /// The last sequence number given to a stored delivery.
    next_seq: AtomicU64,
    /// Its record was written to the live store (so its end must delete it there).
    pub in_store: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// How many sessions this thread has queued into while their queue was empty, waking
    /// their connection: see [`woken_here`].
    static WOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has woken a connection by queuing into its empty queue (a
/// running count; compare two readings). The runtime runs a task woken from one of its
/// workers on that worker, right after the task that woke it: a connection that sees it woke
/// another can let it write first (see the connection's `act`).
pub fn woken_here() -> u64 {
    WOKEN.with(std::cell::Cell::get)
}

/// Result of [`Session::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued for delivery.
    Queued,
    /// Dropped: the queue is full, or QoS 0 for an offline session that does not queue QoS 0.
    Dropped,
    /// Dropped: the session is offline and the queues of all offline sessions together hold
    /// `limits.max_offline_queued_bytes`.
    OfflineFull,
}

impl Session {
    /// A new, offline session.
    pub fn new(id: u64, client_id: Arc<str>, limits: Arc<QueueLimits>) -> Self {
        Session {
            id,
            client_id,
            generation: AtomicU64::new(0),
            online: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                held: 0,
            }),
            notify: Notify::new(),
            limits,
            subscriptions: Mutex::new(Subscriptions::default()),
            parked: Mutex::new(None),
            control: Mutex::new(None),
            expiry_interval: AtomicU32::new(0),
            info: Mutex::new(None),
            acl_cache: Mutex::new(AclCache::default()),
            offline_since_ms: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            in_store: AtomicBool::new(false),
        }
    }

    /// True while a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Marks the session ended: nothing is queued into it from now on, nothing about it goes to
    /// the store (a new session may have its client id there), and `Broker::add_subscription`
    /// refuses it (the broker calls this before it takes the session's subscriptions out of
    /// the router).
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// True once the session has ended (see [`Session::end`]).
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// When the last connection detached (`None` while online): the start of session expiry.
    pub fn offline_since(&self) -> Option<std::time::SystemTime> {
        match self.offline_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
        }
    }

    /// Sets when the session went offline (millisecond precision; `None`: online).
    pub(crate) fn set_offline_since(&self, at: Option<std::time::SystemTime>) {
        let ms = at.map_or(0, |t| {
            t.duration_since(std::time::UNIX_EPOCH).map_or(1, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            })
        });
        self.offline_since_ms.store(ms, Ordering::Relaxed);
    }

    /// Messages a detached connection left awaiting acknowledgement.
    pub fn parked_inflight(&self) -> usize {
        self.parked.lock().as_ref().map_or(0, |p| p.outgoing.len())
    }

    pub(crate) fn set_online(&self, online: bool) {
        {
            // Under the queue lock: what is queued moves between the online and offline totals
            // with the flag, so no enqueue or drain counts it on the wrong side.
            let q = self.queue.lock();
            if self.online.swap(online, Ordering::AcqRel) != online {
                if online {
                    self.limits.offline_bytes.sub(q.charged());
                } else {
                    self.limits.offline_bytes.add(q.charged());
                }
            }
        }
        self.set_offline_since((!online).then(std::time::SystemTime::now));
        if online {
            self.notify.notify_one();
        }
    }

    /// True when the session outlives its connection (session expiry > 0).
    pub fn is_persistent(&self) -> bool {
        self.expiry_interval.load(Ordering::Relaxed) > 0
    }

    /// The live session store, if this session's changes are written as they happen.
    pub fn live_store(&self) -> Option<&Arc<store::Store>> {
        self.limits
            .live_store
            .get()
            .filter(|_| self.is_persistent() && !self.has_ended())
    }

    /// Queues a delivery and wakes the attached connection if the queue was empty. With a live
    /// store a QoS 1 / 2 delivery for a persistent session is also submitted to it (under the
    /// queue lock, so that its removal can never be submitted before it).
    pub fn enqueue(&self, mut delivery: Delivery) -> Enqueued {
        let limits = &*self.limits;
        if delivery.qos == QoS::AtMostOnce && !limits.queue_qos0_offline && !self.is_online() {
            return Enqueued::Dropped;
        }
        let size = delivery.size();
        let store = self
            .live_store()
            .filter(|_| delivery.qos != QoS::AtMostOnce);
        let encoded = store.map(|_| persist::encode_delivery(&delivery));
        let was_empty = {
            let mut q = self.queue.lock();
            if q.items.len() >= limits.max_messages || q.charged() + size > limits.max_bytes {
                return Enqueued::Dropped;
            }
            if self.has_ended() {
                // Its queue was emptied for good: what came in now would be charged forever.
                return Enqueued::Dropped;
            }
            let online = self.online.load(Ordering::Acquire);
            if !online
                && limits.max_offline_bytes > 0
                && limits.offline_bytes.sum() + size > limits.max_offline_bytes
            {
                return Enqueued::OfflineFull;
            }
            if let (Some(store), Some(value)) = (store, encoded) {
                delivery.seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
                store.submit(store::Op::PutMessage {
                    client_id: self.client_id.clone(),
                    seq: delivery.seq,
                    value,
                });
            }
            q.items.push_back((delivery, size));
            q.bytes += size;
            limits.charge(size, online);
            q.items.len() == 1
        };
        if was_empty {
            self.notify.notify_one();
            WOKEN.with(|w| w.set(w.get().wrapping_add(1)));
        }
        Enqueued::Queued
    }

    /// Queues a delivery read back from the store, as it is (no limit, no store write).
    pub(crate) fn restore_queued(&self, delivery: Delivery) {
        let size = delivery.size();
        let mut q = self.queue.lock();
        q.items.push_back((delivery, size));
        q.bytes += size;
        self.limits.charge(size, self.is_online());
    }

    /// Continues numbering stored deliveries after `last`; the session is in the store.
    pub(crate) fn restore_seq(&self, last: u64) {
        self.next_seq.fetch_max(last, Ordering::Relaxed);
        self.in_store.store(true, Ordering::Relaxed);
    }

    /// Moves deliveries from the queue into `out`, preserving order: at most `max_qos_gt0` of
    /// QoS > 0 (the inflight window's room), and — once at least one is taken — no more than
    /// `max_bytes` in all, so a slow reader's write buffer stays bounded.
    ///
    /// A QoS 0 delivery's bytes are given back here; a QoS 1 / 2 one stays charged until it
    /// leaves the inflight window ([`Session::release_held`]), so what a client leaves
    /// unacknowledged counts against its queue's byte limit and the broker-wide totals.
    ///
    /// `released`: bytes of QoS 1 / 2 deliveries that left the inflight window meanwhile
    /// ([`Session::release_held`]), given back under the same lock.
    pub(crate) fn drain(
        &self,
        out: &mut Vec<Delivery>,
        max_qos_gt0: usize,
        max_bytes: usize,
        released: usize,
    ) {
        let (mut taken, mut held) = (0, 0);
        let mut q = self.queue.lock();
        let mut budget = max_qos_gt0;
        while let Some((front, size)) = q.items.front() {
            if front.qos != QoS::AtMostOnce {
                if budget == 0 {
                    break;
                }
                budget -= 1;
            }
            if taken > 0 && taken + size > max_bytes {
                break;
            }
            if let Some((d, size)) = q.items.pop_front() {
                taken += size;
                if d.qos != QoS::AtMostOnce {
                    held += size;
                }
                out.push(d);
            }
        }
        // Never below nothing: a session emptied meanwhile was given back everything.
        let released = released.min(q.held);
        q.bytes -= taken;
        q.held = q.held - released + held;
        let freed = taken - held + released;
        if freed > 0 {
            self.limits.release(freed, self.is_online());
        }
    }

    /// Gives back `n` bytes of QoS 1 / 2 deliveries that left the inflight window
    /// (acknowledged, refused or dropped). Never below nothing: a session emptied meanwhile
    /// ([`Session::clear_queue`]) was already given back everything.
    pub(crate) fn release_held(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut q = self.queue.lock();
        let n = n.min(q.held);
        q.held -= n;
        self.limits.release(n, self.is_online());
    }

    /// Charges `n` bytes of QoS 1 / 2 deliveries read back from the store as in flight.
    pub(crate) fn restore_held(&self, n: usize) {
        let mut q = self.queue.lock();
        q.held += n;
        self.limits.charge(n, self.is_online());
    }

    /// True when its queue takes no more messages (`limits.max_queued_messages` or
    /// `max_queued_bytes` reached): a shared subscription passes the message to another member.
    pub fn queue_full(&self) -> bool {
        let q = self.queue.lock();
        q.items.len() >= self.limits.max_messages || q.charged() >= self.limits.max_bytes
    }

    /// True when deliveries are waiting.
    pub fn has_queued(&self) -> bool {
        !self.queue.lock().items.is_empty()
    }

    /// A copy of the queued deliveries, in order.
    pub fn queued_snapshot(&self) -> Vec<Delivery> {
        self.queue
            .lock()
            .items
            .iter()
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Number of queued deliveries.
    pub fn queued_len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Bytes held for the session: queued, and QoS 1 / 2 in flight (the sum of
    /// [`Delivery::size`]).
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().charged()
    }

    /// Empties the queue and returns what it held, oldest first (what is in flight stays, and
    /// stays charged).
    pub(crate) fn take_queued(&self) -> Vec<Delivery> {
        let mut q = self.queue.lock();
        let freed = std::mem::take(&mut q.bytes);
        self.limits.release(freed, self.is_online());
        q.items.drain(..).map(|(d, _)| d).collect()
    }

    /// Empties the queue of an ended session and gives back everything charged to it.
    pub(crate) fn clear_queue(&self) {
        let mut q = self.queue.lock();
        q.items.clear();
        let freed = std::mem::take(&mut q.bytes) + std::mem::take(&mut q.held);
        self.limits.release(freed, self.is_online());
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// A stored-nowhere delivery of an empty message to `t`, for the protocol unit tests.
#[cfg(test)]
pub(crate) fn test_delivery(qos: QoS) -> Delivery {
    Delivery {
        message: Arc::new(Message {
            topic: crate::router::TopicName::new("t").expect("valid topic"),
            payload: bytes::Bytes::new(),
            qos,
            retain: false,
            properties: crate::codec::Properties::default(),
            publisher: None,
            expires_at: None,
        }),
        qos,
        retain: false,
        subscription_ids: Vec::new(),
        seq: 0,
    }
}

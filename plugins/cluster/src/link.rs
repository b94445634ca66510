//! The NATS link: one connection per node, its subscriptions, the messages out and in, and
//! the JetStream key-value buckets (client ids, retained messages, membership).
//!
//! Everything runs on the plugin's runtime. Local service never waits for any of it: the
//! hooks only put work into channels, and what cannot be queued is dropped and counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use plugin_api::{RString, RVec};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::envelope::Envelope;
use crate::subject::{filter_subjects, subject_topic, token, topic_subject};
use crate::{split_shared, Command, LocalClient, Outbound, Shared};

/// The link as `cluster status` shows it.
#[derive(Debug, Default, Clone)]
pub struct LinkStatus {
    /// Connected to a NATS server now.
    pub connected: bool,
    /// The last event or error the client reported.
    pub last_event: String,
    /// The key-value buckets are open (JetStream answers).
    pub jetstream: bool,
}

/// A random 64-bit id (this node's id in envelopes).
pub fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Ids of recent messages routed here through plain subscriptions: NATS delivers a message
/// once per matching subscription of the connection (`a/+` and `a/#` both match `a/b`), the
/// router must see it once.
struct Recent {
    seen: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
}

impl Recent {
    const CAPACITY: usize = 65_536;

    fn new() -> Recent {
        Recent {
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `id` is offered.
    fn first(&mut self, id: (u64, u64)) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// A write to a key-value bucket.
enum KvWrite {
    Owner {
        client_id: String,
        local: LocalClient,
    },
    Retained {
        key: String,
        value: Option<bytes::Bytes>,
    },
}

/// The value of a client id's key in `mqtt_clients`.
#[derive(Serialize, Deserialize)]
struct Owner {
    client_id: String,
    node: String,
    at_ms: u64,
    /// When the owning node learnt of the connection, in microseconds (0 from a node before
    /// this field: then the revision alone orders).
    #[serde(default)]
    at_us: u64,
}

/// A node as its last heartbeat described it.
pub struct Member {
    beat: Heartbeat,
    /// When this node received that heartbeat (its own clock: no skew between nodes).
    seen: std::time::Instant,
}

/// The value of a node's key in `mqtt_nodes`.
#[derive(Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    clients: i64,
    started_ms: u64,
    at_ms: u64,
    version: String,
}

fn connect_options(shared: &Arc<Shared>) -> async_nats::ConnectOptions {
    let c = &shared.config;
    let events = shared.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("mqtt-broker {}", shared.node_name))
        .no_echo()
        .retry_on_initial_connect()
        // Back-off from 100 ms doubling to 2 s: a NATS restart is noticed within 2 s.
        .reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts.min(5)).unwrap_or(5);
            Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let shared = events.clone();
            async move {
                let mut link = shared.link.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    async_nats::Event::Connected => {
                        if !link.last_event.is_empty() {
                            shared.metrics.reconnects.inc();
                            shared.reconnected.notify_one();
                            shared.links.send_modify(|n| *n += 1);
                        }
                        link.connected = true;
                        shared.metrics.connected.set(1);
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        link.connected = false;
                        shared.metrics.connected.set(0);
                        tracing::warn!(
                            "disconnected from NATS: serving local clients only until it returns"
                        );
                    }
                    ref other => tracing::warn!(event = %other, "NATS"),
                }
                link.last_event = event.to_string();
            }
        });
    if let (Some(user), Some(password)) = (&c.user, &c.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(t) = &c.token {
        options = options.token(t.clone());
    }
    if let Some(ca) = &c.tls_ca {
        options = options.add_root_certificates(ca.into());
    }
    options
}

/// Runs the link until the plugin stops: connects (in the background, retrying), then
/// follows the hooks' commands and sends their messages.
pub async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut outbound: mpsc::Receiver<Outbound>,
) {
    let servers: Vec<async_nats::ServerAddr> = match shared
        .config
        .servers
        .iter()
        .map(|s| s.parse().map_err(|e| format!("{s}: {e}")))
        .collect::<Result<_, String>>()
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "bad NATS server address: the cluster link is off");
            return;
        }
    };
    let client = match connect_options(&shared).connect(servers).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the NATS client: the cluster link is off");
            return;
        }
    };
    let (kv_tx, kv_rx) = mpsc::channel(shared.config.outbound_queue);
    tokio::spawn(jetstream(shared.clone(), client.clone(), kv_rx));
    let recent = Arc::new(Mutex::new(Recent::new()));
    let mut subscriptions: HashMap<String, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Subscribe(key)) => {
                    let tasks = subscribe(&shared, &client, &key, &recent).await;
                    shared.subjects.fetch_add(tasks.len(), Ordering::Relaxed);
                    if let Some(old) = subscriptions.insert(key, tasks) {
                        stop(&shared, old).await;
                    }
                    // Once the server answers, it holds the interest.
                    let _ = client.flush().await;
                    shared.flushed.store(shared.subjects.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                Some(Command::Unsubscribe(key)) => {
                    stop(&shared, subscriptions.remove(&key).unwrap_or_default()).await;
                    let _ = client.flush().await;
                    shared.flushed.store(shared.subjects.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                Some(Command::Connected { client_id, local }) => {
                    if kv_tx.try_send(KvWrite::Owner { client_id, local }).is_err() {
                        tracing::debug!("client-id write dropped: the key-value queue is full");
                    }
                }
                None => return,
            },
            n = outbound.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                send(&shared, &client, &kv_tx, &mut batch).await;
            }
        }
    }
}

/// Messages taken from the hooks' queue per turn: metrics are updated once per batch.
const BATCH: usize = 256;

/// Publishes a batch of messages to NATS (or drops them while the link is down), queueing the
/// retained ones' bucket writes.
async fn send(
    shared: &Shared,
    client: &async_nats::Client,
    kv_tx: &mpsc::Sender<KvWrite>,
    batch: &mut Vec<Outbound>,
) {
    if client.connection_state() != State::Connected {
        shared.metrics.dropped.add(batch.len() as u64);
        batch.clear();
        return;
    }
    let (mut sent, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    for out in batch.drain(..) {
        if let Some((topic, keep)) = out.retained {
            let key = topic_subject(&shared.config.subject_prefix, &topic);
            let value = keep.then(|| out.payload.clone());
            if kv_tx.try_send(KvWrite::Retained { key, value }).is_err() {
                tracing::debug!(topic = %topic, "retained write dropped: the key-value queue is full");
            }
        }
        let n = out.payload.len() as u64;
        match client.publish(out.subject, out.payload).await {
            Ok(()) => {
                sent += 1;
                bytes += n;
            }
            Err(_) => dropped += 1,
        }
    }
    shared.metrics.out.add(sent);
    shared.metrics.out_bytes.add(bytes);
    if dropped > 0 {
        shared.metrics.dropped.add(dropped);
    }
}

/// Ends the forwarding tasks of one subscription; dropping a task's subscriber unsubscribes
/// it (synchronously queued, so a flush that follows comes after).
async fn stop(shared: &Shared, tasks: Vec<tokio::task::JoinHandle<()>>) {
    shared.subjects.fetch_sub(tasks.len(), Ordering::Relaxed);
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
}

/// Subscribes the subjects of one subscription (as written); one forwarding task each.
async fn subscribe(
    shared: &Arc<Shared>,
    client: &async_nats::Client,
    key: &str,
    recent: &Arc<Mutex<Recent>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let prefix = &shared.config.subject_prefix;
    let (filter, queue) = match split_shared(key) {
        Some((_, filter)) => (filter, Some(token(key))),
        None => (key, None),
    };
    let mut tasks = Vec::new();
    for subject in filter_subjects(prefix, filter) {
        let subscribed = match &queue {
            Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
            None => client.subscribe(subject.clone()).await,
        };
        match subscribed {
            Ok(sub) => {
                let group = queue.is_some().then(|| key.to_owned());
                tasks.push(tokio::spawn(forward(
                    shared.clone(),
                    sub,
                    group,
                    recent.clone(),
                )));
            }
            Err(e) => {
                tracing::error!(subject = %subject, error = %e, "NATS subscription failed: messages from other nodes for it will not arrive")
            }
        }
    }
    tasks
}

/// Routes what one NATS subscription receives: to the plain subscriptions (once per message
/// whatever number of subjects matched), or to one member of the share `group`.
async fn forward(
    shared: Arc<Shared>,
    sub: async_nats::Subscriber,
    group: Option<String>,
    recent: Arc<Mutex<Recent>>,
) {
    // What has arrived is taken in batches: metrics are updated once per batch.
    let mut batches = sub.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let (mut bytes, mut routed) = (0u64, 0u64);
        for m in batch {
            bytes += m.payload.len() as u64;
            if route(&shared, &m, group.as_deref(), &recent) {
                routed += 1;
            }
        }
        shared.metrics.in_bytes.add(bytes);
        shared.metrics.received.add(routed);
    }
}

/// Routes one message from NATS; whether it went to the router.
fn route(
    shared: &Shared,
    m: &async_nats::Message,
    group: Option<&str>,
    recent: &Mutex<Recent>,
) -> bool {
    let (topic, envelope) = match (
        subject_topic(&shared.config.subject_prefix, m.subject.as_str()),
        Envelope::decode(&m.payload),
    ) {
        (Ok(t), Ok(e)) => (t, e),
        (Err(e), _) => {
            shared.metrics.refused.inc();
            tracing::debug!(error = %e, "message from NATS refused");
            return false;
        }
        (_, Err(e)) => {
            shared.metrics.refused.inc();
            tracing::debug!(subject = %m.subject, error = %e, "message from NATS refused");
            return false;
        }
    };
    if envelope.node == shared.node_id {
        return false;
    }
    let publisher = envelope.publisher.clone();
    let routed = match group {
        None => {
            let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
            if !recent.first((envelope.node, envelope.seq)) {
                return false;
            }
            // Held while routing: a later message of the same topic taken by another
            // subscription's task cannot overtake this one.
            shared.host.deliver_remote(
                envelope.into_message(&topic),
                publisher.as_str().into(),
                true,
                RVec::new(),
            )
        }
        Some(key) => {
            if envelope.served.iter().any(|s| s == key) {
                return false;
            }
            let groups: RVec<RString> = vec![RString::from(key)].into();
            shared.host.deliver_remote(
                envelope.into_message(&topic),
                publisher.as_str().into(),
                false,
                groups,
            )
        }
    };
    match routed.into_result() {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(topic = %topic, error = %e, "a message from NATS was not routed");
            false
        }
    }
}

/// The three buckets, opened (or created) once JetStream answers.
struct Buckets {
    owners: kv::Store,
    retained: kv::Store,
    nodes: kv::Store,
}

async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The stream a key-value bucket is, created directly: the client's `create_key_value`
    // first reads account fields that nats-server 2.9 does not send.
    let config = async_nats::jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: async_nats::jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another node may have created it meanwhile.
        if js.get_key_value(name).await.is_err() {
            return Err(format!("bucket {name}: {e}"));
        }
    }
    js.get_key_value(name)
        .await
        .map_err(|e| format!("bucket {name}: {e}"))
}

async fn open(shared: &Shared, js: &async_nats::jetstream::Context) -> Result<Buckets, String> {
    let r = shared.config.kv_replicas;
    let heartbeat = Duration::from_secs(shared.config.heartbeat_secs);
    Ok(Buckets {
        owners: bucket(js, "mqtt_clients", Duration::ZERO, r).await?,
        retained: bucket(js, "mqtt_retained", Duration::ZERO, r).await?,
        nodes: bucket(js, "mqtt_nodes", heartbeat * 3, r).await?,
    })
}

/// Opens the buckets (retrying with back-off while JetStream does not answer), starts the
/// watchers and the heartbeat, then performs the hooks' writes in order.
async fn jetstream(
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut writes: mpsc::Receiver<KvWrite>,
) {
    let js = async_nats::jetstream::new(client);
    let mut delay = Duration::from_millis(250);
    let mut warned = false;
    let buckets = loop {
        match open(&shared, &js).await {
            Ok(b) => break b,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "JetStream key-value buckets not available yet (is nats-server running with -js?): client-id takeover, cluster-wide retained messages and membership wait for them; routing works meanwhile");
                    warned = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    shared
        .link
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .jetstream = true;
    tracing::info!("cluster key-value buckets open");
    let s = shared.clone();
    tokio::spawn(watch(shared.clone(), buckets.nodes.clone(), move |e| {
        on_member(&s, e)
    }));
    if shared.config.takeover {
        let s = shared.clone();
        tokio::spawn(watch(shared.clone(), buckets.owners.clone(), move |e| {
            on_owner(&s, e)
        }));
    }
    if shared.config.retained {
        let s = shared.clone();
        tokio::spawn(watch(shared.clone(), buckets.retained.clone(), move |e| {
            on_retained(&s, e)
        }));
    }
    tokio::spawn(heartbeat(shared.clone(), buckets.nodes));
    // After an outage, the clients that connected meanwhile are announced again, retrying
    // with back-off while JetStream comes back (it answers a moment after the server).
    let mut catch_up: Option<Duration> = None;
    loop {
        let retry = catch_up.unwrap_or(Duration::from_secs(3600));
        let w = tokio::select! {
            w = writes.recv() => match w {
                Some(w) => w,
                None => return,
            },
            () = shared.reconnected.notified() => {
                catch_up = announce_unannounced(&shared, &buckets.owners, None).await;
                continue;
            }
            () = tokio::time::sleep(retry), if catch_up.is_some() => {
                catch_up = announce_unannounced(&shared, &buckets.owners, catch_up).await;
                continue;
            }
        };
        let written = match w {
            KvWrite::Owner { client_id, local } => {
                put_owner(&shared, &buckets.owners, &client_id, local).await
            }
            KvWrite::Retained {
                key,
                value: Some(v),
            } => buckets
                .retained
                .put(key, v)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            KvWrite::Retained { key, value: None } => buckets
                .retained
                .delete(key)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cluster key-value write failed");
        }
    }
}

/// Writes the ownership of every local client whose entry this node has not seen in the
/// bucket (connected while NATS was away, or written just before it went). `None` when all
/// are written, or the next retry's delay (doubling from 250 ms to 2 s after `previous`).
async fn announce_unannounced(
    shared: &Shared,
    owners: &kv::Store,
    previous: Option<Duration>,
) -> Option<Duration> {
    let clients: Vec<(String, LocalClient)> = shared
        .local_clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, local)| local.announced.is_none())
        .map(|(c, local)| (c.clone(), *local))
        .collect();
    for (client_id, local) in clients {
        if let Err(e) = put_owner(shared, owners, &client_id, local).await {
            let next = previous.map_or(Duration::from_millis(250), |d| {
                (d * 2).min(Duration::from_secs(2))
            });
            tracing::debug!(error = %e, retry_in = ?next, "client-id ownership not written yet");
            return Some(next);
        }
    }
    None
}

/// Records this node as the owner of `client_id`, for its connection `local`, unless the
/// bucket already names a newer connection on another node: then this one is the older and is
/// closed instead (as a watch would have done). A compare-and-set on the entry's revision, so
/// the bucket only ever moves to a newer connection: a node announcing late (after an outage)
/// never overwrites the entry of a connection that replaced its own meanwhile, and every
/// node's watch ends on the newest.
async fn put_owner(
    shared: &Shared,
    owners: &kv::Store,
    client_id: &str,
    local: LocalClient,
) -> Result<(), String> {
    let owner = Owner {
        client_id: client_id.to_owned(),
        node: shared.node_name.clone(),
        at_ms: local.at_ms,
        at_us: local.at_us,
    };
    let value: bytes::Bytes = serde_json::to_vec(&owner).unwrap_or_default().into();
    let key = token(client_id);
    // Another writer may move the entry between the read and the write: read again then.
    for _ in 0..8 {
        let current = owners
            .entry(key.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let written = match current {
            None => owners
                .create(key.as_str(), value.clone())
                .await
                .map_err(|e| {
                    let lost = e.kind() == kv::CreateErrorKind::AlreadyExists;
                    (lost, e.to_string())
                }),
            Some(entry) => {
                if entry.operation == Operation::Put {
                    if let Ok(theirs) = serde_json::from_slice::<Owner>(&entry.value) {
                        if theirs.node == shared.node_name && theirs.at_us == local.at_us {
                            return Ok(());
                        }
                        if theirs.node != shared.node_name
                            && settle(shared, &theirs, entry.revision, Some(local))
                        {
                            return Ok(());
                        }
                    }
                }
                owners
                    .update(key.as_str(), value.clone(), entry.revision)
                    .await
                    .map_err(|e| {
                        let lost = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                        (lost, e.to_string())
                    })
            }
        };
        match written {
            Ok(revision) => {
                tracing::debug!(client_id, revision, "client-id ownership written");
                return Ok(());
            }
            Err((true, _)) => continue,
            Err((false, e)) => return Err(e),
        }
    }
    Err("the entry kept changing under concurrent writes".into())
}

/// Follows every key of `store` (its current values first), calling `each` per entry; starts
/// again after an error, the end of the stream, or the link's return (NATS restarted), with
/// back-off from 250 ms to 2 s while JetStream does not answer yet.
async fn watch(shared: Arc<Shared>, store: kv::Store, mut each: impl FnMut(kv::Entry) + Send) {
    let mut links = shared.links.subscribe();
    let mut delay = Duration::from_millis(250);
    loop {
        links.borrow_and_update();
        match store.watch_with_history(">").await {
            Ok(mut entries) => loop {
                tokio::select! {
                    entry = entries.next() => match entry {
                        Some(Ok(e)) => {
                            delay = Duration::from_millis(250);
                            each(e);
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "key-value watch interrupted");
                            break;
                        }
                        None => break,
                    },
                    changed = links.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tracing::debug!("key-value watch restarted: the link came back");
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "key-value watch failed");
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// An entry of `mqtt_clients`, in the bucket's order (revisions only grow). Another node's
/// entry for a client id this node holds announces a connection there; if it is the newer
/// one (see [`settle`]) this node closes its own. This node's own entry marks its connection
/// as announced at that revision.
fn on_owner(shared: &Shared, entry: kv::Entry) {
    if entry.operation != Operation::Put {
        return;
    }
    let Ok(owner) = serde_json::from_slice::<Owner>(&entry.value) else {
        return;
    };
    if owner.node == shared.node_name {
        let mut local = shared
            .local_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = local.get_mut(&owner.client_id) {
            if owner.at_ms == mine.at_ms {
                mine.announced = Some(entry.revision);
            }
        }
        return;
    }
    settle(shared, &owner, entry.revision, None);
}

/// Another node's `owner` entry (at `revision`) against this node's connection of the same
/// client id (`expected`, when the caller knows which): when the other is newer (see
/// [`newer_elsewhere`]), closes this node's (v5: 0x8E Session taken over) and returns true.
fn settle(shared: &Shared, owner: &Owner, revision: u64, expected: Option<LocalClient>) -> bool {
    let mut local = shared
        .local_clients
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let Some(mine) = local.get_mut(&owner.client_id) else {
        return expected.is_some();
    };
    if expected.is_some_and(|e| e.at_ms != mine.at_ms) {
        // A newer connection of this id replaced the one being announced here.
        return true;
    }
    if !newer_elsewhere(mine, owner.at_us, revision) {
        return false;
    }
    let at_ms = mine.at_ms;
    // Forgotten at once: neither a later entry nor a pending announcement closes it twice.
    local.remove(&owner.client_id);
    drop(local);
    if shared
        .host
        .disconnect(owner.client_id.as_str().into(), at_ms, 0x8E)
    {
        shared.metrics.taken_over.inc();
        tracing::info!(client_id = %owner.client_id, node = %owner.node, "client connected on another node: taken over");
    }
    true
}

/// Whether a connection announced by another node (at `their_us`, in entry `revision`) is
/// newer than `mine`. The connection times decide, in microseconds: two connects of one
/// client id are ordered by when the nodes learnt of them (clocks kept in step, as NTP does).
/// A tie, or an entry from a node that wrote no time, is decided by the bucket's order, the
/// same on every node: a later entry than this node's own announcement is newer, and a
/// connection whose announcement has not come back yet is the newer one (its entry comes
/// later, and the other node yields then).
fn newer_elsewhere(mine: &LocalClient, their_us: u64, revision: u64) -> bool {
    if their_us != 0 && their_us != mine.at_us {
        return their_us > mine.at_us;
    }
    mine.announced.is_some_and(|r| r < revision)
}

/// A retained message set or cleared on another node: handed to this node's retainer (as a
/// remote message with no subscriber of its own to go to).
fn on_retained(shared: &Shared, entry: kv::Entry) {
    let Ok(topic) = subject_topic(&shared.config.subject_prefix, &entry.key) else {
        return;
    };
    let (message, publisher) = match entry.operation {
        Operation::Put => match Envelope::decode(&entry.value) {
            Ok(e) if e.node == shared.node_id => return,
            Ok(e) => {
                let publisher = e.publisher.clone();
                let mut m = e.into_message(&topic);
                m.retain = true;
                (m, publisher)
            }
            Err(e) => {
                shared.metrics.refused.inc();
                tracing::debug!(key = %entry.key, error = %e, "retained message refused");
                return;
            }
        },
        Operation::Delete | Operation::Purge => (
            Envelope {
                retain: true,
                ..Envelope::default()
            }
            .into_message(&topic),
            String::new(),
        ),
    };
    if let Err(e) = shared
        .host
        .deliver_remote(message, publisher.as_str().into(), false, RVec::new())
        .into_result()
    {
        tracing::debug!(topic = %topic, error = %e, "retained message from another node not kept");
    }
}

/// A heartbeat (or a node's key removed): the membership `cluster status` shows. The bucket's
/// max age forgets a silent node without telling watchers, so [`status`] also leaves out a
/// node not heard from for three heartbeats.
fn on_member(shared: &Shared, entry: kv::Entry) {
    let mut members = shared.members.lock().unwrap_or_else(|e| e.into_inner());
    match entry.operation {
        Operation::Put => {
            if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&entry.value) {
                let seen = std::time::Instant::now();
                members.insert(beat.node.clone(), Member { beat, seen });
            }
        }
        Operation::Delete | Operation::Purge => {
            members.retain(|name, _| token(name) != entry.key);
        }
    }
}

/// Writes this node's heartbeat every `heartbeat_secs` (the bucket forgets it after three).
async fn heartbeat(shared: Arc<Shared>, nodes: kv::Store) {
    let period = Duration::from_secs(shared.config.heartbeat_secs);
    loop {
        let beat = Heartbeat {
            node: shared.node_name.clone(),
            clients: shared.clients.load(Ordering::Relaxed),
            started_ms: shared.started_ms,
            at_ms: shared.host.now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let value = serde_json::to_vec(&beat).unwrap_or_default();
        if let Err(e) = nodes.put(token(&shared.node_name), value.into()).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
        tokio::time::sleep(period).await;
    }
}

/// The text of `brokerctl cluster status`.
pub fn status(shared: &Shared) -> String {
    let link = shared
        .link
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = format!(
        "node {} (this node)\nNATS: {}{}\nJetStream buckets: {}\ninterest: {} subscriptions, {} NATS subjects\n",
        shared.node_name,
        if link.connected { "connected" } else { "disconnected" },
        if link.last_event.is_empty() {
            String::new()
        } else {
            format!(" (last event: {})", link.last_event)
        },
        if link.jetstream { "open" } else { "not available" },
        shared.interest_count(),
        shared.flushed.load(Ordering::Relaxed),
    );
    if !link.jetstream {
        out.push_str("nodes: unknown (no JetStream)\n");
        return out;
    }
    let ttl = Duration::from_secs(shared.config.heartbeat_secs * 3);
    let mut members = shared.members.lock().unwrap_or_else(|e| e.into_inner());
    members.retain(|_, m| m.seen.elapsed() < ttl);
    let mut beats: Vec<&Member> = members.values().collect();
    beats.sort_by(|a, b| a.beat.node.cmp(&b.beat.node));
    out.push_str(&format!("nodes: {}\n", beats.len()));
    for m in beats {
        let b = &m.beat;
        out.push_str(&format!(
            "  {}  clients {}  up {} s  heartbeat {} ms ago  version {}\n",
            b.node,
            b.clients,
            b.at_ms.saturating_sub(b.started_ms) / 1000,
            m.seen.elapsed().as_millis(),
            b.version,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_routed_once_however_many_subjects_matched() {
        let mut r = Recent::new();
        assert!(r.first((1, 1)));
        assert!(!r.first((1, 1)));
        assert!(r.first((2, 1)), "another node's sequence");
        for seq in 2..(Recent::CAPACITY as u64 + 10) {
            r.first((1, seq));
        }
        assert!(r.seen.len() <= Recent::CAPACITY, "bounded");
        assert!(r.first((1, 1)), "forgotten once far behind");
    }

    #[test]
    fn the_newer_connection_of_a_client_id_wins() {
        let mine = |at_us, announced| LocalClient {
            at_ms: at_us / 1000,
            at_us,
            announced,
        };
        // Times decide, whatever order the entries arrive in.
        assert!(newer_elsewhere(&mine(1_000, None), 1_001, 5));
        assert!(newer_elsewhere(&mine(1_000, Some(9)), 1_001, 5));
        assert!(!newer_elsewhere(&mine(1_001, Some(4)), 1_000, 5));
        // A tie, or a node that wrote no time: the bucket's order, the same on every node.
        assert!(newer_elsewhere(&mine(1_000, Some(4)), 1_000, 5));
        assert!(!newer_elsewhere(&mine(1_000, Some(6)), 1_000, 5));
        assert!(
            !newer_elsewhere(&mine(1_000, None), 1_000, 5),
            "not announced yet: this one's entry comes later"
        );
        assert!(newer_elsewhere(&mine(7_000, Some(4)), 0, 5));
        assert!(!newer_elsewhere(&mine(7_000, None), 0, 5));
    }
}

//! retainer: retained messages, in RAM or on disc, replayed on subscribe (every key in
//! `etc/plugins/retainer.toml`).
//!
//! * **Store** on `message.published`, after the whole publish chain (so what is stored is what
//!   subscribers got, whatever the priority of plugins that edit messages): a retained message replaces
//!   the topic's previous one; an empty payload deletes it (and is still forwarded). Over
//!   `max_payload_size`, over `max_retained_messages` for a new topic, or past
//!   `max_retained_bytes` (payloads and topics of all), the message is not stored but still
//!   forwarded; refusals for a limit are counted and logged at most every 10 s. Expiry: the
//!   v5 Message Expiry Interval of the message, else `expiry_interval`.
//! * **Replay** on `session.subscribed` through the broker's `deliver` service: wildcard filters
//!   are looked up in a topic trie (no scan of all messages), results in publish order, QoS =
//!   min(stored, granted), RETAIN set, v5 retain handling 0 / 1 / 2 honoured, never for shared
//!   subscriptions, `$` topics not matched by a leading wildcard. At most
//!   `max_replay_messages` per subscription (the walk stops there: a subscription to `#` costs
//!   that many steps whatever is stored), and the replay stops at the first QoS 1 or 2 message
//!   the subscriber's queue does not take.
//! * **Disc** (`storage = "disc"`): the index lives in RAM and every change is also written to a
//!   redb database by a writer task on the plugin's runtime, fed by a channel — the publish path
//!   never waits for the disc. `shutdown` (unload, reload, broker stop) waits until every change
//!   is committed, so a clean shutdown loses no acknowledged retained message. At creation the
//!   database is read back into the index.
//! * **Reload without a gap** (`plugins reload retainer`): the new instance takes the old one's
//!   place in the hook chain at once and stores what arrives from then on; the old one, once
//!   drained, closes its database (disc) or hands every message over (RAM), and the new one
//!   merges that under what it already stored. Replays asked for in between wait for the merge.
//!   So a reload loses no retained message, in RAM or on disc.
//! * `brokerctl retainer info | topics [--filter F] | clean [topic]`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use abi_stable::std_types::Tuple2;
use base64::Engine as _;
use plugin_api::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// Where retained messages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Memory only: lost at unload and restart.
    Ram,
    /// Memory plus a redb database at `path`.
    Disc,
}

/// etc/plugins/retainer.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `ram` or `disc`.
    pub storage: Storage,
    /// Database file for `disc`.
    pub path: PathBuf,
    /// Maximum number of retained messages; 0 = unlimited.
    pub max_retained_messages: usize,
    /// Maximum bytes (payloads and topics) of all retained messages; 0 = unlimited.
    pub max_retained_bytes: usize,
    /// Largest payload stored, bytes.
    pub max_payload_size: usize,
    /// Seconds a retained message lives unless the message says otherwise; 0 = forever.
    pub expiry_interval: u64,
    /// Most retained messages replayed to one new subscription; 0 = unlimited.
    pub max_replay_messages: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage: Storage::Ram,
            path: PathBuf::from("data/retainer.redb"),
            max_retained_messages: 1_000_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_payload_size: 1024 * 1024,
            expiry_interval: 0,
            max_replay_messages: 10_000,
        }
    }
}

/// The stored form of a retained message (everything but the payload, as JSON; the payload
/// follows it raw in the database value).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    topic: String,
    qos: u8,
    seq: u64,
    stored_at_ms: u64,
    /// 0 = never.
    expires_at_ms: u64,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Retained {
    meta: Meta,
    payload: Vec<u8>,
}

impl Retained {
    /// What it counts against `max_retained_bytes`: payload and topic.
    fn size(&self) -> usize {
        self.payload.len() + self.meta.topic.len()
    }

    fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + meta.len() + self.payload.len());
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Retained> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let meta = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
        Some(Retained {
            meta,
            payload: bytes.get(4 + len..)?.to_vec(),
        })
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.meta.expires_at_ms != 0 && self.meta.expires_at_ms <= now_ms
    }
}

/// Retained messages by topic, in a trie of topic levels.
///
/// Topics come from clients, so no walk over their levels recurses: lookups, removal,
/// wildcard matching and dropping nodes all loop with an explicit stack. A store holding a
/// topic of 100 000 levels loads, matches and clears without touching more stack than a
/// short one.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    message: Option<Arc<Retained>>,
}

/// Drops a subtree without recursing (the derived drop glue would recurse once per level).
impl Drop for Node {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = self.children.drain().map(|(_, c)| c).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, c)| c));
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    root: Node,
    count: usize,
    bytes: usize,
    /// While a reload's handoff is pending: the topics this instance stored or deleted, which
    /// the handed-over state must not overwrite.
    touched: Option<HashSet<String>>,
}

impl Index {
    /// Notes a change of `topic` while a handoff is pending; true if one is.
    fn touch(&mut self, topic: &str) -> bool {
        match &mut self.touched {
            Some(t) => {
                t.insert(topic.to_owned());
                true
            }
            None => false,
        }
    }

    fn get(&self, topic: &str) -> Option<&Arc<Retained>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    fn insert(&mut self, r: Arc<Retained>) {
        let mut node = &mut self.root;
        for level in r.meta.topic.split('/') {
            node = node.children.entry(level.to_owned()).or_default();
        }
        self.bytes += r.size();
        match node.message.replace(r) {
            Some(old) => self.bytes -= old.size(),
            None => self.count += 1,
        }
    }

    fn remove(&mut self, topic: &str) -> Option<Arc<Retained>> {
        // The deepest node on the path that stays whatever happens below it (the root, or a
        // node with a message or other children): the chain below it goes if it ends empty.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth > 0 && (node.children.len() > 1 || node.message.is_some()) {
                keep_depth = depth;
            }
            node = node.children.get(level)?;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        let removed = node.message.take()?;
        if node.children.is_empty() {
            let mut levels = topic.split('/');
            let mut parent = &mut self.root;
            for level in levels.by_ref().take(keep_depth) {
                parent = parent.children.get_mut(level)?;
            }
            if let Some(level) = levels.next() {
                parent.children.remove(level);
            }
        }
        self.count -= 1;
        self.bytes -= removed.size();
        Some(removed)
    }

    /// Every stored message whose topic `filter` matches, walking only matching branches, in
    /// publish order.
    fn matching(&self, filter: &str) -> Vec<Arc<Retained>> {
        self.matching_at_most(filter, usize::MAX)
    }

    /// Like [`Index::matching`], but the walk stops once it has found `limit` messages: a
    /// subscription to `#` among a million retained messages costs `limit` steps, not a
    /// million. Which ones are found first follows the tree, not publish order.
    fn matching_at_most(&self, filter: &str, limit: usize) -> Vec<Arc<Retained>> {
        let mut out = Vec::new();
        // (node, the unmatched rest of the filter or None once it is used up, at the root)
        let mut stack: Vec<(&Node, Option<&str>, bool)> = vec![(&self.root, Some(filter), true)];
        while let Some((node, rest, first)) = stack.pop() {
            if out.len() >= limit {
                break;
            }
            let Some(rest) = rest else {
                out.extend(node.message.iter().cloned());
                continue;
            };
            let (level, tail) = match rest.split_once('/') {
                Some((l, t)) => (l, Some(t)),
                None => (rest, None),
            };
            // A leading wildcard never matches a "$" topic ([MQTT-4.7.2-1]).
            let visible = |name: &str| !(first && name.starts_with('$'));
            match level {
                "#" => {
                    // "a/#" matches "a" too.
                    if !first {
                        out.extend(node.message.iter().cloned());
                    }
                    for (name, c) in &node.children {
                        if visible(name) {
                            collect_all(c, &mut out, limit);
                        }
                    }
                }
                "+" => {
                    for (name, c) in &node.children {
                        if visible(name) {
                            stack.push((c, tail, false));
                        }
                    }
                }
                literal => {
                    if let Some(c) = node.children.get(literal) {
                        stack.push((c, tail, false));
                    }
                }
            }
        }
        out.truncate(limit);
        out.sort_by_key(|r| r.meta.seq);
        out
    }

    /// Every stored message, `$` topics included, in publish order.
    fn all(&self) -> Vec<Arc<Retained>> {
        let mut out = Vec::new();
        collect_all(&self.root, &mut out, usize::MAX);
        out.sort_by_key(|r| r.meta.seq);
        out
    }
}

/// Appends every message in the subtree under `node` (in no particular order) while `out`
/// holds fewer than `limit`.
fn collect_all(node: &Node, out: &mut Vec<Arc<Retained>>, limit: usize) {
    let mut stack = vec![node];
    while let Some(node) = stack.pop() {
        if out.len() >= limit {
            return;
        }
        out.extend(node.message.iter().cloned());
        stack.extend(node.children.values());
    }
}

/// A change for the disc writer.
enum Op {
    Put(String, Vec<u8>),
    Delete(String),
    Clear,
    /// Acknowledged once everything before it is committed.
    Flush(std_mpsc::Sender<()>),
    /// Commit everything before it, close the database and stop (a reload hands over).
    Close(std_mpsc::Sender<()>),
}

/// The plugin.
pub struct Retainer {
    config: Config,
    index: Arc<Mutex<Index>>,
    seq: AtomicU64,
    host: HostRef,
    ctx: Context,
    disc: Option<mpsc::UnboundedSender<Op>>,
    /// Changes sent to the disc writer and not yet committed.
    pending: Arc<AtomicU64>,
    /// The writer's queue while a reload's handoff is pending (the database is still the old
    /// instance's): the writer starts on it at `resume`.
    queued: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    /// False until the index is complete (a handoff pending); replays wait for it.
    ready: tokio::sync::watch::Sender<bool>,
    /// Messages not stored because of a limit, and when that was last logged.
    refusals: Refusals,
}

/// Counts retained messages refused for a limit, and logs them at most every
/// [`REFUSAL_LOG_INTERVAL_MS`]: one client publishing retained messages to new topics in a
/// loop must not flood the log.
#[derive(Debug, Default)]
struct Refusals {
    count: AtomicU64,
    last_logged_ms: AtomicU64,
}

/// At most one log line per this many milliseconds about refused retained messages.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

fn open_db(path: &PathBuf) -> Result<redb::Database, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let db =
        redb::Database::create(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.open_table(TABLE).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;
    Ok(db)
}

fn load(db: &redb::Database, now_ms: u64) -> Result<(Vec<Retained>, Vec<String>), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for item in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        match Retained::decode(v.value()) {
            Some(r) if !r.expired(now_ms) => live.push(r),
            _ => expired.push(k.value().to_owned()),
        }
    }
    Ok((live, expired))
}

/// Applies changes to the database in batches until the channel closes; `pending` counts the
/// changes sent and not yet committed.
async fn writer(db: redb::Database, mut rx: mpsc::UnboundedReceiver<Op>, pending: Arc<AtomicU64>) {
    let mut batch = Vec::new();
    let mut close = None;
    while close.is_none() && rx.recv_many(&mut batch, 1024).await > 0 {
        let n = batch.len() as u64;
        let mut acks = Vec::new();
        // The commit waits for the disc: off the runtime's one worker (`block_in_place` hands
        // its other tasks to a thread of the blocking pool meanwhile).
        let result = tokio::task::block_in_place(|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                for op in batch.drain(..) {
                    match op {
                        Op::Put(k, v) => {
                            table.insert(k.as_str(), v.as_slice())?;
                        }
                        Op::Delete(k) => {
                            table.remove(k.as_str())?;
                        }
                        Op::Clear => {
                            table.retain(|_, _| false)?;
                        }
                        Op::Flush(ack) => acks.push(ack),
                        Op::Close(ack) => close = Some(ack),
                    }
                }
            }
            txn.commit()?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "retained messages could not be written to disc");
            batch.clear();
        }
        pending.fetch_sub(n, Ordering::Relaxed);
        for ack in acks {
            let _ = ack.send(());
        }
    }
    drop(db);
    if let Some(ack) = close {
        let _ = ack.send(());
    }
}

/// Inserts `live` into `index` in publish order and queues the deletion of `expired` topics;
/// returns the next sequence number.
fn merge(
    index: &mut Index,
    mut live: Vec<Retained>,
    tx: &mpsc::UnboundedSender<Op>,
    pending: &AtomicU64,
    expired: Vec<String>,
) -> u64 {
    live.sort_by_key(|r| r.meta.seq);
    let mut seq = 0;
    for r in live {
        seq = seq.max(r.meta.seq + 1);
        index.insert(Arc::new(r));
    }
    for topic in expired {
        pending.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(Op::Delete(topic));
    }
    seq
}

/// The handoff state `prepare_reload` wrote: the next sequence number and the messages.
fn decode_state(state: &[u8]) -> Result<(u64, Vec<Retained>), PluginError> {
    let bad = || PluginError::new(ErrorKind::INVALID, "malformed retainer handoff state");
    if state.is_empty() {
        return Ok((0, Vec::new()));
    }
    let next_seq = u64::from_be_bytes(
        state
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut rest = &state[8..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(
            rest.get(..4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let record = rest.get(4..4 + len).ok_or_else(bad)?;
        out.push(Retained::decode(record).ok_or_else(bad)?);
        rest = &rest[4 + len..];
    }
    Ok((next_seq, out))
}

impl Retainer {
    fn now(&self) -> u64 {
        self.host.now_ms()
    }

    /// The limit storing `new` would break, if any. Replacing a topic's message frees the old
    /// one's bytes, and is never refused for the count.
    fn over_limits(&self, index: &Index, new: &Retained) -> Option<&'static str> {
        let old = index.get(&new.meta.topic);
        let (max_count, max_bytes) = (
            self.config.max_retained_messages,
            self.config.max_retained_bytes,
        );
        if max_count > 0 && old.is_none() && index.count >= max_count {
            return Some("max_retained_messages");
        }
        let bytes = index.bytes - old.map_or(0, |o| o.size()) + new.size();
        if max_bytes > 0 && bytes > max_bytes {
            return Some("max_retained_bytes");
        }
        None
    }

    /// Counts a message not stored for `limit`, and logs it unless that was done lately.
    fn refused(&self, topic: &str, limit: &'static str) {
        let refusals = &self.refusals;
        let count = refusals.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now();
        let last = refusals.last_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now >= last + REFUSAL_LOG_INTERVAL_MS)
            && refusals
                .last_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                topic,
                limit,
                refused_so_far = count,
                "retained message not stored (still forwarded): {limit} reached"
            );
        }
    }

    /// Sends `op` (flush or close) to the disc writer and waits until it has done it.
    fn wait_writer(&self, op: fn(std_mpsc::Sender<()>) -> Op) {
        if let Some(tx) = &self.disc {
            let (ack, done) = std_mpsc::channel();
            if tx.send(op(ack)).is_ok() && done.recv_timeout(Duration::from_secs(10)).is_err() {
                tracing::error!(
                    "retained messages may not all be on disc: the writer did not finish in 10 s"
                );
            }
        }
    }

    fn persist(&self, op: Op) {
        if let Some(tx) = &self.disc {
            self.pending.fetch_add(1, Ordering::Relaxed);
            if tx.send(op).is_err() {
                tracing::error!("retainer disc writer has stopped; change kept in memory only");
            }
        }
    }

    fn store(&self, m: &MessageView<'_>) {
        let topic = m.topic.as_str();
        if m.payload.is_empty() {
            let Ok(mut index) = self.index.lock() else {
                return;
            };
            // While a handoff is pending the topic may be in the old instance's set: delete
            // it on disc whatever this instance holds.
            let handoff = index.touch(topic);
            if index.remove(topic).is_some() || handoff {
                drop(index);
                self.persist(Op::Delete(topic.to_owned()));
            }
            return;
        }
        if m.payload.len() > self.config.max_payload_size {
            tracing::warn!(
                topic,
                size = m.payload.len(),
                max = self.config.max_payload_size,
                "retained message not stored: payload over max_payload_size"
            );
            return;
        }
        let now = self.now();
        let expires_at_ms = match m.message_expiry_interval {
            // The message's own expiry wins; 0 seconds left means already expired.
            ROption::RSome(s) => now + s as u64 * 1000,
            ROption::RNone if self.config.expiry_interval > 0 => {
                now + self.config.expiry_interval * 1000
            }
            ROption::RNone => 0,
        };
        let retained = Arc::new(Retained {
            meta: Meta {
                topic: topic.to_owned(),
                qos: m.qos,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                stored_at_ms: now,
                expires_at_ms,
                payload_format_indicator: m.payload_format_indicator.into_option(),
                content_type: m.content_type.map(|s| s.to_string()).into_option(),
                response_topic: m.response_topic.map(|s| s.to_string()).into_option(),
                correlation_data: m.correlation_data.map(|s| s.to_vec()).into_option(),
                user_properties: m
                    .user_properties
                    .iter()
                    .map(|p| (p.key.to_string(), p.value.to_string()))
                    .collect(),
            },
            payload: m.payload.to_vec(),
        });
        let encoded = self.disc.as_ref().map(|_| retained.encode());
        {
            let Ok(mut index) = self.index.lock() else {
                return;
            };
            if let Some(limit) = self.over_limits(&index, &retained) {
                drop(index);
                self.refused(topic, limit);
                return;
            }
            index.touch(topic);
            index.insert(retained);
        }
        if let Some(bytes) = encoded {
            self.persist(Op::Put(topic.to_owned(), bytes));
        }
    }

    fn replay(&self, client_id: &str, sub: &SubscriptionView<'_>) {
        if sub.share_group.is_some() {
            return; // never to shared subscriptions
        }
        match sub.options.retain_handling {
            2 => return,
            1 if !sub.is_new => return,
            _ => {}
        }
        let request = Replay {
            client_id: client_id.to_owned(),
            filter: sub.filter.to_string(),
            qos: sub.options.qos,
            subscription_id: sub.subscription_id,
            limit: self.config.max_replay_messages,
        };
        if *self.ready.borrow() {
            request.run(&self.index, &self.host);
            return;
        }
        // A reload's handoff is pending: replay once the index is complete.
        let mut ready = self.ready.subscribe();
        let (index, host) = (self.index.clone(), self.host.clone());
        self.ctx.spawn(async move {
            let waited =
                tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await;
            if !matches!(waited, Ok(Ok(_))) {
                tracing::warn!(client_id = %request.client_id, "retained messages replayed before the reload's handoff completed");
            }
            request.run(&index, &host);
        });
    }
}

/// A replay of retained messages to one new subscription.
struct Replay {
    client_id: String,
    filter: String,
    qos: u8,
    subscription_id: u32,
    /// `max_replay_messages` (0 = unlimited).
    limit: usize,
}

impl Replay {
    /// Delivers what matches, at most `limit`, and stops at the first QoS 1 or 2 message the
    /// broker does not take (the subscriber's queue is full, or it is gone): the rest would be
    /// dropped one by one.
    fn run(&self, index: &Mutex<Index>, host: &HostRef) {
        let (client_id, sub_qos) = (self.client_id.as_str(), self.qos);
        let now = host.now_ms();
        let limit = if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        };
        let matches = match index.lock() {
            Ok(i) => i.matching_at_most(&self.filter, limit),
            Err(_) => return,
        };
        if matches.len() == limit {
            tracing::debug!(client_id, filter = %self.filter, limit, "retained replay capped at max_replay_messages");
        }
        for r in matches.iter().filter(|r| !r.expired(now)) {
            let meta = &r.meta;
            let message = OutgoingMessage {
                topic: meta.topic.as_str().into(),
                payload: r.payload.clone().into(),
                qos: meta.qos.min(sub_qos),
                retain: true,
                user_properties: meta
                    .user_properties
                    .iter()
                    .map(|(k, v)| Tuple2(k.as_str().into(), v.as_str().into()))
                    .collect(),
                message_expiry_interval: match meta.expires_at_ms {
                    0 => ROption::RNone,
                    at => ROption::RSome(((at.saturating_sub(now)) / 1000).max(1) as u32),
                },
                payload_format_indicator: meta.payload_format_indicator.into(),
                content_type: meta.content_type.as_deref().map(RString::from).into(),
                response_topic: meta.response_topic.as_deref().map(RString::from).into(),
                correlation_data: meta.correlation_data.clone().map(RVec::from).into(),
            };
            let qos = message.qos;
            if let RResult::RErr(e) = host.deliver(client_id.into(), message, self.subscription_id)
            {
                // A QoS 0 message is also refused by an offline session that does not queue
                // QoS 0: only a refused QoS 1 or 2 message says the queue is full (or the
                // session gone).
                tracing::debug!(client_id, topic = %meta.topic, error = %e, "retained message not delivered");
                if qos > 0 {
                    return;
                }
            }
        }
    }
}

impl Retainer {
    /// One message as the management API reads it (`--json` answers).
    fn json_of(r: &Retained, with_payload: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "topic": r.meta.topic,
            "qos": r.meta.qos,
            "stored_at_ms": r.meta.stored_at_ms,
            "payload_size": r.payload.len(),
        });
        if with_payload {
            v["payload"] = base64::engine::general_purpose::STANDARD
                .encode(&r.payload)
                .into();
        }
        v
    }

    /// The `--json` forms, for the management API: `info`, `messages [--filter F]`,
    /// `message <topic>` (`null` when there is none).
    fn answer_json(&self, args: &[&str]) -> Result<String, PluginError> {
        let now = self.now();
        let index = self
            .index
            .lock()
            .map_err(|_| PluginError::new(ErrorKind::OTHER, "index poisoned"))?;
        let value = match args {
            ["info"] => serde_json::json!({
                "messages": index.count,
                "bytes": index.bytes,
                "storage": match self.config.storage { Storage::Ram => "ram", Storage::Disc => "disc" },
            }),
            ["messages"] | ["messages", "--filter", _] => {
                let list = match args.get(2) {
                    Some(f) => index.matching(f),
                    None => index.all(),
                };
                let mut list: Vec<&Arc<Retained>> =
                    list.iter().filter(|r| !r.expired(now)).collect();
                list.sort_unstable_by(|a, b| a.meta.topic.cmp(&b.meta.topic));
                list.iter().map(|r| Self::json_of(r, false)).collect()
            }
            ["message", topic] => index
                .get(topic)
                .filter(|r| !r.expired(now))
                .map_or(serde_json::Value::Null, |r| Self::json_of(r, true)),
            _ => {
                return Err(PluginError::new(
                    ErrorKind::INVALID,
                    "usage: retainer info --json | retainer messages --json [--filter F] | retainer message --json <topic>",
                ))
            }
        };
        Ok(value.to_string())
    }

    fn answer(&self, args: &[String]) -> Result<String, PluginError> {
        if args.iter().any(|a| a == "--json") {
            let rest: Vec<&str> = args[1..]
                .iter()
                .map(String::as_str)
                .filter(|a| *a != "--json")
                .collect();
            return self.answer_json(&rest);
        }
        let usage = || {
            PluginError::new(
                ErrorKind::INVALID,
                "usage: retainer info | retainer topics [--filter F] | retainer clean [topic] (add --json to info, or use messages / message <topic> with --json)",
            )
        };
        let lock = || {
            self.index
                .lock()
                .map_err(|_| PluginError::new(ErrorKind::OTHER, "index poisoned"))
        };
        match args.get(1).map(String::as_str) {
            Some("info") => {
                let i = lock()?;
                let storage = match self.config.storage {
                    Storage::Ram => "ram".to_owned(),
                    Storage::Disc => format!(
                        "disc ({}, {} change(s) not yet written)",
                        self.config.path.display(),
                        self.pending.load(Ordering::Relaxed)
                    ),
                };
                Ok(format!(
                    "storage: {storage}\nmessages: {}\nbytes (payloads and topics): {}\nmax_retained_messages: {}\nmax_retained_bytes: {}\nmax_payload_size: {}\nexpiry_interval: {}\nnot stored for a limit: {}",
                    i.count, i.bytes, self.config.max_retained_messages, self.config.max_retained_bytes, self.config.max_payload_size, self.config.expiry_interval, self.refusals.count.load(Ordering::Relaxed)
                ))
            }
            Some("topics") => {
                let filter = match (args.get(2).map(String::as_str), args.get(3)) {
                    (None, _) => None,
                    (Some("--filter"), Some(f)) => Some(f.clone()),
                    _ => return Err(usage()),
                };
                let now = self.now();
                let i = lock()?;
                let list = match &filter {
                    Some(f) => i.matching(f),
                    None => i.all(),
                };
                let mut topics: Vec<&str> = list
                    .iter()
                    .filter(|r| !r.expired(now))
                    .map(|r| r.meta.topic.as_str())
                    .collect();
                topics.sort_unstable();
                let mut out = topics.join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!("{} retained message(s)", topics.len()));
                Ok(out)
            }
            Some("clean") => {
                let removed = match args.get(2) {
                    Some(topic) => {
                        let r = lock()?.remove(topic).map_or(0, |_| 1);
                        if r > 0 {
                            self.persist(Op::Delete(topic.clone()));
                        }
                        r
                    }
                    None => {
                        let mut i = lock()?;
                        let n = i.count;
                        *i = Index::default();
                        self.persist(Op::Clear);
                        n
                    }
                };
                Ok(format!("Removed {removed} retained message(s)."))
            }
            _ => Err(usage()),
        }
    }
}

impl Plugin for Retainer {
    const NAME: &'static str = "retainer";
    const DESCRIPTION: &'static str = "retained messages in RAM or on disc";
    /// Replays, the expiry sweep and the disc writer (whose commits leave the worker) are light.
    const RUNTIME_THREADS: usize = 1;

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        let host = ctx.host().clone();
        let resuming = ctx.resuming();
        let mut index = Index {
            touched: resuming.then(HashSet::new),
            ..Index::default()
        };
        let mut seq = 0;
        let mut disc = None;
        let mut queued = None;
        let pending = Arc::new(AtomicU64::new(0));
        if config.storage == Storage::Disc {
            let (tx, rx) = mpsc::unbounded_channel();
            if resuming {
                // The old instance still holds the database: queue until `resume`.
                queued = Some(rx);
            } else {
                let db = open_db(&config.path).map_err(PluginError::backend)?;
                let (live, expired) = load(&db, host.now_ms()).map_err(PluginError::backend)?;
                seq = merge(&mut index, live, &tx, &pending, expired);
                ctx.spawn(writer(db, rx, pending.clone()));
                tracing::info!(path = %config.path.display(), messages = index.count, "retained messages loaded from disc");
            }
            disc = Some(tx);
        }
        let index = Arc::new(Mutex::new(index));
        // Expired messages are skipped at once and removed by this sweep.
        let sweep_index = Arc::downgrade(&index);
        let sweep_host = host.clone();
        let sweep_disc = disc.clone();
        let sweep_pending = pending.clone();
        ctx.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(index) = sweep_index.upgrade() else {
                    return;
                };
                let now = sweep_host.now_ms();
                let Ok(mut i) = index.lock() else { return };
                let expired: Vec<String> = i
                    .all()
                    .iter()
                    .filter(|r| r.expired(now))
                    .map(|r| r.meta.topic.clone())
                    .collect();
                for t in expired {
                    i.remove(&t);
                    if let Some(tx) = &sweep_disc {
                        sweep_pending.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Op::Delete(t));
                    }
                }
            }
        });
        Ok(Retainer {
            config,
            index,
            seq: AtomicU64::new(seq),
            host,
            ctx,
            disc,
            pending,
            queued: Mutex::new(queued),
            ready: tokio::sync::watch::Sender::new(!resuming),
            refusals: Refusals::default(),
        })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![
                // After the whole publish chain: the stored copy is what subscribers get,
                // whatever the priorities of plugins that edit messages.
                HookSpec {
                    point: HookPoint::MESSAGE_PUBLISHED,
                    priority: priority::RETAINER,
                },
                HookSpec {
                    point: HookPoint::SESSION_SUBSCRIBED,
                    priority: priority::RETAINER,
                },
            ]
            .into(),
            commands: vec![CommandSpec {
                name: "retainer".into(),
                usage: "retainer info | retainer topics [--filter F] | retainer clean [topic] | retainer messages --json [--filter F] | retainer message --json <topic>"
                    .into(),
            }]
            .into(),
            // Only retained messages reach the message.published hook: ordinary traffic skips it.
            publish_filter: PublishFilter {
                retained_only: true,
                topics: Default::default(),
            },
            ..Registration::default()
        }
    }

    fn on_message_event(&self, point: HookPoint, event: &MessageEventView<'_>) {
        if point == HookPoint::MESSAGE_PUBLISHED && event.message.retain {
            self.store(&event.message);
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        if point != HookPoint::SESSION_SUBSCRIBED {
            return;
        }
        if let ROption::RSome(sub) = &event.subscription {
            self.replay(event.client.client_id.as_str(), sub);
        }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        let answer = self.answer(&args);
        async move { answer }
    }

    fn shutdown(&self) {
        // Wait until every change so far is on disc: nothing acknowledged is lost. (After a
        // handoff the writer has already stopped.)
        self.wait_writer(Op::Flush);
    }

    fn reload_handoff(&self) -> bool {
        true
    }

    fn prepare_reload(&self) -> Result<Vec<u8>, PluginError> {
        // Handoff state: the next sequence number, then (RAM) every message, each as a
        // length-prefixed record. On disc the database is the state: close it for the new
        // instance to open.
        let mut state = self.seq.load(Ordering::Relaxed).to_be_bytes().to_vec();
        if self.disc.is_some() {
            self.wait_writer(Op::Close);
            return Ok(state);
        }
        let all = self
            .index
            .lock()
            .map_err(|_| PluginError::new(ErrorKind::OTHER, "index poisoned"))?
            .all();
        for r in all {
            let record = r.encode();
            state.extend_from_slice(&(record.len() as u32).to_be_bytes());
            state.extend_from_slice(&record);
        }
        Ok(state)
    }

    fn resume(&self, state: Vec<u8>) -> Result<(), PluginError> {
        // The previous instance's messages (RAM storage) are newer than this database's
        // (written when disc storage was last used): they win, and go to disc.
        let (next_seq, handed) = decode_state(&state)?;
        let mut from_db = Vec::new();
        let mut expired = Vec::new();
        let queued = self.queued.lock().ok().and_then(|mut q| q.take());
        let db = match (queued, &self.disc) {
            (Some(rx), Some(_)) => {
                let db = open_db(&self.config.path).map_err(PluginError::backend)?;
                (from_db, expired) = load(&db, self.now()).map_err(PluginError::backend)?;
                Some((db, rx))
            }
            _ => None,
        };
        let count = {
            let mut index = self
                .index
                .lock()
                .map_err(|_| PluginError::new(ErrorKind::OTHER, "index poisoned"))?;
            let touched = index.touched.take().unwrap_or_default();
            // What this instance stored since it took over is newer than anything handed
            // over: it keeps its place, renumbered after the handed-over messages.
            let base = handed
                .iter()
                .chain(&from_db)
                .map(|r| r.meta.seq + 1)
                .fold(next_seq, u64::max);
            let keep = |r: &Retained| !touched.contains(&r.meta.topic);
            let handed: Vec<Retained> = handed.into_iter().filter(keep).collect();
            let from_db: Vec<Retained> = from_db.into_iter().filter(keep).collect();
            expired.retain(|t| !touched.contains(t));
            for topic in &touched {
                if let Some(mine) = index.get(topic).cloned() {
                    let mut r = Retained::clone(&mine);
                    r.meta.seq += base;
                    if let Some(tx) = &self.disc {
                        self.pending.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Op::Put(topic.clone(), r.encode()));
                    }
                    index.insert(Arc::new(r));
                }
            }
            self.seq.fetch_add(base, Ordering::Relaxed);
            let tx = self
                .disc
                .clone()
                .unwrap_or_else(|| mpsc::unbounded_channel().0);
            merge(&mut index, from_db, &tx, &self.pending, expired);
            for r in &handed {
                if self.disc.is_some() {
                    self.pending.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(Op::Put(r.meta.topic.clone(), r.encode()));
                }
            }
            merge(&mut index, handed, &tx, &self.pending, Vec::new());
            index.count
        };
        if let Some((db, rx)) = db {
            self.ctx.spawn(writer(db, rx, self.pending.clone()));
        }
        self.ready.send_replace(true);
        tracing::info!(
            messages = count,
            "retained messages taken over from the previous instance"
        );
        Ok(())
    }
}

plugin_api::export_plugin!(Retainer);

#[cfg(test)]
mod tests {
    use super::*;

    fn retained(topic: &str, seq: u64) -> Arc<Retained> {
        Arc::new(Retained {
            meta: Meta {
                topic: topic.into(),
                qos: 1,
                seq,
                stored_at_ms: 0,
                expires_at_ms: 0,
                payload_format_indicator: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            },
            payload: b"p".to_vec(),
        })
    }

    #[test]
    fn index_matches_like_mqtt_filters() {
        let mut i = Index::default();
        for (n, t) in ["a/b", "a/c", "a", "a/b/c", "$SYS/x", "b"]
            .iter()
            .enumerate()
        {
            i.insert(retained(t, n as u64));
        }
        let topics = |i: &Index, f: &str| {
            i.matching(f)
                .iter()
                .map(|r| r.meta.topic.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(topics(&i, "a/+"), ["a/b", "a/c"]);
        assert_eq!(
            topics(&i, "a/#"),
            ["a/b", "a/c", "a", "a/b/c"],
            "publish order, a/# matches a"
        );
        assert_eq!(
            topics(&i, "#"),
            ["a/b", "a/c", "a", "a/b/c", "b"],
            "no $ topics"
        );
        assert_eq!(topics(&i, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&i, "+/b"), ["a/b"]);
        assert_eq!(i.count, 6);
        i.remove("a/b");
        assert_eq!(topics(&i, "a/+"), ["a/c"]);
        assert_eq!(i.count, 5);
    }

    /// A replay's walk stops at its limit, whatever the filter, and what it found comes out
    /// in publish order.
    #[test]
    fn a_capped_walk_stops_at_its_limit() {
        let mut i = Index::default();
        for n in 0..1000u64 {
            i.insert(retained(&format!("d/{}/{n}", n % 10), n));
        }
        for filter in ["#", "d/#", "d/+/#", "+/+/+"] {
            let found = i.matching_at_most(filter, 25);
            assert_eq!(found.len(), 25, "{filter}");
            assert!(found.windows(2).all(|w| w[0].meta.seq < w[1].meta.seq));
        }
        assert_eq!(i.matching_at_most("d/3/+", 1000).len(), 100);
        assert_eq!(i.matching("#").len(), 1000);
    }

    // postmortem: a retained message on a 10 000-level topic, once stored, crashed the broker
    // on every later clean, delete or deep wildcard subscribe (recursive walks), across
    // restarts.
    #[test]
    fn deep_topics_use_no_stack_per_level() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                const LEVELS: usize = 100_000;
                let topic = "a/".repeat(LEVELS - 1) + "b";
                let mut i = Index::default();
                i.insert(retained(&topic, 1));
                i.insert(retained("a/c", 2));
                let plus = "+/".repeat(LEVELS - 1) + "b";
                let topics = |i: &Index, f: &str| i.matching(f).len();
                assert_eq!(topics(&i, &plus), 1);
                assert_eq!(topics(&i, &topic), 1);
                assert_eq!(topics(&i, "#"), 2);
                assert_eq!(topics(&i, "a/#"), 2);
                assert_eq!(i.all().len(), 2);
                assert!(i.remove(&topic).is_some());
                assert_eq!(i.root.children["a"].children.len(), 1, "deep chain pruned");
                i.insert(retained(&topic, 3));
                // `clean` replaces the whole index; the old one is dropped.
                i = Index::default();
                assert_eq!(i.count, 0);
                i.insert(retained(&topic, 4));
                drop(i);
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn record_round_trip() {
        let r = retained("t/1", 9);
        assert_eq!(Retained::decode(&r.encode()).as_ref(), Some(&*r));
    }
}

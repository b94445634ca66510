//! bridge: connections to other MQTT brokers (README, "Bridging to another broker"), each
//! with topic rules in Mosquitto's form, `pattern [out|in|both [qos [local-prefix
//! remote-prefix]]]`:
//!
//! * **out**: a local message whose topic is `local-prefix` + something matching `pattern` is
//!   published on the remote broker as `remote-prefix` + that something; **in** the other way
//!   round (the bridge subscribes there to `remote-prefix` + `pattern`); **both** is both.
//!   QoS is min(the message's, the rule's); the RETAIN flag is kept (on MQTT 5 links the remote
//!   subscription asks for Retain As Published).
//! * **Outgoing messages** are taken from `message.published` (the final message, after every
//!   plugin) and queued per connection, bounded in bytes (`queue_max_bytes`): while the link is
//!   down they wait, and they are sent in order when it is back. A message that does not fit is
//!   dropped and counted. **What waits is journaled** in the plugin's key-value store on the
//!   broker's disc (a message that still waits 20 ms after it was queued, or that was queued
//!   while the link is down, is written in a batch; a batch is deleted once all of it has been
//!   handed to the MQTT client), so a crash or a kill loses at most the last 20 ms of queued
//!   messages and those in the client's in-flight window; an unload, reload or graceful stop
//!   loses nothing. The next start takes the journal up, in order.
//! * **The link** reconnects with doubling back-off (`reconnect_min_ms` … `reconnect_max_ms`)
//!   and subscribes again after every connect. Messages handed to the MQTT client and not yet
//!   acknowledged when the link drops (its in-flight window and its request channel) are
//!   resent after the reconnect, first and in order, whether or not the remote broker kept the
//!   bridge's session (see [`EventLoop::take_unacked`]).
//! * **No loops**: the bridge remembers for a while what it sent out and what it brought in (a
//!   hash of topic and payload); an incoming copy of its own message, or an outgoing copy of a
//!   message it brought in, is not forwarded again. MQTT 5 links also subscribe with No Local.
//! * `brokerctl bridge status` lists each connection's state, queue and counters;
//!   `/metrics` has `broker_plugin_bridge_<name>_connected`, `…_queue_messages`,
//!   `…_queue_bytes`, `…_forwarded_out_total`, `…_forwarded_in_total`, `…_dropped_total`.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::*;
use serde::Deserialize;

/// MQTT version of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[default]
    Mqttv311,
    /// MQTT 5.
    Mqttv5,
}

/// One `[[connection]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Name (`a-z 0-9 _`), used in metrics and `bridge status`.
    pub name: String,
    /// `host:port` of the remote broker.
    pub address: String,
    /// `mqttv311` or `mqttv5`.
    pub protocol: Protocol,
    /// Client id on the remote broker ("" = `bridge-<node>-<name>`).
    pub client_id: String,
    /// User name ("" = none).
    pub username: String,
    /// Password.
    pub password: String,
    /// Keep alive, seconds.
    pub keepalive_secs: u64,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// TLS to the remote broker.
    pub tls: bool,
    /// PEM CA certificates trusted for it ("" = the public web roots).
    pub ca_file: String,
    /// PEM client certificate, when the remote broker asks for one.
    pub cert_file: String,
    /// Its key.
    pub key_file: String,
    /// Topic rules, Mosquitto's `topic` lines without the word `topic`.
    pub topics: Vec<String>,
    /// Bytes of outgoing messages kept while the link is down.
    pub queue_max_bytes: usize,
    /// First reconnect delay, milliseconds.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub reconnect_max_ms: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            name: String::new(),
            address: String::new(),
            protocol: Protocol::Mqttv311,
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            keepalive_secs: 60,
            clean_start: true,
            tls: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            topics: Vec::new(),
            queue_max_bytes: 16 * 1024 * 1024,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// etc/plugins/bridge.toml.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The bridges.
    #[serde(rename = "connection")]
    pub connections: Vec<ConnectionConfig>,
}

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local to remote.
    Out,
    /// Remote to local.
    In,
    /// Both.
    Both,
}

/// One topic rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The pattern (a topic filter).
    pub pattern: String,
    /// Direction.
    pub direction: Direction,
    /// Highest QoS carried.
    pub qos: u8,
    /// Prefix of local topics.
    pub local_prefix: String,
    /// Prefix of remote topics.
    pub remote_prefix: String,
}

impl Rule {
    /// Parses `pattern [out|in|both [qos [local-prefix remote-prefix]]]` (Mosquitto's `topic`;
    /// `""` stands for an empty prefix).
    pub fn parse(line: &str) -> Result<Rule, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let unquote = |w: &str| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_owned()
            }
        };
        let (pattern, rest) = words
            .split_first()
            .ok_or_else(|| format!("topic rule {line:?} is empty"))?;
        let direction = match rest.first().copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => {
                return Err(format!(
                    "topic rule {line:?}: direction {other:?} is not out, in or both"
                ))
            }
        };
        let qos = match rest.get(1) {
            None => 0,
            Some(q) => q
                .parse::<u8>()
                .ok()
                .filter(|q| *q <= 2)
                .ok_or_else(|| format!("topic rule {line:?}: qos {q:?} is not 0, 1 or 2"))?,
        };
        let (local_prefix, remote_prefix) = match rest.len() {
            0..=2 => (String::new(), String::new()),
            4 => (unquote(rest[2]), unquote(rest[3])),
            _ => {
                return Err(format!(
                    "topic rule {line:?}: give both prefixes (\"\" for an empty one) or neither"
                ))
            }
        };
        let pattern = unquote(pattern);
        let filter_ok = |f: &str| {
            !f.is_empty()
                && f.split('/').enumerate().all(|(i, l)| {
                    (l == "#" && i == f.split('/').count() - 1)
                        || l == "+"
                        || !l.contains(['+', '#'])
                })
        };
        for (what, f) in [
            ("pattern", pattern.clone()),
            ("local filter", format!("{local_prefix}{pattern}")),
            ("remote filter", format!("{remote_prefix}{pattern}")),
        ] {
            if !filter_ok(&f) {
                return Err(format!(
                    "topic rule {line:?}: {what} {f:?} is not a topic filter"
                ));
            }
        }
        Ok(Rule {
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        })
    }

    fn carries_out(&self) -> bool {
        self.direction != Direction::In
    }

    fn carries_in(&self) -> bool {
        self.direction != Direction::Out
    }

    /// The local filter the rule takes messages from (out).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The remote filter the bridge subscribes to (in).
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The remote topic for a local one, if the rule carries it out.
    pub fn outbound(&self, local: &str) -> Option<String> {
        if !self.carries_out() || !topic_matches(&self.local_filter(), local) {
            return None;
        }
        let rest = local.strip_prefix(&self.local_prefix)?;
        Some(format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic for a remote one, if the rule carries it in.
    pub fn inbound(&self, remote: &str) -> Option<String> {
        if !self.carries_in() || !topic_matches(&self.remote_filter(), remote) {
            return None;
        }
        let rest = remote.strip_prefix(&self.remote_prefix)?;
        Some(format!("{}{rest}", self.local_prefix))
    }
}

/// A message on its way to the remote broker.
struct Out {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// A message waiting for the remote side.
struct Queued {
    /// Its number on this link, in queue order.
    seq: u64,
    out: Out,
    /// Written to the journal.
    journaled: bool,
}

/// Messages the bridge moved recently, by a hash of topic and payload, so their copies
/// coming back are not moved again.
#[derive(Default)]
struct Echoes {
    seen: HashMap<u64, (u32, Instant)>,
}

const ECHO_TTL: Duration = Duration::from_secs(30);

/// Most messages remembered per direction: a hard bound on the memory, whatever the rate.
const ECHO_MAX: usize = 100_000;

fn echo_key(topic: &str, payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Echoes {
    fn remember(&mut self, key: u64) {
        let now = Instant::now();
        if self.seen.len() >= ECHO_MAX {
            self.seen
                .retain(|_, (_, at)| now.duration_since(*at) < ECHO_TTL);
            if self.seen.len() >= ECHO_MAX {
                // More than ECHO_MAX moved within the TTL: forget them all rather than grow.
                self.seen.clear();
            }
        }
        let e = self.seen.entry(key).or_insert((0, now));
        e.0 += 1;
        e.1 = now;
    }

    /// True (and forgotten once) if `key` was remembered in the last [`ECHO_TTL`].
    fn take(&mut self, key: u64) -> bool {
        let Some((count, at)) = self.seen.get_mut(&key) else {
            return false;
        };
        let fresh = at.elapsed() < ECHO_TTL;
        *count -= 1;
        if *count == 0 || !fresh {
            self.seen.remove(&key);
        }
        fresh
    }
}

struct Metrics {
    connected: Gauge,
    queue_messages: Gauge,
    queue_bytes: Gauge,
    out: Counter,
    inbound: Counter,
    dropped: Counter,
}

/// One bridge connection's shared state.
struct Link {
    config: ConnectionConfig,
    client_id: String,
    rules: Vec<Rule>,
    queue: Mutex<(VecDeque<Queued>, usize)>,
    wake: tokio::sync::Notify,
    /// The number the next queued message gets.
    next_seq: AtomicU64,
    /// The number of the last message handed to the MQTT client.
    popped: AtomicU64,
    /// Wakes the journal: messages wait, or journaled ones left.
    journal_wake: tokio::sync::Notify,
    /// The journal's batches in the key-value store: key and last message number.
    chunks: Mutex<VecDeque<(String, u64)>>,
    up: AtomicBool,
    sent: Mutex<Echoes>,
    injected: Mutex<Echoes>,
    last_error: Mutex<String>,
    counts: Mutex<(u64, u64, u64)>,
    metrics: Metrics,
    host: HostRef,
}

impl Link {
    /// Queues a local message for every out rule it matches.
    fn offer(&self, m: &MessageView<'_>) {
        let topic = m.topic.as_str();
        let payload = m.payload.as_slice();
        if self
            .injected
            .lock()
            .map(|mut e| e.take(echo_key(topic, payload)))
            .unwrap_or(false)
        {
            return; // brought in by this bridge: not sent back out
        }
        for rule in &self.rules {
            let Some(remote) = rule.outbound(topic) else {
                continue;
            };
            let out = Out {
                topic: remote,
                payload: payload.to_vec(),
                qos: m.qos.min(rule.qos),
                retain: m.retain,
            };
            let size = out.topic.len() + out.payload.len();
            let Ok(mut q) = self.queue.lock() else {
                return;
            };
            if q.1 + size > self.config.queue_max_bytes {
                drop(q);
                self.count(|c| c.2 += 1);
                self.metrics.dropped.inc();
                continue;
            }
            // It will wait: behind others, or for the link.
            let waits = !q.0.is_empty() || !self.up.load(Ordering::Relaxed);
            q.1 += size;
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            q.0.push_back(Queued {
                seq,
                out,
                journaled: false,
            });
            drop(q);
            self.wake.notify_one();
            if waits {
                self.journal_wake.notify_one();
            }
            break;
        }
    }

    fn count(&self, f: impl FnOnce(&mut (u64, u64, u64))) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
    }

    /// A message from the remote broker, put into the local one.
    fn bring_in(&self, topic: &str, payload: Vec<u8>, qos: u8, retain: bool) {
        if self
            .sent
            .lock()
            .map(|mut e| e.take(echo_key(topic, &payload)))
            .unwrap_or(false)
        {
            return; // our own message coming back
        }
        for rule in &self.rules {
            let Some(local) = rule.inbound(topic) else {
                continue;
            };
            // Remembered only when an out rule could send it back.
            if self.rules.iter().any(|r| r.outbound(&local).is_some()) {
                if let Ok(mut e) = self.injected.lock() {
                    e.remember(echo_key(&local, &payload));
                }
            }
            let message = OutgoingMessage {
                topic: local.into(),
                payload: payload.into(),
                qos: qos.min(rule.qos),
                retain,
                ..OutgoingMessage::default()
            };
            if let RResult::RErr(e) = self.host.publish(message) {
                tracing::warn!(bridge = %self.config.name, error = %e, "a bridged message could not be published locally");
            }
            self.count(|c| c.1 += 1);
            self.metrics.inbound.inc();
            return;
        }
    }

    fn pop(&self) -> Option<Out> {
        let mut q = self.queue.lock().ok()?;
        let Queued { seq, out, .. } = q.0.pop_front()?;
        q.1 -= out.topic.len() + out.payload.len();
        drop(q);
        self.popped.store(seq, Ordering::Relaxed);
        if self.chunks.lock().is_ok_and(|c| !c.is_empty()) {
            self.journal_wake.notify_one();
        }
        Some(out)
    }

    /// Writes what waits in the queue and is not journaled yet as one batch, and deletes the
    /// batches whose messages have all been handed to the client.
    async fn flush_journal(&self, kv: &Kv) -> Result<(), PluginError> {
        let waiting: Vec<(u64, Vec<u8>)> = match self.queue.lock() {
            Ok(mut q) => {
                q.0.iter_mut()
                    .filter(|e| !e.journaled)
                    .map(|e| {
                        e.journaled = true;
                        let mut record = e.seq.to_be_bytes().to_vec();
                        encode_out(&e.out, &mut record);
                        (e.seq, record)
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let mut chunk = Vec::new();
        let mut first = None;
        for (i, (seq, record)) in waiting.iter().enumerate() {
            first.get_or_insert(*seq);
            chunk.extend_from_slice(record);
            if chunk.len() >= CHUNK || i + 1 == waiting.len() {
                let key = format!("wal/{}/{:020}", self.config.name, first.unwrap_or(*seq));
                kv.put(&key, std::mem::take(&mut chunk)).await?;
                if let Ok(mut c) = self.chunks.lock() {
                    c.push_back((key, *seq));
                }
                first = None;
            }
        }
        let popped = self.popped.load(Ordering::Relaxed);
        loop {
            let done = match self.chunks.lock() {
                Ok(mut c) => match c.front() {
                    Some((_, last)) if *last <= popped => c.pop_front().map(|(k, _)| k),
                    _ => None,
                },
                Err(_) => None,
            };
            let Some(key) = done else { break };
            kv.delete(&key).await?;
        }
        Ok(())
    }

    fn set_up(&self, up: bool, error: Option<String>) {
        let was = self.up.swap(up, Ordering::Relaxed);
        self.metrics.connected.set(i64::from(up));
        if up {
            if !was {
                tracing::info!(bridge = %self.config.name, address = %self.config.address, "bridge connected");
            }
            self.wake.notify_one();
        } else if let Some(e) = error {
            // What waits now waits for the link: into the journal with it.
            self.journal_wake.notify_one();
            if was {
                tracing::warn!(bridge = %self.config.name, address = %self.config.address, error = %e, "bridge link down; reconnecting with back-off");
            }
            if let Ok(mut last) = self.last_error.lock() {
                *last = e;
            }
        }
    }

    fn status(&self) -> String {
        let (messages, bytes, journaled) = self
            .queue
            .lock()
            .map(|q| (q.0.len(), q.1, q.0.iter().filter(|e| e.journaled).count()))
            .unwrap_or_default();
        let (out, inbound, dropped) = self.counts.lock().map(|c| *c).unwrap_or_default();
        let state = if self.up.load(Ordering::Relaxed) {
            "connected"
        } else {
            "disconnected"
        };
        let last_error = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        format!(
            "Bridge({}, address={}, state={state}, queued={messages} ({bytes} bytes, {journaled} journaled), out={out}, in={inbound}, dropped={dropped}, last_error={last_error:?})",
            self.config.name, self.config.address
        )
    }
}

/// What the event loop of either MQTT version reports.
enum Incoming {
    Connected,
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    },
    Other,
}

/// The client side of a link, either MQTT version.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Client {
    async fn publish(&self, o: Out) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish(o.topic, qos4(o.qos), o.retain, o.payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(o.topic, qos5(o.qos), o.retain, o.payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn subscribe(&self, rules: &[Rule]) -> Result<(), String> {
        let wanted: Vec<&Rule> = rules.iter().filter(|r| r.carries_in()).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    wanted
                        .iter()
                        .map(|r| rumqttc::SubscribeFilter::new(r.remote_filter(), qos4(r.qos))),
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe_many(wanted.iter().map(|r| {
                    let mut f =
                        rumqttc::v5::mqttbytes::v5::Filter::new(r.remote_filter(), qos5(r.qos));
                    f.nolocal = true;
                    f.preserve_retain = true;
                    f
                }))
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// What the MQTT client had sent or taken but not got acknowledged when the link dropped:
/// the in-flight window (QoS 1/2 publishes and QoS 2 releases) and the requests still in its
/// channel, in order.
enum Unacked {
    V4(VecDeque<rumqttc::Request>),
    V5(VecDeque<rumqttc::v5::Request>),
}

impl Unacked {
    fn len(&self) -> usize {
        match self {
            Unacked::V4(q) => q.len(),
            Unacked::V5(q) => q.len(),
        }
    }

    /// Appends `later` (taken at a later drop).
    fn extend(&mut self, later: Unacked) {
        match (self, later) {
            (Unacked::V4(q), Unacked::V4(l)) => q.extend(l),
            (Unacked::V5(q), Unacked::V5(l)) => q.extend(l),
            _ => {}
        }
    }
}

impl EventLoop {
    /// Takes what rumqttc set aside for a resend when the link dropped. rumqttc resends it only
    /// when the remote broker still has the session (it clears it on a CONNACK without Session
    /// Present, which a clean-start link always gets): the bridge holds it across the reconnect
    /// and gives it back with [`EventLoop::give_back`], so a clean-start link loses nothing
    /// either.
    fn take_unacked(&mut self) -> Unacked {
        match self {
            EventLoop::V4(e) => Unacked::V4(std::mem::take(&mut e.pending)),
            EventLoop::V5(e) => Unacked::V5(std::mem::take(&mut e.pending)),
        }
    }

    /// Puts `held` back in front of what the client will send next (after a CONNACK).
    fn give_back(&mut self, held: Unacked) {
        match (self, held) {
            (EventLoop::V4(e), Unacked::V4(mut q)) => {
                q.append(&mut e.pending);
                e.pending = q;
            }
            (EventLoop::V5(e), Unacked::V5(mut q)) => {
                q.append(&mut e.pending);
                e.pending = q;
            }
            _ => {}
        }
    }

    async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            EventLoop::V4(e) => match e.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => Ok(Incoming::Connected),
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Ok(Incoming::Publish {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                }),
                _ => Ok(Incoming::Other),
            },
            EventLoop::V5(e) => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                match e.poll().await.map_err(|e| e.to_string())? {
                    rumqttc::v5::Event::Incoming(Packet::ConnAck(_)) => Ok(Incoming::Connected),
                    rumqttc::v5::Event::Incoming(Packet::Publish(p)) => Ok(Incoming::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    }),
                    _ => Ok(Incoming::Other),
                }
            }
        }
    }
}

fn host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("address {address:?}: bad port"))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// The MQTT client of a link.
fn connect(link: &Link) -> Result<(Client, EventLoop), String> {
    let c = &link.config;
    let (host, port) = host_port(&c.address)?;
    let keep_alive = Duration::from_secs(c.keepalive_secs.max(5));
    let tls = if c.tls {
        let config = auth_common::tls::client_config(&c.ca_file, &c.cert_file, &c.key_file)?;
        Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ))
    } else {
        None
    };
    Ok(match c.protocol {
        Protocol::Mqttv311 => {
            let mut o = rumqttc::MqttOptions::new(&link.client_id, host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(c.clean_start);
            if !c.username.is_empty() {
                o.set_credentials(&c.username, &c.password);
            }
            if let Some(t) = tls {
                o.set_transport(t);
            }
            let (client, events) = rumqttc::AsyncClient::new(o, 64);
            (Client::V4(client), EventLoop::V4(Box::new(events)))
        }
        Protocol::Mqttv5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&link.client_id, host, port);
            o.set_keep_alive(keep_alive).set_clean_start(c.clean_start);
            if !c.username.is_empty() {
                o.set_credentials(&c.username, &c.password);
            }
            if let Some(t) = tls {
                o.set_transport(t);
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(o, 64);
            (Client::V5(client), EventLoop::V5(Box::new(events)))
        }
    })
}

/// Runs one link: its event loop (reconnecting with back-off) and its sender.
async fn run(link: Arc<Link>) {
    let (client, mut events) = match connect(&link) {
        Ok(x) => x,
        Err(e) => {
            link.set_up(false, Some(e.clone()));
            tracing::error!(bridge = %link.config.name, error = %e, "bridge cannot start");
            return;
        }
    };
    let sender = {
        let (link, client) = (link.clone(), client.clone());
        tokio::spawn(async move {
            loop {
                if !link.up.load(Ordering::Relaxed) {
                    link.wake.notified().await;
                    continue;
                }
                let Some(out) = link.pop() else {
                    link.wake.notified().await;
                    continue;
                };
                // Remembered only when an in rule could bring it back.
                if link.rules.iter().any(|r| r.inbound(&out.topic).is_some()) {
                    if let Ok(mut e) = link.sent.lock() {
                        e.remember(echo_key(&out.topic, &out.payload));
                    }
                }
                if let Err(e) = client.publish(out).await {
                    tracing::warn!(bridge = %link.config.name, error = %e, "bridge client stopped");
                    return;
                }
                link.count(|c| c.0 += 1);
                link.metrics.out.inc();
            }
        })
    };
    let min = Duration::from_millis(link.config.reconnect_min_ms.max(10));
    let max = Duration::from_millis(
        link.config
            .reconnect_max_ms
            .max(link.config.reconnect_min_ms),
    );
    let mut delay = min;
    let mut held: Option<Unacked> = None;
    loop {
        match events.poll().await {
            Ok(Incoming::Connected) => {
                delay = min;
                if let Some(held) = held.take() {
                    tracing::debug!(bridge = %link.config.name, messages = held.len(), "resending what the remote broker had not acknowledged");
                    events.give_back(held);
                }
                link.set_up(true, None);
                let (link, client) = (link.clone(), client.clone());
                tokio::spawn(async move {
                    if let Err(e) = client.subscribe(&link.rules).await {
                        tracing::warn!(bridge = %link.config.name, error = %e, "bridge could not subscribe on the remote broker");
                    }
                });
            }
            Ok(Incoming::Publish {
                topic,
                payload,
                qos,
                retain,
            }) => link.bring_in(&topic, payload, qos, retain),
            Ok(Incoming::Other) => {}
            Err(e) => {
                let unacked = events.take_unacked();
                match &mut held {
                    Some(earlier) => earlier.extend(unacked),
                    None => held = Some(unacked),
                }
                link.set_up(false, Some(e));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
        if sender.is_finished() {
            return;
        }
    }
}

/// The plugin.
pub struct Bridge {
    links: Vec<Arc<Link>>,
    kv: Kv,
    runtime: tokio::runtime::Handle,
}

/// Most bytes per saved chunk of a queue (the store takes values up to 1 MiB).
const CHUNK: usize = 512 * 1024;

/// One queued message as saved: topic length, topic, payload length, payload, QoS, RETAIN.
fn encode_out(o: &Out, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(o.topic.len() as u32).to_be_bytes());
    buf.extend_from_slice(o.topic.as_bytes());
    buf.extend_from_slice(&(o.payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&o.payload);
    buf.push(o.qos);
    buf.push(u8::from(o.retain));
}

/// The first message saved in `b` (None when cut short), and the rest of `b`.
fn decode_one(mut b: &[u8]) -> (Option<Out>, &[u8]) {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let parsed = (|| {
        let n = len(&mut b)?;
        let topic = String::from_utf8(take(&mut b, n)?.to_vec()).ok()?;
        let n = len(&mut b)?;
        let payload = take(&mut b, n)?.to_vec();
        let flags = take(&mut b, 2)?;
        Some(Out {
            topic,
            payload,
            qos: flags[0].min(2),
            retain: flags[1] != 0,
        })
    })();
    (parsed, b)
}

fn decode_outs(mut b: &[u8]) -> Vec<Out> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (parsed, rest) = decode_one(b);
        match parsed {
            Some(o) => out.push(o),
            None => break,
        }
        b = rest;
    }
    out
}

/// How long a queued message may wait before it is journaled: the journal writes batches.
const JOURNAL_DELAY: Duration = Duration::from_millis(20);

/// Keeps a link's journal: woken when messages wait or journaled ones left the queue.
async fn journal(link: Arc<Link>, kv: Kv) {
    loop {
        link.journal_wake.notified().await;
        tokio::time::sleep(JOURNAL_DELAY).await;
        if let Err(e) = link.flush_journal(&kv).await {
            tracing::warn!(bridge = %link.config.name, error = %e.message, "the bridge journal could not be written: a crash now would lose what waits");
        }
    }
}

/// One journal record: the message number, then the message.
fn decode_records(mut b: &[u8]) -> Vec<(u64, Out)> {
    let mut records = Vec::new();
    while b.len() >= 8 {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[..8]);
        b = &b[8..];
        let (outs, rest) = decode_one(b);
        let Some(out) = outs else { break };
        records.push((u64::from_be_bytes(seq), out));
        b = rest;
    }
    records
}

impl Bridge {
    /// Takes up the link's journal (and a queue saved by an older version at its stop), in
    /// order, before the link starts.
    async fn restore_queue(link: &Link, kv: &Kv) -> Result<usize, PluginError> {
        let mut restored = 0;
        for key in kv.keys(&format!("wal/{}/", link.config.name))? {
            let Some(bytes) = kv.get(&key)? else { continue };
            let records = decode_records(&bytes);
            let Some(&(last, _)) = records.last() else {
                kv.delete(&key).await?;
                continue;
            };
            restored += records.len();
            if let Ok(mut q) = link.queue.lock() {
                for (seq, out) in records {
                    q.1 += out.topic.len() + out.payload.len();
                    q.0.push_back(Queued {
                        seq,
                        out,
                        journaled: true,
                    });
                }
            }
            link.next_seq.fetch_max(last + 1, Ordering::Relaxed);
            if let Ok(mut c) = link.chunks.lock() {
                c.push_back((key, last));
            }
        }
        let legacy: Vec<String> = kv.keys(&format!("queue/{}/", link.config.name))?;
        for key in &legacy {
            if let Some(bytes) = kv.get(key)? {
                let outs = decode_outs(&bytes);
                restored += outs.len();
                if let Ok(mut q) = link.queue.lock() {
                    for out in outs {
                        q.1 += out.topic.len() + out.payload.len();
                        let seq = link.next_seq.fetch_add(1, Ordering::Relaxed);
                        q.0.push_back(Queued {
                            seq,
                            out,
                            journaled: false,
                        });
                    }
                }
            }
        }
        if !legacy.is_empty() {
            // Journaled before the old form is deleted.
            link.flush_journal(kv).await?;
            for key in &legacy {
                kv.delete(key).await?;
            }
        }
        Ok(restored)
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn parse(text: &str) -> Result<Vec<(ConnectionConfig, Vec<Rule>)>, String> {
    let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::new();
    for c in config.connections {
        if !valid_name(&c.name) {
            return Err(format!(
                "connection name {:?}: use 1-32 of a-z, 0-9 and _",
                c.name
            ));
        }
        if !names.insert(c.name.clone()) {
            return Err(format!("connection name {:?} is used twice", c.name));
        }
        host_port(&c.address).map_err(|e| format!("connection {}: {e}", c.name))?;
        if c.topics.is_empty() {
            return Err(format!("connection {}: no topics", c.name));
        }
        let rules = c
            .topics
            .iter()
            .map(|t| Rule::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("connection {}: {e}", c.name))?;
        if c.tls {
            auth_common::tls::client_config(&c.ca_file, &c.cert_file, &c.key_file)
                .map_err(|e| format!("connection {}: {e}", c.name))?;
        }
        out.push((c, rules));
    }
    Ok(out)
}

impl Plugin for Bridge {
    const NAME: &'static str = "bridge";
    const DESCRIPTION: &'static str = "MQTT bridges to other brokers";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let parsed = parse(config).map_err(PluginError::config)?;
        let node = ctx.host().node_name().to_string();
        let mut links = Vec::new();
        for (config, rules) in parsed {
            let n = &config.name;
            let metrics = Metrics {
                connected: ctx.gauge(
                    &format!("{n}_connected"),
                    "1 while the bridge is connected.",
                )?,
                queue_messages: ctx.gauge(
                    &format!("{n}_queue_messages"),
                    "Messages waiting for the remote broker.",
                )?,
                queue_bytes: ctx.gauge(
                    &format!("{n}_queue_bytes"),
                    "Bytes waiting for the remote broker.",
                )?,
                out: ctx.counter(
                    &format!("{n}_forwarded_out"),
                    "Messages sent to the remote broker.",
                )?,
                inbound: ctx.counter(
                    &format!("{n}_forwarded_in"),
                    "Messages brought in from the remote broker.",
                )?,
                dropped: ctx.counter(
                    &format!("{n}_dropped"),
                    "Outgoing messages dropped: the queue was full.",
                )?,
            };
            let client_id = if config.client_id.is_empty() {
                format!("bridge-{node}-{}", config.name)
            } else {
                config.client_id.clone()
            };
            let link = Arc::new(Link {
                client_id,
                rules,
                queue: Mutex::new((VecDeque::new(), 0)),
                wake: tokio::sync::Notify::new(),
                next_seq: AtomicU64::new(1),
                popped: AtomicU64::new(0),
                journal_wake: tokio::sync::Notify::new(),
                chunks: Mutex::new(VecDeque::new()),
                up: AtomicBool::new(false),
                sent: Mutex::new(Echoes::default()),
                injected: Mutex::new(Echoes::default()),
                last_error: Mutex::new(String::new()),
                counts: Mutex::new((0, 0, 0)),
                metrics,
                host: ctx.host().clone(),
                config,
            });
            link.metrics.connected.set(0);
            links.push(link);
        }
        // What the previous instance saved goes out first, then the links start.
        let kv = ctx.kv();
        for link in &links {
            match ctx.runtime().block_on(Bridge::restore_queue(link, &kv)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(bridge = %link.config.name, messages = n, "queued messages taken up from the last stop")
                }
                Err(e) => {
                    tracing::warn!(bridge = %link.config.name, error = %e.message, "the saved queue could not be read")
                }
            }
            ctx.spawn(journal(link.clone(), kv.clone()));
            ctx.spawn(run(link.clone()));
        }
        let gauges = links.clone();
        ctx.every(Duration::from_millis(500), move || {
            for l in &gauges {
                if let Ok(q) = l.queue.lock() {
                    l.metrics.queue_messages.set(q.0.len() as i64);
                    l.metrics.queue_bytes.set(q.1 as i64);
                }
            }
        });
        Ok(Bridge {
            links,
            kv,
            runtime: ctx.runtime().clone(),
        })
    }

    fn registration(&self) -> Registration {
        let filters: Vec<RString> = self
            .links
            .iter()
            .flat_map(|l| l.rules.iter())
            .filter(|r| r.carries_out())
            .map(|r| RString::from(r.local_filter()))
            .collect();
        let hooks = if filters.is_empty() {
            Vec::new()
        } else {
            vec![HookSpec {
                point: HookPoint::MESSAGE_PUBLISHED,
                priority: priority::LOWEST,
            }]
        };
        Registration {
            hooks: hooks.into(),
            commands: vec![CommandSpec {
                name: "bridge".into(),
                usage: "bridge status".into(),
            }]
            .into(),
            publish_filter: PublishFilter {
                retained_only: false,
                topics: filters.into(),
            },
            ..Registration::default()
        }
    }

    fn on_message_event(&self, point: HookPoint, event: &MessageEventView<'_>) {
        // A message another cluster node published is bridged by that node.
        if point != HookPoint::MESSAGE_PUBLISHED || event.reason.as_str() == "remote" {
            return;
        }
        for link in &self.links {
            link.offer(&event.message);
        }
    }

    fn shutdown(&self) {
        let (links, kv) = (self.links.clone(), self.kv.clone());
        let waiting: usize = links
            .iter()
            .map(|l| l.queue.lock().map(|q| q.0.len()).unwrap_or(0))
            .sum();
        let flushed = self.runtime.block_on(async move {
            for link in &links {
                link.flush_journal(&kv).await?;
            }
            Ok::<(), PluginError>(())
        });
        match flushed {
            Ok(()) if waiting > 0 => {
                tracing::info!(
                    messages = waiting,
                    "bridge queues journaled for the next start"
                )
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e.message, "bridge queues could not be journaled: what was not yet is lost")
            }
        }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        let answer = match args.get(1).map(String::as_str) {
            Some("status") if args.len() == 2 => Ok(self
                .links
                .iter()
                .map(|l| l.status())
                .collect::<Vec<_>>()
                .join("\n")),
            _ => Err(PluginError::new(ErrorKind::INVALID, "usage: bridge status")),
        };
        async move { answer }
    }
}

plugin_api::export_plugin!(Bridge);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_topic_rules() {
        let r = Rule::parse("sensors/# out 1 edge/ cloud/").expect("valid");
        assert_eq!(r.outbound("edge/sensors/1"), Some("cloud/sensors/1".into()));
        assert_eq!(r.outbound("sensors/1"), None);
        assert_eq!(r.inbound("cloud/sensors/1"), None, "out only");
        let r = Rule::parse("cmd/# in 2 \"\" site1/").expect("valid");
        assert_eq!(r.inbound("site1/cmd/reboot"), Some("cmd/reboot".into()));
        assert_eq!(r.remote_filter(), "site1/cmd/#");
        let r = Rule::parse("# both").expect("valid");
        assert_eq!((r.qos, r.direction), (0, Direction::Both));
        assert!(Rule::parse("a/# sideways").is_err());
        assert!(Rule::parse("a/# out 3").is_err());
        assert!(Rule::parse("a/# out 1 onlyone").is_err());
        assert!(Rule::parse("a/#/b out").is_err());
    }

    #[test]
    fn saved_queue_round_trip() {
        let outs = [
            Out {
                topic: "a/b".into(),
                payload: b"x".to_vec(),
                qos: 1,
                retain: true,
            },
            Out {
                topic: "c".into(),
                payload: Vec::new(),
                qos: 2,
                retain: false,
            },
        ];
        let mut buf = Vec::new();
        for o in &outs {
            encode_out(o, &mut buf);
        }
        let back = decode_outs(&buf);
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].topic.as_str(), back[0].qos, back[0].retain),
            ("a/b", 1, true)
        );
        assert_eq!((back[1].topic.as_str(), back[1].payload.len()), ("c", 0));
        assert_eq!(
            decode_outs(&buf[..buf.len() - 1]).len(),
            1,
            "a cut record is dropped"
        );
    }

    #[test]
    fn journal_records_round_trip_and_a_cut_one_is_dropped() {
        let mut buf = Vec::new();
        for (seq, topic) in [(7u64, "a"), (9, "b/c")] {
            buf.extend_from_slice(&seq.to_be_bytes());
            let out = Out {
                topic: topic.into(),
                payload: b"p".to_vec(),
                qos: 1,
                retain: false,
            };
            encode_out(&out, &mut buf);
        }
        let records = decode_records(&buf);
        let seqs: Vec<(u64, &str)> = records
            .iter()
            .map(|(s, o)| (*s, o.topic.as_str()))
            .collect();
        assert_eq!(seqs, [(7, "a"), (9, "b/c")]);
        assert_eq!(
            decode_records(&buf[..buf.len() - 1]).len(),
            1,
            "a cut record is dropped"
        );
    }

    #[test]
    fn echoes_are_taken_once() {
        let mut e = Echoes::default();
        let k = echo_key("a", b"x");
        assert!(!e.take(k));
        e.remember(k);
        e.remember(k);
        assert!(e.take(k) && e.take(k));
        assert!(!e.take(k));
    }

    #[test]
    fn config_errors_name_the_connection() {
        let e = parse("[[connection]]\nname = \"Cloud\"\naddress = \"h:1\"\ntopics = [\"#\"]\n")
            .expect_err("bad name");
        assert!(e.contains("Cloud"), "{e}");
        let e = parse("[[connection]]\nname = \"c\"\naddress = \"h\"\ntopics = [\"#\"]\n")
            .expect_err("no port");
        assert!(e.contains("host:port"), "{e}");
        let e = parse("[[connection]]\nname = \"c\"\naddress = \"h:1\"\ntopics = [\"# out 9\"]\n")
            .expect_err("bad qos");
        assert!(e.contains("connection c") && e.contains("qos"), "{e}");
        assert!(parse(include_str!("../../../etc/plugins/bridge.toml")).is_ok());
    }
}

//! The `cluster` plugin: brokers that behave as one, joined through NATS (docs/cluster.md).
//!
//! * **Routing by NATS interest.** Every message published on this node (after the publish
//!   chain: `message.published`) goes to NATS on the subject of its topic
//!   ([`subject::topic_subject`]) in a versioned [`envelope`]. For every distinct
//!   subscription its own clients hold, the node holds the NATS subscriptions of the filter
//!   ([`subject::filter_subjects`]), reference-counted; a shared subscription's are in a NATS
//!   queue group, so one node per group gets each message. What arrives goes to the broker's
//!   router through the host service `deliver_remote` (plugin API 3), which applies the MQTT
//!   rules (QoS, No Local, Retain As Published, subscription identifiers) as for a local
//!   message. The connection is `no_echo`: a node never gets its own messages back.
//! * **Client ids** ([`link`]): each connect is written to the JetStream key-value bucket
//!   `mqtt_clients`; a node that sees one of its clients connect elsewhere later closes it
//!   (v5: DISCONNECT 0x8E Session taken over).
//! * **Retained messages**: kept in bucket `mqtt_retained` (one key per topic); every node
//!   watches it and hands what other nodes retained to its own retainer.
//! * **Membership**: every node writes a heartbeat to `mqtt_nodes`, whose entries expire after
//!   three periods; `brokerctl cluster status` lists the nodes.
//!
//! NATS being down never stops local service: messages for NATS are dropped and counted
//! meanwhile (the local PUBACK promised local delivery only), the client reconnects with
//! back-off and restores its subscriptions, the watchers start again.

pub mod envelope;
pub mod link;
pub mod subject;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_api::{
    CommandSpec, Context, Counter, ErrorKind, EventView, Gauge, HookPoint, HookSpec, HostRef,
    MessageEventView, Plugin, PluginError, Registration,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use envelope::Envelope;

/// The plugin's configuration (`etc/plugins/cluster.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client picks one and
    /// fails over to the others.
    pub servers: Vec<String>,
    /// First token of every message subject (default `mqtt`): clusters sharing one NATS
    /// account keep apart with different prefixes.
    pub subject_prefix: String,
    /// NATS user name (with `password`).
    pub user: Option<String>,
    /// NATS password.
    pub password: Option<String>,
    /// NATS token.
    pub token: Option<String>,
    /// A PEM file of CA certificates for `tls://` servers (relative to the config directory).
    pub tls_ca: Option<String>,
    /// Seconds between membership heartbeats; a node is gone after three missed.
    pub heartbeat_secs: u64,
    /// Messages waiting for NATS before more are dropped (and counted).
    pub outbound_queue: usize,
    /// Take client ids over across nodes (bucket `mqtt_clients`).
    pub takeover: bool,
    /// Share retained messages across nodes (bucket `mqtt_retained`).
    pub retained: bool,
    /// Replicas of the key-value buckets (1 for one NATS server; 3 in a NATS cluster).
    pub kv_replicas: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: vec!["nats://127.0.0.1:4222".into()],
            subject_prefix: subject::DEFAULT_PREFIX.into(),
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            heartbeat_secs: 5,
            outbound_queue: 65_536,
            takeover: true,
            retained: true,
            kv_replicas: 1,
        }
    }
}

/// Parses and checks the configuration text.
pub fn parse_config(text: &str) -> Result<Config, String> {
    let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    if c.servers.is_empty() {
        return Err("servers: at least one NATS server URL is needed".into());
    }
    if c.subject_prefix.is_empty()
        || !c
            .subject_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "subject_prefix {:?}: one token of A-Z a-z 0-9 _ -",
            c.subject_prefix
        ));
    }
    if c.user.is_some() != c.password.is_some() {
        return Err("user and password go together".into());
    }
    if c.heartbeat_secs == 0 {
        return Err("heartbeat_secs must be at least 1".into());
    }
    if c.outbound_queue == 0 {
        return Err("outbound_queue must be at least 1".into());
    }
    if !(1..=5).contains(&c.kv_replicas) {
        return Err("kv_replicas must be 1 to 5".into());
    }
    Ok(c)
}

/// The plugin's metrics.
pub struct Metrics {
    /// Messages sent to NATS.
    pub out: Counter,
    /// Their envelope bytes.
    pub out_bytes: Counter,
    /// Messages received from NATS and routed here.
    pub received: Counter,
    /// Their envelope bytes.
    pub in_bytes: Counter,
    /// Messages not sent: NATS down or the outbound queue full.
    pub dropped: Counter,
    /// Envelopes refused (unknown version, malformed, bad subject).
    pub refused: Counter,
    /// NATS reconnections.
    pub reconnects: Counter,
    /// Clients of this node closed because they connected on another.
    pub taken_over: Counter,
    /// 1 while connected to NATS.
    pub connected: Gauge,
    /// Distinct subscriptions this node holds interest for.
    pub interest: Gauge,
}

impl Metrics {
    fn register(ctx: &Context) -> Result<Metrics, PluginError> {
        Ok(Metrics {
            out: ctx.counter("forwarded_out", "messages sent to other nodes through NATS")?,
            out_bytes: ctx.counter("forwarded_out_bytes", "bytes sent to NATS")?,
            received: ctx.counter("forwarded_in", "messages from other nodes routed here")?,
            in_bytes: ctx.counter("forwarded_in_bytes", "bytes received from NATS")?,
            dropped: ctx.counter(
                "forward_dropped",
                "messages not sent to NATS (link down or queue full)",
            )?,
            refused: ctx.counter(
                "envelopes_refused",
                "messages from NATS that could not be read",
            )?,
            reconnects: ctx.counter("nats_reconnects", "reconnections to NATS")?,
            taken_over: ctx.counter(
                "taken_over",
                "clients closed because their id connected on another node",
            )?,
            connected: ctx.gauge("nats_connected", "1 while the NATS link is up")?,
            interest: ctx.gauge("interest", "distinct subscriptions this node asks NATS for")?,
        })
    }
}

/// The subscriptions of this node's sessions, counted per subscription as written.
#[derive(Default)]
struct Interest {
    by_client: HashMap<String, HashSet<String>>,
    count: HashMap<String, usize>,
    /// The shared ones among `count`'s keys, with their filters: what [`Interest::served`]
    /// looks at for every message.
    shared: Vec<(String, String)>,
}

impl Interest {
    /// Records one session's subscription; the key when it is the first on this node.
    fn add(&mut self, client: &str, key: &str) -> Option<String> {
        let new = self
            .by_client
            .entry(client.to_owned())
            .or_default()
            .insert(key.to_owned());
        if !new {
            return None;
        }
        let n = self.count.entry(key.to_owned()).or_insert(0);
        *n += 1;
        if *n > 1 {
            return None;
        }
        if let Some((_, filter)) = split_shared(key) {
            self.shared.push((key.to_owned(), filter.to_owned()));
        }
        Some(key.to_owned())
    }

    /// Forgets one session's subscription; the key when it was the last on this node.
    fn remove(&mut self, client: &str, key: &str) -> Option<String> {
        let set = self.by_client.get_mut(client)?;
        if !set.remove(key) {
            return None;
        }
        if set.is_empty() {
            self.by_client.remove(client);
        }
        self.release(key)
    }

    fn release(&mut self, key: &str) -> Option<String> {
        let n = self.count.get_mut(key)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.count.remove(key);
        self.shared.retain(|(k, _)| k != key);
        Some(key.to_owned())
    }

    /// Forgets every subscription of a session that ended; the keys no longer held.
    fn drop_client(&mut self, client: &str) -> Vec<String> {
        let Some(set) = self.by_client.remove(client) else {
            return Vec::new();
        };
        set.iter().filter_map(|k| self.release(k)).collect()
    }

    /// The shared subscriptions of this node whose filter matches `topic`: its own members
    /// get the message, so other nodes skip these groups.
    fn served(&self, topic: &str) -> Vec<String> {
        self.count
            .keys()
            .filter(|k| split_shared(k).is_some_and(|(_, f)| plugin_api::topic_matches(f, topic)))
            .cloned()
            .collect()
    }
}

/// `$share/<group>/<filter>` → (group, filter).
pub fn split_shared(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("$share/")?.split_once('/')
}

/// What the hooks hand to the NATS link.
pub enum Command {
    /// The first local subscription to this key (as written): subscribe its subjects.
    Subscribe(String),
    /// The last one went: unsubscribe.
    Unsubscribe(String),
    /// A client connected here: record this node as its owner.
    Connected {
        /// Its id.
        client_id: String,
        /// Which connection, and when.
        local: LocalClient,
    },
}

/// A message for NATS.
pub struct Outbound {
    /// Its subject.
    pub subject: String,
    /// The envelope.
    pub payload: bytes::Bytes,
    /// For a retained message: its topic, and whether it is kept (`true`) or cleared (an
    /// empty payload) in the retained-message bucket.
    pub retained: Option<(String, bool)>,
}

/// What the hooks, the link and the commands share.
pub struct Shared {
    /// The broker's services.
    pub host: HostRef,
    /// Configuration.
    pub config: Config,
    /// This node's name (the broker's `node_name`).
    pub node_name: String,
    /// This node's id in envelopes, random per start.
    pub node_id: u64,
    seq: AtomicU64,
    interest: Mutex<Interest>,
    /// Metrics.
    pub metrics: Metrics,
    /// Clients connected here.
    pub clients: AtomicI64,
    /// When this node started, epoch ms.
    pub started_ms: u64,
    /// The link's state for `cluster status`.
    pub link: Mutex<link::LinkStatus>,
    /// The nodes whose heartbeats this node has seen, by name (kept from a watch of the
    /// membership bucket, so `cluster status` answers without a NATS round trip).
    pub members: Mutex<HashMap<String, link::Member>>,
    /// Clients connected here and when (their ownership is written again after a NATS outage).
    pub local_clients: Mutex<HashMap<String, LocalClient>>,
    /// Signalled when the link comes back after an outage.
    pub reconnected: tokio::sync::Notify,
    /// Counts the link's returns: the key-value watches start again at each (their consumers
    /// lived on the server that went away, and would only notice after missed heartbeats).
    pub links: tokio::sync::watch::Sender<u64>,
    /// NATS subscriptions held (subjects; a filter ending in `#` takes two).
    pub subjects: AtomicUsize,
    /// Of those, how many the server had confirmed at the last flush.
    pub flushed: AtomicUsize,
    /// Shared subscriptions held here: without any, publishing needs no look at the interest.
    shared_groups: AtomicUsize,
}

impl Shared {
    /// Changes the interest under its lock, keeping `shared_groups` up to date.
    fn with_interest<R>(&self, change: impl FnOnce(&mut Interest) -> R) -> R {
        let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let r = change(&mut interest);
        self.shared_groups
            .store(interest.shared.len(), Ordering::Relaxed);
        r
    }

    /// Distinct subscriptions of this node's sessions.
    pub fn interest_count(&self) -> usize {
        self.interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count
            .len()
    }
}

/// A client connected to this node, as client-id ownership needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClient {
    /// When it connected (the broker's `connected_at_ms`, which names the connection).
    pub at_ms: u64,
    /// When this node learnt of it, in microseconds of the wall clock: orders two connects of
    /// one client id on two nodes, where milliseconds would often tie.
    pub at_us: u64,
    /// The revision of the `mqtt_clients` entry that announced this connection, once the
    /// watch has seen it: a later entry of another node means a newer connection there.
    pub announced: Option<u64>,
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The plugin instance.
pub struct Cluster {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    outbound: mpsc::Sender<Outbound>,
    task: tokio::task::JoinHandle<()>,
}

impl Cluster {
    fn subscription_key(event: &EventView<'_>) -> Option<String> {
        let s = event.subscription.as_ref().into_option()?;
        Some(match s.share_group.as_ref().into_option() {
            Some(g) => format!("$share/{}/{}", g.as_str(), s.filter.as_str()),
            None => s.filter.as_str().to_owned(),
        })
    }

    fn interest_changed(&self, added: Option<String>, removed: Vec<String>) {
        let mut delta = 0i64;
        if let Some(k) = added {
            delta += 1;
            let _ = self.commands.send(Command::Subscribe(k));
        }
        for k in removed {
            delta -= 1;
            let _ = self.commands.send(Command::Unsubscribe(k));
        }
        if delta != 0 {
            self.shared.metrics.interest.add(delta);
        }
    }

    /// Registers the subscriptions that existed before this plugin was loaded (persistent
    /// sessions restored at start, or a load at run time), through the management API.
    async fn take_existing(shared: Arc<Shared>, commands: mpsc::UnboundedSender<Command>) {
        let mut page = 1;
        let mut tries = 0;
        loop {
            let request = plugin_api::ApiRequest {
                method: "GET".into(),
                path: format!("/api/v5/subscriptions?page={page}&limit=10000").into(),
                authorization: None.into(),
                body: Vec::new().into(),
            };
            let answer = shared.host.management_request(request).await;
            if answer.status == 503 && tries < 50 {
                // The management API starts after the plugins; ask again shortly.
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if answer.status != 200 {
                tracing::warn!(status = answer.status, "existing subscriptions could not be listed: sessions restored before this plugin loaded are not known to the cluster until they subscribe again");
                return;
            }
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
                return;
            };
            let mut added = 0i64;
            if let Some(list) = body["data"].as_array() {
                shared.with_interest(|interest| {
                    for s in list {
                        let (Some(c), Some(t)) = (s["clientid"].as_str(), s["topic"].as_str())
                        else {
                            continue;
                        };
                        if let Some(k) = interest.add(c, t) {
                            added += 1;
                            let _ = commands.send(Command::Subscribe(k));
                        }
                    }
                });
            }
            shared.metrics.interest.add(added);
            if !body["meta"]["hasnext"].as_bool().unwrap_or(false) {
                return;
            }
            page += 1;
        }
    }
}

impl Plugin for Cluster {
    const NAME: &'static str = "cluster";
    const DESCRIPTION: &'static str =
        "joins brokers into one cluster through NATS (routing, client ids, retained messages)";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let mut config = parse_config(config).map_err(PluginError::config)?;
        if let (Some(ca), Some(dir)) = (&config.tls_ca, ctx.config_dir()) {
            config.tls_ca = Some(dir.join(ca).display().to_string());
        }
        let metrics = Metrics::register(&ctx)?;
        metrics.connected.set(0);
        metrics.interest.set(0);
        let host = ctx.host().clone();
        let now = host.now_ms();
        let shared = Arc::new(Shared {
            node_name: host.node_name().into(),
            node_id: link::random_id(),
            seq: AtomicU64::new(0),
            interest: Mutex::new(Interest::default()),
            metrics,
            clients: AtomicI64::new(0),
            started_ms: now,
            link: Mutex::new(link::LinkStatus::default()),
            members: Mutex::new(HashMap::new()),
            local_clients: Mutex::new(HashMap::new()),
            reconnected: tokio::sync::Notify::new(),
            links: tokio::sync::watch::Sender::new(0),
            subjects: AtomicUsize::new(0),
            flushed: AtomicUsize::new(0),
            shared_groups: AtomicUsize::new(0),
            host,
            config,
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (outbound, outbound_rx) = mpsc::channel(shared.config.outbound_queue);
        let task = ctx.spawn(link::run(shared.clone(), command_rx, outbound_rx));
        ctx.spawn(Cluster::take_existing(shared.clone(), commands.clone()));
        Ok(Cluster {
            shared,
            commands,
            outbound,
            task,
        })
    }

    fn registration(&self) -> Registration {
        let points = [
            HookPoint::MESSAGE_PUBLISHED,
            HookPoint::SESSION_SUBSCRIBED,
            HookPoint::SESSION_UNSUBSCRIBED,
            HookPoint::SESSION_TERMINATED,
            HookPoint::CLIENT_CONNECTED,
            HookPoint::CLIENT_DISCONNECTED,
        ];
        Registration {
            hooks: points
                .iter()
                .map(|&point| HookSpec {
                    point,
                    priority: plugin_api::priority::LOWEST,
                })
                .collect(),
            commands: vec![CommandSpec {
                name: "cluster".into(),
                usage: "cluster status".into(),
            }]
            .into(),
            ..Registration::default()
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        let client = event.client.client_id.as_str();
        let shared = &self.shared;
        match point {
            HookPoint::SESSION_SUBSCRIBED => {
                if let Some(key) = Cluster::subscription_key(event) {
                    let added = shared.with_interest(|i| i.add(client, &key));
                    self.interest_changed(added, Vec::new());
                }
            }
            HookPoint::SESSION_UNSUBSCRIBED => {
                if let Some(key) = Cluster::subscription_key(event) {
                    let removed = shared.with_interest(|i| i.remove(client, &key));
                    self.interest_changed(None, removed.into_iter().collect());
                }
            }
            HookPoint::SESSION_TERMINATED => {
                let removed = shared.with_interest(|i| i.drop_client(client));
                self.interest_changed(None, removed);
            }
            HookPoint::CLIENT_CONNECTED => {
                self.shared.clients.fetch_add(1, Ordering::Relaxed);
                let local = LocalClient {
                    at_ms: event.client.connected_at_ms,
                    at_us: now_us(),
                    announced: None,
                };
                self.shared
                    .local_clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client.to_owned(), local);
                if self.shared.config.takeover {
                    let _ = self.commands.send(Command::Connected {
                        client_id: client.to_owned(),
                        local,
                    });
                }
            }
            HookPoint::CLIENT_DISCONNECTED => {
                self.shared.clients.fetch_sub(1, Ordering::Relaxed);
                let mut local = self
                    .shared
                    .local_clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                // Only this connection's entry: a newer one of the same id may be in place.
                if local
                    .get(client)
                    .is_some_and(|c| c.at_ms == event.client.connected_at_ms)
                {
                    local.remove(client);
                }
            }
            _ => {}
        }
    }

    fn on_message_event(&self, point: HookPoint, event: &MessageEventView<'_>) {
        // A message another node published came through deliver_remote: not sent back.
        if point != HookPoint::MESSAGE_PUBLISHED || event.reason.as_str() == "remote" {
            return;
        }
        let message = &event.message;
        let topic = message.topic.as_str();
        let served = if self.shared.shared_groups.load(Ordering::Relaxed) == 0 {
            Vec::new()
        } else {
            self.shared
                .interest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .served(topic)
        };
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope::of(message, self.shared.node_id, seq, served).encode();
        let out = Outbound {
            subject: subject::topic_subject(&self.shared.config.subject_prefix, topic),
            payload: envelope.into(),
            retained: (message.retain && self.shared.config.retained)
                .then(|| (topic.to_owned(), !message.payload.is_empty())),
        };
        if self.outbound.try_send(out).is_err() {
            self.shared.metrics.dropped.inc();
        }
    }

    fn command(
        &self,
        args: Vec<String>,
    ) -> impl std::future::Future<Output = Result<String, PluginError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            match args.get(1).map(String::as_str) {
                Some("status") if args.len() == 2 => Ok(link::status(&shared)),
                _ => Err(PluginError::new(
                    ErrorKind::INVALID,
                    "usage: cluster status",
                )),
            }
        }
    }

    fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

plugin_api::export_plugin!(Cluster);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_is_counted_per_subscription_on_this_node() {
        let mut i = Interest::default();
        assert_eq!(i.add("a", "x/#"), Some("x/#".into()), "first: subscribe");
        assert_eq!(i.add("a", "x/#"), None, "same client again: nothing");
        assert_eq!(i.add("b", "x/#"), None, "second client: nothing");
        assert_eq!(i.add("b", "$share/g/x/+"), Some("$share/g/x/+".into()));
        assert_eq!(i.served("x/1"), vec!["$share/g/x/+".to_string()]);
        assert!(i.served("y/1").is_empty());
        assert_eq!(i.remove("a", "x/#"), None, "b still holds it");
        assert_eq!(i.remove("a", "x/#"), None, "a had none left");
        let mut gone = i.drop_client("b");
        gone.sort();
        assert_eq!(
            gone,
            ["$share/g/x/+", "x/#"],
            "the session's end releases both"
        );
        assert!(i.count.is_empty() && i.by_client.is_empty() && i.shared.is_empty());
    }

    #[test]
    fn config_errors_say_what_is_wrong() {
        assert!(parse_config(include_str!("../../../etc/plugins/cluster.toml")).is_ok());
        let e = parse_config("servers = []").expect_err("no server");
        assert!(e.contains("at least one NATS server"), "{e}");
        let e = parse_config("subject_prefix = \"a.b\"").expect_err("dotted prefix");
        assert!(e.contains("subject_prefix"), "{e}");
        let e = parse_config("user = \"u\"").expect_err("user alone");
        assert!(e.contains("user and password"), "{e}");
        let e = parse_config("hearbeat_secs = 3").expect_err("typo");
        assert!(e.contains("hearbeat_secs"), "{e}");
    }
}

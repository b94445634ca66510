//! web_hook: client, session and message events POSTed as JSON to an HTTP service, with
//! EMQX's event names and body fields (README, "Web hook").
//!
//! **Events** (one `[[rule]]` per event, optionally limited to `topics`): `client.connect`,
//! `client.connack`, `client.connected`, `client.disconnected`, `client.subscribe`,
//! `client.unsubscribe`, `session.subscribed`, `session.unsubscribed`, `session.terminated`,
//! `message.publish`, `message.delivered`, `message.acked`, `message.dropped`. The body's
//! `action` is EMQX's (`client_connected`, `message_publish` …) and its fields are EMQX's
//! (`clientid`, `username`, `ipaddress`, `keepalive`, `proto_ver`, `topic`, `qos`, `retain`,
//! `payload` in `plain` or `base64`, `from_client_id`, `ts`, `node` …). `message.publish` is
//! reported from `message.published`, so it is the message as routed, after every plugin's
//! edits, and only messages whose topic a rule wants are looked at at all.
//!
//! **Never slows the data path.** A hook only copies the event and offers it to a bounded queue
//! (`queue_capacity` events, `queue_max_bytes` of message payloads and topics); when the queue
//! is full the event is dropped and counted — a publisher never waits for the service. Senders on the plugin's runtime take events from the
//! queue (`batch_size` per request: one object, or a JSON array of several), at most
//! `pool_size` requests at once over kept-alive connections, and retry a failed request
//! (connection error, timeout, non-2xx) `max_retries` times with doubling back-off from
//! `retry_backoff_ms`; then its events are dropped and counted. `/metrics` shows
//! `broker_plugin_web_hook_queue_depth`, `…_sent_total`, `…_failed_total` (failed attempts) and
//! `…_dropped_total`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use plugin_api::*;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

/// How `payload` appears in bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// As text (invalid UTF-8 replaced).
    #[default]
    Plain,
    /// Base64.
    Base64,
}

/// One `[[rule]]`: an event to send, optionally only for some topics.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// EMQX's hook name, e.g. `message.publish`.
    pub event: String,
    /// Topic filters (message and subscription events); empty = every topic.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// etc/plugins/web_hook.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where events are POSTed (http:// or https://).
    pub url: String,
    /// Request headers.
    pub headers: BTreeMap<String, String>,
    /// `plain` or `base64`.
    pub encoding_of_payload_field: Encoding,
    /// PEM CA certificates trusted for an https:// service.
    pub ca_file: String,
    /// Bound on one request, milliseconds.
    pub request_timeout_ms: u64,
    /// Requests in flight at once (and kept-alive connections).
    pub pool_size: usize,
    /// Events waiting to be sent; beyond it new events are dropped.
    pub queue_capacity: usize,
    /// Bytes of message payloads and topics waiting to be sent; beyond it new message events
    /// are dropped.
    pub queue_max_bytes: usize,
    /// Events per request (more than 1: a JSON array).
    pub batch_size: usize,
    /// Retries of a failed request before its events are dropped.
    pub max_retries: u32,
    /// First retry delay, milliseconds (doubling, at most 10 s).
    pub retry_backoff_ms: u64,
    /// The events to send.
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

/// Every event this plugin can send, with its hook point and EMQX action.
const EVENTS: [(&str, HookPoint, &str); 13] = [
    (
        "client.connect",
        HookPoint::CLIENT_CONNECT,
        "client_connect",
    ),
    (
        "client.connack",
        HookPoint::CLIENT_CONNACK,
        "client_connack",
    ),
    (
        "client.connected",
        HookPoint::CLIENT_CONNECTED,
        "client_connected",
    ),
    (
        "client.disconnected",
        HookPoint::CLIENT_DISCONNECTED,
        "client_disconnected",
    ),
    (
        "client.subscribe",
        HookPoint::CLIENT_SUBSCRIBE,
        "client_subscribe",
    ),
    (
        "client.unsubscribe",
        HookPoint::CLIENT_UNSUBSCRIBE,
        "client_unsubscribe",
    ),
    (
        "session.subscribed",
        HookPoint::SESSION_SUBSCRIBED,
        "session_subscribed",
    ),
    (
        "session.unsubscribed",
        HookPoint::SESSION_UNSUBSCRIBED,
        "session_unsubscribed",
    ),
    (
        "session.terminated",
        HookPoint::SESSION_TERMINATED,
        "session_terminated",
    ),
    (
        "message.publish",
        HookPoint::MESSAGE_PUBLISHED,
        "message_publish",
    ),
    (
        "message.delivered",
        HookPoint::MESSAGE_DELIVERED,
        "message_delivered",
    ),
    ("message.acked", HookPoint::MESSAGE_ACKED, "message_acked"),
    (
        "message.dropped",
        HookPoint::MESSAGE_DROPPED,
        "message_dropped",
    ),
];

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "http://127.0.0.1:8080/mqtt/webhook".into(),
            headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
            encoding_of_payload_field: Encoding::Plain,
            ca_file: String::new(),
            request_timeout_ms: 5000,
            pool_size: 8,
            queue_capacity: 10_000,
            queue_max_bytes: 64 * 1024 * 1024,
            batch_size: 1,
            max_retries: 3,
            retry_backoff_ms: 200,
            rules: EVENTS
                .iter()
                .map(|(event, _, _)| Rule {
                    event: (*event).into(),
                    topics: Vec::new(),
                })
                .collect(),
        }
    }
}

/// Which events are on, and for which topics.
#[derive(Debug, Default)]
struct Selection {
    /// Per event index in [`EVENTS`]: `None` off, `Some(empty)` every topic, else the filters.
    on: [Option<Vec<String>>; 13],
}

impl Selection {
    fn parse(rules: &[Rule]) -> Result<Selection, String> {
        let mut s = Selection::default();
        for rule in rules {
            let Some(i) = EVENTS.iter().position(|(e, _, _)| *e == rule.event) else {
                let known: Vec<&str> = EVENTS.iter().map(|(e, _, _)| *e).collect();
                return Err(format!(
                    "rule event {:?} is not one of {}",
                    rule.event,
                    known.join(", ")
                ));
            };
            for t in &rule.topics {
                if t.is_empty() || t.contains('\0') {
                    return Err(format!("rule {}: topic filter {t:?} is empty", rule.event));
                }
            }
            let slot = s.on[i].get_or_insert_with(Vec::new);
            if rule.topics.is_empty() {
                // One rule without topics takes every topic.
                slot.clear();
                slot.push(String::from("#"));
            } else if slot.first().map(String::as_str) != Some("#") {
                slot.extend(rule.topics.iter().cloned());
            }
        }
        Ok(s)
    }

    fn wants(&self, i: usize, topic: &str) -> bool {
        match &self.on[i] {
            None => false,
            Some(filters) => filters.iter().any(|f| {
                (f == "#" && !topic.starts_with('$')) || topic_matches(f, topic) || f == topic
            }),
        }
    }

    fn point_on(&self, i: usize) -> bool {
        self.on[i].is_some()
    }
}

/// The plugin's metrics: counted here, added to the broker's every half second (a call into
/// the broker per event would cost the data path).
struct Metrics {
    sent: Counter,
    failed: Counter,
    dropped: Counter,
    depth: Gauge,
    sent_n: AtomicU64,
    failed_n: AtomicU64,
    dropped_n: AtomicU64,
}

impl Metrics {
    fn flush(&self, queued: i64) {
        for (n, c) in [
            (&self.sent_n, &self.sent),
            (&self.failed_n, &self.failed),
            (&self.dropped_n, &self.dropped),
        ] {
            let delta = n.swap(0, Ordering::Relaxed);
            if delta > 0 {
                c.add(delta);
            }
        }
        self.depth.set(queued.max(0));
    }
}

/// An event waiting to be sent. Message events are copied as they are and turned into JSON by
/// the sender, off the publisher's thread.
enum Event {
    /// A client or session event, already a JSON object.
    Ready(Map<String, Value>),
    /// A message event.
    Message(MessageEvent),
}

/// A message event's JSON, written straight from the queued copy.
#[derive(serde::Serialize)]
struct MessageJson<'a> {
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    clientid: Option<&'a str>,
    from_client_id: Option<&'a str>,
    from_username: Option<&'a str>,
    topic: &'a str,
    qos: u8,
    retain: bool,
    payload: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    node: &'a str,
}

struct MessageEvent {
    action: &'static str,
    from_client_id: Option<String>,
    from_username: Option<String>,
    topic: String,
    qos: u8,
    retain: bool,
    payload: Vec<u8>,
    ts: u64,
    /// The receiving client (delivered, acked, dropped).
    clientid: Option<String>,
    /// Why it was dropped.
    reason: Option<String>,
}

struct Shared {
    config: Config,
    selection: Selection,
    node: String,
    queue: mpsc::Sender<Event>,
    /// Events in the queue (for the gauge).
    queued: AtomicI64,
    /// Bytes of message events in the queue.
    queued_bytes: AtomicI64,
    metrics: Metrics,
    /// Whether the last request failed (logs only the transitions).
    failing: AtomicBool,
}

impl Shared {
    /// Whether the queue has room; counts the event as dropped when it has none (before
    /// anything of it is built).
    fn room(&self) -> bool {
        if self.queue.capacity() == 0 {
            self.metrics.dropped_n.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether a message event of `size` bytes fits under `queue_max_bytes`; if it does, the
    /// bytes are counted as queued.
    fn room_for(&self, size: usize) -> bool {
        let before = self.queued_bytes.fetch_add(size as i64, Ordering::Relaxed);
        if before + size as i64 > self.config.queue_max_bytes as i64 {
            self.queued_bytes.fetch_sub(size as i64, Ordering::Relaxed);
            self.metrics.dropped_n.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Offers one event to the queue; a full queue drops it.
    fn offer(&self, action: &str, mut body: Map<String, Value>) {
        body.insert("action".into(), action.into());
        self.push(Event::Ready(body));
    }

    fn push(&self, event: Event) {
        match self.queue.try_send(event) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.release(&e.into_inner());
                self.metrics.dropped_n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Un-counts the bytes of a message event leaving the queue.
    fn release(&self, event: &Event) {
        if let Event::Message(m) = event {
            self.queued_bytes
                .fetch_sub((m.topic.len() + m.payload.len()) as i64, Ordering::Relaxed);
        }
    }

    /// Appends the JSON of a queued event to `out`.
    fn write_json(&self, event: Event, out: &mut Vec<u8>) {
        let written = match event {
            Event::Ready(mut body) => {
                body.insert("node".into(), self.node.clone().into());
                serde_json::to_writer(&mut *out, &body)
            }
            Event::Message(m) => {
                let payload = match self.config.encoding_of_payload_field {
                    Encoding::Plain => String::from_utf8_lossy(&m.payload),
                    Encoding::Base64 => std::borrow::Cow::Owned(
                        base64::engine::general_purpose::STANDARD.encode(&m.payload),
                    ),
                };
                serde_json::to_writer(
                    &mut *out,
                    &MessageJson {
                        action: m.action,
                        clientid: m.clientid.as_deref(),
                        from_client_id: m.from_client_id.as_deref(),
                        from_username: m.from_username.as_deref(),
                        topic: &m.topic,
                        qos: m.qos,
                        retain: m.retain,
                        payload: &payload,
                        ts: m.ts,
                        reason: m.reason.as_deref(),
                        node: &self.node,
                    },
                )
            }
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "a web hook event could not be serialised");
        }
    }

    fn client_fields(c: &ClientView<'_>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("clientid".into(), c.client_id.as_str().into());
        m.insert(
            "username".into(),
            c.username.map_or(Value::Null, |u| u.as_str().into()),
        );
        m
    }

    fn on_event(&self, point: HookPoint, e: &EventView<'_>) {
        let Some(i) = EVENTS.iter().position(|(_, p, _)| *p == point) else {
            return;
        };
        if !self.room() {
            return;
        }
        let c = &e.client;
        let mut body = Shared::client_fields(c);
        match point {
            HookPoint::CLIENT_CONNECT | HookPoint::CLIENT_CONNACK | HookPoint::CLIENT_CONNECTED => {
                body.insert("ipaddress".into(), c.peer_ip.as_str().into());
                body.insert("keepalive".into(), c.keep_alive.into());
                body.insert("proto_ver".into(), c.proto_ver.into());
                if point == HookPoint::CLIENT_CONNACK {
                    let ack = if e.reason_code == 0 {
                        "success".to_owned()
                    } else {
                        format!("0x{:02X}", e.reason_code)
                    };
                    body.insert("conn_ack".into(), ack.into());
                }
                if point == HookPoint::CLIENT_CONNECTED {
                    body.insert("connected_at".into(), c.connected_at_ms.into());
                }
            }
            HookPoint::CLIENT_DISCONNECTED => {
                body.insert("reason".into(), e.reason.as_str().into());
                body.insert("disconnected_at".into(), now_ms().into());
            }
            HookPoint::SESSION_TERMINATED => {
                body.insert("reason".into(), e.reason.as_str().into());
            }
            HookPoint::SESSION_SUBSCRIBED | HookPoint::SESSION_UNSUBSCRIBED => {
                let ROption::RSome(sub) = &e.subscription else {
                    return;
                };
                let topic = full_filter(sub.filter.as_str(), sub.share_group);
                if !self.selection.wants(i, &topic) {
                    return;
                }
                body.insert("topic".into(), topic.into());
                if point == HookPoint::SESSION_SUBSCRIBED {
                    body.insert("opts".into(), json!({ "qos": sub.options.qos }));
                }
            }
            _ => return,
        }
        self.offer(EVENTS[i].2, body);
    }
}

/// `$share/<group>/<filter>` for a shared subscription, else the filter.
fn full_filter(filter: &str, group: ROption<RStr<'_>>) -> String {
    match group {
        ROption::RSome(g) => format!("$share/{g}/{filter}"),
        ROption::RNone => filter.to_owned(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes events from the queue and sends them, `pool_size` requests at once.
async fn dispatch(shared: Arc<Shared>, client: reqwest::Client, mut rx: mpsc::Receiver<Event>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.config.pool_size));
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, shared.config.batch_size).await > 0 {
        shared
            .queued
            .fetch_sub(batch.len() as i64, Ordering::Relaxed);
        for e in &batch {
            shared.release(e);
        }
        let count = batch.len();
        let mut body = Vec::with_capacity(256 * count);
        let many = shared.config.batch_size > 1;
        if many {
            body.push(b'[');
        }
        for (n, e) in batch.drain(..).enumerate() {
            if n > 0 {
                body.push(b',');
            }
            shared.write_json(e, &mut body);
        }
        if many {
            body.push(b']');
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (shared, client) = (shared.clone(), client.clone());
        tokio::spawn(async move {
            send(&shared, &client, body, count).await;
            drop(permit);
        });
    }
    // The queue closed (unload): wait for the requests in flight.
    let _ = permits.acquire_many(shared.config.pool_size as u32).await;
}

/// Sends one batch, retrying with back-off; counts what was sent, failed and dropped.
async fn send(shared: &Shared, client: &reqwest::Client, body: Vec<u8>, count: usize) {
    let c = &shared.config;
    // Shared, not copied, between attempts.
    let body = bytes::Bytes::from(body);
    let mut delay = Duration::from_millis(c.retry_backoff_ms.max(1));
    for attempt in 0..=c.max_retries {
        let mut request = client.post(&c.url).body(body.clone());
        for (k, v) in &c.headers {
            request = request.header(k, v);
        }
        let error = match request.send().await {
            Ok(r) if r.status().is_success() => {
                shared
                    .metrics
                    .sent_n
                    .fetch_add(count as u64, Ordering::Relaxed);
                if shared.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %c.url, "web hook service answers again");
                }
                return;
            }
            Ok(r) => format!("status {}", r.status().as_u16()),
            Err(e) => e.to_string(),
        };
        shared.metrics.failed_n.fetch_add(1, Ordering::Relaxed);
        if !shared.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(url = %c.url, error = %error, "web hook request failed; retrying with back-off");
        }
        if attempt < c.max_retries {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
    shared
        .metrics
        .dropped_n
        .fetch_add(count as u64, Ordering::Relaxed);
    tracing::debug!(url = %c.url, events = count, "web hook events dropped after the last retry");
}

/// The plugin.
pub struct WebHook {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    dispatcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn parse(text: &str) -> Result<(Config, Selection), String> {
    let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
        return Err(format!(
            "url {:?} must start with http:// or https://",
            config.url
        ));
    }
    reqwest::Url::parse(&config.url).map_err(|e| format!("url {:?}: {e}", config.url))?;
    for (key, value) in [
        ("pool_size", config.pool_size as u64),
        ("queue_capacity", config.queue_capacity as u64),
        ("queue_max_bytes", config.queue_max_bytes as u64),
        ("batch_size", config.batch_size as u64),
        ("request_timeout_ms", config.request_timeout_ms),
    ] {
        if value == 0 {
            return Err(format!("{key} must be at least 1"));
        }
    }
    let selection = Selection::parse(&config.rules)?;
    Ok((config, selection))
}

impl Plugin for WebHook {
    const NAME: &'static str = "web_hook";
    const DESCRIPTION: &'static str =
        "client, session and message events POSTed to an HTTP service";

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let (config, selection) = parse(config).map_err(PluginError::config)?;
        let client = auth_common::http::client(
            &config.ca_file,
            Duration::from_millis(config.request_timeout_ms),
            config.pool_size,
        )
        .map_err(PluginError::config)?;
        let metrics = Metrics {
            sent: ctx.counter("sent", "Events the web hook service accepted.")?,
            failed: ctx.counter("failed", "Web hook requests that failed (each attempt).")?,
            dropped: ctx.counter(
                "dropped",
                "Events dropped: the queue was full, or every retry failed.",
            )?,
            depth: ctx.gauge("queue_depth", "Events waiting to be sent.")?,
            sent_n: AtomicU64::new(0),
            failed_n: AtomicU64::new(0),
            dropped_n: AtomicU64::new(0),
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            node: ctx.host().node_name().into(),
            config,
            selection,
            queue: tx,
            queued: AtomicI64::new(0),
            queued_bytes: AtomicI64::new(0),
            metrics,
            failing: AtomicBool::new(false),
        });
        let gauge = shared.clone();
        ctx.every(Duration::from_millis(500), move || {
            gauge.metrics.flush(gauge.queued.load(Ordering::Relaxed));
        });
        let dispatcher = ctx.spawn(dispatch(shared.clone(), client, rx));
        Ok(WebHook {
            shared,
            runtime: ctx.runtime().clone(),
            dispatcher: std::sync::Mutex::new(Some(dispatcher)),
        })
    }

    fn registration(&self) -> Registration {
        let s = &self.shared.selection;
        let hooks: Vec<HookSpec> = EVENTS
            .iter()
            .enumerate()
            .filter(|(i, _)| s.point_on(*i))
            .map(|(_, (_, point, _))| HookSpec {
                point: *point,
                priority: priority::LOWEST,
            })
            .collect();
        // message.published only for topics a message.publish rule wants.
        let publish = EVENTS
            .iter()
            .position(|(e, _, _)| *e == "message.publish")
            .and_then(|i| s.on[i].clone())
            .unwrap_or_default();
        let topics = if publish.iter().any(|f| f == "#") {
            Vec::new()
        } else {
            publish
        };
        Registration {
            hooks: hooks.into(),
            publish_filter: PublishFilter {
                retained_only: false,
                topics: topics
                    .into_iter()
                    .map(RString::from)
                    .collect::<Vec<_>>()
                    .into(),
            },
            on_error: OnError::Ignore,
            ..Registration::default()
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        self.shared.on_event(point, event);
    }

    fn on_subscribe(&self, point: HookPoint, request: &SubscribeView<'_>) -> Flow<RString> {
        let s = &self.shared;
        let Some(i) = EVENTS.iter().position(|(_, p, _)| *p == point) else {
            return Flow::Continue;
        };
        let topic = full_filter(request.filter.as_str(), request.share_group);
        if s.selection.wants(i, &topic) && s.room() {
            let mut body = Shared::client_fields(&request.client);
            body.insert("topic".into(), topic.into());
            if point == HookPoint::CLIENT_SUBSCRIBE {
                body.insert("opts".into(), json!({ "qos": request.options.qos }));
            }
            s.offer(EVENTS[i].2, body);
        }
        Flow::Continue
    }

    fn on_message_event(&self, point: HookPoint, event: &MessageEventView<'_>) {
        let s = &self.shared;
        let Some(i) = EVENTS.iter().position(|(_, p, _)| *p == point) else {
            return;
        };
        // In a cluster, `message_publish` is reported by the node the message was published on.
        if point == HookPoint::MESSAGE_PUBLISHED && event.reason.as_str() == "remote" {
            return;
        }
        let m = &event.message;
        let size = m.topic.len() + m.payload.len();
        if !s.selection.wants(i, m.topic.as_str()) || !s.room() || !s.room_for(size) {
            return;
        }
        let receiver = matches!(
            point,
            HookPoint::MESSAGE_DELIVERED | HookPoint::MESSAGE_ACKED | HookPoint::MESSAGE_DROPPED
        );
        s.push(Event::Message(MessageEvent {
            action: EVENTS[i].2,
            from_client_id: m.publisher.map(|p| p.to_string()).into_option(),
            from_username: m.username.map(|u| u.to_string()).into_option(),
            topic: m.topic.to_string(),
            qos: m.qos,
            retain: m.retain,
            payload: m.payload.to_vec(),
            ts: if m.timestamp_ms != 0 {
                m.timestamp_ms
            } else {
                now_ms()
            },
            clientid: receiver.then(|| event.client_id.to_string()),
            reason: (point == HookPoint::MESSAGE_DROPPED).then(|| event.reason.to_string()),
        }));
    }

    fn shutdown(&self) {
        // Give what is queued a moment to go out; then the runtime stops.
        let Some(dispatcher) = self.dispatcher.lock().ok().and_then(|mut d| d.take()) else {
            return;
        };
        let timeout = Duration::from_millis(self.shared.config.request_timeout_ms.min(3000));
        let shared = self.shared.clone();
        self.runtime.block_on(async move {
            // Closing the queue ends the dispatcher once it is empty.
            let waited = tokio::time::timeout(timeout, async {
                while shared.queued.load(Ordering::Relaxed) > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if waited.is_err() {
                tracing::warn!(
                    left = shared.queued.load(Ordering::Relaxed),
                    "web hook events still queued at unload are dropped"
                );
            }
            dispatcher.abort();
        });
        self.shared
            .metrics
            .flush(self.shared.queued.load(Ordering::Relaxed));
    }
}

plugin_api::export_plugin!(WebHook);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_errors() {
        let (_, s) = parse(
            "[[rule]]\nevent = \"message.publish\"\ntopics = [\"a/#\"]\n[[rule]]\nevent = \"client.connected\"\n",
        )
        .expect("valid");
        let publish = EVENTS
            .iter()
            .position(|(e, _, _)| *e == "message.publish")
            .expect("index");
        assert!(s.wants(publish, "a/b"));
        assert!(!s.wants(publish, "b"));
        assert!(s.point_on(2) && !s.point_on(3));
        let e = parse("[[rule]]\nevent = \"message.publishd\"\n").expect_err("typo");
        assert!(e.contains("message.publishd"), "{e}");
        let e = parse("url = \"ftp://x\"").expect_err("scheme");
        assert!(e.contains("http://"), "{e}");
        let e = parse("batch_size = 0").expect_err("zero");
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn shipped_config_parses() {
        parse(include_str!("../../../etc/plugins/web_hook.toml"))
            .expect("etc/plugins/web_hook.toml parses");
    }
}

//! Typed configuration, read from `etc/broker.toml`.
//!
//! Every section and key is `deny_unknown_fields`, so a misspelt key stops start-up with a
//! message naming the key, the file, and the line. Defaults live here, once, in the
//! `Default` impls; the shipped `etc/broker.toml` repeats them with a comment each (meaning,
//! unit, default). [`Config::load`] parses and then [`Config::validate`]s, so a broker that
//! starts has a configuration whose values are all in range.
//!
//! Relative paths (`data_dir`, `plugin_dir`) are relative to the broker's working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What went wrong reading the configuration. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message: it names the key, the line and the column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config file {path}: `{key}` {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key, dotted.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole broker configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This broker's node name, used in `$SYS` topics and logs.
    pub node_name: String,
    /// Directory for runtime state (the listener address file, persisted plugin set …).
    pub data_dir: PathBuf,
    /// Directory plugins are loaded from.
    pub plugin_dir: PathBuf,
    /// The listeners; at least one.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Session behaviour.
    pub session: SessionConfig,
    /// Access control defaults.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Plugin host.
    pub plugins: PluginsConfig,
    /// ACL defaults.
    pub acl: AclConfig,
    /// Admin API used by `brokerctl`.
    pub admin: AdminConfig,
    /// `$SYS` topics.
    pub sys: SysConfig,
    /// How shared subscriptions choose a member.
    pub shared_subscriptions: SharedSubscriptionsConfig,
    /// What of MQTT the broker offers (told to v5 clients in CONNACK, and enforced).
    pub mqtt: MqttConfig,
}

/// `[mqtt]`: the MQTT features the broker offers. v5 clients are told in CONNACK (Maximum QoS,
/// Retain Available, Wildcard / Subscription Identifier / Shared Subscription Available,
/// Response Information) and every client is held to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Highest QoS accepted in PUBLISH and wills, and granted in SUBSCRIBE (0, 1 or 2).
    pub maximum_qos: u8,
    /// Whether retained messages (and wills with RETAIN) are accepted.
    pub retain_available: bool,
    /// Whether filters with `+` / `#` are accepted.
    pub wildcard_subscription_available: bool,
    /// Whether SUBSCRIBE may carry a Subscription Identifier.
    pub subscription_identifiers_available: bool,
    /// Whether `$share/…` and `$queue/…` subscriptions are accepted.
    pub shared_subscription_available: bool,
    /// Response Information for v5 clients that ask for it; `%c` is the client id. "" = none.
    pub response_information: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            response_information: String::new(),
        }
    }
}

/// How a shared subscription group chooses the member that gets a message (EMQX's names).
/// Every strategy prefers a connected member; with none connected the chosen member's session
/// queues the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// A member at random.
    Random,
    /// The same member until it disconnects or unsubscribes.
    Sticky,
    /// By a hash of the publisher's client id: one publisher's messages go to one member.
    HashClientid,
    /// By a hash of the topic: one topic's messages go to one member.
    HashTopic,
    /// A member on this node (one node: as `random`).
    Local,
}

/// `[shared_subscriptions]`: the broker-wide strategy and per-group ones.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SharedSubscriptionsConfig {
    /// The strategy of every group not named in `groups`.
    pub strategy: SharedStrategy,
    /// Per-group strategies, by group name.
    pub groups: std::collections::BTreeMap<String, SharedStrategy>,
}

impl SharedSubscriptionsConfig {
    /// The strategy of `group`.
    pub fn strategy_for(&self, group: &str) -> SharedStrategy {
        self.groups.get(group).copied().unwrap_or(self.strategy)
    }
}

/// `$SYS` topics (see [`crate::sys`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between two publications of the `$SYS` metrics topics; 0 = never.
    pub interval_secs: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

/// Plugin host settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugins loaded on the very first start; afterwards `<data_dir>/loaded_plugins`
    /// (maintained by `brokerctl plugins load|unload`) decides.
    pub enabled: Vec<String>,
    /// Directory of the plugins' config files (`<name>.toml`). Empty = `plugins/` next to the
    /// broker's config file.
    pub config_dir: PathBuf,
    /// Timeout of one async hook call (authentication, ACL), milliseconds, unless the plugin
    /// sets its own.
    pub hook_timeout_ms: u64,
    /// Async hook calls in flight per plugin; further calls wait (within the timeout).
    pub max_in_flight: usize,
    /// How long an unload waits for in-flight calls, milliseconds.
    pub drain_timeout_ms: u64,
    /// Faults (panics, timeouts) that mark a plugin faulted …
    pub fault_threshold: usize,
    /// … within this many seconds.
    pub fault_window_secs: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: Vec::new(),
            config_dir: PathBuf::new(),
            hook_timeout_ms: 5000,
            max_in_flight: 1024,
            drain_timeout_ms: 5000,
            fault_threshold: 5,
            fault_window_secs: 60,
        }
    }
}

/// What to do when every ACL plugin said Ignore, and with denied publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Decision when ACL plugins are loaded and all of them ignore the request.
    pub no_match: Decision,
    /// Let clients publish to `$SYS` topics (the broker's own); plugins always may.
    pub client_publish_sys: bool,
    /// What a denied PUBLISH does to the connection: `ignore` (drop the message) or
    /// `disconnect`.
    pub deny_action: DenyAction,
    /// ACL results cached per connection (FIFO eviction); 0 disables the cache.
    pub cache_size: usize,
    /// Seconds an ACL result stays cached.
    pub cache_ttl_secs: u64,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            no_match: Decision::Allow,
            client_publish_sys: false,
            deny_action: DenyAction::Ignore,
            cache_size: 32,
            cache_ttl_secs: 60,
        }
    }
}

/// allow / deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Permit.
    Allow,
    /// Refuse.
    Deny,
}

/// What a denied PUBLISH does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyAction {
    /// Drop the message (QoS 1/2 still acknowledged; v5 with reason 0x87).
    Ignore,
    /// Close the connection (v5: DISCONNECT 0x87).
    Disconnect,
}

/// Admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the management API at all.
    pub enabled: bool,
    /// Address of the management API: a loopback address, or any address with `tls` set.
    pub bind: SocketAddr,
    /// File holding the admin token; created (mode 0600) at first start. Empty =
    /// `<data_dir>/admin.token`.
    pub token_file: PathBuf,
    /// File holding the API keys (hashed secrets). Empty = `<data_dir>/api_keys.json`.
    pub api_keys_file: PathBuf,
    /// Serve over TLS (required when `bind` is not a loopback address).
    pub tls: Option<TlsConfig>,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 408, seconds.
    pub request_timeout_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 18083)),
            token_file: PathBuf::new(),
            api_keys_file: PathBuf::new(),
            tls: None,
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: "broker@127.0.0.1".into(),
            data_dir: "data".into(),
            plugin_dir: "target/release".into(),
            listeners: vec![ListenerConfig::default()],
            limits: Limits::default(),
            session: SessionConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            plugins: PluginsConfig::default(),
            acl: AclConfig::default(),
            admin: AdminConfig::default(),
            sys: SysConfig::default(),
            shared_subscriptions: SharedSubscriptionsConfig::default(),
            mqtt: MqttConfig::default(),
        }
    }
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The kind as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// True for tls and wss.
    pub fn uses_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// True for ws and wss.
    pub fn uses_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// Client certificate policy of a TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for and checked if sent.
    Optional,
    /// A valid client certificate is required.
    Required,
}

/// TLS settings of a tls / wss listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key.
    pub key_file: PathBuf,
    /// PEM file with the CA certificates that client certificates must chain to.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificates: none, optional or required.
    #[serde(default)]
    pub verify: Verify,
}

/// One listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Name used in logs and metrics; unique.
    pub name: String,
    /// Transport.
    pub kind: ListenerKind,
    /// Address and port to bind; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Maximum concurrent connections on this listener.
    pub max_connections: usize,
    /// Connections accepted per second at most (0 = no limit); beyond it they wait in the
    /// kernel's accept queue.
    pub max_connection_rate: u32,
    /// TLS settings (tls and wss listeners).
    pub tls: Option<TlsConfig>,
    /// WebSocket path (ws and wss listeners).
    pub ws_path: String,
    /// Take the client address from `X-Forwarded-For` (ws / wss behind a proxy).
    pub proxy_forwarded_for: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "tcp".into(),
            kind: ListenerKind::Tcp,
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_connections: 1_000_000,
            max_connection_rate: 0,
            tls: None,
            ws_path: "/mqtt".into(),
            proxy_forwarded_for: false,
        }
    }
}

/// Protocol and resource limits, applied on every listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum concurrent connections over all listeners.
    pub max_connections: usize,
    /// Maximum size of one packet, in bytes, fixed header included.
    pub max_packet_size: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// Maximum client identifier length, in bytes.
    pub max_client_id_len: usize,
    /// Maximum keep alive the broker accepts, in seconds; v5 clients asking for more (or for 0)
    /// are told this value in CONNACK's Server Keep Alive. 0 = accept what the client asks.
    pub max_keep_alive: u16,
    /// Incoming QoS 1 / 2 PUBLISH a client may have unacknowledged (v5 Receive Maximum).
    pub receive_maximum: u16,
    /// Outgoing QoS 1 / 2 messages in flight per client (further capped by the client's
    /// Receive Maximum). QoS 1 / 2 delivery to one client moves at most this many per round
    /// trip: 100, as rumqttd's fixed window, gave fan-in QoS 1 1.9× the rate of 32.
    pub max_inflight: u16,
    /// Messages queued per session, online or offline, beyond the inflight window.
    pub max_queued_messages: usize,
    /// Topic aliases a v5 client may use towards the broker (Topic Alias Maximum), and the most
    /// the broker assigns towards a client that accepts them; 0 = none.
    pub topic_alias_maximum: u16,
    /// Most levels a topic name or filter may have; deeper ones are refused.
    pub max_topic_levels: usize,
    /// Bytes of messages queued per session (payload, topic and properties, plus a fixed
    /// per-message overhead); further messages for that session are dropped.
    pub max_queued_bytes: usize,
    /// Bytes queued for connected sessions above which the broker stops reading from clients
    /// that publish, until the total falls below 90 % of it; 0 = no mark. Offline sessions'
    /// queues do not count (see `max_offline_queued_bytes`).
    pub memory_high_watermark: usize,
    /// Bytes queued for offline sessions, all together, past which further messages for
    /// offline sessions are dropped (counted, `message.dropped` "queue_full"); 0 = no limit.
    pub max_offline_queued_bytes: usize,
    /// Seconds a client may leave the broker's output to it unread before it is disconnected;
    /// also how long `memory_high_watermark` may hold before the clients with the largest
    /// queues are disconnected and their queues dropped.
    pub slow_consumer_timeout: u64,
    /// PINGREQ, SUBSCRIBE and UNSUBSCRIBE packets read per connection per second; beyond it
    /// the connection is not read until the next second. 0 = no limit.
    pub max_control_rate: u32,
    /// Delayed publishes (`$delayed/<seconds>/<topic>`) waiting at once; beyond it they are
    /// refused. 0 = delayed publish off (`$delayed/…` is then an ordinary topic). They are held
    /// in memory, bounded in bytes too by `max_delayed_bytes`.
    pub max_delayed_messages: usize,
    /// Bytes the waiting delayed publishes may hold together (payload, topic and properties,
    /// plus a fixed per-message overhead); a publish that would exceed it is refused.
    pub max_delayed_bytes: usize,
    /// Subscriptions one session may hold through its own SUBSCRIBEs; a filter beyond it is
    /// refused (SUBACK 0x97, MQTT 3: 0x80). 0 = no limit.
    pub max_subscriptions: usize,
    /// Bytes of topic filters (and share group names) one session may hold through its own
    /// SUBSCRIBEs; a filter beyond it is refused like one beyond `max_subscriptions`. 0 = no
    /// limit.
    pub max_subscription_bytes: usize,
    /// Bytes of topic filters (and share group names) all sessions together may hold through
    /// their clients' SUBSCRIBEs (persistent sessions keep theirs while offline); a filter
    /// beyond it is refused like one beyond `max_subscriptions`. Subscriptions made by the
    /// management API or plugins count, but are not refused. 0 = no limit.
    pub max_total_subscription_bytes: usize,
    /// Bytes of wills waiting for their Will Delay Interval, over all sessions; a will that
    /// would pass it is published when its connection closes, without the delay. 0 = no
    /// limit.
    pub max_pending_will_bytes: usize,
    /// Sessions the broker holds at once, online and offline. At the limit a client whose id
    /// has no session ends the session offline longest; when none is offline it is refused
    /// (CONNACK 0x97, MQTT 3: 0x03). 0 = no limit.
    pub max_sessions: usize,
    /// Bytes all connections together may hold of their clients' input — packets still
    /// arriving, the topics of v5 topic aliases, wills and user names — beyond the first
    /// 64 KiB of each; a connection that would take more is closed (v5 DISCONNECT 0x97) or
    /// refused (CONNACK 0x97). 0 = no limit; otherwise at least `max_packet_size`.
    pub max_incoming_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1_000_000,
            max_packet_size: 1024 * 1024,
            connect_timeout: 10,
            max_client_id_len: 1024,
            max_keep_alive: 0,
            receive_maximum: 128,
            max_inflight: 100,
            max_queued_messages: 10_000,
            topic_alias_maximum: 64,
            max_topic_levels: 128,
            max_queued_bytes: 16 * 1024 * 1024,
            memory_high_watermark: 1024 * 1024 * 1024,
            max_offline_queued_bytes: 1024 * 1024 * 1024,
            slow_consumer_timeout: 30,
            max_control_rate: 1000,
            max_delayed_messages: 1_000,
            max_delayed_bytes: 64 * 1024 * 1024,
            max_subscriptions: 10_000,
            max_subscription_bytes: 1 << 20,
            max_total_subscription_bytes: 512 << 20,
            max_pending_will_bytes: 64 << 20,
            max_sessions: 1_000_000,
            max_incoming_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Session behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Upper bound on any session's expiry interval, in seconds; also the expiry of MQTT 3.x
    /// persistent sessions (clean session = 0). 4294967295 = never expire.
    pub max_session_expiry_interval: u32,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_messages: bool,
    /// What survives a restart and a crash (see [`Durability`]).
    pub durability: Durability,
}

/// `[session] durability`: what of the persistent sessions is on disc, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Nothing: a restart loses every session.
    None,
    /// Written at a graceful stop, read back at start; a crash loses what changed meanwhile.
    Graceful,
    /// Written as it changes; PUBACK / PUBREC / SUBACK / UNSUBACK only once on disc.
    Ack,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_session_expiry_interval: u32::MAX,
            queue_qos0_messages: true,
            durability: Durability::Ack,
        }
    }
}

/// Access-control defaults used when no authentication plugin answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let clients connect when no authentication plugin is loaded.
    pub allow_anonymous: bool,
    /// Decision when authentication plugins are loaded and all of them ignore the client.
    pub no_match: Decision,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            no_match: Decision::Deny,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive (e.g. `info`, `broker=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks value ranges that the types alone do not express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.listeners.is_empty() {
            return invalid("listener", "must list at least one listener");
        }
        if self.mqtt.maximum_qos > 2 {
            return invalid("mqtt.maximum_qos", "must be 0, 1 or 2");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if self.listeners[..i].iter().any(|o| o.name == l.name) {
                return invalid("listener.name", &format!("{:?} is used twice", l.name));
            }
            if l.max_connections == 0 {
                return invalid("listener.max_connections", "must be at least 1");
            }
            if l.kind.uses_tls() && l.tls.is_none() {
                return invalid(
                    "listener.tls",
                    &format!("listener {:?} of kind {} needs a [listener.tls] table with cert_file and key_file", l.name, l.kind.name()),
                );
            }
            if let Some(tls) = &l.tls {
                if !l.kind.uses_tls() {
                    return invalid(
                        "listener.tls",
                        &format!("listener {:?} is {}, not tls or wss", l.name, l.kind.name()),
                    );
                }
                if tls.verify != Verify::None && tls.ca_file.is_none() {
                    return invalid(
                        "listener.tls.ca_file",
                        "is needed when verify is optional or required",
                    );
                }
            }
            if l.kind.uses_websocket() && !l.ws_path.starts_with('/') {
                return invalid("listener.ws_path", "must start with '/'");
            }
        }
        if !(64..=268_435_460).contains(&self.limits.max_packet_size) {
            return invalid(
                "limits.max_packet_size",
                "must be between 64 and 268435460 bytes",
            );
        }
        if self.limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        let incoming = self.limits.max_incoming_bytes;
        if incoming > 0 && incoming < self.limits.max_packet_size {
            return invalid(
                "limits.max_incoming_bytes",
                "must be 0 (no limit) or at least limits.max_packet_size: a packet of the largest size must fit",
            );
        }
        if self.limits.receive_maximum == 0 {
            return invalid("limits.receive_maximum", "must be at least 1");
        }
        if self.limits.max_inflight == 0 {
            return invalid("limits.max_inflight", "must be at least 1");
        }
        if self.limits.connect_timeout == 0 {
            return invalid("limits.connect_timeout", "must be at least 1 second");
        }
        if self.limits.max_topic_levels == 0 {
            return invalid("limits.max_topic_levels", "must be at least 1");
        }
        if self.limits.max_queued_bytes == 0 {
            return invalid("limits.max_queued_bytes", "must be at least 1");
        }
        if self.limits.slow_consumer_timeout == 0 {
            return invalid("limits.slow_consumer_timeout", "must be at least 1 second");
        }
        if let Err(message) = validate_log_level(&self.log.level) {
            return invalid("log.level", &message);
        }
        if self.limits.max_client_id_len == 0 {
            return invalid("limits.max_client_id_len", "must be at least 1");
        }
        if self.admin.enabled && !self.admin.bind.ip().is_loopback() && self.admin.tls.is_none() {
            return invalid(
                "admin.bind",
                "must be a loopback address (127.0.0.1 or ::1) unless [admin.tls] is set: the management API is never served as plain HTTP off loopback",
            );
        }
        if self.admin.max_body_bytes == 0 || self.admin.request_timeout_secs == 0 {
            return invalid(
                "admin",
                "max_body_bytes and request_timeout_secs must be at least 1",
            );
        }
        for name in &self.plugins.enabled {
            if !valid_plugin_name(name) {
                return invalid("plugins.enabled", &format!("{name:?} is not a plugin name"));
            }
        }
        Ok(())
    }

    /// Where the plugins' config files live.
    pub fn plugin_config_dir(&self, config_path: &Path) -> PathBuf {
        if self.plugins.config_dir.as_os_str().is_empty() {
            config_path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("plugins")
        } else {
            self.plugins.config_dir.clone()
        }
    }

    /// Where the API keys live.
    pub fn admin_api_keys_file(&self) -> PathBuf {
        if self.admin.api_keys_file.as_os_str().is_empty() {
            self.data_dir.join("api_keys.json")
        } else {
            self.admin.api_keys_file.clone()
        }
    }

    /// Where the admin token lives.
    pub fn admin_token_file(&self) -> PathBuf {
        if self.admin.token_file.as_os_str().is_empty() {
            self.data_dir.join("admin.token")
        } else {
            self.admin.token_file.clone()
        }
    }
}

/// The level names a log filter may use.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a tracing filter (`info`, `broker=debug,warn`): every directive must name a level.
/// A bare word that is not a level is a target with no level — almost always a typo of a level
/// (`inof`) that would silently leave the broker logging nothing, so it is refused.
pub fn validate_log_level(filter: &str) -> Result<(), String> {
    let is_level = |s: &str| LOG_LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    if filter.trim().is_empty() {
        return Err(format!(
            "must name a level: one of {}",
            LOG_LEVELS.join(", ")
        ));
    }
    for directive in filter.split(',') {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !is_level(level) {
            return Err(format!(
                "{:?} is not a log level (directive {:?}): use one of {}, or target=level",
                level.trim(),
                directive.trim(),
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A plugin name: 1 to 64 characters of `a-z`, `0-9` and `_`: it is the `lib<name>.so` a cdylib
/// crate of that name builds (Cargo turns a `-` in a crate name into `_` in the file name).
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/broker.toml");
        let c = Config::load(&path).expect("shipped etc/broker.toml is valid");
        assert_eq!(c.listeners[0].bind.port(), 1883);
        assert_eq!(
            (c.listeners[1].kind, c.listeners[1].bind.port()),
            (ListenerKind::Ws, 8083)
        );
        assert_eq!(c.plugins.enabled, ["retainer", "presence", "dashboard"]);
        assert!(c.admin.bind.ip().is_loopback() && c.admin.tls.is_none());
    }

    #[test]
    fn plain_http_admin_off_loopback_is_refused() {
        let err = Config::parse("[admin]\nbind = \"0.0.0.0:18083\"\n", Path::new("x.toml"))
            .expect_err("plain HTTP beyond loopback");
        assert!(err.to_string().contains("admin.tls"), "{err}");
        let ok = Config::parse(
            "[admin]\nbind = \"0.0.0.0:18083\"\n[admin.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
            Path::new("x.toml"),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[limits]\nmax_packet_sise = 10\n", Path::new("x.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("max_packet_sise"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn out_of_range_is_named() {
        let err = Config::parse("[limits]\nmax_packet_size = 1\n", Path::new("x.toml"))
            .expect_err("range");
        assert!(err.to_string().contains("limits.max_packet_size"));
        let err = Config::parse(
            "[limits]\nmax_packet_size = 2000000\nmax_incoming_bytes = 1000000\n",
            Path::new("x.toml"),
        )
        .expect_err("the largest packet must fit the incoming budget");
        assert!(
            err.to_string().contains("limits.max_incoming_bytes"),
            "{err}"
        );
        let ok = Config::parse(
            "[limits]\nmax_packet_size = 2000000\nmax_incoming_bytes = 0\n",
            Path::new("x.toml"),
        );
        assert!(ok.is_ok(), "0 is no limit: {ok:?}");
    }

    #[test]
    fn log_level_typos_are_refused() {
        for ok in [
            "info",
            "broker=debug,info",
            "WARN",
            "broker::session=trace, error",
            "off",
        ] {
            assert!(validate_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["inof", "", "broker=verbose", "debug,inof"] {
            assert!(validate_log_level(bad).is_err(), "{bad}");
        }
        let err = Config::parse("[log]\nlevel = \"inof\"\n", Path::new("x.toml"))
            .expect_err("typo refused");
        assert!(err.to_string().contains("log.level"), "{err}");
        assert!(err.to_string().contains("inof"), "{err}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).expect("defaults");
        assert_eq!(c.limits.max_packet_size, 1024 * 1024);
        assert!(c.auth.allow_anonymous);
    }
}

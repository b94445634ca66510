//! The JSON shapes of the management API, shared by the server and `brokerctl`.
//!
//! Where EMQX 5's REST API has an endpoint for the same thing, the field names are EMQX's
//! (`clientid`, `ip_address`, `conn_state`, `mqueue_len`, …) so scripts written for EMQX need
//! little change. Times are RFC 3339 strings in UTC, as EMQX gives them.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An error answer: a non-2xx status with this body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Machine-readable code (`NOT_FOUND`, `BAD_REQUEST`, `UNAUTHORIZED`, `CONFLICT`, …).
    pub code: String,
    /// One line for a human.
    pub message: String,
}

/// A one-line answer (`Plugin x loaded successfully.`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageReply {
    /// The line to print.
    pub message: String,
}

/// Paging parameters common to every list.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Page number, from 1 (default 1).
    pub page: Option<usize>,
    /// Items per page, 1 to 10 000 (default 100).
    pub limit: Option<usize>,
}

/// Paging information of a list answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Meta {
    /// The page returned, from 1.
    pub page: usize,
    /// Items per page.
    pub limit: usize,
    /// Items matching the filters, on every page.
    pub count: usize,
    /// Whether a later page has items.
    pub hasnext: bool,
}

/// A page of a list: `{"data": [...], "meta": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub data: Vec<T>,
    /// Where this page sits in the whole list.
    pub meta: Meta,
}

/// The node (`GET /api/v5/nodes`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Node name.
    pub node: String,
    /// `running`, or `stopping` while shutting down.
    pub node_status: String,
    /// Broker version.
    pub version: String,
    /// Milliseconds since start.
    pub uptime: u64,
    /// Connected clients.
    pub connections: u64,
    /// Sessions held (online and offline).
    pub sessions: usize,
    /// Subscriptions in the router.
    pub subscriptions: usize,
    /// Resident memory of the process, bytes (0 where unknown).
    pub memory_used: u64,
    /// The process id.
    pub pid: u32,
}

/// Node status and counters (`GET /api/v5/status`, `brokerctl status`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Broker version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Sessions held.
    pub sessions: usize,
    /// Subscriptions in the router.
    pub subscriptions: usize,
    /// Every counter and gauge (the names of `GET /metrics`, without the `broker_` prefix).
    #[schema(value_type = Object)]
    pub metrics: crate::metrics::MetricsSnapshot,
}

/// A client: connected, or an offline session waiting for it (`GET /api/v5/clients`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Client {
    /// Client identifier.
    pub clientid: String,
    /// User name of the current (or last) connection, if any.
    pub username: Option<String>,
    /// Whether a connection is attached.
    pub connected: bool,
    /// Node name.
    pub node: String,
    /// Peer IP address (connected clients).
    pub ip_address: Option<String>,
    /// Peer port (connected clients).
    pub port: Option<u16>,
    /// Listener name (connected clients).
    pub listener: Option<String>,
    /// `mqtt` or `mqtt-ws` (connected clients).
    pub transport: Option<String>,
    /// Protocol level: 3, 4 or 5 (connected clients).
    pub proto_ver: Option<u8>,
    /// `MQIsdp` or `MQTT` (connected clients).
    pub proto_name: Option<String>,
    /// Keep alive in seconds (connected clients).
    pub keepalive: Option<u16>,
    /// Clean start / clean session flag (connected clients).
    pub clean_start: Option<bool>,
    /// Session expiry interval in force, seconds (4294967295 = never).
    pub expiry_interval: u64,
    /// When the connection was made (connected clients).
    pub connected_at: Option<String>,
    /// When the session went offline (offline sessions).
    pub disconnected_at: Option<String>,
    /// Subscriptions held.
    pub subscriptions_cnt: usize,
    /// Messages queued for it.
    pub mqueue_len: usize,
    /// Bytes queued for it (as the queue limits count them).
    pub mqueue_bytes: usize,
    /// Outgoing QoS 1/2 messages not yet acknowledged (kept while offline).
    pub inflight_cnt: usize,
    /// Whether an authentication plugin made it a superuser.
    pub is_superuser: Option<bool>,
    /// Common name of its TLS client certificate.
    pub cn: Option<String>,
}

/// Filters of `GET /api/v5/clients`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Exact client id.
    pub clientid: Option<String>,
    /// Exact user name.
    pub username: Option<String>,
    /// Client ids containing this text.
    pub like_clientid: Option<String>,
    /// User names containing this text.
    pub like_username: Option<String>,
    /// `connected` or `disconnected`.
    pub conn_state: Option<String>,
    /// Peer IP address.
    pub ip_address: Option<String>,
    /// Protocol level.
    pub proto_ver: Option<u8>,
}

/// One subscription of one client.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    /// Client identifier.
    pub clientid: String,
    /// The filter as the client sent it (`$share/<group>/…` included).
    pub topic: String,
    /// Granted QoS.
    pub qos: u8,
    /// No local.
    pub nl: u8,
    /// Retain as published.
    pub rap: u8,
    /// Retain handling: 0, 1 or 2.
    pub rh: u8,
    /// Subscription identifier, if the client gave one.
    pub sub_id: Option<u32>,
    /// Node name.
    pub node: String,
}

/// Filters of `GET /api/v5/subscriptions`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionQuery {
    /// Only this client's.
    pub clientid: Option<String>,
    /// Only this exact filter (as sent, `$share/…` included).
    pub topic: Option<String>,
    /// Only subscriptions whose filter matches this topic name.
    pub match_topic: Option<String>,
    /// Only this granted QoS.
    pub qos: Option<u8>,
    /// Only members of this shared-subscription group.
    pub share_group: Option<String>,
}

/// A subscription to add for a client (`POST /api/v5/clients/{clientid}/subscribe`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubscribeRequest {
    /// Topic filter (`$share/<group>/…` allowed).
    pub topic: String,
    /// Maximum QoS (default 0).
    #[serde(default)]
    pub qos: u8,
    /// No local (0 or 1).
    #[serde(default)]
    pub nl: u8,
    /// Retain as published (0 or 1).
    #[serde(default)]
    pub rap: u8,
    /// Retain handling (0, 1 or 2).
    #[serde(default)]
    pub rh: u8,
}

/// A subscription to remove (`POST /api/v5/clients/{clientid}/unsubscribe`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnsubscribeRequest {
    /// The filter as it was subscribed.
    pub topic: String,
}

/// A session, online or offline (`GET /api/v5/sessions`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Client id.
    pub client_id: String,
    /// A connection is attached.
    pub online: bool,
    /// Session expiry interval in force, seconds (4294967295 = never).
    pub expiry_interval: u64,
    /// When it went offline, epoch ms (None while online).
    pub offline_since_ms: Option<u64>,
    /// Messages queued.
    pub queued: usize,
    /// Bytes queued (as the queue limits count them).
    pub queued_bytes: usize,
    /// Unacknowledged outgoing messages kept while offline.
    pub inflight: usize,
    /// Its subscriptions: filter as sent and granted QoS.
    #[schema(value_type = Vec<Object>)]
    pub subscriptions: Vec<(String, u8)>,
}

/// Filters of `GET /api/v5/sessions`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// `true`: connected only; `false`: offline only.
    pub online: Option<bool>,
}

/// MQTT 5 properties of a message published through the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PublishProperties {
    /// Payload format indicator: 0 bytes, 1 UTF-8 text.
    pub payload_format_indicator: Option<u8>,
    /// Message expiry interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data (as text).
    pub correlation_data: Option<String>,
    /// Content type.
    pub content_type: Option<String>,
    /// User properties, in order.
    #[serde(default)]
    pub user_properties: std::collections::BTreeMap<String, String>,
}

/// A message to publish (`POST /api/v5/publish`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishRequest {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload, as text or base64 (see `payload_encoding`).
    #[serde(default)]
    pub payload: String,
    /// `plain` (default) or `base64`.
    #[serde(default)]
    pub payload_encoding: Option<String>,
    /// QoS (default 0).
    #[serde(default)]
    pub qos: u8,
    /// Retain flag (default false).
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 properties.
    #[serde(default)]
    pub properties: PublishProperties,
}

/// The answer to one publish.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishReply {
    /// An id for this message, unique on this node.
    pub id: String,
    /// How many sessions it was queued for.
    pub delivered: u32,
    /// `no_matching_subscribers` when nobody received it (status 202), as EMQX answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// 16 (no matching subscribers) with `message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<u8>,
}

/// A retained message (`GET /api/v5/mqtt/retainer/messages`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Retained {
    /// Topic name.
    pub topic: String,
    /// QoS it was published with.
    pub qos: u8,
    /// When it was stored.
    pub publish_at: String,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// Payload, base64 (single-message answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// A delayed publish waiting for its time (`GET /api/v5/mqtt/delayed/messages`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DelayedMessage {
    /// Its id (`brokerctl delayed del <id>`).
    pub msgid: String,
    /// Node that holds it.
    pub node: String,
    /// The topic it will be published to.
    pub topic: String,
    /// QoS.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// When it was published to `$delayed/…`.
    pub publish_at: String,
    /// When it will be published.
    pub expected_at: String,
    /// The delay asked for, seconds.
    pub delayed_interval: u64,
    /// Seconds left.
    pub delayed_remaining: u64,
    /// Publisher's client id.
    pub from_clientid: Option<String>,
    /// Publisher's user name.
    pub from_username: Option<String>,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// Payload, base64 (single-message answers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// Filters of `GET /api/v5/mqtt/retainer/messages`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetainedQuery {
    /// Only topics matching this filter.
    pub topic: Option<String>,
}

/// A plugin-registered command (`GET /api/v5/commands`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandInfo {
    /// Command name (`brokerctl <name> …`).
    pub name: String,
    /// Usage line(s).
    pub usage: String,
    /// Plugin that answers it.
    pub plugin: String,
}

/// A plugin with the text of its configuration file (`GET /api/v5/plugins/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PluginDetail {
    /// What `GET /api/v5/plugins` lists for it.
    #[schema(value_type = Object)]
    pub plugin: crate::plugin::PluginInfo,
    /// Path of `etc/plugins/<name>.toml`.
    pub config_file: String,
    /// Its text (empty when there is none).
    pub config: String,
}

/// A listener the broker accepts clients on (`GET /api/v5/listeners`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Listener {
    /// Name from the config.
    pub name: String,
    /// `tcp`, `tls`, `ws` or `wss`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address bound (with the real port when the config asked for port 0).
    pub bind: String,
    /// WebSocket path (ws and wss).
    pub ws_path: Option<String>,
    /// Whether it is accepting clients.
    pub running: bool,
}

/// An API key as listed (the secret is never shown again after creation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    /// Unique name.
    pub name: String,
    /// The key (the user part of `Authorization: Basic`).
    pub api_key: String,
    /// Free text.
    pub desc: String,
    /// When it was created.
    pub created_at: String,
    /// When it stops working (None = never).
    pub expired_at: Option<String>,
    /// Whether it is accepted.
    pub enable: bool,
}

/// A key to create (`POST /api/v5/api_key`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyRequest {
    /// Unique name: letters, digits, `_` and `-`.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub desc: String,
    /// Lifetime in seconds from now (None = never expires).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A created key: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key as listed.
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The secret (the password part of `Authorization: Basic`).
    pub api_secret: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `starting` or `stopping`.
    pub status: String,
    /// Node name.
    pub node: String,
}

/// Formats epoch milliseconds as RFC 3339 (UTC, milliseconds), as EMQX shows times.
pub fn rfc3339(epoch_ms: u64) -> String {
    let nanos = i128::from(epoch_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            let t = t
                .replace_nanosecond((epoch_ms % 1000) as u32 * 1_000_000)
                .ok()?;
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

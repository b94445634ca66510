//! The types that cross the boundary between the broker and a plugin library.
//!
//! Everything here is `#[repr(C)]` and derives [`StableAbi`], so the broker checks at load time
//! that the plugin was compiled against a layout-identical copy of this crate. Identifiers that
//! may grow (hook points, error kinds) are integer newtypes with associated constants rather
//! than enums: a plugin built against an older API never sees a value it cannot represent.
//!
//! Ownership: `*View<'a>` types are **borrowed** from the broker for the duration of one call
//! (the plugin copies what it wants to keep); `AuthRequest` / `AclRequest` are **owned** by the
//! plugin because they travel into asynchronous work; results are owned by the broker once
//! returned.

use abi_stable::std_types::{ROption, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;

/// The plugin API version this crate defines: API *n* is `plugin-api` 0.1.(*n* − 1). A plugin
/// built against an older API of the same line loads unchanged on a newer broker; one built for
/// a newer API than the broker speaks is refused at load time; see `CHANGELOG.md`.
///
/// Since API 1 (API 2 is plugin-api 0.1.1, API 3 is 0.1.2).
pub const API_VERSION: u32 = 3;

/// A hook point, identified by a stable number; [`HookPoint::name`] gives EMQX's string.
///
/// Since API 1.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint(pub u32);

macro_rules! hook_points {
    ($($(#[$doc:meta])* $konst:ident = $n:literal, $name:literal;)*) => {
        impl HookPoint {
            $($(#[$doc])* pub const $konst: HookPoint = HookPoint($n);)*

            /// Every hook point this API version defines, in number order.
            pub const ALL: &'static [HookPoint] = &[$(HookPoint::$konst),*];

            /// EMQX's name for the hook point (`"client.connected"` …), or `None` for a number
            /// this API version does not define.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($n => Some($name),)*
                    _ => None,
                }
            }

            /// The hook point with EMQX's name `name`.
            pub fn from_name(name: &str) -> Option<HookPoint> {
                match name {
                    $($name => Some(HookPoint::$konst),)*
                    _ => None,
                }
            }
        }
    };
}

hook_points! {
    /// A CONNECT was received, before authentication. Notification ([`crate::Plugin::on_event`]).
    CLIENT_CONNECT = 0, "client.connect";
    /// A CONNACK is about to be sent; [`EventView::reason_code`] holds its v5 reason code.
    CLIENT_CONNACK = 1, "client.connack";
    /// A client is connected (after CONNACK 0). Notification.
    CLIENT_CONNECTED = 2, "client.connected";
    /// A connected client's connection ended; [`EventView::reason`] says why. Notification.
    CLIENT_DISCONNECTED = 3, "client.disconnected";
    /// Authentication chain (async): [`crate::Plugin::authenticate`].
    CLIENT_AUTHENTICATE = 4, "client.authenticate";
    /// ACL chain (async): [`crate::Plugin::check_acl`].
    CLIENT_CHECK_ACL = 5, "client.check_acl";
    /// Fold over each filter of a SUBSCRIBE: [`crate::Plugin::on_subscribe`].
    CLIENT_SUBSCRIBE = 6, "client.subscribe";
    /// Fold over each filter of an UNSUBSCRIBE: [`crate::Plugin::on_subscribe`].
    CLIENT_UNSUBSCRIBE = 7, "client.unsubscribe";
    /// A new session was created. Notification.
    SESSION_CREATED = 8, "session.created";
    /// An existing session was resumed. Notification.
    SESSION_RESUMED = 9, "session.resumed";
    /// A subscription was added; [`EventView::subscription`] describes it. Notification.
    SESSION_SUBSCRIBED = 10, "session.subscribed";
    /// A subscription was removed. Notification.
    SESSION_UNSUBSCRIBED = 11, "session.unsubscribed";
    /// A session was taken over by a new connection. Notification.
    SESSION_TAKENOVER = 12, "session.takenover";
    /// A session was discarded by a clean-start connection. Notification.
    SESSION_DISCARDED = 13, "session.discarded";
    /// A session ended (expiry or disconnect with expiry 0). Notification.
    SESSION_TERMINATED = 14, "session.terminated";
    /// Fold over a message about to be routed: [`crate::Plugin::on_message_publish`].
    MESSAGE_PUBLISH = 15, "message.publish";
    /// A message was written to a subscriber. Notification ([`crate::Plugin::on_message_event`]).
    MESSAGE_DELIVERED = 16, "message.delivered";
    /// A subscriber acknowledged a QoS 1 / 2 message. Notification.
    MESSAGE_ACKED = 17, "message.acked";
    /// A message was dropped (queue full, expired, too large). Notification.
    MESSAGE_DROPPED = 18, "message.dropped";
    /// A message left the whole `message.publish` chain and is about to be routed: the final
    /// message, whatever each plugin's priority (a retainer stores this, so a late subscriber
    /// gets exactly what live subscribers got). Notification through
    /// [`crate::Plugin::on_message_event`], with [`MessageEventView::client_id`] the publisher
    /// (empty for the broker's and plugins' own messages); called on the publisher's
    /// connection task, only for messages the plugin's [`PublishFilter`] wants; must not block.
    /// Not called for dropped messages.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    MESSAGE_PUBLISHED = 19, "message.published";
    /// The broker accepts clients: plugins of the loaded set are created and the listeners are
    /// bound. Notification ([`crate::Plugin::on_event`], with an empty client). Only plugins
    /// loaded at start-up see it; called once, on a broker thread.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    BROKER_STARTED = 20, "broker.started";
    /// The broker begins to stop (SIGTERM / Ctrl-C): listeners are about to close, clients and
    /// plugins are still there. Notification with an empty client; called once, on a broker
    /// thread; must not block (flush in `shutdown`, which follows).
    ///
    /// Since API 2 (plugin-api 0.1.1).
    BROKER_STOPPING = 21, "broker.stopping";
    /// MQTT 5 enhanced authentication (async): [`crate::Plugin::enhanced_auth`], once per step
    /// of the CONNECT / AUTH exchange, and again when a connected client re-authenticates.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    CLIENT_ENHANCED_AUTH = 22, "client.enhanced_auth";
    /// EMQX 5's name for what `message.dropped` reports here: a message dropped on its way to
    /// one subscriber (`queue_full`, `expired`, `too_large` in [`MessageEventView::reason`]).
    /// Fired together with `message.dropped`, through [`crate::Plugin::on_message_event`], on
    /// the thread that dropped it; must not block.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    DELIVERY_DROPPED = 23, "delivery.dropped";
    /// A message is routed to a shared subscription group: choose the member that gets it
    /// ([`crate::Plugin::select_shared`], with [`SelectSharedView`]). The first plugin that
    /// answers a member wins; with no answer the broker's round robin (preferring online
    /// members) decides. Called on the publisher's connection task for every message and
    /// every matching group, after the routing lock is released: must not block, and should
    /// cost well under a microsecond.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    SESSION_SELECT_SHARED = 24, "session.select_shared";
    /// An authorization (ACL) decision was made for a client's PUBLISH or SUBSCRIBE:
    /// [`crate::Plugin::on_authz_complete`] sees the request, the result and where it came
    /// from (`cache`, `plugin`, `default`, `superuser`). Notification, on the client's
    /// connection task, for every decision including cached ones; must not block.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    CLIENT_CHECK_AUTHZ_COMPLETE = 25, "client.check_authz_complete";
}

/// Named priorities (EMQX order): higher runs first; ties are ordered by plugin name.
///
/// Since API 1.
pub mod priority {
    /// Topic rewriting runs before everything that looks at topics.
    pub const REWRITE: i32 = 980;
    /// Authentication plugins.
    pub const AUTHENTICATION: i32 = 970;
    /// ACL plugins.
    pub const ACL: i32 = 960;
    /// The retainer.
    pub const RETAINER: i32 = 930;
    /// Auto-subscribe.
    pub const AUTO_SUBSCRIBE: i32 = 920;
    /// Presence events.
    pub const PRESENCE: i32 = 900;
    /// Anything that does not care.
    pub const LOWEST: i32 = 0;
}

/// The class of a [`PluginError`].
///
/// Since API 1.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The plugin's configuration is invalid; the message has the exact error.
    pub const CONFIG: ErrorKind = ErrorKind(1);
    /// A backend (database, HTTP service) failed.
    pub const BACKEND: ErrorKind = ErrorKind(2);
    /// The plugin panicked; the SDK caught it at the boundary.
    pub const PANICKED: ErrorKind = ErrorKind(3);
    /// Bad input to a command or hook.
    pub const INVALID: ErrorKind = ErrorKind(4);
    /// Anything else.
    pub const OTHER: ErrorKind = ErrorKind(5);

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::CONFIG => "config",
            ErrorKind::BACKEND => "backend",
            ErrorKind::PANICKED => "panicked",
            ErrorKind::INVALID => "invalid",
            _ => "other",
        }
    }
}

/// An error returned by a plugin.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// Its class.
    pub kind: ErrorKind,
    /// Human-readable detail; never contains a password.
    pub message: RString,
}

impl PluginError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::CONFIG, message)
    }

    /// A backend error.
    pub fn backend(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::BACKEND, message)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for PluginError {}

/// What a plugin says about itself, before it is created.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginDescription {
    /// Plugin name (the library's base name, e.g. `auth_http`).
    pub name: RString,
    /// The plugin's own version (its crate version).
    pub version: RString,
    /// One line describing it.
    pub description: RString,
}

/// One hook the plugin wants called, and where in the chain.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSpec {
    /// The hook point.
    pub point: HookPoint,
    /// Priority: higher runs first (see [`priority`]).
    pub priority: i32,
}

/// What the broker does when an auth or ACL call fails (error, panic, timeout).
///
/// Since API 1.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Fail closed: the connection or action is denied.
    #[default]
    Deny = 0,
    /// Ask the next plugin in the chain.
    Ignore = 1,
}

/// A `brokerctl` sub-command the plugin answers (`brokerctl <name> …`).
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct CommandSpec {
    /// The sub-command's name (`retainer`).
    pub name: RString,
    /// One usage line per form (`retainer topics [--filter F]`).
    pub usage: RString,
}

/// Everything a created plugin registers with the broker, read once per load.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct Registration {
    /// Hooks to call.
    pub hooks: RVec<HookSpec>,
    /// `brokerctl` commands the plugin answers.
    pub commands: RVec<CommandSpec>,
    /// Failure policy for its auth and ACL hooks.
    pub on_error: OnError,
    /// Per-call timeout for its async hooks in milliseconds; 0 = the broker's default.
    pub timeout_ms: u32,
    /// Which messages its `message.publish` hook wants; the broker does not call it for the
    /// others (at all: not even to build the message view). Default: every message.
    pub publish_filter: PublishFilter,
}

/// Narrows the messages a `message.publish` hook is called for.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishFilter {
    /// Only messages published with the RETAIN flag (a retainer).
    pub retained_only: bool,
    /// Only messages whose topic matches one of these filters; empty = every topic.
    pub topics: RVec<RString>,
}

impl PublishFilter {
    /// Whether a message with this topic and RETAIN flag passes the filter.
    pub fn wants(&self, topic: &str, retain: bool) -> bool {
        (!self.retained_only || retain)
            && (self.topics.is_empty()
                || self.topics.iter().any(|f| topic_matches(f.as_str(), topic)))
    }
}

/// A client as plugins see it. Borrowed for one call.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ClientView<'a> {
    /// Client identifier.
    pub client_id: RStr<'a>,
    /// User name, if the client sent one.
    pub username: ROption<RStr<'a>>,
    /// Peer IP address (no port).
    pub peer_ip: RStr<'a>,
    /// Peer port.
    pub peer_port: u16,
    /// Local port of the listener.
    pub sock_port: u16,
    /// Listener name.
    pub listener: RStr<'a>,
    /// `mqtt` or `mqtt-ws` (as `%r` in auth_http).
    pub transport: RStr<'a>,
    /// Protocol level: 3, 4 or 5.
    pub proto_ver: u8,
    /// `MQTT` or `MQIsdp`.
    pub proto_name: RStr<'a>,
    /// Keep alive in seconds.
    pub keep_alive: u16,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// Session expiry interval in seconds.
    pub expiry_interval: u32,
    /// Connection time, epoch milliseconds (0 before CONNACK).
    pub connected_at_ms: u64,
    /// TLS client certificate common name.
    pub cert_common_name: ROption<RStr<'a>>,
    /// TLS client certificate subject.
    pub cert_subject: ROption<RStr<'a>>,
    /// Whether authentication made this client a superuser.
    pub is_superuser: bool,
}

/// A client, owned: the same fields as [`ClientView`], for async requests.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: RString,
    /// User name.
    pub username: ROption<RString>,
    /// Peer IP address.
    pub peer_ip: RString,
    /// Peer port.
    pub peer_port: u16,
    /// Listener port.
    pub sock_port: u16,
    /// Listener name.
    pub listener: RString,
    /// `mqtt` or `mqtt-ws`.
    pub transport: RString,
    /// Protocol level.
    pub proto_ver: u8,
    /// Protocol name.
    pub proto_name: RString,
    /// Keep alive.
    pub keep_alive: u16,
    /// Clean start.
    pub clean_start: bool,
    /// Session expiry interval.
    pub expiry_interval: u32,
    /// Connection time, epoch ms.
    pub connected_at_ms: u64,
    /// TLS certificate CN.
    pub cert_common_name: ROption<RString>,
    /// TLS certificate subject.
    pub cert_subject: ROption<RString>,
    /// Superuser flag.
    pub is_superuser: bool,
}

impl ClientInfo {
    /// A borrowed view of this client.
    ///
    /// Since API 1.
    pub fn view(&self) -> ClientView<'_> {
        ClientView {
            client_id: self.client_id.as_rstr(),
            username: self.username.as_ref().map(|u| u.as_rstr()),
            peer_ip: self.peer_ip.as_rstr(),
            peer_port: self.peer_port,
            sock_port: self.sock_port,
            listener: self.listener.as_rstr(),
            transport: self.transport.as_rstr(),
            proto_ver: self.proto_ver,
            proto_name: self.proto_name.as_rstr(),
            keep_alive: self.keep_alive,
            clean_start: self.clean_start,
            expiry_interval: self.expiry_interval,
            connected_at_ms: self.connected_at_ms,
            cert_common_name: self.cert_common_name.as_ref().map(|c| c.as_rstr()),
            cert_subject: self.cert_subject.as_ref().map(|c| c.as_rstr()),
            is_superuser: self.is_superuser,
        }
    }
}

impl ClientView<'_> {
    /// An owned copy.
    pub fn to_owned_info(&self) -> ClientInfo {
        ClientInfo {
            client_id: self.client_id.into(),
            username: self.username.map(RString::from),
            peer_ip: self.peer_ip.into(),
            peer_port: self.peer_port,
            sock_port: self.sock_port,
            listener: self.listener.into(),
            transport: self.transport.into(),
            proto_ver: self.proto_ver,
            proto_name: self.proto_name.into(),
            keep_alive: self.keep_alive,
            clean_start: self.clean_start,
            expiry_interval: self.expiry_interval,
            connected_at_ms: self.connected_at_ms,
            cert_common_name: self.cert_common_name.map(RString::from),
            cert_subject: self.cert_subject.map(RString::from),
            is_superuser: self.is_superuser,
        }
    }
}

/// Subscription options as plugins see them.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOptions {
    /// Maximum QoS.
    pub qos: u8,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling (0, 1, 2).
    pub retain_handling: u8,
}

/// One member of a shared subscription group, borrowed ([`SelectSharedView::members`]).
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SharedMemberView<'a> {
    /// The member's client id.
    pub client_id: RStr<'a>,
    /// Whether its client is connected now (an offline member's session queues the message).
    pub online: bool,
    /// The QoS it subscribed with.
    pub qos: u8,
}

/// `session.select_shared`: a message and the members of one shared group that matched it.
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SelectSharedView<'a> {
    /// The group (`g` of `$share/g/filter`).
    pub group: RStr<'a>,
    /// The message, as it left the publish chain.
    pub message: MessageView<'a>,
    /// The members, in subscription order (at least one).
    pub members: RSlice<'a, SharedMemberView<'a>>,
    /// The index the broker's round robin would choose.
    pub default_choice: u32,
}

/// A subscription, borrowed.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SubscriptionView<'a> {
    /// The filter without any `$share/<group>/` prefix.
    pub filter: RStr<'a>,
    /// Share group for shared subscriptions.
    pub share_group: ROption<RStr<'a>>,
    /// Options.
    pub options: SubOptions,
    /// True if the subscription did not exist before (for retain handling 1).
    pub is_new: bool,
    /// v5 subscription identifier (0 = none).
    pub subscription_id: u32,
}

/// A notification event, borrowed for one call of [`crate::Plugin::on_event`].
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct EventView<'a> {
    /// The client concerned.
    pub client: ClientView<'a>,
    /// For `client.disconnected`: the reason (`normal`, `tcp_closed`, `keepalive_timeout`,
    /// `kicked`, `takenover`, `protocol_error`, `server_shutdown`, `io_error`). Else empty.
    pub reason: RStr<'a>,
    /// For `client.connack`: the v5 reason code.
    pub reason_code: u8,
    /// For `session.subscribed` / `session.unsubscribed`.
    pub subscription: ROption<SubscriptionView<'a>>,
}

/// A user property pair, borrowed.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct UserPropertyView<'a> {
    /// Key.
    pub key: RStr<'a>,
    /// Value.
    pub value: RStr<'a>,
}

/// An application message, borrowed for one hook call.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct MessageView<'a> {
    /// Topic (after any rewrite by a higher-priority plugin).
    pub topic: RStr<'a>,
    /// Payload.
    pub payload: RSlice<'a, u8>,
    /// QoS.
    pub qos: u8,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Publisher's client id (None for messages the broker or a plugin publishes).
    pub publisher: ROption<RStr<'a>>,
    /// Publisher's user name.
    pub username: ROption<RStr<'a>>,
    /// True for a will message.
    pub is_will: bool,
    /// v5 Message Expiry Interval remaining, seconds.
    pub message_expiry_interval: ROption<u32>,
    /// v5 Payload Format Indicator.
    pub payload_format_indicator: ROption<u8>,
    /// v5 Content Type.
    pub content_type: ROption<RStr<'a>>,
    /// v5 Response Topic.
    pub response_topic: ROption<RStr<'a>>,
    /// v5 Correlation Data.
    pub correlation_data: ROption<RSlice<'a, u8>>,
    /// v5 User Properties.
    pub user_properties: RSlice<'a, UserPropertyView<'a>>,
    /// Epoch milliseconds when the broker received it.
    pub timestamp_ms: u64,
}

/// A message event (`message.delivered`, `message.acked`, `message.dropped`), borrowed.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct MessageEventView<'a> {
    /// The receiving client's id (for `message.published`: the publisher's, empty for the
    /// broker's own messages).
    pub client_id: RStr<'a>,
    /// The message.
    pub message: MessageView<'a>,
    /// For `message.dropped`: why (`queue_full`, `expired`, `too_large`). For
    /// `message.published`: `remote` when another node published it (it came through
    /// [`crate::Host::deliver_remote`], since API 3), empty for a message published here.
    pub reason: RStr<'a>,
}

/// What a fold hook decided. `ContinueWith` / `StopWith` carry a replacement.
///
/// Since API 1.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum Flow<T> {
    /// Pass the value on unchanged to the next plugin.
    Continue,
    /// Pass this replacement on to the next plugin.
    ContinueWith(T),
    /// Stop the chain; the value as it was is final.
    Stop,
    /// Stop the chain with this replacement as final.
    StopWith(T),
}

/// Changes a `message.publish` hook makes to a message.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageEdit {
    /// New topic (must be a valid topic name, else the broker keeps the old one and logs).
    pub topic: ROption<RString>,
    /// New payload.
    pub payload: ROption<RVec<u8>>,
    /// Drop the message: it is not routed (QoS 1 / 2 publishers are still acknowledged).
    pub drop: bool,
}

impl MessageEdit {
    /// The same change as a list of [`EditOp`]s.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn into_ops(self) -> RVec<EditOp> {
        let mut ops = RVec::new();
        if let ROption::RSome(t) = self.topic {
            ops.push(EditOp::set_topic(t.as_str()));
        }
        if let ROption::RSome(p) = self.payload {
            ops.push(EditOp::set_payload(p.into_vec()));
        }
        if self.drop {
            ops.push(EditOp::drop_message(""));
        }
        ops
    }
}

/// What one [`EditOp`] changes. A number, so that later releases can add kinds without
/// changing any layout; a broker that does not know a kind ignores that operation (and logs).
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EditKind(pub u32);

impl EditKind {
    /// `key` = the new topic name.
    pub const SET_TOPIC: EditKind = EditKind(1);
    /// `value` = the new payload.
    pub const SET_PAYLOAD: EditKind = EditKind(2);
    /// `number` = the new QoS (0, 1, 2).
    pub const SET_QOS: EditKind = EditKind(3);
    /// `number` = 1 to set the RETAIN flag, 0 to clear it.
    pub const SET_RETAIN: EditKind = EditKind(4);
    /// Appends the user property `key` = `value` (UTF-8).
    pub const ADD_USER_PROPERTY: EditKind = EditKind(5);
    /// Replaces every user property named `key` by one with `value`.
    pub const SET_USER_PROPERTY: EditKind = EditKind(6);
    /// Removes every user property named `key`.
    pub const REMOVE_USER_PROPERTY: EditKind = EditKind(7);
    /// `number` = the message expiry interval in seconds from now; `u64::MAX` = no expiry.
    pub const SET_MESSAGE_EXPIRY: EditKind = EditKind(8);
    /// `key` = the content type; empty removes it.
    pub const SET_CONTENT_TYPE: EditKind = EditKind(9);
    /// `number` = the payload format indicator (0 bytes, 1 UTF-8); `u64::MAX` removes it.
    pub const SET_PAYLOAD_FORMAT: EditKind = EditKind(10);
    /// `key` = the response topic; empty removes it.
    pub const SET_RESPONSE_TOPIC: EditKind = EditKind(11);
    /// `value` = the correlation data; empty removes it.
    pub const SET_CORRELATION_DATA: EditKind = EditKind(12);
    /// Drops the message (not routed; publishers are still acknowledged); `key` = why, for the
    /// log and `message.dropped`.
    pub const DROP: EditKind = EditKind(13);
}

/// One change to a message in `message.publish`: a kind and its operands. A list of these is
/// what [`crate::Plugin::edit_message`] returns; the layout never changes when kinds are added.
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct EditOp {
    /// What changes.
    pub kind: EditKind,
    /// A text operand (topic, property key, content type, …).
    pub key: RString,
    /// A bytes operand (payload, property value, correlation data).
    pub value: RVec<u8>,
    /// A number operand (QoS, flag, seconds).
    pub number: u64,
}

impl EditOp {
    fn new(kind: EditKind, key: &str, value: Vec<u8>, number: u64) -> EditOp {
        EditOp {
            kind,
            key: key.into(),
            value: value.into(),
            number,
        }
    }

    /// Changes the topic.
    pub fn set_topic(topic: &str) -> EditOp {
        EditOp::new(EditKind::SET_TOPIC, topic, Vec::new(), 0)
    }
    /// Changes the payload.
    pub fn set_payload(payload: impl Into<Vec<u8>>) -> EditOp {
        EditOp::new(EditKind::SET_PAYLOAD, "", payload.into(), 0)
    }
    /// Changes the QoS subscribers get at most.
    pub fn set_qos(qos: u8) -> EditOp {
        EditOp::new(EditKind::SET_QOS, "", Vec::new(), qos.into())
    }
    /// Sets or clears the RETAIN flag.
    pub fn set_retain(retain: bool) -> EditOp {
        EditOp::new(EditKind::SET_RETAIN, "", Vec::new(), retain.into())
    }
    /// Appends a user property.
    pub fn add_user_property(key: &str, value: &str) -> EditOp {
        EditOp::new(
            EditKind::ADD_USER_PROPERTY,
            key,
            value.as_bytes().to_vec(),
            0,
        )
    }
    /// Replaces every user property named `key`.
    pub fn set_user_property(key: &str, value: &str) -> EditOp {
        EditOp::new(
            EditKind::SET_USER_PROPERTY,
            key,
            value.as_bytes().to_vec(),
            0,
        )
    }
    /// Removes every user property named `key`.
    pub fn remove_user_property(key: &str) -> EditOp {
        EditOp::new(EditKind::REMOVE_USER_PROPERTY, key, Vec::new(), 0)
    }
    /// Sets the message expiry interval (seconds from now); `None` removes it.
    pub fn set_message_expiry(seconds: Option<u32>) -> EditOp {
        let n = seconds.map_or(u64::MAX, u64::from);
        EditOp::new(EditKind::SET_MESSAGE_EXPIRY, "", Vec::new(), n)
    }
    /// Sets (or, with "", removes) the content type.
    pub fn set_content_type(content_type: &str) -> EditOp {
        EditOp::new(EditKind::SET_CONTENT_TYPE, content_type, Vec::new(), 0)
    }
    /// Sets (or, with `None`, removes) the payload format indicator.
    pub fn set_payload_format(format: Option<u8>) -> EditOp {
        let n = format.map_or(u64::MAX, u64::from);
        EditOp::new(EditKind::SET_PAYLOAD_FORMAT, "", Vec::new(), n)
    }
    /// Sets (or, with "", removes) the response topic.
    pub fn set_response_topic(topic: &str) -> EditOp {
        EditOp::new(EditKind::SET_RESPONSE_TOPIC, topic, Vec::new(), 0)
    }
    /// Sets (or, with empty data, removes) the correlation data.
    pub fn set_correlation_data(data: impl Into<Vec<u8>>) -> EditOp {
        EditOp::new(EditKind::SET_CORRELATION_DATA, "", data.into(), 0)
    }
    /// Drops the message, saying why.
    pub fn drop_message(reason: &str) -> EditOp {
        EditOp::new(EditKind::DROP, reason, Vec::new(), 0)
    }
}

/// What one [`SubscribeOp`] decides. A number, so that later releases can add kinds without
/// changing any layout.
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscribeOpKind(pub u32);

impl SubscribeOpKind {
    /// `key` = the filter to subscribe to instead (without `$share/<group>/`).
    pub const SET_FILTER: SubscribeOpKind = SubscribeOpKind(1);
    /// `number` = the highest QoS to grant (the client asked for more: it gets this).
    pub const LIMIT_QOS: SubscribeOpKind = SubscribeOpKind(2);
    /// Refuse this filter: `number` = the MQTT 5 SUBACK reason code (0x80 or above, e.g. 0x87
    /// not authorized, 0x97 quota exceeded; MQTT 3 clients get 0x80), `key` = why, for the log.
    pub const REFUSE: SubscribeOpKind = SubscribeOpKind(3);
    /// `number` = the subscription identifier to attach (1 to 268 435 455; 0 removes it).
    pub const SET_SUBSCRIPTION_ID: SubscribeOpKind = SubscribeOpKind(4);
    /// `number` = 1 sets No Local, 0 clears it.
    pub const SET_NO_LOCAL: SubscribeOpKind = SubscribeOpKind(5);
    /// `number` = 1 sets Retain As Published, 0 clears it.
    pub const SET_RETAIN_AS_PUBLISHED: SubscribeOpKind = SubscribeOpKind(6);
    /// `number` = Retain Handling (0, 1, 2).
    pub const SET_RETAIN_HANDLING: SubscribeOpKind = SubscribeOpKind(7);
}

/// One decision about a filter of a SUBSCRIBE (`client.subscribe`), returned as a list by
/// [`crate::Plugin::decide_subscribe`].
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOp {
    /// What it decides.
    pub kind: SubscribeOpKind,
    /// A text operand (filter, reason).
    pub key: RString,
    /// A number operand (QoS, reason code, identifier, flag).
    pub number: u64,
}

impl SubscribeOp {
    fn new(kind: SubscribeOpKind, key: &str, number: u64) -> SubscribeOp {
        SubscribeOp {
            kind,
            key: key.into(),
            number,
        }
    }
    /// Subscribe to `filter` instead.
    pub fn set_filter(filter: &str) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::SET_FILTER, filter, 0)
    }
    /// Grant at most `qos`.
    pub fn limit_qos(qos: u8) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::LIMIT_QOS, "", qos.into())
    }
    /// Refuse the filter with an MQTT 5 reason code (0x80 or above).
    pub fn refuse(reason_code: u8, why: &str) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::REFUSE, why, reason_code.into())
    }
    /// Attach a subscription identifier (0 removes it).
    pub fn set_subscription_id(id: u32) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::SET_SUBSCRIPTION_ID, "", id.into())
    }
    /// Set or clear No Local.
    pub fn set_no_local(on: bool) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::SET_NO_LOCAL, "", on.into())
    }
    /// Set or clear Retain As Published.
    pub fn set_retain_as_published(on: bool) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::SET_RETAIN_AS_PUBLISHED, "", on.into())
    }
    /// Set Retain Handling (0, 1, 2).
    pub fn set_retain_handling(rh: u8) -> SubscribeOp {
        SubscribeOp::new(SubscribeOpKind::SET_RETAIN_HANDLING, "", rh.into())
    }
}

/// One filter of a SUBSCRIBE or UNSUBSCRIBE, borrowed, for `client.subscribe` /
/// `client.unsubscribe`.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SubscribeView<'a> {
    /// The client.
    pub client: ClientView<'a>,
    /// The filter without any `$share/<group>/` prefix (after earlier rewrites).
    pub filter: RStr<'a>,
    /// Share group, if shared.
    pub share_group: ROption<RStr<'a>>,
    /// Options (zero for UNSUBSCRIBE).
    pub options: SubOptions,
}

/// An authentication request. Owned by the plugin.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct AuthRequest {
    /// The connecting client.
    pub client: ClientInfo,
    /// The password, if sent. Never log it.
    pub password: ROption<RVec<u8>>,
}

/// An authentication answer.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Let the client in.
    Allow {
        /// Superusers skip ACL checks.
        superuser: bool,
    },
    /// Refuse the client.
    Deny(DenyReason),
    /// No opinion: ask the next plugin.
    Ignore,
}

/// Why authentication refused a client; decides the CONNACK code.
///
/// Since API 1.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// v3 4 / v5 0x86.
    BadCredentials = 0,
    /// v3 5 / v5 0x87.
    NotAuthorized = 1,
    /// v3 3 / v5 0x88: the backend is unavailable.
    ServerUnavailable = 2,
}

/// Publish or subscribe, as `%A` in auth_http: 1 subscribe, 2 publish.
///
/// Since API 1.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// SUBSCRIBE.
    Subscribe = 1,
    /// PUBLISH.
    Publish = 2,
}

/// An ACL request. Owned by the plugin.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct AclRequest {
    /// The client.
    pub client: ClientInfo,
    /// Publish or subscribe.
    pub access: Access,
    /// The topic or filter as the client sent it (before rewrite).
    pub topic: RString,
}

/// An ACL answer.
///
/// Since API 1.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclResult {
    /// Permit.
    Allow = 0,
    /// Refuse.
    Deny = 1,
    /// No opinion: ask the next plugin.
    Ignore = 2,
}

/// A message a plugin asks the broker to publish.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct OutgoingMessage {
    /// Topic name.
    pub topic: RString,
    /// Payload.
    pub payload: RVec<u8>,
    /// QoS 0..2.
    pub qos: u8,
    /// RETAIN flag (stored by a retainer plugin, if loaded).
    pub retain: bool,
    /// v5 user properties.
    pub user_properties: RVec<abi_stable::std_types::Tuple2<RString, RString>>,
    /// v5 Message Expiry Interval, seconds.
    pub message_expiry_interval: ROption<u32>,
    /// v5 Payload Format Indicator.
    pub payload_format_indicator: ROption<u8>,
    /// v5 Content Type.
    pub content_type: ROption<RString>,
    /// v5 Response Topic.
    pub response_topic: ROption<RString>,
    /// v5 Correlation Data.
    pub correlation_data: ROption<RVec<u8>>,
}

/// A log record forwarded from a plugin to the broker's log.
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct LogRecord<'a> {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u8,
    /// The event's target (module path).
    pub target: RStr<'a>,
    /// The formatted message and fields.
    pub message: RStr<'a>,
}

impl<'a> MessageView<'a> {
    /// A QoS 0 message with no properties: the starting point for tests of
    /// [`crate::Plugin::on_message_publish`].
    ///
    /// Since API 1.
    pub fn new(topic: &'a str, payload: &'a [u8]) -> MessageView<'a> {
        MessageView {
            topic: topic.into(),
            payload: payload.into(),
            qos: 0,
            retain: false,
            publisher: ROption::RNone,
            username: ROption::RNone,
            is_will: false,
            message_expiry_interval: ROption::RNone,
            payload_format_indicator: ROption::RNone,
            content_type: ROption::RNone,
            response_topic: ROption::RNone,
            correlation_data: ROption::RNone,
            user_properties: RSlice::from_slice(&[]),
            timestamp_ms: 0,
        }
    }
}

/// Does topic filter `filter` match topic name `topic` (MQTT section 4.7)? `+` matches one
/// level, a trailing `#` any number (including none: `a/#` matches `a`), and a topic starting
/// with `$` is not matched by a filter starting with a wildcard.
///
/// One pass over both strings, no recursion and no allocation: safe on topics of any depth.
///
/// Since API 1.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    /// A matcher that recursed once per level would overflow this thread's 256 KiB stack.
    #[test]
    fn deep_topics_use_no_stack_per_level() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let topic = "a/".repeat(99_999) + "b";
                assert!(topic_matches(&topic, &topic));
                assert!(topic_matches(&("+/".repeat(99_999) + "b"), &topic));
                assert!(topic_matches(&("+/".repeat(50_000) + "#"), &topic));
                assert!(!topic_matches(&("+/".repeat(99_999) + "c"), &topic));
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow");
    }
}

/// A request to the broker's management API, run inside the broker without HTTP (host service
/// [`crate::Host::management_request`]). The same endpoints and JSON as over HTTP
/// (`GET /api/v5/clients`, `POST /api/v5/publish`, …).
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct ApiRequest {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: RString,
    /// Path and query string, e.g. `/api/v5/clients?conn_state=connected`.
    pub path: RString,
    /// An `Authorization` header value to check as if the request came over HTTP (a plugin
    /// forwarding a user's request); none = act with the plugin's own authority.
    pub authorization: ROption<RString>,
    /// JSON body (empty for GET and DELETE).
    pub body: RVec<u8>,
}

/// The management API's answer to an [`ApiRequest`].
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` of the body (`application/json`, or text for `/metrics`).
    pub content_type: RString,
    /// The body.
    pub body: RVec<u8>,
}

/// One step of an MQTT 5 enhanced authentication exchange (`client.enhanced_auth`).
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct EnhancedAuthRequest {
    /// The client (its `connected_at_ms` names this connection: keep per-exchange state
    /// under `(client_id, connected_at_ms)`).
    pub client: ClientInfo,
    /// The Authentication Method the client chose (e.g. `SCRAM-SHA-256`).
    pub method: RString,
    /// The Authentication Data of this step (from CONNECT at step 0, then from each AUTH).
    pub data: RVec<u8>,
    /// 0 for the first step, then 1, 2, …
    pub step: u32,
    /// A connected client re-authenticating (AUTH with reason 0x19), not a CONNECT.
    pub reauthenticate: bool,
}

/// What a step of enhanced authentication decided.
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedAuthOutcome(pub u32);

impl EnhancedAuthOutcome {
    /// Not this plugin's method: ask the next plugin.
    pub const IGNORE: EnhancedAuthOutcome = EnhancedAuthOutcome(0);
    /// Send `data` to the client in an AUTH (0x18) and call again with its answer.
    pub const CONTINUE: EnhancedAuthOutcome = EnhancedAuthOutcome(1);
    /// Authenticated: `data` goes to the client in CONNACK (or AUTH 0x00 when re-authenticating).
    pub const SUCCESS: EnhancedAuthOutcome = EnhancedAuthOutcome(2);
    /// Refused with `reason_code` (CONNACK, or DISCONNECT when re-authenticating).
    pub const FAILURE: EnhancedAuthOutcome = EnhancedAuthOutcome(3);
}

/// The answer to an [`EnhancedAuthRequest`].
///
/// Since API 2 (plugin-api 0.1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct EnhancedAuthResult {
    /// What to do.
    pub outcome: EnhancedAuthOutcome,
    /// Authentication Data for the client (may be empty).
    pub data: RVec<u8>,
    /// With `SUCCESS`: the client skips ACL checks.
    pub superuser: bool,
    /// With `FAILURE`: the MQTT 5 reason code (0x87 not authorized, 0x8C bad authentication
    /// method, …; anything below 0x80 becomes 0x87).
    pub reason_code: u8,
}

impl EnhancedAuthResult {
    /// Not this plugin's method.
    pub fn ignore() -> Self {
        EnhancedAuthResult {
            outcome: EnhancedAuthOutcome::IGNORE,
            data: RVec::new(),
            superuser: false,
            reason_code: 0,
        }
    }
    /// Another round: send `data` in an AUTH packet.
    pub fn continue_with(data: Vec<u8>) -> Self {
        EnhancedAuthResult {
            outcome: EnhancedAuthOutcome::CONTINUE,
            data: data.into(),
            superuser: false,
            reason_code: 0x18,
        }
    }
    /// Authenticated, with final data for the client.
    pub fn success(data: Vec<u8>, superuser: bool) -> Self {
        EnhancedAuthResult {
            outcome: EnhancedAuthOutcome::SUCCESS,
            data: data.into(),
            superuser,
            reason_code: 0,
        }
    }
    /// Refused.
    pub fn failure(reason_code: u8) -> Self {
        EnhancedAuthResult {
            outcome: EnhancedAuthOutcome::FAILURE,
            data: RVec::new(),
            superuser: false,
            reason_code,
        }
    }
}

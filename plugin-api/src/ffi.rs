//! The two trait objects of the boundary, and the root module a plugin library exports.
//!
//! * [`Host`] — services the broker offers a plugin. Implemented by the broker, called by the
//!   plugin on any of its own threads; every method is non-blocking.
//! * [`PluginInstance`] — a created plugin. Implemented by the SDK's adapter (never by hand),
//!   called by the broker. Synchronous methods run on a broker thread and must not block;
//!   asynchronous ones return an [`FfiFuture`] whose work runs on the plugin's own runtime.
//! * [`PluginMod`] — the root module: what the broker reads first to check versions and create
//!   the plugin.
//!
//! All three only grow by appending methods/fields after the `last_prefix_field`, each with a
//! default, so a broker can load plugins built against an older API of the same major version.

#![allow(non_local_definitions)] // emitted by the #[sabi_trait] expansion, not by this code

use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RStr, RString, RVec};
use abi_stable::{package_version_strings, StableAbi};
use async_ffi::FfiFuture;

use crate::abi::*;

/// Services the broker offers to a plugin.
///
/// Caller: the plugin, on any thread. Owner: the broker; the plugin holds a clone ([`HostRef`])
/// for as long as it lives. Every method returns quickly and never blocks.
///
/// Since API 1.
#[sabi_trait]
pub trait Host: Send + Sync + Clone {
    /// Writes a record to the broker's log, tagged with the plugin's name.
    fn log(&self, record: LogRecord<'_>);

    /// Publishes a message as the broker (no publisher client id). It goes through the
    /// `message.publish` chain like any other message. Returns how many sessions it was
    /// queued for.
    fn publish(&self, message: OutgoingMessage) -> RResult<u32, RString>;

    /// Subscribes an existing session to `filter` as if the client had sent SUBSCRIBE
    /// (auto-subscribe). Returns the granted QoS.
    fn subscribe(
        &self,
        client_id: RStr<'_>,
        filter: RStr<'_>,
        options: SubOptions,
    ) -> RResult<u8, RString>;

    /// Information about a connected client.
    fn client_info(&self, client_id: RStr<'_>) -> ROption<ClientInfo>;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// The broker's node name.
    #[sabi(last_prefix_field)]
    fn node_name(&self) -> RString;

    /// Delivers `message` to one client's session only, with the RETAIN flag as given, at the
    /// message's QoS (the caller applies min(stored, granted)), tagged with
    /// `subscription_id` (0 = none). For a retainer replaying retained messages on subscribe;
    /// it bypasses routing and the `message.publish` chain.
    fn deliver(
        &self,
        client_id: RStr<'_>,
        message: OutgoingMessage,
        subscription_id: u32,
    ) -> RResult<(), RString> {
        let _ = (client_id, message, subscription_id);
        RResult::RErr("this broker does not support deliver".into())
    }

    /// Runs `request` through the broker's management API in process: everything `brokerctl`
    /// and the dashboard can see and do (clients, sessions, subscriptions, publish, retained
    /// messages, plugins, metrics). The future resolves on any runtime; the work runs on the
    /// broker's.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers status 501.
    fn management_request(&self, request: ApiRequest) -> FfiFuture<ApiResponse> {
        let _ = request;
        async_ffi::FutureExt::into_ffi(async {
            ApiResponse {
                status: 501,
                content_type: "text/plain".into(),
                body: b"this broker has no in-process management API"
                    .to_vec()
                    .into(),
            }
        })
    }

    /// Closes the connection of `client_id`, sending MQTT 5 clients a DISCONNECT with
    /// `reason_code` (0x80 or above, e.g. 0xA0 "maximum connect time" when a token expired;
    /// anything else becomes 0x98 "administrative action"). With `connected_at_ms` non-zero,
    /// only the connection that connected at that time (`ClientInfo::connected_at_ms`, as the
    /// authentication hook saw it) is closed, so a client that reconnected meanwhile is left
    /// alone. Returns whether such a connection was found; the close happens right after.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker returns false.
    fn disconnect(&self, client_id: RStr<'_>, connected_at_ms: u64, reason_code: u8) -> bool {
        let _ = (client_id, connected_at_ms, reason_code);
        false
    }

    /// Registers a metric of this plugin (or finds it again after a reload: same name, same
    /// id, value kept); returns its id for [`Host::metric_update`]. `kind`: 0 counter, 1
    /// gauge, 2 histogram (durations observed in microseconds; since API 2). `name`: 1-64 of
    /// `a-z 0-9 _`. It appears in `/metrics` as `broker_plugin_<plugin>_<name>` (counters end
    /// in `_total`, histograms in `_seconds`) and in `$SYS` under `plugins/<plugin>/<name>`.
    /// Prefer the SDK's [`crate::sdk::Counter`], [`crate::sdk::Gauge`] and
    /// [`crate::sdk::Histogram`].
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers an error.
    fn metric_register(&self, name: RStr<'_>, kind: u8, help: RStr<'_>) -> RResult<u32, RString> {
        let _ = (name, kind, help);
        RResult::RErr("this broker does not support plugin metrics".into())
    }

    /// Adds `value` to metric `id` (a counter ignores negative values), or sets it (`set`,
    /// gauges only); a histogram observes `value` microseconds. Lock-free on the broker side but a call across the boundary: count in the
    /// plugin and update in batches on hot paths.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn metric_update(&self, id: u32, value: i64, set: bool) {
        let _ = (id, value, set);
    }

    /// Removes subscription `filter` (as it was subscribed, `$share/…` included) from a
    /// session, online or offline, as if its client had sent UNSUBSCRIBE. Returns whether it
    /// existed.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers an error.
    fn unsubscribe(&self, client_id: RStr<'_>, filter: RStr<'_>) -> RResult<bool, RString> {
        let _ = (client_id, filter);
        RResult::RErr("this broker does not support unsubscribe".into())
    }

    /// This plugin's own directory for files that must outlive it (`<data_dir>/plugins/<name>`,
    /// created on first call, readable by the broker's user only). Empty when it cannot be
    /// created (the error is logged).
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers "".
    fn data_dir(&self) -> RString {
        RString::new()
    }

    /// The value this plugin stored under `key` in its durable key-value store (which survives
    /// reloads and broker restarts; one namespace per plugin name).
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers an error.
    fn kv_get(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, RString> {
        let _ = key;
        RResult::RErr("this broker has no plugin key-value store".into())
    }

    /// This plugin's keys starting with `prefix`, in order.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers an error.
    fn kv_keys(&self, prefix: RStr<'_>) -> RResult<RVec<RString>, RString> {
        let _ = prefix;
        RResult::RErr("this broker has no plugin key-value store".into())
    }

    /// Stores `value` under `key` (keys 1-1024 bytes, values up to 1 MiB); the future
    /// completes once it is on disc.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers an error.
    fn kv_put(&self, key: RStr<'_>, value: RVec<u8>) -> FfiFuture<RResult<(), RString>> {
        let _ = (key, value);
        async_ffi::FutureExt::into_ffi(async {
            RResult::RErr("this broker has no plugin key-value store".into())
        })
    }

    /// Deletes `key`; the future completes once that is on disc.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers an error.
    fn kv_delete(&self, key: RStr<'_>) -> FfiFuture<RResult<(), RString>> {
        let _ = key;
        async_ffi::FutureExt::into_ffi(async {
            RResult::RErr("this broker has no plugin key-value store".into())
        })
    }

    /// True for an instance that `plugins reload` creates while the previous instance still
    /// runs, to take its place and then its state: [`PluginInstance::resume`] follows once the
    /// previous instance has stopped. Such an instance must not take resources the previous one
    /// still holds (a database file, a port) before `resume`.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers false.
    fn resuming(&self) -> bool {
        false
    }

    /// The directory the broker reads plugin config files from (`etc/plugins`, absolute), so a
    /// plugin can resolve files its config names relative to it. Empty if unknown.
    ///
    /// Since API 2 (plugin-api 0.1.1); an older broker answers "".
    fn config_dir(&self) -> RString {
        RString::new()
    }

    /// Routes a message that arrived from another broker node (the inbound side of a cluster
    /// plugin). Unlike [`Host::publish`] it does not run the `message.publish` chain (the
    /// origin node ran it) and does not choose shared-subscription members on its own:
    ///
    /// * with `plain`, it is queued for every matching plain (non-shared) subscription;
    /// * for each entry of `shared`, a subscription as written (`$share/<group>/<filter>`,
    ///   the filter matching the topic), one member of that local group gets it, chosen by the
    ///   group's strategy like any message.
    ///
    /// `publisher` is the client id that published it on its own node, so No Local holds
    /// (empty = none). `message.published` fires with reason `remote`, so a retainer keeps a
    /// retained one and a cluster plugin can tell it from a local message (and not send it
    /// back out). Returns how many sessions it was queued for.
    ///
    /// Since API 3 (plugin-api 0.1.2); an older broker answers an error.
    fn deliver_remote(
        &self,
        message: OutgoingMessage,
        publisher: RStr<'_>,
        plain: bool,
        shared: RVec<RString>,
    ) -> RResult<u32, RString> {
        let _ = (message, publisher, plain, shared);
        RResult::RErr("this broker does not support deliver_remote (plugin API 3)".into())
    }

    /// The most detailed level the broker's log may record (0 off, 1 error, 2 warn, 3 info,
    /// 4 debug, 5 trace), for its filter as a whole (a directive for one target counts). The
    /// SDK asks it once, so that events above it — a dependency's `trace!` on a hot path — are
    /// never formatted in the plugin.
    ///
    /// Since API 3 (plugin-api 0.1.2); an older broker answers 5.
    fn log_level(&self) -> u8 {
        5
    }
}

/// The host object handed to a plugin at creation. Cheap to clone.
pub type HostRef = Host_TO<'static, RArc<()>>;

/// A created plugin, as the broker calls it.
///
/// Implemented by the SDK adapter around a [`crate::Plugin`]; every method catches panics and
/// reports them as [`ErrorKind::PANICKED`]. Caller: the broker. Synchronous methods are called
/// on broker threads, concurrently, and must not block.
///
/// Since API 1.
#[sabi_trait]
pub trait PluginInstance: Send + Sync {
    /// What to register: hooks, commands, error policy. Called once after `create`.
    fn registration(&self) -> RResult<Registration, PluginError>;

    /// Notification hooks (`client.*` and `session.*` except the folds).
    fn on_event(&self, point: HookPoint, event: &EventView<'_>) -> RResult<(), PluginError>;

    /// `message.publish`.
    fn on_message_publish(
        &self,
        message: &MessageView<'_>,
    ) -> RResult<Flow<MessageEdit>, PluginError>;

    /// `message.delivered`, `message.acked`, `message.dropped`.
    fn on_message_event(
        &self,
        point: HookPoint,
        event: &MessageEventView<'_>,
    ) -> RResult<(), PluginError>;

    /// `client.subscribe` / `client.unsubscribe`, per filter; a replacement is a new filter.
    fn on_subscribe(
        &self,
        point: HookPoint,
        request: &SubscribeView<'_>,
    ) -> RResult<Flow<RString>, PluginError>;

    /// `client.authenticate`.
    fn authenticate(&self, request: AuthRequest) -> FfiFuture<RResult<AuthResult, PluginError>>;

    /// `client.check_acl`.
    fn check_acl(&self, request: AclRequest) -> FfiFuture<RResult<AclResult, PluginError>>;

    /// A `brokerctl` command this plugin registered; `args[0]` is the command name.
    fn command(&self, args: RVec<RString>) -> FfiFuture<RResult<RString, PluginError>>;

    /// Stops the plugin: flush, close connections, stop its runtime. Called once, on a
    /// blocking-capable broker thread, after no other call is in flight.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> RResult<(), PluginError>;

    /// `message.publish` with every field editable: a list of [`EditOp`]s. A plugin built
    /// before this method existed answers through its `on_message_publish`.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn on_message_publish_ops(
        &self,
        message: &MessageView<'_>,
    ) -> RResult<Flow<RVec<EditOp>>, PluginError> {
        match self.on_message_publish(message) {
            RResult::ROk(flow) => RResult::ROk(match flow {
                Flow::Continue => Flow::Continue,
                Flow::Stop => Flow::Stop,
                Flow::ContinueWith(e) => Flow::ContinueWith(e.into_ops()),
                Flow::StopWith(e) => Flow::StopWith(e.into_ops()),
            }),
            RResult::RErr(e) => RResult::RErr(e),
        }
    }

    /// `client.subscribe` / `client.unsubscribe` with every decision: a list of
    /// [`SubscribeOp`]s (another filter, a lower QoS, a refusal with a reason code, a
    /// subscription identifier, options). A plugin built before this method existed answers
    /// through its `on_subscribe`.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn on_subscribe_ops(
        &self,
        point: HookPoint,
        request: &SubscribeView<'_>,
    ) -> RResult<Flow<RVec<SubscribeOp>>, PluginError> {
        let ops =
            |f: RString| -> RVec<SubscribeOp> { vec![SubscribeOp::set_filter(f.as_str())].into() };
        match self.on_subscribe(point, request) {
            RResult::ROk(flow) => RResult::ROk(match flow {
                Flow::Continue => Flow::Continue,
                Flow::Stop => Flow::Stop,
                Flow::ContinueWith(f) => Flow::ContinueWith(ops(f)),
                Flow::StopWith(f) => Flow::StopWith(ops(f)),
            }),
            RResult::RErr(e) => RResult::RErr(e),
        }
    }

    /// `client.enhanced_auth`: one step of MQTT 5 enhanced authentication.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn enhanced_auth(
        &self,
        request: EnhancedAuthRequest,
    ) -> FfiFuture<RResult<EnhancedAuthResult, PluginError>> {
        let _ = request;
        async_ffi::FutureExt::into_ffi(async { RResult::ROk(EnhancedAuthResult::ignore()) })
    }

    /// Whether `plugins reload` hands this instance's state to the new one. When true, the
    /// broker creates the new instance first (its host answers [`Host::resuming`] true), swaps
    /// it into the hook chain in this one's place, waits for this one's calls in flight, calls
    /// [`PluginInstance::prepare_reload`] and then `shutdown` here, and passes the state to
    /// the new instance's [`PluginInstance::resume`]. No hook call is lost in between: each
    /// reaches exactly one of the two. When false (the default), the old instance is shut
    /// down before the new one is created.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn reload_handoff(&self) -> bool {
        false
    }

    /// The state to hand to the instance replacing this one (see
    /// [`PluginInstance::reload_handoff`]). Called once, on a thread that may block, after the
    /// new instance has taken this one's place and no hook call is in flight here; release
    /// what the new instance must take over (files, ports) before returning.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn prepare_reload(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(RVec::new())
    }

    /// The state the previous instance handed over (empty if it had none), given once to an
    /// instance created with [`Host::resuming`] true, on a thread that may block. Hook calls
    /// may already have reached this instance: they are newer than the state.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn resume(&self, state: RVec<u8>) -> RResult<(), PluginError> {
        let _ = state;
        RResult::ROk(())
    }

    /// `session.select_shared`: the index of the member of `request.members` that gets the
    /// message, or `RNone` to let the next plugin (and then the broker) choose.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn select_shared(&self, request: &SelectSharedView<'_>) -> RResult<ROption<u32>, PluginError> {
        let _ = request;
        RResult::ROk(ROption::RNone)
    }

    /// `client.check_authz_complete`: an authorization decision (`result` is `Allow` or
    /// `Deny`) and its `source` (`cache`, `plugin`, `default`, `superuser`).
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn on_authz_complete(
        &self,
        request: &AclRequest,
        result: AclResult,
        source: RStr<'_>,
    ) -> RResult<(), PluginError> {
        let _ = (request, result, source);
        RResult::ROk(())
    }
}

/// A created plugin, owned by the broker.
pub type PluginBox = PluginInstance_TO<'static, RBox<()>>;

/// The root module every plugin library exports (through [`crate::export_plugin!`]).
///
/// Since API 1.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The [`API_VERSION`] the plugin was built against.
    pub api_version: u32,
    /// Whether the plugin was built with `panic = "unwind"` (required: with `abort`, a panic in
    /// the plugin would abort the broker).
    pub panic_unwind: bool,
    /// Name, version and description, without creating the plugin.
    pub describe: extern "C" fn() -> PluginDescription,
    /// Creates the plugin from the text of `etc/plugins/<name>.toml` (empty if absent).
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(host: HostRef, config: RStr<'_>) -> RResult<PluginBox, PluginError>,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "broker_plugin";
    const NAME: &'static str = "broker_plugin";
    const VERSION_STRINGS: abi_stable::sabi_types::VersionStrings = package_version_strings!();
}

//! The plugin author's side: the [`Plugin`] trait, the [`Context`] a plugin is created with,
//! and the adapter that [`crate::export_plugin!`] puts between them and the broker.
//!
//! The adapter guarantees what the boundary needs and authors should not have to think about:
//! * **no panic crosses the boundary**: every call into the plugin runs under `catch_unwind`,
//!   and a panic becomes `PluginError { kind: PANICKED }` (the broker counts it, and after too
//!   many marks the plugin faulted);
//! * **async work runs on the plugin's own tokio runtime** (threads `plg-<name>-N`): the broker
//!   only awaits a handle to it, and dropping that handle (timeout, unload) aborts the task;
//! * synchronous hooks run on broker threads *outside* the plugin's runtime (entering it on
//!   every call would cost a contended reference count per message): hand work to the runtime
//!   with [`Context::spawn`] / [`Context::runtime`], not `tokio::spawn`;
//! * the plugin's `tracing` events are forwarded to the broker's log, tagged with its name.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt};

use crate::abi::*;
use crate::ffi::{HostRef, PluginBox, PluginInstance, PluginInstance_TO, PluginMod, PluginModRef};

/// A broker plugin. Implement this, then export the type with [`crate::export_plugin!`].
///
/// Every hook has a default that does nothing (notifications) or passes (folds: `Continue`,
/// auth / ACL: `Ignore`), so a plugin implements only the hooks it lists in
/// [`Plugin::registration`]. Hooks are called concurrently from broker threads: keep state in
/// `Arc`s / atomics / locks, never block in a synchronous hook (hand slow work to
/// [`Context::spawn`]), and keep no global state that would survive an unload.
///
/// Since API 1.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The plugin's name: its library is `lib<NAME>.so`, its config `etc/plugins/<NAME>.toml`.
    const NAME: &'static str;
    /// One line describing the plugin (`brokerctl plugins list`).
    const DESCRIPTION: &'static str;
    /// Worker threads of the plugin's runtime (at least 1). The default, 2, suits a plugin that
    /// does I/O or CPU work on it (an auth backend, a bridge). A plugin whose work there is
    /// light and never blocks a worker — timers, an HTTP page, no runtime use at all — sets 1
    /// and saves an idle thread; work that blocks belongs in `tokio::task::spawn_blocking`,
    /// whose threads start on demand and end when idle. Read once, when the plugin is created.
    ///
    /// An SDK setting: the broker never sees it, so it needs no API version.
    const RUNTIME_THREADS: usize = 2;

    /// Creates the plugin from the text of its config file (empty when there is none).
    /// Return [`PluginError::config`] with the parser's message for a bad config.
    /// Called on a broker thread that may block; the runtime in `ctx` is already running.
    fn create(ctx: Context, config: &str) -> Result<Self, PluginError>;

    /// The hooks to call, the `brokerctl` commands to route here, the error policy.
    fn registration(&self) -> Registration;

    /// Notification hooks: `client.connect`, `client.connack`, `client.connected`,
    /// `client.disconnected`, `session.*`. Called on a broker thread; must not block.
    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        let _ = (point, event);
    }

    /// `message.publish`: inspect, change or stop a message before it is routed. Called on the
    /// publisher's connection task; must not block.
    fn on_message_publish(&self, message: &MessageView<'_>) -> Flow<MessageEdit> {
        let _ = message;
        Flow::Continue
    }

    /// `message.publish` with every field editable: return the changes as [`EditOp`]s
    /// (`EditOp::add_user_property("site", "north")`, `EditOp::set_qos(0)`, …). The broker calls
    /// this; the default answers with [`Plugin::on_message_publish`], so implement one of the
    /// two. Must not block.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn edit_message(&self, message: &MessageView<'_>) -> Flow<Vec<EditOp>> {
        match self.on_message_publish(message) {
            Flow::Continue => Flow::Continue,
            Flow::Stop => Flow::Stop,
            Flow::ContinueWith(e) => Flow::ContinueWith(e.into_ops().into_vec()),
            Flow::StopWith(e) => Flow::StopWith(e.into_ops().into_vec()),
        }
    }

    /// `message.delivered` / `message.acked` / `message.dropped`. Must not block.
    fn on_message_event(&self, point: HookPoint, event: &MessageEventView<'_>) {
        let _ = (point, event);
    }

    /// `client.subscribe` / `client.unsubscribe`, once per filter; `ContinueWith(filter)`
    /// replaces the filter. Must not block.
    fn on_subscribe(&self, point: HookPoint, request: &SubscribeView<'_>) -> Flow<RString> {
        let _ = (point, request);
        Flow::Continue
    }

    /// `client.subscribe` / `client.unsubscribe` with every decision: return [`SubscribeOp`]s
    /// (`SubscribeOp::limit_qos(0)`, `SubscribeOp::refuse(0x97, "quota")`, …). The broker calls
    /// this; the default answers with [`Plugin::on_subscribe`], so implement one of the two.
    /// Must not block.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn decide_subscribe(
        &self,
        point: HookPoint,
        request: &SubscribeView<'_>,
    ) -> Flow<Vec<SubscribeOp>> {
        let ops = |f: RString| vec![SubscribeOp::set_filter(f.as_str())];
        match self.on_subscribe(point, request) {
            Flow::Continue => Flow::Continue,
            Flow::Stop => Flow::Stop,
            Flow::ContinueWith(f) => Flow::ContinueWith(ops(f)),
            Flow::StopWith(f) => Flow::StopWith(ops(f)),
        }
    }

    /// `client.authenticate`. The returned future runs on the plugin's runtime.
    fn authenticate(
        &self,
        request: AuthRequest,
    ) -> impl Future<Output = Result<AuthResult, PluginError>> + Send + 'static {
        let _ = request;
        async { Ok(AuthResult::Ignore) }
    }

    /// `client.enhanced_auth`: one step of MQTT 5 enhanced authentication (the broker runs the
    /// CONNECT / AUTH exchange; keep state between steps under the client's id and
    /// `connected_at_ms`). Answer `EnhancedAuthResult::ignore()` for methods that are not yours.
    /// The returned future runs on the plugin's runtime.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn enhanced_auth(
        &self,
        request: EnhancedAuthRequest,
    ) -> impl Future<Output = Result<EnhancedAuthResult, PluginError>> + Send + 'static {
        let _ = request;
        async { Ok(EnhancedAuthResult::ignore()) }
    }

    /// `client.check_acl`. The returned future runs on the plugin's runtime.
    fn check_acl(
        &self,
        request: AclRequest,
    ) -> impl Future<Output = Result<AclResult, PluginError>> + Send + 'static {
        let _ = request;
        async { Ok(AclResult::Ignore) }
    }

    /// A `brokerctl` command from [`Registration::commands`]; `args[0]` is its name. The text
    /// returned is printed by `brokerctl`. Runs on the plugin's runtime.
    fn command(
        &self,
        args: Vec<String>,
    ) -> impl Future<Output = Result<String, PluginError>> + Send + 'static {
        async move {
            Err(PluginError::new(
                ErrorKind::INVALID,
                format!("unknown command {:?}", args.first()),
            ))
        }
    }

    /// Stops the plugin (unload, reload, broker shutdown). Called on a thread that may block,
    /// after no hook call is in flight; flush what must not be lost here. The runtime is shut
    /// down after this returns.
    fn shutdown(&self) {}

    /// Whether `plugins reload` hands this instance's state to its successor (default false):
    /// then the new instance is created while this one still runs ([`Context::resuming`] is
    /// true for it), takes its place in the hook chain, this instance's
    /// [`Plugin::prepare_reload`] and [`Plugin::shutdown`] run, and the new instance's
    /// [`Plugin::resume`] receives the state. Every hook call reaches one of the two, so
    /// nothing is missed during a reload; in-memory state survives it.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn reload_handoff(&self) -> bool {
        false
    }

    /// The state for the instance replacing this one. Runs on a thread that may block, once no
    /// hook call is in flight here and none will come; release files and ports the new
    /// instance must open. [`Plugin::shutdown`] follows.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn prepare_reload(&self) -> Result<Vec<u8>, PluginError> {
        Ok(Vec::new())
    }

    /// Takes the state the previous instance handed over (see [`Plugin::reload_handoff`]).
    /// Hook calls that reached this instance before are newer than `state`. Runs on a thread
    /// that may block.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn resume(&self, state: Vec<u8>) -> Result<(), PluginError> {
        let _ = state;
        Ok(())
    }

    /// `session.select_shared`: choose which member of a shared subscription group gets a
    /// message — an index into `request.members`, or `None` to leave the choice to the next
    /// plugin and then to the broker's round robin. Called for every message routed to a
    /// group, on the publisher's connection task: must not block; keep it cheap.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn select_shared(&self, request: &SelectSharedView<'_>) -> Option<usize> {
        let _ = request;
        None
    }

    /// `client.check_authz_complete`: an authorization decision was made (`result` is `Allow`
    /// or `Deny`; `source` is `cache`, `plugin`, `default` or `superuser`). Must not block.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    fn on_authz_complete(&self, request: &AclRequest, result: AclResult, source: &str) {
        let _ = (request, result, source);
    }
}

/// What a plugin is created with.
///
/// Since API 1.
#[derive(Clone)]
pub struct Context {
    host: HostRef,
    runtime: tokio::runtime::Handle,
}

impl Context {
    /// A context from parts. The broker builds the real one; tests build one with
    /// [`crate::testing::TestHost`].
    pub fn new(host: HostRef, runtime: tokio::runtime::Handle) -> Context {
        Context { host, runtime }
    }

    /// The broker's services.
    pub fn host(&self) -> &HostRef {
        &self.host
    }

    /// A handle to the plugin's own runtime.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Calls `tick` every `period` on the plugin's runtime, first after one period, until the
    /// plugin is unloaded or reloaded (its runtime stops then, and every timer with it) or the
    /// returned handle is aborted. A tick that is late (a busy runtime) is not caught up; a
    /// panic in `tick` is logged and the timer goes on.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn every<F>(&self, period: Duration, mut tick: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut() + Send + 'static,
    {
        self.runtime.spawn(async move {
            let start = tokio::time::Instant::now() + period;
            let mut timer = tokio::time::interval_at(start, period.max(Duration::from_millis(1)));
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                if let Err(payload) = catch(&mut tick) {
                    let error = panicked(payload, "timer");
                    tracing::error!(error = %error.message, "a timer tick panicked");
                }
            }
        })
    }

    /// Spawns work on the plugin's runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }
}

impl Context {
    /// A counter of this plugin, shown by the broker in `/metrics` and `$SYS` (registered on
    /// first use; after a reload the same name continues from its value).
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter, PluginError> {
        register(&self.host, name, 0, help).map(|id| Counter {
            host: self.host.clone(),
            id,
        })
    }

    /// The directory of the broker's plugin config files (`etc/plugins`, absolute): resolve
    /// files your config names relative to it. `None` when the broker does not say.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn config_dir(&self) -> Option<std::path::PathBuf> {
        let dir = self.host.config_dir();
        (!dir.is_empty()).then(|| std::path::PathBuf::from(dir.as_str()))
    }

    /// This plugin's own data directory (`<data_dir>/plugins/<name>`), created if needed.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn data_dir(&self) -> Result<std::path::PathBuf, PluginError> {
        let dir = self.host.data_dir();
        if dir.is_empty() {
            return Err(PluginError::new(
                ErrorKind::OTHER,
                "the broker gave no data directory (see its log)",
            ));
        }
        Ok(std::path::PathBuf::from(dir.as_str()))
    }

    /// True when this instance replaces a running one through `plugins reload` with a
    /// handoff ([`Plugin::reload_handoff`]): [`Plugin::resume`] follows with the old
    /// instance's state, after the old instance has released its files and ports — open them
    /// there, not in `create`.
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn resuming(&self) -> bool {
        self.host.resuming()
    }

    /// This plugin's durable key-value store (survives reloads and broker restarts).
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn kv(&self) -> Kv {
        Kv {
            host: self.host.clone(),
        }
    }

    /// A histogram of this plugin: durations, shown in `/metrics` as
    /// `broker_plugin_<plugin>_<name>_seconds` with buckets from 100 µs to 10 s, `_sum` and
    /// `_count` (see [`Context::counter`]).
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn histogram(&self, name: &str, help: &str) -> Result<Histogram, PluginError> {
        register(&self.host, name, 2, help).map(|id| Histogram {
            host: self.host.clone(),
            id,
        })
    }

    /// A gauge of this plugin (see [`Context::counter`]).
    ///
    /// Since API 2 (plugin-api 0.1.1).
    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, PluginError> {
        register(&self.host, name, 1, help).map(|id| Gauge {
            host: self.host.clone(),
            id,
        })
    }
}

fn register(host: &HostRef, name: &str, kind: u8, help: &str) -> Result<u32, PluginError> {
    host.metric_register(name.into(), kind, help.into())
        .into_result()
        .map_err(|e| PluginError::new(ErrorKind::INVALID, e.to_string()))
}

/// A plugin's durable key-value store ([`Context::kv`]). Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    host: HostRef,
}

fn kv_error(e: RString) -> PluginError {
    PluginError::new(ErrorKind::BACKEND, e.to_string())
}

impl Kv {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        self.host
            .kv_get(key.into())
            .into_result()
            .map(|v| v.into_option().map(RVec::into_vec))
            .map_err(kv_error)
    }

    /// The keys starting with `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, PluginError> {
        self.host
            .kv_keys(prefix.into())
            .into_result()
            .map(|k| k.into_iter().map(String::from).collect())
            .map_err(kv_error)
    }

    /// Stores `value` under `key`; resolves once it is on disc.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), PluginError> {
        let value: Vec<u8> = value.into();
        self.host
            .kv_put(key.into(), value.into())
            .await
            .into_result()
            .map_err(kv_error)
    }

    /// Deletes `key`; resolves once that is on disc.
    pub async fn delete(&self, key: &str) -> Result<(), PluginError> {
        self.host
            .kv_delete(key.into())
            .await
            .into_result()
            .map_err(kv_error)
    }
}

/// A counter in the broker's metrics ([`Context::counter`]). Cheap to clone.
#[derive(Clone)]
pub struct Counter {
    host: HostRef,
    id: u32,
}

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.host
            .metric_update(self.id, n.min(i64::MAX as u64) as i64, false);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
}

/// A histogram of durations in the broker's metrics ([`Context::histogram`]). Cheap to clone.
#[derive(Clone)]
pub struct Histogram {
    host: HostRef,
    id: u32,
}

impl Histogram {
    /// Observes one duration.
    pub fn observe(&self, duration: Duration) {
        let micros = duration.as_micros().min(i64::MAX as u128) as i64;
        self.host.metric_update(self.id, micros, false);
    }
}

/// A gauge in the broker's metrics ([`Context::gauge`]). Cheap to clone.
#[derive(Clone)]
pub struct Gauge {
    host: HostRef,
    id: u32,
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.host.metric_update(self.id, value, true);
    }

    /// Adds `delta` (may be negative).
    pub fn add(&self, delta: i64) {
        self.host.metric_update(self.id, delta, false);
    }
}

/// The adapter the export macro creates: a [`Plugin`] behind the FFI trait.
struct Adapter<P: Plugin> {
    plugin: Arc<P>,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

thread_local! {
    /// Set while this thread runs a call from the broker (a hook, a command, a future's poll).
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the last guarded panic happened (and its backtrace, when asked for).
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs this library's panic hook (each plugin library has its own copy of `std`, so this
/// touches neither the broker nor other plugins). A panic during a call from the broker is
/// caught and reported as one error (message, location, and a backtrace only when
/// `RUST_BACKTRACE` asks for one), which the broker logs as one line tagged with the plugin and
/// hook; nothing is written raw to stderr. A panic elsewhere (a task the plugin spawned itself)
/// becomes one `error` log record.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
            let backtrace = std::backtrace::Backtrace::capture();
            let backtrace = match backtrace.status() {
                std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
                _ => String::new(),
            };
            if GUARDED.with(|g| g.get()) {
                LAST_PANIC.with(|l| *l.borrow_mut() = Some(format!("{location}{backtrace}")));
            } else {
                let message = payload_text(info.payload());
                tracing::error!(target: "panic", "a task of the plugin panicked{location}: {message}{backtrace}");
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

fn panicked(payload: Box<dyn std::any::Any + Send>, what: &str) -> PluginError {
    let detail = payload_text(payload.as_ref());
    let location = LAST_PANIC
        .with(|l| l.borrow_mut().take())
        .unwrap_or_default();
    PluginError::new(
        ErrorKind::PANICKED,
        format!("panicked in {what}: {detail}{location}"),
    )
}

/// Runs `f` as a guarded call: a panic becomes an error, and the panic hook stays quiet.
fn catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result
}

fn guard<T>(what: &str, f: impl FnOnce() -> T) -> RResult<T, PluginError> {
    match catch(f) {
        Ok(v) => RResult::ROk(v),
        Err(payload) => RResult::RErr(panicked(payload, what)),
    }
}

/// A plugin future polled as a guarded call: a panic in any poll ends it with an error.
struct Guarded<F> {
    inner: Pin<Box<F>>,
    what: &'static str,
}

impl<T, F: Future<Output = Result<T, PluginError>>> Future for Guarded<F> {
    type Output = Result<T, PluginError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let what = self.what;
        let inner = self.inner.as_mut();
        match catch(move || inner.poll(cx)) {
            Ok(p) => p,
            Err(payload) => Poll::Ready(Err(panicked(payload, what))),
        }
    }
}

/// A task handle that aborts the task when dropped (timeout or unload on the broker side).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<P: Plugin> Adapter<P> {
    /// Runs `made` (the plugin's future, or the panic that building it raised) on the plugin's
    /// runtime; the returned FFI future awaits it.
    fn run_async<T, F>(
        &self,
        what: &'static str,
        made: std::thread::Result<F>,
    ) -> FfiFuture<RResult<T, PluginError>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, PluginError>> + Send + 'static,
    {
        let future = match made {
            Ok(f) => f,
            Err(payload) => {
                let err = panicked(payload, what);
                return async move { RResult::RErr(err) }.into_ffi();
            }
        };
        let task = AbortOnDrop(self.handle.spawn(Guarded {
            inner: Box::pin(future),
            what,
        }));
        async move {
            match task.await {
                Ok(Ok(v)) => RResult::ROk(v),
                Ok(Err(e)) => RResult::RErr(e),
                Err(join) if join.is_panic() => RResult::RErr(panicked(join.into_panic(), what)),
                Err(_) => RResult::RErr(PluginError::new(
                    ErrorKind::OTHER,
                    format!("{what} cancelled"),
                )),
            }
        }
        .into_ffi()
    }
}

impl<P: Plugin> PluginInstance for Adapter<P> {
    fn registration(&self) -> RResult<Registration, PluginError> {
        guard("registration", || self.plugin.registration())
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) -> RResult<(), PluginError> {
        guard("on_event", || self.plugin.on_event(point, event))
    }

    fn on_message_publish(
        &self,
        message: &MessageView<'_>,
    ) -> RResult<Flow<MessageEdit>, PluginError> {
        guard("on_message_publish", || {
            self.plugin.on_message_publish(message)
        })
    }

    fn on_message_event(
        &self,
        point: HookPoint,
        event: &MessageEventView<'_>,
    ) -> RResult<(), PluginError> {
        guard("on_message_event", || {
            self.plugin.on_message_event(point, event)
        })
    }

    fn on_subscribe(
        &self,
        point: HookPoint,
        request: &SubscribeView<'_>,
    ) -> RResult<Flow<RString>, PluginError> {
        guard("on_subscribe", || self.plugin.on_subscribe(point, request))
    }

    fn authenticate(&self, request: AuthRequest) -> FfiFuture<RResult<AuthResult, PluginError>> {
        let made = catch(|| self.plugin.authenticate(request));
        self.run_async("authenticate", made)
    }

    fn check_acl(&self, request: AclRequest) -> FfiFuture<RResult<AclResult, PluginError>> {
        let made = catch(|| self.plugin.check_acl(request));
        self.run_async("check_acl", made)
    }

    fn command(&self, args: RVec<RString>) -> FfiFuture<RResult<RString, PluginError>> {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let made = catch(|| self.plugin.command(args));
        let f = self.run_async("command", made);
        async move { f.await.map(RString::from) }.into_ffi()
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        let result = {
            let _enter = self.handle.enter();
            guard("shutdown", || self.plugin.shutdown())
        };
        let runtime = self.runtime.lock().ok().and_then(|mut r| r.take());
        if let Some(rt) = runtime {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        result
    }

    fn enhanced_auth(
        &self,
        request: EnhancedAuthRequest,
    ) -> FfiFuture<RResult<EnhancedAuthResult, PluginError>> {
        let made = catch(|| self.plugin.enhanced_auth(request));
        self.run_async("enhanced_auth", made)
    }

    fn on_subscribe_ops(
        &self,
        point: HookPoint,
        request: &SubscribeView<'_>,
    ) -> RResult<Flow<RVec<SubscribeOp>>, PluginError> {
        guard("on_subscribe", || {
            match self.plugin.decide_subscribe(point, request) {
                Flow::Continue => Flow::Continue,
                Flow::Stop => Flow::Stop,
                Flow::ContinueWith(ops) => Flow::ContinueWith(ops.into()),
                Flow::StopWith(ops) => Flow::StopWith(ops.into()),
            }
        })
    }

    fn select_shared(&self, request: &SelectSharedView<'_>) -> RResult<ROption<u32>, PluginError> {
        guard("select_shared", || {
            self.plugin
                .select_shared(request)
                .and_then(|i| u32::try_from(i).ok())
                .into()
        })
    }

    fn on_authz_complete(
        &self,
        request: &AclRequest,
        result: AclResult,
        source: RStr<'_>,
    ) -> RResult<(), PluginError> {
        guard("on_authz_complete", || {
            self.plugin
                .on_authz_complete(request, result, source.as_str())
        })
    }

    fn reload_handoff(&self) -> bool {
        matches!(
            guard("reload_handoff", || self.plugin.reload_handoff()),
            RResult::ROk(true)
        )
    }

    fn prepare_reload(&self) -> RResult<RVec<u8>, PluginError> {
        let _enter = self.handle.enter();
        match guard("prepare_reload", || self.plugin.prepare_reload()) {
            RResult::ROk(Ok(state)) => RResult::ROk(state.into()),
            RResult::ROk(Err(e)) | RResult::RErr(e) => RResult::RErr(e),
        }
    }

    fn resume(&self, state: RVec<u8>) -> RResult<(), PluginError> {
        let _enter = self.handle.enter();
        match guard("resume", || self.plugin.resume(state.into_vec())) {
            RResult::ROk(Ok(())) => RResult::ROk(()),
            RResult::ROk(Err(e)) | RResult::RErr(e) => RResult::RErr(e),
        }
    }

    fn on_message_publish_ops(
        &self,
        message: &MessageView<'_>,
    ) -> RResult<Flow<RVec<EditOp>>, PluginError> {
        guard("on_message_publish", || {
            match self.plugin.edit_message(message) {
                Flow::Continue => Flow::Continue,
                Flow::Stop => Flow::Stop,
                Flow::ContinueWith(ops) => Flow::ContinueWith(ops.into()),
                Flow::StopWith(ops) => Flow::StopWith(ops.into()),
            }
        })
    }
}

// ------------------------------------------------------------------ log forwarding

/// The host the plugin's log events go to; replaced at every create (a reload of an unchanged
/// library reuses this library's statics).
static LOG_HOST: RwLock<Option<HostRef>> = RwLock::new(None);
static LOG_INIT: Once = Once::new();

struct Forward;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let sep = if self.0.is_empty() { "" } else { " " };
            let _ = write!(self.0, "{sep}{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// The broker's most detailed log level ([`crate::Host::log_level`]): events above it are not
/// even formatted.
static MAX_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(5);

fn level_number(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Forward {
    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        level_number(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        use tracing::level_filters::LevelFilter;
        Some(match MAX_LEVEL.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = level_number(event.metadata().level());
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        if let Ok(host) = LOG_HOST.read() {
            if let Some(host) = host.as_ref() {
                host.log(LogRecord {
                    level,
                    target: RStr::from_str(event.metadata().target()),
                    message: RStr::from_str(&fields.0),
                });
            }
        }
    }
}

fn install_log_forwarding(host: &HostRef) {
    if let Ok(mut slot) = LOG_HOST.write() {
        *slot = Some(host.clone());
    }
    // Before the subscriber is installed: tracing reads the level hint then.
    MAX_LEVEL.store(host.log_level().min(5), Ordering::Relaxed);
    LOG_INIT.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(Forward);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

// ------------------------------------------------------------------ root module

extern "C" fn create<P: Plugin>(
    host: HostRef,
    config: RStr<'_>,
) -> RResult<PluginBox, PluginError> {
    install_panic_hook();
    let outcome = catch(|| -> Result<PluginBox, PluginError> {
        install_log_forwarding(&host);
        let counter = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(P::RUNTIME_THREADS.max(1))
            .thread_name_fn(move || {
                format!(
                    "plg-{}-{}",
                    P::NAME,
                    counter.fetch_add(1, Ordering::Relaxed)
                )
            })
            .enable_all()
            .build()
            .map_err(|e| {
                PluginError::new(ErrorKind::OTHER, format!("cannot start runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let ctx = Context {
            host,
            runtime: handle.clone(),
        };
        let plugin = P::create(ctx, config.as_str());
        let plugin = match plugin {
            Ok(p) => p,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let adapter = Adapter {
            plugin: Arc::new(plugin),
            handle,
            runtime: Mutex::new(Some(runtime)),
        };
        Ok(PluginInstance_TO::from_value(adapter, TD_Opaque))
    });
    match outcome {
        Ok(Ok(b)) => RResult::ROk(b),
        Ok(Err(e)) => RResult::RErr(e),
        Err(payload) => RResult::RErr(panicked(payload, "create")),
    }
}

/// Describes `P`; used by [`crate::export_plugin!`].
#[doc(hidden)]
pub fn describe<P: Plugin>(version: &'static str) -> PluginDescription {
    PluginDescription {
        name: P::NAME.into(),
        version: version.into(),
        description: P::DESCRIPTION.into(),
    }
}

/// Builds the root module for `P`; used by [`crate::export_plugin!`].
#[doc(hidden)]
pub fn root_module<P: Plugin>(
    panic_unwind: bool,
    describe: extern "C" fn() -> PluginDescription,
) -> PluginModRef {
    PluginMod {
        api_version: API_VERSION,
        panic_unwind,
        describe,
        create: create::<P>,
    }
    .leak_into_prefix()
}

/// Exports a [`Plugin`] type as this library's root module.
///
/// Use it once, at the crate root of a `cdylib` crate that depends on `plugin-api` and
/// `abi_stable = "0.11"` (the export attribute refers to `abi_stable` by name):
///
/// ```ignore
/// plugin_api::export_plugin!(MyPlugin);
/// ```
///
/// It records the crate version (`CARGO_PKG_VERSION`) as the plugin version and whether the
/// crate was built with `panic = "unwind"`.
///
/// Since API 1.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        extern "C" fn __broker_plugin_describe() -> $crate::PluginDescription {
            $crate::sdk::describe::<$plugin>(env!("CARGO_PKG_VERSION"))
        }

        // Private on purpose: the exported (#[no_mangle]) header static takes this visibility,
        // and a public item would need docs in the plugin crate.
        #[$crate::export_root_module]
        fn __broker_plugin_root_module() -> $crate::PluginModRef {
            $crate::sdk::root_module::<$plugin>(cfg!(panic = "unwind"), __broker_plugin_describe)
        }
    };
}

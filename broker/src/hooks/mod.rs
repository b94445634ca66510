//! Hook points, the hook table, and dispatch.
//!
//! Plugins register hooks with a priority; [`Hooks`] keeps, per hook point, the plugins to call
//! in chain order — **higher priority first, ties by plugin name** — in an immutable
//! [`HookTable`] behind an `ArcSwap`. Loading or unloading a plugin builds a new table and swaps
//! it in atomically; a call in progress keeps the table it started with. A bitmask of the hook
//! points that have any plugin is kept beside it, so a hook point with no plugin costs one
//! relaxed atomic load.
//!
//! Chain semantics:
//! * notifications (`client.connected` …) call every plugin; a failing callback is logged,
//!   counted and skipped;
//! * folds (`message.publish`, `client.subscribe`, `client.unsubscribe`) pass the value along;
//!   `Continue` / `ContinueWith` go on, `Stop` / `StopWith` end the chain;
//! * `client.authenticate` and `client.check_acl` are async chains: the first `Allow` or `Deny`
//!   wins, `Ignore` asks the next plugin. An error, panic or timeout (per-plugin timeout,
//!   per-plugin in-flight limit) follows the plugin's `on_error` policy: `deny` fails closed,
//!   `ignore` asks the next plugin.
//!
//! A plugin that faults (panics, errors on async hooks, timeouts) `fault_threshold` times within
//! `fault_window` is marked faulted and no longer called.

pub mod edit;
pub mod stats;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::std_types::{ROption, RResult, RString, RVec};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use plugin_api::{
    AclRequest, AclResult, AuthRequest, AuthResult, DenyReason, ErrorKind, EventView, Flow,
    HookPoint, MessageEventView, OnError, PluginBox, PluginError, SubscribeView,
};
use tokio::sync::Semaphore;

pub use stats::{PluginStats, StatsSnapshot};

/// Lifecycle state of a loaded plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Hooks are called.
    Active,
    /// Being unloaded: no new calls, in-flight calls finishing.
    Draining,
    /// Unloaded.
    Stopped,
    /// Too many faults: no longer called until reloaded.
    Faulted,
    /// In the plugin directory but not loaded (only in `brokerctl plugins list`).
    #[serde(rename = "not loaded")]
    NotLoaded,
}

impl PluginState {
    /// The name `brokerctl plugins list` and the management API show.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Draining => "draining",
            PluginState::Stopped => "stopped",
            PluginState::Faulted => "faulted",
            PluginState::NotLoaded => "not loaded",
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PluginState {
    fn from_u8(v: u8) -> PluginState {
        match v {
            0 => PluginState::Active,
            1 => PluginState::Draining,
            2 => PluginState::Stopped,
            _ => PluginState::Faulted,
        }
    }
}

/// Host-side limits applied to every plugin's calls.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Default timeout of an async hook call.
    pub timeout: Duration,
    /// Async calls in flight per plugin.
    pub max_in_flight: usize,
    /// Faults that mark a plugin faulted…
    pub fault_threshold: usize,
    /// …within this window.
    pub fault_window: Duration,
}

/// One loaded plugin, as the dispatcher calls it.
pub struct PluginHandle {
    /// Plugin name.
    pub name: Arc<str>,
    /// The plugin's own version.
    pub version: String,
    /// Its one-line description.
    pub description: String,
    instance: PluginBox,
    /// Hook points and priorities it registered.
    pub hooks: Vec<(HookPoint, i32)>,
    /// Commands it registered: (name, usage).
    pub commands: Vec<(String, String)>,
    /// Failure policy for auth / ACL.
    pub on_error: OnError,
    /// Which messages its `message.publish` hook wants.
    pub publish_filter: plugin_api::PublishFilter,
    timeout: Duration,
    state: AtomicU8,
    /// Counters.
    pub stats: PluginStats,
    faults: Mutex<VecDeque<Instant>>,
    fault_threshold: usize,
    fault_window: Duration,
    async_permits: Semaphore,
    /// Why it was marked faulted.
    pub fault_reason: Mutex<Option<String>>,
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl PluginHandle {
    /// Wraps a created plugin; reads its registration once.
    pub fn new(
        name: &str,
        version: String,
        description: String,
        instance: PluginBox,
        limits: &CallLimits,
    ) -> Result<PluginHandle, PluginError> {
        let registration = match instance.registration() {
            RResult::ROk(r) => r,
            RResult::RErr(e) => return Err(e),
        };
        let timeout = if registration.timeout_ms > 0 {
            Duration::from_millis(registration.timeout_ms as u64)
        } else {
            limits.timeout
        };
        let mut hooks = Vec::new();
        for spec in registration.hooks.iter() {
            if spec.point.name().is_none() {
                return Err(PluginError::new(
                    ErrorKind::INVALID,
                    format!("registers unknown hook point {}", spec.point.0),
                ));
            }
            hooks.push((spec.point, spec.priority));
        }
        Ok(PluginHandle {
            name: Arc::from(name),
            version,
            description,
            instance,
            hooks,
            commands: registration
                .commands
                .iter()
                .map(|c| (c.name.to_string(), c.usage.to_string()))
                .collect(),
            on_error: registration.on_error,
            publish_filter: registration.publish_filter.clone(),
            timeout,
            state: AtomicU8::new(PluginState::Active as u8),
            stats: PluginStats::default(),
            faults: Mutex::new(VecDeque::new()),
            fault_threshold: limits.fault_threshold.max(1),
            fault_window: limits.fault_window,
            async_permits: Semaphore::new(limits.max_in_flight.max(1)),
            fault_reason: Mutex::new(None),
        })
    }

    /// Current state.
    pub fn state(&self) -> PluginState {
        PluginState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state.
    pub fn set_state(&self, state: PluginState) {
        self.state.store(state as u8, Ordering::Release);
    }

    fn is_active(&self) -> bool {
        self.state.load(Ordering::Relaxed) == PluginState::Active as u8
    }

    /// Calls the plugin's shutdown. Blocking: run it on a blocking thread.
    pub fn shutdown(&self) -> Result<(), PluginError> {
        match self.instance.shutdown() {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(e),
        }
    }

    /// Whether a reload hands this instance's state to the next one.
    pub fn reload_handoff(&self) -> bool {
        self.instance.reload_handoff()
    }

    /// Asks the instance being replaced for its state. Blocking.
    pub fn prepare_reload(&self) -> Result<RVec<u8>, PluginError> {
        self.instance.prepare_reload().into_result()
    }

    /// Gives the new instance its predecessor's state. Blocking.
    pub fn resume(&self, state: RVec<u8>) -> Result<(), PluginError> {
        self.instance.resume(state).into_result()
    }

    /// Counts a failed call, logs it, and marks the plugin faulted past the threshold.
    fn fault(&self, point: HookPoint, what: &str, kind: ErrorKind) {
        let point_name = point.name().unwrap_or("?");
        if kind == ErrorKind::PANICKED {
            self.stats.panics.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(plugin = %self.name, hook = point_name, error = %what, "plugin hook failed");
        // Plain errors of async hooks (a backend down) are not faults of the plugin itself;
        // panics and timeouts are.
        if kind == ErrorKind::BACKEND {
            return;
        }
        let now = Instant::now();
        let mut faults = self.faults.lock();
        faults.push_back(now);
        while faults
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.fault_window)
        {
            faults.pop_front();
        }
        if faults.len() >= self.fault_threshold && self.is_active() {
            self.set_state(PluginState::Faulted);
            let reason = format!(
                "{} faults within {:?}; last: {point_name}: {what}",
                faults.len(),
                self.fault_window
            );
            tracing::error!(plugin = %self.name, reason = %reason, "plugin faulted: no longer called (reload it to retry)");
            *self.fault_reason.lock() = Some(reason);
        }
    }

    fn failed(&self, point: HookPoint, e: &PluginError) {
        self.fault(point, e.message.as_str(), e.kind);
    }

    /// Counts a call; the first 1 024 sync calls are timed, then every 64th. A sync hook runs
    /// for every message: timing every 16th call (two clock reads) was still 2–3 % of the
    /// broker's CPU at 2.4 M messages/s with five plugins loaded (perf during
    /// `tests/bench/plugin_overhead.sh`).
    #[inline]
    fn begin(&self) -> Option<Instant> {
        let n = self.stats.count_call();
        (n < 1024 || n.is_multiple_of(64)).then(Instant::now)
    }

    #[inline]
    fn end(&self, started: Option<Instant>) {
        if let Some(t) = started {
            self.stats.record(t.elapsed());
        }
    }
}

/// The `message.published` hooks of one message ([`Hooks::published`]).
pub struct Published(arc_swap::Guard<Arc<HookTable>>);

impl Published {
    /// Calls `message.published` with the final message on every plugin whose publish filter
    /// wants it.
    pub fn notify(&self, event: &MessageEventView<'_>) {
        let (topic, retain) = (event.message.topic.as_str(), event.message.retain);
        self.0.notify_each(HookPoint::MESSAGE_PUBLISHED, |p| {
            if p.publish_filter.wants(topic, retain) {
                p.instance
                    .on_message_event(HookPoint::MESSAGE_PUBLISHED, event)
            } else {
                RResult::ROk(())
            }
        });
    }
}

/// The plugins to call per hook point, in chain order. Immutable once built.
#[derive(Default)]
pub struct HookTable {
    points: Vec<Vec<Arc<PluginHandle>>>,
    mask: u64,
}

impl HookTable {
    /// Calls `call` for every active plugin registered at `point`, counting, timing and
    /// logging failures: the shape of every notification hook.
    fn notify_each(
        &self,
        point: HookPoint,
        call: impl Fn(&PluginHandle) -> RResult<(), PluginError>,
    ) {
        for p in self.at(point) {
            if !p.is_active() {
                continue;
            }
            let t = p.begin();
            let r = call(p);
            p.end(t);
            if let RResult::RErr(e) = r {
                p.failed(point, &e);
            }
        }
    }

    /// Builds the table from the active plugins.
    pub fn build(plugins: &[Arc<PluginHandle>]) -> HookTable {
        let mut points: Vec<Vec<(i32, Arc<PluginHandle>)>> = vec![Vec::new(); HookPoint::ALL.len()];
        for p in plugins {
            for (point, priority) in &p.hooks {
                if let Some(slot) = points.get_mut(point.0 as usize) {
                    slot.push((*priority, p.clone()));
                }
            }
        }
        let mut mask = 0u64;
        let points = points
            .into_iter()
            .enumerate()
            .map(|(i, mut v)| {
                // Higher priority first; ties ordered by plugin name (deterministic).
                v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
                if !v.is_empty() {
                    mask |= 1 << i;
                }
                v.into_iter().map(|(_, p)| p).collect()
            })
            .collect();
        HookTable { points, mask }
    }

    fn at(&self, point: HookPoint) -> &[Arc<PluginHandle>] {
        self.points.get(point.0 as usize).map_or(&[], Vec::as_slice)
    }
}

/// What the `client.subscribe` fold decided for one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// Another filter (without `$share/<group>/`).
    pub filter: Option<String>,
    /// The options to subscribe with (QoS possibly lowered).
    pub options: plugin_api::SubOptions,
    /// Refused with this SUBACK reason code.
    pub refused: Option<u8>,
    /// A subscription identifier to attach (`Some(0)` removes the client's).
    pub subscription_id: Option<u32>,
}

impl SubscribeOutcome {
    fn apply(&mut self, ops: RVec<plugin_api::SubscribeOp>, plugin: &str) {
        use plugin_api::SubscribeOpKind as K;
        for op in ops {
            let refused = |why: &str| {
                tracing::warn!(
                    plugin,
                    kind = op.kind.0,
                    "client.subscribe decision refused: {why}"
                );
            };
            match op.kind {
                K::SET_FILTER => self.filter = Some(op.key.to_string()),
                K::LIMIT_QOS if op.number <= 2 => {
                    self.options.qos = self.options.qos.min(op.number as u8)
                }
                K::REFUSE if (0x80..=0xFF).contains(&op.number) => {
                    tracing::debug!(
                        plugin,
                        reason_code = op.number,
                        why = op.key.as_str(),
                        "subscription refused by a plugin"
                    );
                    self.refused = Some(op.number as u8);
                }
                K::SET_SUBSCRIPTION_ID if op.number <= 268_435_455 => {
                    self.subscription_id = Some(op.number as u32)
                }
                K::SET_NO_LOCAL => self.options.no_local = op.number != 0,
                K::SET_RETAIN_AS_PUBLISHED => self.options.retain_as_published = op.number != 0,
                K::SET_RETAIN_HANDLING if op.number <= 2 => {
                    self.options.retain_handling = op.number as u8
                }
                K::LIMIT_QOS | K::REFUSE | K::SET_SUBSCRIPTION_ID | K::SET_RETAIN_HANDLING => {
                    refused(&format!("value {} out of range", op.number))
                }
                _ => refused("unknown decision kind (a newer plugin-api than this broker's)"),
            }
        }
    }
}

/// What the authentication chain decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// No plugin handles authentication: `auth.allow_anonymous` decides.
    NoPlugin,
    /// Every plugin said Ignore: `auth.no_match` decides.
    NoMatch,
    /// Let the client in.
    Allow {
        /// Superuser: skips ACL.
        superuser: bool,
    },
    /// Refuse it.
    Deny(DenyReason),
}

/// What the ACL chain decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDecision {
    /// No plugin handles ACL: allowed.
    NoPlugin,
    /// Every plugin said Ignore: `acl.no_match` decides.
    NoMatch,
    /// Permitted.
    Allow,
    /// Refused.
    Deny,
}

/// The hook registry of one broker.
pub struct Hooks {
    table: ArcSwap<HookTable>,
    mask: AtomicU64,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            table: ArcSwap::from_pointee(HookTable::default()),
            mask: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("mask", &self.mask.load(Ordering::Relaxed))
            .finish()
    }
}

impl Hooks {
    /// Installs a new table built from `active` (the active plugins).
    pub fn install(&self, active: &[Arc<PluginHandle>]) {
        let table = HookTable::build(active);
        let mask = table.mask;
        self.table.store(Arc::new(table));
        self.mask.store(mask, Ordering::Release);
    }

    /// True when some plugin hooks `point`. One relaxed load.
    #[inline]
    pub fn enabled(&self, point: HookPoint) -> bool {
        self.mask.load(Ordering::Relaxed) & (1 << point.0) != 0
    }

    /// [`HookTable::notify_each`] on the current table, when any plugin registered `point`.
    fn notify_each(
        &self,
        point: HookPoint,
        call: impl Fn(&PluginHandle) -> RResult<(), PluginError>,
    ) {
        if !self.enabled(point) {
            return;
        }
        self.table.load().notify_each(point, call);
    }

    /// Calls a notification hook on every plugin that registered it.
    pub fn notify(&self, point: HookPoint, event: &EventView<'_>) {
        self.notify_each(point, |p| p.instance.on_event(point, event));
    }

    /// Calls `message.delivered` / `message.acked` / `message.dropped`.
    pub fn message_event(&self, point: HookPoint, event: &MessageEventView<'_>) {
        self.notify_each(point, |p| p.instance.on_message_event(point, event));
    }

    /// Whether a plugin hooks `message.dropped` or `delivery.dropped`.
    pub fn wants_dropped(&self) -> bool {
        self.enabled(HookPoint::MESSAGE_DROPPED) || self.enabled(HookPoint::DELIVERY_DROPPED)
    }

    /// Fires `message.dropped` and `delivery.dropped` (EMQX 5's name) for a delivery dropped on
    /// its way to one subscriber.
    pub fn dropped(&self, event: &MessageEventView<'_>) {
        self.message_event(HookPoint::MESSAGE_DROPPED, event);
        self.message_event(HookPoint::DELIVERY_DROPPED, event);
    }

    /// Whether any active plugin's `message.publish` hook wants a message with this topic and
    /// RETAIN flag (its [`plugin_api::PublishFilter`]). Checked before a message view is built.
    pub fn wants_publish(&self, topic: &str, retain: bool) -> bool {
        if !self.enabled(HookPoint::MESSAGE_PUBLISH) {
            return false;
        }
        let table = self.table.load();
        table
            .at(HookPoint::MESSAGE_PUBLISH)
            .iter()
            .any(|p| p.is_active() && p.publish_filter.wants(topic, retain))
    }

    /// The `message.published` hooks that want a message with this topic and RETAIN flag, if
    /// any: the caller builds the event only then, and calls [`Published::notify`]. The hook
    /// table is loaded once for both (it is on every message's path).
    pub fn published(&self, topic: &str, retain: bool) -> Option<Published> {
        if !self.enabled(HookPoint::MESSAGE_PUBLISHED) {
            return None;
        }
        let table = self.table.load();
        table
            .at(HookPoint::MESSAGE_PUBLISHED)
            .iter()
            .any(|p| p.is_active() && p.publish_filter.wants(topic, retain))
            .then_some(Published(table))
    }

    /// Runs the `message.publish` fold on `message`: each plugin sees the message as the
    /// plugins before it left it (every field), and is skipped when its publish filter does not
    /// want it. Returns false when a plugin dropped the message.
    pub fn message_publish(
        &self,
        message: &mut crate::message::Message,
        username: Option<&str>,
        is_will: bool,
    ) -> bool {
        if !self.enabled(HookPoint::MESSAGE_PUBLISH) {
            return true;
        }
        let table = self.table.load();
        let plugins = table.at(HookPoint::MESSAGE_PUBLISH);
        let now = crate::clock::coarse_now_ms();
        let mut next = 0;
        // The view is built once and reused by every plugin until one edits the message.
        loop {
            let edited = {
                let user_properties = message.user_property_views();
                let mut view = message.view(&user_properties);
                view.username = username.map(Into::into).into();
                view.is_will = is_will;
                view.timestamp_ms = now;
                let mut edited = None;
                while let Some(p) = plugins.get(next) {
                    next += 1;
                    if !p.is_active() || !p.publish_filter.wants(view.topic.as_str(), view.retain) {
                        continue;
                    }
                    let t = p.begin();
                    let r = p.instance.on_message_publish_ops(&view);
                    p.end(t);
                    match r {
                        RResult::ROk(Flow::Continue) => {}
                        RResult::ROk(Flow::Stop) => return true,
                        RResult::ROk(Flow::ContinueWith(ops)) => {
                            edited = Some((ops, false, p.clone()));
                            break;
                        }
                        RResult::ROk(Flow::StopWith(ops)) => {
                            edited = Some((ops, true, p.clone()));
                            break;
                        }
                        RResult::RErr(e) => p.failed(HookPoint::MESSAGE_PUBLISH, &e),
                    }
                }
                edited
            };
            let Some((ops, stop, p)) = edited else {
                return true;
            };
            if !edit::apply(message, ops, &p.name) {
                return false;
            }
            if stop || next >= plugins.len() {
                return true;
            }
        }
    }

    /// Runs a `client.subscribe` / `client.unsubscribe` fold for one filter: each plugin sees
    /// the filter and options the plugins before it decided. `None` when no plugin changed
    /// anything.
    pub fn subscribe_decision(
        &self,
        point: HookPoint,
        view: &SubscribeView<'_>,
    ) -> Option<SubscribeOutcome> {
        if !self.enabled(point) {
            return None;
        }
        let mut outcome = SubscribeOutcome {
            filter: None,
            options: view.options,
            refused: None,
            subscription_id: None,
        };
        let mut changed = false;
        let table = self.table.load();
        for p in table.at(point) {
            if !p.is_active() {
                continue;
            }
            let mut current = *view;
            if let Some(f) = &outcome.filter {
                current.filter = f.as_str().into();
            }
            current.options = outcome.options;
            let t = p.begin();
            let r = p.instance.on_subscribe_ops(point, &current);
            p.end(t);
            let (ops, stop) = match r {
                RResult::ROk(Flow::Continue) => (None, false),
                RResult::ROk(Flow::ContinueWith(ops)) => (Some(ops), false),
                RResult::ROk(Flow::Stop) => (None, true),
                RResult::ROk(Flow::StopWith(ops)) => (Some(ops), true),
                RResult::RErr(e) => {
                    p.failed(point, &e);
                    (None, false)
                }
            };
            if let Some(ops) = ops {
                changed = true;
                outcome.apply(ops, &p.name);
            }
            if stop || outcome.refused.is_some() {
                break;
            }
        }
        changed.then_some(outcome)
    }

    /// Runs `session.select_shared` for one group: the member index the first plugin chose
    /// (in range), or `None` to keep the broker's choice.
    pub fn select_shared(&self, view: &plugin_api::SelectSharedView<'_>) -> Option<usize> {
        let point = HookPoint::SESSION_SELECT_SHARED;
        if !self.enabled(point) {
            return None;
        }
        let table = self.table.load();
        for p in table.at(point) {
            if !p.is_active() {
                continue;
            }
            let t = p.begin();
            let r = p.instance.select_shared(view);
            p.end(t);
            match r {
                RResult::ROk(ROption::RSome(i)) if (i as usize) < view.members.len() => {
                    return Some(i as usize)
                }
                RResult::ROk(ROption::RSome(i)) => tracing::warn!(
                    plugin = %p.name,
                    index = i,
                    members = view.members.len(),
                    "session.select_shared answered an index out of range; ignored"
                ),
                RResult::ROk(ROption::RNone) => {}
                RResult::RErr(e) => p.failed(point, &e),
            }
        }
        None
    }

    /// Fires `client.check_authz_complete`.
    pub fn authz_complete(&self, request: &AclRequest, allowed: bool, source: &str) {
        let result = if allowed {
            plugin_api::AclResult::Allow
        } else {
            plugin_api::AclResult::Deny
        };
        self.notify_each(HookPoint::CLIENT_CHECK_AUTHZ_COMPLETE, |p| {
            p.instance.on_authz_complete(request, result, source.into())
        });
    }

    /// Runs the authentication chain.
    pub async fn authenticate(&self, request: &AuthRequest) -> AuthDecision {
        if !self.enabled(HookPoint::CLIENT_AUTHENTICATE) {
            return AuthDecision::NoPlugin;
        }
        let table = self.table.load_full();
        let point = HookPoint::CLIENT_AUTHENTICATE;
        for p in table.at(point) {
            if !p.is_active() {
                continue;
            }
            let outcome = call_async(p, point, p.instance.authenticate(request.clone())).await;
            match outcome {
                Some(AuthResult::Allow { superuser }) => return AuthDecision::Allow { superuser },
                Some(AuthResult::Deny(reason)) => return AuthDecision::Deny(reason),
                Some(AuthResult::Ignore) => {}
                None if p.on_error == OnError::Deny => {
                    return AuthDecision::Deny(DenyReason::ServerUnavailable)
                }
                None => {}
            }
        }
        AuthDecision::NoMatch
    }

    /// One step of MQTT 5 enhanced authentication. The first step (`handler` None) asks the
    /// plugins in order until one answers something else than ignore; later steps go to that
    /// plugin (`handler`). A plugin that fails follows its `on_error`: deny gives 0x87 (or
    /// unavailable), ignore asks the next one. `None`: no plugin handles the method.
    pub async fn enhanced_auth(
        &self,
        request: &plugin_api::EnhancedAuthRequest,
        handler: Option<&Arc<PluginHandle>>,
    ) -> Option<(Arc<PluginHandle>, plugin_api::EnhancedAuthResult)> {
        use plugin_api::{EnhancedAuthOutcome, EnhancedAuthResult};
        let point = HookPoint::CLIENT_ENHANCED_AUTH;
        if let Some(p) = handler {
            let answer = call_async(p, point, p.instance.enhanced_auth(request.clone())).await;
            return Some((
                p.clone(),
                answer.unwrap_or_else(|| EnhancedAuthResult::failure(reason_unavailable(p))),
            ));
        }
        if !self.enabled(point) {
            return None;
        }
        let table = self.table.load_full();
        for p in table.at(point) {
            if !p.is_active() {
                continue;
            }
            match call_async(p, point, p.instance.enhanced_auth(request.clone())).await {
                Some(r) if r.outcome == EnhancedAuthOutcome::IGNORE => {}
                Some(r) => return Some((p.clone(), r)),
                None if p.on_error == OnError::Deny => {
                    return Some((
                        p.clone(),
                        EnhancedAuthResult::failure(reason_unavailable(p)),
                    ))
                }
                None => {}
            }
        }
        None
    }

    /// Runs the ACL chain.
    pub async fn check_acl(&self, request: &AclRequest) -> AclDecision {
        if !self.enabled(HookPoint::CLIENT_CHECK_ACL) {
            return AclDecision::NoPlugin;
        }
        let table = self.table.load_full();
        let point = HookPoint::CLIENT_CHECK_ACL;
        for p in table.at(point) {
            if !p.is_active() {
                continue;
            }
            let outcome = call_async(p, point, p.instance.check_acl(request.clone())).await;
            match outcome {
                Some(AclResult::Allow) => return AclDecision::Allow,
                Some(AclResult::Deny) => return AclDecision::Deny,
                Some(AclResult::Ignore) => {}
                None if p.on_error == OnError::Deny => return AclDecision::Deny,
                None => {}
            }
        }
        AclDecision::NoMatch
    }

    /// Runs a plugin-registered `brokerctl` command.
    pub async fn command(
        &self,
        plugin: &Arc<PluginHandle>,
        args: Vec<String>,
    ) -> Result<String, String> {
        if !plugin.is_active() {
            return Err(format!("plugin {} is {:?}", plugin.name, plugin.state()));
        }
        let args: RVec<RString> = args.into_iter().map(RString::from).collect();
        let fut = plugin.instance.command(args);
        plugin.stats.count_call();
        match tokio::time::timeout(plugin.timeout.max(Duration::from_secs(30)), fut).await {
            Ok(RResult::ROk(s)) => Ok(s.into()),
            Ok(RResult::RErr(e)) => Err(e.message.into()),
            Err(_) => Err(format!("plugin {} did not answer in time", plugin.name)),
        }
    }
}

/// The reason code for a plugin that failed to answer an authentication step.
fn reason_unavailable(_p: &PluginHandle) -> u8 {
    crate::codec::reason::ReasonCode::ServerUnavailable.get()
}

/// Awaits one async hook call with the plugin's timeout and in-flight limit. `None` when the
/// call failed (error, panic, timeout), after counting it.
async fn call_async<T>(
    p: &PluginHandle,
    point: HookPoint,
    future: async_ffi::FfiFuture<RResult<T, PluginError>>,
) -> Option<T> {
    p.stats.count_call();
    let started = Instant::now();
    let outcome = tokio::time::timeout(p.timeout, async {
        let _permit = p.async_permits.acquire().await;
        future.await
    })
    .await;
    p.stats.record(started.elapsed());
    match outcome {
        Ok(RResult::ROk(v)) => Some(v),
        Ok(RResult::RErr(e)) => {
            p.failed(point, &e);
            None
        }
        Err(_) => {
            p.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            p.fault(
                point,
                &format!("timed out after {:?}", p.timeout),
                ErrorKind::OTHER,
            );
            // fault() counted it as an error; a timeout is counted as such only.
            p.stats.errors.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

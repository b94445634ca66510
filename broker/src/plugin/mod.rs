//! The plugin host: loading, unloading and reloading plugins while the broker runs.
//!
//! [`PluginManager`] owns the set of loaded plugins. Operations are serialised by one async
//! mutex (two operators racing on the same plugin get consistent answers); hook calls never
//! take it — they read the hook table ([`crate::hooks::Hooks`]).
//!
//! * **load**: find `lib<name>.so` in `plugin_dir`, open and check it ([`loader::open`]), read
//!   `<config_dir>/<name>.toml`, create the instance, read its registration, add its hooks to a
//!   new hook table and swap it in, persist the loaded set.
//! * **unload**: mark it draining and swap in a table without it (no new calls), wait up to
//!   `drain_timeout` for calls in flight (each in-flight call holds a reference to the plugin),
//!   call its `shutdown` on a blocking thread, drop it, persist the loaded set.
//! * **reload**: open and check the library and read the config first (a bad library or config
//!   leaves the running instance alone). A plugin that hands its state over
//!   (`PluginInstance::reload_handoff`) is reloaded without a gap: the new instance is created
//!   while the old one runs, one table swap replaces the old by the new in the hook chain (each
//!   hook call reaches exactly one of them), the old one is drained, asked for its state
//!   (`prepare_reload`) and shut down, and the new one `resume`s from that state; if creating the
//!   new one fails, the old one never stopped. Any other plugin is unloaded and then created
//!   again; if creating it fails, the previous library is created again with its previous
//!   config so the plugin is not silently lost, and the error is reported.
//!
//! The loaded set lives in `<data_dir>/loaded_plugins`, one name per line; at start-up it is
//! restored, or on the very first start `plugins.enabled` of broker.toml is loaded.

pub mod host;
pub mod kv;
pub mod loader;
mod services;
pub mod template;

pub use services::{BrokerServices, ManagementApi, ManagementFuture, ManagementResponse};

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use abi_stable::std_types::RResult;
use parking_lot::RwLock;
use plugin_api::PluginModRef;

use crate::config::valid_plugin_name;
use crate::hooks::{CallLimits, PluginHandle, PluginState, StatsSnapshot};

pub use loader::LoadError;

/// Why a plugin operation failed. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum PluginOpError {
    /// Not a valid plugin name.
    #[error("invalid plugin name {0:?}: use a-z, 0-9 and '_' (a cdylib's file name has no '-')")]
    InvalidName(String),
    /// Already loaded.
    #[error("plugin {0} is already loaded")]
    AlreadyLoaded(String),
    /// Not loaded.
    #[error("plugin {0} is not loaded")]
    NotLoaded(String),
    /// The library failed its checks.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The config file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The plugin refused to start (bad config, backend unreachable …).
    #[error("plugin {name} failed to start: {message}")]
    Create {
        /// Plugin name.
        name: String,
        /// The plugin's error.
        message: String,
    },
    /// The broker is gone.
    #[error("broker is shutting down")]
    ShuttingDown,
}

/// A loaded plugin with where it came from.
struct Loaded {
    handle: Arc<PluginHandle>,
    module: PluginModRef,
    config_text: String,
    cache_path: PathBuf,
    sha256: String,
}

/// What `brokerctl plugins list` shows for one plugin.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version (loaded plugins only).
    pub version: Option<String>,
    /// Description (loaded plugins only).
    pub description: Option<String>,
    /// Plugin API version it was built for (loaded plugins only).
    pub api_version: Option<u32>,
    /// `active`, `draining`, `stopped`, `faulted`, or `not loaded`.
    pub state: PluginState,
    /// Hook points and priorities.
    pub hooks: Vec<(String, i32)>,
    /// Commands it answers.
    pub commands: Vec<String>,
    /// Counters.
    pub stats: Option<StatsSnapshot>,
    /// Why it faulted.
    pub fault_reason: Option<String>,
    /// sha256 of the loaded library.
    pub sha256: Option<String>,
}

/// The answer to `brokerctl plugins list`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PluginList {
    /// Every plugin found in plugin_dir or the config dir, loaded or not.
    pub plugins: Vec<PluginInfo>,
    /// Libraries still mapped although no loaded plugin uses them.
    pub stale_libraries: usize,
}

/// The plugin host of one broker.
pub struct PluginManager {
    broker: Weak<dyn BrokerServices>,
    /// The management API in this process, once it is set up ([`PluginManager::set_management`]).
    management: Arc<std::sync::OnceLock<Arc<dyn ManagementApi>>>,
    plugin_dir: PathBuf,
    config_dir: PathBuf,
    cache_dir: PathBuf,
    state_file: PathBuf,
    limits: CallLimits,
    drain_timeout: Duration,
    ops: tokio::sync::Mutex<()>,
    loaded: RwLock<BTreeMap<String, Loaded>>,
    mapped: parking_lot::Mutex<HashSet<PathBuf>>,
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager")
            .field("plugin_dir", &self.plugin_dir)
            .finish_non_exhaustive()
    }
}

impl PluginManager {
    /// A manager with nothing loaded.
    pub fn new(
        broker: Weak<dyn BrokerServices>,
        config: &crate::config::Config,
        config_dir: PathBuf,
    ) -> Self {
        PluginManager {
            broker,
            management: Arc::default(),
            plugin_dir: config.plugin_dir.clone(),
            config_dir,
            cache_dir: config.data_dir.join("plugins").join(".cache"),
            state_file: config.data_dir.join("loaded_plugins"),
            limits: CallLimits {
                timeout: Duration::from_millis(config.plugins.hook_timeout_ms.max(1)),
                max_in_flight: config.plugins.max_in_flight,
                fault_threshold: config.plugins.fault_threshold,
                fault_window: Duration::from_secs(config.plugins.fault_window_secs),
            },
            drain_timeout: Duration::from_millis(config.plugins.drain_timeout_ms),
            ops: tokio::sync::Mutex::new(()),
            loaded: RwLock::new(BTreeMap::new()),
            mapped: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// Connects plugins' `management_request` to the management API in this process (set once,
    /// at start; until then such requests are answered 503).
    pub fn set_management(&self, api: Arc<dyn ManagementApi>) {
        let _ = self.management.set(api);
    }

    /// Where plugin config files are read from.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    fn library_path(&self, name: &str) -> PathBuf {
        self.plugin_dir.join(loader::library_file_name(name))
    }

    /// Where plugin `name`'s configuration file is (whether or not it exists).
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.toml"))
    }

    fn read_config(&self, name: &str) -> Result<String, PluginOpError> {
        let path = self.config_path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(PluginOpError::ConfigRead { path, source }),
        }
    }

    /// Names in the persisted loaded set, or `None` if it was never written.
    pub fn persisted_set(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(&self.state_file).ok()?;
        Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        )
    }

    fn persist(&self) {
        let names: Vec<String> = self.loaded.read().keys().cloned().collect();
        let mut text = String::from(
            "# plugins loaded at start-up; maintained by brokerctl plugins load|unload\n",
        );
        for n in names {
            text.push_str(&n);
            text.push('\n');
        }
        let tmp = self.state_file.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.state_file))
        {
            tracing::error!(file = %self.state_file.display(), error = %e, "cannot persist the loaded plugin set");
        }
    }

    fn install_hooks(&self) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let active: Vec<Arc<PluginHandle>> = self
            .loaded
            .read()
            .values()
            .filter(|l| l.handle.state() == PluginState::Active)
            .map(|l| l.handle.clone())
            .collect();
        broker.hooks().install(&active);
    }

    /// Opens and checks the library for `name`, and reads its config. Blocking work runs on a
    /// blocking thread.
    async fn prepare(&self, name: &str) -> Result<(loader::Opened, String), PluginOpError> {
        let path = self.library_path(name);
        let cache = self.cache_dir.clone();
        let n = name.to_owned();
        let opened = tokio::task::spawn_blocking(move || loader::open(&n, &path, &cache))
            .await
            .map_err(|e| PluginOpError::Load(LoadError::Other(e.to_string())))??;
        let describe = opened.module.describe();
        let declared = describe().name.to_string();
        if declared != name {
            return Err(LoadError::NameMismatch {
                path: self.library_path(name),
                declared,
                requested: name.to_owned(),
            }
            .into());
        }
        let config = self.read_config(name)?;
        Ok((opened, config))
    }

    /// Creates an instance from an opened module. Blocking (the plugin may build connection
    /// pools): runs on a blocking thread.
    async fn create(
        &self,
        name: &str,
        module: PluginModRef,
        config: &str,
        resuming: bool,
    ) -> Result<Arc<PluginHandle>, PluginOpError> {
        let services = host::Services {
            broker: self.broker.clone(),
            management: self.management.clone(),
            config_dir: self.config_dir.clone(),
        };
        let limits = self.limits.clone();
        let n = name.to_owned();
        let text = config.to_owned();
        tokio::task::spawn_blocking(move || {
            let host = host::BrokerHost::new_ref(services, &n, resuming);
            let description = (module.describe())();
            let create = module.create();
            let instance = match create(host, text.as_str().into()) {
                RResult::ROk(i) => i,
                RResult::RErr(e) => {
                    return Err(PluginOpError::Create {
                        name: n,
                        message: e.message.into(),
                    })
                }
            };
            PluginHandle::new(
                &n,
                description.version.into(),
                description.description.into(),
                instance,
                &limits,
            )
            .map(Arc::new)
            .map_err(|e| PluginOpError::Create {
                name: n,
                message: e.message.into(),
            })
        })
        .await
        .map_err(|e| PluginOpError::Create {
            name: name.to_owned(),
            message: e.to_string(),
        })?
    }

    fn insert(
        &self,
        name: &str,
        handle: Arc<PluginHandle>,
        module: PluginModRef,
        config_text: String,
        opened_path: PathBuf,
        sha256: String,
    ) {
        self.mapped.lock().insert(opened_path.clone());
        self.loaded.write().insert(
            name.to_owned(),
            Loaded {
                handle,
                module,
                config_text,
                cache_path: opened_path,
                sha256,
            },
        );
        self.install_hooks();
    }

    /// Loads plugin `name`.
    pub async fn load(&self, name: &str) -> Result<PluginInfo, PluginOpError> {
        if !valid_plugin_name(name) {
            return Err(PluginOpError::InvalidName(name.to_owned()));
        }
        let _op = self.ops.lock().await;
        if self.loaded.read().contains_key(name) {
            return Err(PluginOpError::AlreadyLoaded(name.to_owned()));
        }
        let (opened, config) = self.prepare(name).await?;
        let handle = self.create(name, opened.module, &config, false).await?;
        self.insert(
            name,
            handle,
            opened.module,
            config,
            opened.cache_path,
            opened.sha256,
        );
        self.persist();
        tracing::info!(plugin = name, "plugin loaded");
        self.info(name)
            .ok_or_else(|| PluginOpError::NotLoaded(name.to_owned()))
    }

    /// Unloads plugin `name`.
    pub async fn unload(&self, name: &str) -> Result<(), PluginOpError> {
        let _op = self.ops.lock().await;
        self.unload_locked(name).await?;
        self.persist();
        tracing::info!(plugin = name, "plugin unloaded");
        Ok(())
    }

    async fn unload_locked(&self, name: &str) -> Result<Loaded, PluginOpError> {
        let loaded = self
            .loaded
            .write()
            .remove(name)
            .ok_or_else(|| PluginOpError::NotLoaded(name.to_owned()))?;
        loaded.handle.set_state(PluginState::Draining);
        self.install_hooks();
        self.drain_and_stop(&loaded.handle).await;
        Ok(loaded)
    }

    /// Waits for in-flight calls (each holds a clone of the handle), then shuts the plugin down.
    async fn drain_and_stop(&self, handle: &Arc<PluginHandle>) {
        self.drain(handle).await;
        self.stop(handle).await;
    }

    /// Waits up to `drain_timeout` until no call is in flight on a plugin that is out of the
    /// hook table.
    async fn drain(&self, handle: &Arc<PluginHandle>) {
        let deadline = Instant::now() + self.drain_timeout;
        while Arc::strong_count(handle) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if Arc::strong_count(handle) > 1 {
            tracing::warn!(plugin = %handle.name, "in-flight calls still running after the drain deadline; shutting down anyway");
        }
    }

    /// Calls the plugin's `shutdown` on a blocking thread.
    async fn stop(&self, handle: &Arc<PluginHandle>) {
        let h = handle.clone();
        let result = tokio::task::spawn_blocking(move || h.shutdown()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(plugin = %handle.name, error = %e, "plugin shutdown failed")
            }
            Err(e) => {
                tracing::warn!(plugin = %handle.name, error = %e, "plugin shutdown task failed")
            }
        }
        handle.set_state(PluginState::Stopped);
    }

    /// Reloads plugin `name`: new library and config, same place in the chain.
    pub async fn reload(&self, name: &str) -> Result<PluginInfo, PluginOpError> {
        let _op = self.ops.lock().await;
        if !self.loaded.read().contains_key(name) {
            return Err(PluginOpError::NotLoaded(name.to_owned()));
        }
        let (opened, config) = self.prepare(name).await?;
        let handoff =
            self.loaded.read().get(name).is_some_and(|l| {
                l.handle.state() == PluginState::Active && l.handle.reload_handoff()
            });
        if handoff {
            return self.reload_with_handoff(name, opened, config).await;
        }
        let old = self.unload_locked(name).await?;
        match self.create(name, opened.module, &config, false).await {
            Ok(handle) => {
                self.insert(
                    name,
                    handle,
                    opened.module,
                    config,
                    opened.cache_path,
                    opened.sha256,
                );
                tracing::info!(plugin = name, "plugin reloaded");
                self.info(name)
                    .ok_or_else(|| PluginOpError::NotLoaded(name.to_owned()))
            }
            Err(e) => {
                tracing::error!(plugin = name, error = %e, "reload failed; restoring the previous instance");
                match self.create(name, old.module, &old.config_text, false).await {
                    Ok(handle) => self.insert(
                        name,
                        handle,
                        old.module,
                        old.config_text,
                        old.cache_path,
                        old.sha256,
                    ),
                    Err(e2) => {
                        tracing::error!(plugin = name, error = %e2, "previous instance could not be restored: plugin unloaded");
                        self.persist();
                    }
                }
                Err(e)
            }
        }
    }

    /// The gap-free reload of a plugin that hands its state over (see the module doc).
    async fn reload_with_handoff(
        &self,
        name: &str,
        opened: loader::Opened,
        config: String,
    ) -> Result<PluginInfo, PluginOpError> {
        let new = self.create(name, opened.module, &config, true).await?;
        let Some(old) = self.loaded.write().remove(name) else {
            return Err(PluginOpError::NotLoaded(name.to_owned()));
        };
        // One table swap: the old instance out, the new one in, at the same place. The old one
        // stays active for the calls that already hold the previous table (marking it draining
        // first would make them skip it, and lose what they carry).
        self.insert(
            name,
            new.clone(),
            opened.module,
            config,
            opened.cache_path,
            opened.sha256,
        );
        self.drain(&old.handle).await;
        old.handle.set_state(PluginState::Draining);
        let h = old.handle.clone();
        let state = tokio::task::spawn_blocking(move || h.prepare_reload()).await;
        let state = match state {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                tracing::error!(plugin = name, error = %e, "prepare_reload failed; the new instance starts without the old one's state");
                Default::default()
            }
            Err(e) => {
                tracing::error!(plugin = name, error = %e, "prepare_reload task failed");
                Default::default()
            }
        };
        let bytes = state.len();
        self.stop(&old.handle).await;
        let n = new.clone();
        match tokio::task::spawn_blocking(move || n.resume(state)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(plugin = name, error = %e, "resume from the previous instance's state failed")
            }
            Err(e) => tracing::error!(plugin = name, error = %e, "resume task failed"),
        }
        tracing::info!(
            plugin = name,
            handoff_bytes = bytes,
            "plugin reloaded with handoff"
        );
        self.info(name)
            .ok_or_else(|| PluginOpError::NotLoaded(name.to_owned()))
    }

    /// Loads the persisted set (or `enabled` on first start). Failures are logged, not fatal.
    pub async fn restore(&self, enabled: &[String]) {
        let names = match self.persisted_set() {
            Some(names) => names,
            None => enabled.to_vec(),
        };
        for name in names {
            if let Err(e) = self.load(&name).await {
                tracing::error!(plugin = %name, error = %e, "plugin not loaded at start-up");
            }
        }
        if !self.state_file.exists() {
            self.persist();
        }
    }

    /// Unloads everything (broker shutdown). The persisted set is kept.
    pub async fn shutdown_all(&self) {
        let _op = self.ops.lock().await;
        let names: Vec<String> = self.loaded.read().keys().cloned().collect();
        for name in names {
            let _ = self.unload_locked(&name).await;
        }
    }

    fn info_of(&self, name: &str, l: &Loaded) -> PluginInfo {
        let h = &l.handle;
        PluginInfo {
            name: name.to_owned(),
            version: Some(h.version.clone()),
            description: Some(h.description.clone()),
            api_version: Some(l.module.api_version()),
            state: h.state(),
            hooks: h
                .hooks
                .iter()
                .map(|(p, prio)| (p.name().unwrap_or("?").to_owned(), *prio))
                .collect(),
            commands: h.commands.iter().map(|(c, _)| c.clone()).collect(),
            stats: Some(h.stats.snapshot()),
            fault_reason: h.fault_reason.lock().clone(),
            sha256: Some(l.sha256.clone()),
        }
    }

    /// Information about one loaded plugin.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        self.loaded.read().get(name).map(|l| self.info_of(name, l))
    }

    /// Every plugin found in `plugin_dir` or the config dir, and every loaded one.
    pub fn list(&self) -> PluginList {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let (prefix, suffix) = {
            let f = loader::library_file_name("X");
            let (p, s) = f.split_once('X').unwrap_or(("lib", ".so"));
            (p.to_owned(), s.to_owned())
        };
        for entry in read_dir_names(&self.plugin_dir) {
            if let Some(n) = entry
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_suffix(suffix.as_str()))
            {
                if valid_plugin_name(n) {
                    names.insert(n.to_owned());
                }
            }
        }
        for entry in read_dir_names(&self.config_dir) {
            if let Some(n) = entry.strip_suffix(".toml") {
                if valid_plugin_name(n) {
                    names.insert(n.to_owned());
                }
            }
        }
        let loaded = self.loaded.read();
        names.extend(loaded.keys().cloned());
        let plugins = names
            .iter()
            .map(|n| match loaded.get(n) {
                Some(l) => self.info_of(n, l),
                None => PluginInfo {
                    name: n.clone(),
                    version: None,
                    description: None,
                    api_version: None,
                    state: PluginState::NotLoaded,
                    hooks: Vec::new(),
                    commands: Vec::new(),
                    stats: None,
                    fault_reason: None,
                    sha256: None,
                },
            })
            .collect();
        let in_use: HashSet<&PathBuf> = loaded.values().map(|l| &l.cache_path).collect();
        let stale = self
            .mapped
            .lock()
            .iter()
            .filter(|p| !in_use.contains(p))
            .count();
        PluginList {
            plugins,
            stale_libraries: stale,
        }
    }

    /// The loaded plugin that registered command `command`.
    pub fn command_owner(&self, command: &str) -> Option<Arc<PluginHandle>> {
        self.loaded
            .read()
            .values()
            .find(|l| l.handle.commands.iter().any(|(c, _)| c == command))
            .map(|l| l.handle.clone())
    }

    /// Every plugin-registered command: (command, usage, plugin).
    pub fn commands(&self) -> Vec<(String, String, String)> {
        self.loaded
            .read()
            .iter()
            .flat_map(|(n, l)| {
                l.handle
                    .commands
                    .iter()
                    .map(move |(c, u)| (c.clone(), u.clone(), n.clone()))
            })
            .collect()
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

//! The interface a broker plugin is written against — the only crate a plugin author needs
//! (plus `abi_stable`, which the export macro names).
//!
//! A plugin is a `cdylib` that implements [`Plugin`] and exports it with [`export_plugin!`].
//! The broker loads it from its `plugin_dir` with `brokerctl plugins load <name>`, checks that
//! it was built against a compatible copy of this crate (layout, crate version, [`API_VERSION`],
//! `panic = "unwind"`), creates it with the text of `etc/plugins/<name>.toml`, and calls the
//! hooks its [`Registration`] lists.
//!
//! ```
//! use plugin_api::*;
//!
//! /// Drops every message published under `blocked/`.
//! pub struct Blocker;
//!
//! impl Plugin for Blocker {
//!     const NAME: &'static str = "blocker";
//!     const DESCRIPTION: &'static str = "drops publishes to blocked/#";
//!
//!     fn create(_ctx: Context, _config: &str) -> Result<Self, PluginError> {
//!         Ok(Blocker)
//!     }
//!
//!     fn registration(&self) -> Registration {
//!         Registration {
//!             hooks: vec![HookSpec { point: HookPoint::MESSAGE_PUBLISH, priority: priority::LOWEST }].into(),
//!             ..Registration::default()
//!         }
//!     }
//!
//!     fn on_message_publish(&self, message: &MessageView<'_>) -> Flow<MessageEdit> {
//!         if message.topic.as_str().starts_with("blocked/") {
//!             Flow::StopWith(MessageEdit { drop: true, ..MessageEdit::default() })
//!         } else {
//!             Flow::Continue
//!         }
//!     }
//! }
//!
//! // In the plugin crate: plugin_api::export_plugin!(Blocker);
//! ```
//!
//! Modules: [`abi`] holds the data types that cross the boundary, [`ffi`] the trait objects and
//! root module, [`sdk`] the author-facing trait and the adapter that guards every call.

pub mod abi;
pub mod ffi;
pub mod sdk;
pub mod testing;

pub use abi::*;
pub use ffi::{Host, HostRef, Host_TO, PluginBox, PluginInstance, PluginMod, PluginModRef};
pub use sdk::{Context, Counter, Gauge, Histogram, Kv, Plugin};

pub use abi_stable::export_root_module;
pub use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec};
pub use async_ffi;

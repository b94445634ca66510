//! Testing a plugin in-process, without a broker: a [`TestHost`] that records what the plugin
//! asks of the broker, and [`TestContext`] that owns a runtime for the plugin.
//!
//! ```
//! use plugin_api::testing::TestContext;
//!
//! let t = TestContext::new();
//! // let plugin = MyPlugin::create(t.context(), "")?;
//! // plugin.on_message_publish(&plugin_api::MessageView::new("a/b", b"x"));
//! // t.block_on(plugin.command(vec!["mine".into(), "stats".into()]));
//! assert!(t.host.published().is_empty());
//! ```
//!
//! Since API 1.

use std::future::Future;
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RStr, RString};

use crate::abi::{ClientInfo, LogRecord, OutgoingMessage, SubOptions};
use crate::ffi::{Host, HostRef, Host_TO};
use crate::sdk::Context;

/// A host that records publishes, subscriptions and log lines.
#[derive(Clone, Default)]
pub struct TestHost {
    published: Arc<Mutex<Vec<OutgoingMessage>>>,
    subscribed: Arc<Mutex<Vec<(String, String)>>>,
    delivered: Arc<Mutex<Vec<(String, OutgoingMessage)>>>,
    logs: Arc<Mutex<Vec<(u8, String)>>>,
}

impl TestHost {
    /// Messages the plugin published.
    pub fn published(&self) -> Vec<OutgoingMessage> {
        self.published.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// (client id, filter) pairs the plugin subscribed.
    pub fn subscribed(&self) -> Vec<(String, String)> {
        self.subscribed
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// (client id, message) pairs the plugin delivered to single clients.
    pub fn delivered(&self) -> Vec<(String, OutgoingMessage)> {
        self.delivered.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// (level, message) log records the plugin wrote.
    pub fn logs(&self) -> Vec<(u8, String)> {
        self.logs.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Host for TestHost {
    fn log(&self, record: LogRecord<'_>) {
        if let Ok(mut l) = self.logs.lock() {
            l.push((record.level, record.message.to_string()));
        }
    }

    fn publish(&self, message: OutgoingMessage) -> RResult<u32, RString> {
        if let Ok(mut p) = self.published.lock() {
            p.push(message);
        }
        RResult::ROk(0)
    }

    fn subscribe(
        &self,
        client_id: RStr<'_>,
        filter: RStr<'_>,
        options: SubOptions,
    ) -> RResult<u8, RString> {
        if let Ok(mut s) = self.subscribed.lock() {
            s.push((client_id.to_string(), filter.to_string()));
        }
        RResult::ROk(options.qos)
    }

    fn client_info(&self, _client_id: RStr<'_>) -> ROption<ClientInfo> {
        ROption::RNone
    }

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn node_name(&self) -> RString {
        "test@localhost".into()
    }

    fn deliver(
        &self,
        client_id: RStr<'_>,
        message: OutgoingMessage,
        _subscription_id: u32,
    ) -> RResult<(), RString> {
        if let Ok(mut d) = self.delivered.lock() {
            d.push((client_id.to_string(), message));
        }
        RResult::ROk(())
    }
}

/// A runtime and a [`TestHost`] to create a plugin with.
pub struct TestContext {
    /// The recording host.
    pub host: TestHost,
    runtime: tokio::runtime::Runtime,
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TestContext {
    /// A fresh host and a two-thread runtime.
    pub fn new() -> TestContext {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a test runtime: {e}"));
        TestContext {
            host: TestHost::default(),
            runtime,
        }
    }

    /// A [`Context`] to pass to [`crate::Plugin::create`].
    pub fn context(&self) -> Context {
        let host: HostRef = Host_TO::from_ptr(RArc::new(self.host.clone()), TD_Opaque);
        Context::new(host, self.runtime.handle().clone())
    }

    /// Runs a future (an async hook or a command) to completion.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

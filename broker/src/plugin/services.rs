//! What the plugin host needs from the rest of the broker, as traits the broker implements:
//! the host never names the broker's type, so the dependency points one way (the broker owns
//! the plugin host; the host reaches the broker only through these).

use std::future::Future;
use std::pin::Pin;

use crate::codec::reason::ReasonCode;
use crate::codec::{QoS, SubscriptionOptions};
use crate::config::Config;
use crate::hooks::Hooks;
use crate::message::Message;
use crate::metrics::PluginMetrics;

use super::kv::PluginKv;

/// The broker as the plugin host's services ([`plugin_api::Host`]) use it. Messages and options
/// arrive already converted from their FFI forms ([`super::host`] converts).
pub trait BrokerServices: Send + Sync + 'static {
    /// The hook table active plugins are installed into.
    fn hooks(&self) -> &Hooks;
    /// The broker's configuration.
    fn config(&self) -> &Config;
    /// Metrics that plugins register.
    fn plugin_metrics(&self) -> &PluginMetrics;
    /// The plugins' durable key-value store.
    fn plugin_kv(&self) -> &PluginKv;
    /// Publishes `message` through the publish chain; how many sessions it was queued for (0
    /// also when a plugin dropped it).
    fn publish(&self, message: Message) -> usize;
    /// Routes a message another node published ([`crate::broker::Broker::publish_remote`]);
    /// `shared` holds subscriptions as written (`$share/<group>/<filter>`).
    fn deliver_remote(
        &self,
        message: Message,
        plain: bool,
        shared: &[String],
    ) -> Result<usize, String>;
    /// Queues `message` for one client only, as if it matched a subscription with
    /// `subscription_id` (0 = none).
    fn deliver(
        &self,
        client_id: &str,
        message: Message,
        subscription_id: u32,
    ) -> Result<(), String>;
    /// Subscribes an existing session to `filter` (`$share/…` allowed); the granted QoS.
    fn subscribe(
        &self,
        client_id: &str,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<QoS, String>;
    /// Removes subscription `filter` (as subscribed) from a session; false if it had none.
    fn unsubscribe(&self, client_id: &str, filter: &str) -> Result<bool, String>;
    /// What plugins see of a connected client.
    fn client_info(&self, client_id: &str) -> Option<plugin_api::ClientInfo>;
    /// Closes a client's connection with `reason`, only if it is the one that connected at
    /// `connected_at_ms` (0 = any); whether it was found.
    fn disconnect(&self, client_id: &str, connected_at_ms: u64, reason: ReasonCode) -> bool;
}

/// The answer to a management request made in this process.
#[derive(Debug)]
pub struct ManagementResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

/// A request future of [`ManagementApi::request`].
pub type ManagementFuture = Pin<Box<dyn Future<Output = ManagementResponse> + Send>>;

/// The management API run in this process for plugins (`Host::management_request`).
pub trait ManagementApi: Send + Sync + 'static {
    /// Runs one request for plugin `plugin`. With `authorization`, the request is checked like
    /// an HTTP one; without, it acts with the plugin's authority.
    fn request(
        &self,
        plugin: &str,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> ManagementFuture;
}

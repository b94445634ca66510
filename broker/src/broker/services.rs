//! The broker as the plugin host sees it ([`BrokerServices`]): each service is one of the
//! broker's own operations, on the broker's own types.

use crate::codec::reason::ReasonCode;
use crate::codec::{QoS, SubscriptionOptions};
use crate::config::Config;
use crate::hooks::Hooks;
use crate::message::Message;
use crate::metrics::PluginMetrics;
use crate::plugin::kv::PluginKv;
use crate::plugin::BrokerServices;
use crate::router::SubscriptionKey;

use super::Broker;

impl BrokerServices for Broker {
    fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn plugin_metrics(&self) -> &PluginMetrics {
        &self.plugin_metrics
    }

    fn plugin_kv(&self) -> &PluginKv {
        &self.plugin_kv
    }

    fn publish(&self, message: Message) -> usize {
        Broker::publish(self, message, None, false).unwrap_or(0)
    }

    fn deliver_remote(
        &self,
        message: Message,
        plain: bool,
        shared: &[String],
    ) -> Result<usize, String> {
        let keys = shared
            .iter()
            .map(|s| match SubscriptionKey::parse(s) {
                Ok(k) if k.is_shared() => Ok(k),
                Ok(_) => Err(format!("{s:?} is not a shared subscription")),
                Err(e) => Err(format!("{s:?}: {e}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.publish_remote(message, plain, &keys))
    }

    fn deliver(
        &self,
        client_id: &str,
        message: Message,
        subscription_id: u32,
    ) -> Result<(), String> {
        self.deliver_to(client_id, message, subscription_id)
    }

    fn subscribe(
        &self,
        client_id: &str,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<QoS, String> {
        self.subscribe_client(client_id, filter, options)
    }

    fn unsubscribe(&self, client_id: &str, filter: &str) -> Result<bool, String> {
        self.unsubscribe_client(client_id, filter)
    }

    fn client_info(&self, client_id: &str) -> Option<plugin_api::ClientInfo> {
        Broker::client_info(self, client_id)
    }

    fn disconnect(&self, client_id: &str, connected_at_ms: u64, reason: ReasonCode) -> bool {
        self.disconnect_client(client_id, connected_at_ms, reason)
    }
}

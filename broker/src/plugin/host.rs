//! The services the broker gives plugins ([`plugin_api::Host`]).
//!
//! One [`BrokerHost`] per plugin instance; it holds a weak reference to the broker so a plugin
//! that outlives a shutting-down broker cannot keep it alive, and the plugin's name so its log
//! records are tagged with it. Every method is non-blocking and callable from any thread.

use std::sync::{Arc, Weak};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RStr, RString};
use async_ffi::{FfiFuture, FutureExt as _};
use plugin_api::{
    ApiRequest, ApiResponse, ClientInfo, Host, HostRef, Host_TO, LogRecord, OutgoingMessage,
    SubOptions,
};

use crate::broker::Broker;

/// Host services bound to one plugin.
#[derive(Clone)]
pub struct BrokerHost {
    broker: Weak<Broker>,
    plugin: Arc<str>,
    /// The broker's runtime: in-process API requests run there, not on the plugin's.
    runtime: Option<tokio::runtime::Handle>,
    /// Created by a reload with handoff: `resume` follows.
    resuming: bool,
}

impl BrokerHost {
    /// A host object for plugin `plugin`, as the FFI trait object; `resuming` for an instance
    /// created by a reload with handoff.
    pub fn new_ref(broker: Weak<Broker>, plugin: &str, resuming: bool) -> HostRef {
        let host = BrokerHost {
            broker,
            plugin: Arc::from(plugin),
            runtime: tokio::runtime::Handle::try_current().ok(),
            resuming,
        };
        Host_TO::from_ptr(RArc::new(host), TD_Opaque)
    }
}

impl BrokerHost {
    /// A durable write to the plugin's key-value store, on a blocking thread of the broker.
    fn kv_write(&self, key: String, value: Option<Vec<u8>>) -> FfiFuture<RResult<(), RString>> {
        let (Some(broker), Some(runtime)) = (self.broker.upgrade(), self.runtime.clone()) else {
            return async { RResult::RErr("the broker is shutting down".into()) }.into_ffi();
        };
        let plugin = self.plugin.clone();
        let task =
            runtime.spawn_blocking(move || broker.plugin_kv.write(&plugin, &key, value.as_deref()));
        async move {
            match task.await {
                Ok(Ok(())) => RResult::ROk(()),
                Ok(Err(e)) => RResult::RErr(e.into()),
                Err(e) => RResult::RErr(format!("the write failed: {e}").into()),
            }
        }
        .into_ffi()
    }
}

impl Host for BrokerHost {
    fn log(&self, record: LogRecord<'_>) {
        let plugin = &*self.plugin;
        let target = record.target.as_str();
        let message = record.message.as_str();
        match record.level {
            1 => tracing::error!(plugin, target, "{message}"),
            2 => tracing::warn!(plugin, target, "{message}"),
            3 => tracing::info!(plugin, target, "{message}"),
            4 => tracing::debug!(plugin, target, "{message}"),
            _ => tracing::trace!(plugin, target, "{message}"),
        }
    }

    fn publish(&self, message: OutgoingMessage) -> RResult<u32, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("broker is shutting down".into());
        };
        match broker.publish_from_plugin(message) {
            Ok(n) => RResult::ROk(n as u32),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn subscribe(
        &self,
        client_id: RStr<'_>,
        filter: RStr<'_>,
        options: SubOptions,
    ) -> RResult<u8, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("broker is shutting down".into());
        };
        match broker.subscribe_for_plugin(client_id.as_str(), filter.as_str(), options) {
            Ok(q) => RResult::ROk(q),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn client_info(&self, client_id: RStr<'_>) -> ROption<ClientInfo> {
        self.broker
            .upgrade()
            .and_then(|b| b.client_info(client_id.as_str()))
            .into()
    }

    fn now_ms(&self) -> u64 {
        crate::broker::now_ms()
    }

    fn deliver(
        &self,
        client_id: RStr<'_>,
        message: OutgoingMessage,
        subscription_id: u32,
    ) -> RResult<(), RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("broker is shutting down".into());
        };
        match broker.deliver_from_plugin(client_id.as_str(), message, subscription_id) {
            Ok(()) => RResult::ROk(()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn management_request(&self, request: ApiRequest) -> FfiFuture<ApiResponse> {
        let failed = |status: u16, message: &str| ApiResponse {
            status,
            content_type: "application/json".into(),
            body: serde_json::json!({"code": "UNAVAILABLE", "message": message})
                .to_string()
                .into_bytes()
                .into(),
        };
        let (Some(broker), Some(runtime)) = (self.broker.upgrade(), self.runtime.clone()) else {
            let answer = failed(503, "the broker is shutting down");
            return async move { answer }.into_ffi();
        };
        let plugin = self.plugin.clone();
        let task = runtime.spawn(async move {
            let r = crate::admin::server::in_process(
                broker,
                &plugin,
                request.method.as_str(),
                request.path.as_str(),
                request
                    .authorization
                    .as_ref()
                    .map(|a| a.as_str())
                    .into_option(),
                request.body.into_vec(),
            )
            .await;
            ApiResponse {
                status: r.status,
                content_type: r.content_type.into(),
                body: r.body.into(),
            }
        });
        async move {
            match task.await {
                Ok(answer) => answer,
                Err(e) => failed(500, &format!("the request failed: {e}")),
            }
        }
        .into_ffi()
    }

    fn disconnect(&self, client_id: RStr<'_>, connected_at_ms: u64, reason_code: u8) -> bool {
        let (Some(broker), Some(runtime)) = (self.broker.upgrade(), self.runtime.as_ref()) else {
            return false;
        };
        let _entered = runtime.enter();
        let found = broker.disconnect_for_plugin(client_id.as_str(), connected_at_ms, reason_code);
        if found {
            tracing::info!(plugin = %self.plugin, client_id = client_id.as_str(), reason_code, "connection closed by a plugin");
        }
        found
    }

    fn metric_register(&self, name: RStr<'_>, kind: u8, help: RStr<'_>) -> RResult<u32, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        let kind = match kind {
            0 => crate::metrics::PluginMetricKind::Counter,
            1 => crate::metrics::PluginMetricKind::Gauge,
            2 => crate::metrics::PluginMetricKind::Histogram,
            k => {
                return RResult::RErr(
                    format!("unknown metric kind {k} (0 counter, 1 gauge, 2 histogram)").into(),
                )
            }
        };
        match broker
            .plugin_metrics
            .register(&self.plugin, name.as_str(), kind, help.as_str())
        {
            Ok(id) => RResult::ROk(id),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn metric_update(&self, id: u32, value: i64, set: bool) {
        if let Some(broker) = self.broker.upgrade() {
            broker.plugin_metrics.update(&self.plugin, id, value, set);
        }
    }

    fn unsubscribe(&self, client_id: RStr<'_>, filter: RStr<'_>) -> RResult<bool, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        match broker.unsubscribe_for_admin(client_id.as_str(), filter.as_str()) {
            Ok(existed) => RResult::ROk(existed),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn data_dir(&self) -> RString {
        let Some(broker) = self.broker.upgrade() else {
            return RString::new();
        };
        let dir = broker.config.data_dir.join("plugins").join(&*self.plugin);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => dir.display().to_string().into(),
            Err(e) => {
                tracing::error!(plugin = %self.plugin, dir = %dir.display(), error = %e, "cannot create the plugin's data directory");
                RString::new()
            }
        }
    }

    fn kv_get(&self, key: RStr<'_>) -> RResult<ROption<abi_stable::std_types::RVec<u8>>, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        match broker.plugin_kv.get(&self.plugin, key.as_str()) {
            Ok(v) => RResult::ROk(v.map(Into::into).into()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn kv_keys(&self, prefix: RStr<'_>) -> RResult<abi_stable::std_types::RVec<RString>, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        match broker.plugin_kv.keys(&self.plugin, prefix.as_str()) {
            Ok(keys) => RResult::ROk(keys.into_iter().map(RString::from).collect()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn kv_put(
        &self,
        key: RStr<'_>,
        value: abi_stable::std_types::RVec<u8>,
    ) -> FfiFuture<RResult<(), RString>> {
        self.kv_write(key.as_str().to_owned(), Some(value.into_vec()))
    }

    fn kv_delete(&self, key: RStr<'_>) -> FfiFuture<RResult<(), RString>> {
        self.kv_write(key.as_str().to_owned(), None)
    }

    fn resuming(&self) -> bool {
        self.resuming
    }

    fn config_dir(&self) -> RString {
        let Some(broker) = self.broker.upgrade() else {
            return RString::new();
        };
        let dir = broker.plugins.config_dir();
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        absolute.display().to_string().into()
    }

    fn node_name(&self) -> RString {
        self.broker
            .upgrade()
            .map(|b| RString::from(b.config.node_name.as_str()))
            .unwrap_or_default()
    }
}

//! The services the broker gives plugins ([`plugin_api::Host`]).
//!
//! One [`BrokerHost`] per plugin instance; it holds a weak reference to the broker (as
//! [`BrokerServices`]) so a plugin that outlives a shutting-down broker cannot keep it alive,
//! and the plugin's name so its log records are tagged with it. Every method is non-blocking
//! and callable from any thread.
//!
//! The conversions between the plugin API's FFI-safe types and the broker's live here
//! ([`message_from_plugin`], [`options_from_plugin`]): the broker itself only sees its own types.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use plugin_api::{
    ApiRequest, ApiResponse, ClientInfo, Host, HostRef, Host_TO, LogRecord, OutgoingMessage,
    SubOptions,
};

use super::{BrokerServices, ManagementApi};
use crate::codec::reason::ReasonCode;
use crate::codec::{PropertyValues, QoS, RetainHandling, SubscriptionOptions};
use crate::message::Message;
use crate::router::TopicName;

/// Builds a broker message from a plugin's (also used by the management API's publish).
pub fn message_from_plugin(m: OutgoingMessage) -> Result<Message, String> {
    let topic = TopicName::new(m.topic.as_str()).map_err(|e| e.to_string())?;
    let qos = QoS::from_u8(m.qos).ok_or_else(|| format!("invalid QoS {}", m.qos))?;
    let properties = PropertyValues {
        user_properties: m
            .user_properties
            .into_iter()
            .map(|t| (t.0.into(), t.1.into()))
            .collect(),
        payload_format_indicator: m.payload_format_indicator.into_option(),
        content_type: m.content_type.into_option().map(Into::into),
        response_topic: m.response_topic.into_option().map(Into::into),
        correlation_data: m
            .correlation_data
            .into_option()
            .map(|c| Vec::from(c).into()),
        message_expiry_interval: m.message_expiry_interval.into_option(),
        ..Default::default()
    }
    .into();
    let payload = Vec::from(m.payload).into();
    Ok(Message::new(
        topic, payload, qos, m.retain, properties, None,
    ))
}

/// Subscription options from a plugin's.
pub fn options_from_plugin(o: SubOptions) -> Result<SubscriptionOptions, String> {
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(o.qos).ok_or_else(|| format!("invalid QoS {}", o.qos))?,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: match o.retain_handling {
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        },
    })
}

/// What every host object of one plugin manager shares.
#[derive(Clone)]
pub struct Services {
    /// The broker.
    pub broker: Weak<dyn BrokerServices>,
    /// The in-process management API, once set up.
    pub management: Arc<OnceLock<Arc<dyn ManagementApi>>>,
    /// Where plugin config files are read from.
    pub config_dir: PathBuf,
}

/// Host services bound to one plugin.
#[derive(Clone)]
pub struct BrokerHost {
    broker: Weak<dyn BrokerServices>,
    management: Arc<OnceLock<Arc<dyn ManagementApi>>>,
    config_dir: PathBuf,
    plugin: Arc<str>,
    /// The broker's runtime: in-process API requests run there, not on the plugin's.
    runtime: Option<tokio::runtime::Handle>,
    /// Created by a reload with handoff: `resume` follows.
    resuming: bool,
}

impl BrokerHost {
    /// A host object for plugin `plugin`, as the FFI trait object; `resuming` for an instance
    /// created by a reload with handoff.
    pub fn new_ref(services: Services, plugin: &str, resuming: bool) -> HostRef {
        let host = BrokerHost {
            broker: services.broker,
            management: services.management,
            config_dir: services.config_dir,
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
        let task = runtime
            .spawn_blocking(move || broker.plugin_kv().write(&plugin, &key, value.as_deref()));
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
        match message_from_plugin(message) {
            Ok(m) => RResult::ROk(broker.publish(m) as u32),
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
        let subscribed = options_from_plugin(options)
            .and_then(|o| broker.subscribe(client_id.as_str(), filter.as_str(), o));
        match subscribed {
            Ok(q) => RResult::ROk(q as u8),
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
        crate::clock::now_ms()
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
        let delivered = message_from_plugin(message)
            .and_then(|m| broker.deliver(client_id.as_str(), m, subscription_id));
        match delivered {
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
        let (Some(api), Some(runtime)) = (self.management.get().cloned(), self.runtime.clone())
        else {
            let answer = failed(503, "the management API is not running in this broker");
            return async move { answer }.into_ffi();
        };
        let plugin = self.plugin.clone();
        let task = runtime.spawn(async move {
            let r = api
                .request(
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
        // Server-sent DISCONNECT reason codes are 0x80 and above; anything else is an
        // administrative action.
        let reason = ReasonCode::from_u8(reason_code)
            .filter(|r| *r as u8 >= 0x80)
            .unwrap_or(ReasonCode::AdministrativeAction);
        let found = broker.disconnect(client_id.as_str(), connected_at_ms, reason);
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
            .plugin_metrics()
            .register(&self.plugin, name.as_str(), kind, help.as_str())
        {
            Ok(id) => RResult::ROk(id),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn metric_update(&self, id: u32, value: i64, set: bool) {
        if let Some(broker) = self.broker.upgrade() {
            broker.plugin_metrics().update(&self.plugin, id, value, set);
        }
    }

    fn unsubscribe(&self, client_id: RStr<'_>, filter: RStr<'_>) -> RResult<bool, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        match broker.unsubscribe(client_id.as_str(), filter.as_str()) {
            Ok(existed) => RResult::ROk(existed),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn data_dir(&self) -> RString {
        let Some(broker) = self.broker.upgrade() else {
            return RString::new();
        };
        let dir = broker.config().data_dir.join("plugins").join(&*self.plugin);
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
        match broker.plugin_kv().get(&self.plugin, key.as_str()) {
            Ok(v) => RResult::ROk(v.map(Into::into).into()),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn kv_keys(&self, prefix: RStr<'_>) -> RResult<abi_stable::std_types::RVec<RString>, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        match broker.plugin_kv().keys(&self.plugin, prefix.as_str()) {
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
        let dir = &self.config_dir;
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        absolute.display().to_string().into()
    }

    fn deliver_remote(
        &self,
        message: OutgoingMessage,
        publisher: RStr<'_>,
        plain: bool,
        shared: RVec<RString>,
    ) -> RResult<u32, RString> {
        let Some(broker) = self.broker.upgrade() else {
            return RResult::RErr("the broker is shutting down".into());
        };
        let shared: Vec<String> = shared.into_iter().map(Into::into).collect();
        let routed = message_from_plugin(message).and_then(|mut m| {
            m.publisher = (!publisher.is_empty()).then(|| Arc::from(publisher.as_str()));
            broker.deliver_remote(m, plain, &shared)
        });
        match routed {
            Ok(n) => RResult::ROk(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => RResult::RErr(e.into()),
        }
    }

    fn log_level(&self) -> u8 {
        use tracing::level_filters::LevelFilter;
        match LevelFilter::current() {
            LevelFilter::OFF => 0,
            LevelFilter::ERROR => 1,
            LevelFilter::WARN => 2,
            LevelFilter::INFO => 3,
            LevelFilter::DEBUG => 4,
            _ => 5,
        }
    }

    fn node_name(&self) -> RString {
        self.broker
            .upgrade()
            .map(|b| RString::from(b.config().node_name.as_str()))
            .unwrap_or_default()
    }
}

//! presence: publishes `$SYS/brokers/<node>/clients/<client_id>/connected` and
//! `…/disconnected` JSON documents (every key in `etc/plugins/presence.toml`).
//!
//! Events are published through the broker's `publish` host service (so they pass the
//! `message.publish` chain like any message), never retained, at the configured QoS. A rejected
//! CONNECT produces nothing: the broker fires `client.connected` only after CONNACK 0.
//!
//! `disconnected.reason` is one of `normal` (DISCONNECT), `tcp_closed` (closed without
//! DISCONNECT), `keepalive_timeout`, `kicked` (brokerctl clients kick), `takenover` (same client
//! id connected elsewhere), `protocol_error`, `server_shutdown`, `io_error`.

use plugin_api::*;
use serde::{Deserialize, Serialize};

/// etc/plugins/presence.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// QoS of the presence messages (0, 1 or 2). Default 0.
    pub qos: u8,
}

/// The plugin.
pub struct Presence {
    qos: u8,
    host: HostRef,
    node: String,
}

/// The `connected` document, written straight from the client's view (no intermediate map: this
/// runs on every connect).
#[derive(Serialize)]
pub struct Connected<'a> {
    clientid: &'a str,
    username: Option<&'a str>,
    ipaddress: &'a str,
    sockport: u16,
    proto_name: &'a str,
    proto_ver: u8,
    keepalive: u16,
    clean_start: bool,
    expiry_interval: u32,
    connected_at: u64,
    ts: u64,
}

/// The `disconnected` document.
#[derive(Serialize)]
pub struct Disconnected<'a> {
    clientid: &'a str,
    username: Option<&'a str>,
    reason: &'a str,
    ipaddress: &'a str,
    connected_at: u64,
    disconnected_at: u64,
    ts: u64,
}

impl Presence {
    /// The `connected` document of `client` at `ts` (epoch milliseconds).
    pub fn connected_json<'a>(client: &'a ClientView<'_>, ts: u64) -> Connected<'a> {
        Connected {
            clientid: client.client_id.as_str(),
            username: client.username.as_ref().map(|u| u.as_str()).into_option(),
            ipaddress: client.peer_ip.as_str(),
            sockport: client.sock_port,
            proto_name: client.proto_name.as_str(),
            proto_ver: client.proto_ver,
            keepalive: client.keep_alive,
            clean_start: client.clean_start,
            expiry_interval: client.expiry_interval,
            connected_at: client.connected_at_ms,
            ts,
        }
    }

    /// The `disconnected` document of `client`, which left for `reason` at `ts`.
    pub fn disconnected_json<'a>(
        client: &'a ClientView<'_>,
        reason: &'a str,
        ts: u64,
    ) -> Disconnected<'a> {
        Disconnected {
            clientid: client.client_id.as_str(),
            username: client.username.as_ref().map(|u| u.as_str()).into_option(),
            reason,
            ipaddress: client.peer_ip.as_str(),
            connected_at: client.connected_at_ms,
            disconnected_at: ts,
            ts,
        }
    }

    fn emit(&self, client_id: &str, event: &str, doc: &impl Serialize) {
        let topic = format!("$SYS/brokers/{}/clients/{client_id}/{event}", self.node);
        let payload = match serde_json::to_vec(doc) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(client_id, event, error = %e, "presence event not written");
                return;
            }
        };
        let message = OutgoingMessage {
            topic: topic.into(),
            payload: payload.into(),
            qos: self.qos,
            retain: false,
            ..OutgoingMessage::default()
        };
        if let RResult::RErr(e) = self.host.publish(message) {
            tracing::warn!(client_id, event, error = %e, "presence event not published");
        }
    }
}

impl Plugin for Presence {
    const NAME: &'static str = "presence";
    const DESCRIPTION: &'static str = "$SYS connected / disconnected events";
    /// Publishes from the broker's threads; nothing runs on the runtime.
    const RUNTIME_THREADS: usize = 1;

    fn create(ctx: Context, config: &str) -> Result<Self, PluginError> {
        let config: Config =
            toml::from_str(config).map_err(|e| PluginError::config(e.to_string()))?;
        if config.qos > 2 {
            return Err(PluginError::config(format!(
                "qos = {} is not 0, 1 or 2",
                config.qos
            )));
        }
        let host = ctx.host().clone();
        let node = host.node_name().to_string();
        Ok(Presence {
            qos: config.qos,
            host,
            node,
        })
    }

    fn registration(&self) -> Registration {
        Registration {
            hooks: vec![
                HookSpec {
                    point: HookPoint::CLIENT_CONNECTED,
                    priority: priority::PRESENCE,
                },
                HookSpec {
                    point: HookPoint::CLIENT_DISCONNECTED,
                    priority: priority::PRESENCE,
                },
            ]
            .into(),
            ..Registration::default()
        }
    }

    fn on_event(&self, point: HookPoint, event: &EventView<'_>) {
        let client = &event.client;
        let now = self.host.now_ms();
        let client_id = client.client_id.as_str();
        if point == HookPoint::CLIENT_CONNECTED {
            self.emit(client_id, "connected", &Self::connected_json(client, now));
        } else if point == HookPoint::CLIENT_DISCONNECTED {
            self.emit(
                client_id,
                "disconnected",
                &Self::disconnected_json(client, event.reason.as_str(), now),
            );
        }
    }
}

plugin_api::export_plugin!(Presence);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::TestContext;

    fn client() -> ClientInfo {
        ClientInfo {
            client_id: "c1".into(),
            username: ROption::RSome("u".into()),
            peer_ip: "127.0.0.1".into(),
            sock_port: 1883,
            proto_name: "MQTT".into(),
            proto_ver: 5,
            keep_alive: 30,
            connected_at_ms: 1000,
            ..ClientInfo::default()
        }
    }

    #[test]
    fn events_carry_the_documented_fields() {
        let t = TestContext::new();
        let p = Presence::create(t.context(), "qos = 1").expect("create");
        let info = client();
        let ev = EventView {
            client: info.view(),
            reason: "keepalive_timeout".into(),
            reason_code: 0,
            subscription: ROption::RNone,
        };
        p.on_event(HookPoint::CLIENT_CONNECTED, &ev);
        p.on_event(HookPoint::CLIENT_DISCONNECTED, &ev);
        let published = t.host.published();
        assert_eq!(published.len(), 2);
        assert_eq!(
            published[0].topic.as_str(),
            "$SYS/brokers/test@localhost/clients/c1/connected"
        );
        assert_eq!((published[0].qos, published[0].retain), (1, false));
        let doc: serde_json::Value = serde_json::from_slice(&published[1].payload).expect("json");
        assert_eq!(doc["reason"], "keepalive_timeout");
        assert_eq!(doc["username"], "u");
        assert_eq!(doc["connected_at"], 1000);
        let doc: serde_json::Value = serde_json::from_slice(&published[0].payload).expect("json");
        for (key, want) in [
            ("clientid", serde_json::json!("c1")),
            ("ipaddress", serde_json::json!("127.0.0.1")),
            ("sockport", serde_json::json!(1883)),
            ("proto_name", serde_json::json!("MQTT")),
            ("proto_ver", serde_json::json!(5)),
            ("keepalive", serde_json::json!(30)),
            ("connected_at", serde_json::json!(1000)),
        ] {
            assert_eq!(doc[key], want, "{key}");
        }
        assert!(doc["ts"].is_u64() && doc["clean_start"].is_boolean());
    }

    #[test]
    fn a_client_without_a_user_name_has_null() {
        let mut info = client();
        info.username = ROption::RNone;
        let doc = serde_json::to_value(Presence::connected_json(&info.view(), 5)).expect("json");
        assert_eq!(doc["username"], serde_json::Value::Null);
        assert_eq!(doc["ts"], 5);
    }

    #[test]
    fn bad_qos_is_a_config_error() {
        let t = TestContext::new();
        assert!(Presence::create(t.context(), "qos = 3").is_err());
    }
}

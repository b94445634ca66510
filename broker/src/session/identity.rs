//! Who a connected client is, as the broker keeps it for the life of the connection.
//!
//! Plugins see a client as `plugin_api::ClientView` (borrowed) or `ClientInfo` (owned, stable
//! ABI). The owned form takes 320 bytes and a heap string per text field; one per connected
//! client adds up, so the broker keeps this compact form instead: the client id and the
//! listener name shared with the rest of the broker, fixed names as static strings, and only
//! what is the client's own in a box. [`Identity::view`] lends it to plugins without copying.

use std::sync::Arc;

use plugin_api::{ClientInfo, ClientView, RStr};

/// A connected client's identity: fixed at CONNECT, except `is_superuser` (re-authentication).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client id (the same allocation as the session's).
    pub client_id: Arc<str>,
    /// The user name the client gave, if any.
    pub username: Option<Box<str>>,
    /// The peer's address, as text.
    pub peer_ip: Box<str>,
    /// The peer's port.
    pub peer_port: u16,
    /// The listener's port.
    pub sock_port: u16,
    /// The listener's name (shared by its connections).
    pub listener: Arc<str>,
    /// Over WebSocket (transport `mqtt-ws`) rather than a byte stream (`mqtt`).
    pub websocket: bool,
    /// Protocol level: 3, 4 or 5 (the protocol name follows from it).
    pub proto_ver: u8,
    /// Keep Alive in force, seconds.
    pub keep_alive: u16,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Session expiry interval in force, seconds.
    pub expiry_interval: u32,
    /// When the CONNECT arrived, milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// TLS client certificate: common name and subject.
    pub cert: Option<Box<(Option<String>, Option<String>)>>,
    /// Whether authentication made the client a superuser.
    pub is_superuser: bool,
}

impl Identity {
    /// `mqtt` or `mqtt-ws`.
    pub fn transport(&self) -> &'static str {
        if self.websocket {
            "mqtt-ws"
        } else {
            "mqtt"
        }
    }

    /// `MQIsdp` (MQTT 3.1) or `MQTT`.
    pub fn proto_name(&self) -> &'static str {
        if self.proto_ver == 3 {
            "MQIsdp"
        } else {
            "MQTT"
        }
    }

    /// A borrowed view for plugins.
    pub fn view(&self) -> ClientView<'_> {
        let (cn, subject) = match self.cert.as_deref() {
            Some((cn, subject)) => (cn.as_deref(), subject.as_deref()),
            None => (None, None),
        };
        ClientView {
            client_id: RStr::from_str(&self.client_id),
            username: self.username.as_deref().map(RStr::from_str).into(),
            peer_ip: RStr::from_str(&self.peer_ip),
            peer_port: self.peer_port,
            sock_port: self.sock_port,
            listener: RStr::from_str(&self.listener),
            transport: RStr::from_str(self.transport()),
            proto_ver: self.proto_ver,
            proto_name: RStr::from_str(self.proto_name()),
            keep_alive: self.keep_alive,
            clean_start: self.clean_start,
            expiry_interval: self.expiry_interval,
            connected_at_ms: self.connected_at_ms,
            cert_common_name: cn.map(RStr::from_str).into(),
            cert_subject: subject.map(RStr::from_str).into(),
            is_superuser: self.is_superuser,
        }
    }

    /// An owned copy in the plugin API's form (for requests that own their client).
    pub fn to_client_info(&self) -> ClientInfo {
        self.view().to_owned_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_shows_every_field_as_plugins_knew_it() {
        let id = Identity {
            client_id: Arc::from("c1"),
            username: Some("alice".into()),
            peer_ip: "10.0.0.7".into(),
            peer_port: 40_000,
            sock_port: 1883,
            listener: Arc::from("tcp"),
            websocket: false,
            proto_ver: 5,
            keep_alive: 30,
            clean_start: true,
            expiry_interval: 60,
            connected_at_ms: 1_700_000_000_000,
            cert: Some(Box::new((Some("dev-1".into()), None))),
            is_superuser: true,
        };
        let info = id.to_client_info();
        assert_eq!(info.client_id.as_str(), "c1");
        assert_eq!(
            info.username.as_ref().map(|u| u.as_str()).into_option(),
            Some("alice")
        );
        assert_eq!(
            (info.peer_ip.as_str(), info.peer_port, info.sock_port),
            ("10.0.0.7", 40_000, 1883)
        );
        assert_eq!(
            (
                info.listener.as_str(),
                info.transport.as_str(),
                info.proto_name.as_str()
            ),
            ("tcp", "mqtt", "MQTT")
        );
        assert_eq!(
            (
                info.proto_ver,
                info.keep_alive,
                info.clean_start,
                info.expiry_interval
            ),
            (5, 30, true, 60)
        );
        assert_eq!(info.connected_at_ms, 1_700_000_000_000);
        assert_eq!(
            info.cert_common_name
                .as_ref()
                .map(|c| c.as_str())
                .into_option(),
            Some("dev-1")
        );
        assert!(info.cert_subject.is_none());
        assert!(info.is_superuser);
        let v31_ws = Identity {
            websocket: true,
            proto_ver: 3,
            ..id
        };
        let view = v31_ws.view();
        assert_eq!(
            (view.transport.as_str(), view.proto_name.as_str()),
            ("mqtt-ws", "MQIsdp")
        );
    }
}

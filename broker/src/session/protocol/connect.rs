//! CONNECT negotiation as a pure function: from the client's CONNECT and the broker's limits
//! to what this connection runs with, or a typed refusal. Authentication comes after it (it
//! needs plugins); nothing here does I/O or reads the clock.

use std::borrow::Cow;
use std::sync::Arc;

use crate::codec::{reason::ReasonCode, Connect, Properties, PropertyValues, ProtocolVersion};
use crate::config::{Limits, MqttConfig};

use super::{is_sys_topic, within_levels};

/// The broker's side of the negotiation.
#[derive(Debug, Clone, Copy)]
pub struct ConnectPolicy<'a> {
    /// `[limits]`.
    pub limits: &'a Limits,
    /// `[mqtt]` capabilities.
    pub mqtt: &'a MqttConfig,
    /// `session.max_session_expiry_interval`.
    pub max_session_expiry: u32,
    /// `acl.client_publish_sys`: whether a will may name a `$SYS` topic.
    pub client_publish_sys: bool,
    /// Whether a loaded plugin handles enhanced authentication.
    pub enhanced_auth: bool,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The CONNACK reason code (mapped to a return code for MQTT 3).
    pub code: ReasonCode,
    /// For the log and, for v5 clients, the Reason String.
    pub why: Cow<'static, str>,
    /// False when the protocol has no way to say it: the connection is closed without CONNACK
    /// (an invalid will topic under MQTT 3, [MQTT-3.2.2-6] leaves closing as the only answer).
    pub connack: bool,
}

impl Refusal {
    /// A refusal answered with CONNACK `code`.
    pub fn new(code: ReasonCode, why: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            code,
            why: why.into(),
            connack: true,
        }
    }
}

/// What a connection runs with once its CONNECT is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The client id: as sent, or assigned.
    pub client_id: Arc<str>,
    /// The id the broker assigned, to announce in CONNACK ([MQTT-3.2.2-16]).
    pub assigned_client_id: Option<String>,
    /// Session Expiry Interval asked for (v3: 0 for clean session, else never).
    pub requested_expiry: u32,
    /// Session Expiry Interval in force: capped by `max_session_expiry_interval`.
    pub session_expiry: u32,
    /// Keep Alive in force, seconds.
    pub keep_alive: u16,
    /// Server Keep Alive to announce when the broker overrode the client's ([MQTT-3.2.2-21]).
    pub server_keep_alive: Option<u16>,
    /// QoS 1/2 messages the broker may have in flight to the client: its Receive Maximum
    /// capped by `limits.max_inflight` ([MQTT-3.3.4-7]).
    pub window: usize,
    /// The client's Maximum Packet Size ([MQTT-3.1.2-25]).
    pub client_max_packet: usize,
    /// Topic aliases the client may set (the broker's Topic Alias Maximum; 0 for MQTT 3).
    pub inbound_aliases: u16,
    /// Topic aliases the broker may set towards the client (0: none).
    pub outbound_aliases: u16,
    /// Whether reason strings may be sent ([MQTT-3.1.2-29]).
    pub problem_information: bool,
}

/// Negotiates a CONNECT. `assign` makes a client id for a client that sent none.
pub fn negotiate(
    connect: &Connect,
    policy: &ConnectPolicy<'_>,
    assign: impl FnOnce() -> String,
) -> Result<Negotiated, Refusal> {
    let limits = policy.limits;
    let version = connect.protocol;
    let v5 = version.is_v5();
    let (client_id, assigned_client_id) = client_identifier(connect, assign)?;
    if client_id.len() > limits.max_client_id_len {
        return Err(Refusal::new(
            ReasonCode::ClientIdentifierNotValid,
            "client identifier longer than limits.max_client_id_len",
        ));
    }
    if v5 && connect.properties.authentication_method.is_some() && !policy.enhanced_auth {
        return Err(Refusal::new(
            ReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not supported by any loaded plugin",
        ));
    }
    check_will(connect, policy)?;
    let requested_expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if v5 && limits.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > limits.max_keep_alive) {
        keep_alive = limits.max_keep_alive;
        server_keep_alive = Some(keep_alive);
    }
    let p = &connect.properties;
    Ok(Negotiated {
        client_id,
        assigned_client_id,
        requested_expiry,
        session_expiry: requested_expiry.min(policy.max_session_expiry),
        keep_alive,
        server_keep_alive,
        window: limits
            .max_inflight
            .min(p.receive_maximum.unwrap_or(u16::MAX)) as usize,
        client_max_packet: p.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
        inbound_aliases: if v5 { limits.topic_alias_maximum } else { 0 },
        outbound_aliases: if v5 {
            p.topic_alias_maximum
                .unwrap_or(0)
                .min(limits.topic_alias_maximum)
        } else {
            0
        },
        problem_information: p.request_problem_information != Some(0),
    })
}

/// The client id, assigning one when the client sent none and may do so ([MQTT-3.1.3-6]).
fn client_identifier(
    connect: &Connect,
    assign: impl FnOnce() -> String,
) -> Result<(Arc<str>, Option<String>), Refusal> {
    if !connect.client_id.is_empty() {
        return Ok((Arc::from(connect.client_id.as_str()), None));
    }
    // [MQTT-3.1.3-8]: 3.1.1 allows an empty id only with clean session; 3.1 never.
    let version = connect.protocol;
    if version == ProtocolVersion::V3_1
        || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
    {
        return Err(Refusal::new(
            ReasonCode::ClientIdentifierNotValid,
            "[MQTT-3.1.3-8] empty client identifier requires clean session",
        ));
    }
    let id = assign();
    Ok((Arc::from(id.as_str()), Some(id)))
}

/// The will must be publishable by this client when it is published.
fn check_will(connect: &Connect, policy: &ConnectPolicy<'_>) -> Result<(), Refusal> {
    let Some(will) = &connect.will else {
        return Ok(());
    };
    let refusal = if !within_levels(&will.topic, policy.limits.max_topic_levels) {
        Refusal::new(
            ReasonCode::TopicNameInvalid,
            "will topic has more than limits.max_topic_levels levels",
        )
    } else if is_sys_topic(&will.topic) && !policy.client_publish_sys {
        Refusal::new(
            ReasonCode::NotAuthorized,
            "will topic is a $SYS topic (acl.client_publish_sys = false)",
        )
    } else if will.qos as u8 > policy.mqtt.maximum_qos {
        Refusal::new(
            ReasonCode::QosNotSupported,
            "[MQTT-3.2.2-12] will QoS above mqtt.maximum_qos",
        )
    } else if will.retain && !policy.mqtt.retain_available {
        Refusal::new(
            ReasonCode::RetainNotSupported,
            "[MQTT-3.2.2-13] will with RETAIN, and mqtt.retain_available = false",
        )
    } else {
        return Ok(());
    };
    // MQTT 3 has no return code for most of these: close without CONNACK.
    let connack = connect.protocol.is_v5() || refusal.code == ReasonCode::NotAuthorized;
    Err(Refusal { connack, ..refusal })
}

impl Negotiated {
    /// The CONNACK properties a v5 client is told: every limit and capability that differs
    /// from the specification's default. `enhanced` is the authentication method and the
    /// plugin's last data, when enhanced authentication was used.
    pub fn connack_properties(
        &self,
        connect: &Connect,
        policy: &ConnectPolicy<'_>,
        enhanced: Option<(&str, &[u8])>,
    ) -> Properties {
        let mut properties = PropertyValues::default();
        if !connect.protocol.is_v5() {
            return Properties::default();
        }
        let (limits, mqtt) = (policy.limits, policy.mqtt);
        if self.session_expiry != self.requested_expiry {
            properties.session_expiry_interval = Some(self.session_expiry);
        }
        properties.receive_maximum = Some(limits.receive_maximum);
        properties.maximum_packet_size = Some(limits.max_packet_size as u32);
        if limits.topic_alias_maximum > 0 {
            properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
        }
        properties.assigned_client_identifier = self.assigned_client_id.clone();
        properties.server_keep_alive = self.server_keep_alive;
        if mqtt.maximum_qos < 2 {
            properties.maximum_qos = Some(mqtt.maximum_qos);
        }
        let off = |on: bool| (!on).then_some(0);
        properties.retain_available = off(mqtt.retain_available);
        properties.wildcard_subscription_available = off(mqtt.wildcard_subscription_available);
        properties.subscription_identifier_available = off(mqtt.subscription_identifiers_available);
        properties.shared_subscription_available = off(mqtt.shared_subscription_available);
        if connect.properties.request_response_information == Some(1)
            && !mqtt.response_information.is_empty()
        {
            properties.response_information =
                Some(mqtt.response_information.replace("%c", &self.client_id));
        }
        if let Some((method, data)) = enhanced {
            properties.authentication_method = Some(method.to_owned());
            if !data.is_empty() {
                properties.authentication_data = Some(data.to_vec().into());
            }
        }
        properties.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{LastWill, QoS};

    fn connect(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
        Connect {
            protocol: version,
            clean_start: clean,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    fn run(c: &Connect, limits: &Limits, mqtt: &MqttConfig) -> Result<Negotiated, Refusal> {
        let policy = ConnectPolicy {
            limits,
            mqtt,
            max_session_expiry: 3600,
            client_publish_sys: false,
            enhanced_auth: false,
        };
        negotiate(c, &policy, || "auto-1".into())
    }

    fn defaults() -> (Limits, MqttConfig) {
        (Limits::default(), MqttConfig::default())
    }

    /// [MQTT-3.1.3-6] / [MQTT-3.2.2-16]: an empty id is assigned and announced (v5 and 3.1.1
    /// with clean session); [MQTT-3.1.3-8]: refused with 0x85 otherwise.
    #[test]
    fn mqtt_3_1_3_6_and_8_empty_client_identifier() {
        let (l, m) = defaults();
        let ok = run(&connect(ProtocolVersion::V5, "", false), &l, &m).expect("v5 assigns");
        assert_eq!(&*ok.client_id, "auto-1");
        assert_eq!(ok.assigned_client_id.as_deref(), Some("auto-1"));
        assert!(run(&connect(ProtocolVersion::V3_1_1, "", true), &l, &m).is_ok());
        for c in [
            connect(ProtocolVersion::V3_1_1, "", false),
            connect(ProtocolVersion::V3_1, "", true),
        ] {
            let r = run(&c, &l, &m).expect_err("refused");
            assert_eq!(r.code, ReasonCode::ClientIdentifierNotValid);
            assert!(r.connack);
        }
        let given = run(&connect(ProtocolVersion::V5, "c1", true), &l, &m).expect("ok");
        assert_eq!(given.assigned_client_id, None);
    }

    /// [MQTT-3.2.2-21] / [MQTT-3.1.2-21]: with `max_keep_alive`, a v5 client asking more (or 0)
    /// gets the maximum as Server Keep Alive; MQTT 3 clients keep theirs (no way to tell them).
    #[test]
    fn mqtt_3_2_2_21_server_keep_alive() {
        let (mut l, m) = defaults();
        l.max_keep_alive = 60;
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.keep_alive = 120;
        let n = run(&c, &l, &m).expect("ok");
        assert_eq!((n.keep_alive, n.server_keep_alive), (60, Some(60)));
        let props = n.connack_properties(&c, &policy(&l, &m), None);
        assert_eq!(props.server_keep_alive, Some(60));
        c.keep_alive = 0;
        assert_eq!(run(&c, &l, &m).expect("ok").server_keep_alive, Some(60));
        c.keep_alive = 30;
        assert_eq!(run(&c, &l, &m).expect("ok").server_keep_alive, None);
        let mut v3 = connect(ProtocolVersion::V3_1_1, "c", true);
        v3.keep_alive = 120;
        assert_eq!(run(&v3, &l, &m).expect("ok").keep_alive, 120);
    }

    fn policy<'a>(l: &'a Limits, m: &'a MqttConfig) -> ConnectPolicy<'a> {
        ConnectPolicy {
            limits: l,
            mqtt: m,
            max_session_expiry: 3600,
            client_publish_sys: false,
            enhanced_auth: false,
        }
    }

    /// Session expiry: a v5 client's request is capped by the broker, and the value in force is
    /// announced in CONNACK when it differs; v3 clean session = 0, else the broker's maximum.
    #[test]
    fn session_expiry_is_capped_and_announced() {
        let (l, m) = defaults();
        let mut c = connect(ProtocolVersion::V5, "c", false);
        c.properties.make_mut().session_expiry_interval = Some(u32::MAX);
        let n = run(&c, &l, &m).expect("ok");
        assert_eq!((n.requested_expiry, n.session_expiry), (u32::MAX, 3600));
        let props = n.connack_properties(&c, &policy(&l, &m), None);
        assert_eq!(props.session_expiry_interval, Some(3600));
        c.properties.make_mut().session_expiry_interval = Some(10);
        let n = run(&c, &l, &m).expect("ok");
        assert_eq!(n.session_expiry, 10);
        assert_eq!(
            n.connack_properties(&c, &policy(&l, &m), None)
                .session_expiry_interval,
            None
        );
        assert_eq!(
            run(&connect(ProtocolVersion::V3_1_1, "c", true), &l, &m)
                .expect("ok")
                .session_expiry,
            0
        );
        assert_eq!(
            run(&connect(ProtocolVersion::V3_1_1, "c", false), &l, &m)
                .expect("ok")
                .session_expiry,
            3600
        );
    }

    /// [MQTT-3.2.2-12] / [MQTT-3.2.2-13]: a will above the Maximum QoS or with RETAIN when
    /// retain is unavailable is refused (0x9B / 0x9A); under MQTT 3 the connection just closes.
    #[test]
    fn mqtt_3_2_2_12_and_13_wills_within_capabilities() {
        let (l, mut m) = defaults();
        m.maximum_qos = 1;
        m.retain_available = false;
        let will = |qos, retain| LastWill {
            topic: "w".into(),
            payload: Default::default(),
            qos,
            retain,
            properties: Properties::default(),
        };
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.will = Some(will(QoS::ExactlyOnce, false));
        assert_eq!(
            run(&c, &l, &m).expect_err("qos").code,
            ReasonCode::QosNotSupported
        );
        c.will = Some(will(QoS::AtLeastOnce, true));
        assert_eq!(
            run(&c, &l, &m).expect_err("retain").code,
            ReasonCode::RetainNotSupported
        );
        c.protocol = ProtocolVersion::V3_1_1;
        assert!(!run(&c, &l, &m).expect_err("v3").connack);
        c.will = Some(LastWill {
            topic: "$SYS/x".into(),
            ..will(QoS::AtMostOnce, false)
        });
        let r = run(&c, &l, &m).expect_err("sys");
        assert_eq!(r.code, ReasonCode::NotAuthorized);
        assert!(r.connack, "v3 has a return code for not authorized");
    }

    /// [MQTT-3.3.4-7] the outgoing window is the client's Receive Maximum capped by
    /// `max_inflight`; [MQTT-3.3.2-9] outgoing aliases within the client's maximum.
    #[test]
    fn mqtt_3_3_4_7_window_and_aliases_follow_the_client() {
        let (l, m) = defaults();
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.properties.make_mut().receive_maximum = Some(5);
        c.properties.make_mut().topic_alias_maximum = Some(1000);
        let n = run(&c, &l, &m).expect("ok");
        assert_eq!(n.window, 5);
        assert_eq!(n.outbound_aliases, l.topic_alias_maximum);
        assert_eq!(n.inbound_aliases, l.topic_alias_maximum);
        c.properties.make_mut().receive_maximum = None;
        c.properties.make_mut().topic_alias_maximum = None;
        let n = run(&c, &l, &m).expect("ok");
        assert_eq!(n.window, l.max_inflight as usize);
        assert_eq!(
            n.outbound_aliases, 0,
            "[MQTT-3.3.2-9] the client allowed none"
        );
        let v3 = run(&connect(ProtocolVersion::V3_1_1, "c", true), &l, &m).expect("ok");
        assert_eq!((v3.inbound_aliases, v3.outbound_aliases), (0, 0));
    }

    /// The capabilities switched off in `[mqtt]` are announced; Response Information only to a
    /// client that asked, with `%c` replaced.
    #[test]
    fn capabilities_and_response_information_in_connack() {
        let (l, mut m) = defaults();
        m.maximum_qos = 1;
        m.wildcard_subscription_available = false;
        m.response_information = "reply/%c".into();
        let mut c = connect(ProtocolVersion::V5, "dev-1", true);
        let n = run(&c, &l, &m).expect("ok");
        let p = n.connack_properties(&c, &policy(&l, &m), None);
        assert_eq!(p.maximum_qos, Some(1));
        assert_eq!(p.wildcard_subscription_available, Some(0));
        assert_eq!(
            p.retain_available, None,
            "available is the default: not sent"
        );
        assert_eq!(p.response_information, None, "not asked for");
        c.properties.make_mut().request_response_information = Some(1);
        let p = n.connack_properties(&c, &policy(&l, &m), None);
        assert_eq!(p.response_information.as_deref(), Some("reply/dev-1"));
        let v3 = connect(ProtocolVersion::V3_1_1, "c", true);
        assert!(n.connack_properties(&v3, &policy(&l, &m), None).is_empty());
    }

    /// An Authentication Method with no plugin to handle it is refused with 0x8C.
    #[test]
    fn enhanced_auth_without_a_plugin_is_a_bad_method() {
        let (l, m) = defaults();
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.properties.make_mut().authentication_method = Some("SCRAM-SHA-256".into());
        assert_eq!(
            run(&c, &l, &m).expect_err("no plugin").code,
            ReasonCode::BadAuthenticationMethod
        );
    }
}

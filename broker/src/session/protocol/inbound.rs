//! What the client sends: topic aliases it set (section 3.3.2.3.4) and QoS 2 messages it has
//! not released yet (section 4.3.3), bounded by the broker's Receive Maximum.

use crate::codec::{reason::ReasonCode, PacketId, Publish, QoS};
use crate::router::TopicName;

use super::Violation;

/// How an incoming QoS 2 PUBLISH is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Arrival {
    /// A new message: route it, then record it with [`Inbound::accepted_qos2`].
    New,
    /// A resend of a message already routed ([MQTT-4.3.3-10]): answer PUBREC again, do not
    /// route it twice.
    Duplicate,
}

/// The checks of a PUBLISH from a client that need no state: [MQTT-3.3.4-6] no Subscription
/// Identifier, [MQTT-3.2.2-11] / [MQTT-3.2.2-14] within the Maximum QoS and Retain Available
/// the broker announced, and a packet id for QoS 2.
pub fn check_publish(
    p: &Publish,
    maximum_qos: u8,
    retain_available: bool,
) -> Result<(), Violation> {
    if !p.properties.subscription_identifiers.is_empty() {
        return Err(Violation::new(
            ReasonCode::ProtocolError,
            "[MQTT-3.3.4-6] PUBLISH from a client carries a subscription identifier",
        ));
    }
    if p.qos as u8 > maximum_qos {
        return Err(Violation::new(
            ReasonCode::QosNotSupported,
            "[MQTT-3.2.2-11] PUBLISH QoS above the Maximum QoS (mqtt.maximum_qos)",
        ));
    }
    if p.retain && !retain_available {
        return Err(Violation::new(
            ReasonCode::RetainNotSupported,
            "[MQTT-3.2.2-14] PUBLISH with RETAIN, and mqtt.retain_available = false",
        ));
    }
    if p.qos != QoS::AtMostOnce && p.packet_id.is_none() {
        return Err(Violation::new(
            ReasonCode::MalformedPacket,
            "[MQTT-2.2.1-2] QoS 1 or 2 PUBLISH without a packet id",
        ));
    }
    Ok(())
}

/// The incoming half of a session's protocol state.
#[derive(Debug)]
pub struct Inbound {
    qos2: Vec<u16>,
    /// Topics by alias − 1, grown as the client sets them (most clients set none or few: a
    /// table of the full maximum would cost a kilobyte per idle v5 connection).
    aliases: Vec<Option<TopicName>>,
    /// Bytes of the topics in `aliases`.
    alias_bytes: u32,
    alias_maximum: u16,
    receive_maximum: u16,
}

impl Inbound {
    /// `receive_maximum` is the broker's (announced in CONNACK); `topic_alias_maximum` the
    /// number of aliases the client may set (0 for MQTT 3).
    pub fn new(receive_maximum: u16, topic_alias_maximum: u16) -> Inbound {
        Inbound {
            qos2: Vec::new(),
            aliases: Vec::new(),
            alias_bytes: 0,
            alias_maximum: topic_alias_maximum,
            receive_maximum,
        }
    }

    /// Takes over the QoS 2 ids a previous connection received but were not released.
    pub fn resume(&mut self, qos2: Vec<u16>) {
        self.qos2 = qos2;
    }

    /// Hands the unreleased QoS 2 ids back to the session when the connection ends.
    pub fn park(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.qos2)
    }

    /// The topic of an incoming PUBLISH, applying and recording topic aliases.
    pub fn resolve_topic(&mut self, p: &Publish) -> Result<TopicName, Violation> {
        let invalid_name = |e: crate::router::TopicError| {
            Violation::new(ReasonCode::TopicNameInvalid, e.to_string())
        };
        let Some(alias) = p.properties.topic_alias else {
            return TopicName::new(&p.topic).map_err(invalid_name);
        };
        let slot = (alias as usize)
            .checked_sub(1)
            .filter(|i| *i < self.alias_maximum as usize)
            .ok_or_else(|| {
                Violation::new(
                    ReasonCode::TopicAliasInvalid,
                    format!("[MQTT-3.3.2-8] topic alias {alias} out of range"),
                )
            })?;
        if p.topic.is_empty() {
            return self.aliases.get(slot).cloned().flatten().ok_or_else(|| {
                Violation::new(
                    ReasonCode::ProtocolError,
                    format!("topic alias {alias} used before it was set (section 3.3.2.3.4)"),
                )
            });
        }
        let topic = TopicName::new(&p.topic).map_err(invalid_name)?;
        if self.aliases.len() <= slot {
            self.aliases.resize(slot + 1, None);
        }
        let before = self.aliases[slot].replace(topic.clone());
        let freed = before.map_or(0, |t| t.as_str().len());
        // At most 65 535 aliases of 65 535 bytes: within u32.
        self.alias_bytes = self.alias_bytes - freed as u32 + topic.as_str().len() as u32;
        Ok(topic)
    }

    /// Bytes of the topics the client's aliases name: memory the client's input holds for the
    /// whole connection (charged with its read buffer against `limits.max_incoming_bytes`).
    pub fn alias_bytes(&self) -> usize {
        self.alias_bytes as usize
    }

    /// Checks a QoS 2 PUBLISH with `id` against what is not released yet.
    pub fn qos2_arrival(&self, id: PacketId) -> Result<Qos2Arrival, Violation> {
        if self.qos2.contains(&id.get()) {
            return Ok(Qos2Arrival::Duplicate);
        }
        if self.qos2.len() >= self.receive_maximum as usize {
            return Err(Violation::new(
                ReasonCode::ReceiveMaximumExceeded,
                "[MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISH than Receive Maximum",
            ));
        }
        Ok(Qos2Arrival::New)
    }

    /// Records a routed QoS 2 message as received until its PUBREL.
    pub fn accepted_qos2(&mut self, id: PacketId) {
        self.qos2.push(id.get());
    }

    /// A PUBREL: true when `id` was waiting ([MQTT-4.3.3-12]); PUBCOMP answers either way,
    /// with 0x92 when it was not.
    pub fn on_pubrel(&mut self, id: PacketId) -> bool {
        match self.qos2.iter().position(|p| *p == id.get()) {
            Some(pos) => {
                self.qos2.swap_remove(pos);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PropertyValues;

    fn id(n: u16) -> PacketId {
        PacketId::new(n).expect("non-zero")
    }

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PropertyValues {
                topic_alias: alias,
                ..PropertyValues::default()
            }
            .into(),
            payload: Default::default(),
        }
    }

    /// The bytes the aliases hold follow what they name: a replaced alias gives its topic's
    /// bytes back, using one adds nothing.
    #[test]
    fn alias_bytes_follow_the_aliases() {
        let mut i = Inbound::new(10, 4);
        i.resolve_topic(&publish("abcd", Some(1))).expect("set");
        i.resolve_topic(&publish("ef", Some(2))).expect("set");
        assert_eq!(i.alias_bytes(), 6);
        i.resolve_topic(&publish("", Some(1))).expect("used");
        assert_eq!(i.alias_bytes(), 6);
        i.resolve_topic(&publish("g", Some(1))).expect("replaced");
        assert_eq!(i.alias_bytes(), 3);
        i.resolve_topic(&publish("plain", None)).expect("no alias");
        assert_eq!(i.alias_bytes(), 3);
    }

    /// [MQTT-4.3.3-10] a resent QoS 2 PUBLISH (same id, not released) is not routed twice;
    /// after PUBREL the id is a new message again ([MQTT-4.3.3-12]).
    #[test]
    fn mqtt_4_3_3_10_qos2_is_routed_once_until_released() {
        let mut i = Inbound::new(10, 0);
        assert_eq!(i.qos2_arrival(id(5)), Ok(Qos2Arrival::New));
        i.accepted_qos2(id(5));
        assert_eq!(i.qos2_arrival(id(5)), Ok(Qos2Arrival::Duplicate));
        assert!(i.on_pubrel(id(5)));
        assert!(
            !i.on_pubrel(id(5)),
            "a second PUBREL finds nothing: PUBCOMP 0x92"
        );
        assert_eq!(i.qos2_arrival(id(5)), Ok(Qos2Arrival::New));
    }

    /// [MQTT-3.3.4-9] more unreleased QoS 2 messages than Receive Maximum is a protocol error
    /// (0x93); a duplicate of one already held is not counted again.
    #[test]
    fn mqtt_3_3_4_9_receive_maximum_is_enforced() {
        let mut i = Inbound::new(2, 0);
        i.accepted_qos2(id(1));
        i.accepted_qos2(id(2));
        assert_eq!(i.qos2_arrival(id(2)), Ok(Qos2Arrival::Duplicate));
        let err = i.qos2_arrival(id(3)).expect_err("over the maximum");
        assert_eq!(err.code, ReasonCode::ReceiveMaximumExceeded);
        i.on_pubrel(id(1));
        assert_eq!(i.qos2_arrival(id(3)), Ok(Qos2Arrival::New));
    }

    /// Section 3.3.2.3.4: an alias is set by a PUBLISH with topic and alias, then names the
    /// topic in PUBLISH with an empty one; it can be changed; [MQTT-3.3.2-8] 0 and values above
    /// the maximum are refused with 0x94; an alias used before it is set is a protocol error.
    #[test]
    fn mqtt_3_3_2_8_topic_aliases_set_used_changed_and_bounded() {
        let mut i = Inbound::new(10, 2);
        let used = |i: &mut Inbound, alias| i.resolve_topic(&publish("", Some(alias)));
        assert_eq!(
            used(&mut i, 1).expect_err("unset").code,
            ReasonCode::ProtocolError
        );
        let t = i.resolve_topic(&publish("a/b", Some(1))).expect("set");
        assert_eq!(t.as_str(), "a/b");
        assert_eq!(used(&mut i, 1).expect("use").as_str(), "a/b");
        i.resolve_topic(&publish("c", Some(1))).expect("change");
        assert_eq!(used(&mut i, 1).expect("use").as_str(), "c");
        for bad in [0, 3] {
            let err = i
                .resolve_topic(&publish("x", Some(bad)))
                .expect_err("out of range");
            assert_eq!(err.code, ReasonCode::TopicAliasInvalid);
        }
        let mut v3 = Inbound::new(10, 0);
        assert_eq!(
            v3.resolve_topic(&publish("x", Some(1)))
                .expect_err("none allowed")
                .code,
            ReasonCode::TopicAliasInvalid
        );
    }

    /// [MQTT-3.3.4-6], [MQTT-3.2.2-11], [MQTT-3.2.2-14]: what a client's PUBLISH may not carry.
    #[test]
    fn mqtt_3_3_4_6_and_3_2_2_11_14_publish_within_capabilities() {
        let mut p = publish("t", None);
        assert_eq!(check_publish(&p, 2, true), Ok(()));
        p.properties.make_mut().subscription_identifiers = vec![1];
        assert_eq!(
            check_publish(&p, 2, true).expect_err("sub id").code,
            ReasonCode::ProtocolError
        );
        p.properties.make_mut().subscription_identifiers.clear();
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(id(1));
        assert_eq!(
            check_publish(&p, 1, true).expect_err("qos").code,
            ReasonCode::QosNotSupported
        );
        p.retain = true;
        assert_eq!(
            check_publish(&p, 2, false).expect_err("retain").code,
            ReasonCode::RetainNotSupported
        );
        assert_eq!(check_publish(&p, 2, true), Ok(()));
    }

    /// [MQTT-3.3.2-2] wildcards are not allowed in a topic name.
    #[test]
    fn mqtt_3_3_2_2_wildcards_in_a_topic_name_are_refused() {
        let mut i = Inbound::new(10, 0);
        for bad in ["a/+", "#", ""] {
            let err = i.resolve_topic(&publish(bad, None)).expect_err(bad);
            assert_eq!(err.code, ReasonCode::TopicNameInvalid);
        }
    }
}

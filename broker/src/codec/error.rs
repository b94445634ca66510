//! Decode errors: each names the normative statement it enforces and the reason code a v5
//! DISCONNECT (or CONNACK) carries for it.

use super::reason::ReasonCode;

/// A packet that breaks the specification. The connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A variable byte integer longer than four bytes.
    #[error("[MQTT-1.5.5-1] malformed variable byte integer (more than 4 bytes)")]
    MalformedVarInt,
    /// The declared packet size exceeds the configured maximum.
    #[error(
        "[MQTT-3.1.2-24] packet of {size} bytes exceeds the maximum packet size of {max} bytes"
    )]
    PacketTooLarge {
        /// Declared size of the whole packet.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Packet type 0 (reserved), or AUTH on a v3 connection.
    #[error("[MQTT-2.1.2] reserved or unknown packet type {0}")]
    InvalidPacketType(u8),
    /// Fixed-header flags that the specification fixes were wrong.
    #[error("[MQTT-2.1.3-1] invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidHeaderFlags {
        /// Packet type name.
        packet: &'static str,
        /// Received flags nibble.
        flags: u8,
    },
    /// The packet ended before a field it declares.
    #[error("[MQTT-2.1.4] packet shorter than its fields ({0})")]
    Truncated(&'static str),
    /// Bytes left over after the last field.
    #[error("[MQTT-2.1.4] {0} bytes left after the last field of {1}")]
    TrailingBytes(usize, &'static str),
    /// A UTF-8 string that is not well-formed UTF-8.
    #[error("[MQTT-1.5.4-1] string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A UTF-8 string containing U+0000.
    #[error("[MQTT-1.5.4-2] string contains the null character U+0000")]
    NullCharacter,
    /// The protocol name of CONNECT is neither `MQTT` nor `MQIsdp`.
    #[error("[MQTT-3.1.2-1] unknown protocol name {0:?}")]
    InvalidProtocolName(String),
    /// A protocol level the broker does not speak; answered with CONNACK 0x01 / 0x84.
    #[error("[MQTT-3.1.2-2] unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// The reserved bit of the CONNECT flags was set.
    #[error("[MQTT-3.1.2-3] reserved CONNECT flag is set")]
    ConnectReservedFlag,
    /// Will QoS or will retain set without the will flag.
    #[error("[MQTT-3.1.2-11] will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    /// Will QoS of 3.
    #[error("[MQTT-3.1.2-12] will QoS 3 is not a QoS")]
    InvalidWillQoS,
    /// v3: password flag set without the user name flag.
    #[error("[MQTT-3.1.2-22] password flag set without the user name flag")]
    PasswordWithoutUsername,
    /// PUBLISH with both QoS bits set.
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    InvalidQoS,
    /// PUBLISH QoS 0 with DUP set.
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// A topic name containing a wildcard character.
    #[error("[MQTT-3.3.2-2] topic name {0:?} contains a wildcard")]
    WildcardInTopicName(String),
    /// A zero-length topic name without a topic alias.
    #[error("[MQTT-4.7.3-1] topic name is empty")]
    EmptyTopicName,
    /// Packet identifier 0.
    #[error("[MQTT-2.2.1-3] packet identifier is zero")]
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without any filter.
    #[error("[MQTT-3.8.3-2] {0} contains no topic filter")]
    NoTopicFilter(&'static str),
    /// Reserved bits of the subscription options were set, or retain handling 3.
    #[error("[MQTT-3.8.3-5] reserved subscription option bits set")]
    InvalidSubscriptionOptions,
    /// A property identifier that is unknown or not allowed on this packet.
    #[error("[MQTT-2.2.2-2] property {id:#04x} is not allowed in {packet}")]
    InvalidProperty {
        /// Property identifier.
        id: u8,
        /// Packet type name.
        packet: &'static str,
    },
    /// A property that may appear once appeared twice.
    #[error("[MQTT-2.2.2-2] property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value outside its allowed range (e.g. receive maximum 0).
    #[error("[MQTT-3.1.2-21] property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// A reason code that is not allowed on this packet.
    #[error("[MQTT-2.4] reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// Reason code.
        code: u8,
        /// Packet type name.
        packet: &'static str,
    },
}

impl DecodeError {
    /// The v5 reason code a DISCONNECT (or CONNACK) carries for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolLevel(_) => ReasonCode::UnsupportedProtocolVersion,
            DecodeError::WildcardInTopicName(_) | DecodeError::EmptyTopicName => {
                ReasonCode::TopicNameInvalid
            }
            DecodeError::DuplicateProperty(_) | DecodeError::InvalidPropertyValue(_) => {
                ReasonCode::ProtocolError
            }
            _ => ReasonCode::MalformedPacket,
        }
    }
}

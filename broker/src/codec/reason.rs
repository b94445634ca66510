//! MQTT 5.0 reason codes (section 2.4) and their MQTT 3.x equivalents.
//!
//! The broker speaks v5 reason codes internally; [`connack_v3_return_code`] maps a CONNACK
//! reason to the six return codes MQTT 3.1 / 3.1.1 know, and [`suback_v3`] a SUBACK reason.

#![allow(missing_docs)]

/// Declares [`ReasonCode`] and its byte mapping from a single list.
macro_rules! reason_codes {
    ($($variant:ident = $value:literal,)*) => {
        /// An MQTT 5 reason code (section 2.4). Decisions inside the broker and the packet
        /// structs carry this type; the wire carries the byte ([`ReasonCode::get`]), checked on
        /// decode against the codes the specification allows in each packet
        /// ([`ReasonCode::decode`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[repr(u8)]
        pub enum ReasonCode {
            #[default]
            $($variant = $value,)*
        }

        impl ReasonCode {
            /// The code for `byte`, if the specification defines one.
            pub fn from_u8(byte: u8) -> Option<ReasonCode> {
                match byte {
                    $($value => Some(ReasonCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QosNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    /// The byte on the wire.
    pub const fn get(self) -> u8 {
        self as u8
    }

    /// True for failures (0x80 and above).
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }
}

use super::packet::kind;
use super::DecodeError;

impl ReasonCode {
    /// Whether the specification allows this code in packets of type `packet_kind` (the
    /// tables of sections 3.2.2.2, 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1
    /// and 3.15.2.1). Packets without reason codes allow none.
    pub fn allowed_in(self, packet_kind: u8) -> bool {
        use ReasonCode::*;
        match packet_kind {
            kind::CONNACK => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QosNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            kind::PUBACK | kind::PUBREC => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            kind::PUBREL | kind::PUBCOMP => matches!(self, Success | PacketIdentifierNotFound),
            kind::SUBACK => matches!(
                self,
                Success
                    | GrantedQos1
                    | GrantedQos2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            kind::UNSUBACK => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            kind::DISCONNECT => !matches!(
                self,
                GrantedQos1
                    | GrantedQos2
                    | NoMatchingSubscribers
                    | NoSubscriptionExisted
                    | ContinueAuthentication
                    | ReAuthenticate
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | ServerUnavailable
                    | Banned
                    | BadAuthenticationMethod
                    | PacketIdentifierInUse
                    | PacketIdentifierNotFound
            ),
            kind::AUTH => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
            _ => false,
        }
    }

    /// The reason code `byte` of a packet of type `packet_kind` named `packet`: an unknown
    /// code, or one the specification does not allow there, is a malformed packet.
    pub fn decode(
        byte: u8,
        packet_kind: u8,
        packet: &'static str,
    ) -> Result<ReasonCode, DecodeError> {
        ReasonCode::from_u8(byte)
            .filter(|code| code.allowed_in(packet_kind))
            .ok_or(DecodeError::InvalidReasonCode { code: byte, packet })
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> u8 {
        code.get()
    }
}

/// MQTT 3.x CONNACK return codes (3.1.1 section 3.2.2.3).
pub mod v3 {
    pub const ACCEPTED: u8 = 0;
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
    pub const SERVER_UNAVAILABLE: u8 = 3;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// Maps a v5 CONNACK reason code to the closest MQTT 3.x return code.
pub fn connack_v3_return_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::Success => v3::ACCEPTED,
        ReasonCode::UnsupportedProtocolVersion => v3::UNACCEPTABLE_PROTOCOL_VERSION,
        ReasonCode::ClientIdentifierNotValid => v3::IDENTIFIER_REJECTED,
        ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => {
            v3::BAD_USER_NAME_OR_PASSWORD
        }
        ReasonCode::NotAuthorized | ReasonCode::Banned => v3::NOT_AUTHORIZED,
        _ => v3::SERVER_UNAVAILABLE,
    }
}

/// The v5 reason code an MQTT 3.x CONNACK return code stands for (the inverse of
/// [`connack_v3_return_code`] on the codes 3.x has).
pub fn connack_from_v3(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        v3::ACCEPTED => ReasonCode::Success,
        v3::UNACCEPTABLE_PROTOCOL_VERSION => ReasonCode::UnsupportedProtocolVersion,
        v3::IDENTIFIER_REJECTED => ReasonCode::ClientIdentifierNotValid,
        v3::SERVER_UNAVAILABLE => ReasonCode::ServerUnavailable,
        v3::BAD_USER_NAME_OR_PASSWORD => ReasonCode::BadUserNameOrPassword,
        v3::NOT_AUTHORIZED => ReasonCode::NotAuthorized,
        _ => {
            return Err(DecodeError::InvalidReasonCode {
                code,
                packet: "CONNACK",
            })
        }
    })
}

/// Maps a v5 SUBACK reason code to MQTT 3.x: a granted QoS stays, any failure is 0x80.
pub fn suback_v3(reason: ReasonCode) -> u8 {
    if reason.is_error() {
        0x80
    } else {
        reason.get()
    }
}

/// The SUBACK failure a plugin's refusal `byte` stands for: the code itself when SUBACK allows
/// it as a failure, else Unspecified error.
pub fn suback_failure(byte: u8) -> ReasonCode {
    ReasonCode::from_u8(byte)
        .filter(|c| c.is_error() && c.allowed_in(kind::SUBACK))
        .unwrap_or(ReasonCode::UnspecifiedError)
}

/// The v5 reason code an MQTT 3.x SUBACK return code stands for (0x80 is Unspecified error).
pub fn suback_from_v3(code: u8) -> Result<ReasonCode, DecodeError> {
    match code {
        0x00..=0x02 | 0x80 => ReasonCode::decode(code, kind::SUBACK, "SUBACK"),
        _ => Err(DecodeError::InvalidReasonCode {
            code,
            packet: "SUBACK",
        }),
    }
}

//! MQTT 5.0 reason codes (section 2.4) and their MQTT 3.x equivalents.
//!
//! The broker speaks v5 reason codes internally; [`connack_v3_return_code`] maps a CONNACK
//! reason to the six return codes MQTT 3.1 / 3.1.1 know, and [`suback_v3`] a SUBACK reason.

#![allow(missing_docs)]

/// Declares [`ReasonCode`] and, for the wire structs that carry a bare byte, one `u8` constant
/// per code, from a single list.
macro_rules! reason_codes {
    ($($variant:ident = $value:literal => $constant:ident,)*) => {
        /// An MQTT 5 reason code (section 2.4). Decisions inside the broker carry this type;
        /// packets carry the byte ([`ReasonCode::get`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
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

        $(pub const $constant: u8 = $value;)*
    };
}

reason_codes! {
    Success = 0x00 => SUCCESS,
    GrantedQos1 = 0x01 => GRANTED_QOS_1,
    GrantedQos2 = 0x02 => GRANTED_QOS_2,
    DisconnectWithWill = 0x04 => DISCONNECT_WITH_WILL,
    NoMatchingSubscribers = 0x10 => NO_MATCHING_SUBSCRIBERS,
    NoSubscriptionExisted = 0x11 => NO_SUBSCRIPTION_EXISTED,
    ContinueAuthentication = 0x18 => CONTINUE_AUTHENTICATION,
    ReAuthenticate = 0x19 => RE_AUTHENTICATE,
    UnspecifiedError = 0x80 => UNSPECIFIED_ERROR,
    MalformedPacket = 0x81 => MALFORMED_PACKET,
    ProtocolError = 0x82 => PROTOCOL_ERROR,
    ImplementationSpecificError = 0x83 => IMPLEMENTATION_SPECIFIC_ERROR,
    UnsupportedProtocolVersion = 0x84 => UNSUPPORTED_PROTOCOL_VERSION,
    ClientIdentifierNotValid = 0x85 => CLIENT_IDENTIFIER_NOT_VALID,
    BadUserNameOrPassword = 0x86 => BAD_USER_NAME_OR_PASSWORD,
    NotAuthorized = 0x87 => NOT_AUTHORIZED,
    ServerUnavailable = 0x88 => SERVER_UNAVAILABLE,
    ServerBusy = 0x89 => SERVER_BUSY,
    Banned = 0x8A => BANNED,
    ServerShuttingDown = 0x8B => SERVER_SHUTTING_DOWN,
    BadAuthenticationMethod = 0x8C => BAD_AUTHENTICATION_METHOD,
    KeepAliveTimeout = 0x8D => KEEP_ALIVE_TIMEOUT,
    SessionTakenOver = 0x8E => SESSION_TAKEN_OVER,
    TopicFilterInvalid = 0x8F => TOPIC_FILTER_INVALID,
    TopicNameInvalid = 0x90 => TOPIC_NAME_INVALID,
    PacketIdentifierInUse = 0x91 => PACKET_IDENTIFIER_IN_USE,
    PacketIdentifierNotFound = 0x92 => PACKET_IDENTIFIER_NOT_FOUND,
    ReceiveMaximumExceeded = 0x93 => RECEIVE_MAXIMUM_EXCEEDED,
    TopicAliasInvalid = 0x94 => TOPIC_ALIAS_INVALID,
    PacketTooLarge = 0x95 => PACKET_TOO_LARGE,
    MessageRateTooHigh = 0x96 => MESSAGE_RATE_TOO_HIGH,
    QuotaExceeded = 0x97 => QUOTA_EXCEEDED,
    AdministrativeAction = 0x98 => ADMINISTRATIVE_ACTION,
    PayloadFormatInvalid = 0x99 => PAYLOAD_FORMAT_INVALID,
    RetainNotSupported = 0x9A => RETAIN_NOT_SUPPORTED,
    QosNotSupported = 0x9B => QOS_NOT_SUPPORTED,
    UseAnotherServer = 0x9C => USE_ANOTHER_SERVER,
    ServerMoved = 0x9D => SERVER_MOVED,
    SharedSubscriptionsNotSupported = 0x9E => SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    ConnectionRateExceeded = 0x9F => CONNECTION_RATE_EXCEEDED,
    MaximumConnectTime = 0xA0 => MAXIMUM_CONNECT_TIME,
    SubscriptionIdentifiersNotSupported = 0xA1 => SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    WildcardSubscriptionsNotSupported = 0xA2 => WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
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
pub fn connack_v3_return_code(reason: u8) -> u8 {
    match reason {
        SUCCESS => v3::ACCEPTED,
        UNSUPPORTED_PROTOCOL_VERSION => v3::UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_IDENTIFIER_NOT_VALID => v3::IDENTIFIER_REJECTED,
        BAD_USER_NAME_OR_PASSWORD | BAD_AUTHENTICATION_METHOD => v3::BAD_USER_NAME_OR_PASSWORD,
        NOT_AUTHORIZED | BANNED => v3::NOT_AUTHORIZED,
        _ => v3::SERVER_UNAVAILABLE,
    }
}

/// Maps a v5 SUBACK reason code to MQTT 3.x: a granted QoS stays, any failure is 0x80.
pub fn suback_v3(reason: u8) -> u8 {
    if reason <= GRANTED_QOS_2 {
        reason
    } else {
        0x80
    }
}

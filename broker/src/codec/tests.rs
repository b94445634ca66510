//! Codec tests: byte-table fixtures (every byte commented), the malformed-packet rules, and the
//! `decode(encode(p)) == p` property for every packet type in every protocol version.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::properties::{allowed, WILL};
use super::reason::ReasonCode;
use super::*;

fn decode_all(
    bytes: &[u8],
    version: Option<ProtocolVersion>,
) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    codec_decode(&mut buf, version)
}

fn codec_decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
) -> Result<Option<Packet>, DecodeError> {
    decode(buf, version, 1024 * 1024)
}

const V4: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

#[test]
fn connect_v311_fixture() {
    let bytes = [
        0x10, 0x16, // CONNECT, remaining length 22
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
        0x04, // level 4 = 3.1.1
        0xC2, // user name + password + clean session
        0x00, 0x3C, // keep alive 60
        0x00, 0x03, b'c', b'i', b'd', // client id "cid"
        0x00, 0x01, b'u', // user name "u"
        0x00, 0x02, b'p', b'w', // password "pw"
    ];
    let Some(Packet::Connect(c)) = decode_all(&bytes, None).expect("valid") else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id, "cid");
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    let mut out = BytesMut::new();
    encode(&Packet::Connect(c), ProtocolVersion::V3_1_1, &mut out);
    assert_eq!(&out[..], &bytes[..]);
}

#[test]
fn connect_v31_fixture() {
    let bytes = [
        0x10, 0x0F, // CONNECT, remaining length 15
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name "MQIsdp"
        0x03, // level 3 = 3.1
        0x02, // clean session
        0x00, 0x0A, // keep alive 10
        0x00, 0x01, b'x', // client id "x"
    ];
    let Some(Packet::Connect(c)) = decode_all(&bytes, None).expect("valid") else {
        panic!("not a CONNECT");
    };
    assert_eq!(c.protocol, ProtocolVersion::V3_1);
}

#[test]
fn publish_v5_fixture() {
    let bytes = [
        0x3B, // PUBLISH, DUP, QoS 1, RETAIN
        0x0F, // remaining length 15
        0x00, 0x03, b'a', b'/', b'b', // topic "a/b"
        0x00, 0x07, // packet id 7
        0x05, // properties length 5
        0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry interval 60
        b'h', b'i', // payload "hi"
    ];
    let Some(Packet::Publish(p)) = decode_all(&bytes, V5).expect("valid") else {
        panic!("not a PUBLISH");
    };
    assert!(p.dup && p.retain);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(p.topic, "a/b");
    assert_eq!(p.packet_id.map(|i| i.get()), Some(7));
    assert_eq!(p.properties.message_expiry_interval, Some(60));
    assert_eq!(&p.payload[..], b"hi");
    let mut out = BytesMut::new();
    encode(&Packet::Publish(p), ProtocolVersion::V5, &mut out);
    assert_eq!(&out[..], &bytes[..]);
}

#[test]
fn incomplete_input_is_not_an_error() {
    let full = [0x30, 0x05, 0x00, 0x01, b't', b'x', b'y'];
    for n in 0..full.len() {
        let mut buf = BytesMut::from(&full[..n]);
        assert_eq!(codec_decode(&mut buf, V4), Ok(None), "prefix of {n} bytes");
        assert_eq!(buf.len(), n, "nothing consumed");
    }
    let mut buf = BytesMut::from(&full[..]);
    assert!(matches!(
        codec_decode(&mut buf, V4),
        Ok(Some(Packet::Publish(_)))
    ));
    assert!(buf.is_empty());
}

#[test]
fn two_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xC0, 0x00, 0xC0][..]);
    assert_eq!(codec_decode(&mut buf, V4), Ok(Some(Packet::PingReq)));
    assert_eq!(codec_decode(&mut buf, V4), Ok(Some(Packet::PingReq)));
    assert_eq!(codec_decode(&mut buf, V4), Ok(None));
    assert_eq!(buf.len(), 1);
}

/// Each malformed input and the error (hence the normative statement) it must produce.
#[test]
fn malformed_packets() {
    let cases: Vec<(&str, Vec<u8>, Option<ProtocolVersion>, DecodeError)> = vec![
        (
            "remaining length over 4 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            V4,
            DecodeError::MalformedVarInt,
        ),
        (
            "topic with +",
            vec![0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'],
            V4,
            DecodeError::WildcardInTopicName("a/+".into()),
        ),
        (
            "topic with #",
            vec![0x30, 0x03, 0x00, 0x01, b'#'],
            V5,
            DecodeError::WildcardInTopicName("#".into()),
        ),
        (
            "QoS 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            V4,
            DecodeError::InvalidQoS,
        ),
        (
            "DUP on QoS 0",
            vec![0x38, 0x03, 0x00, 0x01, b'a'],
            V4,
            DecodeError::DupOnQoS0,
        ),
        (
            "invalid UTF-8 in topic",
            vec![0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
            V4,
            DecodeError::InvalidUtf8,
        ),
        (
            "null character in topic",
            vec![0x30, 0x04, 0x00, 0x02, b'a', 0x00],
            V4,
            DecodeError::NullCharacter,
        ),
        (
            "empty topic in v3",
            vec![0x30, 0x02, 0x00, 0x00],
            V4,
            DecodeError::EmptyTopicName,
        ),
        (
            "empty topic without alias in v5",
            vec![0x30, 0x03, 0x00, 0x00, 0x00],
            V5,
            DecodeError::EmptyTopicName,
        ),
        (
            "QoS 1 packet id 0",
            vec![0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            V4,
            DecodeError::ZeroPacketId,
        ),
        (
            "SUBSCRIBE with flags 0000",
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            V4,
            DecodeError::InvalidHeaderFlags {
                packet: "SUBSCRIBE",
                flags: 0,
            },
        ),
        (
            "SUBSCRIBE without filters",
            vec![0x82, 0x02, 0x00, 0x01],
            V4,
            DecodeError::NoTopicFilter("SUBSCRIBE"),
        ),
        (
            "SUBSCRIBE reserved option bits (v3)",
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
            V4,
            DecodeError::InvalidSubscriptionOptions,
        ),
        (
            "SUBSCRIBE retain handling 3",
            vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
            V5,
            DecodeError::InvalidSubscriptionOptions,
        ),
        (
            "UNSUBSCRIBE without filters",
            vec![0xA2, 0x02, 0x00, 0x01],
            V4,
            DecodeError::NoTopicFilter("UNSUBSCRIBE"),
        ),
        (
            "PUBREL with flags 0000",
            vec![0x60, 0x02, 0x00, 0x01],
            V4,
            DecodeError::InvalidHeaderFlags {
                packet: "PUBREL",
                flags: 0,
            },
        ),
        (
            "PINGREQ with trailing bytes",
            vec![0xC0, 0x01, 0x00],
            V4,
            DecodeError::TrailingBytes(1, "PINGREQ"),
        ),
        (
            "packet type 0",
            vec![0x00, 0x00],
            V4,
            DecodeError::InvalidPacketType(0),
        ),
        (
            "AUTH on v3",
            vec![0xF0, 0x00],
            V4,
            DecodeError::InvalidPacketType(15),
        ),
        (
            "CONNECT reserved flag",
            vec![
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 0, 0, 1, b'x',
            ],
            None,
            DecodeError::ConnectReservedFlag,
        ),
        (
            "CONNECT unknown protocol level",
            vec![
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 0, 0, 1, b'x',
            ],
            None,
            DecodeError::UnsupportedProtocolLevel(6),
        ),
        (
            "CONNECT unknown protocol name",
            vec![
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'X', 4, 0x02, 0, 0, 0, 1, b'x',
            ],
            None,
            DecodeError::InvalidProtocolName("MQTX".into()),
        ),
        (
            "CONNECT will QoS without will flag",
            vec![
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0A, 0, 0, 0, 1, b'x',
            ],
            None,
            DecodeError::WillFlagsWithoutWill,
        ),
        (
            "CONNECT password without user name (3.1.1)",
            vec![
                0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 0, 0, 1, b'x', 0, 1, b'p',
            ],
            None,
            DecodeError::PasswordWithoutUsername,
        ),
        (
            "v5 property not allowed on PUBACK",
            vec![0x40, 0x06, 0x00, 0x01, 0x00, 0x02, 0x23, 0x00],
            V5,
            DecodeError::InvalidProperty {
                id: 0x23,
                packet: "PUBACK",
            },
        ),
        (
            "v5 duplicate property",
            vec![0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x01, 0x00, 0x01, 0x01],
            V5,
            DecodeError::DuplicateProperty(0x01),
        ),
        (
            "v5 property length beyond packet",
            vec![0x30, 0x05, 0x00, 0x01, b'a', 0x09, 0x01],
            V5,
            DecodeError::Truncated("properties"),
        ),
        (
            "string longer than packet",
            vec![0x30, 0x03, 0x00, 0x09, b'a'],
            V4,
            DecodeError::Truncated("string"),
        ),
    ];
    for (name, bytes, version, expected) in cases {
        assert_eq!(decode_all(&bytes, version), Err(expected), "{name}");
    }
}

#[test]
fn declared_size_over_maximum_is_rejected_before_buffering() {
    // PUBLISH declaring 200 MB: rejected from the fixed header alone.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x64][..]);
    let err = decode(&mut buf, V4, 1024 * 1024).expect_err("too large");
    assert!(matches!(err, DecodeError::PacketTooLarge { size, .. } if size > 200_000_000));
    assert!(
        buf.capacity() < 1024 * 1024,
        "no allocation for the declared size"
    );
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn v3_reason_codes_are_mapped() {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::BadUserNameOrPassword,
        properties: Properties::default(),
    });
    encode(&ack, ProtocolVersion::V3_1_1, &mut out);
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x04]);
    out.clear();
    let sub = Packet::SubAck(SubAck {
        packet_id: PacketId::new(1).expect("non-zero"),
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::GrantedQos1, ReasonCode::TopicFilterInvalid],
    });
    encode(&sub, ProtocolVersion::V3_1_1, &mut out);
    assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
}

/// [MQTT-2.4] / the reason code tables of each packet: a code the specification does not
/// allow in that packet (or defines nowhere) is a malformed packet, named in the error.
#[test]
fn reason_codes_are_checked_per_packet() {
    let v5 = Some(ProtocolVersion::V5);
    for (bytes, packet, code) in [
        (&[0x40, 0x03, 0x00, 0x01, 0x8F][..], "PUBACK", 0x8F),
        (&[0x50, 0x03, 0x00, 0x01, 0x01][..], "PUBREC", 0x01),
        (&[0x62, 0x03, 0x00, 0x01, 0x10][..], "PUBREL", 0x10),
        (&[0x70, 0x03, 0x00, 0x01, 0x87][..], "PUBCOMP", 0x87),
        (&[0xE0, 0x01, 0x01][..], "DISCONNECT", 0x01),
        (&[0xE0, 0x01, 0x03][..], "DISCONNECT", 0x03),
        (&[0xF0, 0x01, 0x04][..], "AUTH", 0x04),
    ] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(
            decode(&mut buf, v5, usize::MAX),
            Err(DecodeError::InvalidReasonCode { code, packet }),
            "{packet} {code:#04x}"
        );
    }
    for (bytes, expected) in [
        (
            &[0x40, 0x03, 0x00, 0x01, 0x10][..],
            ReasonCode::NoMatchingSubscribers,
        ),
        (
            &[0x62, 0x03, 0x00, 0x01, 0x92][..],
            ReasonCode::PacketIdentifierNotFound,
        ),
        (&[0xE0, 0x01, 0x04][..], ReasonCode::DisconnectWithWill),
    ] {
        let mut buf = BytesMut::from(bytes);
        let p = decode(&mut buf, v5, usize::MAX)
            .expect("valid")
            .expect("whole");
        let code = match p {
            Packet::PubAck(r) | Packet::PubRel(r) => r.reason_code,
            Packet::Disconnect(d) => d.reason_code,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(code, expected);
    }
}

// ---- property test: decode(encode(p)) == p ----

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::char::range('a', 'z'),
            Just('/'),
            Just('é'),
            Just('水')
        ],
        0..12,
    )
    .prop_map(String::from_iter)
}

fn topic_name() -> impl Strategy<Value = String> {
    text().prop_map(|s| if s.is_empty() { "t".to_string() } else { s })
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..=u16::MAX).prop_map(|v| PacketId::new(v).expect("non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    prop::option::of(0u8..=1)
}

/// Arbitrary properties, restricted to those allowed on packet kind `k`.
fn properties(k: u8) -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(binary()),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(any::<u16>()),
    );
    let b = (
        prop::option::of(text()),
        prop::option::of(binary()),
        flag(),
        prop::option::of(any::<u32>()),
        flag(),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(1u16..),
    );
    let c = (
        prop::option::of(any::<u16>()),
        prop::option::of(any::<u16>()),
        flag(),
        flag(),
        prop::collection::vec((text(), text()), 0..3),
        prop::option::of(1u32..),
        flag(),
        flag(),
        flag(),
    );
    (a, b, c).prop_map(move |(a, b, c)| {
        let mut p = PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifier_available: c.7,
            shared_subscription_available: c.8,
        };
        restrict(&mut p, k);
        Properties::from(p)
    })
}

fn restrict(p: &mut PropertyValues, k: u8) {
    macro_rules! keep {
        ($($id:literal => $field:ident),*) => {
            $(if !allowed($id, k) { p.$field = Default::default(); })*
        };
    }
    keep!(0x01 => payload_format_indicator, 0x02 => message_expiry_interval,
        0x03 => content_type, 0x08 => response_topic, 0x09 => correlation_data,
        0x0B => subscription_identifiers, 0x11 => session_expiry_interval,
        0x12 => assigned_client_identifier, 0x13 => server_keep_alive,
        0x15 => authentication_method, 0x16 => authentication_data,
        0x17 => request_problem_information, 0x18 => will_delay_interval,
        0x19 => request_response_information, 0x1A => response_information,
        0x1C => server_reference, 0x1F => reason_string, 0x21 => receive_maximum,
        0x22 => topic_alias_maximum, 0x23 => topic_alias, 0x24 => maximum_qos,
        0x25 => retain_available, 0x26 => user_properties, 0x27 => maximum_packet_size,
        0x28 => wildcard_subscription_available, 0x29 => subscription_identifier_available,
        0x2A => shared_subscription_available);
    if k == kind::SUBSCRIBE {
        p.subscription_identifiers.truncate(1);
    }
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn props_for(v: ProtocolVersion, k: u8) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        properties(k).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

/// Every reason code the specification allows in packets of type `k`.
fn allowed_codes(k: u8) -> Vec<ReasonCode> {
    (0..=255u8)
        .filter_map(ReasonCode::from_u8)
        .filter(|c| c.allowed_in(k))
        .collect()
}

/// A reason code for a packet of type `k`: any v5 allows there; for MQTT 3, success (CONNACK:
/// the codes its return codes stand for).
fn reason_for(v: ProtocolVersion, k: u8) -> BoxedStrategy<ReasonCode> {
    if v.is_v5() {
        prop::sample::select(allowed_codes(k)).boxed()
    } else if k == kind::CONNACK {
        prop::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ])
        .boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    }
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let connect = (
        any::<bool>(),
        any::<u16>(),
        text(),
        prop::option::of((
            topic_name(),
            binary(),
            qos(),
            any::<bool>(),
            props_for(v, WILL),
        )),
        prop::option::of(text()),
        prop::option::of(binary()),
        props_for(v, kind::CONNECT),
    )
        .prop_map(move |(clean, ka, id, will, user, pass, properties)| {
            // 3.x forbids a password without a user name.
            let pass = if v5 || user.is_some() { pass } else { None };
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start: clean,
                keep_alive: ka,
                client_id: id,
                will: will.map(|(topic, payload, qos, retain, properties)| LastWill {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties,
                }),
                username: user,
                password: pass,
                properties,
            }))
        });
    let connack = (
        any::<bool>(),
        reason_for(v, kind::CONNACK),
        props_for(v, kind::CONNACK),
    )
        .prop_map(|(sp, rc, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: sp,
                reason_code: rc,
                properties,
            })
        });
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name().prop_filter("no wildcard", |t| !t.contains(['+', '#'])),
        packet_id(),
        props_for(v, kind::PUBLISH),
        binary(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let zero = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !zero,
                qos,
                retain,
                topic,
                packet_id: if zero { None } else { Some(id) },
                properties,
                payload,
            })
        });
    let resp = |k: u8| {
        (packet_id(), reason_for(v, k), props_for(v, k)).prop_map(|(id, rc, properties)| PubResp {
            packet_id: id,
            reason_code: rc,
            properties,
        })
    };
    let sub_opts =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(q, nl, rap, rh)| {
            SubscriptionOptions {
                qos: q,
                no_local: nl && v5,
                retain_as_published: rap && v5,
                retain_handling: match rh {
                    _ if !v5 => RetainHandling::SendAtSubscribe,
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            }
        });
    let subscribe = (
        packet_id(),
        props_for(v, kind::SUBSCRIBE),
        prop::collection::vec((text(), sub_opts), 1..4),
    )
        .prop_map(|(id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id: id,
                properties,
                filters,
            })
        });
    let suback_codes = if v5 {
        prop::collection::vec(prop::sample::select(allowed_codes(kind::SUBACK)), 0..4).boxed()
    } else {
        let v3 = vec![
            ReasonCode::Success,
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos2,
            ReasonCode::UnspecifiedError,
        ];
        prop::collection::vec(prop::sample::select(v3), 0..4).boxed()
    };
    let suback = (packet_id(), props_for(v, kind::SUBACK), suback_codes).prop_map(
        |(id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id: id,
                properties,
                reason_codes,
            })
        },
    );
    let unsubscribe = (
        packet_id(),
        props_for(v, kind::UNSUBSCRIBE),
        prop::collection::vec(text(), 1..4),
    )
        .prop_map(|(id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties,
                filters,
            })
        });
    let unsuback_codes = if v5 {
        prop::collection::vec(prop::sample::select(allowed_codes(kind::UNSUBACK)), 0..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let unsuback = (packet_id(), props_for(v, kind::UNSUBACK), unsuback_codes).prop_map(
        |(id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id: id,
                properties,
                reason_codes,
            })
        },
    );
    let disconnect = (
        reason_for(v, kind::DISCONNECT),
        props_for(v, kind::DISCONNECT),
    )
        .prop_map(|(rc, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code: rc,
                properties,
            })
        });
    let mut options: Vec<BoxedStrategy<Packet>> = vec![
        connect.boxed(),
        connack.boxed(),
        publish.boxed(),
        resp(kind::PUBACK).prop_map(Packet::PubAck).boxed(),
        resp(kind::PUBREC).prop_map(Packet::PubRec).boxed(),
        resp(kind::PUBREL).prop_map(Packet::PubRel).boxed(),
        resp(kind::PUBCOMP).prop_map(Packet::PubComp).boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v5 {
        let auth = (
            prop::sample::select(allowed_codes(kind::AUTH)),
            properties(kind::AUTH),
        )
            .prop_map(|(rc, properties)| {
                Packet::Auth(Auth {
                    reason_code: rc,
                    properties,
                })
            });
        options.push(auth.boxed());
    }
    prop::strategy::Union::new(options).boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_encode_roundtrip((v, p) in version().prop_flat_map(|v| (Just(v), packet(v)))) {
        let mut buf = BytesMut::new();
        encode(&p, v, &mut buf);
        prop_assert_eq!(buf.len(), encoded_len(&p, v));
        let decoded = decode(&mut buf, Some(v), usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, Some(p));
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic the decoder and never consume more than they hold.
    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), v in version()) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode(&mut buf, Some(v), 1024);
        prop_assert!(buf.len() <= bytes.len());
    }
}

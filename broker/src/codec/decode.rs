//! Decoding: bytes from the socket to [`Packet`]s.
//!
//! [`decode`] first reads the fixed header only ([`read_fixed_header`]), rejects a declared size
//! over the maximum before buffering anything more, and returns `Ok(None)` until the whole packet
//! is in the buffer. The packet's bytes are then split off the buffer and frozen, so string and
//! binary fields are validated in place and payloads are zero-copy slices.

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::properties::{Properties, WILL};
use super::reason::{self, ReasonCode};

/// The fixed header of a packet: type, flags and the size of the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// First byte: packet type (high nibble) and flags (low nibble).
    pub byte1: u8,
    /// Remaining length: bytes after the fixed header.
    pub remaining_len: usize,
    /// Length of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

/// Reads the fixed header from the front of `buf` without consuming it.
///
/// `Ok(None)` means more bytes are needed. A fifth length byte is an error at once.
pub fn read_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                byte1,
                remaining_len: value,
                header_len: 2 + i,
            }));
        }
    }
    Err(DecodeError::MalformedVarInt)
}

/// The most [`decode`] reserves in one go for the rest of an incomplete packet.
pub const RESERVE_AHEAD: usize = 64 * 1024;

/// Decodes one packet from the front of `buf`.
///
/// `version` is the connection's protocol version, `None` before CONNECT (then only CONNECT is
/// decoded and other packet types are returned as-is for the session to reject). `max_size` is
/// the maximum size of a whole packet in bytes. On `Ok(Some(_))` the packet's bytes have been
/// removed from `buf`; on `Ok(None)` nothing was consumed and `buf` may have been reserved for the
/// declared size.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = read_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header.header_len + header.remaining_len;
    if total > max_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_size,
        });
    }
    if buf.len() < total {
        // Room for the rest, but never more than RESERVE_AHEAD at a time: a client that
        // announces a large packet and sends it slowly gets memory as its bytes arrive, not
        // max_packet_size up front.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header.header_len);
    let version = version.unwrap_or(ProtocolVersion::V5);
    decode_body(header.byte1, frame, version).map(Some)
}

/// A bounds-checked cursor over one packet's bytes.
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Self {
        Reader { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.bytes.len() < n {
            Err(DecodeError::Truncated(what))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "byte")?;
        Ok(self.bytes.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2, "two-byte integer")?;
        Ok(self.bytes.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "four-byte integer")?;
        Ok(self.bytes.get_u32())
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= ((b & 0x7F) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVarInt)
    }

    /// A sub-reader over the next `len` bytes.
    pub(crate) fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader, DecodeError> {
        self.need(len, what)?;
        Ok(Reader::new(self.bytes.split_to(len)))
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.need(len, "binary data")?;
        Ok(self.bytes.split_to(len))
    }

    /// A UTF-8 encoded string: well-formed and free of U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        self.need(len, "string")?;
        let raw = self.bytes.split_to(len);
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s.to_owned())
    }

    pub(crate) fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    fn finish(self, packet: &'static str) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.bytes.len(), packet))
        }
    }
}

fn expect_flags(byte1: u8, expected: u8, packet: &'static str) -> Result<(), DecodeError> {
    let flags = byte1 & 0x0F;
    if flags != expected {
        return Err(DecodeError::InvalidHeaderFlags { packet, flags });
    }
    Ok(())
}

fn decode_body(byte1: u8, body: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let v5 = version.is_v5();
    let packet = match byte1 >> 4 {
        kind::CONNECT => {
            expect_flags(byte1, 0, "CONNECT")?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        kind::CONNACK => {
            expect_flags(byte1, 0, "CONNACK")?;
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::InvalidHeaderFlags {
                    packet: "CONNACK",
                    flags,
                });
            }
            let code = r.u8()?;
            let reason_code = if v5 {
                ReasonCode::decode(code, kind::CONNACK, "CONNACK")?
            } else {
                reason::connack_from_v3(code)?
            };
            let properties = if v5 {
                Properties::decode(&mut r, kind::CONNACK)?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: flags & 1 == 1,
                reason_code,
                properties,
            })
        }
        kind::PUBLISH => Packet::Publish(decode_publish(byte1, &mut r, version)?),
        kind::PUBACK => {
            expect_flags(byte1, 0, "PUBACK")?;
            Packet::PubAck(decode_pub_resp(&mut r, kind::PUBACK, v5)?)
        }
        kind::PUBREC => {
            expect_flags(byte1, 0, "PUBREC")?;
            Packet::PubRec(decode_pub_resp(&mut r, kind::PUBREC, v5)?)
        }
        kind::PUBREL => {
            expect_flags(byte1, 0b0010, "PUBREL")?;
            Packet::PubRel(decode_pub_resp(&mut r, kind::PUBREL, v5)?)
        }
        kind::PUBCOMP => {
            expect_flags(byte1, 0, "PUBCOMP")?;
            Packet::PubComp(decode_pub_resp(&mut r, kind::PUBCOMP, v5)?)
        }
        kind::SUBSCRIBE => {
            expect_flags(byte1, 0b0010, "SUBSCRIBE")?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        kind::SUBACK => {
            expect_flags(byte1, 0, "SUBACK")?;
            let packet_id = r.packet_id()?;
            let properties = if v5 {
                Properties::decode(&mut r, kind::SUBACK)?
            } else {
                Properties::default()
            };
            let reason_codes = r
                .rest()
                .iter()
                .map(|&code| {
                    if v5 {
                        ReasonCode::decode(code, kind::SUBACK, "SUBACK")
                    } else {
                        reason::suback_from_v3(code)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        }
        kind::UNSUBSCRIBE => {
            expect_flags(byte1, 0b0010, "UNSUBSCRIBE")?;
            let packet_id = r.packet_id()?;
            let properties = if v5 {
                Properties::decode(&mut r, kind::UNSUBSCRIBE)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::NoTopicFilter("UNSUBSCRIBE"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        kind::UNSUBACK => {
            expect_flags(byte1, 0, "UNSUBACK")?;
            let packet_id = r.packet_id()?;
            let (properties, reason_codes) = if v5 {
                let p = Properties::decode(&mut r, kind::UNSUBACK)?;
                let codes = r
                    .rest()
                    .iter()
                    .map(|&code| ReasonCode::decode(code, kind::UNSUBACK, "UNSUBACK"))
                    .collect::<Result<Vec<_>, _>>()?;
                (p, codes)
            } else {
                (Properties::default(), Vec::new())
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        }
        kind::PINGREQ => {
            expect_flags(byte1, 0, "PINGREQ")?;
            Packet::PingReq
        }
        kind::PINGRESP => {
            expect_flags(byte1, 0, "PINGRESP")?;
            Packet::PingResp
        }
        kind::DISCONNECT => {
            expect_flags(byte1, 0, "DISCONNECT")?;
            let mut d = Disconnect::default();
            if v5 && r.remaining() > 0 {
                d.reason_code = ReasonCode::decode(r.u8()?, kind::DISCONNECT, "DISCONNECT")?;
                if r.remaining() > 0 {
                    d.properties = Properties::decode(&mut r, kind::DISCONNECT)?;
                }
            }
            Packet::Disconnect(d)
        }
        kind::AUTH if v5 => {
            expect_flags(byte1, 0, "AUTH")?;
            let mut a = Auth::default();
            if r.remaining() > 0 {
                a.reason_code = ReasonCode::decode(r.u8()?, kind::AUTH, "AUTH")?;
                if r.remaining() > 0 {
                    a.properties = Properties::decode(&mut r, kind::AUTH)?;
                }
            }
            Packet::Auth(a)
        }
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    let name = packet.name();
    r.finish(name)?;
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT", _) | ("MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => return Err(DecodeError::InvalidProtocolName(name)),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillQoS)?;
    // [MQTT-3.1.2-22]: v3.1.1 forbids a password without a user name; v5 allows it.
    if protocol != ProtocolVersion::V5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        Properties::decode(r, kind::CONNECT)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            Properties::decode(r, WILL)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        validate_topic_name(&topic, false)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Checks a PUBLISH topic name: no wildcard ([MQTT-3.3.2-2]), non-empty unless an alias may
/// stand for it ([MQTT-4.7.3-1]).
fn validate_topic_name(topic: &str, alias_allowed: bool) -> Result<(), DecodeError> {
    if topic.is_empty() && !alias_allowed {
        return Err(DecodeError::EmptyTopicName);
    }
    if topic.contains(['+', '#']) {
        return Err(DecodeError::WildcardInTopicName(topic.to_owned()));
    }
    Ok(())
}

fn decode_publish(
    byte1: u8,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let dup = byte1 & 0x08 != 0;
    let qos = QoS::from_u8((byte1 >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let retain = byte1 & 0x01 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::DupOnQoS0);
    }
    let topic = r.string()?;
    validate_topic_name(&topic, version.is_v5())?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = if version.is_v5() {
        Properties::decode(r, kind::PUBLISH)?
    } else {
        Properties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// The name of a PUBACK, PUBREC, PUBREL or PUBCOMP packet type.
fn pub_resp_name(k: u8) -> &'static str {
    match k {
        kind::PUBACK => "PUBACK",
        kind::PUBREC => "PUBREC",
        kind::PUBREL => "PUBREL",
        _ => "PUBCOMP",
    }
}

fn decode_pub_resp(r: &mut Reader, k: u8, v5: bool) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut resp = PubResp::new(packet_id);
    // v5: a remaining length of 2 means reason 0x00 and no properties (section 3.4.2.1).
    if v5 && r.remaining() > 0 {
        resp.reason_code = ReasonCode::decode(r.u8()?, k, pub_resp_name(k))?;
        if r.remaining() > 0 {
            resp.properties = Properties::decode(r, k)?;
        }
    }
    Ok(resp)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        Properties::decode(r, kind::SUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        let options = r.u8()?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if options & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        let qos = QoS::from_u8(options & 0x03).ok_or(DecodeError::InvalidSubscriptionOptions)?;
        let retain_handling = match (options >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions),
        };
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilter("SUBSCRIBE"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

//! Encoding: [`Packet`]s to bytes, appended to a write buffer.
//!
//! The encoder computes the remaining length first ([`encoded_len`]) so each packet is written
//! in one pass without intermediate buffers. For v3 connections properties are never written
//! and v5 reason codes are mapped to the v3 return codes (see [`super::reason`]).

use bytes::{BufMut, BytesMut};

use super::packet::*;
use super::properties::Properties;
use super::reason::{self, ReasonCode};

pub(crate) fn var_int_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_var_int(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

pub(crate) fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn props_len(p: &Properties, v5: bool) -> usize {
    if v5 {
        p.encoded_len()
    } else {
        0
    }
}

/// A v5 acknowledgement may omit its reason code and properties when the code is 0 and there
/// are no properties (sections 3.4.2.1, 3.14.2.1, 3.15.2.1).
fn short_form(reason_code: ReasonCode, p: &Properties) -> bool {
    reason_code == ReasonCode::Success && p.is_empty()
}

/// Size of the remaining length (the part after the fixed header) of `packet`.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            let mut n = 2 + c.protocol.protocol_name().len() + 1 + 1 + 2;
            n += props_len(&c.properties, v5);
            n += 2 + c.client_id.len();
            if let Some(w) = &c.will {
                n += props_len(&w.properties, v5) + 2 + w.topic.len() + 2 + w.payload.len();
            }
            if let Some(u) = &c.username {
                n += 2 + u.len();
            }
            if let Some(p) = &c.password {
                n += 2 + p.len();
            }
            n
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5),
        Packet::Publish(p) => publish_remaining_len(
            &p.topic,
            p.packet_id.is_some(),
            &p.properties,
            p.payload.len(),
            v5,
        ),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            if v5 && !short_form(r.reason_code, &r.properties) {
                3 + r.properties.encoded_len()
            } else {
                2
            }
        }
        Packet::Subscribe(s) => {
            2 + props_len(&s.properties, v5)
                + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5) + s.reason_codes.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(&u.properties, v5) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            if v5 {
                2 + u.properties.encoded_len() + u.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 && !short_form(d.reason_code, &d.properties) {
                1 + d.properties.encoded_len()
            } else {
                0
            }
        }
        Packet::Auth(a) => {
            if short_form(a.reason_code, &a.properties) {
                0
            } else {
                1 + a.properties.encoded_len()
            }
        }
    }
}

/// Total encoded size of `packet` in bytes, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let rem = remaining_len(packet, version);
    1 + var_int_len(rem) + rem
}

/// Appends the encoding of `packet` for a connection speaking `version` to `out`.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    let v5 = version.is_v5();
    let rem = remaining_len(packet, version);
    out.reserve(5 + rem);
    let byte1 = match packet {
        Packet::Publish(p) => {
            (kind::PUBLISH << 4) | ((p.dup as u8) << 3) | ((p.qos as u8) << 1) | (p.retain as u8)
        }
        Packet::PubRel(_) => (kind::PUBREL << 4) | 0b0010,
        Packet::Subscribe(_) => (kind::SUBSCRIBE << 4) | 0b0010,
        Packet::Unsubscribe(_) => (kind::UNSUBSCRIBE << 4) | 0b0010,
        Packet::Connect(_) => kind::CONNECT << 4,
        Packet::ConnAck(_) => kind::CONNACK << 4,
        Packet::PubAck(_) => kind::PUBACK << 4,
        Packet::PubRec(_) => kind::PUBREC << 4,
        Packet::PubComp(_) => kind::PUBCOMP << 4,
        Packet::SubAck(_) => kind::SUBACK << 4,
        Packet::UnsubAck(_) => kind::UNSUBACK << 4,
        Packet::PingReq => kind::PINGREQ << 4,
        Packet::PingResp => kind::PINGRESP << 4,
        Packet::Disconnect(_) => kind::DISCONNECT << 4,
        Packet::Auth(_) => kind::AUTH << 4,
    };
    out.put_u8(byte1);
    put_var_int(out, rem);
    match packet {
        Packet::Connect(c) => {
            put_string(out, c.protocol.protocol_name());
            out.put_u8(c.protocol.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            if v5 {
                c.properties.encode(out);
            }
            put_string(out, &c.client_id);
            if let Some(w) = &c.will {
                if v5 {
                    w.properties.encode(out);
                }
                put_string(out, &w.topic);
                put_binary(out, &w.payload);
            }
            if let Some(u) = &c.username {
                put_string(out, u);
            }
            if let Some(p) = &c.password {
                put_binary(out, p);
            }
        }
        Packet::ConnAck(c) => {
            out.put_u8(c.session_present as u8);
            if v5 {
                out.put_u8(c.reason_code.get());
                c.properties.encode(out);
            } else {
                out.put_u8(reason::connack_v3_return_code(c.reason_code));
            }
        }
        Packet::Publish(p) => {
            put_publish_body(out, &p.topic, p.packet_id, &p.properties, &p.payload, v5);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            out.put_u16(r.packet_id.get());
            if v5 && !short_form(r.reason_code, &r.properties) {
                out.put_u8(r.reason_code.get());
                r.properties.encode(out);
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id.get());
            if v5 {
                s.properties.encode(out);
            }
            for (f, o) in &s.filters {
                put_string(out, f);
                let mut b = o.qos as u8;
                if v5 {
                    b |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling as u8) << 4;
                }
                out.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id.get());
            if v5 {
                s.properties.encode(out);
                for rc in &s.reason_codes {
                    out.put_u8(rc.get());
                }
            } else {
                for rc in &s.reason_codes {
                    out.put_u8(reason::suback_v3(*rc));
                }
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id.get());
            if v5 {
                u.properties.encode(out);
            }
            for f in &u.filters {
                put_string(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id.get());
            if v5 {
                u.properties.encode(out);
                for rc in &u.reason_codes {
                    out.put_u8(rc.get());
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 && !short_form(d.reason_code, &d.properties) {
                out.put_u8(d.reason_code.get());
                d.properties.encode(out);
            }
        }
        Packet::Auth(a) => {
            if !short_form(a.reason_code, &a.properties) {
                out.put_u8(a.reason_code.get());
                a.properties.encode(out);
            }
        }
    }
}

fn publish_remaining_len(
    topic: &str,
    has_packet_id: bool,
    properties: &Properties,
    payload_len: usize,
    v5: bool,
) -> usize {
    2 + topic.len() + if has_packet_id { 2 } else { 0 } + props_len(properties, v5) + payload_len
}

fn put_publish_body(
    out: &mut BytesMut,
    topic: &str,
    packet_id: Option<PacketId>,
    properties: &Properties,
    payload: &[u8],
    v5: bool,
) {
    put_string(out, topic);
    if let Some(id) = packet_id {
        out.put_u16(id.get());
    }
    if v5 {
        properties.encode(out);
    }
    out.put_slice(payload);
}

/// The header fields of an outgoing PUBLISH, for [`encode_publish`].
#[derive(Debug, Clone, Copy)]
pub struct PublishHeader {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet id (QoS > 0).
    pub packet_id: Option<PacketId>,
}

/// Encodes a PUBLISH from borrowed parts, so a shared message can be written to many
/// connections without building a [`Publish`] (and copying its topic) for each.
/// Returns the number of bytes written.
pub fn encode_publish(
    out: &mut BytesMut,
    version: ProtocolVersion,
    header: PublishHeader,
    topic: &str,
    properties: &Properties,
    payload: &[u8],
) -> usize {
    let v5 = version.is_v5();
    let rem = publish_remaining_len(
        topic,
        header.packet_id.is_some(),
        properties,
        payload.len(),
        v5,
    );
    out.reserve(5 + rem);
    let before = out.len();
    out.put_u8(
        (kind::PUBLISH << 4)
            | ((header.dup as u8) << 3)
            | ((header.qos as u8) << 1)
            | (header.retain as u8),
    );
    put_var_int(out, rem);
    put_publish_body(out, topic, header.packet_id, properties, payload, v5);
    out.len() - before
}

/// Size of the PUBLISH [`encode_publish`] would write.
pub fn publish_len(
    version: ProtocolVersion,
    has_packet_id: bool,
    topic: &str,
    properties: &Properties,
    payload_len: usize,
) -> usize {
    let rem = publish_remaining_len(
        topic,
        has_packet_id,
        properties,
        payload_len,
        version.is_v5(),
    );
    1 + var_int_len(rem) + rem
}

//! MQTT 5.0 properties (section 2.2.2).
//!
//! One struct holds every property; the decoder checks that each received property is allowed on
//! the packet that carries it (table of section 2.2.2.2) and appears at most once, except user
//! properties and PUBLISH's subscription identifiers. The encoder writes only what is set, so a
//! default `Properties` costs one byte (the zero length) on the wire and nothing in v3.
//!
//! Packets and messages hold [`Properties`]: a pointer to a boxed [`PropertyValues`], null when
//! no property is set. Most packets carry none (every v3 packet, most v5 PUBLISH and PUBACK
//! packets), and the values are 340-odd bytes: inline, every decoded packet was moved and
//! dropped at that size, and `is_empty` compared all of it.

use bytes::{BufMut, Bytes, BytesMut};

use super::decode::Reader;
use super::encode::{put_binary, put_string, put_var_int, var_int_len};
use super::error::DecodeError;
use super::packet::kind;

/// The values of one packet's properties (or of a will message's). Unset properties are
/// `None` / empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyValues {
    /// 0x01 Payload Format Indicator (0 bytes, 1 UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<String>,
    /// 0x08 Response Topic.
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s): one on SUBSCRIBE, any number on PUBLISH.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information.
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information.
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information.
    pub response_information: Option<String>,
    /// 0x1C Server Reference.
    pub server_reference: Option<String>,
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias.
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available.
    pub retain_available: Option<u8>,
    /// 0x26 User Property pairs, in order.
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size, bytes.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<u8>,
}

/// Pseudo packet kind for the will properties of CONNECT's payload.
pub(crate) const WILL: u8 = 0xF0;

fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::CONNECT => "CONNECT",
        kind::CONNACK => "CONNACK",
        kind::PUBLISH => "PUBLISH",
        kind::PUBACK => "PUBACK",
        kind::PUBREC => "PUBREC",
        kind::PUBREL => "PUBREL",
        kind::PUBCOMP => "PUBCOMP",
        kind::SUBSCRIBE => "SUBSCRIBE",
        kind::SUBACK => "SUBACK",
        kind::UNSUBSCRIBE => "UNSUBSCRIBE",
        kind::UNSUBACK => "UNSUBACK",
        kind::DISCONNECT => "DISCONNECT",
        kind::AUTH => "AUTH",
        WILL => "will properties",
        _ => "packet",
    }
}

/// Whether property `id` may appear on packet `kind` (MQTT 5.0 table 2-4).
pub(crate) fn allowed(id: u8, k: u8) -> bool {
    use kind::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => k == PUBLISH || k == WILL,
        0x0B => k == PUBLISH || k == SUBSCRIBE,
        0x11 => k == CONNECT || k == CONNACK || k == DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => k == CONNACK,
        0x15 | 0x16 => k == CONNECT || k == CONNACK || k == AUTH,
        0x17 | 0x19 => k == CONNECT,
        0x18 => k == WILL,
        0x1C => k == CONNACK || k == DISCONNECT,
        0x1F => !matches!(k, CONNECT | PUBLISH | SUBSCRIBE | UNSUBSCRIBE | WILL),
        0x21 | 0x22 | 0x27 => k == CONNECT || k == CONNACK,
        0x23 => k == PUBLISH,
        0x26 => true,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn byte_flag(id: u8, v: u8) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::InvalidPropertyValue(id));
    }
    Ok(v)
}

impl PropertyValues {
    /// No property set; what [`Properties`] reads as when it holds none.
    const EMPTY: PropertyValues = PropertyValues {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == PropertyValues::EMPTY
    }

    /// Bytes the properties hold on the heap, as far as a client decides them: the strings
    /// and binary data a message carries on (content type, response topic, correlation data,
    /// reason string) and the user properties — each pair's slot in the vector (48 bytes, for
    /// pairs that are 5 bytes on the wire) and its strings.
    pub fn heap_size(&self) -> usize {
        self.content_type.as_ref().map_or(0, |s| s.len())
            + self.response_topic.as_ref().map_or(0, |s| s.len())
            + self.correlation_data.as_ref().map_or(0, |s| s.len())
            + self.reason_string.as_ref().map_or(0, |s| s.len())
            + self.user_properties.capacity() * std::mem::size_of::<(String, String)>()
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity())
                .sum::<usize>()
    }

    /// Decodes the properties of a block whose length prefix has been read.
    fn decode(mut r: Reader, k: u8) -> Result<PropertyValues, DecodeError> {
        let mut p = PropertyValues::default();
        while r.remaining() > 0 {
            let id = r.var_int()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::InvalidProperty {
                id: 0xFF,
                packet: kind_name(k),
            })?;
            if !allowed(id, k) {
                return Err(DecodeError::InvalidProperty {
                    id,
                    packet: kind_name(k),
                });
            }
            match id {
                0x01 => set_once(&mut p.payload_format_indicator, id, byte_flag(id, r.u8()?)?)?,
                0x02 => set_once(&mut p.message_expiry_interval, id, r.u32()?)?,
                0x03 => set_once(&mut p.content_type, id, r.string()?)?,
                0x08 => set_once(&mut p.response_topic, id, r.string()?)?,
                0x09 => set_once(&mut p.correlation_data, id, r.binary()?)?,
                0x0B => {
                    let v = r.var_int()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    if k == kind::SUBSCRIBE && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::DuplicateProperty(id));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut p.session_expiry_interval, id, r.u32()?)?,
                0x12 => set_once(&mut p.assigned_client_identifier, id, r.string()?)?,
                0x13 => set_once(&mut p.server_keep_alive, id, r.u16()?)?,
                0x15 => set_once(&mut p.authentication_method, id, r.string()?)?,
                0x16 => set_once(&mut p.authentication_data, id, r.binary()?)?,
                0x17 => set_once(
                    &mut p.request_problem_information,
                    id,
                    byte_flag(id, r.u8()?)?,
                )?,
                0x18 => set_once(&mut p.will_delay_interval, id, r.u32()?)?,
                0x19 => set_once(
                    &mut p.request_response_information,
                    id,
                    byte_flag(id, r.u8()?)?,
                )?,
                0x1A => set_once(&mut p.response_information, id, r.string()?)?,
                0x1C => set_once(&mut p.server_reference, id, r.string()?)?,
                0x1F => set_once(&mut p.reason_string, id, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set_once(&mut p.receive_maximum, id, v)?
                }
                0x22 => set_once(&mut p.topic_alias_maximum, id, r.u16()?)?,
                0x23 => set_once(&mut p.topic_alias, id, r.u16()?)?,
                0x24 => set_once(&mut p.maximum_qos, id, byte_flag(id, r.u8()?)?)?,
                0x25 => set_once(&mut p.retain_available, id, byte_flag(id, r.u8()?)?)?,
                0x26 => {
                    let key = r.string()?;
                    let value = r.string()?;
                    p.user_properties.push((key, value));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set_once(&mut p.maximum_packet_size, id, v)?
                }
                0x28 => set_once(
                    &mut p.wildcard_subscription_available,
                    id,
                    byte_flag(id, r.u8()?)?,
                )?,
                0x29 => set_once(
                    &mut p.subscription_identifier_available,
                    id,
                    byte_flag(id, r.u8()?)?,
                )?,
                0x2A => set_once(
                    &mut p.shared_subscription_available,
                    id,
                    byte_flag(id, r.u8()?)?,
                )?,
                _ => unreachable!("allowed() admits only known identifiers"),
            }
        }
        Ok(p)
    }

    /// Length of the encoded properties, without the length prefix.
    pub(crate) fn body_len(&self) -> usize {
        fn s(v: &Option<String>) -> usize {
            v.as_ref().map_or(0, |s| 3 + s.len())
        }
        fn b(v: &Option<Bytes>) -> usize {
            v.as_ref().map_or(0, |s| 3 + s.len())
        }
        fn n<T>(v: &Option<T>, size: usize) -> usize {
            v.as_ref().map_or(0, |_| 1 + size)
        }
        n(&self.payload_format_indicator, 1)
            + n(&self.message_expiry_interval, 4)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + var_int_len(*v as usize))
                .sum::<usize>()
            + n(&self.session_expiry_interval, 4)
            + s(&self.assigned_client_identifier)
            + n(&self.server_keep_alive, 2)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n(&self.request_problem_information, 1)
            + n(&self.will_delay_interval, 4)
            + n(&self.request_response_information, 1)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n(&self.receive_maximum, 2)
            + n(&self.topic_alias_maximum, 2)
            + n(&self.topic_alias, 2)
            + n(&self.maximum_qos, 1)
            + n(&self.retain_available, 1)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n(&self.maximum_packet_size, 4)
            + n(&self.wildcard_subscription_available, 1)
            + n(&self.subscription_identifier_available, 1)
            + n(&self.shared_subscription_available, 1)
    }

    /// Length of the encoded properties including the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        let body = self.body_len();
        var_int_len(body) + body
    }

    /// Writes the length prefix and every set property.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        put_var_int(out, self.body_len());
        if let Some(v) = self.payload_format_indicator {
            out.put_u8(0x01);
            out.put_u8(v);
        }
        if let Some(v) = self.message_expiry_interval {
            out.put_u8(0x02);
            out.put_u32(v);
        }
        if let Some(v) = &self.content_type {
            out.put_u8(0x03);
            put_string(out, v);
        }
        if let Some(v) = &self.response_topic {
            out.put_u8(0x08);
            put_string(out, v);
        }
        if let Some(v) = &self.correlation_data {
            out.put_u8(0x09);
            put_binary(out, v);
        }
        for v in &self.subscription_identifiers {
            out.put_u8(0x0B);
            put_var_int(out, *v as usize);
        }
        if let Some(v) = self.session_expiry_interval {
            out.put_u8(0x11);
            out.put_u32(v);
        }
        if let Some(v) = &self.assigned_client_identifier {
            out.put_u8(0x12);
            put_string(out, v);
        }
        if let Some(v) = self.server_keep_alive {
            out.put_u8(0x13);
            out.put_u16(v);
        }
        if let Some(v) = &self.authentication_method {
            out.put_u8(0x15);
            put_string(out, v);
        }
        if let Some(v) = &self.authentication_data {
            out.put_u8(0x16);
            put_binary(out, v);
        }
        if let Some(v) = self.request_problem_information {
            out.put_u8(0x17);
            out.put_u8(v);
        }
        if let Some(v) = self.will_delay_interval {
            out.put_u8(0x18);
            out.put_u32(v);
        }
        if let Some(v) = self.request_response_information {
            out.put_u8(0x19);
            out.put_u8(v);
        }
        if let Some(v) = &self.response_information {
            out.put_u8(0x1A);
            put_string(out, v);
        }
        if let Some(v) = &self.server_reference {
            out.put_u8(0x1C);
            put_string(out, v);
        }
        if let Some(v) = &self.reason_string {
            out.put_u8(0x1F);
            put_string(out, v);
        }
        if let Some(v) = self.receive_maximum {
            out.put_u8(0x21);
            out.put_u16(v);
        }
        if let Some(v) = self.topic_alias_maximum {
            out.put_u8(0x22);
            out.put_u16(v);
        }
        if let Some(v) = self.topic_alias {
            out.put_u8(0x23);
            out.put_u16(v);
        }
        if let Some(v) = self.maximum_qos {
            out.put_u8(0x24);
            out.put_u8(v);
        }
        if let Some(v) = self.retain_available {
            out.put_u8(0x25);
            out.put_u8(v);
        }
        for (k, v) in &self.user_properties {
            out.put_u8(0x26);
            put_string(out, k);
            put_string(out, v);
        }
        if let Some(v) = self.maximum_packet_size {
            out.put_u8(0x27);
            out.put_u32(v);
        }
        if let Some(v) = self.wildcard_subscription_available {
            out.put_u8(0x28);
            out.put_u8(v);
        }
        if let Some(v) = self.subscription_identifier_available {
            out.put_u8(0x29);
            out.put_u8(v);
        }
        if let Some(v) = self.shared_subscription_available {
            out.put_u8(0x2A);
            out.put_u8(v);
        }
    }
}

/// The properties of one packet, will or message: boxed, and only when there are any, so that a
/// packet or message without properties carries one null pointer instead of 340-odd bytes.
///
/// Reads go through [`std::ops::Deref`] (an empty [`PropertyValues`] when there are none);
/// changes through [`Properties::make_mut`], which boxes on first use. There is deliberately no
/// `DerefMut`: a write should be visible as the allocation it may be.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

static NO_PROPERTIES: PropertyValues = PropertyValues::EMPTY;

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
        Properties((!values.is_empty()).then(|| Box::new(values)))
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(values) => values.fmt(f),
            None => f.write_str("Properties(none)"),
        }
    }
}

impl Properties {
    /// The values, to change (boxed on first use).
    pub fn make_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }

    /// The values to change when there are any; `None` (and no allocation) when there are none.
    pub fn get_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }

    /// Drops the box again when every property is empty.
    pub fn shrink(&mut self) {
        if self.0.as_ref().is_some_and(|p| p.is_empty()) {
            self.0 = None;
        }
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.is_empty())
    }

    /// Bytes the properties take beyond the record that holds them (their box).
    pub fn boxed_size(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<PropertyValues>())
    }

    /// Decodes a property block (its length prefix included) for packet kind `k` (the fixed
    /// header's type, 1 = CONNECT … 15 = AUTH) from the front of `bytes`. The decoder uses this
    /// inside packets; it is public for the fuzz targets and tools.
    pub fn decode_block(bytes: Bytes, k: u8) -> Result<Properties, DecodeError> {
        Properties::decode(&mut Reader::new(bytes), k)
    }

    /// Decodes a property block (length prefix included) for packet kind `k`: nothing is
    /// allocated for an empty block.
    pub(crate) fn decode(r: &mut Reader, k: u8) -> Result<Properties, DecodeError> {
        let len = r.var_int()? as usize;
        let r = r.sub(len, "properties")?;
        if len == 0 {
            return Ok(Properties::default());
        }
        PropertyValues::decode(r, k).map(|values| Properties(Some(Box::new(values))))
    }

    /// Length of the encoded properties including the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        self.0.as_ref().map_or(1, |p| p.encoded_len())
    }

    /// Writes the block as [`Properties::decode_block`] reads it: length prefix and every set
    /// property. Public for the fuzz targets and tools.
    pub fn encode_block(&self, out: &mut BytesMut) {
        self.encode(out);
    }

    /// Writes the length prefix and every set property.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match &self.0 {
            Some(p) => p.encode(out),
            None => out.put_u8(0),
        }
    }
}

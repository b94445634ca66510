//! What crosses NATS for one MQTT message: a compact, versioned binary envelope.
//!
//! The topic is not in it (it is the NATS subject). Layout, big-endian:
//!
//! ```text
//! u8   version (1)
//! u8   flags: bits 0-1 QoS, bit 2 RETAIN
//! u64  origin node id (random per start)   u64 sequence on that node
//! str  publisher client id ("" = the broker or a plugin)
//! u16  n, then n × str: shared subscriptions already served on the origin node
//! u16  n, then n × (u8 tag, value): v5 properties
//!        1 message expiry (u32 seconds left)   2 payload format (u8)
//!        3 content type (str)   4 response topic (str)   5 correlation data (bytes)
//!        6 user property (str key, str value)
//! rest the payload
//! ```
//!
//! `str` is a u16 length and UTF-8, `bytes` a u32 length. A decoder refuses a version it does
//! not know, a truncated or malformed envelope and an unknown property tag with an error
//! (counted by the plugin, never misread). Written by hand because it is the plugin's own
//! wire format: a dozen fields, no schema compiler needed.

use abi_stable::std_types::Tuple2;
use plugin_api::{MessageView, OutgoingMessage, RString, RVec};

/// The format version this plugin writes and reads.
pub const VERSION: u8 = 1;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Written by a newer (or unknown) format version.
    Version(u8),
    /// Cut short or inconsistent.
    Malformed(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Version(v) => write!(f, "envelope format version {v} is not known here"),
            Refused::Malformed(what) => write!(f, "malformed envelope: {what}"),
        }
    }
}

/// One message as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The origin node's id (random per start).
    pub node: u64,
    /// The message's sequence number on its origin node.
    pub seq: u64,
    /// QoS 0..=2.
    pub qos: u8,
    /// RETAIN as published.
    pub retain: bool,
    /// Publisher's client id, empty for the broker's own messages.
    pub publisher: String,
    /// Shared subscriptions (`$share/<group>/<filter>`) the origin node served itself.
    pub served: Vec<String>,
    /// Message Expiry Interval left, seconds.
    pub expiry: Option<u32>,
    /// Payload Format Indicator.
    pub payload_format: Option<u8>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Vec<u8>>,
    /// User Properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Envelope {
    /// The envelope of a message as plugins see it.
    pub fn of(message: &MessageView<'_>, node: u64, seq: u64, served: Vec<String>) -> Envelope {
        Envelope {
            node,
            seq,
            qos: message.qos,
            retain: message.retain,
            publisher: message
                .publisher
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            served,
            expiry: message.message_expiry_interval.into_option(),
            payload_format: message.payload_format_indicator.into_option(),
            content_type: message
                .content_type
                .map(|c| c.as_str().to_owned())
                .into_option(),
            response_topic: message
                .response_topic
                .map(|c| c.as_str().to_owned())
                .into_option(),
            correlation_data: message.correlation_data.map(|c| c.to_vec()).into_option(),
            user_properties: message
                .user_properties
                .iter()
                .map(|p| (p.key.as_str().to_owned(), p.value.as_str().to_owned()))
                .collect(),
            payload: message.payload.to_vec(),
        }
    }

    /// The message to hand to the host, on `topic`.
    pub fn into_message(self, topic: &str) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            payload: self.payload.into(),
            qos: self.qos,
            retain: self.retain,
            user_properties: self
                .user_properties
                .into_iter()
                .map(|(k, v)| Tuple2(RString::from(k), RString::from(v)))
                .collect::<RVec<_>>(),
            message_expiry_interval: self.expiry.into(),
            payload_format_indicator: self.payload_format.into(),
            content_type: self.content_type.map(RString::from).into(),
            response_topic: self.response_topic.map(RString::from).into(),
            correlation_data: self.correlation_data.map(RVec::from).into(),
        }
    }

    /// The encoded envelope. Strings longer than 65 535 bytes cannot occur in MQTT (the
    /// protocol's own limit); they are cut rather than mis-framed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.publisher.len() + self.payload.len());
        out.push(VERSION);
        out.push((self.qos & 3) | (u8::from(self.retain) << 2));
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_str(&mut out, &self.publisher);
        put_u16(&mut out, self.served.len());
        for s in self.served.iter().take(usize::from(u16::MAX)) {
            put_str(&mut out, s);
        }
        let count = usize::from(self.expiry.is_some())
            + usize::from(self.payload_format.is_some())
            + usize::from(self.content_type.is_some())
            + usize::from(self.response_topic.is_some())
            + usize::from(self.correlation_data.is_some())
            + self.user_properties.len();
        put_u16(&mut out, count);
        if let Some(e) = self.expiry {
            out.push(1);
            out.extend_from_slice(&e.to_be_bytes());
        }
        if let Some(p) = self.payload_format {
            out.extend_from_slice(&[2, p]);
        }
        if let Some(c) = &self.content_type {
            out.push(3);
            put_str(&mut out, c);
        }
        if let Some(r) = &self.response_topic {
            out.push(4);
            put_str(&mut out, r);
        }
        if let Some(c) = &self.correlation_data {
            out.push(5);
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        for (k, v) in self.user_properties.iter().take(usize::from(u16::MAX)) {
            out.push(6);
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes an envelope, refusing what it cannot read exactly.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, Refused> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(Refused::Version(version));
        }
        let flags = r.u8()?;
        if flags & 3 == 3 || flags >> 3 != 0 {
            return Err(Refused::Malformed("flags"));
        }
        let mut e = Envelope {
            qos: flags & 3,
            retain: flags & 4 != 0,
            node: r.u64()?,
            seq: r.u64()?,
            publisher: r.str()?,
            ..Envelope::default()
        };
        let served = r.u16()?;
        for _ in 0..served {
            e.served.push(r.str()?);
        }
        for _ in 0..r.u16()? {
            match r.u8()? {
                1 => e.expiry = Some(r.u32()?),
                2 => e.payload_format = Some(r.u8()?),
                3 => e.content_type = Some(r.str()?),
                4 => e.response_topic = Some(r.str()?),
                5 => {
                    let n = r.u32()? as usize;
                    e.correlation_data = Some(r.take(n)?.to_vec());
                }
                6 => {
                    let k = r.str()?;
                    e.user_properties.push((k, r.str()?));
                }
                _ => return Err(Refused::Malformed("unknown property")),
            }
        }
        e.payload = r.0.to_vec();
        Ok(e)
    }
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n.min(usize::from(u16::MAX)) as u16).to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_u16(out, end);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refused> {
        if self.0.len() < n {
            return Err(Refused::Malformed("cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Refused> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Refused> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Refused> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self) -> Result<String, Refused> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Refused::Malformed("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn envelope() -> impl Strategy<Value = Envelope> {
        let text = || "[a-z/$+é ]{0,12}";
        (
            (any::<u64>(), any::<u64>(), 0u8..3, any::<bool>(), text()),
            proptest::collection::vec(text(), 0..3),
            (
                proptest::option::of(any::<u32>()),
                proptest::option::of(0u8..2),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            ),
            proptest::collection::vec((text(), text()), 0..4),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |((node, seq, qos, retain, publisher), served, p, users, payload)| Envelope {
                    node,
                    seq,
                    qos,
                    retain,
                    publisher,
                    served,
                    expiry: p.0,
                    payload_format: p.1,
                    content_type: p.2,
                    response_topic: p.3,
                    correlation_data: p.4,
                    user_properties: users,
                    payload,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_envelope_round_trips(e in envelope()) {
            prop_assert_eq!(Envelope::decode(&e.encode()), Ok(e));
        }

        /// Any bytes at all: an answer, never a panic; a cut envelope is refused.
        #[test]
        fn garbage_is_refused_not_misread(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn a_cut_header_is_refused(e in envelope(), cut in 0usize..19) {
            let bytes = e.encode();
            prop_assert!(Envelope::decode(&bytes[..cut.min(bytes.len())]).is_err());
        }
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut bytes = Envelope::default().encode();
        bytes[0] = 2;
        assert_eq!(Envelope::decode(&bytes), Err(Refused::Version(2)));
        assert_eq!(
            Refused::Version(2).to_string(),
            "envelope format version 2 is not known here"
        );
    }
}

//! The JSON of the events, written by hand for the one shape a message event has (EMQX's
//! field names, in EMQX's order), and the compact records events wait in until a sender thread
//! turns a batch of them into a request body.

use base64::Engine as _;

use super::{Encoding, EVENTS};

/// A message event, borrowed from the hook's view while its JSON is written. The texts are
/// UTF-8 (they come from `&str`s), held as bytes so that reading them back from a [`Record`]
/// does not check them again.
pub(super) struct MessageFields<'a> {
    pub(super) action: &'a str,
    /// The receiving client (delivered, acked, dropped).
    pub(super) clientid: Option<&'a [u8]>,
    pub(super) from_client_id: Option<&'a [u8]>,
    pub(super) from_username: Option<&'a [u8]>,
    pub(super) topic: &'a [u8],
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) payload: &'a [u8],
    pub(super) ts: u64,
    /// Why it was dropped.
    pub(super) reason: Option<&'a [u8]>,
}

/// Appends `s` as a JSON string. Most topics, client ids and text payloads need no escaping:
/// one pass that the compiler vectorises finds that out, and the bytes are copied as they are;
/// anything else goes through serde_json's escaping.
pub(super) fn json_str(out: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s.as_bytes()) {
        quoted(out, s.as_bytes());
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// True when the bytes can stand in a JSON string as they are (valid UTF-8 assumed).
fn needs_no_escape(b: &[u8]) -> bool {
    !b.iter().fold(false, |any, &c| {
        any | (c < 0x20) | (c == b'"') | (c == b'\\')
    })
}

/// Appends UTF-8 text held as bytes as a JSON string.
pub(super) fn json_text(out: &mut Vec<u8>, b: &[u8]) {
    if needs_no_escape(b) {
        quoted(out, b);
    } else {
        json_str(out, &String::from_utf8_lossy(b));
    }
}

/// `"` + `b` + `"`.
fn quoted(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + 2);
    out.push(b'"');
    out.extend_from_slice(b);
    out.push(b'"');
}

/// Appends a payload as a JSON string: as it is when it is printable ASCII without `"` or `\`
/// (one pass instead of a UTF-8 check and an escape check), escaped when it is other UTF-8,
/// and with U+FFFD for what is not UTF-8.
pub(super) fn json_payload(out: &mut Vec<u8>, b: &[u8]) {
    let plain_ascii = !b.iter().fold(false, |any, &c| {
        any | !(0x20..0x80).contains(&c) | (c == b'"') | (c == b'\\')
    });
    if plain_ascii {
        quoted(out, b);
    } else {
        match std::str::from_utf8(b) {
            Ok(text) => json_str(out, text),
            Err(_) => json_str(out, &String::from_utf8_lossy(b)),
        }
    }
}

/// Writes a message event's JSON object: EMQX's fields, in this order, `payload` in
/// `encoding`.
pub(super) fn message_json(
    out: &mut Vec<u8>,
    e: &MessageFields<'_>,
    encoding: Encoding,
    node: &str,
) {
    out.extend_from_slice(b"{\"action\":\"");
    out.extend_from_slice(e.action.as_bytes());
    out.push(b'"');
    if let Some(c) = e.clientid {
        out.extend_from_slice(b",\"clientid\":");
        json_text(out, c);
    }
    out.extend_from_slice(b",\"from_client_id\":");
    json_opt(out, e.from_client_id);
    out.extend_from_slice(b",\"from_username\":");
    json_opt(out, e.from_username);
    out.extend_from_slice(b",\"topic\":");
    json_text(out, e.topic);
    out.extend_from_slice(b",\"qos\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.qos).as_bytes());
    out.extend_from_slice(if e.retain {
        b",\"retain\":true,\"payload\":"
    } else {
        b",\"retain\":false,\"payload\":"
    });
    match encoding {
        Encoding::Plain => json_payload(out, e.payload),
        Encoding::Base64 => {
            // Base64 needs no escaping: encoded in place.
            let engine = &base64::engine::general_purpose::STANDARD;
            out.push(b'"');
            let at = out.len();
            out.resize(
                at + base64::encoded_len(e.payload.len(), true).unwrap_or(0),
                0,
            );
            let written = engine.encode_slice(e.payload, &mut out[at..]).unwrap_or(0);
            out.truncate(at + written);
            out.push(b'"');
        }
    }
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.ts).as_bytes());
    if let Some(r) = e.reason {
        out.extend_from_slice(b",\"reason\":");
        json_text(out, r);
    }
    out.extend_from_slice(b",\"node\":");
    json_str(out, node);
    out.push(b'}');
}

/// Appends UTF-8 text as a JSON string, or `null`.
fn json_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => json_text(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// How an event waits in a batch: a compact binary record the hook writes with a few copies
/// (no allocation, no JSON on the publisher's thread). Lengths are u32, little-endian.
///
/// * `0`, length, JSON object: a client or session event (rare), already JSON.
/// * `1`, action index, flags (1 retain, 2 clientid, 4 from_client_id, 8 from_username,
///   16 reason), QoS, ts (u64), then length-prefixed: clientid?, from_client_id?,
///   from_username?, topic, reason?, payload.
pub(super) enum Record {}

impl Record {
    pub(super) const JSON: u8 = 0;
    pub(super) const MESSAGE: u8 = 1;

    pub(super) fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Appends a message event.
    pub(super) fn message(out: &mut Vec<u8>, e: &MessageFields<'_>, action: usize) {
        let flags = u8::from(e.retain)
            | (u8::from(e.clientid.is_some()) << 1)
            | (u8::from(e.from_client_id.is_some()) << 2)
            | (u8::from(e.from_username.is_some()) << 3)
            | (u8::from(e.reason.is_some()) << 4);
        out.extend_from_slice(&[Record::MESSAGE, action as u8, flags, e.qos]);
        out.extend_from_slice(&e.ts.to_le_bytes());
        for s in [e.clientid, e.from_client_id, e.from_username]
            .into_iter()
            .flatten()
        {
            Record::put(out, s);
        }
        Record::put(out, e.topic);
        if let Some(r) = e.reason {
            Record::put(out, r);
        }
        Record::put(out, e.payload);
    }

    /// Writes the JSON of `count` records (an array when `array`) into a request body.
    pub(super) fn to_json(
        records: &[u8],
        count: usize,
        array: bool,
        encoding: Encoding,
        node: &str,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(records.len() + count * 120 + 2);
        if array {
            out.push(b'[');
        }
        let mut r = Reader(records);
        let mut n = 0;
        while !r.0.is_empty() {
            if n > 0 {
                out.push(b',');
            }
            if Record::one(&mut r, &mut out, encoding, node).is_none() {
                // Cannot happen with records written by this plugin; stop rather than guess.
                tracing::debug!("a web hook record could not be read");
                break;
            }
            n += 1;
        }
        if array {
            out.push(b']');
        }
        out
    }

    fn one(r: &mut Reader<'_>, out: &mut Vec<u8>, encoding: Encoding, node: &str) -> Option<()> {
        match r.byte()? {
            Record::JSON => out.extend_from_slice(r.bytes()?),
            Record::MESSAGE => {
                let [action, flags, qos] = [r.byte()?, r.byte()?, r.byte()?];
                let ts = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
                let mut text = |on: bool| -> Option<Option<&[u8]>> {
                    if on {
                        Some(Some(r.bytes()?))
                    } else {
                        Some(None)
                    }
                };
                let clientid = text(flags & 2 != 0)?;
                let from_client_id = text(flags & 4 != 0)?;
                let from_username = text(flags & 8 != 0)?;
                let topic = text(true)??;
                let reason = text(flags & 16 != 0)?;
                let fields = MessageFields {
                    action: EVENTS.get(usize::from(action))?.2,
                    clientid,
                    from_client_id,
                    from_username,
                    topic,
                    qos,
                    retain: flags & 1 != 0,
                    payload: r.bytes()?,
                    ts,
                    reason,
                };
                message_json(out, &fields, encoding, node);
            }
            _ => return None,
        }
        Some(())
    }
}

/// Reads [`Record`]s.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        self.take(n as usize)
    }
}

//! Sessions on disc: how a session and its messages are encoded for the [`super::store`], what
//! each `[session] durability` setting writes, and how sessions are rebuilt at start.
//!
//! * `"none"`: nothing is written; a restart loses every session.
//! * `"graceful"`: at a graceful stop (SIGTERM / Ctrl-C), once every connection has closed and
//!   handed its state back, [`snapshot`] writes each session that outlives its connection
//!   (session expiry > 0: v5 expiry intervals, v3 clean session = 0) in one transaction
//!   ([`stored_session`]). A
//!   crash loses what changed since the last start.
//! * `"ack"`: the store follows the sessions as they change — session records at connect,
//!   subscribe, unsubscribe and disconnect; every QoS 1 / 2 message queued for a persistent
//!   session; in-flight state (packet id, PUBREC received) as messages are sent; incoming QoS 2
//!   packet ids until PUBREL — and the broker answers PUBACK / PUBREC / SUBACK / UNSUBACK only
//!   once what the packet changed is committed (see the connection). A graceful stop also
//!   writes the complete snapshot, so queued QoS 0 messages survive it (not a crash).
//!
//! At start, before the first client is accepted, every stored session is rebuilt ([`rebuild`];
//! the broker registers them):
//! subscriptions (shared ones included) back in the router, queued messages in order,
//! unacknowledged outgoing messages (resent with DUP and their packet ids when the client
//! reconnects, [MQTT-4.4.0-1]), incoming QoS 2 packet ids, the delayed will, the remaining
//! session and message expiry — time spent stopped counts (wall clock), and what expired meanwhile
//! is dropped. A session online at a crash is counted as offline from the restart. A record
//! that cannot be decoded is skipped with an error naming the client; the rest load.
//!
//! Delayed publishes ([`crate::delayed`]) are kept the same way: written as they arrive with
//! `"ack"`, at a graceful stop with `"graceful"` ([`encode_delayed`], [`decode_delayed`]).
//!
//! Formats: the session record is JSON; a delivery is a big-endian u32 length, a JSON header
//! (QoS, flags, subscription ids, the message's topic and properties) and the raw payload; a
//! delayed publish likewise, its header holding when it is due and who published it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::store::{StoredMessage, StoredSession};
use super::{Delivery, Message, Outgoing, Session};
use crate::clock::unix_ms;
use crate::codec::{PacketId, PropertyValues, QoS, RetainHandling, SubscriptionOptions};
use crate::hex;
use crate::router::{SubscriptionKey, TopicName};

#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    expiry_interval: u32,
    /// Unix time (ms) the session went offline; None while it was online.
    offline_since_ms: Option<u64>,
    last_packet_id: u16,
    subscriptions: Vec<SubscriptionRecord>,
    /// A delayed will (payload in hex) and the Unix time (ms) it is due.
    will: Option<(MessageMeta, String, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SubscriptionRecord {
    /// The filter as the client sent it (`$share/<group>/…` included).
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DelayedHeader {
    /// Unix time (ms) it is due.
    due_ms: u64,
    /// Unix time (ms) it was published.
    published_ms: u64,
    username: Option<String>,
    message: MessageMeta,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeliveryHeader {
    qos: u8,
    retain: bool,
    subscription_ids: Vec<u32>,
    message: MessageMeta,
}

/// A message without its payload.
#[derive(Debug, Serialize, Deserialize)]
struct MessageMeta {
    topic: String,
    qos: u8,
    retain: bool,
    publisher: Option<String>,
    /// Unix time (ms) at which the message expires; None = never.
    expires_at_ms: Option<u64>,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Hex.
    correlation_data: Option<String>,
    user_properties: Vec<(String, String)>,
}

/// Wall-clock time of a monotonic instant (for instants in the future or the past).
fn wall_ms_of(at: Instant, now: Instant, wall_now: u64) -> u64 {
    if at >= now {
        wall_now + (at - now).as_millis() as u64
    } else {
        wall_now.saturating_sub((now - at).as_millis() as u64)
    }
}

/// Time left until a wall-clock deadline, `None` when it has passed.
fn left_until(deadline_ms: u64, wall_now: u64) -> Option<Duration> {
    deadline_ms
        .checked_sub(wall_now)
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

impl MessageMeta {
    fn of(m: &Message, now: Instant, wall_now: u64) -> MessageMeta {
        let p = &m.properties;
        MessageMeta {
            topic: m.topic.as_str().to_owned(),
            qos: m.qos as u8,
            retain: m.retain,
            publisher: m.publisher.as_deref().map(str::to_owned),
            expires_at_ms: m.expires_at.map(|t| wall_ms_of(t, now, wall_now)),
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.as_deref().map(hex::encode),
            user_properties: p.user_properties.clone(),
        }
    }

    /// The message, `Ok(None)` when it expired meanwhile.
    fn into_message(
        self,
        payload: Bytes,
        now: Instant,
        wall_now: u64,
    ) -> Result<Option<Message>, String> {
        let expires_at = match self.expires_at_ms {
            None => None,
            Some(ms) => match left_until(ms, wall_now) {
                None => return Ok(None),
                Some(left) => Some(now + left),
            },
        };
        let properties = PropertyValues {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self
                .correlation_data
                .map(|h| hex::decode(&h).map(Bytes::from))
                .transpose()?,
            user_properties: self.user_properties,
            ..PropertyValues::default()
        };
        Ok(Some(Message {
            topic: TopicName::new(&self.topic).map_err(|e| e.to_string())?,
            payload,
            qos: QoS::from_u8(self.qos).ok_or("bad QoS")?,
            retain: self.retain,
            properties: properties.into(),
            publisher: self.publisher.map(Arc::from),
            expires_at,
        }))
    }
}

/// Encodes a delivery for the store (see the module docs for the format).
pub fn encode_delivery(d: &Delivery) -> Bytes {
    let header = DeliveryHeader {
        qos: d.qos as u8,
        retain: d.retain,
        subscription_ids: d.subscription_ids.clone(),
        message: MessageMeta::of(&d.message, Instant::now(), unix_ms(SystemTime::now())),
    };
    frame(&header, &d.message.payload)
}

/// A JSON header and a payload, as stored: big-endian u32 header length, header, payload.
fn frame(header: &impl Serialize, payload: &[u8]) -> Bytes {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + json.len() + payload.len());
    out.put_u32(json.len() as u32);
    out.put_slice(&json);
    out.put_slice(payload);
    out.freeze()
}

/// Splits what [`frame`] wrote.
fn unframe<'a, H: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(H, Bytes), String> {
    let len = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or("record shorter than its header length")? as usize;
    let json = bytes
        .get(4..4 + len)
        .ok_or("record shorter than its header")?;
    let header = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok((header, Bytes::copy_from_slice(&bytes[4 + len..])))
}

/// Encodes a delayed publish for the store.
pub fn encode_delayed(m: &crate::delayed::DelayedMessage) -> Bytes {
    let header = DelayedHeader {
        due_ms: m.due_ms,
        published_ms: m.published_ms,
        username: m.username.clone(),
        message: MessageMeta::of(&m.message, Instant::now(), unix_ms(SystemTime::now())),
    };
    frame(&header, &m.message.payload)
}

/// Decodes a stored delayed publish; `Ok(None)` when its message expired meanwhile.
pub fn decode_delayed(
    bytes: &[u8],
    id: u64,
    now: Instant,
    wall_now: u64,
) -> Result<Option<crate::delayed::DelayedMessage>, String> {
    let (header, payload): (DelayedHeader, _) = unframe(bytes)?;
    Ok(header
        .message
        .into_message(payload, now, wall_now)?
        .map(|message| crate::delayed::DelayedMessage {
            id,
            due_ms: header.due_ms,
            published_ms: header.published_ms,
            message,
            username: header.username,
        }))
}

/// Decodes a stored delivery; `Ok(None)` when its message expired meanwhile.
fn decode_delivery(
    bytes: &[u8],
    seq: u64,
    now: Instant,
    wall_now: u64,
) -> Result<Option<Delivery>, String> {
    let (header, payload): (DeliveryHeader, _) = unframe(bytes)?;
    let qos = QoS::from_u8(header.qos).ok_or("bad QoS")?;
    Ok(header
        .message
        .into_message(payload, now, wall_now)?
        .map(|m| Delivery {
            message: Arc::new(m),
            qos,
            retain: header.retain,
            subscription_ids: header.subscription_ids,
            seq,
        }))
}

/// Encodes the session record of `s` (expiry, subscriptions, delayed will, last packet id).
pub fn session_record(s: &Session) -> Vec<u8> {
    let now = Instant::now();
    let wall_now = unix_ms(SystemTime::now());
    let expiry_interval = s.expiry_interval.load(Ordering::Relaxed);
    let offline_since_ms = s.offline_since().map(unix_ms);
    let subscriptions = s
        .subscriptions
        .lock()
        .iter()
        .map(|(key, sub)| SubscriptionRecord {
            filter: key.to_string(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling as u8,
            id: sub.id,
        })
        .collect();
    let parked = s.parked.lock();
    let will = parked
        .as_ref()
        .and_then(|p| p.pending_will.as_ref())
        .map(|w| {
            (
                MessageMeta::of(&w.message, now, wall_now),
                hex::encode(&w.message.payload),
                wall_ms_of(w.due, now, wall_now),
            )
        });
    let record = SessionRecord {
        expiry_interval,
        offline_since_ms,
        last_packet_id: parked.as_ref().map_or(0, |p| p.last_packet_id),
        subscriptions,
        will,
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// A subscription read back: what it is, its options and id.
pub struct RestoredSubscription {
    /// Its share group and filter.
    pub key: SubscriptionKey,
    /// Its options.
    pub options: SubscriptionOptions,
    /// Its v5 subscription identifier.
    pub id: Option<u32>,
}

impl SubscriptionRecord {
    /// The subscription this record describes.
    fn restore(self) -> Result<RestoredSubscription, String> {
        let key = SubscriptionKey::parse(&self.filter).map_err(|e| e.to_string())?;
        let options = SubscriptionOptions {
            qos: QoS::from_u8(self.qos).ok_or("bad QoS")?,
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: match self.retain_handling {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        };
        Ok(RestoredSubscription {
            key,
            options,
            id: self.id,
        })
    }
}

/// A session read back, not yet registered.
pub struct Restored {
    /// The session, offline, its queue and parked state filled.
    pub session: Arc<Session>,
    /// What is left of its expiry interval (`None`: never expires).
    pub expiry_left: Option<Duration>,
    /// Its subscriptions, to put back in the router.
    pub subscriptions: Vec<RestoredSubscription>,
    /// Its delayed will and what is left of the delay.
    pub will: Option<(Message, Duration)>,
    /// Stored messages that expired while the broker was stopped, to delete from the store.
    pub expired_messages: Vec<u64>,
}

/// Rebuilds one session from its stored form into the session `new_session` makes (called
/// only if the session has not expired); `None` when it expired while the broker was stopped.
pub fn rebuild(
    new_session: impl FnOnce() -> Arc<Session>,
    stored: StoredSession,
    now: Instant,
    wall_now: u64,
) -> Result<Option<Restored>, String> {
    let r: SessionRecord = serde_json::from_slice(&stored.record).map_err(|e| e.to_string())?;
    // A session that was online at a crash is offline from now on.
    let offline_since_ms = r.offline_since_ms.unwrap_or(wall_now);
    let expiry_left = match r.expiry_interval {
        u32::MAX => None,
        secs => match left_until(offline_since_ms + secs as u64 * 1000, wall_now) {
            None => return Ok(None),
            left => left,
        },
    };
    let session = new_session();
    session
        .expiry_interval
        .store(r.expiry_interval, Ordering::Relaxed);
    session.set_offline_since(Some(UNIX_EPOCH + Duration::from_millis(offline_since_ms)));
    let subscriptions = r
        .subscriptions
        .into_iter()
        .map(SubscriptionRecord::restore)
        .collect::<Result<Vec<_>, String>>()?;
    let mut last_seq = 0;
    let mut queued = Vec::new();
    let mut expired_messages = Vec::new();
    let mut held = 0;
    {
        let mut parked = session.parked.lock();
        let parked = parked.get_or_insert_with(Box::default);
        parked.last_packet_id = r.last_packet_id;
        parked.incoming_qos2 = stored.incoming_qos2;
        for StoredMessage {
            seq,
            value,
            inflight,
        } in stored.messages
        {
            last_seq = last_seq.max(seq);
            let Some(delivery) = decode_delivery(&value, seq, now, wall_now)? else {
                expired_messages.push(seq);
                continue;
            };
            match inflight {
                Some((packet_id, released)) => {
                    // In flight, it stays charged to the queue until acknowledged.
                    held += delivery.size();
                    parked.outgoing.push_back(Outgoing {
                        packet_id: PacketId::new(packet_id).ok_or("packet id 0")?,
                        delivery,
                        released,
                    });
                }
                None => queued.push(delivery),
            }
        }
    }
    session.restore_seq(last_seq);
    session.restore_held(held);
    for delivery in queued {
        session.restore_queued(delivery);
    }
    let will = match r.will {
        Some((meta, payload, due_ms)) => meta
            .into_message(Bytes::from(hex::decode(&payload)?), now, wall_now)?
            .map(|m| (m, left_until(due_ms, wall_now).unwrap_or_default())),
        None => None,
    };
    Ok(Some(Restored {
        session,
        expiry_left,
        subscriptions,
        will,
        expired_messages,
    }))
}

/// What a graceful stop writes for `s`: the session with its unacknowledged outgoing
/// messages and its whole queue (QoS 0 included), renumbered in order; `None` for a session
/// that ends with its connection (expiry 0).
pub fn stored_session(s: &Session) -> Option<StoredSession> {
    if s.expiry_interval.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut stored = StoredSession {
        record: session_record(s),
        ..StoredSession::default()
    };
    let mut seq = 0;
    {
        let parked = s.parked.lock();
        let (outgoing, incoming) = match parked.as_ref() {
            Some(p) => (p.outgoing.iter(), p.incoming_qos2.as_slice()),
            None => (Default::default(), &[][..]),
        };
        for o in outgoing {
            seq += 1;
            stored.messages.push(StoredMessage {
                seq,
                value: encode_delivery(&o.delivery).to_vec(),
                inflight: Some((o.packet_id.get(), o.released)),
            });
        }
        stored.incoming_qos2 = incoming.to_vec();
    }
    for d in s.queued_snapshot() {
        seq += 1;
        stored.messages.push(StoredMessage {
            seq,
            value: encode_delivery(&d).to_vec(),
            inflight: None,
        });
    }
    Some(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_count_wall_time() {
        let now = Instant::now();
        let wall = 1_000_000;
        assert_eq!(
            wall_ms_of(now + Duration::from_secs(2), now, wall),
            1_002_000
        );
        assert_eq!(left_until(1_002_000, wall), Some(Duration::from_secs(2)));
        assert_eq!(left_until(999_000, wall), None, "expired while stopped");
    }

    #[test]
    fn deliveries_round_trip() {
        let message = Message {
            topic: TopicName::new("a/b").expect("topic"),
            payload: Bytes::from_static(b"\x00\xffpayload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PropertyValues {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
                ..PropertyValues::default()
            }
            .into(),
            publisher: Some(Arc::from("pub")),
            expires_at: None,
        };
        let d = Delivery {
            message: Arc::new(message),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3, 4],
            seq: 9,
        };
        let bytes = encode_delivery(&d);
        let back = decode_delivery(&bytes, 9, Instant::now(), unix_ms(SystemTime::now()))
            .expect("decodes")
            .expect("not expired");
        assert_eq!(back.seq, 9);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert_eq!(back.subscription_ids, vec![3, 4]);
        assert_eq!(back.message.payload, d.message.payload);
        assert_eq!(back.message.properties, d.message.properties);
        assert_eq!(back.message.publisher.as_deref(), Some("pub"));
        assert!(decode_delivery(&bytes[..3], 1, Instant::now(), 0).is_err());
    }
}

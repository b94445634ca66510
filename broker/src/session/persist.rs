//! Sessions across a graceful restart (`[session] persist`, on by default).
//!
//! At a graceful stop (SIGTERM / Ctrl-C), once every connection has closed and handed its state
//! back, the broker writes each session that outlives its connection (session expiry > 0: v5
//! expiry intervals, v3 clean session = 0) to `<data_dir>/sessions.jsonl`, one JSON object per
//! line. At the next start, before the first client is accepted, it reads them back and deletes
//! the file; the sessions then resume as if the broker had not stopped:
//! * their subscriptions (shared ones included) are in the router again, so messages published
//!   after the restart are queued for them;
//! * queued messages, and outgoing QoS 1 / 2 messages not yet acknowledged — the latter resent
//!   with DUP and their packet ids when the client reconnects — with their properties;
//! * QoS 2 packet ids received but not yet released, the last packet id;
//! * the remaining session expiry and message expiry: time spent stopped counts (wall clock);
//!   what expired meanwhile is not restored;
//! * a will waiting for its delay, with the delay that was left.
//!
//! A file that cannot be read is moved aside to `sessions.jsonl.bad-<unix time>` with an error
//! in the log naming the line, and the broker starts without those sessions: nothing is
//! deleted. A crash (SIGKILL, power loss) skips the write: sessions are then lost, as before.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Delivery, Message, Outgoing, Session};
use crate::broker::Broker;
use crate::codec::{PacketId, Properties, QoS, RetainHandling, SubscriptionOptions};
use crate::hex;
use crate::router::{TopicFilter, TopicName};

/// The file name under `data_dir`.
pub const FILE: &str = "sessions.jsonl";

#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    client_id: String,
    expiry_interval: u32,
    /// Unix time (ms) at which the session expires; None = never.
    expires_at_ms: Option<u64>,
    last_packet_id: u16,
    incoming_qos2: Vec<u16>,
    subscriptions: Vec<SubscriptionRecord>,
    outgoing: Vec<OutgoingRecord>,
    queued: Vec<DeliveryRecord>,
    /// A delayed will and the Unix time (ms) it is due.
    will: Option<(MessageRecord, u64)>,
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
struct OutgoingRecord {
    packet_id: u16,
    released: bool,
    delivery: DeliveryRecord,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeliveryRecord {
    qos: u8,
    retain: bool,
    subscription_ids: Vec<u32>,
    message: MessageRecord,
}

#[derive(Debug, Serialize, Deserialize)]
struct MessageRecord {
    topic: String,
    /// Hex.
    payload: String,
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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

impl MessageRecord {
    fn of(m: &Message, now: Instant, wall_now: u64) -> MessageRecord {
        let p = &m.properties;
        MessageRecord {
            topic: m.topic.as_str().to_owned(),
            payload: hex::encode(&m.payload),
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
    fn into_message(self, now: Instant, wall_now: u64) -> Result<Option<Message>, String> {
        let expires_at = match self.expires_at_ms {
            None => None,
            Some(ms) => match left_until(ms, wall_now) {
                None => return Ok(None),
                Some(left) => Some(now + left),
            },
        };
        let properties = Properties {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self
                .correlation_data
                .map(|h| hex::decode(&h).map(Bytes::from))
                .transpose()?,
            user_properties: self.user_properties,
            ..Properties::default()
        };
        Ok(Some(Message {
            topic: TopicName::new(&self.topic).map_err(|e| e.to_string())?,
            payload: Bytes::from(hex::decode(&self.payload)?),
            qos: QoS::from_u8(self.qos).ok_or("bad QoS")?,
            retain: self.retain,
            properties,
            publisher: self.publisher.map(Arc::from),
            expires_at,
        }))
    }
}

impl DeliveryRecord {
    fn of(d: &Delivery, now: Instant, wall_now: u64) -> DeliveryRecord {
        DeliveryRecord {
            qos: d.qos as u8,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            message: MessageRecord::of(&d.message, now, wall_now),
        }
    }

    fn into_delivery(self, now: Instant, wall_now: u64) -> Result<Option<Delivery>, String> {
        let qos = QoS::from_u8(self.qos).ok_or("bad QoS")?;
        Ok(self.message.into_message(now, wall_now)?.map(|m| Delivery {
            message: Arc::new(m),
            qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
        }))
    }
}

fn record_of(s: &Session, now: Instant, wall_now: u64) -> SessionRecord {
    let expiry_interval = s
        .expiry_interval
        .load(Ordering::Relaxed)
        .min(u32::MAX as u64) as u32;
    let offline_since = s.offline_since.lock().unwrap_or_else(SystemTime::now);
    let expires_at_ms = (expiry_interval != u32::MAX)
        .then(|| unix_ms(offline_since) + expiry_interval as u64 * 1000);
    let subscriptions = s
        .subscriptions
        .lock()
        .iter()
        .map(|(raw, sub)| SubscriptionRecord {
            filter: raw.clone(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling as u8,
            id: sub.id,
        })
        .collect();
    let parked = s.parked.lock();
    let outgoing = parked
        .outgoing
        .iter()
        .map(|o| OutgoingRecord {
            packet_id: o.packet_id.get(),
            released: o.released,
            delivery: DeliveryRecord::of(&o.delivery, now, wall_now),
        })
        .collect();
    let will = parked.pending_will.as_ref().map(|w| {
        (
            MessageRecord::of(&w.message, now, wall_now),
            wall_ms_of(w.due, now, wall_now),
        )
    });
    SessionRecord {
        client_id: s.client_id.to_string(),
        expiry_interval,
        expires_at_ms,
        last_packet_id: parked.last_packet_id,
        incoming_qos2: parked.incoming_qos2.clone(),
        subscriptions,
        outgoing,
        queued: s
            .queued_snapshot()
            .iter()
            .map(|d| DeliveryRecord::of(d, now, wall_now))
            .collect(),
        will,
    }
}

/// Writes every session with a non-zero expiry to `path` (atomically: a temporary file renamed
/// over it). Returns how many were written.
pub fn save(broker: &Broker, path: &Path) -> std::io::Result<usize> {
    let now = Instant::now();
    let wall_now = unix_ms(SystemTime::now());
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
    let mut written = 0;
    for s in broker.all_sessions() {
        if s.expiry_interval.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let record = record_of(&s, now, wall_now);
        serde_json::to_writer(&mut out, &record).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(written)
}

/// A subscription read back: the filter as sent, its parts, options and id.
struct RestoredSubscription {
    raw: String,
    group: Option<Arc<str>>,
    filter: TopicFilter,
    options: SubscriptionOptions,
    id: Option<u32>,
}

/// A session read back, not yet registered.
struct Restored {
    session: Arc<Session>,
    expiry_left: Option<Duration>,
    subscriptions: Vec<RestoredSubscription>,
    will: Option<(Message, Duration)>,
}

/// Rebuilds one session; `None` when it expired while the broker was stopped.
fn rebuild(
    broker: &Arc<Broker>,
    r: SessionRecord,
    now: Instant,
    wall_now: u64,
) -> Result<Option<Restored>, String> {
    let expiry_left = match r.expires_at_ms {
        None => None,
        Some(ms) => match left_until(ms, wall_now) {
            None => return Ok(None),
            left => left,
        },
    };
    let session = broker.new_session(Arc::from(r.client_id.as_str()));
    session
        .expiry_interval
        .store(r.expiry_interval as u64, Ordering::Relaxed);
    *session.offline_since.lock() = Some(match r.expires_at_ms {
        Some(ms) => {
            UNIX_EPOCH + Duration::from_millis(ms.saturating_sub(r.expiry_interval as u64 * 1000))
        }
        None => SystemTime::now(),
    });
    let mut subscriptions = Vec::with_capacity(r.subscriptions.len());
    for sub in r.subscriptions {
        let (group, filter) = TopicFilter::parse(&sub.filter).map_err(|e| e.to_string())?;
        let options = SubscriptionOptions {
            qos: QoS::from_u8(sub.qos).ok_or("bad QoS")?,
            no_local: sub.no_local,
            retain_as_published: sub.retain_as_published,
            retain_handling: match sub.retain_handling {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        };
        subscriptions.push(RestoredSubscription {
            raw: sub.filter,
            group,
            filter,
            options,
            id: sub.id,
        });
    }
    {
        let mut parked = session.parked.lock();
        parked.last_packet_id = r.last_packet_id;
        parked.incoming_qos2 = r.incoming_qos2;
        for o in r.outgoing {
            let packet_id = PacketId::new(o.packet_id).ok_or("packet id 0")?;
            if let Some(delivery) = o.delivery.into_delivery(now, wall_now)? {
                parked.outgoing.push_back(Outgoing {
                    packet_id,
                    delivery,
                    released: o.released,
                });
            }
        }
    }
    for d in r.queued {
        if let Some(delivery) = d.into_delivery(now, wall_now)? {
            session.enqueue(delivery);
        }
    }
    let will = match r.will {
        Some((will, due_ms)) => will
            .into_message(now, wall_now)?
            .map(|m| (m, left_until(due_ms, wall_now).unwrap_or_default())),
        None => None,
    };
    Ok(Some(Restored {
        session,
        expiry_left,
        subscriptions,
        will,
    }))
}

/// Reads `path` back (if present) and registers its sessions; returns how many were restored.
/// A file that cannot be read is moved aside (see the module docs) rather than deleted.
pub fn restore(broker: &Arc<Broker>, path: &Path) -> usize {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read saved sessions");
            return 0;
        }
    };
    let now = Instant::now();
    let wall_now = unix_ms(SystemTime::now());
    let mut rebuilt = Vec::new();
    let mut expired = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let parsed = line
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<SessionRecord>(&l).map_err(|e| e.to_string()))
            .and_then(|r| rebuild(broker, r, now, wall_now));
        match parsed {
            Ok(Some(s)) => rebuilt.push(s),
            Ok(None) => expired += 1,
            Err(e) => {
                let aside = aside_path(path);
                tracing::error!(
                    file = %path.display(),
                    line = i + 1,
                    error = %e,
                    moved_to = %aside.display(),
                    "saved sessions unreadable: starting without them; the file is kept"
                );
                let _ = std::fs::rename(path, &aside);
                return 0;
            }
        }
    }
    let restored = rebuilt.len();
    for r in rebuilt {
        broker.register_restored(r.session.clone());
        for sub in r.subscriptions {
            broker.add_subscription(
                &r.session,
                sub.raw,
                sub.group,
                sub.filter,
                sub.options,
                sub.id,
            );
        }
        if let Some((will, delay)) = r.will {
            broker.schedule_will(r.session.clone(), will, 0, delay);
        }
        if let Some(left) = r.expiry_left {
            broker.schedule_expiry(r.session, 0, left);
        }
    }
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove the saved sessions file");
    }
    tracing::info!(restored, expired, "sessions restored");
    restored
}

fn aside_path(path: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".bad-{secs}"));
    PathBuf::from(name)
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
}

//! Delayed publish (EMQX's `$delayed/<seconds>/<topic>`): a client publishes to
//! `$delayed/15/alerts/door`, and the broker publishes the message to `alerts/door` fifteen
//! seconds later — to the subscribers there are then, through the publish hook chain then, with
//! its RETAIN flag applied then.
//!
//! * The interval is a whole number of seconds up to [`MAX_INTERVAL`] (about 49.7 days, EMQX's
//!   limit); a topic with a bad interval or no topic after it is refused like an invalid topic
//!   name. The ACL and the `$SYS` rule see the real topic, so `$delayed/` opens no way around
//!   them.
//! * At most `limits.max_delayed_messages` wait at once, holding at most
//!   `limits.max_delayed_bytes` (payload, topic and properties, plus a fixed overhead per
//!   message); beyond either the publish is refused (v5: Quota exceeded, 0x97; MQTT 3 has no way
//!   to say so and the message is dropped and counted).
//! * With a session store they survive a restart: written as they arrive (`durability = "ack"`,
//!   so the PUBACK promises it) or at a graceful stop (`"graceful"`); one that fell due while
//!   the broker was down is published at start.
//! * `brokerctl delayed list` and `brokerctl delayed del <id>` (the management API's
//!   `/api/v5/mqtt/delayed/messages`) show and cancel them.
//!
//! This module is the waiting list; the broker runs the task that publishes what falls due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::message::Message;

/// The topic prefix of a delayed publish.
pub const PREFIX: &str = "$delayed/";

/// The longest delay, in seconds (EMQX's).
pub const MAX_INTERVAL: u32 = 4_294_967;

/// Splits `$delayed/<seconds>/<topic>`: `None` for any other topic, `Some(Err(why))` for a
/// delayed topic that is not well formed.
pub fn parse(topic: &str) -> Option<Result<(u32, &str), &'static str>> {
    let rest = topic.strip_prefix(PREFIX)?;
    let Some((secs, target)) = rest.split_once('/') else {
        return Some(Err(
            "$delayed/<seconds>/<topic>: no topic after the interval",
        ));
    };
    let valid_digits =
        !secs.is_empty() && secs.len() <= 7 && secs.bytes().all(|b| b.is_ascii_digit());
    let secs = match secs.parse::<u32>() {
        Ok(s) if valid_digits && s <= MAX_INTERVAL => s,
        _ => {
            return Some(Err(
                "$delayed/<seconds>/<topic>: the interval is not 0 to 4294967 seconds",
            ))
        }
    };
    if target.is_empty() {
        return Some(Err("$delayed/<seconds>/<topic>: empty topic"));
    }
    Some(Ok((secs, target)))
}

/// One message waiting for its time.
#[derive(Debug)]
pub struct DelayedMessage {
    /// Its id (for `brokerctl delayed del`).
    pub id: u64,
    /// Unix time (ms) it is due.
    pub due_ms: u64,
    /// Unix time (ms) it was published.
    pub published_ms: u64,
    /// The message, with the real topic.
    pub message: Message,
    /// The publisher's user name, for the publish hooks.
    pub username: Option<String>,
}

impl DelayedMessage {
    /// The bytes it is charged against `limits.max_delayed_bytes`: its content plus the record
    /// and its place in the list.
    pub fn size(&self) -> usize {
        RECORD_OVERHEAD
            + self.message.content_size()
            + self.username.as_ref().map_or(0, String::len)
    }
}

/// What one waiting message costs beyond its content: the record and the list's node share.
const RECORD_OVERHEAD: usize = std::mem::size_of::<DelayedMessage>() + 64;

/// The bounds of the waiting list (`limits.max_delayed_messages`, `limits.max_delayed_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Messages waiting at once.
    pub messages: usize,
    /// Bytes they hold ([`DelayedMessage::size`]).
    pub bytes: usize,
}

/// Why a message cannot wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// `limits.max_delayed_messages` are waiting.
    #[error("limits.max_delayed_messages ({0}) are already waiting")]
    Messages(usize),
    /// The message would take the list past `limits.max_delayed_bytes`.
    #[error("limits.max_delayed_bytes ({0}) would be exceeded")]
    Bytes(usize),
}

impl Bounds {
    /// No bound: what was accepted before a restart is all taken back.
    pub const NONE: Bounds = Bounds {
        messages: usize::MAX,
        bytes: usize::MAX,
    };

    /// Whether one more message of `size` bytes fits beside `len` messages of `bytes`.
    pub fn check(&self, len: usize, bytes: usize, size: usize) -> Result<(), Full> {
        if len >= self.messages {
            return Err(Full::Messages(self.messages));
        }
        if bytes.saturating_add(size) > self.bytes {
            return Err(Full::Bytes(self.bytes));
        }
        Ok(())
    }
}

/// The messages, ordered by due time, and the bytes they hold.
#[derive(Debug, Default)]
struct Waiting {
    by_due: BTreeMap<(u64, u64), DelayedMessage>,
    bytes: usize,
}

/// The waiting list, ordered by due time.
#[derive(Debug, Default)]
pub struct Delayed {
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
    /// Wakes the publishing task when an earlier message arrives.
    pub wake: tokio::sync::Notify,
}

impl Delayed {
    /// An empty list.
    pub fn new() -> Delayed {
        Delayed {
            next_id: AtomicU64::new(1),
            ..Delayed::default()
        }
    }

    /// A fresh id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a message of `size` bytes would fit now (checked again by [`Delayed::add`]).
    pub fn room_for(&self, size: usize, bounds: Bounds) -> Result<(), Full> {
        let waiting = self.waiting.lock();
        bounds.check(waiting.by_due.len(), waiting.bytes, size)
    }

    /// Adds a message (its id from [`Delayed::next_id`], or restored from the store) unless
    /// it would take the list past `bounds`.
    pub fn add(&self, m: DelayedMessage, bounds: Bounds) -> Result<(), Full> {
        let size = m.size();
        let mut waiting = self.waiting.lock();
        bounds.check(waiting.by_due.len(), waiting.bytes, size)?;
        self.next_id.fetch_max(m.id + 1, Ordering::Relaxed);
        let earliest = waiting
            .by_due
            .keys()
            .next()
            .is_none_or(|(due, _)| m.due_ms < *due);
        waiting.by_due.insert((m.due_ms, m.id), m);
        waiting.bytes += size;
        drop(waiting);
        if earliest {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Removes the message with `id`; true if it was waiting.
    pub fn remove(&self, id: u64) -> bool {
        let mut waiting = self.waiting.lock();
        let key = waiting.by_due.keys().find(|(_, i)| *i == id).copied();
        match key.and_then(|k| waiting.by_due.remove(&k)) {
            Some(m) => {
                waiting.bytes -= m.size();
                true
            }
            None => false,
        }
    }

    /// Takes every message due at `now_ms`, earliest first.
    pub fn take_due(&self, now_ms: u64) -> Vec<DelayedMessage> {
        let mut waiting = self.waiting.lock();
        let later = waiting.by_due.split_off(&(now_ms + 1, 0));
        let due: Vec<DelayedMessage> = std::mem::replace(&mut waiting.by_due, later)
            .into_values()
            .collect();
        waiting.bytes -= due.iter().map(DelayedMessage::size).sum::<usize>();
        due
    }

    /// When the earliest message is due (Unix ms).
    pub fn next_due(&self) -> Option<u64> {
        self.waiting
            .lock()
            .by_due
            .keys()
            .next()
            .map(|(due, _)| *due)
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.waiting.lock().by_due.len()
    }

    /// The bytes the waiting messages hold ([`DelayedMessage::size`]).
    pub fn bytes(&self) -> usize {
        self.waiting.lock().bytes
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on every waiting message, earliest first (under the list's lock: keep it short).
    pub fn for_each(&self, mut f: impl FnMut(&DelayedMessage)) {
        for m in self.waiting.lock().by_due.values() {
            f(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::router::TopicName;

    fn message(id: u64, due_ms: u64) -> DelayedMessage {
        with_payload(id, due_ms, 0)
    }

    fn with_payload(id: u64, due_ms: u64, payload: usize) -> DelayedMessage {
        DelayedMessage {
            id,
            due_ms,
            published_ms: 0,
            message: Message {
                topic: TopicName::new("t").expect("topic"),
                payload: vec![0; payload].into(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                publisher: None,
                expires_at: None,
            },
            username: None,
        }
    }

    const THREE: Bounds = Bounds {
        messages: 3,
        bytes: usize::MAX,
    };

    #[test]
    fn delayed_topics_are_parsed_strictly() {
        assert_eq!(parse("a/b"), None);
        assert_eq!(parse("$delayed/15/a/b"), Some(Ok((15, "a/b"))));
        assert_eq!(parse("$delayed/0/x"), Some(Ok((0, "x"))));
        assert_eq!(parse("$delayed/4294967/x"), Some(Ok((4_294_967, "x"))));
        for bad in [
            "$delayed/4294968/x",
            "$delayed/-1/x",
            "$delayed/+1/x",
            "$delayed//x",
            "$delayed/1x/t",
            "$delayed/10",
            "$delayed/10/",
            "$delayed/99999999999/x",
        ] {
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn due_messages_come_out_in_order_and_the_list_is_bounded() {
        let d = Delayed::new();
        d.add(message(d.next_id(), 300), THREE).expect("room");
        d.add(message(d.next_id(), 100), THREE).expect("room");
        d.add(message(d.next_id(), 200), THREE).expect("room");
        assert_eq!(
            d.add(message(d.next_id(), 50), THREE),
            Err(Full::Messages(3))
        );
        assert_eq!(d.next_due(), Some(100));
        let due: Vec<u64> = d.take_due(200).iter().map(|m| m.due_ms).collect();
        assert_eq!(due, [100, 200]);
        assert_eq!(d.len(), 1);
        assert!(d.take_due(299).is_empty());
        assert!(d.remove(1));
        assert!(!d.remove(1), "gone");
        assert!(d.is_empty());
        // Restored ids push the next fresh one past them.
        d.add(message(41, 10), THREE).expect("room");
        assert_eq!(d.next_id(), 42);
    }

    #[test]
    fn the_list_is_bounded_in_bytes_and_gives_them_back() {
        let d = Delayed::new();
        let one = with_payload(1, 100, 10_000).size();
        assert!(one > 10_000);
        let bounds = Bounds {
            messages: 100,
            bytes: 2 * one + one / 2,
        };
        d.add(with_payload(1, 100, 10_000), bounds).expect("room");
        d.add(with_payload(2, 200, 10_000), bounds).expect("room");
        assert_eq!(d.bytes(), 2 * one);
        assert_eq!(
            d.add(with_payload(3, 300, 10_000), bounds),
            Err(Full::Bytes(bounds.bytes))
        );
        assert_eq!(d.room_for(one, bounds), Err(Full::Bytes(bounds.bytes)));
        // A small one still fits beside them.
        d.add(with_payload(4, 400, 10), bounds)
            .expect("a small one fits");
        assert_eq!(d.take_due(100).len(), 1);
        assert!(d.remove(4));
        assert_eq!(
            d.bytes(),
            one,
            "taken and removed messages give their bytes back"
        );
        d.add(with_payload(5, 500, 10_000), bounds)
            .expect("room again");
    }
}

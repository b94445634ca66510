//! Delayed publish (EMQX's `$delayed/<seconds>/<topic>`): a client publishes to
//! `$delayed/15/alerts/door`, and the broker publishes the message to `alerts/door` fifteen
//! seconds later — to the subscribers there are then, through the publish hook chain then, with
//! its RETAIN flag applied then.
//!
//! * The interval is a whole number of seconds up to [`MAX_INTERVAL`] (about 49.7 days, EMQX's
//!   limit); a topic with a bad interval or no topic after it is refused like an invalid topic
//!   name. The ACL and the `$SYS` rule see the real topic, so `$delayed/` opens no way around
//!   them.
//! * At most `limits.max_delayed_messages` wait at once; beyond that the publish is refused
//!   (v5: Quota exceeded, 0x97; MQTT 3 has no way to say so and the message is dropped and
//!   counted).
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

use crate::session::Message;

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

/// Why a message cannot wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limits.max_delayed_messages ({0}) are already waiting")]
pub struct Full(pub usize);

/// The waiting list, ordered by due time.
#[derive(Debug, Default)]
pub struct Delayed {
    waiting: Mutex<BTreeMap<(u64, u64), DelayedMessage>>,
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

    /// Adds a message (its id from [`Delayed::next_id`], or restored from the store) unless
    /// `max` are already waiting.
    pub fn add(&self, m: DelayedMessage, max: usize) -> Result<(), Full> {
        let mut waiting = self.waiting.lock();
        if waiting.len() >= max {
            return Err(Full(max));
        }
        self.next_id.fetch_max(m.id + 1, Ordering::Relaxed);
        let earliest = waiting.keys().next().is_none_or(|(due, _)| m.due_ms < *due);
        waiting.insert((m.due_ms, m.id), m);
        drop(waiting);
        if earliest {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Removes the message with `id`; true if it was waiting.
    pub fn remove(&self, id: u64) -> bool {
        let mut waiting = self.waiting.lock();
        let key = waiting.keys().find(|(_, i)| *i == id).copied();
        key.and_then(|k| waiting.remove(&k)).is_some()
    }

    /// Takes every message due at `now_ms`, earliest first.
    pub fn take_due(&self, now_ms: u64) -> Vec<DelayedMessage> {
        let mut waiting = self.waiting.lock();
        let later = waiting.split_off(&(now_ms + 1, 0));
        std::mem::replace(&mut *waiting, later)
            .into_values()
            .collect()
    }

    /// When the earliest message is due (Unix ms).
    pub fn next_due(&self) -> Option<u64> {
        self.waiting.lock().keys().next().map(|(due, _)| *due)
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on every waiting message, earliest first (under the list's lock: keep it short).
    pub fn for_each(&self, mut f: impl FnMut(&DelayedMessage)) {
        for m in self.waiting.lock().values() {
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
        DelayedMessage {
            id,
            due_ms,
            published_ms: 0,
            message: Message {
                topic: TopicName::new("t").expect("topic"),
                payload: Default::default(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                publisher: None,
                expires_at: None,
            },
            username: None,
        }
    }

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
        d.add(message(d.next_id(), 300), 3).expect("room");
        d.add(message(d.next_id(), 100), 3).expect("room");
        d.add(message(d.next_id(), 200), 3).expect("room");
        assert_eq!(d.add(message(d.next_id(), 50), 3), Err(Full(3)));
        assert_eq!(d.next_due(), Some(100));
        let due: Vec<u64> = d.take_due(200).iter().map(|m| m.due_ms).collect();
        assert_eq!(due, [100, 200]);
        assert_eq!(d.len(), 1);
        assert!(d.take_due(299).is_empty());
        assert!(d.remove(1));
        assert!(!d.remove(1), "gone");
        assert!(d.is_empty());
        // Restored ids push the next fresh one past them.
        d.add(message(41, 10), 3).expect("room");
        assert_eq!(d.next_id(), 42);
    }
}

//! Server → client topic aliases (MQTT 5, section 3.3.2.3.4): a connection whose client
//! announced a Topic Alias Maximum gets PUBLISH packets with an alias instead of a topic it has
//! already been sent, which saves the topic's bytes on every repeat.
//!
//! Aliases are per connection (a reconnect starts afresh, [MQTT-3.3.2-7]), never above the
//! client's maximum ([MQTT-3.3.2-9]) nor the broker's `limits.topic_alias_maximum`. When all
//! are in use, the least recently used topic gives its alias up to the new one; the PUBLISH that
//! (re)assigns an alias carries the full topic, later ones carry an empty topic.
//!
//! Topics longer than [`MAX_ALIASED_TOPIC`] are sent in full, without an alias (a sender may
//! always do so): the aliases are held for the whole connection, and a client accepting 64 of
//! them, subscribed where 64 KiB topics are published, would otherwise make its connection
//! hold 4 MiB.

use std::collections::HashMap;

/// How a PUBLISH is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alias {
    /// Full topic, and this alias is (re)assigned to it.
    Set(u16),
    /// Empty topic: this alias names it.
    Use(u16),
}

impl Alias {
    /// The alias number.
    pub fn id(self) -> u16 {
        match self {
            Alias::Set(a) | Alias::Use(a) => a,
        }
    }
}

/// The longest topic given an alias, in bytes: at most 64 KiB of aliased topics per
/// connection.
pub const MAX_ALIASED_TOPIC: usize = 1024;

/// The aliases of one connection.
#[derive(Debug)]
pub struct OutAliases {
    max: u16,
    tick: u64,
    by_topic: HashMap<Box<str>, (u16, u64)>,
}

impl OutAliases {
    /// Aliases for a client that accepts `client_max` of them, capped at `cap`; `None` when
    /// either is 0.
    pub fn new(client_max: u16, cap: u16) -> Option<OutAliases> {
        let max = client_max.min(cap);
        (max > 0).then(|| OutAliases {
            max,
            tick: 0,
            by_topic: HashMap::new(),
        })
    }

    /// The alias to send `topic` with, recording it as used; `None` for a topic longer than
    /// [`MAX_ALIASED_TOPIC`].
    pub fn alias(&mut self, topic: &str) -> Option<Alias> {
        (topic.len() <= MAX_ALIASED_TOPIC).then(|| self.assign(topic))
    }

    /// The alias for `topic`, assigned or reused.
    fn assign(&mut self, topic: &str) -> Alias {
        self.tick += 1;
        if let Some((id, used)) = self.by_topic.get_mut(topic) {
            *used = self.tick;
            return Alias::Use(*id);
        }
        let id = if self.by_topic.len() < self.max as usize {
            self.by_topic.len() as u16 + 1
        } else {
            // The least recently used topic gives its alias up.
            let oldest = self
                .by_topic
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(t, (id, _))| (t.clone(), *id));
            match oldest {
                Some((t, id)) => {
                    self.by_topic.remove(&t);
                    id
                }
                None => 1,
            }
        };
        self.by_topic.insert(topic.into(), (id, self.tick));
        Alias::Set(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_reused_and_recycled_least_recently_used_first() {
        assert!(OutAliases::new(0, 64).is_none());
        assert!(OutAliases::new(10, 0).is_none());
        let mut a = OutAliases::new(2, 64).expect("aliases");
        assert_eq!(a.alias("a"), Some(Alias::Set(1)));
        assert_eq!(a.alias("b"), Some(Alias::Set(2)));
        assert_eq!(a.alias("a"), Some(Alias::Use(1)));
        // Full: "b" is the least recently used, so "c" takes alias 2.
        assert_eq!(a.alias("c"), Some(Alias::Set(2)));
        assert_eq!(a.alias("a"), Some(Alias::Use(1)));
        assert_eq!(a.alias("b"), Some(Alias::Set(2)));
        for _ in 0..1000 {
            let id = a.alias("x").expect("short").id();
            assert!(
                (1..=2).contains(&id),
                "[MQTT-3.3.2-9] never above the maximum"
            );
        }
    }

    /// A topic longer than MAX_ALIASED_TOPIC goes without an alias, and takes none.
    #[test]
    fn long_topics_are_sent_in_full() {
        let mut a = OutAliases::new(2, 64).expect("aliases");
        let long = "l".repeat(MAX_ALIASED_TOPIC + 1);
        assert_eq!(a.alias(&long), None);
        assert_eq!(a.alias(&long), None);
        assert_eq!(a.alias(&"s".repeat(MAX_ALIASED_TOPIC)), Some(Alias::Set(1)));
        assert_eq!(a.alias("b"), Some(Alias::Set(2)));
    }
}

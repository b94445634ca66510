//! A session's own record of its subscriptions (the router holds the matching side).

use std::collections::hash_map::RandomState;

use crate::codec::SubscriptionOptions;
use crate::router::SubscriptionKey;
use crate::small_map::SmallMap;

/// One subscription as the session records it (its [`SubscriptionKey`] is the map's key).
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Options.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<u32>,
}

/// The bytes a subscription's key is charged against `limits.max_subscription_bytes`: its
/// filter and share group.
pub fn key_bytes(key: &SubscriptionKey) -> usize {
    key.filter.as_str().len() + key.group.as_deref().map_or(0, str::len)
}

/// The subscriptions of a session that has some (a list while there are few, see
/// [`SmallMap`]; filters come from clients, so the map beyond has a seeded hasher), and the
/// bytes of their keys.
#[derive(Debug, Default)]
struct Held {
    map: SmallMap<SubscriptionKey, Subscription, RandomState>,
    bytes: usize,
}

/// A session's subscriptions by share group and filter: boxed, and only once there is one
/// (a session that subscribes to nothing is 40 bytes smaller: an empty `HashMap` takes 48
/// bytes inline, the box 8).
#[derive(Debug, Default)]
pub struct Subscriptions(Option<Box<Held>>);

impl Subscriptions {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.map.len())
    }

    /// The bytes of their filters and share groups ([`key_bytes`]).
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.bytes)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces one; returns the one replaced.
    pub fn insert(&mut self, key: SubscriptionKey, sub: Subscription) -> Option<Subscription> {
        let held = self.0.get_or_insert_with(Box::default);
        let bytes = key_bytes(&key);
        let replaced = held.map.insert(key, sub);
        if replaced.is_none() {
            held.bytes += bytes;
        }
        replaced
    }

    /// Whether it holds `key`.
    pub fn contains(&self, key: &SubscriptionKey) -> bool {
        self.0.as_ref().is_some_and(|h| h.map.contains_key(key))
    }

    /// Removes one.
    pub fn remove(&mut self, key: &SubscriptionKey) -> Option<Subscription> {
        let held = self.0.as_mut()?;
        let removed = held.map.remove(key);
        if removed.is_some() {
            held.bytes -= key_bytes(key);
        }
        if held.map.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// Every one, leaving none.
    pub fn drain(&mut self) -> impl Iterator<Item = (SubscriptionKey, Subscription)> {
        self.0.take().into_iter().flat_map(|mut h| h.map.drain())
    }

    /// Every one, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&SubscriptionKey, &Subscription)> {
        self.0.iter().flat_map(|h| h.map.iter())
    }
}

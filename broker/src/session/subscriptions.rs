//! A session's own record of its subscriptions (the router holds the matching side).

use std::collections::HashMap;

use crate::codec::SubscriptionOptions;
use crate::router::SubscriptionKey;

/// One subscription as the session records it (its [`SubscriptionKey`] is the map's key).
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Options.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier.
    pub id: Option<u32>,
}

/// A session's subscriptions by share group and filter: boxed, and only once there is one
/// (a session that subscribes to nothing is 40 bytes smaller).
/// The box is deliberate (clippy's `box_collection` is about the usual case): an empty
/// `HashMap` takes 48 bytes inline, the box 8.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub struct Subscriptions(Option<Box<HashMap<SubscriptionKey, Subscription>>>);

impl Subscriptions {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces one; returns the one replaced.
    pub fn insert(&mut self, key: SubscriptionKey, sub: Subscription) -> Option<Subscription> {
        self.0.get_or_insert_with(Box::default).insert(key, sub)
    }

    /// Whether it holds `key`.
    pub fn contains(&self, key: &SubscriptionKey) -> bool {
        self.0.as_ref().is_some_and(|m| m.contains_key(key))
    }

    /// Removes one.
    pub fn remove(&mut self, key: &SubscriptionKey) -> Option<Subscription> {
        let map = self.0.as_mut()?;
        let removed = map.remove(key);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// Every one, leaving none.
    pub fn drain(&mut self) -> impl Iterator<Item = (SubscriptionKey, Subscription)> {
        self.0.take().into_iter().flat_map(|m| m.into_iter())
    }

    /// Every one, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&SubscriptionKey, &Subscription)> {
        self.0.iter().flat_map(|m| m.iter())
    }
}

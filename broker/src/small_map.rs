//! A map that is a short list while it holds few entries, and a hash map beyond.
//!
//! Most of the broker's maps that exist once per device hold one entry or two: a router level
//! below a wide one (`devices/<id>/cmd` has one child per `<id>`), a session's subscriptions.
//! A hash map's table has room for four entries at least, held inline, so each such map cost
//! four entries' worth; a list sized to its entries costs one. Up to [`FEW`] entries are found
//! by comparing keys (no hashing, faster than the map at that size); beyond that the map
//! takes over, with its own hasher (seeded where keys come from clients), and stays a map.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Most entries kept in the list; one more moves them into a map.
pub const FEW: usize = 8;

/// A map from `K` to `V`: a list up to [`FEW`] entries, a `HashMap` with hasher `S` beyond.
#[derive(Debug)]
pub enum SmallMap<K, V, S> {
    /// Up to [`FEW`] entries, in a list with room for exactly these.
    Few(Vec<(K, V)>),
    /// More.
    Many(HashMap<K, V, S>),
}

impl<K, V, S> Default for SmallMap<K, V, S> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> SmallMap<K, V, S> {
    /// The value at `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Few(list) => list.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            SmallMap::Many(map) => map.get(key),
        }
    }

    /// The value at `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Few(list) => list
                .iter_mut()
                .find(|(k, _)| (*k).borrow() == key)
                .map(|(_, v)| v),
            SmallMap::Many(map) => map.get_mut(key),
        }
    }

    /// Whether there is a value at `key`.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The value at `key`; if there is none, `value()` is added there first, at the key
    /// `owned()` makes (a list calls it only then, a map to look the key up).
    pub fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        owned: impl FnOnce() -> K,
        value: impl FnOnce() -> V,
    ) -> &mut V
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let at = match self {
            SmallMap::Few(list) => list.iter().position(|(k, _)| k.borrow() == key),
            SmallMap::Many(_) => None,
        };
        match (self, at) {
            (SmallMap::Few(list), Some(at)) => &mut list[at].1,
            (SmallMap::Many(map), _) => map.entry(owned()).or_insert_with(value),
            (this, None) => this.add(owned(), value()),
        }
    }

    /// Sets the value at `key`; returns the one it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            SmallMap::Few(list) => {
                if let Some((_, v)) = list.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(v, value));
                }
            }
            SmallMap::Many(map) => return map.insert(key, value),
        }
        self.add(key, value);
        None
    }

    /// Adds `value` at `key`, which a list does not hold (a map may): to the list while it
    /// has fewer than [`FEW`] entries, otherwise to a map (the list's entries moved into it).
    fn add(&mut self, key: K, value: V) -> &mut V {
        if let SmallMap::Few(list) = self {
            if list.len() >= FEW {
                let map = std::mem::take(list).into_iter().collect();
                *self = SmallMap::Many(map);
            }
        }
        match self {
            SmallMap::Few(list) => {
                // Room for one more, not the four a first `push` takes.
                list.reserve_exact(1);
                list.push((key, value));
                let last = list.len() - 1;
                &mut list[last].1
            }
            SmallMap::Many(map) => map.entry(key).or_insert(value),
        }
    }

    /// Takes the value at `key` out.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallMap::Few(list) => {
                let at = list.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = list.swap_remove(at);
                list.shrink_to_fit();
                Some(value)
            }
            SmallMap::Many(map) => map.remove(key),
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Few(list) => list.len(),
            SmallMap::Many(map) => map.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        match self {
            SmallMap::Few(list) => Iter::Few(list.iter()),
            SmallMap::Many(map) => Iter::Many(map.iter()),
        }
    }

    /// Moves every entry out, leaving none.
    pub fn drain(&mut self) -> IntoIter<K, V> {
        match std::mem::take(self) {
            SmallMap::Few(list) => IntoIter::Few(list.into_iter()),
            SmallMap::Many(map) => IntoIter::Many(map.into_iter()),
        }
    }
}

/// The entries of a [`SmallMap`] ([`SmallMap::iter`]).
pub enum Iter<'a, K, V> {
    /// Of the list.
    Few(std::slice::Iter<'a, (K, V)>),
    /// Of the map.
    Many(std::collections::hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Many(it) => it.next(),
        }
    }
}

/// The entries moved out of a [`SmallMap`] ([`SmallMap::drain`]).
pub enum IntoIter<K, V> {
    /// Of the list.
    Few(std::vec::IntoIter<(K, V)>),
    /// Of the map.
    Many(std::collections::hash_map::IntoIter<K, V>),
}

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IntoIter::Few(it) => it.next(),
            IntoIter::Many(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    /// The same answers as a `HashMap` through the move from list to map, and a list holds
    /// room for exactly its entries.
    #[test]
    fn behaves_as_a_map_on_both_sides_of_few() {
        let mut small: SmallMap<String, usize, RandomState> = SmallMap::default();
        let mut model = HashMap::new();
        for i in 0..3 * FEW {
            let key = format!("k{}", i % (2 * FEW));
            assert_eq!(small.insert(key.clone(), i), model.insert(key, i));
            assert_eq!(small.len(), model.len());
            if let SmallMap::Few(list) = &small {
                assert_eq!(list.capacity(), list.len());
            }
        }
        assert!(matches!(small, SmallMap::Many(_)));
        for i in 0..2 * FEW {
            let key = format!("k{i}");
            assert_eq!(small.get(key.as_str()), model.get(&key));
            *small.get_or_insert_with(key.as_str(), || key.clone(), || 0) += 1;
            *model.entry(key.clone()).or_insert(0) += 1;
            if i % 3 == 0 {
                assert_eq!(small.remove(key.as_str()), model.remove(&key));
            }
        }
        let mut left: Vec<_> = small.drain().collect();
        left.sort();
        let mut expected: Vec<_> = model.into_iter().collect();
        expected.sort();
        assert_eq!(left, expected);
        assert!(small.is_empty() && matches!(small, SmallMap::Few(_)));
    }

    /// `get_or_insert_with` makes the key only when it adds one.
    #[test]
    fn keys_are_made_only_when_added() {
        let mut small: SmallMap<Box<str>, u8, RandomState> = SmallMap::default();
        *small.get_or_insert_with("a", || "a".into(), || 1) += 1;
        let made = small.get_or_insert_with("a", || unreachable!("already there"), || 0);
        assert_eq!(*made, 2);
        assert_eq!(small.remove("a"), Some(2));
        assert!(small.is_empty());
    }
}

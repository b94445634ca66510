//! A connection's cache of ACL decisions: the last few (access, topic) answers of the ACL
//! plugins, each kept for `acl.cache_ttl_secs`, so that a client publishing to the same topics
//! does not ask the plugins again for every message.

/// Per-connection cache of ACL decisions: key (access, topic), FIFO eviction, TTL.
#[derive(Debug, Default)]
pub struct AclCache {
    /// Oldest first (a `Vec`: eight bytes smaller than a `VecDeque` in every session, and the
    /// cache is small), each with when it was decided ([`crate::clock::coarse_monotonic_ms`]:
    /// looked at for every PUBLISH, and a TTL is seconds).
    entries: Vec<(plugin_api::Access, String, bool, u64)>,
}

impl AclCache {
    /// The cached decision (true = allowed) if present and fresh.
    pub fn get(
        &self,
        access: plugin_api::Access,
        topic: &str,
        ttl: std::time::Duration,
    ) -> Option<bool> {
        let (.., allowed, at) = self
            .entries
            .iter()
            .find(|(a, t, ..)| *a == access && t == topic)?;
        let age = crate::clock::coarse_monotonic_ms().saturating_sub(*at);
        (u128::from(age) < ttl.as_millis()).then_some(*allowed)
    }

    /// Records a decision, evicting the oldest entry beyond `capacity`.
    pub fn put(&mut self, access: plugin_api::Access, topic: &str, allowed: bool, capacity: usize) {
        if capacity == 0 {
            return;
        }
        self.entries
            .retain(|(a, t, _, _)| !(*a == access && t == topic));
        if self.entries.len() >= capacity {
            let excess = self.entries.len() + 1 - capacity;
            self.entries.drain(..excess);
        }
        self.entries.push((
            access,
            topic.to_owned(),
            allowed,
            crate::clock::coarse_monotonic_ms(),
        ));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::AclCache;
    use plugin_api::Access;
    use std::time::Duration;

    #[test]
    fn the_acl_cache_answers_fresh_decisions_per_access_and_topic() {
        let mut cache = AclCache::default();
        let ttl = Duration::from_secs(60);
        cache.put(Access::Publish, "a/b", true, 2);
        cache.put(Access::Subscribe, "a/b", false, 2);
        assert_eq!(cache.get(Access::Publish, "a/b", ttl), Some(true));
        assert_eq!(cache.get(Access::Subscribe, "a/b", ttl), Some(false));
        assert_eq!(cache.get(Access::Publish, "a/c", ttl), None);
        // A TTL of nothing: every decision is stale at once.
        assert_eq!(cache.get(Access::Publish, "a/b", Duration::ZERO), None);
        // The oldest goes beyond the capacity; a decision made again replaces the old one.
        cache.put(Access::Publish, "a/c", false, 2);
        assert_eq!(cache.get(Access::Publish, "a/b", ttl), None);
        cache.put(Access::Publish, "a/c", true, 2);
        assert_eq!(cache.get(Access::Publish, "a/c", ttl), Some(true));
        assert_eq!(cache.len(), 2);
    }
}

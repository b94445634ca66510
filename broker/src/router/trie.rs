//! The subscription trie: one node per filter level, with explicit children for `+` and `#`.
//!
//! A topic is matched level by level; at each node the exact child, the `+` child and the `#`
//! child are followed, so a match costs O(levels × wildcard branching), independent of the
//! number of subscriptions. Each node holds the subscriptions whose filter ends there: plain
//! ones keyed by subscriber (one subscription per subscriber and filter, as the spec requires:
//! a second SUBSCRIBE to the same filter replaces the first, [MQTT-3.8.4-3]) and shared ones by
//! group. Empty nodes are pruned on removal so the trie does not grow with churn.
//!
//! **No recursion over topic depth.** Levels come from clients, so every walk over them —
//! insert, remove, match, and dropping nodes — is a loop with an explicit stack: a filter of
//! 100 000 levels costs heap, never stack (the unit tests prove it on a small thread stack).
//! `limits.max_topic_levels` keeps such filters out of the broker in the first place.
//!
//! The maps use foldhash with a per-process random seed: several times faster than std's
//! SipHash on short topic levels, and still seeded, so clients cannot precompute colliding
//! levels.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::small_map::SmallMap;

use super::topic::TopicFilter;

/// The trie's hash maps (see the module docs).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Members of one shared subscription (`$share/<group>/<filter>`), with the state the
/// shared-subscription strategies keep: the round-robin cursor and the sticky member.
#[derive(Debug)]
pub struct SharedGroup<K, V> {
    /// Members in subscription order.
    pub members: Vec<(K, V)>,
    cursor: AtomicUsize,
    sticky: parking_lot::Mutex<Option<K>>,
}

impl<K, V> SharedGroup<K, V> {
    /// Picks the next member in round-robin order, preferring one for which `available` is true;
    /// when none is available the next member in turn is returned anyway (its queue keeps the
    /// message). `None` only for an empty group.
    pub fn pick(&self, available: impl FnMut(&K, &V) -> bool) -> Option<&(K, V)> {
        self.pick_index(available).and_then(|i| self.members.get(i))
    }

    /// [`SharedGroup::pick`], as an index into `members`.
    pub fn pick_index(&self, mut available: impl FnMut(&K, &V) -> bool) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let at = (start + i) % n;
            let m = &self.members[at];
            if available(&m.0, &m.1) {
                return Some(at);
            }
        }
        Some(start % n)
    }

    /// The first member from index `start` (wrapping) for which `available` is true; when none
    /// is, the member at `start`. `None` only for an empty group.
    pub fn pick_from(
        &self,
        start: usize,
        mut available: impl FnMut(&K, &V) -> bool,
    ) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        (0..n)
            .map(|i| (start + i) % n)
            .find(|at| {
                let m = &self.members[*at];
                available(&m.0, &m.1)
            })
            .or(Some(start % n))
    }

    /// A pseudo-random starting index (a SplitMix64 step over the group's counter).
    pub fn random_start(&self) -> usize {
        let mut z = (self.cursor.fetch_add(1, Ordering::Relaxed) as u64)
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as usize
    }
}

impl<K: Clone + PartialEq, V> SharedGroup<K, V> {
    /// The sticky member while it is available; otherwise the next available one in turn,
    /// which then becomes the sticky member.
    pub fn pick_sticky(&self, mut available: impl FnMut(&K, &V) -> bool) -> Option<usize> {
        let mut sticky = self.sticky.lock();
        if let Some(k) = sticky.as_ref() {
            if let Some(at) = self
                .members
                .iter()
                .position(|(m, v)| m == k && available(m, v))
            {
                return Some(at);
            }
        }
        let at = self.pick_index(&mut available)?;
        *sticky = self.members.get(at).map(|(k, _)| k.clone());
        Some(at)
    }
}

/// One level of the trie. Its children are held inline (one pointer less to follow per level
/// of a match), in a list sized to them while there are few ([`SmallMap`]); what a node
/// holds for filters that end there is boxed, and only while there is any. Most nodes are inner levels with one
/// child (`devices/<id>/cmd`: one subscription per device), and a map's table holds room for
/// four entries at least: with a map for every level and everything inline, such a
/// subscription cost ~0.9 KiB more (see the README's idle benchmark with subscriptions).
#[derive(Debug)]
struct Node<K, V> {
    children: Children<K, V>,
    plus: Option<Box<Node<K, V>>>,
    hash: Option<Box<Node<K, V>>>,
    /// The subscriptions whose filter ends here; `None` when there are none.
    ends: Option<Box<Ends<K, V>>>,
}

/// The subscriptions whose filter ends at a node.
#[derive(Debug)]
struct Ends<K, V> {
    /// Plain subscriptions, by subscriber.
    plain: Map<K, V>,
    /// Shared subscriptions, by group.
    shared: Map<Arc<str>, SharedGroup<K, V>>,
}

impl<K, V> Default for Ends<K, V> {
    fn default() -> Self {
        Ends {
            plain: Map::default(),
            shared: Map::default(),
        }
    }
}

impl<K, V> Ends<K, V> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

/// A node's children by level (a list while there are few: see [`SmallMap`]).
type Children<K, V> = SmallMap<Box<str>, Node<K, V>, foldhash::fast::RandomState>;

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            hash: None,
            ends: None,
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_none() && !self.has_ends()
    }

    /// Whether any subscription's filter ends here.
    fn has_ends(&self) -> bool {
        self.ends.as_ref().is_some_and(|e| !e.is_empty())
    }

    /// The subscriptions ending here, to add one.
    fn ends_mut(&mut self) -> &mut Ends<K, V> {
        self.ends.get_or_insert_with(Box::default)
    }

    /// Gives back the box of subscriptions once the last one has gone.
    fn release_ends(&mut self) {
        if self.ends.as_ref().is_some_and(|e| e.is_empty()) {
            self.ends = None;
        }
    }

    /// Moves this node's children onto `stack` (so they are dropped by the caller's loop).
    fn take_children(&mut self, stack: &mut Vec<Node<K, V>>) {
        stack.extend(self.children.drain().map(|(_, c)| c));
        stack.extend(self.plus.take().map(|b| *b));
        stack.extend(self.hash.take().map(|b| *b));
    }

    /// How many child nodes this node has.
    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    /// Detaches the child at `level`; the caller drops it.
    fn remove_child(&mut self, level: &str) -> Option<Node<K, V>> {
        match level {
            "+" => self.plus.take().map(|b| *b),
            "#" => self.hash.take().map(|b| *b),
            _ => self.children.remove(level),
        }
    }
}

/// Dropping a node drops its subtree without recursing: a chain of 100 000 levels would
/// otherwise overflow the stack in the compiler-generated drop glue.
impl<K, V> Drop for Node<K, V> {
    fn drop(&mut self) {
        if self.child_count() == 0 {
            return;
        }
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
            // `node` now has no children: its own drop returns at once.
        }
    }
}

/// A step of [`Trie::for_each_match`]: a node, the unmatched rest of the topic, and whether
/// the node is the root.
type Frame<'a, 't, K, V> = (&'a Node<K, V>, &'t str, bool);

/// One matching subscription, as visited by [`Trie::for_each_match`].
pub enum Match<'a, K, V> {
    /// A plain subscription.
    Plain(&'a K, &'a V),
    /// A shared subscription group (its name, its members): the visitor picks one member.
    Shared(&'a Arc<str>, &'a SharedGroup<K, V>),
}

/// The subscription trie. `K` identifies a subscriber, `V` is stored with each subscription.
#[derive(Debug)]
pub struct Trie<K, V> {
    root: Node<K, V>,
    count: usize,
}

impl<K, V> Default for Trie<K, V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Trie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions stored (plain and shared members).
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn node_mut(&mut self, filter: &TopicFilter) -> &mut Node<K, V> {
        let mut node = &mut self.root;
        for level in filter.as_str().split('/') {
            node = match level {
                "+" => node.plus.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                _ => node
                    .children
                    .get_or_insert_with(level, || level.into(), Node::default),
            };
        }
        node
    }

    /// Adds or replaces `key`'s subscription to `filter` (in share `group` if given).
    /// Returns the value it replaced.
    pub fn insert(
        &mut self,
        group: Option<&Arc<str>>,
        filter: &TopicFilter,
        key: K,
        value: V,
    ) -> Option<V> {
        let ends = self.node_mut(filter).ends_mut();
        let old = match group {
            None => ends.plain.insert(key, value),
            Some(g) => {
                let grp = ends.shared.entry(g.clone()).or_insert_with(|| SharedGroup {
                    members: Vec::new(),
                    cursor: AtomicUsize::new(0),
                    sticky: parking_lot::Mutex::new(None),
                });
                match grp.members.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => Some(std::mem::replace(&mut slot.1, value)),
                    None => {
                        grp.members.push((key, value));
                        None
                    }
                }
            }
        };
        if old.is_none() {
            self.count += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter`; returns it if it existed. Nodes left empty
    /// are pruned.
    pub fn remove(&mut self, group: Option<&Arc<str>>, filter: &TopicFilter, key: &K) -> Option<V> {
        // Down to the filter's node; on the way, remember the deepest node that must stay
        // whatever happens below it (the root, or one with subscriptions or other children):
        // if the filter's node ends up empty, the chain below that node goes.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (depth, level) in filter.as_str().split('/').enumerate() {
            if depth > 0 && (node.child_count() > 1 || node.has_ends()) {
                keep_depth = depth;
            }
            node = node.child(level)?;
        }
        let mut node = &mut self.root;
        for level in filter.as_str().split('/') {
            node = node.child_mut(level)?;
        }
        let ends = node.ends.as_deref_mut()?;
        let removed = match group {
            None => ends.plain.remove(key),
            Some(g) => {
                let grp = ends.shared.get_mut(g)?;
                let pos = grp.members.iter().position(|(k, _)| k == key)?;
                let (_, v) = grp.members.remove(pos);
                if grp.members.is_empty() {
                    ends.shared.remove(g);
                }
                Some(v)
            }
        }?;
        node.release_ends();
        self.count -= 1;
        if node.is_empty() {
            let mut levels = filter.as_str().split('/');
            let mut parent = &mut self.root;
            for level in levels.by_ref().take(keep_depth) {
                parent = parent.child_mut(level)?;
            }
            if let Some(level) = levels.next() {
                // Dropped without recursion (see `Drop for Node`).
                drop(parent.remove_child(level));
            }
        }
        Some(removed)
    }

    /// The share group `group` of filter `filter`, if it has members.
    pub fn shared_group(&self, group: &str, filter: &TopicFilter) -> Option<&SharedGroup<K, V>> {
        let mut node = &self.root;
        for level in filter.as_str().split('/') {
            node = node.child(level)?;
        }
        node.ends.as_ref()?.shared.get(group)
    }

    /// Calls `visit` for every subscription whose filter matches `topic` (a valid topic name).
    ///
    /// Topics starting with `$` are not matched by a leading `+` or `#` ([MQTT-4.7.2-1]).
    /// Depth-first with an explicit stack (inline for the first levels, so an ordinary match
    /// does not allocate).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, K, V>)) {
        let dollar = topic.starts_with('$');
        let mut stack: SmallVec<[Frame<'a, '_, K, V>; 16]> = SmallVec::new();
        stack.push((&self.root, topic, true));
        while let Some((node, rest, first)) = stack.pop() {
            let (level, tail) = first_level(rest);
            let wildcards = !(first && dollar);
            if wildcards {
                if let Some(h) = &node.hash {
                    Self::emit(h, &mut visit);
                }
            }
            let plus = node.plus.as_deref().filter(|_| wildcards);
            for child in plus.into_iter().chain(node.children.get(level)) {
                match tail {
                    Some(t) => stack.push((child, t, false)),
                    None => {
                        Self::emit(child, &mut visit);
                        // "a/#" also matches "a" ([MQTT-4.7.1-2]).
                        if let Some(h) = &child.hash {
                            Self::emit(h, &mut visit);
                        }
                    }
                }
            }
        }
    }

    fn emit<'a>(node: &'a Node<K, V>, visit: &mut impl FnMut(Match<'a, K, V>)) {
        let Some(ends) = node.ends.as_deref() else {
            return;
        };
        for (k, v) in &ends.plain {
            visit(Match::Plain(k, v));
        }
        for (name, g) in &ends.shared {
            visit(Match::Shared(name, g));
        }
    }
}

/// `topic`'s first level and the rest after its `/`, if there is one. A byte loop rather than
/// `split_once('/')`: levels are short, and the general searcher's call cost more than the scan
/// (2 % of the broker's samples in fan-in).
fn first_level(topic: &str) -> (&str, Option<&str>) {
    match topic.bytes().position(|b| b == b'/') {
        // `/` is ASCII: both sides are on character boundaries.
        Some(i) => (&topic[..i], Some(&topic[i + 1..])),
        None => (topic, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic::matches;
    use proptest::prelude::*;
    use std::ops::Add;

    fn collect(trie: &Trie<u32, String>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |m| match m {
            Match::Plain(_, v) => out.push(v.clone()),
            Match::Shared(_, g) => out.extend(g.members.iter().map(|(_, v)| v.clone())),
        });
        out.sort();
        out
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).expect("valid filter")
    }

    #[test]
    fn basic_matching() {
        let mut t = Trie::new();
        for (i, f) in ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "+/+/c"]
            .iter()
            .enumerate()
        {
            t.insert(None, &filter(f), i as u32, f.to_string());
        }
        assert_eq!(collect(&t, "a/b"), ["#", "+/b", "a/#", "a/+", "a/b"]);
        assert_eq!(collect(&t, "a"), ["#", "a/#"]);
        assert_eq!(collect(&t, "$SYS/x"), ["$SYS/#"]);
        assert_eq!(collect(&t, "x/y/c"), ["#", "+/+/c"]);
        assert_eq!(t.len(), 7);
        assert_eq!(t.remove(None, &filter("a/#"), &2), Some("a/#".to_string()));
        assert_eq!(t.remove(None, &filter("a/#"), &2), None);
        assert_eq!(collect(&t, "a"), ["#"]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn shared_round_robin_prefers_available() {
        let mut t: Trie<u32, ()> = Trie::new();
        let g: Arc<str> = Arc::from("g");
        for k in 0..3 {
            t.insert(Some(&g), &filter("s/+"), k, ());
        }
        let mut picks = Vec::new();
        for _ in 0..6 {
            t.for_each_match("s/x", |m| {
                if let Match::Shared(_, grp) = m {
                    picks.push(grp.pick(|k, _| *k != 1).map(|(k, _)| *k));
                }
            });
        }
        assert!(picks.iter().all(|p| matches!(p, Some(0) | Some(2))));
        assert!(picks.contains(&Some(0)) && picks.contains(&Some(2)));
    }

    #[test]
    fn removal_prunes_nodes() {
        let mut t: Trie<u32, ()> = Trie::new();
        t.insert(None, &filter("a/b/c/#"), 1, ());
        t.remove(None, &filter("a/b/c/#"), &1);
        assert!(t.root.is_empty());
        // A branch shared with another filter stays; a node with its own subscription too.
        t.insert(None, &filter("a/b/c"), 1, ());
        t.insert(None, &filter("a/b/d/e"), 2, ());
        t.insert(None, &filter("a"), 3, ());
        t.remove(None, &filter("a/b/d/e"), &2);
        assert_eq!(t.len(), 2);
        let child = |n: &'_ Node<u32, ()>, level: &str| n.children.get(level).is_some();
        let b = &t.root.child("a").and_then(|a| a.child("b")).expect("a/b");
        assert!(child(b, "c") && !child(b, "d"));
        t.remove(None, &filter("a/b/c"), &1);
        let a = t.root.child("a").expect("a");
        assert!(a.children.is_empty() && a.ends.as_ref().map(|e| e.plain.len()) == Some(1));
        // A node that keeps children but loses its last subscription gives its box back.
        t.insert(None, &filter("a/b"), 4, ());
        t.insert(None, &filter("a/b/c"), 5, ());
        t.remove(None, &filter("a/b"), &4);
        let b = t.root.child("a").and_then(|a| a.child("b")).expect("a/b");
        assert!(b.ends.is_none());
        t.remove(None, &filter("a/b/c"), &5);
        t.remove(None, &filter("a"), &3);
        assert!(t.root.is_empty());
    }

    /// A node keeps its children in a list up to `small_map::FEW`, in a map beyond: both find
    /// the same, and the node goes when its last child does.
    #[test]
    fn many_children_move_to_a_map_and_stay_found() {
        let mut t: Trie<u32, ()> = Trie::new();
        let n = 3 * crate::small_map::FEW as u32;
        for i in 0..n {
            t.insert(None, &filter(&format!("d/{i}/cmd")), i, ());
        }
        t.insert(None, &filter("d/+/cmd"), n, ());
        let d = t.root.child("d").expect("d");
        assert!(matches!(d.children, SmallMap::Many(_)));
        assert!(
            matches!(d.child("0").map(|c| &c.children), Some(SmallMap::Few(l)) if l.capacity() == 1)
        );
        for i in 0..n {
            assert_eq!(collect_keys(&t, &format!("d/{i}/cmd")), vec![i, n]);
        }
        for i in (0..n).rev() {
            assert!(t.remove(None, &filter(&format!("d/{i}/cmd")), &i).is_some());
            assert_eq!(collect_keys(&t, &format!("d/{i}/cmd")), vec![n]);
        }
        t.remove(None, &filter("d/+/cmd"), &n);
        assert!(t.root.is_empty() && t.is_empty());
    }

    fn collect_keys(t: &Trie<u32, ()>, topic: &str) -> Vec<u32> {
        let mut keys = Vec::new();
        t.for_each_match(topic, |m| {
            if let Match::Plain(k, _) = m {
                keys.push(*k);
            }
        });
        keys.sort_unstable();
        keys
    }

    /// Runs `f` on a thread with a 256 KiB stack: a walk that recursed once per level would
    /// overflow it long before 100 000 levels.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no stack overflow");
    }

    fn deep(levels: usize, last: &str) -> String {
        let mut s = "a/".repeat(levels - 1);
        s.push_str(last);
        s
    }

    // postmortem: a SUBSCRIBE of ~10 000 levels followed by a matching PUBLISH overflowed the
    // broker's stack (recursive match); removing it or dropping the trie did too.
    #[test]
    fn deep_filters_use_no_stack_per_level() {
        on_small_stack(|| {
            const LEVELS: usize = 100_000;
            let exact = filter(&deep(LEVELS, "b"));
            let plus = filter(&"+/".repeat(LEVELS - 1).to_string().add("#"));
            let g: Arc<str> = Arc::from("g");
            let mut t: Trie<u32, String> = Trie::new();
            t.insert(None, &exact, 1, "exact".into());
            t.insert(None, &plus, 2, "plus".into());
            t.insert(Some(&g), &exact, 3, "shared".into());
            t.insert(None, &filter("a/#"), 4, "short".into());
            let topic = deep(LEVELS, "b");
            assert_eq!(collect(&t, &topic), ["exact", "plus", "shared", "short"]);
            assert_eq!(collect(&t, &deep(LEVELS, "c")), ["plus", "short"]);
            assert_eq!(t.remove(Some(&g), &exact, &3).as_deref(), Some("shared"));
            assert_eq!(t.remove(None, &exact, &1).as_deref(), Some("exact"));
            assert_eq!(collect(&t, &topic), ["plus", "short"]);
            assert_eq!(t.remove(None, &plus, &2).as_deref(), Some("plus"));
            assert_eq!(t.len(), 1);
            assert_eq!(collect(&t, &topic), ["short"]);
            // Only the short filter's nodes are left.
            assert_eq!(t.root.children.get("a").map(|n| n.child_count()), Some(1));
            // Dropped with a deep chain still in place.
            t.insert(None, &exact, 1, "exact".into());
            drop(t);
        });
    }

    /// A few levels that repeat (so filters overlap), and enough others that a node gets
    /// more than `small_map::FEW` children now and then.
    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just("".to_string()),
                Just("$x".to_string()),
            ],
            1 => (0..16u8).prop_map(|i| format!("w{i}")),
        ]
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(
                prop_oneof![level(), Just("+".to_string()), Just("+".to_string())],
                0..4,
            ),
            any::<bool>(),
        )
            .prop_filter_map("non-empty filter", |(mut v, hash)| {
                if hash {
                    v.push("#".to_string());
                }
                let f = v.join("/");
                if f.is_empty() {
                    None
                } else {
                    Some(f)
                }
            })
    }

    proptest! {
        /// The trie finds exactly what the reference matcher finds.
        #[test]
        fn trie_agrees_with_reference(
            filters in prop::collection::vec(filter_strategy(), 1..20),
            topics in prop::collection::vec(topic_strategy(), 1..10),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut t: Trie<u32, String> = Trie::new();
            let mut live: Vec<(u32, String)> = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                t.insert(None, &filter(f), i as u32, f.clone());
                live.push((i as u32, f.clone()));
            }
            for r in removals {
                if live.is_empty() { break; }
                let (k, f) = live.remove(r.index(live.len()));
                prop_assert!(t.remove(None, &filter(&f), &k).is_some());
            }
            for topic in &topics {
                let mut expected: Vec<String> = live
                    .iter()
                    .filter(|(_, f)| matches(f, topic))
                    .map(|(_, f)| f.clone())
                    .collect();
                expected.sort();
                prop_assert_eq!(collect(&t, topic), expected, "topic {}", topic);
            }
            for (k, f) in live {
                prop_assert!(t.remove(None, &filter(&f), &k).is_some());
            }
            prop_assert!(t.root.is_empty(), "every node pruned");
        }
    }
}

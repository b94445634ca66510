//! Topics, topic filters and the subscription trie.
//!
//! [`topic`] holds the validated newtypes ([`TopicName`], [`TopicFilter`]) that the session
//! creates at the protocol edge; [`trie`] stores subscriptions and finds every subscription a
//! topic matches. The router knows nothing of sockets, codecs or sessions: it is generic over
//! the subscriber key and the value stored with each subscription.
//!
//! Locking: the broker holds one [`trie::Trie`] behind a `parking_lot::RwLock`. Publishing takes
//! the read lock for the duration of one match (no allocation, no `.await`), so publishers run in
//! parallel; SUBSCRIBE and UNSUBSCRIBE take the write lock briefly. No other lock is taken while
//! it is held except the per-session queue locks, which never take the router lock (lock order:
//! router → session queue).

pub mod topic;
pub mod trie;

pub use topic::{matches, SubscriptionKey, TopicError, TopicFilter, TopicName};
pub use trie::{Match, SharedGroup, Trie};

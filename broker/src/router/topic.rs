//! Topic names and topic filters, validated once at the edge (section 4.7).

use std::fmt;
use std::sync::Arc;

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length topic or filter.
    #[error("[MQTT-4.7.3-1] topic is empty")]
    Empty,
    /// A topic name containing `+` or `#`.
    #[error("[MQTT-3.3.2-2] topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level.
    #[error("[MQTT-4.7.1-1] wildcard not occupying a whole level (or '#' not last)")]
    BadWildcard,
    /// `$share/` without a valid group name or filter.
    #[error("[MQTT-4.8.2-1] malformed shared subscription")]
    BadShare,
}

/// A topic name a message is published to: non-empty, no wildcards. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `s` as a topic name.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(TopicName(Arc::from(s)))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The group of EMQX's `$queue/<filter>` subscriptions (`$share/$queue/<filter>`).
pub const QUEUE_GROUP: &str = "$queue";

/// A subscription filter, possibly with `+` / `#` wildcards. Shared subscriptions
/// (`$share/<group>/<filter>`) are split into a [`SubscriptionKey`] by [`TopicFilter::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

/// What a subscription is within its session: its share group, if any, and its filter.
/// `a/b` and `$share/g/a/b` are two subscriptions; `$queue/a/b` is `$share/$queue/a/b`.
/// Displays as the client would write it (`$share/<group>/<filter>` for a shared one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionKey {
    /// The share group of a shared subscription.
    pub group: Option<Arc<str>>,
    /// The filter (inside the share).
    pub filter: TopicFilter,
}

impl SubscriptionKey {
    /// A plain subscription to `filter`.
    pub fn plain(filter: TopicFilter) -> SubscriptionKey {
        SubscriptionKey {
            group: None,
            filter,
        }
    }

    /// Parses a filter as sent in SUBSCRIBE ([`TopicFilter::parse`]).
    pub fn parse(s: &str) -> Result<SubscriptionKey, TopicError> {
        TopicFilter::parse(s)
    }

    /// True for a shared subscription.
    pub fn is_shared(&self) -> bool {
        self.group.is_some()
    }
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(g) => write!(f, "$share/{g}/{}", self.filter),
            None => fmt::Display::fmt(&self.filter, f),
        }
    }
}

impl TopicFilter {
    /// Validates `s` as a plain (non-shared) topic filter.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if level.contains('#') && (level != "#" || !last) {
                return Err(TopicError::BadWildcard);
            }
            if level.contains('+') && level != "+" {
                return Err(TopicError::BadWildcard);
            }
        }
        Ok(TopicFilter(Arc::from(s)))
    }

    /// Parses a filter as sent in SUBSCRIBE: a plain filter, `$share/<group>/<filter>`, or
    /// EMQX's `$queue/<filter>` (the group `$queue`).
    pub fn parse(s: &str) -> Result<SubscriptionKey, TopicError> {
        let shared = |group: &str, filter: &str| -> Result<SubscriptionKey, TopicError> {
            Ok(SubscriptionKey {
                group: Some(Arc::from(group)),
                filter: TopicFilter::new(filter)?,
            })
        };
        // EMQX's `$queue/<filter>`: one shared group, named `$queue`.
        if let Some(filter) = s.strip_prefix("$queue/") {
            if filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            return shared(QUEUE_GROUP, filter);
        }
        match s.strip_prefix("$share/") {
            Some(rest) => {
                let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
                if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                    return Err(TopicError::BadShare);
                }
                shared(group, filter)
            }
            None if s == "$share" => Err(TopicError::BadShare),
            None => Ok(SubscriptionKey::plain(TopicFilter::new(s)?)),
        }
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the filter contains `+` or `#`.
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(['+', '#'])
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reference matcher: does `filter` match `topic` (section 4.7)? The trie's tests use it
/// as the model. It lives in `plugin-api` so plugins match topics exactly as the broker does.
pub use plugin_api::topic_matches as matches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validation() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "$SYS/#",
            "sport/+/player1",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##", "#/"] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_parse() {
        let SubscriptionKey {
            group: g,
            filter: f,
        } = TopicFilter::parse("$share/g1/a/+").expect("valid share");
        assert_eq!(g.as_deref(), Some("g1"));
        assert_eq!(f.as_str(), "a/+");
        assert!(TopicFilter::parse("$share/g1").is_err());
        assert!(TopicFilter::parse("$share//a").is_err());
        assert!(TopicFilter::parse("$share/g+/a").is_err());
        assert!(TopicFilter::parse("$share/g/").is_err());
        let key = TopicFilter::parse("$queue/jobs/#").expect("valid queue");
        assert_eq!(
            key.to_string(),
            "$share/$queue/jobs/#",
            "stored as the group $queue"
        );
        assert_eq!(
            TopicFilter::parse("$share/$queue/jobs/#").expect("valid share"),
            key
        );
        let (g, f) = (key.group, key.filter);
        assert_eq!((g.as_deref(), f.as_str()), (Some("$queue"), "jobs/#"));
        assert!(TopicFilter::parse("$queue/").is_err());
    }

    #[test]
    fn reference_matcher() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor", "$SYS/monitor"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
    }
}

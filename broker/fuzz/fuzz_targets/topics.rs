//! Topic names, filters and the subscription trie against a model: arbitrary operations
//! (subscribe, unsubscribe, match) on a small alphabet of levels, so that filters and topics
//! collide often. The trie must find exactly what the reference matcher finds, and never
//! panic or recurse, whatever the depth.
#![no_main]

use std::sync::Arc;

use broker::router::{matches, Match, TopicFilter, TopicName, Trie};
use libfuzzer_sys::fuzz_target;

/// Turns bytes into a topic string over a small alphabet (levels `a`, `b`, `$x`, empty, `+`,
/// `#`), separated by `/`.
fn text(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push_str(match b % 7 {
            0 => "a",
            1 => "b",
            2 => "$x",
            3 => "",
            4 => "+",
            5 => "#",
            _ => "a",
        });
    }
    s
}

fuzz_target!(|data: &[u8]| {
    // Raw strings first: validation never panics.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = TopicName::new(s);
        let _ = TopicFilter::parse(s);
    }
    let group: Arc<str> = Arc::from("g");
    let mut trie: Trie<u8, ()> = Trie::new();
    let mut model: Vec<(u8, bool, String)> = Vec::new();
    // Operations: [op, key, len, levels…]
    let mut rest = data;
    while let [op, key, len, tail @ ..] = rest {
        let n = (*len as usize % 8).min(tail.len());
        let (levels, next) = tail.split_at(n);
        rest = next;
        // Now and then a very deep filter or topic.
        let s = if *len == 255 {
            "a/".repeat(20_000) + &text(levels)
        } else {
            text(levels)
        };
        match op % 3 {
            0 => {
                let Ok(filter) = TopicFilter::new(&s) else {
                    continue;
                };
                let shared = key % 2 == 1;
                let g = shared.then_some(&group);
                if trie.insert(g, &filter, *key, ()).is_none() {
                    model.push((*key, shared, s));
                }
            }
            1 => {
                let Ok(filter) = TopicFilter::new(&s) else {
                    continue;
                };
                let shared = key % 2 == 1;
                let g = shared.then_some(&group);
                let removed = trie.remove(g, &filter, key).is_some();
                let at = model
                    .iter()
                    .position(|(k, sh, f)| k == key && *sh == shared && *f == s);
                assert_eq!(removed, at.is_some(), "remove {s:?}");
                if let Some(at) = at {
                    model.remove(at);
                }
            }
            _ => {
                let Ok(topic) = TopicName::new(&s) else {
                    continue;
                };
                let mut found = Vec::new();
                trie.for_each_match(topic.as_str(), |m| match m {
                    Match::Plain(k, _) => found.push((*k, false)),
                    Match::Shared(_, g) => found.extend(g.members.iter().map(|(k, _)| (*k, true))),
                });
                found.sort();
                let mut expected: Vec<(u8, bool)> = model
                    .iter()
                    .filter(|(_, _, f)| matches(f, topic.as_str()))
                    .map(|(k, sh, _)| (*k, *sh))
                    .collect();
                expected.sort();
                assert_eq!(found, expected, "match {topic}");
            }
        }
    }
    assert_eq!(trie.len(), model.len());
});

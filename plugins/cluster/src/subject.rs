//! MQTT topics and filters as NATS subjects, losslessly.
//!
//! NATS subjects are tokens separated by `.`; a token may not be empty or hold whitespace, and
//! `*` (one token) and `>` (one or more trailing tokens) are wildcards. MQTT topic levels may
//! hold any UTF-8 but `+`, `#` and U+0000 — dots, `*`, `>`, spaces, `%`, non-ASCII — and may be
//! empty (`a//b`). So each level is escaped into a token of the characters `A–Z a–z 0–9 _ -`
//! with every other byte written `=XX` (upper-case hex), and an empty level is the token `=`
//! alone (which no escaped level can be). The result is plain ASCII, never holds a NATS
//! wildcard by accident, and decodes back to exactly the topic it came from. `=` rather than
//! `%` because the same text must also be a JetStream key-value key (retained messages and
//! client ids are kept in KV buckets), and KV keys allow only `-/_=.A-Za-z0-9`.
//!
//! Topics are rooted so that MQTT's `$` rule holds in NATS too: a topic whose first level
//! starts with `$` ([MQTT-4.7.2-1]: not matched by a filter starting with a wildcard) lives
//! under `<prefix>.s`, every other topic under `<prefix>.u`. A filter starting with `+` or `#`
//! becomes subjects under `<prefix>.u` only.
//!
//! Filters: `+` becomes `*`; `#` becomes `>` **and** the subject of its parent level, since
//! MQTT's `a/#` also matches `a` ([MQTT-4.7.1-2]) while NATS's `a.>` does not. A filter is
//! therefore one or two subjects ([`filter_subjects`]). With these rules a NATS subject
//! matches an encoded topic exactly when the MQTT filter matches the topic (property-tested
//! below against `plugin_api::topic_matches`).

/// The first token of every subject the cluster uses for messages.
pub const DEFAULT_PREFIX: &str = "mqtt";

/// Appends `level` escaped as one NATS token.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('=');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0F)] as char);
        }
    }
}

/// `text` (a client id, a node name, a share group and filter) as one token, escaped like a
/// level: valid as a NATS token, a queue group name and a key-value key, and distinct for
/// distinct texts.
pub fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    push_level(&mut out, text);
    out
}

/// The root of `first_level`'s subjects: `s` for `$` topics, `u` for the others.
fn root(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        "s"
    } else {
        "u"
    }
}

/// The NATS subject a message published to MQTT `topic` is sent on.
pub fn topic_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 3 + topic.len() * 2);
    out.push_str(prefix);
    out.push('.');
    out.push_str(root(topic.split('/').next().unwrap_or("")));
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// The NATS subjects whose union receives exactly the messages MQTT `filter` matches: one, or
/// two for a filter ending in `#` (its parent level too). `filter` is a valid MQTT filter
/// without a `$share/` prefix.
pub fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut base = String::with_capacity(prefix.len() + 3 + filter.len() * 2);
    base.push_str(prefix);
    base.push('.');
    // A filter starting with a wildcard never matches `$` topics ([MQTT-4.7.2-1]).
    base.push_str(root(levels[0]));
    let mut parent = None;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" => {
                // `a/#` matches `a` itself; a lone `#` has no parent level to match.
                if i > 0 {
                    parent = Some(base.clone());
                }
                base.push_str(".>");
            }
            "+" => base.push_str(".*"),
            level => {
                base.push('.');
                push_level(&mut base, level);
            }
        }
    }
    let mut subjects = vec![base];
    subjects.extend(parent);
    subjects
}

/// Why a subject is not one [`topic_subject`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotATopic(pub String);

impl std::fmt::Display for NotATopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not an MQTT topic subject: {}", self.0)
    }
}

impl std::error::Error for NotATopic {}

/// The MQTT topic a subject made by [`topic_subject`] stands for.
pub fn subject_topic(prefix: &str, subject: &str) -> Result<String, NotATopic> {
    let bad = || NotATopic(subject.to_owned());
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(bad)?;
    let (root_token, levels) = rest.split_once('.').ok_or_else(bad)?;
    let mut bytes = Vec::with_capacity(levels.len());
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "=" {
            continue;
        }
        let mut raw = token.bytes();
        while let Some(b) = raw.next() {
            if b != b'=' {
                bytes.push(b);
                continue;
            }
            let hex = [raw.next().ok_or_else(bad)?, raw.next().ok_or_else(bad)?];
            let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
        }
    }
    let topic = String::from_utf8(bytes).map_err(|_| bad())?;
    if root_token != root(topic.split('/').next().unwrap_or("")) {
        return Err(bad());
    }
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// NATS's own matching: `*` is one token, `>` one or more trailing tokens.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut s = subject.split('.');
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A NATS subject must be non-empty tokens of visible ASCII without wildcards of its own;
    /// these must also be valid JetStream KV keys (`-/_=.A-Za-z0-9`).
    fn is_plain_subject(s: &str) -> bool {
        s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
        })
    }

    #[test]
    fn awkward_levels_round_trip() {
        for topic in [
            "a/b",
            "a//b",
            "/",
            "//",
            "a.b/c*d/>/e f/100%/ü/日本",
            "$SYS/broker/uptime",
            "%",
            "=",
            "=3D",
            "-_-",
        ] {
            let s = topic_subject(DEFAULT_PREFIX, topic);
            assert!(is_plain_subject(&s), "{topic} -> {s}");
            assert_eq!(subject_topic(DEFAULT_PREFIX, &s).as_deref(), Ok(topic));
        }
        assert_eq!(topic_subject("mqtt", "a//b.c"), "mqtt.u.a.=.b=2Ec");
        assert_eq!(topic_subject("mqtt", "$SYS/x"), "mqtt.s.=24SYS.x");
        assert_eq!(topic_subject("mqtt", "100%/a=b"), "mqtt.u.100=25.a=3Db");
        assert_eq!(filter_subjects("mqtt", "a/#"), ["mqtt.u.a.>", "mqtt.u.a"]);
        assert_eq!(filter_subjects("mqtt", "#"), ["mqtt.u.>"]);
        assert_eq!(filter_subjects("mqtt", "+/x"), ["mqtt.u.*.x"]);
        assert!(subject_topic("mqtt", "mqtt.u.=2").is_err());
        assert!(subject_topic("mqtt", "mqtt.s.a").is_err(), "wrong root");
        assert!(subject_topic("other", "mqtt.u.a").is_err());
    }

    /// One MQTT level: often awkward characters, sometimes empty.
    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c]{1,2}",
            "[a.*> %=$ü_-]{1,4}",
            "\\PC{1,3}".prop_map(|s| s.replace(['+', '#', '/', '\0'], "x")),
        ]
    }

    /// A valid topic name: at least one character ([MQTT-4.7.3-1]).
    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5)
            .prop_map(|l| l.join("/"))
            .prop_filter("not empty", |t| !t.is_empty())
    }

    /// A filter over the same small alphabet, with `+` and a trailing `#`.
    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("a filter has a level", |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                let f = levels.join("/");
                (!f.is_empty()).then_some(f)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn every_topic_round_trips_through_a_plain_subject(t in topic()) {
            let s = topic_subject(DEFAULT_PREFIX, &t);
            prop_assert!(is_plain_subject(&s), "{} -> {}", t, s);
            prop_assert_eq!(subject_topic(DEFAULT_PREFIX, &s), Ok(t));
        }

        #[test]
        fn nats_interest_matches_exactly_what_the_mqtt_filter_matches(
            f in filter(),
            t in topic(),
        ) {
            let mqtt = plugin_api::topic_matches(&f, &t);
            let subject = topic_subject(DEFAULT_PREFIX, &t);
            let nats = filter_subjects(DEFAULT_PREFIX, &f)
                .iter()
                .any(|p| nats_matches(p, &subject));
            prop_assert_eq!(mqtt, nats, "filter {:?} topic {:?} subject {}", f, t, subject);
        }
    }
}

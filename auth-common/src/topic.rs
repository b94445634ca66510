//! Topic-filter rules for ACLs.
//!
//! A rule names a filter (`devices/+/temp`, `alerts/#`). For a PUBLISH the question is whether
//! the topic matches it ([`plugin_api::topic_matches`]). For a SUBSCRIBE it is whether every
//! topic the client's filter can match is allowed: the rule must [`covers`] the filter, and a
//! denying rule that [`overlaps`] it refuses it. Filters starting with a wildcard never match
//! `$`-topics (MQTT 4.7.2), here as in routing.

/// Whether every topic matched by `filter` is also matched by `rule`.
pub fn covers(rule: &str, filter: &str) -> bool {
    let r: Vec<&str> = rule.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    if f[0].starts_with('$') && (r[0] == "+" || r[0] == "#") {
        return false;
    }
    for (i, level) in r.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        let Some(sub) = f.get(i) else {
            return false;
        };
        match (*level, *sub) {
            (_, "#") => return false,
            ("+", _) => {}
            (lit, sub) if lit == sub => {}
            _ => return false,
        }
    }
    f.len() == r.len()
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    let x: Vec<&str> = a.split('/').collect();
    let y: Vec<&str> = b.split('/').collect();
    let dollar = |p: &[&str], q: &[&str]| p[0].starts_with('$') && (q[0] == "+" || q[0] == "#");
    if dollar(&x, &y) || dollar(&y, &x) {
        return false;
    }
    let mut i = 0;
    loop {
        match (x.get(i), y.get(i)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (Some(p), Some(q)) => {
                if *p != "+" && *q != "+" && p != q {
                    return false;
                }
            }
            (None, None) => return true,
            // One ended: `a/#` also matches `a`, so only a `#` right after the end overlaps.
            (None, Some(next)) | (Some(next), None) => return *next == "#",
        }
        i += 1;
    }
}

/// `pattern` with `%c` replaced by the client id and `%u` by the user name. `None` when the
/// pattern needs a value the client does not have, or when a value holds `+`, `#` or `/`
/// (which would widen the rule, so such a client gets no pattern rule).
pub fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        match tail.chars().next() {
            Some('c') => {
                if unsafe_value(client_id) {
                    return None;
                }
                out.push_str(client_id);
                rest = &tail[1..];
            }
            Some('u') => {
                let u = username?;
                if unsafe_value(u) {
                    return None;
                }
                out.push_str(u);
                rest = &tail[1..];
            }
            _ => {
                out.push('%');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering() {
        for (rule, filter) in [
            ("#", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/#"),
            ("a/#", "a/+/c"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("+/+", "x/y"),
            ("a/b", "a/b"),
            ("$SYS/#", "$SYS/x"),
        ] {
            assert!(covers(rule, filter), "{rule} covers {filter}");
        }
        for (rule, filter) in [
            ("a/+", "a/#"),
            ("a/b", "a/+"),
            ("a/+", "a/b/c"),
            ("a/b/c", "a/b"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a", "a/#"),
        ] {
            assert!(!covers(rule, filter), "{rule} does not cover {filter}");
        }
    }

    #[test]
    fn overlapping() {
        for (a, b) in [
            ("#", "a"),
            ("a/+", "+/b"),
            ("a", "a/#"),
            ("a/+/c", "a/b/#"),
            ("secret/#", "#"),
        ] {
            assert!(overlaps(a, b) && overlaps(b, a), "{a} / {b}");
        }
        for (a, b) in [
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("#", "$SYS/#"),
            ("a/b", "a/b/c"),
        ] {
            assert!(!overlaps(a, b) && !overlaps(b, a), "{a} / {b}");
        }
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            substitute("devices/%c/#", "d1", None).as_deref(),
            Some("devices/d1/#")
        );
        assert_eq!(
            substitute("u/%u/%c", "c", Some("bob")).as_deref(),
            Some("u/bob/c")
        );
        assert_eq!(substitute("u/%u", "c", None), None);
        assert_eq!(substitute("d/%c", "evil/#", None), None);
        assert_eq!(substitute("d/%c", "a+b", None), None);
        assert_eq!(substitute("100%/x", "c", None).as_deref(), Some("100%/x"));
    }
}

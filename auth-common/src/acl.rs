//! EMQ's ACL rows and how one is matched, for the database plugins (auth_mysql, auth_pgsql).
//!
//! A row is `allow, ipaddr, username, clientid, access, topic`:
//! * **who**: `username = '$all'` matches everyone; otherwise every who-column that is not
//!   NULL (or empty) must match — `ipaddr` as an address or a CIDR block, `username` and
//!   `clientid` exactly. A row whose who-columns are all NULL matches everyone.
//! * **access**: 1 subscribe, 2 publish, 3 both; any other value matches nothing.
//! * **topic**: a filter matched against the topic (or the subscription filter). A level that is
//!   exactly `%u` or `%c` stands for the client's user name or client id; a name containing
//!   `/`, `+` or `#` never fills a level (it would widen the rule). The prefix `eq ` asks for
//!   an exact textual match instead (`eq #` only matches a subscription to `#` itself).
//! * **allow**: 1 allows, 0 denies.
//!
//! Rows are evaluated in the order the query returns them; the first that matches decides.

use std::net::IpAddr;

use plugin_api::{topic_matches, Access};

/// One row of the ACL query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclRow {
    /// 1 = allow, 0 = deny.
    pub allow: Option<i64>,
    /// Address or CIDR block.
    pub ipaddr: Option<String>,
    /// User name, or `$all`.
    pub username: Option<String>,
    /// Client id.
    pub clientid: Option<String>,
    /// 1 subscribe, 2 publish, 3 both.
    pub access: Option<i64>,
    /// Topic filter (`eq ` prefix: exact).
    pub topic: Option<String>,
}

/// The client and action being checked.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// User name ("" when none).
    pub username: &'a str,
    /// Client id.
    pub client_id: &'a str,
    /// Peer address.
    pub peer_ip: &'a str,
    /// Subscribe or publish.
    pub access: Access,
    /// Topic name (publish) or filter (subscribe).
    pub topic: &'a str,
}

impl<'a> Subject<'a> {
    /// The subject of an ACL request.
    pub fn of(request: &'a plugin_api::AclRequest) -> Subject<'a> {
        Subject {
            username: request.client.username.as_ref().map_or("", |u| u.as_str()),
            client_id: request.client.client_id.as_str(),
            peer_ip: request.client.peer_ip.as_str(),
            access: request.access,
            topic: request.topic.as_str(),
        }
    }
}

/// A row's verdict when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `allow = 1`.
    Allow,
    /// `allow = 0`.
    Deny,
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl AclRow {
    /// The row's verdict if it applies to `s`, `None` if it does not.
    pub fn check(&self, s: &Subject<'_>) -> Option<Verdict> {
        if !self.who_matches(s) {
            return None;
        }
        let wanted = match s.access {
            Access::Subscribe => 1,
            Access::Publish => 2,
        };
        match self.access {
            Some(a) if a == wanted || a == 3 => {}
            _ => return None,
        }
        let rule = self.topic.as_deref()?;
        if !topic_applies(rule, s) {
            return None;
        }
        match self.allow {
            Some(1) => Some(Verdict::Allow),
            Some(0) => Some(Verdict::Deny),
            _ => None,
        }
    }

    fn who_matches(&self, s: &Subject<'_>) -> bool {
        if present(&self.username) == Some("$all") {
            return true;
        }
        if let Some(ip) = present(&self.ipaddr) {
            if !ip_matches(ip.trim(), s.peer_ip) {
                return false;
            }
        }
        if let Some(u) = present(&self.username) {
            if u != s.username {
                return false;
            }
        }
        if let Some(c) = present(&self.clientid) {
            if c != s.client_id {
                return false;
            }
        }
        true
    }
}

fn topic_applies(rule: &str, s: &Subject<'_>) -> bool {
    if let Some(exact) = rule.strip_prefix("eq ") {
        return exact == s.topic;
    }
    let fits = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#']);
    let mut filter = String::with_capacity(rule.len() + 16);
    for (i, level) in rule.split('/').enumerate() {
        if i > 0 {
            filter.push('/');
        }
        match level {
            "%u" if fits(s.username) => filter.push_str(s.username),
            "%c" if fits(s.client_id) => filter.push_str(s.client_id),
            "%u" | "%c" => return false,
            other => filter.push_str(other),
        }
    }
    topic_matches(&filter, s.topic)
}

/// Whether `peer` is `rule` (an address) or inside it (a CIDR block `addr/len`).
pub fn ip_matches(rule: &str, peer: &str) -> bool {
    let Ok(peer) = peer.parse::<IpAddr>() else {
        return false;
    };
    let peer = canonical(peer);
    let Some((net, len)) = rule.split_once('/') else {
        return rule.parse::<IpAddr>().is_ok_and(|r| canonical(r) == peer);
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (canonical(net), peer) {
        (IpAddr::V4(n), IpAddr::V4(p)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(p) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(p)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(p) & mask
        }
        _ => false,
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The first matching row's verdict.
pub fn decide(rows: &[AclRow], s: &Subject<'_>) -> Option<Verdict> {
    rows.iter().find_map(|r| r.check(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(allow: i64, who: (&str, &str, &str), access: i64, topic: &str) -> AclRow {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        AclRow {
            allow: Some(allow),
            ipaddr: opt(who.0),
            username: opt(who.1),
            clientid: opt(who.2),
            access: Some(access),
            topic: Some(topic.to_owned()),
        }
    }

    fn subject<'a>(access: Access, topic: &'a str) -> Subject<'a> {
        Subject {
            username: "alice",
            client_id: "dev1",
            peer_ip: "10.1.2.3",
            access,
            topic,
        }
    }

    #[test]
    fn who_columns_are_anded() {
        let s = subject(Access::Publish, "a");
        assert_eq!(
            row(1, ("", "alice", "dev1"), 2, "a").check(&s),
            Some(Verdict::Allow)
        );
        assert_eq!(row(1, ("", "alice", "dev2"), 2, "a").check(&s), None);
        assert_eq!(
            row(1, ("10.1.0.0/16", "alice", ""), 2, "a").check(&s),
            Some(Verdict::Allow)
        );
        assert_eq!(row(1, ("10.2.0.0/16", "alice", ""), 2, "a").check(&s), None);
        assert_eq!(
            row(0, ("10.9.9.9", "$all", ""), 2, "a").check(&s),
            Some(Verdict::Deny)
        );
        assert_eq!(row(0, ("", "", ""), 2, "a").check(&s), Some(Verdict::Deny));
    }

    #[test]
    fn access_values() {
        let sub = subject(Access::Subscribe, "a");
        let publ = subject(Access::Publish, "a");
        let r1 = row(1, ("", "$all", ""), 1, "a");
        let r2 = row(1, ("", "$all", ""), 2, "a");
        let r3 = row(1, ("", "$all", ""), 3, "a");
        let r9 = row(1, ("", "$all", ""), 9, "a");
        assert_eq!(
            (r1.check(&sub), r1.check(&publ)),
            (Some(Verdict::Allow), None)
        );
        assert_eq!(
            (r2.check(&sub), r2.check(&publ)),
            (None, Some(Verdict::Allow))
        );
        assert!(r3.check(&sub).is_some() && r3.check(&publ).is_some());
        assert!(r9.check(&sub).is_none() && r9.check(&publ).is_none());
    }

    #[test]
    fn topic_placeholders_and_eq() {
        let all = ("", "$all", "");
        let s = subject(Access::Subscribe, "users/alice/in");
        assert!(row(1, all, 1, "users/%u/#").check(&s).is_some());
        assert!(row(1, all, 1, "users/%c/#").check(&s).is_none());
        assert!(row(1, all, 1, "users/+/in").check(&s).is_some());
        let hash = subject(Access::Subscribe, "#");
        assert!(row(1, all, 1, "eq #").check(&hash).is_some());
        assert!(
            row(1, all, 1, "eq #").check(&s).is_none(),
            "eq is not a filter"
        );
        // A user name with wildcard characters never fills a level.
        let sneaky = Subject {
            username: "+",
            ..subject(Access::Subscribe, "users/bob/in")
        };
        assert!(row(1, all, 1, "users/%u/in").check(&sneaky).is_none());
    }

    #[test]
    fn first_match_decides() {
        let rows = [
            row(0, ("", "$all", ""), 1, "secret/#"),
            row(1, ("", "$all", ""), 3, "#"),
        ];
        assert_eq!(
            decide(&rows, &subject(Access::Subscribe, "secret/x")),
            Some(Verdict::Deny)
        );
        assert_eq!(
            decide(&rows, &subject(Access::Subscribe, "open/x")),
            Some(Verdict::Allow)
        );
        assert_eq!(
            decide(&rows[..1], &subject(Access::Subscribe, "open/x")),
            None
        );
    }

    #[test]
    fn cidr_and_addresses() {
        assert!(ip_matches("127.0.0.1", "127.0.0.1"));
        assert!(ip_matches("0.0.0.0/0", "8.8.8.8"));
        assert!(ip_matches("192.168.1.0/24", "::ffff:192.168.1.77"));
        assert!(!ip_matches("192.168.1.0/24", "192.168.2.1"));
        assert!(ip_matches("fd00::/8", "fd12::1"));
        assert!(!ip_matches("fd00::/8", "fe80::1"));
        assert!(!ip_matches("10.0.0.0/33", "10.0.0.1"));
        assert!(!ip_matches("garbage", "10.0.0.1"));
    }
}

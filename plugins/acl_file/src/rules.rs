//! ACL rules from a file, in either of two syntaxes (told apart by the first rule):
//!
//! **Mosquitto's `acl_file`**:
//!
//! ```text
//! # rules before the first `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite sensors/#
//! topic deny sensors/secret/#
//! pattern readwrite devices/%c/#     # every client, %c = client id, %u = user name
//! ```
//!
//! Access is `read`, `write`, `readwrite` (the default) or `deny`. A `deny` rule that applies
//! wins; otherwise an allowing rule with the access asked for allows; otherwise no rule
//! matched. `read` covers SUBSCRIBE (which Mosquitto 2.0 does not check): a subscription is
//! allowed when one `read` rule covers every topic the filter can match and no `deny` rule
//! overlaps it — messages are not checked again at delivery, so a filter that could reach a
//! denied topic (`sensors/+/temp` against `deny sensors/secret/#`) is refused as a whole.
//!
//! **EMQ's `acl.conf`** (Erlang terms, one per rule, first match wins):
//!
//! ```text
//! {allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
//! {allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
//! {deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
//! {allow, all}.
//! ```
//!
//! Who: `all`, `{user, U}`, `{client, C}` (or `clientid`), `{ipaddr, "CIDR"}`; access:
//! `publish`, `subscribe`, `pubsub`; topics: filters with `%u` / `%c`, or `{eq, T}` for the exact
//! string. A SUBSCRIBE matches a rule whose filter covers it.

use std::net::IpAddr;

use auth_common::topic::{covers, overlaps, substitute};
use plugin_api::topic_matches;

/// Publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// PUBLISH to a topic.
    Publish,
    /// SUBSCRIBE to a filter.
    Subscribe,
}

/// The client asking.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// User name, if it sent one.
    pub username: Option<&'a str>,
    /// Client id.
    pub client_id: &'a str,
    /// Peer address.
    pub ip: Option<IpAddr>,
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the rule at this line.
    Allow(usize),
    /// Denied by the rule at this line.
    Deny(usize),
    /// No rule applies.
    NoMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MosqAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MosqOwner {
    Anonymous,
    User(String),
    Pattern,
}

#[derive(Debug, Clone)]
struct MosqRule {
    line: usize,
    owner: MosqOwner,
    access: MosqAccess,
    filter: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EmqWho {
    All,
    User(String),
    Client(String),
    Net(IpAddr, u8),
}

#[derive(Debug, Clone)]
enum EmqTopic {
    Filter(String),
    Eq(String),
}

#[derive(Debug, Clone)]
struct EmqRule {
    line: usize,
    allow: bool,
    who: EmqWho,
    /// None = publish and subscribe.
    access: Option<Want>,
    /// Empty with `all_topics`.
    topics: Vec<EmqTopic>,
    all_topics: bool,
}

/// A parsed rules file.
#[derive(Debug, Clone)]
pub struct Rules(Syntax);

#[derive(Debug, Clone)]
enum Syntax {
    Mosquitto(Vec<MosqRule>),
    Emq(Vec<EmqRule>),
}

/// A syntax error: line (1-based) and why.
pub type ParseError = (usize, String);

impl Rules {
    /// Parses a file in either syntax.
    pub fn parse(text: &str) -> Result<Rules, ParseError> {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('%'));
        match first {
            Some(l) if l.starts_with('{') => parse_emq(text).map(|r| Rules(Syntax::Emq(r))),
            _ => parse_mosquitto(text).map(|r| Rules(Syntax::Mosquitto(r))),
        }
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        match &self.0 {
            Syntax::Mosquitto(r) => r.len(),
            Syntax::Emq(r) => r.len(),
        }
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `mosquitto` or `emq`.
    pub fn syntax(&self) -> &'static str {
        match &self.0 {
            Syntax::Mosquitto(_) => "mosquitto",
            Syntax::Emq(_) => "emq",
        }
    }

    /// Decides whether `who` may `want` on `topic` (a topic name, or a filter to subscribe to).
    pub fn decide(&self, who: Who<'_>, want: Want, topic: &str) -> Verdict {
        match &self.0 {
            Syntax::Mosquitto(rules) => decide_mosquitto(rules, who, want, topic),
            Syntax::Emq(rules) => decide_emq(rules, who, want, topic),
        }
    }
}

fn parse_mosquitto(text: &str) -> Result<Vec<MosqRule>, ParseError> {
    let mut rules = Vec::new();
    let mut owner = MosqOwner::Anonymous;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (word, rest) = l.split_once([' ', '\t']).unwrap_or((l, ""));
        let rest = rest.trim();
        match word {
            "user" => {
                if rest.is_empty() {
                    return Err((line, "`user` needs a user name".into()));
                }
                owner = MosqOwner::User(rest.to_owned());
            }
            "topic" | "pattern" => {
                let (access, filter) = match rest.split_once([' ', '\t']) {
                    Some((a @ ("read" | "write" | "readwrite" | "deny"), f)) => (a, f.trim()),
                    _ => ("readwrite", rest),
                };
                if filter.is_empty() {
                    return Err((line, format!("`{word}` needs a topic filter")));
                }
                if let Err(e) = check_filter(filter) {
                    return Err((line, e));
                }
                let access = match access {
                    "read" => MosqAccess::Read,
                    "write" => MosqAccess::Write,
                    "deny" => MosqAccess::Deny,
                    _ => MosqAccess::ReadWrite,
                };
                rules.push(MosqRule {
                    line,
                    owner: if word == "pattern" {
                        MosqOwner::Pattern
                    } else {
                        owner.clone()
                    },
                    access,
                    filter: filter.to_owned(),
                });
            }
            other => {
                return Err((
                    line,
                    format!("unknown keyword {other:?} (expected user, topic or pattern)"),
                ))
            }
        }
    }
    Ok(rules)
}

/// A filter must be a valid MQTT filter: `#` last and alone in its level, `+` alone.
fn check_filter(filter: &str) -> Result<(), String> {
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let bad_hash = level.contains('#') && (*level != "#" || i + 1 != levels.len());
        let bad_plus = level.contains('+') && *level != "+";
        if bad_hash || bad_plus {
            return Err(format!("{filter:?} is not a valid topic filter"));
        }
    }
    Ok(())
}

fn decide_mosquitto(rules: &[MosqRule], who: Who<'_>, want: Want, topic: &str) -> Verdict {
    // The rules that apply to this client, with their filters after substitution.
    let applicable = rules.iter().filter_map(|r| {
        let filter = match &r.owner {
            MosqOwner::Anonymous if who.username.is_none() => r.filter.clone(),
            MosqOwner::User(u) if who.username == Some(u.as_str()) => r.filter.clone(),
            MosqOwner::Pattern => substitute(&r.filter, who.client_id, who.username)?,
            _ => return None,
        };
        Some((r, filter))
    });
    let mut allow = None;
    for (r, filter) in applicable {
        match (r.access, want) {
            (MosqAccess::Deny, Want::Publish) if topic_matches(&filter, topic) => {
                return Verdict::Deny(r.line)
            }
            (MosqAccess::Deny, Want::Subscribe) if overlaps(&filter, topic) => {
                return Verdict::Deny(r.line)
            }
            (MosqAccess::Write | MosqAccess::ReadWrite, Want::Publish)
                if allow.is_none() && topic_matches(&filter, topic) =>
            {
                allow = Some(r.line)
            }
            (MosqAccess::Read | MosqAccess::ReadWrite, Want::Subscribe)
                if allow.is_none() && covers(&filter, topic) =>
            {
                allow = Some(r.line)
            }
            _ => {}
        }
    }
    allow.map_or(Verdict::NoMatch, Verdict::Allow)
}

// ---------------------------------------------------------------- EMQ acl.conf

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Atom(String),
    Str(String),
    Tuple(Vec<Term>),
    List(Vec<Term>),
}

struct Lexer<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
}

impl Lexer<'_> {
    fn skip_space(&mut self) {
        while let Some(&c) = self.text.get(self.at) {
            match c {
                b'\n' => {
                    self.line += 1;
                    self.at += 1;
                }
                b'%' => {
                    while self.text.get(self.at).is_some_and(|c| *c != b'\n') {
                        self.at += 1;
                    }
                }
                c if c.is_ascii_whitespace() => self.at += 1,
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        match self.peek() {
            Some(x) if x == c => {
                self.at += 1;
                Ok(())
            }
            other => Err((
                self.line,
                format!(
                    "expected {:?}, found {}",
                    c as char,
                    other.map_or("the end".to_owned(), |o| format!("{:?}", o as char))
                ),
            )),
        }
    }

    fn term(&mut self) -> Result<Term, ParseError> {
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                Ok(Term::Tuple(self.sequence(b'}')?))
            }
            Some(b'[') => {
                self.at += 1;
                Ok(Term::List(self.sequence(b']')?))
            }
            Some(b'"') => {
                self.at += 1;
                let start = self.at;
                while self.text.get(self.at).is_some_and(|c| *c != b'"') {
                    if self.text[self.at] == b'\n' {
                        self.line += 1;
                    }
                    self.at += 1;
                }
                if self.at >= self.text.len() {
                    return Err((self.line, "unterminated string".into()));
                }
                let s = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                self.at += 1;
                Ok(Term::Str(s))
            }
            Some(b'\'') => {
                self.at += 1;
                let start = self.at;
                while self.text.get(self.at).is_some_and(|c| *c != b'\'') {
                    self.at += 1;
                }
                let s = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                self.at += 1;
                Ok(Term::Atom(s))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.at;
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.at += 1;
                }
                Ok(Term::Atom(
                    String::from_utf8_lossy(&self.text[start..self.at]).into_owned(),
                ))
            }
            other => Err((
                self.line,
                format!(
                    "unexpected {}",
                    other.map_or("end of file".to_owned(), |o| format!("{:?}", o as char))
                ),
            )),
        }
    }

    fn sequence(&mut self, close: u8) -> Result<Vec<Term>, ParseError> {
        let mut items = Vec::new();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(items);
        }
        loop {
            items.push(self.term()?);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(c) if c == close => {
                    self.at += 1;
                    return Ok(items);
                }
                _ => return Err((self.line, format!("expected ',' or {:?}", close as char))),
            }
        }
    }
}

fn parse_emq(text: &str) -> Result<Vec<EmqRule>, ParseError> {
    let mut lx = Lexer {
        text: text.as_bytes(),
        at: 0,
        line: 1,
    };
    let mut rules = Vec::new();
    while lx.peek().is_some() {
        let line = lx.line;
        let term = lx.term()?;
        lx.expect(b'.')?;
        rules.push(emq_rule(line, term)?);
    }
    Ok(rules)
}

fn emq_rule(line: usize, term: Term) -> Result<EmqRule, ParseError> {
    let bad = |why: &str| (line, why.to_owned());
    let Term::Tuple(items) = term else {
        return Err(bad("a rule is a tuple {allow|deny, Who, Access, Topics}"));
    };
    let allow = match items.first() {
        Some(Term::Atom(a)) if a == "allow" => true,
        Some(Term::Atom(a)) if a == "deny" => false,
        _ => return Err(bad("a rule starts with allow or deny")),
    };
    if items.len() == 2 {
        return match &items[1] {
            Term::Atom(a) if a == "all" => Ok(EmqRule {
                line,
                allow,
                who: EmqWho::All,
                access: None,
                topics: Vec::new(),
                all_topics: true,
            }),
            _ => Err(bad("{allow|deny, all} is the only two-element rule")),
        };
    }
    let [_, who, access, topics] = items.as_slice() else {
        return Err(bad("a rule is {allow|deny, Who, Access, Topics}"));
    };
    let who = match who {
        Term::Atom(a) if a == "all" => EmqWho::All,
        Term::Tuple(t) => match t.as_slice() {
            [Term::Atom(k), Term::Str(v)] if k == "user" => EmqWho::User(v.clone()),
            [Term::Atom(k), Term::Str(v)] if k == "client" || k == "clientid" => {
                EmqWho::Client(v.clone())
            }
            [Term::Atom(k), Term::Str(v)] if k == "ipaddr" => {
                let (ip, bits) =
                    parse_cidr(v).ok_or_else(|| bad("ipaddr needs an address or CIDR"))?;
                EmqWho::Net(ip, bits)
            }
            _ => return Err(bad("Who is all, {user, U}, {client, C} or {ipaddr, CIDR}")),
        },
        _ => return Err(bad("Who is all, {user, U}, {client, C} or {ipaddr, CIDR}")),
    };
    let access = match access {
        Term::Atom(a) if a == "publish" => Some(Want::Publish),
        Term::Atom(a) if a == "subscribe" => Some(Want::Subscribe),
        Term::Atom(a) if a == "pubsub" => None,
        _ => return Err(bad("Access is publish, subscribe or pubsub")),
    };
    let Term::List(list) = topics else {
        return Err(bad("Topics is a list: [\"a/#\", {eq, \"#\"}]"));
    };
    let mut out = Vec::new();
    for t in list {
        out.push(match t {
            Term::Str(f) => {
                check_filter(f).map_err(|e| (line, e))?;
                EmqTopic::Filter(f.clone())
            }
            Term::Tuple(eq) => match eq.as_slice() {
                [Term::Atom(k), Term::Str(f)] if k == "eq" => EmqTopic::Eq(f.clone()),
                _ => return Err(bad("a topic is \"filter\" or {eq, \"topic\"}")),
            },
            _ => return Err(bad("a topic is \"filter\" or {eq, \"topic\"}")),
        });
    }
    Ok(EmqRule {
        line,
        allow,
        who,
        access,
        topics: out,
        all_topics: false,
    })
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width): (u128, u128, u32) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a).into(), u32::from(b).into(), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

fn decide_emq(rules: &[EmqRule], who: Who<'_>, want: Want, topic: &str) -> Verdict {
    for r in rules {
        let applies_to = match &r.who {
            EmqWho::All => true,
            EmqWho::User(u) => who.username == Some(u.as_str()),
            EmqWho::Client(c) => who.client_id == c,
            EmqWho::Net(net, bits) => who.ip.is_some_and(|ip| in_net(ip, *net, *bits)),
        };
        if !applies_to || r.access.is_some_and(|a| a != want) {
            continue;
        }
        let matched = r.all_topics
            || r.topics.iter().any(|t| match t {
                EmqTopic::Eq(exact) => exact == topic,
                EmqTopic::Filter(f) => match substitute(f, who.client_id, who.username) {
                    Some(f) if want == Want::Publish => topic_matches(&f, topic),
                    Some(f) => covers(&f, topic),
                    None => false,
                },
            });
        if matched {
            return if r.allow {
                Verdict::Allow(r.line)
            } else {
                Verdict::Deny(r.line)
            };
        }
    }
    Verdict::NoMatch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(user: Option<&'a str>, client: &'a str) -> Who<'a> {
        Who {
            username: user,
            client_id: client,
            ip: "10.0.0.5".parse().ok(),
        }
    }

    const MOSQ: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic write alerts

user bob
topic read sensors/+/temp

pattern readwrite devices/%c/#
pattern read users/%u/inbox
";

    #[test]
    fn mosquitto_rules_decide_like_mosquitto() {
        let r = Rules::parse(MOSQ).expect("parses");
        assert_eq!(r.syntax(), "mosquitto");
        let alice = who(Some("alice"), "a1");
        assert_eq!(
            r.decide(alice, Want::Publish, "sensors/1/temp"),
            Verdict::Allow(5)
        );
        assert_eq!(
            r.decide(alice, Want::Publish, "sensors/secret/x"),
            Verdict::Deny(6)
        );
        assert_eq!(r.decide(alice, Want::Publish, "alerts"), Verdict::Allow(7));
        assert_eq!(
            r.decide(alice, Want::Subscribe, "alerts"),
            Verdict::NoMatch,
            "write only"
        );
        assert_eq!(
            r.decide(alice, Want::Publish, "public/x"),
            Verdict::NoMatch,
            "anonymous rules are not hers"
        );
        assert_eq!(
            r.decide(alice, Want::Subscribe, "sensors/#"),
            Verdict::Deny(6),
            "a deny overlaps"
        );
        assert_eq!(
            r.decide(alice, Want::Subscribe, "sensors/+/temp"),
            Verdict::Deny(6),
            "sensors/secret/temp could reach her"
        );
        assert_eq!(
            r.decide(alice, Want::Subscribe, "sensors/1/+"),
            Verdict::Allow(5)
        );
        let bob = who(Some("bob"), "b1");
        assert_eq!(
            r.decide(bob, Want::Subscribe, "sensors/2/temp"),
            Verdict::Allow(10)
        );
        assert_eq!(
            r.decide(bob, Want::Subscribe, "sensors/#"),
            Verdict::NoMatch,
            "wider than his rule"
        );
        assert_eq!(
            r.decide(bob, Want::Publish, "sensors/2/temp"),
            Verdict::NoMatch
        );
        assert_eq!(
            r.decide(bob, Want::Publish, "devices/b1/x"),
            Verdict::Allow(12)
        );
        assert_eq!(
            r.decide(bob, Want::Publish, "devices/a1/x"),
            Verdict::NoMatch
        );
        assert_eq!(
            r.decide(bob, Want::Subscribe, "users/bob/inbox"),
            Verdict::Allow(13)
        );
        let anon = who(None, "x");
        assert_eq!(
            r.decide(anon, Want::Subscribe, "public/news"),
            Verdict::Allow(2)
        );
        assert_eq!(
            r.decide(anon, Want::Subscribe, "users/x/inbox"),
            Verdict::NoMatch,
            "%u needs a user"
        );
        assert_eq!(
            r.decide(anon, Want::Publish, "devices/x/1"),
            Verdict::Allow(12)
        );
        let sneaky = who(None, "#");
        assert_eq!(
            r.decide(sneaky, Want::Publish, "devices/other/1"),
            Verdict::NoMatch
        );
    }

    #[test]
    fn mosquitto_errors_name_the_line() {
        assert_eq!(
            Rules::parse("user alice\ntopic read a/#/b\n")
                .expect_err("bad")
                .0,
            2
        );
        assert_eq!(Rules::parse("topc read a\n").expect_err("bad").0, 1);
        assert_eq!(Rules::parse("\n\nuser\n").expect_err("bad").0, 3);
    }

    const EMQ: &str = r##"
%% EMQ's default acl.conf
{allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, {client, "c9"}, publish, ["own/%c/#"]}.
{deny, {ipaddr, "10.0.0.0/8"}, publish, ["#"]}.
{allow, all}.
"##;

    #[test]
    fn emq_rules_first_match_wins() {
        let r = Rules::parse(EMQ).expect("parses");
        assert_eq!(r.syntax(), "emq");
        assert_eq!(r.len(), 6);
        let dash = who(Some("dashboard"), "d");
        assert_eq!(
            r.decide(dash, Want::Subscribe, "$SYS/brokers"),
            Verdict::Allow(3)
        );
        let any = who(Some("u"), "c");
        assert_eq!(r.decide(any, Want::Subscribe, "#"), Verdict::Deny(5));
        assert_eq!(r.decide(any, Want::Subscribe, "$SYS/x"), Verdict::Deny(5));
        assert_eq!(r.decide(any, Want::Subscribe, "a/#"), Verdict::Allow(8));
        assert_eq!(
            r.decide(any, Want::Publish, "a"),
            Verdict::Deny(7),
            "10.0.0.5 in 10/8"
        );
        let c9 = who(None, "c9");
        assert_eq!(r.decide(c9, Want::Publish, "own/c9/x"), Verdict::Allow(6));
        let local = Who {
            username: None,
            client_id: "l",
            ip: "127.0.0.1".parse().ok(),
        };
        assert_eq!(r.decide(local, Want::Subscribe, "#"), Verdict::Allow(4));
    }

    #[test]
    fn emq_errors_name_the_line() {
        let e = Rules::parse("{allow, all}.\n\n{allow, {user, \"a\"}, pub, [\"x\"]}.\n")
            .expect_err("bad");
        assert_eq!(e.0, 3, "{e:?}");
        assert!(Rules::parse("{allow, all}\n").is_err(), "missing dot");
    }
}

//! The values a configured template or query draws from one client, and EMQ's placeholders for
//! them: `%u` user name, `%c` client id, `%a` peer address, `%p` listener port, `%P` password,
//! `%t` topic, `%A` access (1 subscribe, 2 publish), `%r` protocol (`mqtt`, `mqtt-ws`), `%C` / `%d`
//! TLS client certificate common name / subject; auth_http also takes EMQX 5's `${username}`
//! forms.
//!
//! [`fill`] splices values into text (auth_http's URLs, bodies and headers, URL-encoded where it
//! matters); the database plugins never splice: their queries bind each placeholder as a
//! parameter (see [`crate::query`]).

use plugin_api::ClientInfo;

/// One placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `%u`
    Username,
    /// `%c`
    ClientId,
    /// `%a`
    PeerIp,
    /// `%C`
    CertCommonName,
    /// `%d`
    CertSubject,
}

impl Var {
    /// The placeholder for the letter after `%` that database queries accept.
    pub fn from_letter(c: u8) -> Option<Var> {
        Some(match c {
            b'u' => Var::Username,
            b'c' => Var::ClientId,
            b'a' => Var::PeerIp,
            b'C' => Var::CertCommonName,
            b'd' => Var::CertSubject,
            _ => return None,
        })
    }
}

/// The fields templates draw from, for one check.
#[derive(Debug, Default, Clone)]
pub struct Vars<'a> {
    /// %u
    pub username: &'a str,
    /// %c
    pub client_id: &'a str,
    /// %a
    pub peer_ip: &'a str,
    /// %p
    pub sock_port: u16,
    /// %P
    pub password: &'a str,
    /// %t
    pub topic: &'a str,
    /// %A
    pub access: &'a str,
    /// %r
    pub protocol: &'a str,
    /// %C
    pub cert_cn: &'a str,
    /// %d
    pub cert_subject: &'a str,
}

/// Substitutes every placeholder of `template`; `encode` URL-encodes substituted values.
pub fn fill(template: &str, v: &Vars<'_>, encode: bool) -> String {
    let port = v.sock_port.to_string();
    let table: [(&str, &str, &str); 10] = [
        ("%u", "${username}", v.username),
        ("%c", "${clientid}", v.client_id),
        ("%a", "${peerhost}", v.peer_ip),
        ("%p", "${sockport}", &port),
        ("%P", "${password}", v.password),
        ("%t", "${topic}", v.topic),
        ("%A", "${access}", v.access),
        ("%r", "${protocol}", v.protocol),
        ("%C", "${cert_common_name}", v.cert_cn),
        ("%d", "${cert_subject}", v.cert_subject),
    ];
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (short, long, value) in &table {
            for pat in [*long, *short] {
                if let Some(after) = rest.strip_prefix(pat) {
                    if encode {
                        out.push_str(&url_encode(value));
                    } else {
                        out.push_str(value);
                    }
                    rest = after;
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl<'a> Vars<'a> {
    /// The fields of `client` (no password, topic or access).
    pub fn of(client: &'a ClientInfo) -> Vars<'a> {
        Vars {
            username: client.username.as_ref().map_or("", |u| u.as_str()),
            client_id: client.client_id.as_str(),
            peer_ip: client.peer_ip.as_str(),
            sock_port: client.sock_port,
            protocol: client.transport.as_str(),
            cert_cn: client.cert_common_name.as_ref().map_or("", |v| v.as_str()),
            cert_subject: client.cert_subject.as_ref().map_or("", |v| v.as_str()),
            ..Vars::default()
        }
    }

    /// With the password (authentication).
    pub fn with_password(mut self, password: &'a str) -> Vars<'a> {
        self.password = password;
        self
    }

    /// With the topic and access (ACL).
    pub fn with_topic(mut self, topic: &'a str, access: &'a str) -> Vars<'a> {
        self.topic = topic;
        self.access = access;
        self
    }

    /// The value of a database placeholder.
    pub fn get(&self, v: Var) -> &'a str {
        match v {
            Var::Username => self.username,
            Var::ClientId => self.client_id,
            Var::PeerIp => self.peer_ip,
            Var::CertCommonName => self.cert_cn,
            Var::CertSubject => self.cert_subject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_encoding() {
        let v = Vars {
            username: "a b",
            client_id: "c/1",
            password: "p&=",
            topic: "t/+",
            access: "2",
            sock_port: 1883,
            ..Vars::default()
        };
        assert_eq!(
            fill("u=%u c=${clientid} P=%P p=%p A=%A t=%t", &v, false),
            "u=a b c=c/1 P=p&= p=1883 A=2 t=t/+"
        );
        assert_eq!(
            fill("http://h/x/%c?u=%u", &v, true),
            "http://h/x/c%2F1?u=a%20b"
        );
    }
}

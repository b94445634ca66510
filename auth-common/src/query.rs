//! Configured SQL queries (auth_mysql, auth_pgsql): quoted placeholders become bound
//! parameters, never spliced text.
//!
//! A placeholder stands alone inside quotes — `'%u'` or `"%u"` — and is replaced by the
//! driver's parameter marker (MySQL `?`, PostgreSQL `$1`, `$2` …) and bound at run time, so a user name like `x' or '1'='1` is only ever compared as a value.
//! Placeholders: `%u` user name, `%c` client id, `%a` peer IP address, `%C` / `%d` TLS client
//! certificate common name / subject. A placeholder written unquoted or inside a longer string
//! literal is refused when the plugin loads (it could only work by splicing text), with a
//! message that says how to write it (`concat('prefix/', '%u')`).

pub use crate::vars::Var;

/// How a driver marks parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `?` (MySQL, MariaDB).
    Question,
    /// `$1`, `$2` … (PostgreSQL).
    Dollar,
}

/// A query ready to prepare: SQL with `?` markers and the variable bound to each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The SQL sent to the server.
    pub sql: String,
    /// The variables, in marker order.
    pub params: Vec<Var>,
}

impl Query {
    /// Compiles `text` (the config value named `key`) for MySQL's `?` markers; the error names
    /// the key and the fix.
    pub fn compile(key: &str, text: &str) -> Result<Query, String> {
        Query::compile_with(key, text, Marker::Question)
    }

    /// Compiles `text` with the parameter markers of `marker`.
    pub fn compile_with(key: &str, text: &str, marker: Marker) -> Result<Query, String> {
        let bytes = text.as_bytes();
        let mut sql = String::with_capacity(text.len());
        let mut params = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c == b'\'' || c == b'"' {
                // A literal consisting of exactly one placeholder: '%u'.
                if bytes.len() >= i + 4
                    && bytes[i + 1] == b'%'
                    && bytes[i + 3] == c
                    && Var::from_letter(bytes[i + 2]).is_some()
                {
                    params.extend(Var::from_letter(bytes[i + 2]));
                    match marker {
                        Marker::Question => sql.push('?'),
                        Marker::Dollar => sql.push_str(&format!("${}", params.len())),
                    }
                    i += 4;
                    continue;
                }
                // Any other literal is copied as it is, but must not hide a placeholder.
                let end = literal_end(bytes, i);
                let literal = &text[i..end];
                if let Some(p) = find_placeholder(&literal[1..]) {
                    return Err(format!(
                        "{key}: placeholder {p} inside the string {literal}: a placeholder must \
                         stand alone in quotes ('{p}') to be bound as a parameter; build longer \
                         strings with concat(…, '{p}')"
                    ));
                }
                sql.push_str(literal);
                i = end;
                continue;
            }
            if c == b'%' {
                if let Some(letter) = bytes.get(i + 1).filter(|l| Var::from_letter(**l).is_some()) {
                    let p = format!("%{}", *letter as char);
                    return Err(format!(
                        "{key}: placeholder {p} must be written quoted ('{p}'): it is bound as \
                         a parameter, never spliced into the SQL"
                    ));
                }
            }
            let ch = text[i..].chars().next().unwrap_or(' ');
            sql.push(ch);
            i += ch.len_utf8();
        }
        Ok(Query { sql, params })
    }
}

/// Index just past the string literal starting at `start` (quote doubling and backslash
/// escapes handled; an unterminated literal runs to the end).
fn literal_end(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            q if q == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

fn find_placeholder(s: &str) -> Option<String> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1))
        .find(|&i| b[i] == b'%' && Var::from_letter(b[i + 1]).is_some())
        .map(|i| format!("%{}", b[i + 1] as char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_placeholders_become_markers() {
        let q = Query::compile(
            "acl_query",
            "select allow, ipaddr, username, clientid, access, topic from mqtt_acl where \
             ipaddr = '%a' or username = '%u' or username = '$all' or clientid = \"%c\"",
        )
        .expect("valid");
        assert_eq!(
            q.sql,
            "select allow, ipaddr, username, clientid, access, topic from mqtt_acl where \
             ipaddr = ? or username = ? or username = '$all' or clientid = ?"
        );
        assert_eq!(q.params, vec![Var::PeerIp, Var::Username, Var::ClientId]);
    }

    #[test]
    fn postgres_markers_are_numbered() {
        let q = Query::compile_with(
            "auth_query",
            "select password, salt from mqtt_user where username = '%u' or clientid = '%c'",
            Marker::Dollar,
        )
        .expect("valid");
        assert_eq!(
            q.sql,
            "select password, salt from mqtt_user where username = $1 or clientid = $2"
        );
        assert_eq!(q.params, vec![Var::Username, Var::ClientId]);
    }

    #[test]
    fn literals_with_percent_signs_are_kept() {
        let q =
            Query::compile("q", "select 1 from t where n like 'a%' and u = '%u'").expect("valid");
        assert_eq!(q.sql, "select 1 from t where n like 'a%' and u = ?");
        let q = Query::compile("q", "select 'it''s' from t where u = '%u'").expect("valid");
        assert_eq!(q.sql, "select 'it''s' from t where u = ?");
    }

    #[test]
    fn unquoted_or_embedded_placeholders_are_refused() {
        let e = Query::compile("auth_query", "select password from u where name = %u")
            .expect_err("unquoted");
        assert!(e.contains("auth_query") && e.contains("'%u'"), "{e}");
        let e = Query::compile("auth_query", "select password from u where name = 'x/%u'")
            .expect_err("embedded");
        assert!(e.contains("concat"), "{e}");
    }
}

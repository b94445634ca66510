//! Mosquitto's password file: one `user:hash` line per user, the hash as `mosquitto_passwd`
//! writes it.
//!
//! * `$7$<iterations>$<salt>$<hash>` — PBKDF2-HMAC-SHA512, 64-byte key (Mosquitto 2.0's
//!   default, 101 iterations, 12-byte salt).
//! * `$6$<salt>$<hash>` — SHA-512 of the password followed by the salt (Mosquitto 1.x).
//!
//! Salt and hash are standard base64 with padding. Lines starting with `#` and blank lines
//! are ignored, as Mosquitto does. A file with anything else is refused with its line number.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha512};

use crate::constant_time_eq;

/// Iterations `mosquitto_passwd` uses for `$7$` hashes.
pub const DEFAULT_ITERATIONS: u32 = 101;

/// One parsed password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hashed {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// Iteration count.
        iterations: u32,
        /// Salt bytes.
        salt: Vec<u8>,
        /// Derived key (64 bytes).
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 {
        /// Salt bytes.
        salt: Vec<u8>,
        /// Digest (64 bytes).
        hash: Vec<u8>,
    },
}

impl Hashed {
    /// Parses the part after `user:`.
    pub fn parse(text: &str) -> Result<Hashed, String> {
        let b64 = |what: &str, s: &str| {
            STANDARD
                .decode(s)
                .map_err(|e| format!("{what} is not base64 ({e})"))
        };
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a $7$ hash is $7$<iterations>$<salt>$<hash>".into());
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("bad iteration count {iterations:?}"))?;
            let hash = b64("the hash", hash)?;
            if hash.len() != 64 {
                return Err(format!("a $7$ hash has 64 bytes, not {}", hash.len()));
            }
            return Ok(Hashed::Pbkdf2Sha512 {
                iterations,
                salt: b64("the salt", salt)?,
                hash,
            });
        }
        if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("a $6$ hash is $6$<salt>$<hash>".into());
            };
            let hash = b64("the hash", hash)?;
            if hash.len() != 64 {
                return Err(format!("a $6$ hash has 64 bytes, not {}", hash.len()));
            }
            return Ok(Hashed::Sha512 {
                salt: b64("the salt", salt)?,
                hash,
            });
        }
        Err(
            "not a mosquitto_passwd hash ($7$… or $6$…); plain-text passwords are not accepted"
                .into(),
        )
    }

    /// A new `$7$` hash of `password` with a random 12-byte salt.
    pub fn create(password: &[u8], iterations: u32) -> Result<Hashed, String> {
        let mut salt = vec![0u8; 12];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2::<hmac::Hmac<Sha512>>(password, &salt, iterations, &mut hash)
            .map_err(|e| e.to_string())?;
        Ok(Hashed::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` matches (constant-time comparison; `$7$` is deliberately slow: run it
    /// through a [`crate::HashPool`]).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hashed::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut key = vec![0u8; hash.len()];
                pbkdf2::pbkdf2::<hmac::Hmac<Sha512>>(password, salt, *iterations, &mut key).is_ok()
                    && constant_time_eq(&key, hash)
            }
            Hashed::Sha512 { salt, hash } => {
                let digest = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                constant_time_eq(&digest, hash)
            }
        }
    }
}

impl std::fmt::Display for Hashed {
    /// The text `mosquitto_passwd` writes after `user:`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hashed::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            Hashed::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
        }
    }
}

/// A password file: users in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    /// (user, hash), in file order.
    pub users: Vec<(String, Hashed)>,
}

impl PasswordFile {
    /// Parses a whole file; an error names the first bad line (1-based) and why.
    pub fn parse(text: &str) -> Result<PasswordFile, (usize, String)> {
        let mut users: Vec<(String, Hashed)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err((i + 1, "expected user:hash".into()));
            };
            if user.is_empty() {
                return Err((i + 1, "empty user name".into()));
            }
            let hash = Hashed::parse(hash).map_err(|e| (i + 1, e))?;
            match users.iter_mut().find(|(u, _)| u == user) {
                // Mosquitto keeps the last line of a repeated user.
                Some(entry) => entry.1 = hash,
                None => users.push((user.to_owned(), hash)),
            }
        }
        Ok(PasswordFile { users })
    }

    /// The hash of `user`.
    pub fn get(&self, user: &str) -> Option<&Hashed> {
        self.users.iter().find(|(u, _)| u == user).map(|(_, h)| h)
    }

    /// Adds `user` or replaces their hash.
    pub fn set(&mut self, user: &str, hash: Hashed) {
        match self.users.iter_mut().find(|(u, _)| u == user) {
            Some(entry) => entry.1 = hash,
            None => self.users.push((user.to_owned(), hash)),
        }
    }

    /// Removes `user`; false when absent.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.users.len();
        self.users.retain(|(u, _)| u != user);
        self.users.len() != before
    }

    /// The file's text, one `user:hash` line each.
    pub fn render(&self) -> String {
        self.users
            .iter()
            .map(|(u, h)| format!("{u}:{h}\n"))
            .collect()
    }
}

/// Whether `user` may be written to a password file (no `:`, no line breaks, not empty).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty() && !user.contains([':', '\n', '\r']) && user.len() <= 65535
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_written_by_mosquitto_passwd() {
        // `mosquitto_passwd -c -b pw alice right` (Mosquitto 2.0.11).
        let file = PasswordFile::parse(
            "alice:$7$101$djlUX4AV9Y9rHD6C$6eSCNds9WWk4yMhvhlRtGNZKw/fKSMVyAtAUfa1zRCEIrYaFFVUT4Zvbj0trguOselBCrNYMWvRFXiZInhKp0A==\n",
        )
        .expect("parses");
        let h = file.get("alice").expect("alice");
        assert!(h.verify(b"right"));
        assert!(!h.verify(b"wrong"));
    }

    #[test]
    fn sha512_lines_and_round_trips() {
        let salt = b"0123456789ab".to_vec();
        let digest = Sha512::new()
            .chain_update(b"pw")
            .chain_update(&salt)
            .finalize()
            .to_vec();
        let line = format!("$6${}${}", STANDARD.encode(&salt), STANDARD.encode(&digest));
        let h = Hashed::parse(&line).expect("$6$");
        assert!(h.verify(b"pw") && !h.verify(b"px"));
        assert_eq!(h.to_string(), line);
        let new = Hashed::create(b"secret", DEFAULT_ITERATIONS).expect("create");
        let again = Hashed::parse(&new.to_string()).expect("round trip");
        assert!(again.verify(b"secret") && !again.verify(b"Secret"));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            PasswordFile::parse("# comment\n\nbob:plaintext\n")
                .expect_err("plain")
                .0,
            3
        );
        assert_eq!(PasswordFile::parse("nocolon\n").expect_err("no colon").0, 1);
        let mut f = PasswordFile::default();
        f.set("a", Hashed::create(b"1", 1).expect("h"));
        f.set("b", Hashed::create(b"2", 1).expect("h"));
        f.set("a", Hashed::create(b"3", 1).expect("h"));
        let mut back = PasswordFile::parse(&f.render()).expect("render parses");
        assert_eq!(back.users.len(), 2);
        assert!(back.get("a").expect("a").verify(b"3"));
        assert!(back.remove("b") && !back.clone().remove("zz"));
    }
}

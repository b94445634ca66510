//! Password hashes (`password_hash` in the config), as EMQ's auth plugins define them.
//!
//! * `plain`, `md5`, `sha` (SHA-1), `sha256`, `sha512`: the stored value is the password itself
//!   or the lower-case hex digest of it (upper-case hex is accepted too).
//! * `salt,<hash>` hashes `salt ++ password`, `<hash>,salt` hashes `password ++ salt`; the salt
//!   comes from the `salt` column of the auth query.
//! * `bcrypt`: the stored value is a full bcrypt hash (`$2a$` / `$2b$` / `$2y$`, which embeds
//!   its salt; a `salt` column holding that prefix, as EMQ stored it, is not needed).
//! * `pbkdf2,<mac>,<iterations>,<dklen>`: PBKDF2 with HMAC-`<mac>` (sha, sha256, sha512) over
//!   the password and the salt column, `<dklen>` bytes, lower-case hex.
//!
//! Comparisons run in constant time. bcrypt and pbkdf2 are deliberately slow: plugins run every
//! check through a [`crate::HashPool`].

use crate::constant_time_eq;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// A digest usable plain or salted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digests {
    /// No hashing: the stored value is the password.
    Plain,
    /// MD5.
    Md5,
    /// SHA-1 (`sha`).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Digests {
    fn parse(s: &str) -> Option<Digests> {
        Some(match s {
            "plain" => Digests::Plain,
            "md5" => Digests::Md5,
            "sha" => Digests::Sha1,
            "sha256" => Digests::Sha256,
            "sha512" => Digests::Sha512,
            _ => return None,
        })
    }

    /// The value stored for `input`: the input itself (plain) or its lower-case hex digest.
    fn apply(self, input: &[u8]) -> Vec<u8> {
        match self {
            Digests::Plain => input.to_vec(),
            Digests::Md5 => hex(&Md5::digest(input)).into_bytes(),
            Digests::Sha1 => hex(&Sha1::digest(input)).into_bytes(),
            Digests::Sha256 => hex(&Sha256::digest(input)).into_bytes(),
            Digests::Sha512 => hex(&Sha512::digest(input)).into_bytes(),
        }
    }
}

/// Where the salt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Salt {
    /// No salt.
    None,
    /// `salt,<hash>`: salt before the password.
    Prefix,
    /// `<hash>,salt`: salt after the password.
    Suffix,
}

/// The MAC of a pbkdf2 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mac {
    /// HMAC-SHA-1 (`sha`).
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// A parsed `password_hash` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordHash {
    /// Plain or a digest, optionally salted.
    Digest(Digests, Salt),
    /// bcrypt.
    Bcrypt,
    /// PBKDF2.
    Pbkdf2 {
        /// HMAC function.
        mac: Mac,
        /// Iteration count.
        iterations: u32,
        /// Derived key length in bytes.
        dklen: usize,
    },
}

/// The accepted forms, for error messages.
pub const FORMS: &str = "plain, md5, sha, sha256, sha512, salt,<hash>, <hash>,salt, bcrypt, \
                         pbkdf2,<sha|sha256|sha512>,<iterations>,<dklen>";

impl PasswordHash {
    /// Parses the config value; the error names the accepted forms.
    pub fn parse(value: &str) -> Result<PasswordHash, String> {
        let bad = || format!("password_hash {value:?} is not one of: {FORMS}");
        let parts: Vec<&str> = value.split(',').map(str::trim).collect();
        Ok(match parts.as_slice() {
            ["bcrypt"] => PasswordHash::Bcrypt,
            [one] => PasswordHash::Digest(Digests::parse(one).ok_or_else(bad)?, Salt::None),
            ["salt", h] => PasswordHash::Digest(Digests::parse(h).ok_or_else(bad)?, Salt::Prefix),
            [h, "salt"] => PasswordHash::Digest(Digests::parse(h).ok_or_else(bad)?, Salt::Suffix),
            ["pbkdf2", mac, iterations, dklen] => {
                let mac = match *mac {
                    "sha" => Mac::Sha1,
                    "sha256" => Mac::Sha256,
                    "sha512" => Mac::Sha512,
                    _ => return Err(bad()),
                };
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(bad)?;
                let dklen = dklen
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(bad)?;
                PasswordHash::Pbkdf2 {
                    mac,
                    iterations,
                    dklen,
                }
            }
            _ => return Err(bad()),
        })
    }

    /// Whether `password` matches the `stored` value (with the row's `salt`).
    pub fn verify(&self, password: &[u8], stored: &str, salt: &str) -> bool {
        match *self {
            PasswordHash::Digest(d, s) => {
                let input = match s {
                    Salt::None => password.to_vec(),
                    Salt::Prefix => [salt.as_bytes(), password].concat(),
                    Salt::Suffix => [password, salt.as_bytes()].concat(),
                };
                let computed = d.apply(&input);
                if d == Digests::Plain {
                    constant_time_eq(&computed, stored.as_bytes())
                } else {
                    constant_time_eq(&computed, stored.trim().to_ascii_lowercase().as_bytes())
                }
            }
            PasswordHash::Bcrypt => bcrypt::verify(password, stored.trim()).unwrap_or(false),
            PasswordHash::Pbkdf2 {
                mac,
                iterations,
                dklen,
            } => {
                let mut key = vec![0u8; dklen];
                let salt = salt.as_bytes();
                let derived = match mac {
                    Mac::Sha1 => {
                        pbkdf2::pbkdf2::<hmac::Hmac<Sha1>>(password, salt, iterations, &mut key)
                    }
                    Mac::Sha256 => {
                        pbkdf2::pbkdf2::<hmac::Hmac<Sha256>>(password, salt, iterations, &mut key)
                    }
                    Mac::Sha512 => {
                        pbkdf2::pbkdf2::<hmac::Hmac<Sha512>>(password, salt, iterations, &mut key)
                    }
                };
                derived.is_ok()
                    && constant_time_eq(
                        hex(&key).as_bytes(),
                        stored.trim().to_ascii_lowercase().as_bytes(),
                    )
            }
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> PasswordHash {
        PasswordHash::parse(s).expect("valid form")
    }

    #[test]
    fn digests_match_known_vectors() {
        // Reference values from coreutils (printf 'password' | md5sum, …).
        let cases = [
            ("md5", "5f4dcc3b5aa765d61d8327deb882cf99"),
            ("sha", "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"),
            (
                "sha256",
                "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
            ),
            (
                "sha512",
                "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb9\
                 80b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86",
            ),
        ];
        for (name, stored) in cases {
            assert!(h(name).verify(b"password", stored, ""), "{name}");
            assert!(
                h(name).verify(b"password", &stored.to_ascii_uppercase(), ""),
                "{name} upper-case hex"
            );
            assert!(!h(name).verify(b"Password", stored, ""), "{name} wrong");
        }
        assert!(h("plain").verify(b"pw", "pw", ""));
        assert!(!h("plain").verify(b"pw", "PW", ""));
    }

    #[test]
    fn salt_prefix_and_suffix() {
        // sha256("saltpassword") and sha256("passwordsalt").
        let prefix = hex(&Sha256::digest(b"saltpassword"));
        let suffix = hex(&Sha256::digest(b"passwordsalt"));
        assert!(h("salt,sha256").verify(b"password", &prefix, "salt"));
        assert!(!h("salt,sha256").verify(b"password", &suffix, "salt"));
        assert!(h("sha256,salt").verify(b"password", &suffix, "salt"));
        assert!(h("md5,salt").verify(b"pw", &hex(&Md5::digest(b"pwNaCl")), "NaCl"));
    }

    #[test]
    fn pbkdf2_matches_rfc6070() {
        // RFC 6070 test vector 2: "password" / "salt", 2 iterations, 20 bytes, HMAC-SHA1.
        assert!(h("pbkdf2,sha,2,20").verify(
            b"password",
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957",
            "salt"
        ));
        assert!(!h("pbkdf2,sha,3,20").verify(
            b"password",
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957",
            "salt"
        ));
    }

    #[test]
    fn bcrypt_verifies_a_full_hash() {
        let stored = bcrypt::hash_with_salt(b"s3cret", 4, *b"0123456789abcdef")
            .expect("hash")
            .to_string();
        assert!(h("bcrypt").verify(b"s3cret", &stored, ""));
        assert!(!h("bcrypt").verify(b"s3cret!", &stored, ""));
        assert!(!h("bcrypt").verify(b"s3cret", "not a hash", ""));
    }

    #[test]
    fn bad_forms_name_the_accepted_ones() {
        for bad in [
            "sha1",
            "salt,sha3",
            "pbkdf2,sha256,0,32",
            "pbkdf2,md4,10,20",
            "",
        ] {
            let e = PasswordHash::parse(bad).expect_err(bad);
            assert!(e.contains("pbkdf2,<sha|sha256|sha512>"), "{e}");
        }
        assert_eq!(
            h("pbkdf2,sha256,1000,32"),
            PasswordHash::Pbkdf2 {
                mac: Mac::Sha256,
                iterations: 1000,
                dklen: 32
            }
        );
    }
}

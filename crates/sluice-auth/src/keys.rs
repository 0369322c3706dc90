//! Key material: signing keys (from the config and `signing_key_file`), the stream keys of a
//! `check = "key"` rule (from `keys` and `key_file`), and the errors of reading them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ring::hmac;

use crate::config::{MAX_KEY_ID_BYTES, MIN_SECRET_BYTES, valid_key_id};
use crate::mac;

/// Why a [`crate::Policy`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The `[auth]` values cannot work together (see [`crate::AuthConfig::validate`]).
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A key file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of a key file is unusable.
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWT ES256 public key file holds no usable P-256 public key.
    #[error("{}: {reason}", path.display())]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads a text file.
pub(crate) fn read(path: &str) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.into(),
        source,
    })
}

/// The meaningful lines of a key file: 1-based number and trimmed text, without blank
/// lines and `#` comments.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Parses a signing key file: lines `ID SECRET` (the secret is the rest of the line,
/// trimmed, at least 16 bytes).
pub(crate) fn parse_signing_key_file(
    path: &str,
    text: &str,
) -> Result<BTreeMap<String, String>, AuthError> {
    let mut keys = BTreeMap::new();
    for (line, content) in lines(text) {
        let bad = |reason: String| AuthError::Line {
            path: Path::new(path).into(),
            line,
            reason,
        };
        let (id, secret) = content
            .split_once(char::is_whitespace)
            .map(|(id, s)| (id, s.trim()))
            .ok_or_else(|| bad("expected `ID SECRET`".to_owned()))?;
        if !valid_key_id(id) {
            return Err(bad(format!(
                "key id {id:?} must be 1 to {MAX_KEY_ID_BYTES} of A-Z a-z 0-9 - _ ."
            )));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(bad(format!(
                "the secret of key {id:?} must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        if keys.insert(id.to_owned(), secret.to_owned()).is_some() {
            return Err(bad(format!("key id {id:?} appears twice")));
        }
    }
    Ok(keys)
}

/// Parses a stream key file: one key a line (trimmed).
pub(crate) fn parse_stream_key_file(text: &str) -> impl Iterator<Item = &str> {
    lines(text).map(|(_, key)| key)
}

/// The signing keys by id, ready to verify.
pub(crate) struct SigningKeys {
    keys: BTreeMap<String, hmac::Key>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: secrets stay out of logs.
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl SigningKeys {
    pub(crate) fn new(secrets: &BTreeMap<String, String>) -> Self {
        let keys = secrets
            .iter()
            .map(|(id, secret)| (id.clone(), mac::key(secret.as_bytes())))
            .collect();
        Self { keys }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&hmac::Key> {
        self.keys.get(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The stream keys of one rule, held only as fingerprints: HMAC-SHA256 under a key drawn at
/// random per process.
///
/// A candidate is fingerprinted the same way and looked up. Keys are never compared byte by
/// byte, so the time to refuse reveals neither a key's length nor how much of a guess was
/// right; what a lookup's timing could reveal is bits of a keyed hash the client cannot
/// compute, which says nothing about the keys.
pub(crate) struct StreamKeys {
    fingerprints: HashSet<[u8; 32]>,
}

impl std::fmt::Debug for StreamKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamKeys({} keys)", self.fingerprints.len())
    }
}

impl StreamKeys {
    pub(crate) fn new<'k>(keys: impl IntoIterator<Item = &'k str>) -> Self {
        let fingerprints = keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .map(fingerprint)
            .collect();
        Self { fingerprints }
    }

    pub(crate) fn contains(&self, candidate: &str) -> bool {
        self.fingerprints.contains(&fingerprint(candidate))
    }

    pub(crate) fn len(&self) -> usize {
        self.fingerprints.len()
    }
}

fn fingerprint(key: &str) -> [u8; 32] {
    let tag = mac::mac(mac::fingerprint_key(), key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_files_take_comments_and_name_the_bad_line() {
        let text = "# rotated 2025-01\n\nk1 0123456789abcdef\n  k2\tsecret with spaces ok  \n";
        let keys = parse_signing_key_file("/keys", text).unwrap();
        assert_eq!(keys["k1"], "0123456789abcdef");
        assert_eq!(keys["k2"], "secret with spaces ok");
        let err = |text: &str| {
            parse_signing_key_file("/etc/sluice/keys", text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("k1 0123456789abcdef\nk2 short\n"),
            "/etc/sluice/keys:2: the secret of key \"k2\" must be at least 16 bytes"
        );
        assert_eq!(
            err("\n\nlonely"),
            "/etc/sluice/keys:3: expected `ID SECRET`"
        );
        assert!(err("a=b 0123456789abcdef").starts_with("/etc/sluice/keys:1: key id \"a=b\""));
        assert!(
            err("k 0123456789abcdef\nk 0123456789abcdef")
                .contains(":2: key id \"k\" appears twice")
        );
    }

    #[test]
    fn stream_keys_match_whole_keys_only() {
        let text = "# keys\nalpha\n\n  beta  \n#gamma\n";
        let keys = StreamKeys::new(parse_stream_key_file(text).chain(["delta", ""]));
        assert_eq!(keys.len(), 3);
        for k in ["alpha", "beta", "delta"] {
            assert!(keys.contains(k), "{k}");
        }
        for k in ["", "alph", "alphaa", "Alpha", " beta", "gamma", "#gamma"] {
            assert!(!keys.contains(k), "{k:?}");
        }
        // What is held is not the keys: nothing of them is in the Debug output or the set.
        assert!(!format!("{keys:?}").contains("alpha"));
        assert!(!keys.fingerprints.iter().any(|f| f.starts_with(b"alpha")));
    }
}

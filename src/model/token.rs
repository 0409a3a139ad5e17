//! Keyed tokens and key ids.

use std::fmt;

/// A keyed token: the first 64 bits of HMAC-SHA256 over the identifier's
/// domain tag and canonical value. `docs/storage-format.md` says why 64 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub i64);

impl fmt::Debug for Token {
    // Tokens are pseudonyms, not secrets, but they are still personal data:
    // they are kept out of logs, so Debug does not print them either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The id of a key: a day's token key (`tok-2026-11-24-1a2b3c4d`) or data key
/// (`day-2026-11-24-1a2b3c4d`). Ids are written into every file's metadata
/// so that keys can be rotated and destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Accepts lower-case ASCII letters, digits and dashes, 1 to 64 of them.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then_some(KeyId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_restricted() {
        assert!(KeyId::new("tk-0001").is_some());
        assert!(KeyId::new("Tk-0001").is_none());
        assert!(KeyId::new("../etc").is_none());
        assert!(KeyId::new("").is_none());
    }
}

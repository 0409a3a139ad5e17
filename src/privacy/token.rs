//! Keyed tokens: the pseudonyms under which identifiers are stored and found.
//!
//! A token is the first 64 bits of HMAC-SHA256(token key, domain tag of the
//! identifier kind | 0x00 | canonical value). The HMAC key schedule (the
//! inner and outer pads) is computed once per token key when a [`Tokeniser`]
//! is built; each token then costs two SHA-256 compressions.
//!
//! This module owns the only path by which a raw identifier becomes
//! something that may be stored unencrypted. It must never return, log or
//! store the raw value itself.

use ring::hmac;

use super::normalise::canonical_ip;
use super::target::canonical_value;
use crate::keys::TokenKey;
use crate::model::{IdentifierKind, IdentifierValue, KeyId, Token};

/// Computes tokens under one token key.
#[derive(Clone)]
pub struct Tokeniser {
    key_id: KeyId,
    key: hmac::Key,
}

impl std::fmt::Debug for Tokeniser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokeniser").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Tokeniser {
    pub fn new(key: &TokenKey) -> Self {
        Tokeniser { key_id: key.id.clone(), key: hmac::Key::new(hmac::HMAC_SHA256, key.secret.expose()) }
    }

    /// The id of the token key, written into every file tokenised with it.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The token of a canonical identifier value of the given kind.
    pub fn token(&self, kind: IdentifierKind, canonical: &[u8]) -> Token {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(kind.domain_tag());
        context.update(&[0]);
        context.update(canonical);
        let tag = context.sign();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        Token(i64::from_be_bytes(first))
    }

    /// The token of an identifier taken from a validated record.
    pub fn token_of(&self, kind: IdentifierKind, value: IdentifierValue<'_>) -> Token {
        match value {
            IdentifierValue::Text(text) => self.token(kind, text.as_bytes()),
            IdentifierValue::Ip(ip) => self.token(kind, canonical_ip(ip).as_bytes()),
        }
    }

    /// The token that a value given in a query (a warrant target, a test's
    /// known number) has in the data: the value is put in the canonical
    /// form ingest stores ([`canonical_value`]). `None` if it is malformed
    /// for its kind.
    pub fn token_for_query(&self, kind: IdentifierKind, text: &str) -> Option<Token> {
        Some(self.token(kind, canonical_value(kind, text)?.as_bytes()))
    }
}

/// A [`Tokeniser`] with a memo of the tokens computed in one batch, on one
/// thread.
///
/// Within a batch most identifiers recur (the same subscribers, cells and
/// servers appear again and again), and an HMAC costs far more than a hash
/// table lookup, so each distinct value is tokenised once. The memo keeps
/// the canonical values it has seen one after the other in one buffer (no
/// allocation per value), the same values that sit in the batch's
/// sealed-column builders; it lives exactly as long as the batch's decoding
/// and is dropped with it. It must never outlive the batch or be shared.
pub struct TokenMemo {
    tokeniser: Tokeniser,
    /// The distinct values seen, end to end.
    values: String,
    /// One table per kind, of values found by their hash. ahash with
    /// per-process random keys: fast on short strings, and an attacker who
    /// controls identifiers cannot aim for collisions.
    seen: [hashbrown::HashTable<Seen>; 6],
    hasher: ahash::RandomState,
}

/// A value in [`TokenMemo::values`] and its token.
struct Seen {
    hash: u64,
    start: u32,
    len: u32,
    token: Token,
}

impl TokenMemo {
    pub fn new(tokeniser: Tokeniser) -> Self {
        TokenMemo { tokeniser, values: String::new(), seen: Default::default(), hasher: ahash::RandomState::new() }
    }

    pub fn key_id(&self) -> &KeyId {
        self.tokeniser.key_id()
    }

    /// How many distinct values it holds, over all kinds: each was
    /// tokenised once.
    pub fn len(&self) -> usize {
        self.seen.iter().map(|table| table.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token of a canonical value of `kind`.
    pub fn token(&mut self, kind: IdentifierKind, canonical: &str) -> Token {
        let hash = self.hasher.hash_one(canonical);
        let values = &self.values;
        let text = |seen: &Seen| &values[seen.start as usize..(seen.start + seen.len) as usize];
        let table = &mut self.seen[kind as usize];
        if let Some(seen) = table.find(hash, |seen| seen.hash == hash && text(seen) == canonical) {
            return seen.token;
        }
        let token = self.tokeniser.token(kind, canonical.as_bytes());
        // Offsets fit in 32 bits: a batch is far below 4 GiB. Past that,
        // values are simply not remembered.
        if let (Ok(start), Ok(len)) = (u32::try_from(self.values.len()), u32::try_from(canonical.len()))
            && start.checked_add(len).is_some()
        {
            self.values.push_str(canonical);
            table.insert_unique(hash, Seen { hash, start, len, token }, |seen| seen.hash);
        }
        token
    }
}

impl std::fmt::Debug for TokenMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMemo").field("key_id", self.tokeniser.key_id()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use proptest::prelude::*;

    pub(crate) fn tokeniser(seed: u8) -> Tokeniser {
        let secret = SecretKey::from_bytes([seed; 32]);
        Tokeniser::new(&TokenKey { id: KeyId::new("tk-0001").unwrap(), secret })
    }

    #[test]
    fn matches_a_reference_hmac() {
        // HMAC-SHA256 computed independently over the same message.
        let key = [7u8; 32];
        let t = tokeniser(7);
        let mut message = b"cdrvault/v1/msisdn".to_vec();
        message.push(0);
        message.extend_from_slice(b"+4520000001");
        let reference = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &message);
        let expected = i64::from_be_bytes(reference.as_ref()[..8].try_into().unwrap());
        assert_eq!(t.token(IdentifierKind::Msisdn, b"+4520000001"), Token(expected));
    }

    #[test]
    fn the_memo_gives_the_tokeniser_s_tokens() {
        let t = tokeniser(3);
        let mut memo = TokenMemo::new(t.clone());
        for value in ["+4520000001", "+4520000002", "+4520000001"] {
            assert_eq!(memo.token(IdentifierKind::Msisdn, value), t.token(IdentifierKind::Msisdn, value.as_bytes()));
        }
        // Thousands of values, each met three times, interleaved: the
        // table and the buffer of values grow under the memo's feet.
        let mut distinct: std::collections::HashSet<String> = ["+4520000001", "+4520000002"].map(String::from).into();
        for round in 0..3 {
            for i in (0..5_000).rev().step_by(round + 1).chain(0..5_000) {
                let value = format!("+45{:08}", i * 7919 % 100_000_000);
                let expected = t.token(IdentifierKind::Msisdn, value.as_bytes());
                assert_eq!(memo.token(IdentifierKind::Msisdn, &value), expected, "{i}");
                // A prefix of a value seen is another value.
                assert_eq!(
                    memo.token(IdentifierKind::Msisdn, &value[..6]),
                    t.token(IdentifierKind::Msisdn, &value.as_bytes()[..6])
                );
                distinct.extend([value[..6].to_string(), value]);
            }
        }
        assert_eq!(memo.len(), distinct.len(), "each distinct value tokenised once, and remembered");
        // The same text under another kind is another token.
        assert_ne!(
            memo.token(IdentifierKind::Imsi, "238011234567890"),
            memo.token(IdentifierKind::Imei, "238011234567890")
        );
    }

    #[test]
    fn domain_tags_separate_kinds() {
        let t = tokeniser(1);
        let digits = b"238011234567890";
        assert_ne!(t.token(IdentifierKind::Imsi, digits), t.token(IdentifierKind::Imei, digits));
    }

    #[test]
    fn query_values_are_normalised_like_ingest() {
        let t = tokeniser(1);
        assert_eq!(
            t.token_for_query(IdentifierKind::Msisdn, "0045 20 00 00 01"),
            Some(t.token(IdentifierKind::Msisdn, b"+4520000001"))
        );
        assert_eq!(
            t.token_for_query(IdentifierKind::Ip, "::ffff:10.0.0.1"),
            Some(t.token(IdentifierKind::Ip, b"10.0.0.1"))
        );
        assert_eq!(t.token_for_query(IdentifierKind::Msisdn, "not a number"), None);
    }

    proptest! {
        #[test]
        fn tokens_are_deterministic_and_keyed(value in "[+]?[0-9a-z:.@]{1,30}", a in any::<u8>(), b in any::<u8>()) {
            let kind = IdentifierKind::Msisdn;
            prop_assert_eq!(tokeniser(a).token(kind, value.as_bytes()), tokeniser(a).token(kind, value.as_bytes()));
            if a != b {
                prop_assert_ne!(tokeniser(a).token(kind, value.as_bytes()), tokeniser(b).token(kind, value.as_bytes()));
            }
        }

    }
}

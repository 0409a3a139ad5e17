//! Token keys: the HMAC-SHA256 keys of the keyed tokens. Each day has its
//! own, derived from the day's data key, so every token of a day is
//! computed under a key used for no other day, and destroying the day's key
//! destroys its token key with it: the tokens of a destroyed day can no
//! longer be reproduced, by enumeration or otherwise. Lookups compute a
//! target's token under the key of each day they search.
//!
//! The id of a day's token key is `tok-` followed by what follows `day-` in
//! its data key's id (`tok-2026-11-24-1a2b3c4d`): it names the day, and a
//! data key created anew for a day (never the case today) would give a new
//! token key id too.

use ring::hmac;

use super::secret::SecretKey;
use super::{KeyError, KeyStore};
use crate::model::{KeyId, PartitionDate};

/// The context of the derivation: the token key is HMAC-SHA256(data key,
/// this label), which no other use of the data key computes.
const DERIVATION_LABEL: &[u8] = b"cdrvault/v1/token-key";

/// A token key: the HMAC-SHA256 key of one day's keyed tokens.
#[derive(Debug, Clone)]
pub struct TokenKey {
    pub id: KeyId,
    pub secret: SecretKey,
}

/// The token key of the day whose data key is `day_key_id`/`day_secret`.
pub(super) fn derive(day_key_id: &KeyId, day_secret: &SecretKey) -> TokenKey {
    let id = token_key_id(day_key_id);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, day_secret.expose()), DERIVATION_LABEL);
    let secret = SecretKey::from_slice(tag.as_ref()).expect("an HMAC-SHA256 tag is 32 bytes");
    TokenKey { id, secret }
}

/// The id of the token key derived from the data key `day_key_id`.
pub fn token_key_id(day_key_id: &KeyId) -> KeyId {
    let suffix = day_key_id.as_str().strip_prefix("day-").unwrap_or(day_key_id.as_str());
    KeyId::new(format!("tok-{suffix}")).expect("tok- and a valid key id's characters form a valid key id")
}

/// The day a token key id names, if it is one.
pub fn day_of_token_key(id: &KeyId) -> Option<PartitionDate> {
    PartitionDate::parse(id.as_str().strip_prefix("tok-")?.get(..10)?)
}

impl KeyStore {
    /// The token key a file names, if its day still has one. Read from the
    /// keys directory when not cached, so a key created by another process
    /// after this one started is found.
    pub fn token_key(&self, id: &KeyId) -> Result<Option<TokenKey>, KeyError> {
        let Some(date) = day_of_token_key(id) else { return Ok(None) };
        Ok(self.existing_day_key(date)?.map(|key| key.token.clone()).filter(|key| &key.id == id))
    }
}

#[cfg(test)]
mod tests {
    use crate::keys::KeyStore;
    use crate::model::PartitionDate;

    #[test]
    fn each_day_has_a_token_key_of_its_own_that_dies_with_it() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let store = KeyStore::open(root.path(), None).unwrap();
        let monday = PartitionDate::parse("2026-11-23").unwrap();
        let tuesday = PartitionDate::parse("2026-11-24").unwrap();
        let first = store.day_key(monday).unwrap().token.clone();
        let second = store.day_key(tuesday).unwrap().token.clone();
        assert!(first.id.as_str().starts_with("tok-2026-11-23-"), "{}", first.id);
        assert_ne!(first.secret.expose(), second.secret.expose());
        assert_ne!(first.secret.expose(), store.day_key(monday).unwrap().secret.expose(), "derived, not the data key");

        let other_process = KeyStore::open(root.path(), None).unwrap();
        let found = other_process.token_key(&first.id).unwrap().unwrap();
        assert_eq!(found.secret.expose(), first.secret.expose());

        store.write_tombstone(monday, b"destroyed").unwrap();
        store.destroy_day_key(monday).unwrap();
        assert!(other_process.token_key(&first.id).unwrap().is_none());
        assert!(other_process.token_key(&second.id).unwrap().is_some());
    }
}

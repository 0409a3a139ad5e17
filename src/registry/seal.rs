//! Seals on the registry's rows that decide what may be disclosed or kept:
//! each principal (its roles, authority, credentials, revocation), each
//! warrant (its status, window, categories, grants and sealed targets),
//! each preservation order (its status, window, end and sealed targets) and
//! each lawful request (its authority, result, digest and expiry) carries an HMAC-SHA256 of its columns under a key of the keys directory
//! ([`crate::keys::KeyStore::registry_key`]). Every change the service
//! makes re-seals the row in the change's transaction; every read that a
//! decision rests on checks the seal first. Someone who can write the
//! state directory but not the keys directory can then delete rows or put
//! back an older copy of one, but cannot make a row say something the
//! service never wrote: an approval, a wider grant, a role, a credential.
//!
//! Backend-neutral: a backend hands the row's columns as [`Field`]s, in an
//! order fixed per table, and keeps the tag beside them.

use ring::hmac;

use super::RegistryError;

/// One column's value, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// The sealed tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedTable {
    Principals,
    Warrants,
    Orders,
    Requests,
}

impl SealedTable {
    pub fn name(self) -> &'static str {
        match self {
            SealedTable::Principals => "principals",
            SealedTable::Warrants => "warrants",
            SealedTable::Orders => "preservation_orders",
            SealedTable::Requests => "requests",
        }
    }
}

/// Seals and checks rows under the registry's key.
pub struct RowSeal {
    key: hmac::Key,
}

impl std::fmt::Debug for RowSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowSeal")
    }
}

impl RowSeal {
    pub fn new(secret: &[u8]) -> RowSeal {
        RowSeal { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// The tag of a row of `table` whose columns are `fields`.
    pub fn tag(&self, table: SealedTable, fields: &[Field<'_>]) -> Vec<u8> {
        hmac::sign(&self.key, &message(table, fields)).as_ref().to_vec()
    }

    /// Checks the tag `stored` of the row `id` of `table`: a row without a
    /// tag or with another one was not written by the service.
    pub fn check(
        &self,
        table: SealedTable,
        id: &str,
        fields: &[Field<'_>],
        stored: Option<&[u8]>,
    ) -> Result<(), RegistryError> {
        let sound = stored.is_some_and(|tag| hmac::verify(&self.key, &message(table, fields), tag).is_ok());
        match sound {
            true => Ok(()),
            false => Err(RegistryError::Tampered { table: table.name(), id: id.to_string() }),
        }
    }
}

/// The bytes a tag covers: the table, then each field typed and
/// length-prefixed, so that no two rows share an encoding.
fn message(table: SealedTable, fields: &[Field<'_>]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    let mut put = |kind: u8, value: &[u8]| {
        bytes.push(kind);
        bytes.extend_from_slice(&(value.len() as u64).to_be_bytes());
        bytes.extend_from_slice(value);
    };
    put(b'T', table.name().as_bytes());
    for field in fields {
        match field {
            Field::Null => put(b'N', &[]),
            Field::Int(v) => put(b'I', &v.to_be_bytes()),
            Field::Text(v) => put(b'S', v.as_bytes()),
            Field::Blob(v) => put(b'B', v),
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_holds_only_for_the_row_it_was_made_for() {
        let seal = RowSeal::new(&[7; 32]);
        let row = [Field::Text("w-1"), Field::Text("approved"), Field::Int(3), Field::Null];
        let tag = seal.tag(SealedTable::Warrants, &row);
        assert!(seal.check(SealedTable::Warrants, "w-1", &row, Some(&tag)).is_ok());
        let changed = [
            [Field::Text("w-1"), Field::Text("registered"), Field::Int(3), Field::Null],
            [Field::Text("w-1"), Field::Text("approved"), Field::Int(4), Field::Null],
            [Field::Text("w-1"), Field::Text("approved"), Field::Int(3), Field::Text("")],
            // Moving bytes between adjacent fields changes the encoding.
            [Field::Text("w-1a"), Field::Text("pproved"), Field::Int(3), Field::Null],
        ];
        for other in changed {
            assert!(seal.check(SealedTable::Warrants, "w-1", &other, Some(&tag)).is_err(), "{other:?}");
        }
        assert!(seal.check(SealedTable::Principals, "w-1", &row, Some(&tag)).is_err(), "bound to its table");
        assert!(seal.check(SealedTable::Warrants, "w-1", &row, None).is_err(), "a row without a tag");
        let other_key = RowSeal::new(&[8; 32]);
        assert!(other_key.check(SealedTable::Warrants, "w-1", &row, Some(&tag)).is_err(), "bound to its key");
    }
}

//! The row seals of [`crate::registry::seal`] over SQLite: which columns of
//! each sealed table a tag covers, in which order, the re-sealing of a row
//! inside the transaction that changed it, and the check before a read.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteRegistry;
use crate::registry::seal::{Field, RowSeal, SealedTable};
use crate::registry::{NamedKeys, RegistryError};

/// Every column of a principal but its seal.
const PRINCIPAL_COLUMNS: &str =
    "id, name, person, roles, authority_id, token_sha256, cert_sha256, expires_at_us, revoked_at, created_at";
/// Every column of a warrant but its seal; its targets follow, by position.
const WARRANT_COLUMNS: &str = "id, authority_id, reference, issued_by, legal_basis, period_start_us, period_end_us, \
     categories, valid_until_us, status, registered_by, decided_by, decision_reason, registered_at, cell_dump, \
     registered_by_person";
/// Every column of a lawful request but its seal.
const REQUEST_COLUMNS: &str = "request_id, authority_id, request_number, warrant_id, principal_id, status, reason, \
     submitted_at_us, records, format, sha256, bytes, days_unavailable, result_name, result_expires_us";
/// Every column of a preservation order but its seal; its targets follow.
const ORDER_COLUMNS: &str = "id, authority, reference, window_start_us, window_end_us, ends, status, placed_at, \
     lifted_at, registered_by, registered_by_person, decided_by, decision_reason, pending_ends, pending_by, \
     pending_by_person";

fn columns(table: SealedTable) -> &'static str {
    match table {
        SealedTable::Principals => PRINCIPAL_COLUMNS,
        SealedTable::Warrants => WARRANT_COLUMNS,
        SealedTable::Orders => ORDER_COLUMNS,
        SealedTable::Requests => REQUEST_COLUMNS,
    }
}

/// The column that names a row of `table`.
fn id_column(table: SealedTable) -> &'static str {
    match table {
        SealedTable::Requests => "request_id",
        SealedTable::Principals | SealedTable::Warrants | SealedTable::Orders => "id",
    }
}

/// The tables sealed together, each set adopted once under the name of its
/// marker in the keys directory ([`crate::keys::KeyStore::is_registry_adopted`]):
/// the rows of a set written before its seals existed are sealed when the
/// service first opens the registry with that set's seals.
pub(super) const SEALED_SETS: [(&str, &[SealedTable]); 2] = [
    // Migration 11.
    ("rows", &[SealedTable::Principals, SealedTable::Warrants, SealedTable::Orders]),
    // Migration 12.
    ("requests", &[SealedTable::Requests]),
];

/// The query of a row's targets (for a request, its age buckets), for the
/// tables whose rows have some: three values each.
fn targets(table: SealedTable) -> Option<&'static str> {
    match table {
        SealedTable::Principals => None,
        // The ages of the records a request delivered, which the yearly
        // statistics report.
        SealedTable::Requests => {
            Some("SELECT bucket, records, NULL FROM request_ages WHERE request_id = ?1 ORDER BY bucket")
        }
        SealedTable::Warrants => {
            Some("SELECT position, kind, sealed FROM warrant_targets WHERE warrant_id = ?1 ORDER BY position")
        }
        SealedTable::Orders => {
            Some("SELECT position, kind, sealed FROM preservation_targets WHERE order_id = ?1 ORDER BY position")
        }
    }
}

/// A row's sealed values and the tag it carries.
type SealedRow = (Vec<Value>, Option<Vec<u8>>);

/// The values a row's tag covers (its columns, then each of its targets'
/// position, kind and sealed value), and the tag it carries; `None` if
/// there is no such row.
fn row(db: &Connection, table: SealedTable, id: &str) -> Result<Option<SealedRow>, RegistryError> {
    let columns = columns(table);
    let count = columns.split(',').count();
    let (name, id_column) = (table.name(), id_column(table));
    let mut statement = db.prepare_cached(&format!("SELECT {columns}, seal FROM {name} WHERE {id_column} = ?1"))?;
    let found = statement
        .query_row(params![id], |r| {
            let values = (0..count).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((values, r.get::<_, Option<Vec<u8>>>(count)?))
        })
        .optional()?;
    let Some((mut values, tag)) = found else { return Ok(None) };
    if let Some(query) = targets(table) {
        let mut targets = db.prepare_cached(query)?;
        for target in targets.query_map(params![id], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]))? {
            values.extend(target?);
        }
    }
    Ok(Some((values, tag)))
}

fn fields(values: &[Value]) -> Vec<Field<'_>> {
    values
        .iter()
        .map(|value| match value {
            Value::Null => Field::Null,
            Value::Integer(v) => Field::Int(*v),
            // No sealed column holds a float; its bits if one ever does.
            Value::Real(v) => Field::Int(v.to_bits() as i64),
            Value::Text(v) => Field::Text(v),
            Value::Blob(v) => Field::Blob(v),
        })
        .collect()
}

/// Seals the row `id` of `table` as it now is (in the caller's
/// transaction, after the change).
fn reseal(db: &Connection, seal: &RowSeal, table: SealedTable, id: &str) -> Result<(), RegistryError> {
    let Some((values, _)) = row(db, table, id)? else { return Ok(()) };
    let tag = seal.tag(table, &fields(&values));
    let (name, id_column) = (table.name(), id_column(table));
    db.prepare_cached(&format!("UPDATE {name} SET seal = ?2 WHERE {id_column} = ?1"))?.execute(params![id, tag])?;
    Ok(())
}

/// Seals every row of `tables` that has no seal: the rows written before
/// their seals existed. Runs once per set of [`SEALED_SETS`], before the
/// set is marked adopted ([`crate::keys::KeyStore::mark_registry_adopted`]);
/// afterwards a row without a seal is refused. Returns how many rows it
/// sealed.
pub(super) fn adopt(db: &mut Connection, seal: &RowSeal, tables: &[SealedTable]) -> Result<usize, RegistryError> {
    let tx = db.transaction()?;
    let mut sealed = 0;
    for &table in tables {
        let ids: Vec<String> = tx
            .prepare(&format!("SELECT {} FROM {} WHERE seal IS NULL", id_column(table), table.name()))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &ids {
            reseal(&tx, seal, table, id)?;
        }
        sealed += ids.len();
    }
    tx.commit()?;
    Ok(sealed)
}

impl SqliteRegistry {
    /// Seals the row `id` of `table` after a change, in its transaction.
    pub(super) fn reseal(&self, db: &Connection, table: SealedTable, id: &str) -> Result<(), RegistryError> {
        reseal(db, &self.seal, table, id)
    }

    /// Checks the seal of the row `id` of `table` before it is read: a
    /// row written or changed behind the service is refused (and logged,
    /// for the operator). A row that does not exist passes: the read finds
    /// nothing.
    /// The names that `rows` of `table` (row id, name) give, counted only
    /// for the rows whose seals hold; the others reported with their
    /// refusal.
    pub(super) fn named_by_sealed_rows(
        &self,
        db: &Connection,
        table: SealedTable,
        rows: impl IntoIterator<Item = (String, String)>,
    ) -> Result<NamedKeys, RegistryError> {
        let mut named = NamedKeys::default();
        for (id, name) in rows {
            match self.check(db, table, &id) {
                Ok(()) => {
                    named.names.insert(name);
                }
                Err(refused @ RegistryError::Tampered { .. }) => {
                    named.refused.insert(name, refused);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(named)
    }

    pub(super) fn check(&self, db: &Connection, table: SealedTable, id: &str) -> Result<(), RegistryError> {
        let Some((values, tag)) = row(db, table, id)? else { return Ok(()) };
        self.seal.check(table, id, &fields(&values), tag.as_deref()).inspect_err(|error| {
            tracing::error!(%error, "a registry row was refused");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyStore;

    fn registry(root: &std::path::Path) -> SqliteRegistry {
        SqliteRegistry::open(&root.join("state"), &KeyStore::open(&root.join("keys"), None).unwrap()).unwrap()
    }

    /// A directory with a keystore made, for [`registry`] to open.
    fn root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        root
    }

    fn insert(registry: &SqliteRegistry, id: &str) {
        let db = registry.db();
        db.execute(
            "INSERT INTO principals (id, name, person, roles, token_sha256, created_at)
             VALUES (?1, 'n', 'p', 'auditor', ?1, 't')",
            [id],
        )
        .unwrap();
        registry.reseal(&db, SealedTable::Principals, id).unwrap();
    }

    #[test]
    fn rows_written_before_the_key_are_sealed_once_and_never_again() {
        let root = root();
        let first = registry(root.path());
        insert(&first, "p-1");
        // A row from before the seals, revoked then: no seal, and no
        // adoption yet.
        first.db().execute("UPDATE principals SET seal = NULL, revoked_at = 't'", []).unwrap();
        std::fs::remove_file(root.path().join("keys/registry/rows.adopted")).unwrap();
        drop(first);

        let keys = KeyStore::open(&root.path().join("keys"), None).unwrap();
        assert!(!keys.is_principal_retired("p-1").unwrap());
        let second = registry(root.path());
        second.check(&second.db(), SealedTable::Principals, "p-1").unwrap();
        assert!(keys.is_principal_retired("p-1").unwrap(), "its revocation kept out of the registry's reach");
        // Once adopted, a row without a seal is no longer sealed for it.
        second.db().execute("UPDATE principals SET seal = NULL", []).unwrap();
        drop(second);
        let third = registry(root.path());
        let refused = third.check(&third.db(), SealedTable::Principals, "p-1").unwrap_err();
        assert!(matches!(refused, RegistryError::Tampered { table: "principals", .. }), "{refused:?}");
        // Nor a row put in by hand.
        third
            .db()
            .execute("INSERT INTO principals (id, name, person, roles, token_sha256, created_at) VALUES ('p-2', 'n', 'p', 'admin', 'x', 't')", [])
            .unwrap();
        assert!(third.check(&third.db(), SealedTable::Principals, "p-2").is_err());
        // A row the service writes is sealed.
        insert(&third, "p-3");
        third.check(&third.db(), SealedTable::Principals, "p-3").unwrap();
    }

    /// A registry upgraded from one whose principals, warrants and orders
    /// were sealed already: its requests are sealed once, on their own.
    #[test]
    fn a_set_of_tables_sealed_later_is_adopted_on_its_own() {
        let root = root();
        let first = registry(root.path());
        let db = first.db();
        db.execute("INSERT INTO authorities (id, country, name, created_at) VALUES ('dk', 'dk', 'dk', 't')", [])
            .unwrap();
        db.execute(
            "INSERT INTO requests (request_id, authority_id, request_number, warrant_id, principal_id, status,
                 submitted_at_us, result_name)
             VALUES ('r-1', 'dk', 1, 'w-1', 'p-1', 'answered', 0, 'result-1')",
            [],
        )
        .unwrap();
        // As the version before sealed requests left it.
        db.execute("UPDATE requests SET seal = NULL", []).unwrap();
        drop(db);
        drop(first);
        let adopted = |set: &str| root.path().join(format!("keys/registry/{set}.adopted")).exists();
        std::fs::remove_file(root.path().join("keys/registry/requests.adopted")).unwrap();
        assert!(adopted("rows"));

        let second = registry(root.path());
        second.check(&second.db(), SealedTable::Requests, "r-1").unwrap();
        assert!(adopted("requests"));
        // Then never again.
        second.db().execute("UPDATE requests SET seal = NULL, authority_id = 'dk'", []).unwrap();
        drop(second);
        let third = registry(root.path());
        let refused = third.check(&third.db(), SealedTable::Requests, "r-1").unwrap_err();
        assert!(matches!(refused, RegistryError::Tampered { table: "requests", .. }), "{refused:?}");
    }

    /// A column a later migration adds to a sealed table is sealed too, or
    /// this fails: every column but the seal is covered.
    #[test]
    fn a_seal_covers_every_column_of_its_table() {
        let root = root();
        let registry = registry(root.path());
        let db = registry.db();
        let stored = |table: &str, unsealed: &str| -> Vec<String> {
            let mut statement = db.prepare(&format!("SELECT name FROM pragma_table_info('{table}')")).unwrap();
            let mut names: Vec<String> = statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
            names.retain(|c| c != unsealed);
            names.sort();
            names
        };
        for table in SEALED_SETS.iter().flat_map(|(_, tables)| tables.iter().copied()) {
            let mut sealed: Vec<String> = columns(table).split(',').map(|c| c.trim().to_string()).collect();
            sealed.sort();
            assert_eq!(sealed, stored(table.name(), "seal"), "{}", table.name());
        }
        // A target is sealed by its position, kind and sealed value; the
        // row it belongs to names it. A request's ages by bucket and count.
        for (targets, owner) in [("warrant_targets", "warrant_id"), ("preservation_targets", "order_id")] {
            assert_eq!(stored(targets, owner), ["kind", "position", "sealed"], "{targets}");
        }
        assert_eq!(stored("request_ages", "request_id"), ["bucket", "records"]);
    }

    /// Someone flips a row between what the service wrote and a forged
    /// version while it is being read: what a read returns is what its
    /// check saw, never the forged roles beside a sound seal.
    #[test]
    fn a_row_and_its_seal_are_read_in_one_snapshot() {
        use crate::registry::{AccessRegistry, PrincipalKey, Role};
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = root();
        let registry = registry(root.path());
        insert(&registry, "p-1");
        let stop = AtomicBool::new(false);
        // Stops the flipper however the reads end, a failed assertion
        // included.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let flipper = rusqlite::Connection::open(root.path().join("state/registry.sqlite")).unwrap();
                flipper.pragma_update(None, "synchronous", "OFF").unwrap();
                flipper.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                for roles in ["admin", "auditor"].iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    flipper.execute("UPDATE principals SET roles = ?1 WHERE id = 'p-1'", [roles]).unwrap();
                }
            });
            let _stop = Stop(&stop);
            let mut refused = 0;
            for _ in 0..3_000 {
                match registry.find_principal(PrincipalKey::Id("p-1")) {
                    Ok(found) => assert!(!found.unwrap().has(Role::Admin), "forged roles read past a sound seal"),
                    Err(RegistryError::Tampered { .. }) => refused += 1,
                    Err(other) => panic!("{other:?}"),
                }
            }
            assert!(refused > 0, "the forged version was met");
        });
    }
}

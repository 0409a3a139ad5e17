//! The registry's schema: numbered migrations applied in order at open;
//! `PRAGMA user_version` records how many ran. A shipped migration is never
//! edited: the next change is a new one.

use std::path::Path;

use rusqlite::Connection;

use crate::registry::{REGISTRY_FILE, RegistryError};

/// Schema migrations, applied in order. Never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: preservation orders.
    "CREATE TABLE preservation_orders (
        id TEXT PRIMARY KEY,
        authority TEXT NOT NULL,
        reference TEXT NOT NULL,
        window_start_us INTEGER NOT NULL,
        window_end_us INTEGER NOT NULL,
        ends TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'lifted')),
        placed_at TEXT NOT NULL,
        lifted_at TEXT,
        UNIQUE (authority, reference)
    );
    CREATE TABLE preservation_targets (
        order_id TEXT NOT NULL REFERENCES preservation_orders(id),
        position INTEGER NOT NULL,
        kind TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (order_id, position)
    );
    CREATE TABLE preservation_target_tokens (
        order_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        token_key_id TEXT NOT NULL,
        token INTEGER NOT NULL,
        PRIMARY KEY (order_id, position, token_key_id)
    );",
    // 2: lawful access: authorities, principals, warrants.
    "CREATE TABLE authorities (
        id TEXT PRIMARY KEY,
        country TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE principals (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        roles TEXT NOT NULL,
        authority_id TEXT REFERENCES authorities(id),
        token_sha256 BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE warrants (
        id TEXT PRIMARY KEY,
        authority_id TEXT NOT NULL REFERENCES authorities(id),
        reference TEXT NOT NULL,
        issued_by TEXT NOT NULL,
        legal_basis TEXT NOT NULL,
        period_start_us INTEGER NOT NULL,
        period_end_us INTEGER NOT NULL,
        categories TEXT NOT NULL,
        valid_until_us INTEGER NOT NULL,
        status TEXT NOT NULL,
        registered_by TEXT NOT NULL,
        decided_by TEXT,
        decision_reason TEXT,
        registered_at TEXT NOT NULL,
        UNIQUE (authority_id, reference)
    );
    CREATE TABLE warrant_targets (
        warrant_id TEXT NOT NULL REFERENCES warrants(id),
        position INTEGER NOT NULL,
        kind TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (warrant_id, position)
    );
    CREATE TABLE warrant_target_tokens (
        warrant_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        token_key_id TEXT NOT NULL,
        token INTEGER NOT NULL,
        PRIMARY KEY (warrant_id, position, token_key_id)
    );",
    // 3: lawful requests, their outcome, and the age of the data delivered.
    "CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        authority_id TEXT NOT NULL REFERENCES authorities(id),
        request_number INTEGER NOT NULL,
        warrant_id TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('answered', 'answered_partially', 'unavailable', 'refused')),
        reason TEXT,
        submitted_at_us INTEGER NOT NULL,
        records INTEGER NOT NULL DEFAULT 0,
        format TEXT,
        sha256 TEXT,
        bytes INTEGER NOT NULL DEFAULT 0,
        days_unavailable INTEGER NOT NULL DEFAULT 0,
        result_name TEXT,
        result_expires_us INTEGER,
        UNIQUE (authority_id, request_number)
    );
    CREATE TABLE request_ages (
        request_id TEXT NOT NULL REFERENCES requests(request_id),
        bucket INTEGER NOT NULL,
        records INTEGER NOT NULL,
        PRIMARY KEY (request_id, bucket)
    );",
    // 4: client certificates (mTLS) mapped to principals, by SHA-256 of the DER.
    "ALTER TABLE principals ADD COLUMN cert_sha256 BLOB;
    CREATE UNIQUE INDEX principals_cert_sha256 ON principals(cert_sha256) WHERE cert_sha256 IS NOT NULL;",
    // 5: persons behind principals (each existing principal its own), expiry
    // and revocation; cell dumps granted explicitly; the registrar's person
    // kept with each warrant for the four-eyes rule.
    "ALTER TABLE principals ADD COLUMN person TEXT;
    UPDATE principals SET person = id;
    ALTER TABLE principals ADD COLUMN expires_at_us INTEGER;
    ALTER TABLE principals ADD COLUMN revoked_at TEXT;
    CREATE INDEX principals_person ON principals(person);
    ALTER TABLE warrants ADD COLUMN cell_dump INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE warrants ADD COLUMN registered_by_person TEXT NOT NULL DEFAULT '';
    UPDATE warrants SET registered_by_person =
        COALESCE((SELECT person FROM principals WHERE principals.id = warrants.registered_by), registered_by);",
    // 6: preservation orders are reviewed like warrants: registered by one
    // reviewer, approved (active) or rejected by another; an extension waits
    // for its own approval. Orders placed before stay active, their
    // registrar unknown. (The table is rebuilt to widen its status check;
    // foreign keys are enforced only after the migrations.)
    "CREATE TABLE preservation_orders_v6 (
        id TEXT PRIMARY KEY,
        authority TEXT NOT NULL,
        reference TEXT NOT NULL,
        window_start_us INTEGER NOT NULL,
        window_end_us INTEGER NOT NULL,
        ends TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('registered', 'active', 'rejected', 'lifted')),
        placed_at TEXT NOT NULL,
        lifted_at TEXT,
        registered_by TEXT NOT NULL,
        registered_by_person TEXT NOT NULL,
        decided_by TEXT,
        decision_reason TEXT,
        pending_ends TEXT,
        pending_by TEXT,
        pending_by_person TEXT,
        UNIQUE (authority, reference)
    );
    INSERT INTO preservation_orders_v6 (id, authority, reference, window_start_us, window_end_us, ends, status,
        placed_at, lifted_at, registered_by, registered_by_person)
        SELECT id, authority, reference, window_start_us, window_end_us, ends, status, placed_at, lifted_at,
            'unknown', 'unknown'
        FROM preservation_orders;
    DROP TABLE preservation_orders;
    ALTER TABLE preservation_orders_v6 RENAME TO preservation_orders;",
    // 7: tokens are computed under each day's own token key when used, so
    // no record stores one (secure_delete overwrites the rows dropped).
    "DELETE FROM warrant_target_tokens;
    DELETE FROM preservation_target_tokens;
    DROP TABLE warrant_target_tokens;
    DROP TABLE preservation_target_tokens;",
    // 8: a request's sealed result is committed with its record, in the
    // same transaction (results sealed before are still read from their
    // files in `results/`).
    "CREATE TABLE sealed_results (
        name TEXT PRIMARY KEY,
        sealed BLOB NOT NULL
    );",
    // 9: the requests whose result is still kept, by expiry and by
    // warrant: every submission and fetch sweeps the expired ones, and a
    // year of requests made that a scan of all of them (about 9 ms a call
    // at 200,000). Only kept results are indexed, a handful at any time.
    "CREATE INDEX requests_kept_by_expiry ON requests(result_expires_us) WHERE result_name IS NOT NULL;
    CREATE INDEX requests_kept_by_warrant ON requests(warrant_id) WHERE result_name IS NOT NULL;",
    // 10: requests listed a page at a time, newest first, all of them or
    // one authority's.
    "CREATE INDEX requests_newest ON requests(submitted_at_us, request_number, request_id);
    CREATE INDEX requests_newest_of_authority ON requests(authority_id, submitted_at_us, request_number, request_id);",
    // 11: principals, warrants and preservation orders carry a seal of
    // their columns under the registry key (`registry::seal`). The rows
    // written before get theirs once, when the key is made
    // (`super::seal::adopt`); a later migration that changes one of these
    // tables (or their targets) must re-seal what it changed.
    "ALTER TABLE principals ADD COLUMN seal BLOB;
    ALTER TABLE warrants ADD COLUMN seal BLOB;
    ALTER TABLE preservation_orders ADD COLUMN seal BLOB;",
    // 12: lawful requests are sealed too: who may fetch a result (its
    // authority), which result and digest, and until when it is kept.
    // Adopted like 11, as a set of its own (`super::seal::SEALED_SETS`).
    "ALTER TABLE requests ADD COLUMN seal BLOB;",
];

/// Opens (creating and migrating) the registry in `state_dir`. A registry
/// already migrated beyond what this binary knows is refused.
pub(super) fn open(state_dir: &Path) -> Result<Connection, RegistryError> {
    let mut connection = Connection::open(state_dir.join(REGISTRY_FILE))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    // Deleted rows (the targets of closed warrants and lifted orders) are
    // overwritten, not left in free pages.
    connection.pragma_update(None, "secure_delete", "ON")?;
    // A migration may rebuild a table that others reference: foreign keys
    // are checked once they are all applied.
    migrate(&mut connection)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), RegistryError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(RegistryError::Backend(format!(
            "the registry is at schema version {version}, made by a newer cdrvault; this one knows up to {}: \
             run the newer version (an older one would write rows it refuses)",
            MIGRATIONS.len()
        )));
    }
    for (n, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = connection.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", (n + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_record_their_number() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let connection = open(dir.path()).unwrap();
        let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = connection.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    /// A binary older than the registry it is given would write rows the
    /// newer one refuses (or miss what a newer column decides): it stops
    /// before reading or writing anything.
    #[test]
    fn a_registry_migrated_by_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let newer = MIGRATIONS.len() as i64 + 1;
        open(dir.path()).unwrap().pragma_update(None, "user_version", newer).unwrap();
        let refused = open(dir.path()).map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains(&format!("version {newer}")), "{refused}");
        let connection = Connection::open(dir.path().join(REGISTRY_FILE)).unwrap();
        let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, newer, "left as the newer version made it");
    }
}

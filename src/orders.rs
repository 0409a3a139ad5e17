//! Preservation orders ("quick freeze"), kept in the embedded registry
//! (`registry.rs`: SQLite, numbered migrations, `<state_dir>/registry.sqlite`)
//! where the lawful-access service's authorities, principals and warrants
//! will live too.
//!
//! An order names an authority, its reference, targets (kind and value), a
//! window of communications and an end date. Target values are never stored
//! in clear: the registry keeps, per target, its token under every token key
//! (to match rows) and the canonical value sealed with the order's own key
//! (to confirm matches and to re-tokenise after a key rotation). Lifting an
//! order destroys that key, and with it the targets and every preserved copy.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};

pub use crate::registry::REGISTRY_FILE;

use crate::decode::normalise;
use crate::keys::{KeyError, KeyStore, SecretKey};
use crate::models::{IdentifierKind, KeyId, PartitionDate, TimestampMicros, Token};
use crate::pseudonymise::{Tokeniser, canonical_ip};

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("registry error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("target {position} is not a valid {kind}")]
    InvalidTarget { position: usize, kind: &'static str },
    #[error("target {0} must be written kind:value, kind one of msisdn, imsi, imei, sip, cell, ip")]
    TargetSyntax(usize),
    #[error("the window must end after it starts, and the order must end on or after today")]
    InvalidPeriod,
    #[error("no active preservation order {0}")]
    NotFound(String),
    #[error("authority {0} already has an order with that reference")]
    Duplicate(String),
    #[error("order key is missing or a target cannot be unsealed")]
    Sealing,
}

/// A target of an order, as given (raw; it lives only in memory).
pub struct TargetInput {
    pub kind: IdentifierKind,
    pub value: String,
}

impl std::fmt::Debug for TargetInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetInput({}, <redacted>)", self.kind.as_str())
    }
}

impl TargetInput {
    /// Parses `kind:value`, e.g. `msisdn:+4520000001`.
    pub fn parse(text: &str, position: usize) -> Result<TargetInput, OrderError> {
        let (kind, value) = text.split_once(':').ok_or(OrderError::TargetSyntax(position))?;
        let kind = IdentifierKind::parse(kind).ok_or(OrderError::TargetSyntax(position))?;
        Ok(TargetInput { kind, value: value.to_string() })
    }
}

/// A new order.
#[derive(Debug)]
pub struct NewOrder {
    pub authority: String,
    pub reference: String,
    pub targets: Vec<TargetInput>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub ends: PartitionDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Active,
    Lifted,
}

/// A target as stored: tokens per token key, and the sealed canonical value.
#[derive(Clone)]
pub struct StoredTarget {
    pub kind: IdentifierKind,
    pub tokens: Vec<(KeyId, Token)>,
    sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredTarget({}, {} tokens)", self.kind.as_str(), self.tokens.len())
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub authority: String,
    pub reference: String,
    pub window_start: TimestampMicros,
    pub window_end: TimestampMicros,
    pub ends: PartitionDate,
    pub status: OrderStatus,
    pub targets: Vec<StoredTarget>,
}

impl Order {
    /// True if the order's window touches `day`.
    pub fn covers(&self, day: PartitionDate) -> bool {
        let start = day.start().0;
        let end = start + 86_400_000_000;
        self.window_start.0 < end && self.window_end.0 >= start
    }

    /// The canonical values of the targets, unsealed with the order's key:
    /// for confirming matches only.
    pub fn unseal_targets(&self, key: &SecretKey) -> Result<Vec<(IdentifierKind, String)>, OrderError> {
        self.targets
            .iter()
            .map(|t| {
                crate::keys::open_value(key, self.id.as_bytes(), &t.sealed)
                    .map(|value| (t.kind, value))
                    .ok_or(OrderError::Sealing)
            })
            .collect()
    }
}

/// The registry of orders.
pub struct OrderStore {
    connection: Mutex<Connection>,
    rng: SystemRandom,
}

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderStore")
    }
}

impl OrderStore {
    /// Opens (creating and migrating) the registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<OrderStore, OrderError> {
        crate::durable::create_dir_all(state_dir).map_err(KeyError::from)?;
        let connection = crate::registry::open(state_dir)?;
        Ok(OrderStore { connection: Mutex::new(connection), rng: SystemRandom::new() })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Places an order: creates its key, stores its targets sealed and
    /// tokenised under every token key. Returns the new order.
    pub fn place(
        &self,
        order: NewOrder,
        keys: &KeyStore,
        today: PartitionDate,
        now: DateTime<Utc>,
    ) -> Result<Order, OrderError> {
        if order.window_end <= order.window_start || order.ends < today {
            return Err(OrderError::InvalidPeriod);
        }
        let mut canonical = Vec::with_capacity(order.targets.len());
        for (position, target) in order.targets.iter().enumerate() {
            let value = canonical_value(target.kind, &target.value)
                .ok_or(OrderError::InvalidTarget { position: position + 1, kind: target.kind.as_str() })?;
            canonical.push((target.kind, value));
        }
        let mut suffix = [0u8; 4];
        self.rng.fill(&mut suffix).map_err(|_| KeyError::Random)?;
        let id = format!("po-{:08x}", u32::from_be_bytes(suffix));
        let mut db = self.db();
        let exists: Option<String> = db
            .query_row(
                "SELECT id FROM preservation_orders WHERE authority = ?1 AND reference = ?2",
                params![order.authority, order.reference],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Err(OrderError::Duplicate(order.authority));
        }
        let (_, key) = keys.create_order_key(&id)?;
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO preservation_orders (id, authority, reference, window_start_us, window_end_us, ends, status, placed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
            params![
                id,
                order.authority,
                order.reference,
                order.window_start.timestamp_micros(),
                order.window_end.timestamp_micros(),
                order.ends.to_string(),
                now.to_rfc3339(),
            ],
        )?;
        for (position, (kind, value)) in canonical.iter().enumerate() {
            let sealed =
                crate::keys::seal_value(&key, &self.rng, id.as_bytes(), value).map_err(|_| OrderError::Sealing)?;
            tx.execute(
                "INSERT INTO preservation_targets (order_id, position, kind, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![id, position as i64, kind.as_str(), sealed],
            )?;
            for token_key in keys.token_keys() {
                let token = Tokeniser::new(token_key).token(*kind, value.as_bytes());
                tx.execute(
                    "INSERT INTO preservation_target_tokens (order_id, position, token_key_id, token) VALUES (?1, ?2, ?3, ?4)",
                    params![id, position as i64, token_key.id.as_str(), token.0],
                )?;
            }
        }
        tx.commit()?;
        drop(db);
        self.get(&id)?.ok_or(OrderError::NotFound(id))
    }

    /// One order by id.
    pub fn get(&self, id: &str) -> Result<Option<Order>, OrderError> {
        Ok(self.load(Some(id), false)?.pop())
    }

    /// Every order (active and lifted), oldest first.
    pub fn list(&self) -> Result<Vec<Order>, OrderError> {
        self.load(None, false)
    }

    /// The active orders.
    pub fn active(&self) -> Result<Vec<Order>, OrderError> {
        self.load(None, true)
    }

    /// Moves an active order's end date.
    pub fn extend(&self, id: &str, ends: PartitionDate) -> Result<(), OrderError> {
        let changed = self.db().execute(
            "UPDATE preservation_orders SET ends = ?2 WHERE id = ?1 AND status = 'active'",
            params![id, ends.to_string()],
        )?;
        if changed == 0 {
            return Err(OrderError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Marks an order lifted. The caller destroys its key and copies.
    pub fn mark_lifted(&self, id: &str, now: DateTime<Utc>) -> Result<(), OrderError> {
        let changed = self.db().execute(
            "UPDATE preservation_orders SET status = 'lifted', lifted_at = ?2 WHERE id = ?1 AND status = 'active'",
            params![id, now.to_rfc3339()],
        )?;
        if changed == 0 {
            return Err(OrderError::NotFound(id.to_string()));
        }
        Ok(())
    }

    fn load(&self, id: Option<&str>, active_only: bool) -> Result<Vec<Order>, OrderError> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT id, authority, reference, window_start_us, window_end_us, ends, status FROM preservation_orders
             WHERE (?1 IS NULL OR id = ?1) AND (?2 = 0 OR status = 'active') ORDER BY placed_at, id",
        )?;
        let rows = statement.query_map(params![id, active_only as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut orders = Vec::new();
        for row in rows {
            let (id, authority, reference, start, end, ends, status) = row?;
            let mut targets: Vec<StoredTarget> = Vec::new();
            let mut t = db.prepare(
                "SELECT position, kind, sealed FROM preservation_targets WHERE order_id = ?1 ORDER BY position",
            )?;
            let stored = t.query_map(params![id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?))
            })?;
            for target in stored {
                let (position, kind, sealed) = target?;
                let kind = IdentifierKind::parse(&kind).unwrap_or(IdentifierKind::Msisdn);
                let mut k = db.prepare(
                    "SELECT token_key_id, token FROM preservation_target_tokens WHERE order_id = ?1 AND position = ?2",
                )?;
                let tokens = k
                    .query_map(params![id, position], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                    .filter_map(|r| r.ok())
                    .filter_map(|(key, token)| KeyId::new(key).map(|key| (key, Token(token))))
                    .collect();
                targets.push(StoredTarget { kind, tokens, sealed });
            }
            orders.push(Order {
                id,
                authority,
                reference,
                window_start: TimestampMicros(start),
                window_end: TimestampMicros(end),
                ends: PartitionDate::parse(&ends).unwrap_or(PartitionDate::EPOCH),
                status: if status == "active" { OrderStatus::Active } else { OrderStatus::Lifted },
                targets,
            });
        }
        Ok(orders)
    }
}

/// The canonical form of a target value, as ingest would store it.
pub fn canonical_value(kind: IdentifierKind, text: &str) -> Option<String> {
    let text = text.into();
    Some(match kind {
        IdentifierKind::Msisdn => normalise::msisdn(text)?.expose().to_string(),
        IdentifierKind::Imsi => normalise::imsi(text)?.expose().to_string(),
        IdentifierKind::Imei => normalise::imei(text)?.expose().to_string(),
        IdentifierKind::Sip => normalise::sip_uri(text)?.expose().to_string(),
        IdentifierKind::Cell => normalise::cell_id(text)?.expose().to_string(),
        IdentifierKind::Ip => canonical_ip(normalise::ip(&text)?.expose()).as_str().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn orders_round_trip_without_storing_targets_in_clear() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = KeyStore::open(&root.path().join("keys"), None).unwrap();
        let store = OrderStore::open(&root.path().join("state")).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        let today = PartitionDate::parse("2026-11-24").unwrap();
        let order = store
            .place(
                NewOrder {
                    authority: "dk-police".into(),
                    reference: "QF-2026-17".into(),
                    targets: vec![TargetInput::parse("msisdn:0045 20 00 00 01", 1).unwrap()],
                    window_start: now - chrono::Duration::days(30),
                    window_end: now,
                    ends: PartitionDate::parse("2027-06-01").unwrap(),
                },
                &keys,
                today,
                now,
            )
            .unwrap();
        assert_eq!(order.targets[0].tokens.len(), 1);
        let key = keys.order_key(&order.id).unwrap().unwrap().1;
        assert_eq!(order.unseal_targets(&key).unwrap(), vec![(IdentifierKind::Msisdn, "+4520000001".to_string())]);
        assert!(order.covers(today) && !order.covers(PartitionDate::parse("2026-11-25").unwrap()));

        let bytes = std::fs::read(root.path().join("state").join(REGISTRY_FILE)).unwrap();
        let wal = std::fs::read(root.path().join("state").join(format!("{REGISTRY_FILE}-wal"))).unwrap_or_default();
        for haystack in [&bytes, &wal] {
            assert!(!haystack.windows(10).any(|w| w == b"4520000001"), "target stored in clear");
        }

        let duplicate = NewOrder {
            authority: "dk-police".into(),
            reference: "QF-2026-17".into(),
            targets: vec![],
            window_start: now - chrono::Duration::days(1),
            window_end: now,
            ends: today,
        };
        assert!(matches!(store.place(duplicate, &keys, today, now), Err(OrderError::Duplicate(_))));
        store.mark_lifted(&order.id, now).unwrap();
        assert!(store.active().unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn malformed_targets_are_refused_by_position() {
        assert!(matches!(TargetInput::parse("phone:+45", 2), Err(OrderError::TargetSyntax(2))));
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = KeyStore::open(&root.path().join("keys"), None).unwrap();
        let store = OrderStore::open(&root.path().join("state")).unwrap();
        let now = Utc::now();
        let result = store.place(
            NewOrder {
                authority: "a".into(),
                reference: "r".into(),
                targets: vec![TargetInput::parse("imsi:123", 1).unwrap()],
                window_start: now - chrono::Duration::days(1),
                window_end: now,
                ends: PartitionDate::parse("2099-01-01").unwrap(),
            },
            &keys,
            crate::models::TimestampMicros::from_datetime(now).partition_date(),
            now,
        );
        assert!(matches!(result, Err(OrderError::InvalidTarget { position: 1, kind: "imsi" })));
    }
}

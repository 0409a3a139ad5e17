//! Preservation orders ("quick freeze"), kept in the registry behind
//! [`OrderRegistry`] (by default the embedded SQLite one, `registry.rs`:
//! numbered migrations, `<state_dir>/registry.sqlite`, beside the
//! lawful-access service's authorities, principals and warrants).
//!
//! An order names an authority, its reference, targets (kind and value), a
//! window of communications and an end date. Target values are never stored
//! in clear: the registry keeps, per target, its token under every token key
//! (to match rows) and the canonical value sealed with the order's own key
//! (to confirm matches and to re-tokenise after a key rotation). Lifting an
//! order destroys that key, and with it the targets and every preserved copy.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};

pub use crate::registry::REGISTRY_FILE;
use crate::registry::RegistryError;
use crate::registry::sqlite::SqliteRegistry;

use crate::decode::normalise;
use crate::keys::{KeyError, KeyStore, SecretKey};
use crate::models::{IdentifierKind, KeyId, PartitionDate, TimestampMicros, Token};
use crate::pseudonymise::{Tokeniser, canonical_ip};

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
    /// The canonical value sealed under the order's key.
    pub sealed: Vec<u8>,
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

/// Where orders are kept: rows in and out, behind a small trait so that
/// PostgreSQL can replace SQLite when several instances share a registry
/// (as [`crate::access::AccessRegistry`] does for lawful access). The rules
/// (validation, order keys, sealing, tokens) stay in [`OrderStore`].
pub trait OrderRegistry: Send + Sync {
    /// True if the authority already has an order with this reference.
    fn order_exists(&self, authority: &str, reference: &str) -> Result<bool, RegistryError>;

    /// Stores a new active order with its targets, in one transaction;
    /// `Conflict` if its id or (authority, reference) is taken.
    fn insert_order(&self, order: &Order, placed_at: DateTime<Utc>) -> Result<(), RegistryError>;

    /// The orders asked for, oldest first.
    fn load_orders(&self, which: Which<'_>) -> Result<Vec<Order>, RegistryError>;

    /// Moves an active order's end date; false if there is no such order.
    fn set_order_end(&self, id: &str, ends: PartitionDate) -> Result<bool, RegistryError>;

    /// Marks an active order lifted; false if there is no such order.
    fn mark_order_lifted(&self, id: &str, at: DateTime<Utc>) -> Result<bool, RegistryError>;
}

/// Which orders [`OrderRegistry::load_orders`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which<'a> {
    One(&'a str),
    All,
    Active,
}

/// The orders: their rules over an [`OrderRegistry`].
pub struct OrderStore {
    registry: Arc<dyn OrderRegistry>,
    rng: SystemRandom,
}

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderStore")
    }
}

impl OrderStore {
    /// Opens (creating and migrating) the SQLite registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<OrderStore, OrderError> {
        crate::durable::create_dir_all(state_dir).map_err(KeyError::from)?;
        Ok(OrderStore::new(Arc::new(SqliteRegistry::open(state_dir)?)))
    }

    pub fn new(registry: Arc<dyn OrderRegistry>) -> OrderStore {
        OrderStore { registry, rng: SystemRandom::new() }
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
        if self.registry.order_exists(&order.authority, &order.reference)? {
            return Err(OrderError::Duplicate(order.authority));
        }
        let (_, key) = keys.create_order_key(&id)?;
        let mut targets = Vec::with_capacity(canonical.len());
        for (kind, value) in &canonical {
            let sealed =
                crate::keys::seal_value(&key, &self.rng, id.as_bytes(), value).map_err(|_| OrderError::Sealing)?;
            let tokens = keys
                .token_keys()
                .iter()
                .map(|token_key| (token_key.id.clone(), Tokeniser::new(token_key).token(*kind, value.as_bytes())))
                .collect();
            targets.push(StoredTarget { kind: *kind, tokens, sealed });
        }
        let placed = Order {
            id: id.clone(),
            authority: order.authority.clone(),
            reference: order.reference,
            window_start: TimestampMicros::from_datetime(order.window_start),
            window_end: TimestampMicros::from_datetime(order.window_end),
            ends: order.ends,
            status: OrderStatus::Active,
            targets,
        };
        if let Err(e) = self.registry.insert_order(&placed, now) {
            // The order does not exist: its new key must not either. Best
            // effort; the insert's error is what the caller needs.
            let _ = keys.destroy_order_key(&id);
            return Err(match e {
                // Placed concurrently under the same reference.
                RegistryError::Conflict => OrderError::Duplicate(order.authority),
                e => e.into(),
            });
        }
        self.get(&id)?.ok_or(OrderError::NotFound(id))
    }

    /// One order by id.
    pub fn get(&self, id: &str) -> Result<Option<Order>, OrderError> {
        Ok(self.registry.load_orders(Which::One(id))?.pop())
    }

    /// Every order (active and lifted), oldest first.
    pub fn list(&self) -> Result<Vec<Order>, OrderError> {
        Ok(self.registry.load_orders(Which::All)?)
    }

    /// The active orders.
    pub fn active(&self) -> Result<Vec<Order>, OrderError> {
        Ok(self.registry.load_orders(Which::Active)?)
    }

    /// Moves an active order's end date.
    pub fn extend(&self, id: &str, ends: PartitionDate) -> Result<(), OrderError> {
        if !self.registry.set_order_end(id, ends)? {
            return Err(OrderError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Marks an order lifted. The caller destroys its key and copies.
    pub fn mark_lifted(&self, id: &str, now: DateTime<Utc>) -> Result<(), OrderError> {
        if !self.registry.mark_order_lifted(id, now)? {
            return Err(OrderError::NotFound(id.to_string()));
        }
        Ok(())
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

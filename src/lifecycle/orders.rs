//! Preservation orders ("quick freeze"): the rules over the
//! [`OrderRegistry`], and their audit entries.
//!
//! An order names an authority, its reference, targets (kind and value), a
//! window of communications and an end date. Target values are never stored
//! in clear: the registry keeps, per target, its token under every token key
//! (to match rows) and the canonical value sealed with the order's own key
//! (to confirm matches and to re-tokenise after a key rotation). Lifting an
//! order destroys that key, and with it the targets and every preserved
//! copy ([`super::preserve`]). Every change is audited under the actor that
//! made it.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};

use super::preserve::{self, PreserveError};
use crate::audit::{AuditError, AuditEvent, AuditTrail};
use crate::keys::{self, KeyError, KeyStore};
use crate::model::{IdentifierKind, PartitionDate, TimestampMicros};
use crate::privacy::target::{TargetInput, TargetSyntax};
use crate::privacy::token::Tokeniser;
use crate::registry::{Order, OrderRegistry, OrderStatus, RegistryError, StoredTarget, Which};
use crate::storage::layout;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Preserve(#[from] PreserveError),
    #[error("target {position} is not a valid {kind}")]
    InvalidTarget { position: usize, kind: &'static str },
    #[error(transparent)]
    TargetSyntax(#[from] TargetSyntax),
    #[error("the window must end after it starts, and the order must end on or after today")]
    InvalidPeriod,
    #[error("no active preservation order {0}")]
    NotFound(String),
    #[error("authority {0} already has an order with that reference")]
    Duplicate(String),
    #[error("order key is missing or a target cannot be unsealed")]
    Sealing,
}

impl OrderError {
    /// True when the process must stop: an fsync failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            OrderError::Keys(e) => e.is_fatal(),
            OrderError::Audit(e) => e.is_fatal(),
            OrderError::Preserve(e) => e.is_fatal(),
            _ => false,
        }
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

impl NewOrder {
    /// The window covering whole days, from the first microsecond of `from`
    /// to the last of `to`.
    pub fn days(from: PartitionDate, to: PartitionDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        Some((from.start().to_datetime()?, to.end().to_datetime()?))
    }
}

/// The orders: their rules over an [`OrderRegistry`], their keys, their
/// areas in the data directory and their audit entries.
pub struct OrderStore {
    registry: Arc<dyn OrderRegistry>,
    keys: Arc<KeyStore>,
    audit: Arc<AuditTrail>,
    /// The data directory holding the orders' areas.
    data_dir: PathBuf,
    rng: SystemRandom,
}

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderStore")
    }
}

impl OrderStore {
    pub fn new(
        registry: Arc<dyn OrderRegistry>,
        keys: Arc<KeyStore>,
        audit: Arc<AuditTrail>,
        data_dir: PathBuf,
    ) -> OrderStore {
        OrderStore { registry, keys, audit, data_dir, rng: SystemRandom::new() }
    }

    /// Places an order: creates its key, stores its targets sealed and
    /// tokenised under every token key, and audits it under `actor`.
    /// Returns the new order.
    pub fn place(&self, order: NewOrder, actor: &str, now: DateTime<Utc>) -> Result<Order, OrderError> {
        let today = TimestampMicros::from_datetime(now).partition_date();
        if order.window_end <= order.window_start || order.ends < today {
            return Err(OrderError::InvalidPeriod);
        }
        let mut canonical = Vec::with_capacity(order.targets.len());
        for (position, target) in order.targets.iter().enumerate() {
            let value = target
                .canonical()
                .ok_or(OrderError::InvalidTarget { position: position + 1, kind: target.kind.as_str() })?;
            canonical.push((target.kind, value));
        }
        let mut suffix = [0u8; 4];
        self.rng.fill(&mut suffix).map_err(|_| KeyError::Random)?;
        let id = format!("po-{:08x}", u32::from_be_bytes(suffix));
        if self.registry.order_exists(&order.authority, &order.reference)? {
            return Err(OrderError::Duplicate(order.authority));
        }
        let key = self.keys.create_order_key(&id)?;
        let mut targets = Vec::with_capacity(canonical.len());
        for (kind, value) in &canonical {
            let sealed =
                keys::seal_value(&key.secret, &self.rng, id.as_bytes(), value).map_err(|_| OrderError::Sealing)?;
            let tokens = self
                .keys
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
            let _ = self.keys.destroy_order_key(&id);
            return Err(match e {
                // Placed concurrently under the same reference.
                RegistryError::Conflict => OrderError::Duplicate(order.authority),
                e => e.into(),
            });
        }
        self.audit.append(
            actor,
            &AuditEvent::OrderPlaced {
                order: placed.id.clone(),
                authority: placed.authority.clone(),
                targets: placed.targets.len() as u64,
                window_start: placed.window_start.partition_date().to_string(),
                window_end: placed.window_end.partition_date().to_string(),
                ends: placed.ends.to_string(),
            },
            now,
        )?;
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

    /// Moves an active order's end date, audited under `actor`.
    pub fn extend(&self, id: &str, ends: PartitionDate, actor: &str, now: DateTime<Utc>) -> Result<(), OrderError> {
        if !self.registry.set_order_end(id, ends)? {
            return Err(OrderError::NotFound(id.to_string()));
        }
        self.audit.append(actor, &AuditEvent::OrderExtended { order: id.to_string(), ends: ends.to_string() }, now)?;
        Ok(())
    }

    /// Lifts an order (or finishes lifting it): no more copies, its key
    /// destroyed (which makes its copies and stored targets unreadable), its
    /// area deleted, and the lifting audited under `actor` with `reason`.
    /// Returns the files deleted.
    pub fn lift(&self, id: &str, reason: &str, actor: &str, now: DateTime<Utc>) -> Result<u64, OrderError> {
        if self.get(id)?.is_none() {
            return Err(OrderError::NotFound(id.to_string()));
        }
        // Already lifted: this finishes a lift a crash interrupted.
        self.registry.mark_order_lifted(id, now)?;
        self.keys.destroy_order_key(id)?;
        let files = preserve::destroy_area(&self.data_dir, id)?;
        self.audit.append(
            actor,
            &AuditEvent::OrderLifted { order: id.to_string(), files, reason: reason.to_string() },
            now,
        )?;
        Ok(files)
    }

    /// True while an order still has a key or an area: a lifted order that
    /// does is a lift to finish.
    pub fn has_data(&self, id: &str) -> Result<bool, OrderError> {
        Ok(self.keys.order_key(id)?.is_some() || layout::order_dir(&self.data_dir, id).exists())
    }

    /// The canonical values of an order's targets, unsealed with its key: for
    /// confirming matches only, never for display.
    pub fn unseal_targets(&self, order: &Order) -> Result<Vec<(IdentifierKind, String)>, OrderError> {
        order.unseal_targets(&self.keys)?.ok_or(OrderError::Sealing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{REGISTRY_FILE, Registries};
    use chrono::TimeZone;

    fn store(root: &std::path::Path) -> OrderStore {
        KeyStore::init(&root.join("keys"), None).unwrap();
        let keys = Arc::new(KeyStore::open(&root.join("keys"), None).unwrap());
        let audit = Arc::new(AuditTrail::open(&root.join("state"), &keys).unwrap());
        let registries = Registries::sqlite(&root.join("state")).unwrap();
        OrderStore::new(registries.orders, keys, audit, root.join("data"))
    }

    #[test]
    fn orders_round_trip_without_storing_targets_in_clear_and_are_audited() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        let today = PartitionDate::parse("2026-11-24").unwrap();
        let new_order = |reference: &str, targets| NewOrder {
            authority: "dk-police".into(),
            reference: reference.into(),
            targets,
            window_start: now - chrono::Duration::days(30),
            window_end: now,
            ends: PartitionDate::parse("2027-06-01").unwrap(),
        };
        let target = || vec![TargetInput::parse("msisdn:0045 20 00 00 01", 1).unwrap()];
        let order = store.place(new_order("QF-2026-17", target()), "test", now).unwrap();
        assert_eq!(order.targets[0].tokens.len(), 1);
        assert_eq!(store.unseal_targets(&order).unwrap(), vec![(IdentifierKind::Msisdn, "+4520000001".to_string())]);
        assert!(order.covers(today) && !order.covers(PartitionDate::parse("2026-11-25").unwrap()));

        let bytes = std::fs::read(root.path().join("state").join(REGISTRY_FILE)).unwrap();
        let wal = std::fs::read(root.path().join("state").join(format!("{REGISTRY_FILE}-wal"))).unwrap_or_default();
        for haystack in [&bytes, &wal] {
            assert!(!haystack.windows(10).any(|w| w == b"4520000001"), "target stored in clear");
        }

        let duplicate = store.place(new_order("QF-2026-17", vec![]), "test", now);
        assert!(matches!(duplicate, Err(OrderError::Duplicate(_))));
        store.extend(&order.id, PartitionDate::parse("2027-07-01").unwrap(), "test", now).unwrap();
        assert!(store.has_data(&order.id).unwrap(), "its key exists");
        store.lift(&order.id, "lifted", "test", now).unwrap();
        assert!(store.active().unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(!store.has_data(&order.id).unwrap());
        assert!(matches!(store.unseal_targets(&order), Err(OrderError::Sealing)), "the key went with the lift");

        let trail = std::fs::read_to_string(root.path().join("state").join(crate::audit::AUDIT_FILE)).unwrap();
        let actions: Vec<&str> = ["order_placed", "order_extended", "order_lifted"]
            .into_iter()
            .filter(|action| trail.contains(&format!("\"action\":\"{action}\"")))
            .collect();
        assert_eq!(actions.len(), 3, "{trail}");
    }

    #[test]
    fn malformed_targets_are_refused_by_position() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
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
            "test",
            now,
        );
        assert!(matches!(result, Err(OrderError::InvalidTarget { position: 1, kind: "imsi" })));
    }
}

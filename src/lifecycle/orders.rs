//! Preservation orders ("quick freeze"): the rules over the
//! [`OrderRegistry`], their keys, and their audit entries.
//!
//! An order names an authority, its reference, targets (kind and value), a
//! window of past communications and an end date. It is registered by one
//! legal reviewer and preserves nothing until another person approves it;
//! a new end date waits for approval the same way. Who may do which step
//! is lawful access's to decide ([`crate::access::authz`]); this module
//! keeps the order's own rules: targets are subscriber identifiers (a cell
//! would freeze everyone in it), the window lies in the past, and an order
//! ends at most [`OrderStore::max_days`] after the day it is approved or
//! extended.
//!
//! Target values are never stored in clear: the registry keeps, per
//! target, its token under every token key (to match rows) and the
//! canonical value sealed with the order's own key (to confirm matches and
//! to re-tokenise after a key rotation). Lifting or rejecting an order
//! destroys that key, and with it the targets and every preserved copy
//! ([`super::preserve`]). Every change commits together with its audit
//! entry, under the principal that made it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;

use super::preserve::{self, PreserveError};
use crate::audit::{AuditError, AuditEvent, AuditTrail};
use crate::keys::{self, KeyError, KeyStore};
use crate::model::{IdentifierKind, PartitionDate, TimestampMicros};
use crate::privacy::target::{TargetInput, TargetSyntax};
use crate::registry::{
    Actor, AuditHook, Audited, Order, OrderRegistry, OrderStatus, PendingEnd, RegistryError, StoredTarget, Which,
    with_audit,
};
use crate::storage::layout;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Registry(RegistryError),
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
    #[error("the window must end after it starts and by now, and the order must end on or after today")]
    InvalidPeriod,
    #[error("an order ends at most {0} days after today")]
    TooLong(u32),
    #[error("target {0} is a cell: an order preserves subscribers, not everyone in an area")]
    CellTarget(usize),
    #[error("no preservation order {0}")]
    NotFound(String),
    #[error("the order is {0}, not {1}")]
    State(&'static str, &'static str),
    #[error("the order has no pending end date")]
    NoPendingEnd,
    #[error("authority {0} already has an order with that reference")]
    Duplicate(String),
    #[error("order key is missing or a target cannot be unsealed")]
    Sealing,
}

impl From<RegistryError> for OrderError {
    fn from(error: RegistryError) -> Self {
        OrderError::Registry(error)
    }
}

impl OrderError {
    /// True when the process must stop: an fsync failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            OrderError::Keys(e) | OrderError::Registry(RegistryError::Keys(e)) => e.is_fatal(),
            OrderError::Audit(e) => e.is_fatal(),
            OrderError::Preserve(e) => e.is_fatal(),
            _ => false,
        }
    }
}

/// The marker, beside the registry key, of the orders approved before
/// their ends were recorded in the keys directory, once recorded.
const ENDS_ADOPTED: &str = "order-ends";

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

/// The default longest time an order runs from its approval (or from the
/// approval of a new end date), in days.
pub const DEFAULT_MAX_DAYS: u32 = 90;

/// The orders: their rules over an [`OrderRegistry`], their keys, their
/// areas in the data directory and their audit entries.
pub struct OrderStore {
    registry: Arc<dyn OrderRegistry>,
    keys: Arc<KeyStore>,
    audit: Arc<AuditTrail>,
    /// The data directory holding the orders' areas.
    data_dir: PathBuf,
    max_days: u32,
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
        OrderStore { registry, keys, audit, data_dir, max_days: DEFAULT_MAX_DAYS, rng: SystemRandom::new() }
    }

    /// Orders end at most `days` after the day they are approved or
    /// extended.
    pub fn with_max_days(mut self, days: u32) -> OrderStore {
        self.max_days = days;
        self
    }

    /// The longest an order runs, in days from its approval.
    pub fn max_days(&self) -> u32 {
        self.max_days
    }

    /// Runs a registry change with `event` appended under `actor` inside
    /// its transaction ([`AuditHook`]).
    fn audited<T>(
        &self,
        actor: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
        change: impl FnOnce(AuditHook<'_>) -> Result<T, RegistryError>,
    ) -> Result<T, OrderError> {
        with_audit(&self.audit, actor, &event, now, change).map_err(|error| match error {
            Audited::Audit(error) => error.into(),
            Audited::Change(error) => error.into(),
        })
    }

    fn check_ends(&self, ends: PartitionDate, now: DateTime<Utc>) -> Result<(), OrderError> {
        let today = TimestampMicros::from_datetime(now).partition_date();
        if ends < today {
            return Err(OrderError::InvalidPeriod);
        }
        if ends.days_since_epoch() - today.days_since_epoch() > i64::from(self.max_days) {
            return Err(OrderError::TooLong(self.max_days));
        }
        Ok(())
    }

    /// Registers an order for `by`'s decision by another reviewer: creates
    /// its key, stores its targets sealed and tokenised under every token
    /// key, audited in the same transaction (targets as keyed references).
    /// It preserves nothing until approved.
    pub fn register(&self, order: NewOrder, by: &Actor, now: DateTime<Utc>) -> Result<Order, OrderError> {
        if order.window_end <= order.window_start || order.window_end > now {
            return Err(OrderError::InvalidPeriod);
        }
        self.check_ends(order.ends, now)?;
        let mut canonical = Vec::with_capacity(order.targets.len());
        for (position, target) in order.targets.iter().enumerate() {
            if target.kind == IdentifierKind::Cell {
                return Err(OrderError::CellTarget(position + 1));
            }
            let value = target
                .canonical()
                .ok_or(OrderError::InvalidTarget { position: position + 1, kind: target.kind.as_str() })?;
            canonical.push((target.kind, value));
        }
        let id = keys::new_record_id(&self.rng, "po")?;
        if self.registry.order_exists(&order.authority, &order.reference)? {
            return Err(OrderError::Duplicate(order.authority));
        }
        let key = self.keys.create_order_key(&id)?;
        let mut targets = Vec::with_capacity(canonical.len());
        for (kind, value) in &canonical {
            let sealed =
                keys::seal_value(&key.secret, &self.rng, id.as_bytes(), value).map_err(|_| OrderError::Sealing)?;
            targets.push(StoredTarget { kind: *kind, sealed });
        }
        let registered = Order {
            id: id.clone(),
            authority: order.authority.clone(),
            reference: order.reference,
            window_start: TimestampMicros::from_datetime(order.window_start),
            window_end: TimestampMicros::from_datetime(order.window_end),
            ends: order.ends,
            status: OrderStatus::Registered,
            targets,
            registered_by: by.clone(),
            decided_by: None,
            decision_reason: None,
            pending: None,
        };
        let event = AuditEvent::OrderRegistered {
            order: id.clone(),
            authority: registered.authority.clone(),
            reference: registered.reference.clone(),
            target_kinds: canonical.iter().map(|(kind, _)| kind.as_str().to_string()).collect(),
            target_refs: canonical.iter().map(|(kind, value)| self.audit.target_ref(*kind, value)).collect(),
            window_start: registered.window_start.rfc3339(),
            window_end: registered.window_end.rfc3339(),
            ends: registered.ends.to_string(),
        };
        let inserted =
            self.audited(&by.principal, event, now, |audit| self.registry.insert_order(&registered, now, audit));
        if let Err(error) = inserted {
            // The order does not exist: its new key must not either. Best
            // effort; the insert's error is what the caller needs.
            let _ = self.keys.destroy_order_key(&id);
            return Err(match error {
                // Registered concurrently under the same reference.
                OrderError::Registry(RegistryError::Conflict) => OrderError::Duplicate(order.authority),
                error => error,
            });
        }
        self.get(&id)?.ok_or(OrderError::NotFound(id))
    }

    /// Approves (the order is active and preserves from now on) or rejects
    /// (its key and targets are destroyed) a registered order, audited
    /// under `by`. The end date must still be within the bound from today.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Order, OrderError> {
        let order = self.registered(id)?;
        let status = if approve {
            self.check_ends(order.ends, now)?;
            OrderStatus::Active
        } else {
            OrderStatus::Rejected
        };
        let event = AuditEvent::OrderDecided {
            order: id.to_string(),
            decision: status.as_str().to_string(),
            reason: reason.map(str::to_string),
        };
        let decided = self.audited(by, event, now, |audit| {
            let mut audit_then_record = || {
                audit()?;
                self.record_end(approve.then_some((id, order.ends)))
            };
            self.registry.decide_order(id, status, by, reason, &mut audit_then_record)
        })?;
        if !decided {
            return Err(OrderError::State(self.status_of(id)?, "registered"));
        }
        if !approve {
            self.keys.destroy_order_key(id)?;
        }
        self.get(id)?.ok_or(OrderError::NotFound(id.to_string()))
    }

    /// Asks for a new end date of an active order, to be approved by
    /// another reviewer; audited under `by`.
    pub fn request_end(
        &self,
        id: &str,
        ends: PartitionDate,
        by: &Actor,
        now: DateTime<Utc>,
    ) -> Result<Order, OrderError> {
        self.active_order(id)?;
        self.check_ends(ends, now)?;
        let pending = PendingEnd { ends, by: by.clone() };
        let event = AuditEvent::OrderEndRequested { order: id.to_string(), ends: ends.to_string() };
        if !self.audited(&by.principal, event, now, |audit| self.registry.request_end(id, &pending, audit))? {
            return Err(OrderError::State(self.status_of(id)?, "active"));
        }
        self.get(id)?.ok_or(OrderError::NotFound(id.to_string()))
    }

    /// Applies (`approve`) or drops an active order's pending end date,
    /// audited under `by`. An approved end must still be within the bound
    /// from today.
    pub fn decide_end(&self, id: &str, approve: bool, by: &str, now: DateTime<Utc>) -> Result<Order, OrderError> {
        let order = self.active_order(id)?;
        let pending = order.pending.ok_or(OrderError::NoPendingEnd)?;
        if approve {
            self.check_ends(pending.ends, now)?;
        }
        let event = AuditEvent::OrderEndDecided {
            order: id.to_string(),
            ends: pending.ends.to_string(),
            decision: if approve { "approved" } else { "rejected" }.to_string(),
        };
        let decided = self.audited(by, event, now, |audit| {
            let mut audit_then_record = || {
                audit()?;
                self.record_end(approve.then_some((id, pending.ends)))
            };
            self.registry.decide_end(id, approve, &mut audit_then_record)
        })?;
        if !decided {
            return Err(OrderError::NoPendingEnd);
        }
        self.get(id)?.ok_or(OrderError::NotFound(id.to_string()))
    }

    fn registered(&self, id: &str) -> Result<Order, OrderError> {
        let order = self.get(id)?.ok_or(OrderError::NotFound(id.to_string()))?;
        match order.status {
            OrderStatus::Registered => Ok(order),
            other => Err(OrderError::State(other.as_str(), "registered")),
        }
    }

    fn active_order(&self, id: &str) -> Result<Order, OrderError> {
        let order = self.get(id)?.ok_or(OrderError::NotFound(id.to_string()))?;
        match order.status {
            OrderStatus::Active => Ok(order),
            other => Err(OrderError::State(other.as_str(), "active")),
        }
    }

    fn status_of(&self, id: &str) -> Result<&'static str, OrderError> {
        Ok(self.get(id)?.map_or("missing", |o| o.status.as_str()))
    }

    /// One order by id.
    pub fn get(&self, id: &str) -> Result<Option<Order>, OrderError> {
        Ok(self.registry.load_orders(Which::One(id))?.pop())
    }

    /// Every order, oldest first.
    pub fn list(&self) -> Result<Vec<Order>, OrderError> {
        Ok(self.registry.load_orders(Which::All)?)
    }

    /// The active orders.
    pub fn active(&self) -> Result<Vec<Order>, OrderError> {
        Ok(self.registry.load_orders(Which::Active)?)
    }

    /// The active orders, for a retention sweep about to destroy a day
    /// ([`Self::checked`]).
    pub fn preserving(&self) -> Result<Vec<Order>, OrderError> {
        Ok(self.checked()?.into_iter().filter(|o| o.status == OrderStatus::Active).collect())
    }

    /// Every order, for retention, checked against what the keys directory
    /// holds of it, out of the registry's reach. An order whose key exists
    /// while its row is gone, or whose row is not what its last decision
    /// made it (approved with the recorded end, or not yet decided), stops
    /// the sweep as a forged row does: a row deleted or put back from an
    /// older copy would otherwise let retention destroy, or stop keeping,
    /// what the order holds. (A registration or a decision that a crash
    /// cut short between the keys directory and the commit leaves the
    /// same; `docs/operations.md` says how to tell them apart.) The orders
    /// approved before ends were recorded get theirs once, here.
    pub fn checked(&self) -> Result<Vec<Order>, OrderError> {
        let orders = self.list()?;
        if !self.keys.is_registry_adopted(ENDS_ADOPTED)? {
            for order in orders.iter().filter(|o| o.status == OrderStatus::Active) {
                if self.keys.order_end(&order.id)?.is_none() {
                    self.keys.record_order_end(&order.id, order.ends)?;
                }
            }
            self.keys.mark_registry_adopted(ENDS_ADOPTED)?;
        }
        let rows: HashMap<&str, &Order> = orders.iter().map(|o| (o.id.as_str(), o)).collect();
        for id in self.keys.orders_with_keys()? {
            let recorded = self.keys.order_end(&id)?;
            let sound = rows.get(id.as_str()).is_some_and(|order| match order.status {
                OrderStatus::Active => recorded == Some(order.ends),
                OrderStatus::Registered => recorded.is_none(),
                // Lifted or rejected: the key is on its way out.
                OrderStatus::Lifted | OrderStatus::Rejected => true,
            });
            if !sound {
                tracing::error!(order = %id, "a preservation order's row is gone or not what its last decision made it; retention stops");
                return Err(RegistryError::Tampered { table: "preservation_orders", id }.into());
            }
        }
        Ok(orders)
    }

    /// Records an approved end in the keys directory (inside the decision's
    /// transaction, after its audit entry).
    fn record_end(&self, approved: Option<(&str, PartitionDate)>) -> Result<(), RegistryError> {
        let Some((id, ends)) = approved else { return Ok(()) };
        Ok(self.keys.record_order_end(id, ends)?)
    }

    /// Lifts an order (or finishes lifting it): no more copies, its key
    /// destroyed (which makes its copies and stored targets unreadable), its
    /// area deleted. The lifting is audited under `actor` with `reason` and
    /// the number of preserved files, in the transaction that marks it;
    /// finishing a lift a crash interrupted adds no second entry. Returns
    /// the files deleted.
    pub fn lift(&self, id: &str, reason: &str, actor: &str, now: DateTime<Utc>) -> Result<u64, OrderError> {
        let order = self.get(id)?.ok_or(OrderError::NotFound(id.to_string()))?;
        if order.status == OrderStatus::Rejected {
            return Err(OrderError::State("rejected", "active"));
        }
        let files = preserve::area_files(&self.data_dir, id)?;
        let event = AuditEvent::OrderLifted { order: id.to_string(), files, reason: reason.to_string() };
        self.audited(actor, event, now, |audit| self.registry.mark_order_lifted(id, now, audit))?;
        self.keys.destroy_order_key(id)?;
        Ok(preserve::destroy_area(&self.data_dir, id)?)
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
        let registries = Registries::sqlite(&root.join("state"), &keys).unwrap();
        OrderStore::new(registries.orders, keys, audit, root.join("data"))
    }

    fn actor(name: &str) -> Actor {
        Actor { principal: format!("p-{name}"), person: name.to_string() }
    }

    /// An order approved before ends were recorded in the keys directory
    /// gets its record once; after that, a missing record is refused.
    #[test]
    fn the_ends_of_orders_approved_before_they_were_recorded_are_recorded_once() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        let order = NewOrder {
            authority: "dk-police".into(),
            reference: "QF-old".into(),
            targets: vec![TargetInput::parse("msisdn:+4520000001", 1).unwrap()],
            window_start: now - chrono::Duration::days(30),
            window_end: now,
            ends: PartitionDate::parse("2027-01-31").unwrap(),
        };
        let order = store.register(order, &actor("alice"), now).unwrap();
        store.decide(&order.id, true, "p-bob", None, now).unwrap();
        let ends = root.path().join(format!("keys/order/{}.ends", order.id));
        let adopted = root.path().join("keys/registry/order-ends.adopted");
        assert_eq!(std::fs::read_to_string(&ends).unwrap(), "2027-01-31", "recorded by the approval");
        // As the version before left it: no record, no marker.
        std::fs::remove_file(&ends).unwrap();
        assert!(!adopted.exists());
        assert_eq!(store.preserving().unwrap().len(), 1);
        assert_eq!(std::fs::read_to_string(&ends).unwrap(), "2027-01-31");
        assert!(adopted.exists());
        std::fs::remove_file(&ends).unwrap();
        let refused = store.preserving().unwrap_err();
        assert!(matches!(refused, OrderError::Registry(RegistryError::Tampered { .. })), "{refused:?}");
    }

    #[test]
    fn orders_go_through_review_without_storing_targets_in_clear_and_are_audited() {
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
            ends: PartitionDate::parse("2027-01-31").unwrap(),
        };
        let target = || vec![TargetInput::parse("msisdn:0045 20 00 00 01", 1).unwrap()];
        let order = store.register(new_order("QF-2026-17", target()), &actor("alice"), now).unwrap();
        assert_eq!(order.status, OrderStatus::Registered);
        assert!(store.active().unwrap().is_empty(), "nothing is preserved before approval");
        assert_eq!(store.unseal_targets(&order).unwrap(), vec![(IdentifierKind::Msisdn, "+4520000001".to_string())]);
        assert!(order.covers(today) && !order.covers(PartitionDate::parse("2026-11-25").unwrap()));

        let bytes = std::fs::read(root.path().join("state").join(REGISTRY_FILE)).unwrap();
        let wal = std::fs::read(root.path().join("state").join(format!("{REGISTRY_FILE}-wal"))).unwrap_or_default();
        for haystack in [&bytes, &wal] {
            assert!(!haystack.windows(10).any(|w| w == b"4520000001"), "target stored in clear");
        }

        let duplicate = store.register(new_order("QF-2026-17", target()), &actor("alice"), now);
        assert!(matches!(duplicate, Err(OrderError::Duplicate(_))));
        let order = store.decide(&order.id, true, "p-bob", None, now).unwrap();
        assert_eq!((order.status, store.active().unwrap().len()), (OrderStatus::Active, 1));
        let asked = store.request_end(&order.id, PartitionDate::parse("2027-02-20").unwrap(), &actor("alice"), now);
        assert_eq!(asked.unwrap().pending.map(|p| p.ends.to_string()), Some("2027-02-20".to_string()));
        let extended = store.decide_end(&order.id, true, "p-bob", now).unwrap();
        assert_eq!((extended.ends.to_string(), extended.pending), ("2027-02-20".to_string(), None));
        assert!(store.has_data(&order.id).unwrap(), "its key exists");
        store.lift(&order.id, "lifted", "p-alice", now).unwrap();
        assert!(store.active().unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(!store.has_data(&order.id).unwrap());
        assert!(matches!(store.unseal_targets(&order), Err(OrderError::Sealing)), "the key went with the lift");

        let trail = std::fs::read_to_string(root.path().join("state").join(crate::audit::AUDIT_FILE)).unwrap();
        let actions: Vec<String> = trail
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["action"].to_string())
            .map(|action| action.trim_matches('"').to_string())
            .collect();
        assert_eq!(
            actions,
            ["order_registered", "order_decided", "order_end_requested", "order_end_decided", "order_lifted"]
        );
    }

    #[test]
    fn orders_are_bounded_in_time_and_never_freeze_a_cell() {
        let root = tempfile::tempdir().unwrap();
        let store = store(root.path());
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        let order = |targets: &[&str], window_end, ends: &str| NewOrder {
            authority: "a".into(),
            reference: "r".into(),
            targets: targets.iter().enumerate().map(|(n, t)| TargetInput::parse(t, n + 1).unwrap()).collect(),
            window_start: now - chrono::Duration::days(1),
            window_end,
            ends: PartitionDate::parse(ends).unwrap(),
        };
        let by = actor("alice");
        let register = |new| store.register(new, &by, now);
        assert!(matches!(
            register(order(&["imsi:123"], now, "2027-01-01")),
            Err(OrderError::InvalidTarget { position: 1, kind: "imsi" })
        ));
        assert!(matches!(register(order(&["msisdn:+4520000001"], now, "2099-12-31")), Err(OrderError::TooLong(90))));
        assert!(matches!(
            register(order(&["msisdn:+4520000001", "cell:238-01-1-1"], now, "2027-01-01")),
            Err(OrderError::CellTarget(2))
        ));
        let future = now + chrono::Duration::days(3);
        assert!(matches!(
            register(order(&["msisdn:+4520000001"], future, "2027-01-01")),
            Err(OrderError::InvalidPeriod)
        ));
        assert!(store.list().unwrap().is_empty(), "nothing was stored");
    }
}

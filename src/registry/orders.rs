//! What the registry keeps for preservation orders, behind
//! [`OrderRegistry`].

use chrono::{DateTime, Utc};

use super::{AuditHook, RegistryError, StoredTarget};
use crate::keys::{self, KeyError, KeyStore};
use crate::model::{IdentifierKind, PartitionDate, TimestampMicros};

/// Where an order stands. Only an active order preserves anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Registered by one legal reviewer, waiting for another's decision.
    Registered,
    Active,
    Rejected,
    Lifted,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Registered => "registered",
            OrderStatus::Active => "active",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Lifted => "lifted",
        }
    }

    pub fn parse(text: &str) -> Option<OrderStatus> {
        [OrderStatus::Registered, OrderStatus::Active, OrderStatus::Rejected, OrderStatus::Lifted]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Who did something to an order: a principal and the person behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub principal: String,
    pub person: String,
}

/// A new end date asked for by one reviewer, waiting for another's
/// approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEnd {
    pub ends: PartitionDate,
    pub by: Actor,
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
    pub registered_by: Actor,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub pending: Option<PendingEnd>,
}

impl Order {
    /// True if the order's window touches `day`.
    pub fn covers(&self, day: PartitionDate) -> bool {
        self.window_start <= day.end() && self.window_end >= day.start()
    }

    /// The canonical values of the targets, unsealed with the order's key:
    /// for confirming matches only, never for display. `None` once the
    /// order's key is gone (it was lifted) or a target does not unseal.
    pub fn unseal_targets(&self, keys: &KeyStore) -> Result<Option<Vec<(IdentifierKind, String)>>, KeyError> {
        let Some(key) = keys.order_key(&self.id)? else { return Ok(None) };
        let targets: Option<Vec<_>> = self
            .targets
            .iter()
            .map(|t| keys::open_value(&key.secret, self.id.as_bytes(), &t.sealed).map(|value| (t.kind, value)))
            .collect();
        Ok(targets)
    }
}

/// Where orders are kept: rows in and out, behind a small trait so that
/// PostgreSQL can replace SQLite when several instances share a registry
/// (as [`super::AccessRegistry`] does for lawful access). The rules
/// (validation, order keys, sealing, tokens, audit entries) stay in
/// [`crate::lifecycle::orders::OrderStore`].
pub trait OrderRegistry: Send + Sync {
    /// True if the authority already has an order with this reference.
    fn order_exists(&self, authority: &str, reference: &str) -> Result<bool, RegistryError>;

    /// Stores a new order with its targets, in one transaction; `Conflict`
    /// if its id or (authority, reference) is taken.
    fn insert_order(&self, order: &Order, placed_at: DateTime<Utc>, audit: AuditHook<'_>) -> Result<(), RegistryError>;

    /// The orders asked for, oldest first.
    fn load_orders(&self, which: Which<'_>) -> Result<Vec<Order>, RegistryError>;

    /// Decides a registered order: `Active` or `Rejected`; false if it is
    /// not (or no longer) registered.
    fn decide_order(
        &self,
        id: &str,
        status: OrderStatus,
        by: &str,
        reason: Option<&str>,
        audit: AuditHook<'_>,
    ) -> Result<bool, RegistryError>;

    /// Asks for a new end date of an active order, pending approval; false
    /// if there is no such active order.
    fn request_end(&self, id: &str, pending: &PendingEnd, audit: AuditHook<'_>) -> Result<bool, RegistryError>;

    /// Applies (`approve`) or drops an active order's pending end date;
    /// false if there is none.
    fn decide_end(&self, id: &str, approve: bool, audit: AuditHook<'_>) -> Result<bool, RegistryError>;

    /// Marks a registered or active order lifted and forgets its targets'
    /// tokens; false if there is no such order.
    fn mark_order_lifted(&self, id: &str, at: DateTime<Utc>, audit: AuditHook<'_>) -> Result<bool, RegistryError>;
}

/// Which orders [`OrderRegistry::load_orders`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which<'a> {
    One(&'a str),
    All,
    Active,
}

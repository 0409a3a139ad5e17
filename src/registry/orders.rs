//! What the registry keeps for preservation orders, behind
//! [`OrderRegistry`].

use chrono::{DateTime, Utc};

use super::{RegistryError, StoredTarget};
use crate::keys::{self, KeyError, KeyStore};
use crate::model::{IdentifierKind, PartitionDate, TimestampMicros};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Active,
    Lifted,
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

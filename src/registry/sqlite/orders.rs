//! [`OrderRegistry`] over SQLite.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteRegistry;
use crate::model::{IdentifierKind, PartitionDate, TimestampMicros};
use crate::registry::seal::SealedTable::Orders;
use crate::registry::{
    Actor, AuditHook, Order, OrderRegistry, OrderStatus, PendingEnd, RegistryError, StoredTarget, Which,
};

impl OrderRegistry for SqliteRegistry {
    fn order_exists(&self, authority: &str, reference: &str) -> Result<bool, RegistryError> {
        let found: Option<String> = self
            .db()
            .query_row(
                "SELECT id FROM preservation_orders WHERE authority = ?1 AND reference = ?2",
                params![authority, reference],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn insert_order(&self, order: &Order, placed_at: DateTime<Utc>, audit: AuditHook<'_>) -> Result<(), RegistryError> {
        self.audited(audit, |tx| {
            tx.execute(
                "INSERT INTO preservation_orders (id, authority, reference, window_start_us, window_end_us, ends, status,
                    placed_at, registered_by, registered_by_person)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    order.id,
                    order.authority,
                    order.reference,
                    order.window_start.0,
                    order.window_end.0,
                    order.ends.to_string(),
                    order.status.as_str(),
                    placed_at.to_rfc3339(),
                    order.registered_by.principal,
                    order.registered_by.person,
                ],
            )?;
            for (position, target) in order.targets.iter().enumerate() {
                tx.execute(
                    "INSERT INTO preservation_targets (order_id, position, kind, sealed) VALUES (?1, ?2, ?3, ?4)",
                    params![order.id, position as i64, target.kind.as_str(), target.sealed],
                )?;
            }
            self.reseal(tx, Orders, &order.id)?;
            Ok(((), true))
        })
    }

    fn load_orders(&self, which: Which<'_>) -> Result<Vec<Order>, RegistryError> {
        let (id, active_only) = match which {
            Which::One(id) => (Some(id), false),
            Which::All => (None, false),
            Which::Active => (None, true),
        };
        let connection = self.db();
        // One snapshot for the rows read and the check of their seals.
        let db = connection.unchecked_transaction()?;
        let mut statement = db.prepare(
            "SELECT id, authority, reference, window_start_us, window_end_us, ends, status, registered_by,
                registered_by_person, decided_by, decision_reason, pending_ends, pending_by, pending_by_person
             FROM preservation_orders
             WHERE (?1 IS NULL OR id = ?1) AND (?2 = 0 OR status = 'active') ORDER BY placed_at, id",
        )?;
        let rows = statement.query_map(params![id, active_only as i64], |r| {
            let date = |text: String| PartitionDate::parse(&text).unwrap_or(PartitionDate::EPOCH);
            let pending = match (r.get::<_, Option<String>>(11)?, r.get(12)?, r.get(13)?) {
                (Some(ends), Some(principal), Some(person)) => {
                    Some(PendingEnd { ends: date(ends), by: Actor { principal, person } })
                }
                _ => None,
            };
            Ok(Order {
                id: r.get(0)?,
                authority: r.get(1)?,
                reference: r.get(2)?,
                window_start: TimestampMicros(r.get(3)?),
                window_end: TimestampMicros(r.get(4)?),
                ends: date(r.get(5)?),
                // The column's check admits nothing else.
                status: OrderStatus::parse(&r.get::<_, String>(6)?).unwrap_or(OrderStatus::Lifted),
                targets: Vec::new(),
                registered_by: Actor { principal: r.get(7)?, person: r.get(8)? },
                decided_by: r.get(9)?,
                decision_reason: r.get(10)?,
                pending,
            })
        })?;
        let mut orders: Vec<Order> = rows.collect::<Result<_, _>>()?;
        for order in &mut orders {
            self.check(&db, Orders, &order.id)?;
            let mut stored = db.prepare(
                "SELECT position, kind, sealed FROM preservation_targets WHERE order_id = ?1 ORDER BY position",
            )?;
            let stored = stored.query_map(params![order.id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?))
            })?;
            for target in stored {
                let (_position, kind, sealed) = target?;
                let kind = IdentifierKind::parse(&kind).unwrap_or(IdentifierKind::Msisdn);
                order.targets.push(StoredTarget { kind, sealed });
            }
        }
        Ok(orders)
    }

    fn decide_order(
        &self,
        id: &str,
        status: OrderStatus,
        by: &str,
        reason: Option<&str>,
        audit: AuditHook<'_>,
    ) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let decided = tx.execute(
                "UPDATE preservation_orders SET status = ?2, decided_by = ?3, decision_reason = ?4
                 WHERE id = ?1 AND status = 'registered'",
                params![id, status.as_str(), by, reason],
            )? == 1;
            if decided {
                self.reseal(tx, Orders, id)?;
            }
            Ok((decided, decided))
        })
    }

    fn request_end(&self, id: &str, pending: &PendingEnd, audit: AuditHook<'_>) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let asked = tx.execute(
                "UPDATE preservation_orders SET pending_ends = ?2, pending_by = ?3, pending_by_person = ?4
                 WHERE id = ?1 AND status = 'active'",
                params![id, pending.ends.to_string(), pending.by.principal, pending.by.person],
            )? == 1;
            if asked {
                self.reseal(tx, Orders, id)?;
            }
            Ok((asked, asked))
        })
    }

    fn decide_end(&self, id: &str, approve: bool, audit: AuditHook<'_>) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let decided = tx.execute(
                "UPDATE preservation_orders
                 SET ends = CASE WHEN ?2 THEN pending_ends ELSE ends END,
                     pending_ends = NULL, pending_by = NULL, pending_by_person = NULL
                 WHERE id = ?1 AND status = 'active' AND pending_ends IS NOT NULL",
                params![id, approve],
            )? == 1;
            if decided {
                self.reseal(tx, Orders, id)?;
            }
            Ok((decided, decided))
        })
    }

    fn mark_order_lifted(&self, id: &str, at: DateTime<Utc>, audit: AuditHook<'_>) -> Result<bool, RegistryError> {
        self.audited(audit, |tx| {
            let lifted = tx.execute(
                "UPDATE preservation_orders SET status = 'lifted', lifted_at = ?2, pending_ends = NULL,
                    pending_by = NULL, pending_by_person = NULL
                 WHERE id = ?1 AND status IN ('registered', 'active')",
                params![id, at.to_rfc3339()],
            )? == 1;
            if lifted {
                self.reseal(tx, Orders, id)?;
            }
            Ok((lifted, lifted))
        })
    }
}

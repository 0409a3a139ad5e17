//! [`OrderRegistry`] over SQLite.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteRegistry;
use crate::model::{IdentifierKind, KeyId, PartitionDate, TimestampMicros, Token};
use crate::registry::{Order, OrderRegistry, OrderStatus, RegistryError, StoredTarget, Which};

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

    fn insert_order(&self, order: &Order, placed_at: DateTime<Utc>) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO preservation_orders (id, authority, reference, window_start_us, window_end_us, ends, status, placed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
            params![
                order.id,
                order.authority,
                order.reference,
                order.window_start.0,
                order.window_end.0,
                order.ends.to_string(),
                placed_at.to_rfc3339(),
            ],
        )?;
        for (position, target) in order.targets.iter().enumerate() {
            tx.execute(
                "INSERT INTO preservation_targets (order_id, position, kind, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![order.id, position as i64, target.kind.as_str(), target.sealed],
            )?;
            for (key, token) in &target.tokens {
                tx.execute(
                    "INSERT INTO preservation_target_tokens (order_id, position, token_key_id, token) VALUES (?1, ?2, ?3, ?4)",
                    params![order.id, position as i64, key.as_str(), token.0],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load_orders(&self, which: Which<'_>) -> Result<Vec<Order>, RegistryError> {
        let (id, active_only) = match which {
            Which::One(id) => (Some(id), false),
            Which::All => (None, false),
            Which::Active => (None, true),
        };
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
            let mut targets = Vec::new();
            let mut stored = db.prepare(
                "SELECT position, kind, sealed FROM preservation_targets WHERE order_id = ?1 ORDER BY position",
            )?;
            let stored = stored.query_map(params![id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?))
            })?;
            for target in stored {
                let (position, kind, sealed) = target?;
                let kind = IdentifierKind::parse(&kind).unwrap_or(IdentifierKind::Msisdn);
                let mut tokens = db.prepare(
                    "SELECT token_key_id, token FROM preservation_target_tokens WHERE order_id = ?1 AND position = ?2",
                )?;
                let tokens = tokens
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

    fn set_order_end(&self, id: &str, ends: PartitionDate) -> Result<bool, RegistryError> {
        let changed = self.db().execute(
            "UPDATE preservation_orders SET ends = ?2 WHERE id = ?1 AND status = 'active'",
            params![id, ends.to_string()],
        )?;
        Ok(changed == 1)
    }

    fn mark_order_lifted(&self, id: &str, at: DateTime<Utc>) -> Result<bool, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let changed = tx.execute(
            "UPDATE preservation_orders SET status = 'lifted', lifted_at = ?2 WHERE id = ?1 AND status = 'active'",
            params![id, at.to_rfc3339()],
        )?;
        tx.execute("DELETE FROM preservation_target_tokens WHERE order_id = ?1", params![id])?;
        tx.commit()?;
        Ok(changed == 1)
    }
}

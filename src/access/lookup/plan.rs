//! Which day directories a query searches, each with the key that unseals
//! its files: the days of the window that still have their key, and, for a
//! day destroyed by retention, the areas of the orders the query names
//! ([`super::PreservedScope`]) that hold copies of it, each under its
//! order's key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{Area, FileCache};
use super::{LookupError, LookupStats, Query};
use crate::keys::{DayKey, KeyStore, RecordKey};
use crate::model::PartitionDate;
use crate::storage::layout;

/// One day directory to search (live data or an order's area), with the
/// key that unseals its files. Workers list the directory themselves, so
/// listing runs in parallel too.
pub(super) struct DayWork {
    pub(super) root: PathBuf,
    pub(super) day: PartitionDate,
    pub(super) area: Area,
    pub(super) key: Arc<DayKey>,
}

/// The day directories to search, with their keys; forgets cached days
/// that are gone.
pub(super) fn plan(
    data_dir: &Path,
    keys: &KeyStore,
    cache: &FileCache,
    query: &Query,
    stats: &mut LookupStats,
) -> Result<Vec<DayWork>, LookupError> {
    let (first, last) = (query.from.partition_date(), query.to.partition_date());
    let orders = layout::orders_with_areas(data_dir);
    cache.forget_gone(data_dir, keys, &orders)?;
    let mut order_keys: HashMap<String, Option<RecordKey>> = HashMap::new();
    let mut work = Vec::new();
    let mut day = first;
    while day <= last {
        stats.days += 1;
        // The tombstone comes before the key's destruction: a day being
        // destroyed has no key any more, even if this process held it in
        // memory (the keystore checks the tombstone first).
        let key = keys.existing_day_key(day)?;
        match key {
            Some(key) => {
                work.push(DayWork { root: data_dir.to_path_buf(), day, area: Area::Live, key });
            }
            None => {
                stats.days_unavailable += 1;
                cache.forget(&layout::day_dir(data_dir, day));
                // Only a destroyed day is searched in the preservation
                // areas: while it is live, its own files are complete,
                // and searching both would return records twice.
                for scope in query.preserved.iter().filter(|s| !s.targets.is_empty()) {
                    let order = &scope.order;
                    let area = layout::order_dir(data_dir, order);
                    if !layout::day_dir(&area, day).exists() {
                        continue;
                    }
                    let order_key = match order_keys.get(order) {
                        Some(key) => key.clone(),
                        None => {
                            let key = keys.order_key(order)?;
                            order_keys.insert(order.clone(), key.clone());
                            key
                        }
                    };
                    let Some(order_key) = order_key else {
                        // The order was lifted: its copies are unreadable
                        // and about to be deleted.
                        cache.forget(&layout::day_dir(&area, day));
                        continue;
                    };
                    let key = Arc::new(order_key.for_day(day));
                    let targets: Arc<[usize]> = scope.targets.clone().into();
                    work.push(DayWork {
                        root: area,
                        day,
                        area: Area::Preserved { order: order.clone(), targets },
                        key,
                    });
                }
            }
        }
        let Some(next) = day.next() else { break };
        day = next;
    }
    Ok(work)
}

//! What a start-up finds and finishes in the data directory: compactions
//! interrupted by a crash (finished or dropped, never half), and what a
//! crashed writer left behind (hidden temporaries, indexes of files never
//! published). Ingest runs it before its first batch.

use std::path::Path;

use super::compact;
use super::layout::{self, CDR_DIR};
use crate::ops::durable::{self, DurableError};

/// How old a hidden temporary must be before a start-up removes it: no
/// writer takes this long over one file, so it belongs to a dead process.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a start-up recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Temporaries, orphan indexes and orphan companions removed.
    pub removed: u64,
    /// Compaction manifest entries refused: not data files of their day
    /// (see [`super::manifest`]). Nothing they named was touched.
    pub refused_manifest_entries: u64,
}

/// Finishes or drops interrupted compactions, then removes the hidden
/// temporaries (`.part-….parquet.<pid>.tmp`) that a crashed writer left in
/// the day directories, and token indexes and companions whose data file
/// was never published (a crash between the renames), once older than
/// [`LEFTOVER_AGE`]. Those were never visible to readers; this only returns
/// their space. Returns how many were removed, and how many manifest
/// entries were refused.
pub fn remove_leftovers(data_dir: &Path) -> Result<Leftovers, DurableError> {
    let root = data_dir.join(CDR_DIR);
    let mut found = Leftovers::default();
    let Ok(days) = std::fs::read_dir(&root) else { return Ok(found) };
    for day in days.flatten() {
        // Interrupted compactions first: finished or dropped, never half.
        found.refused_manifest_entries += compact::recover(&day.path())? as u64;
        let Ok(files) = std::fs::read_dir(day.path()) else { continue };
        for file in files.flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            let temporary = layout::is_temporary(&name);
            // An index or a companion of a data file never published (a
            // crash between the renames), or removed by a compaction cut
            // short: nothing reads it.
            let orphan = layout::data_file_of_index(&name)
                .or_else(|| layout::data_file_of_sealed(&name))
                .is_some_and(|data| !day.path().join(data).exists());
            if !(temporary || orphan) {
                continue;
            }
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= LEFTOVER_AGE);
            if old {
                durable::remove_file(&file.path())?;
                found.removed += 1;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::storage::write::tests::write_one_file;

    #[test]
    fn old_hidden_temporaries_are_removed_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let (_keys, path) = write_one_file(root.path());
        let dir = path.parent().unwrap();
        let old = dir.join(".part-1-2-3.parquet.77.tmp");
        let fresh = dir.join(".part-4-5-6.parquet.78.tmp");
        let orphan = dir.join("_part-7-8-9.index");
        let orphan_companion = dir.join("_part-7-8-9.sealed");
        std::fs::write(&old, b"partial").unwrap();
        std::fs::write(&orphan_companion, b"companion of a file never published").unwrap();
        std::fs::write(&fresh, b"being written").unwrap();
        std::fs::write(&orphan, b"index of a file never published").unwrap();
        let long_ago = std::time::SystemTime::now() - LEFTOVER_AGE - std::time::Duration::from_secs(60);
        File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        for file in [&orphan, &orphan_companion, &layout::index_path(&path), &layout::sealed_path(&path)] {
            File::options().write(true).open(file).unwrap().set_modified(long_ago).unwrap();
        }
        let found = remove_leftovers(&root.path().join("data")).unwrap();
        assert_eq!(found, Leftovers { removed: 3, refused_manifest_entries: 0 });
        assert!(!old.exists() && !orphan.exists() && !orphan_companion.exists());
        assert!(layout::index_path(&path).exists(), "the index of a published file stays");
        assert!(layout::sealed_path(&path).exists(), "the companion of a published file stays");
        assert!(fresh.exists(), "a temporary that may still be written is left alone");
        assert!(path.exists(), "published files are never touched");
    }
}

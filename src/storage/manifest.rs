//! Compaction manifests: `_<new stem>.replaces` in a day directory lists,
//! one name per line, the files that the compacted file `<new stem>.parquet`
//! replaces. Readers ([`super::read::list_files`]) hide the listed files
//! once the new file exists; [`super::compact`] writes manifests and
//! finishes or drops interrupted ones.
//!
//! A manifest is data a holder of the data directory can write, so an entry
//! is honoured only if it is a plain data file name inside its own day
//! directory ([`layout::is_plain_data_name`]): a manifest can never make
//! cdrvault hide or delete anything else. Any other entry (an absolute path,
//! `..`, a name with a slash, a file that is not a data file) is refused:
//! logged as a warning naming the manifest, counted in [`Manifest::refused`],
//! and never acted on.

use std::path::{Path, PathBuf};

use super::layout;

/// One manifest of a day directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub path: PathBuf,
    /// The compacted file it announces.
    pub new_file: String,
    /// The files that file replaces: plain names in the same directory.
    pub sources: Vec<String>,
    /// How many entries were refused: not plain data file names of this
    /// day directory. They are neither hidden nor deleted.
    pub refused: usize,
}

/// The manifests of a day directory.
pub fn list(dir: &Path) -> Vec<Manifest> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(new_file) = layout::new_file_of_manifest(&name) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let (sources, foreign): (Vec<String>, Vec<String>) =
            text.lines().filter(|l| !l.is_empty()).map(str::to_string).partition(|l| layout::is_plain_data_name(l));
        // The refused entries themselves are not logged: they are whatever
        // the writer of the manifest chose to put there.
        if !foreign.is_empty() {
            tracing::warn!(
                manifest = %entry.path().display(),
                entries = foreign.len(),
                "manifest entries refused: not data files of its day; nothing they name is hidden or deleted"
            );
        }
        found.push(Manifest { path: entry.path(), new_file, sources, refused: foreign.len() });
    }
    found
}

/// The content of a manifest listing `sources`.
pub fn content(sources: &[String]) -> Vec<u8> {
    (sources.join("\n") + "\n").into_bytes()
}

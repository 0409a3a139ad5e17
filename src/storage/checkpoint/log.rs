//! The files of the checkpoint log: commits `<seq>.json`, created only if
//! absent, and snapshots `snapshot-<seq>.json` of the state.
//!
//! Reading catches up from the state it has: the next commit if it exists,
//! else the newest snapshot if it is ahead (the commits it folds may have
//! been removed), else the state is current. On object storage the same
//! reads are GETs of the next key and a LIST of snapshots; the append is a
//! PUT with `If-None-Match: *`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Change, CheckpointError, Commit, PartitionId, PartitionState, State, publish_committed};
use crate::ops::durable::{self, DurableError, FileMode};

/// Commits between two snapshots.
pub const SNAPSHOT_EVERY: u64 = 64;

const SNAPSHOT_PREFIX: &str = "snapshot-";

fn commit_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.json"))
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{seq:020}.json"))
}

/// The files of the log directory: commit numbers and snapshot numbers.
fn listing(dir: &Path) -> Result<(Vec<u64>, Vec<u64>), CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DurableError::io("list", dir, e))?;
    let (mut commits, mut snapshots) = (Vec::new(), Vec::new());
    for entry in entries {
        let name = entry.map_err(|e| DurableError::io("list", dir, e))?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
        if let Some(seq) = stem.strip_prefix(SNAPSHOT_PREFIX).and_then(|s| s.parse().ok()) {
            snapshots.push(seq);
        } else if let Ok(seq) = stem.parse() {
            commits.push(seq);
        }
    }
    commits.sort_unstable();
    snapshots.sort_unstable();
    Ok((commits, snapshots))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DurableError::io("read", path, e).into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CheckpointError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })
}

/// A snapshot as stored.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    seq: u64,
    partitions: Vec<SnapshotEntry>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    #[serde(flatten)]
    id: PartitionId,
    #[serde(flatten)]
    state: PartitionState,
}

fn read_snapshot(dir: &Path, seq: u64) -> Result<Option<State>, CheckpointError> {
    let path = snapshot_path(dir, seq);
    let Some(snapshot) = read_json::<Snapshot>(&path)? else { return Ok(None) };
    if snapshot.seq != seq {
        return Err(CheckpointError::Corrupt { path, reason: format!("holds the state at {}", snapshot.seq) });
    }
    Ok(Some(State { seq, partitions: snapshot.partitions.into_iter().map(|e| (e.id, e.state)).collect() }))
}

/// Brings `state` up to the last commit in `dir`.
pub(super) fn catch_up(dir: &Path, state: &mut State) -> Result<(), CheckpointError> {
    loop {
        let path = commit_path(dir, state.seq + 1);
        if let Some(commit) = read_json::<Commit>(&path)? {
            if commit.seq != state.seq + 1 {
                return Err(CheckpointError::Corrupt { path, reason: format!("numbered {}", commit.seq) });
            }
            state.apply(&commit);
            continue;
        }
        // The next commit is not there: the state is current, unless a
        // snapshot is ahead (the commits it folds may be removed).
        let (_, snapshots) = listing(dir)?;
        match snapshots.last() {
            Some(&seq) if seq > state.seq => match read_snapshot(dir, seq)? {
                Some(snapshot) => *state = snapshot,
                // Removed in the meantime by a newer one: look again.
                None => continue,
            },
            _ => return Ok(()),
        }
    }
}

/// Creates commit `commit.seq` if no commit has that number. Returns false
/// if one has: the caller lost the race and must read it.
pub(super) fn try_append(dir: &Path, commit: &Commit) -> Result<bool, CheckpointError> {
    let path = commit_path(dir, commit.seq);
    let bytes = serde_json::to_vec(commit).expect("a commit serialises");
    match durable::write_new(&path, &bytes, FileMode::Default) {
        Ok(()) => {}
        Err(DurableError::Exists { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    // A writer that stalled between reading the log and appending may find
    // its number free because that commit was folded into a snapshot and
    // removed: its commit is a ghost; it withdraws it and reads on.
    let (_, snapshots) = listing(dir)?;
    if snapshots.last().is_some_and(|&seq| seq >= commit.seq) {
        durable::remove_file(&path)?;
        return Ok(false);
    }
    Ok(true)
}

/// Writes the snapshot of `state`, then removes what the previous snapshot
/// folds: its commits (after renaming their files, should a crashed writer
/// have left them staged) and older snapshots.
pub(super) fn snapshot(dir: &Path, state: &State, data_dir: &Path) -> Result<(), CheckpointError> {
    let stored = Snapshot {
        seq: state.seq,
        partitions: state
            .partitions
            .iter()
            .map(|(id, state)| SnapshotEntry { id: id.clone(), state: state.clone() })
            .collect(),
    };
    let bytes = serde_json::to_vec(&stored).expect("a snapshot serialises");
    durable::write_atomically(&snapshot_path(dir, state.seq), &bytes, FileMode::Default)?;
    let (commits, snapshots) = listing(dir)?;
    let Some(&folded) = snapshots.iter().rev().find(|&&seq| seq < state.seq) else { return Ok(()) };
    for seq in commits.into_iter().filter(|&seq| seq <= folded) {
        let path = commit_path(dir, seq);
        if let Some(Commit { change: Change::Batch { files, .. }, .. }) = read_json::<Commit>(&path)? {
            publish_committed(data_dir, &files)?;
        }
        durable::remove_file(&path)?;
    }
    for seq in snapshots.into_iter().filter(|&seq| seq < folded) {
        durable::remove_file(&snapshot_path(dir, seq))?;
    }
    Ok(())
}

/// Every commit still in the log, oldest first (recovery).
pub(super) fn commits_present(dir: &Path) -> Result<Vec<Commit>, CheckpointError> {
    let (commits, _) = listing(dir)?;
    let mut found = Vec::with_capacity(commits.len());
    for seq in commits {
        if let Some(commit) = read_json::<Commit>(&commit_path(dir, seq))? {
            found.push(commit);
        }
    }
    Ok(found)
}

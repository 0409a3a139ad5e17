//! The ingest checkpoint: which records of each Kafka partition the data
//! directory holds, committed in one step with the files that hold them.
//! Storage, not Kafka, is the source of truth for what has been ingested;
//! Kafka's committed offsets only follow, for monitoring.
//!
//! # The contract
//!
//! The checkpoint is a log of commits in `<data_dir>/checkpoints/log/`,
//! numbered 1, 2, 3…, each created only if its number is free (a
//! no-replace link here; `If-None-Match: *` on object storage). A commit is
//! either a *claim* (an instance takes partitions: each one's owner
//! generation goes up by one) or a *batch* (staged files, and for each
//! partition the range `[from, next)` of offsets they hold). The state, per
//! `(topic, partition)`: owner, generation, next offset to read.
//!
//! 1. Ingest writes a batch's files under staged names (hidden, invisible to
//!    every reader), fsynced, with their companions and token indexes.
//! 2. It appends the batch commit. The append is a compare-and-swap on the
//!    whole log: it is checked against the state after the last commit,
//!    and lands only as the next number. For every partition of the batch
//!    the instance must still be the owner at the generation it read the
//!    records under, and `from` must be the partition's `next`. Otherwise
//!    the commit is refused ([`CheckpointError::Fenced`]) and the staged
//!    files are discarded: a stalled instance whose partitions were claimed
//!    by another can never commit them again, and no range is stored twice
//!    or with a gap.
//! 3. It renames the staged files into place and fsyncs their directories.
//!
//! A crash before 2 leaves the old state: the staged files are never
//! visible, and the instance's next start removes them (their names carry
//! the instance id). A crash after 2 leaves the new state: whoever opens
//! the log next renames the files of every commit still in the log
//! (renaming is idempotent). Never half of each.
//!
//! On every partition assignment the instance claims the partitions first
//! and then seeks to their `next`, so records are read again from exactly
//! where the last committed batch ended, whoever wrote it.
//!
//! Every [`SNAPSHOT_EVERY`] commits the state is written as a snapshot;
//! commits two snapshots old are removed, after their files are renamed.
//!
//! `tests/checkpoint.rs` drives the contract with real staged files: fencing,
//! contiguity, a crash at every step, racing appenders.

mod log;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout::{self, CDR_DIR};
use super::write::StagedFile;
use crate::ops::durable::{self, DurableError};

pub use log::SNAPSHOT_EVERY;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What the checkpoint knows of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Raised by every claim: a commit under an older one is refused.
    pub generation: u64,
    /// The instance that made the last claim.
    pub owner: String,
    /// The next offset to read: one past the last record committed. `None`
    /// until a first batch of the partition is committed.
    pub next: Option<i64>,
}

/// A partition's share of a batch: offsets `[from, next)` read under
/// `generation`. `from` is where reading started (the claimed `next`, or
/// the previous batch's `next`), so gaps in the offsets (compacted topics,
/// transaction markers) are covered; `None` when the partition had no
/// checkpoint yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    #[serde(flatten)]
    pub id: PartitionId,
    pub generation: u64,
    pub from: Option<i64>,
    pub next: i64,
}

/// A staged file of a batch commit, by name within its day directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFile {
    /// `dt=YYYY-MM-DD`.
    pub day: String,
    /// The data file's name once published.
    pub name: String,
    /// Its staged name until then.
    pub staged: String,
}

impl CommittedFile {
    fn of(file: &StagedFile) -> Self {
        let name_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        CommittedFile {
            day: layout::day_dir_name(file.file.date),
            name: name_of(&file.file.path),
            staged: name_of(&file.staged),
        }
    }

    /// The staged and final paths, if the names are what a writer makes:
    /// a day directory, a plain data file name, its staged name. A commit
    /// naming anything else renames nothing.
    fn paths(&self, data_dir: &Path) -> Option<(PathBuf, PathBuf)> {
        layout::date_of_dir(&self.day)?;
        let (name, _) = layout::parse_staged(&self.staged)?;
        if name != self.name {
            return None;
        }
        let dir = data_dir.join(CDR_DIR).join(&self.day);
        Some((dir.join(&self.staged), dir.join(&self.name)))
    }
}

/// What a commit changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The committing instance takes these partitions.
    Claim { partitions: Vec<PartitionId> },
    /// These files hold these ranges.
    Batch { ranges: Vec<Range>, files: Vec<CommittedFile> },
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub seq: u64,
    pub instance: String,
    pub at_millis: i64,
    #[serde(flatten)]
    pub change: Change,
}

/// The state after commit `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub seq: u64,
    pub partitions: BTreeMap<PartitionId, PartitionState>,
}

impl State {
    fn apply(&mut self, commit: &Commit) {
        self.seq = commit.seq;
        match &commit.change {
            Change::Claim { partitions } => {
                for id in partitions {
                    let entry = self.partitions.entry(id.clone()).or_insert_with(|| PartitionState {
                        generation: 0,
                        owner: String::new(),
                        next: None,
                    });
                    entry.generation += 1;
                    entry.owner.clone_from(&commit.instance);
                }
            }
            Change::Batch { ranges, .. } => {
                for range in ranges {
                    if let Some(entry) = self.partitions.get_mut(&range.id) {
                        entry.next = Some(range.next);
                    }
                }
            }
        }
    }

    /// Why `instance` may not commit `ranges` now, if it may not.
    fn refuse(&self, instance: &str, ranges: &[Range]) -> Option<CheckpointError> {
        ranges.iter().find_map(|range| {
            let fenced = |why: FenceReason| CheckpointError::Fenced { partition: range.id.to_string(), why };
            let Some(state) = self.partitions.get(&range.id) else { return Some(fenced(FenceReason::NeverClaimed)) };
            if state.owner != instance || state.generation != range.generation {
                return Some(fenced(FenceReason::ClaimedSince { generation: state.generation }));
            }
            match (state.next, range.from) {
                // A range moves forward, or it is not a batch's.
                (next, Some(from)) if range.next <= from => {
                    Some(fenced(FenceReason::NotContiguous { next, from: Some(from) }))
                }
                (None, _) => None,
                (Some(next), Some(from)) if next == from => None,
                (next, from) => Some(fenced(FenceReason::NotContiguous { next, from })),
            }
        })
    }
}

/// Why a batch commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReason {
    /// The partition was claimed again (by another instance, or by this
    /// one after a rebalance) since the batch's records were read.
    ClaimedSince { generation: u64 },
    /// The batch does not start where the partition's checkpoint ends.
    NotContiguous { next: Option<i64>, from: Option<i64> },
    /// No instance ever claimed the partition.
    NeverClaimed,
}

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceReason::ClaimedSince { generation } => write!(f, "claimed since, now at generation {generation}"),
            FenceReason::NotContiguous { next, from } => {
                write!(f, "at offset {next:?}, but the batch starts at {from:?}")
            }
            FenceReason::NeverClaimed => write!(f, "never claimed"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("checkpoint file {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("batch commit refused (fenced): partition {partition} is {why}")]
    Fenced { partition: String, why: FenceReason },
    #[error("instance {0} is already running on this data directory (its lock is held)")]
    InstanceRunning(String),
    #[error("{0:?} is not a valid instance id: 1 to 64 of A-Z a-z 0-9 - _")]
    InvalidInstance(String),
    #[error("commit interrupted at {0:?} (crash injection)")]
    Injected(CrashPoint),
}

impl CheckpointError {
    /// True when the process must stop (an fsync failed).
    pub fn is_fatal(&self) -> bool {
        matches!(self, CheckpointError::Durable(e) if e.is_fatal())
    }
}

/// Where a commit can be interrupted, for the crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The files are staged, the commit is not written.
    BeforeCommit,
    /// The commit is durable, no file is renamed.
    AfterCommit,
    /// The first file is renamed, the others are not.
    AfterFirstRename,
}

/// What opening the log finished or removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Committed batches whose files were still staged, now published.
    pub completed_batches: u64,
    /// Staged files of this instance that no commit names, removed.
    pub discarded_files: u64,
}

/// The log, as one instance sees it. One per process and instance id: the
/// instance's lock is held while it lives.
#[derive(Debug)]
pub struct CheckpointLog {
    data_dir: PathBuf,
    dir: PathBuf,
    instance: String,
    state: State,
    _lock: File,
    crash_at: Option<CrashPoint>,
}

impl CheckpointLog {
    /// Opens the log of `data_dir` for `instance`, taking the instance's
    /// lock, and recovers: renames the files of every commit still in the
    /// log, then removes the instance's staged files that no commit names.
    pub fn open(data_dir: &Path, instance: &str) -> Result<(Self, Recovered), CheckpointError> {
        if !layout::is_valid_instance(instance) {
            return Err(CheckpointError::InvalidInstance(instance.to_string()));
        }
        let dir = layout::checkpoint_log_dir(data_dir);
        durable::create_dir_all(&dir)?;
        let Some(lock) = durable::try_lock(&layout::instance_lock(data_dir, instance))? else {
            return Err(CheckpointError::InstanceRunning(instance.to_string()));
        };
        let mut log = CheckpointLog {
            data_dir: data_dir.to_path_buf(),
            dir,
            instance: instance.to_string(),
            state: State::default(),
            _lock: lock,
            crash_at: None,
        };
        log.refresh()?;
        let mut recovered = Recovered::default();
        for commit in log::commits_present(&log.dir)? {
            if let Change::Batch { files, .. } = &commit.change
                && publish_committed(data_dir, files)? > 0
            {
                recovered.completed_batches += 1;
            }
        }
        recovered.discarded_files = remove_own_staged(data_dir, instance)?;
        Ok((log, recovered))
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The state after the last commit this instance has read.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Reads the commits made since, by anyone.
    pub fn refresh(&mut self) -> Result<(), CheckpointError> {
        log::catch_up(&self.dir, &mut self.state)
    }

    /// Interrupts the next commit at `point` (tests).
    pub fn crash_at(&mut self, point: Option<CrashPoint>) {
        self.crash_at = point;
    }

    fn crash(&self, point: CrashPoint) -> Result<(), CheckpointError> {
        if self.crash_at == Some(point) { Err(CheckpointError::Injected(point)) } else { Ok(()) }
    }

    /// Takes `partitions` for this instance: each one's generation goes up,
    /// so that a batch read by a previous owner can no longer be committed.
    /// Returns their state after the claim, whose `next` is where reading
    /// must start.
    pub fn claim(
        &mut self,
        partitions: &[PartitionId],
        now_millis: i64,
    ) -> Result<Vec<(PartitionId, PartitionState)>, CheckpointError> {
        if !partitions.is_empty() {
            let change = Change::Claim { partitions: partitions.to_vec() };
            self.append(change, now_millis, |_| None)?;
        }
        Ok(partitions
            .iter()
            .filter_map(|id| self.state.partitions.get(id).map(|state| (id.clone(), state.clone())))
            .collect())
    }

    /// Commits a batch: `files` (staged, durable) hold `ranges`. On `Ok` the
    /// files are published and the checkpoint moved; on
    /// [`CheckpointError::Fenced`] nothing is committed and the caller
    /// discards the files. Returns the commit's number.
    pub fn commit(
        &mut self,
        ranges: Vec<Range>,
        files: &[StagedFile],
        now_millis: i64,
    ) -> Result<u64, CheckpointError> {
        self.crash(CrashPoint::BeforeCommit)?;
        let committed: Vec<CommittedFile> = files.iter().map(CommittedFile::of).collect();
        let change = Change::Batch { ranges: ranges.clone(), files: committed.clone() };
        let instance = self.instance.clone();
        let seq = self.append(change, now_millis, move |state: &State| state.refuse(&instance, &ranges))?;
        self.crash(CrashPoint::AfterCommit)?;
        let crash_after_first = self.crash_at == Some(CrashPoint::AfterFirstRename);
        publish(&self.data_dir, &committed, crash_after_first)?;
        self.crash(CrashPoint::AfterFirstRename)?;
        Ok(seq)
    }

    /// Appends `change` as the next commit once `check` passes on the state
    /// it follows; retries on a lost race, after reading the winner's
    /// commit.
    fn append(
        &mut self,
        change: Change,
        now_millis: i64,
        check: impl Fn(&State) -> Option<CheckpointError>,
    ) -> Result<u64, CheckpointError> {
        loop {
            self.refresh()?;
            if let Some(refusal) = check(&self.state) {
                return Err(refusal);
            }
            let commit = Commit {
                seq: self.state.seq + 1,
                instance: self.instance.clone(),
                at_millis: now_millis,
                change: change.clone(),
            };
            if log::try_append(&self.dir, &commit)? {
                self.state.apply(&commit);
                if commit.seq.is_multiple_of(SNAPSHOT_EVERY) {
                    log::snapshot(&self.dir, &self.state, &self.data_dir)?;
                }
                return Ok(commit.seq);
            }
        }
    }
}

/// Renames the staged files of a commit into place, then fsyncs each day
/// directory once. A file already renamed (by this process or another
/// recovering one), or gone with its day, is skipped. Returns how many were
/// renamed. `stop_after_first` leaves the others staged (crash tests).
fn publish(data_dir: &Path, files: &[CommittedFile], stop_after_first: bool) -> Result<usize, CheckpointError> {
    let mut renamed = 0;
    let mut dirs = BTreeSet::new();
    for file in files {
        let Some((staged, target)) = file.paths(data_dir) else {
            tracing::warn!(day = %file.day, "a checkpoint commit names a file that no writer makes; left alone");
            continue;
        };
        match std::fs::rename(&staged, &target) {
            Ok(()) => renamed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DurableError::io("rename", &target, e).into()),
        }
        if let Some(dir) = target.parent() {
            dirs.insert(dir.to_path_buf());
        }
        if stop_after_first {
            break;
        }
    }
    for dir in dirs {
        durable::fsync_dir(&dir)?;
    }
    Ok(renamed)
}

/// Publishes what a commit found in the log names (recovery).
fn publish_committed(data_dir: &Path, files: &[CommittedFile]) -> Result<usize, CheckpointError> {
    publish(data_dir, files, false)
}

/// Removes the staged files of `instance` in every day directory, with
/// their token indexes: called once the files of every commit are
/// published, so these were never committed. Returns how many.
fn remove_own_staged(data_dir: &Path, instance: &str) -> Result<u64, CheckpointError> {
    let root = data_dir.join(CDR_DIR);
    let Ok(days) = std::fs::read_dir(&root) else { return Ok(0) };
    let mut removed = 0;
    for day in days.flatten() {
        let Ok(files) = std::fs::read_dir(day.path()) else { continue };
        for file in files.flatten() {
            let staged = file.file_name();
            let Some((name, owner)) =
                layout::parse_staged(&staged.to_string_lossy()).map(|(n, o)| (n.to_string(), o.to_string()))
            else {
                continue;
            };
            if owner != instance {
                continue;
            }
            let target = day.path().join(&name);
            durable::remove_file(&file.path())?;
            if !target.exists() {
                durable::remove_file(&layout::index_path(&target))?;
                durable::remove_file(&layout::sealed_path(&target))?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

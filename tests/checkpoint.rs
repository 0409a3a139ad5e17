//! The ingest checkpoint (`storage::checkpoint`): a batch's files and its
//! offsets become visible together or not at all, a stale owner cannot
//! commit, and a crash at every step of the commit leaves the old state or
//! the new one. Driven through the library with real staged files.

use std::sync::Arc;

use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::{Input, Processor, ProcessorConfig, StagedBatch};
use cdrvault::keys::KeyStore;
use cdrvault::ops::clock::ManualClock;
use cdrvault::storage::checkpoint::{
    CheckpointError, CheckpointLog, CrashPoint, FenceReason, PartitionId, PartitionState, Range, Recovered,
    SNAPSHOT_EVERY,
};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::storage::{layout, read};

fn p(partition: i32) -> PartitionId {
    PartitionId { topic: "cdr".into(), partition }
}

/// A data directory with keys, and a processor staging as `instance`.
struct Fixture {
    root: tempfile::TempDir,
    keys: Arc<KeyStore>,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = Arc::new(KeyStore::open(&root.path().join("keys"), None).unwrap());
        Fixture { root, keys }
    }

    fn data(&self) -> std::path::PathBuf {
        self.root.path().join("data")
    }

    /// Stages `count` records over two days, ids starting at `first`.
    fn stage(&self, instance: &str, first: usize, count: usize) -> StagedBatch {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z").unwrap().to_utc();
        let writer = ParquetWriter::new(&self.data(), ParquetConfig::default()).with_instance(instance);
        let config = ProcessorConfig {
            max_clock_skew: std::time::Duration::from_secs(60),
            decode_threads: 1,
            retention_days: None,
        };
        let processor = Processor::new(writer, Arc::clone(&self.keys), Arc::new(ManualClock::new(now)), config);
        let inputs: Vec<Input> = (first..first + count)
            .map(|i| Input {
                encoding: Encoding::Json,
                payload: format!(
                    r#"{{"record_id":"r-{i}","service":"voice","start_time":"2026-11-2{}T10:00:00Z","calling_number":"+45200{i:05}"}}"#,
                    3 + i % 2
                )
                .into_bytes().into(),
            })
            .collect();
        processor.stage(&inputs).unwrap()
    }

    /// Rows in published data files, and every name in the day directories.
    fn visible(&self) -> (usize, Vec<String>) {
        let mut rows = 0;
        let mut names = Vec::new();
        for day in read::list_days(&self.data()).unwrap() {
            for file in read::list_files(&self.data(), day).unwrap() {
                rows +=
                    read::read_file(&file, None, &["record_id"]).unwrap().iter().map(|b| b.num_rows()).sum::<usize>();
            }
            for entry in std::fs::read_dir(layout::day_dir(&self.data(), day)).unwrap() {
                names.push(entry.unwrap().file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        (rows, names)
    }
}

fn range(id: PartitionId, generation: u64, from: Option<i64>, next: i64) -> Range {
    Range { id, generation, from, next }
}

#[test]
fn a_commit_publishes_its_files_and_moves_the_checkpoint_in_one_step() {
    let f = Fixture::new();
    let (mut log, recovered) = CheckpointLog::open(&f.data(), "a").unwrap();
    assert_eq!(recovered, Recovered::default());
    let claimed = log.claim(&[p(0)], 1).unwrap();
    assert_eq!(claimed[0].1, PartitionState { generation: 1, owner: "a".into(), next: None });
    let batch = f.stage("a", 0, 100);
    assert_eq!(batch.files.len(), 2, "two days");
    assert_eq!(f.visible().0, 0, "staged files are invisible");
    log.commit(vec![range(p(0), 1, None, 100)], &batch.files, 2).unwrap();
    let (rows, names) = f.visible();
    assert_eq!(rows, 100);
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert_eq!(log.state().partitions[&p(0)].next, Some(100));

    // The next batch must start where this one ended.
    let batch = f.stage("a", 100, 10);
    let gap = log.commit(vec![range(p(0), 1, Some(105), 110)], &batch.files, 3).unwrap_err();
    assert!(matches!(gap, CheckpointError::Fenced { why: FenceReason::NotContiguous { .. }, .. }), "{gap}");
    log.commit(vec![range(p(0), 1, Some(100), 110)], &batch.files, 3).unwrap();
    assert_eq!(f.visible().0, 110);
}

#[test]
fn a_stalled_owner_cannot_commit_after_its_partition_was_claimed() {
    let f = Fixture::new();
    let (mut a, _) = CheckpointLog::open(&f.data(), "a").unwrap();
    let (mut b, _) = CheckpointLog::open(&f.data(), "b").unwrap();
    a.claim(&[p(0), p(1)], 1).unwrap();
    // A reads a batch, stalls; B is given partition 1 and claims it.
    let stale = f.stage("a", 0, 50);
    let claimed = b.claim(&[p(1)], 2).unwrap();
    assert_eq!(claimed[0].1.generation, 2);
    let refused = a.commit(vec![range(p(0), 1, None, 25), range(p(1), 1, None, 25)], &stale.files, 3).unwrap_err();
    assert!(matches!(refused, CheckpointError::Fenced { why: FenceReason::ClaimedSince { generation: 2 }, .. }));
    stale.discard().unwrap();
    assert_eq!(f.visible(), (0, Vec::new()), "the fenced batch left nothing");
    // B reads from the checkpoint (nothing committed) and commits.
    let fresh = f.stage("b", 0, 25);
    b.commit(vec![range(p(1), 2, None, 25)], &fresh.files, 4).unwrap();
    assert_eq!(f.visible().0, 25);
    // Partition 0 is still A's.
    let own = f.stage("a", 100, 25);
    a.commit(vec![range(p(0), 1, None, 25)], &own.files, 5).unwrap();
    assert_eq!(a.state().partitions[&p(1)].owner, "b");
    assert_eq!(f.visible().0, 50);
}

#[test]
fn a_crash_at_any_step_leaves_the_old_state_or_the_new_one_never_half() {
    for point in [CrashPoint::BeforeCommit, CrashPoint::AfterCommit, CrashPoint::AfterFirstRename] {
        let f = Fixture::new();
        {
            let (mut log, _) = CheckpointLog::open(&f.data(), "a").unwrap();
            log.claim(&[p(0)], 1).unwrap();
            let batch = f.stage("a", 0, 80);
            log.crash_at(Some(point));
            let err = log.commit(vec![range(p(0), 1, None, 80)], &batch.files, 2).unwrap_err();
            assert!(matches!(err, CheckpointError::Injected(p) if p == point));
            // The process dies here: its lock goes with it.
        }
        let (log, recovered) = CheckpointLog::open(&f.data(), "a").unwrap();
        let (rows, names) = f.visible();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{point:?}: {names:?}");
        match point {
            CrashPoint::BeforeCommit => {
                assert_eq!(rows, 0, "{point:?}: old state");
                assert_eq!(names, Vec::<String>::new(), "{point:?}: staged files and indexes removed");
                assert_eq!(log.state().partitions[&p(0)].next, None);
                assert_eq!(recovered, Recovered { completed_batches: 0, discarded_files: 2 });
            }
            _ => {
                assert_eq!(rows, 80, "{point:?}: new state, every record once");
                assert_eq!(log.state().partitions[&p(0)].next, Some(80));
                assert_eq!(recovered, Recovered { completed_batches: 1, discarded_files: 0 });
            }
        }
    }
}

#[test]
fn another_instance_recovering_leaves_a_live_instances_staged_files_alone() {
    let f = Fixture::new();
    let (mut a, _) = CheckpointLog::open(&f.data(), "a").unwrap();
    a.claim(&[p(0)], 1).unwrap();
    let batch = f.stage("a", 0, 30);
    let (_b, recovered) = CheckpointLog::open(&f.data(), "b").unwrap();
    assert_eq!(recovered, Recovered::default());
    a.commit(vec![range(p(0), 1, None, 30)], &batch.files, 2).unwrap();
    assert_eq!(f.visible().0, 30);
}

#[test]
fn one_process_per_instance_id_and_only_plain_ids() {
    let f = Fixture::new();
    let (_a, _) = CheckpointLog::open(&f.data(), "a").unwrap();
    assert!(matches!(CheckpointLog::open(&f.data(), "a"), Err(CheckpointError::InstanceRunning(_))));
    assert!(matches!(CheckpointLog::open(&f.data(), "../a"), Err(CheckpointError::InvalidInstance(_))));
}

#[test]
fn racing_appenders_never_share_a_number_and_a_late_reader_catches_up_through_snapshots() {
    let f = Fixture::new();
    let data = f.data();
    let (late, _) = CheckpointLog::open(&data, "late").unwrap();
    let commits = (SNAPSHOT_EVERY * 3) as i64;
    std::thread::scope(|scope| {
        for (instance, partition) in [("a", 0), ("b", 1)] {
            let data = data.clone();
            scope.spawn(move || {
                let (mut log, _) = CheckpointLog::open(&data, instance).unwrap();
                log.claim(&[p(partition)], 0).unwrap();
                let generation = log.state().partitions[&p(partition)].generation;
                for n in 0..commits {
                    let from = (n > 0).then_some(n);
                    log.commit(vec![range(p(partition), generation, from, n + 1)], &[], n).unwrap();
                }
            });
        }
    });
    let mut late = late;
    late.refresh().unwrap();
    let state = late.state();
    assert_eq!(state.seq, 2 + 2 * commits as u64, "every commit has its own number");
    assert_eq!(state.partitions[&p(0)].next, Some(commits));
    assert_eq!(state.partitions[&p(1)].next, Some(commits));
    let (fresh, _) = CheckpointLog::open(&data, "fresh").unwrap();
    assert_eq!(fresh.state(), state, "a reader from scratch sees the same state");
    let left = std::fs::read_dir(layout::checkpoint_log_dir(&data)).unwrap().count() as u64;
    assert!(left < 3 * SNAPSHOT_EVERY, "folded commits are removed: {left} files left");
}

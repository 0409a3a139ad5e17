//! The audit trail against someone who can write the state directory but
//! holds no key, and against someone who holds the signing key: a trail cut
//! short is never re-signed, a torn write from a crash is repaired with a
//! record of the repair, a rollback shows against the witness, and the
//! state is private to the service's user.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use cdrvault::audit::{AUDIT_FILE, AuditError, AuditEvent, AuditTrail, verify, verify_witness};
use cdrvault::ops::metrics::Metrics;
use common::{TestVault, noon};

fn event(n: u64) -> AuditEvent {
    AuditEvent::DayDeleted { day: format!("2025-01-{n:02}"), files: n, rows: n * 10, key_id: None, run: "r".into() }
}

struct Trail {
    vault: TestVault,
    trail: AuditTrail,
}

impl Trail {
    fn new() -> Trail {
        let vault = TestVault::new(noon());
        let trail = AuditTrail::open(&vault.state(), &vault.keys).unwrap();
        Trail { vault, trail }
    }

    fn path(&self) -> PathBuf {
        self.vault.state().join(AUDIT_FILE)
    }

    fn append(&self, n: u64) -> Result<u64, AuditError> {
        self.trail.append("retention", &event(n), noon())
    }

    fn fill(&self, range: std::ops::RangeInclusive<u64>) {
        for n in range {
            self.append(n).unwrap();
        }
    }

    fn verify(&self) -> cdrvault::audit::Verification {
        verify(&self.path(), &self.trail.public_key(), &self.vault.keys.audit_head_path(&self.path())).unwrap()
    }

    fn reopen(&self) -> Result<AuditTrail, AuditError> {
        AuditTrail::open(&self.vault.state(), &self.vault.keys)
    }

    fn entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.path()).unwrap();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Keeps only the first `n` lines of the trail, as someone with write
    /// access to the state directory would.
    fn cut_to(&self, n: usize) {
        let text = std::fs::read_to_string(self.path()).unwrap();
        let kept: String = text.split_inclusive('\n').take(n).collect();
        std::fs::write(self.path(), kept).unwrap();
    }
}

#[test]
fn a_trail_cut_short_under_the_running_service_is_never_re_signed() {
    let t = Trail::new();
    let metrics = Metrics::new();
    let trail = t.reopen().unwrap().with_metrics(Arc::clone(&metrics));
    for n in 1..=5 {
        trail.append("access", &event(n), noon()).unwrap();
    }
    // Two deliveries' entries cut away while the service runs.
    t.cut_to(3);

    // The next append, whoever causes it, finds the cut: it refuses, and so
    // does every append after it; the signed head still names entry 5.
    let refused = trail.append("anonymous", &event(6), noon()).unwrap_err();
    assert!(matches!(refused, AuditError::Damaged { seq: 4, .. }), "{refused}");
    assert!(trail.damage().is_some());
    assert!(trail.append("anonymous", &event(7), noon()).is_err());
    assert_eq!(cdrvault_gauge(&metrics, "cdrvault_audit_damaged"), 1.0);
    let check = t.verify();
    assert_eq!(check.problem.map(|(seq, _)| seq), Some(4), "still reported as truncated at entry 4");
    assert_eq!(t.entries().len(), 3, "nothing appended to the cut trail");
    assert!(t.reopen().is_err(), "nor by a new process");
}

#[test]
fn a_trail_rewritten_to_its_original_length_is_found_too() {
    let t = Trail::new();
    t.fill(1..=4);
    // Entry 4 replaced by a copy of entry 3 padded to the same length: the
    // file's length does not change.
    let text = std::fs::read_to_string(t.path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut forged = lines[2].to_string();
    forged.push_str(&" ".repeat(lines[3].len().saturating_sub(forged.len())));
    forged.truncate(lines[3].len());
    let rewritten = format!("{}\n{}\n{}\n{}\n", lines[0], lines[1], lines[2], forged);
    assert_eq!(rewritten.len(), text.len());
    std::fs::write(t.path(), rewritten).unwrap();
    assert!(matches!(t.append(5), Err(AuditError::Damaged { .. })));
}

#[test]
fn a_torn_last_line_is_cut_with_an_entry_recording_the_cut() {
    let t = Trail::new();
    t.fill(1..=3);
    // A crash in the middle of writing entry 4: never acknowledged.
    let torn = br#"{"action":"day_deleted","day":"2025-01-04","fi"#;
    let mut file = std::fs::OpenOptions::new().append(true).open(t.path()).unwrap();
    std::io::Write::write_all(&mut file, torn).unwrap();
    drop(file);
    assert_eq!(t.verify().torn_bytes, torn.len() as u64);
    assert!(t.verify().is_intact(), "a torn write beyond the head is not tampering");

    // The next start cuts it and says so; the trail goes on.
    let reopened = t.reopen().unwrap();
    let entries = t.entries();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[3]["action"], "trail_repaired");
    assert_eq!(entries[3]["cut_bytes"], torn.len() as u64);
    assert_eq!(entries[3]["after_seq"], 3);
    assert_eq!(reopened.append("retention", &event(5), noon()).unwrap(), 5);
    let check = t.verify();
    assert_eq!((check.entries, check.problem, check.torn_bytes), (5, None, 0));
}

#[test]
fn a_torn_line_written_by_another_process_is_repaired_by_the_running_one() {
    let t = Trail::new();
    t.fill(1..=2);
    let mut file = std::fs::OpenOptions::new().append(true).open(t.path()).unwrap();
    std::io::Write::write_all(&mut file, b"{\"action\":").unwrap();
    drop(file);
    assert_eq!(t.append(3).unwrap(), 4, "entry 3 records the repair");
    assert_eq!(t.entries()[2]["action"], "trail_repaired");
    assert!(t.verify().is_intact());
}

#[test]
fn a_head_left_one_entry_behind_by_a_crash_is_moved_up_at_start() {
    let t = Trail::new();
    t.fill(1..=3);
    let head_path = t.vault.keys.audit_head_path(&t.path());
    let head_at_3 = std::fs::read(&head_path).unwrap();
    t.append(4).unwrap();
    // A crash between entry 4 and its head.
    std::fs::write(&head_path, head_at_3).unwrap();
    assert!(t.verify().is_intact());
    drop(t.reopen().unwrap());
    assert_eq!(newest_head(&head_path), 4);
}

/// The newest `seq` of the heads in a head file (a stream of JSON heads).
fn newest_head(path: &Path) -> u64 {
    newest_head_object(path)["seq"].as_u64().unwrap()
}

/// The newest of the heads in a head file, as JSON.
fn newest_head_object(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let heads = serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>();
    heads.map(Result::unwrap).max_by_key(|head| head["seq"].as_u64().unwrap()).unwrap()
}

#[test]
fn the_head_is_written_in_place_and_a_torn_slot_falls_back_to_the_head_before() {
    let t = Trail::new();
    t.fill(1..=2);
    let head_path = t.vault.keys.audit_head_path(&t.path());
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&head_path).unwrap());
    t.fill(3..=4);
    // One flush per head: the file is written in place, never replaced.
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&head_path).unwrap()), inode);
    assert_eq!(newest_head(&head_path), 4);
    assert_eq!(std::fs::metadata(&head_path).unwrap().len(), 8192, "two slots");

    // A crash tears the write of head 4 (slot 0): head 3 remains, one
    // entry behind the trail, which a crash between entry and head leaves
    // too; the next opening moves it up.
    let mut bytes = std::fs::read(&head_path).unwrap();
    bytes[10..60].fill(b'#');
    std::fs::write(&head_path, &bytes).unwrap();
    assert_eq!(newest_head_readable(&head_path), 3);
    assert!(t.verify().is_intact(), "{:?}", t.verify());
    drop(t.reopen().unwrap());
    assert_eq!(newest_head(&head_path), 4);
    assert!(t.verify().is_intact());

    // Both slots spoiled: the head is damaged, not missing.
    std::fs::write(&head_path, vec![b'#'; 8192]).unwrap();
    let check = verify(&t.path(), &t.trail.public_key(), &head_path);
    assert!(matches!(check, Err(AuditError::Damaged { .. })), "{check:?}");
}

#[test]
fn a_head_file_replaced_under_a_running_trail_gets_the_next_head() {
    let t = Trail::new();
    t.fill(1..=3);
    let head_path = t.vault.keys.audit_head_path(&t.path());
    // The file is replaced by a copy of itself (a restore, or a writer
    // that renames a new file into place): a new inode under the name.
    let copy = head_path.with_extension("copy");
    std::fs::copy(&head_path, &copy).unwrap();
    std::fs::rename(&copy, &head_path).unwrap();
    t.append(4).unwrap();
    assert_eq!(newest_head(&head_path), 4, "the head went to the file under the name");
    assert!(t.verify().is_intact(), "{:?}", t.verify());
}

#[test]
fn a_head_file_of_one_json_object_reads_and_is_rewritten_with_slots() {
    let t = Trail::new();
    t.fill(1..=3);
    let head_path = t.vault.keys.audit_head_path(&t.path());
    // The head as it was kept before slots: one JSON object.
    let newest = newest_head_object(&head_path);
    std::fs::write(&head_path, serde_json::to_vec(&newest).unwrap()).unwrap();
    assert!(t.verify().is_intact());
    t.reopen().unwrap().append("retention", &event(4), noon()).unwrap();
    assert_eq!(std::fs::metadata(&head_path).unwrap().len(), 8192);
    assert_eq!(newest_head(&head_path), 4);
    assert!(t.verify().is_intact());
}

/// The newest `seq` of the slots of a head file that still parse.
fn newest_head_readable(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks(4096)
        .filter_map(|slot| serde_json::from_slice::<Value>(slot).ok())
        .map(|h| h["seq"].as_u64().unwrap())
        .max()
        .unwrap()
}

#[test]
fn the_witness_shows_a_rollback_by_a_holder_of_the_signing_key() {
    let t = Trail::new();
    let outside = tempfile::tempdir().unwrap();
    let witness = outside.path().join("audit-heads.jsonl");
    let trail = t.reopen().unwrap().with_witness(&witness).unwrap();
    for n in 1..=3 {
        trail.append("retention", &event(n), noon()).unwrap();
    }
    let saved_trail = std::fs::read(t.path()).unwrap();
    let saved_head = std::fs::read(t.vault.keys.audit_head_path(&t.path())).unwrap();
    for n in 4..=5 {
        trail.append("access", &event(n), noon()).unwrap();
    }
    let public = trail.public_key();
    drop(trail);
    let seen = verify_witness(&t.path(), &public, &witness).unwrap();
    assert_eq!((seen.heads, seen.problem), (5, None));

    // Someone with the keys rolls trail and head back to entry 3: the trail
    // and its head agree, but the witness saw entry 5.
    std::fs::write(t.path(), &saved_trail).unwrap();
    std::fs::write(t.vault.keys.audit_head_path(&t.path()), &saved_head).unwrap();
    assert!(t.verify().is_intact(), "trail and head alone cannot show it");
    let seen = verify_witness(&t.path(), &public, &witness).unwrap();
    assert_eq!(seen.problem.as_ref().map(|p| p.0), Some(4), "{seen:?}");

    // ... and writes other entries in place of the removed ones: rewritten.
    let rewriter = t.reopen().unwrap();
    for n in 14..=15 {
        rewriter.append("retention", &event(n), noon()).unwrap();
    }
    let seen = verify_witness(&t.path(), &public, &witness).unwrap();
    let (seq, problem) = seen.problem.unwrap();
    assert_eq!(seq, 4);
    assert!(problem.contains("rewritten"), "{problem}");
}

#[test]
fn the_witness_lives_outside_the_state_and_keys() {
    let t = Trail::new();
    for inside in [t.vault.state().join("heads.jsonl"), t.vault.keys_dir().join("heads.jsonl")] {
        let refused = t.reopen().unwrap().with_witness(&inside).unwrap_err();
        assert!(matches!(refused, AuditError::WitnessInside(_)), "{refused}");
    }
}

#[test]
fn the_state_is_private_to_the_service_user_and_checked_at_start() {
    let vault = TestVault::new(noon());
    let registries = vault.registries();
    let audit = vault.audit();
    audit.append("test", &event(1), noon()).unwrap();
    let desk = vault.desk(&audit, registries, Default::default(), Metrics::new());
    drop(desk);
    let state = vault.state();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    for name in [AUDIT_FILE, "registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm"] {
        let path = state.join(name);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    assert_eq!(mode(&state.join("results")), 0o700);

    // Loosened by hand: every opener refuses, naming the path.
    for (path, loose) in [(state.join(AUDIT_FILE), 0o644), (state.clone(), 0o755)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
        let refused = AuditTrail::open(&state, &vault.keys).unwrap_err().to_string();
        assert!(refused.contains("go-rwx"), "{refused}");
        if path == state {
            assert!(cdrvault::registry::Registries::sqlite(&state, &vault.keys).is_err());
        }
        let tight = if path == state { 0o700 } else { 0o600 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tight)).unwrap();
    }
    assert!(AuditTrail::open(&state, &vault.keys).is_ok());
}

fn cdrvault_gauge(metrics: &Metrics, name: &str) -> f64 {
    common::metric(&metrics.encode(), name).unwrap_or(f64::NAN)
}

/// Several instances share one keys directory, each with its own state
/// directory: each trail has its own signed head, so neither reads the
/// other's appends as a rewrite, and cutting either is still found.
#[test]
fn trails_of_instances_sharing_the_keys_each_have_their_own_head() {
    let t = Trail::new();
    let second_state = t.vault.state().with_file_name("state-second");
    let second = AuditTrail::open(&second_state, &t.vault.keys).unwrap();
    let second_path = second_state.join(AUDIT_FILE);
    assert_ne!(t.vault.keys.audit_head_path(&t.path()), t.vault.keys.audit_head_path(&second_path));
    for n in 1..=3 {
        t.append(n).unwrap();
        second.append("retention", &event(n + 10), noon()).unwrap();
    }
    drop(second);
    let second = AuditTrail::open(&second_state, &t.vault.keys).unwrap();
    second.append("retention", &event(20), noon()).unwrap();
    drop(t.reopen().unwrap());
    assert!(t.verify().is_intact());
    let check = |path: &Path| verify(path, &second.public_key(), &t.vault.keys.audit_head_path(path)).unwrap();
    assert!(check(&second_path).is_intact());

    // Cut the second trail back by one entry: its own head shows it.
    let text = std::fs::read_to_string(&second_path).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    std::fs::write(&second_path, format!("{}\n", kept[..kept.len() - 1].join("\n"))).unwrap();
    assert!(!check(&second_path).is_intact(), "a cut trail is found against its own head");
    assert!(t.verify().is_intact(), "the other trail is untouched");
}

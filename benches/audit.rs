//! Audit trail figures: the rate of durable appends, and the time and the
//! memory that verifying a long trail takes, both as `audit verify` (and
//! `VerifyAudit`) does it and as the start-up check of `AuditTrail::open`
//! does it. Verification reads the trail as a stream, so its peak memory
//! must not grow with the number of entries.
//!
//! `cargo bench --bench audit` (env `AUDIT_ENTRIES`, default 1,000,000, and
//! `AUDIT_DIR`, default a temporary directory; every append is fsynced, so
//! a million on a disk takes as long as a million fsyncs: put `AUDIT_DIR`
//! on a tmpfs such as /dev/shm to measure verification rather than the
//! disk). Peak memory is the process's VmHWM, reset before each phase
//! through /proc/self/clear_refs.

use std::path::Path;
use std::time::Instant;

use chrono::{TimeZone, Utc};

use cdrvault::audit::{self, AuditEvent, AuditTrail};
use cdrvault::keys::KeyStore;

fn main() {
    let entries: u64 = std::env::var("AUDIT_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let temporary = tempfile::tempdir().unwrap();
    let root = std::env::var_os("AUDIT_DIR").map_or_else(|| temporary.path().to_path_buf(), Into::into);
    let (keys_dir, state_dir) = (root.join("keys"), root.join("state"));
    if !keys_dir.exists() {
        KeyStore::init(&keys_dir, None).unwrap();
    }
    let keys = KeyStore::open(&keys_dir, None).unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();

    // A trail left in AUDIT_DIR by an earlier run is extended, not rebuilt.
    let mut seq = std::fs::read(trail_path(&state_dir)).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    let trail = AuditTrail::open(&state_dir, &keys).unwrap();
    let appending = Instant::now();
    let mut appended = 0u64;
    while seq < entries {
        let event = AuditEvent::AuthenticationFailures {
            peer: format!("127.0.0.{}", appended % 250),
            count: appended + 1,
            reasons: vec!["unknown_token".into()],
            since: "2026-01-01T00:00:00Z".into(),
            until: "2026-01-01T00:01:00Z".into(),
        };
        seq = trail.append("access", &event, start + chrono::Duration::seconds(appended as i64)).unwrap();
        appended += 1;
    }
    let append_seconds = appending.elapsed().as_secs_f64();
    drop(trail);
    let bytes = std::fs::metadata(trail_path(&state_dir)).unwrap().len();
    if appended > 0 {
        println!(
            "RESULT append: {appended} entries in {append_seconds:.1} s, {:.0} entries/s ({} B/entry)",
            appended as f64 / append_seconds,
            bytes / seq.max(1)
        );
    }

    let baseline = reset_peak();
    let verifying = Instant::now();
    let verification = audit::verify(
        &trail_path(&state_dir),
        &audit::public_key(&keys).unwrap(),
        &keys.audit_head_path(&trail_path(&state_dir)),
    )
    .unwrap();
    let verify_seconds = verifying.elapsed().as_secs_f64();
    let verify_peak = peak_kib();
    assert_eq!(verification.entries, seq, "every entry verified");
    assert!(verification.problem.is_none(), "{:?}", verification.problem);
    println!(
        "RESULT verify: {seq} entries ({:.0} MiB) in {verify_seconds:.1} s, {:.0} entries/s, peak memory {:.1} MiB above the {:.1} MiB before",
        bytes as f64 / 1048576.0,
        seq as f64 / verify_seconds,
        (verify_peak.saturating_sub(baseline)) as f64 / 1024.0,
        baseline as f64 / 1024.0
    );

    let baseline = reset_peak();
    let opening = Instant::now();
    let reopened = AuditTrail::open(&state_dir, &keys).unwrap();
    let open_seconds = opening.elapsed().as_secs_f64();
    assert!(reopened.damage().is_none());
    println!(
        "RESULT open (start-up check): {seq} entries in {open_seconds:.1} s, peak memory {:.1} MiB above the {:.1} MiB before",
        (peak_kib().saturating_sub(baseline)) as f64 / 1024.0,
        baseline as f64 / 1024.0
    );
}

fn trail_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join(audit::AUDIT_FILE)
}

/// Resets the process's peak resident set to its current size and returns
/// that size, in KiB.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    peak_kib()
}

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

//! The `cdrvault` command as an operator uses it: the demo read back by an
//! independent reader (pyarrow), key initialisation rules, `import` refusal
//! reports and exit codes, and configuration errors.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};

use cdrvault::synth::{Generator, SynthConfig};

const BINARY: &str = env!("CARGO_BIN_EXE_cdrvault");

fn cdrvault(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `name: value` lines of the demo's summary.
fn summary(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn number(value: &str) -> u64 {
    value.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn demo_output_is_read_by_an_independent_reader_and_holds_no_raw_identifier() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys");
    let records = 30_000u64;
    let output = cdrvault(&[
        "demo",
        "--records",
        &records.to_string(),
        "--days",
        "3",
        "--data-dir",
        data.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "demo failed: {}", text(&output.stderr));
    let fields = summary(&stdout);
    assert_eq!(number(&fields["records in"]), records);
    let written = number(&fields["written"]);
    let refused = number(&fields["refused"]);
    assert_eq!(written + refused, records);
    assert!(refused > 0 && refused < records / 20, "about 1% of demo records are invalid: {refused}");

    let reader = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/read_parquet.py"))
        .arg(&data)
        .output()
        .expect("python3 runs (scripts/test.sh installs pyarrow)");
    assert!(reader.status.success(), "pyarrow could not read the files: {}", text(&reader.stderr));
    let found: serde_json::Value = serde_json::from_slice(&reader.stdout).unwrap();
    assert_eq!(found["rows"].as_u64(), Some(written), "{found}");
    assert_eq!(found["misplaced_rows"].as_u64(), Some(0), "every row sits in the dt= of its UTC start date");
    assert_eq!(found["sealed_readable_without_key"].as_bool(), Some(false));
    assert!(found["days"].as_array().unwrap().len() >= 3);
    assert_eq!(found["token_types"]["calling_number_token"], "int64");
    assert_eq!(
        found["token_non_null"]["calling_number_token"].as_u64(),
        Some(written),
        "every demo record has a calling number"
    );
    assert!(found["token_non_null"]["src_ip_token"].as_u64().unwrap() > 0);

    // The same seed regenerates the demo's identifiers.
    let mut generator = Generator::new(SynthConfig { seed: 42, days: 3, ..SynthConfig::default() });
    let truth: Vec<_> = (0..records).map(|_| generator.next_record()).collect();
    let identifiers = common::raw_identifiers(&truth);
    let mut files = common::files_below(&data);
    files.extend(common::files_below(&keys));
    let leaks = common::find_leaks(&files, &[("stdout", &output.stdout), ("stderr", &output.stderr)], &identifiers);
    assert!(leaks.is_empty(), "raw identifiers leaked: {leaks:?}");
}

#[test]
fn keys_are_refused_inside_the_data_directory_and_never_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let inside = data.join("keys");
    let output = cdrvault(&["keys", "init", "--dir", inside.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("inside the data directory"), "{}", text(&output.stderr));
    assert!(!inside.exists());

    let keys = root.path().join("keys");
    let first = cdrvault(&["keys", "init", "--dir", keys.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(first.status.success());
    let master = std::fs::read(keys.join("master.key")).unwrap();
    let again = cdrvault(&["keys", "init", "--dir", keys.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already initialised"));
    assert_eq!(std::fs::read(keys.join("master.key")).unwrap(), master, "an existing master key is never replaced");

    let rotated = cdrvault(&["keys", "rotate-token", "--dir", keys.to_str().unwrap()]);
    assert!(rotated.status.success());
    assert!(text(&rotated.stdout).contains("tk-0002"));
}

#[test]
fn import_reports_refused_lines_by_number_and_reason_only() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys");
    assert!(cdrvault(&["keys", "init", "--dir", keys.to_str().unwrap()]).status.success());
    let file = root.path().join("backfill.jsonl");
    let bad_number = "+45-99887766x";
    // Two different UTC days, a few days back from today.
    let day = |back: i64| (chrono::Utc::now() - chrono::Duration::days(back)).format("%Y-%m-%d").to_string();
    let (first, second) = (day(4), day(3));
    let lines = [
        format!(
            r#"{{"record_id":"a-1","service":"sms","start_time":"{first}T08:00:00Z","calling_number":"+4511223344","called_number":"+4555667788"}}"#
        ),
        format!(
            r#"{{"record_id":"a-2","service":"sms","start_time":"{first}T08:01:00Z","calling_number":"{bad_number}"}}"#
        ),
        String::new(),
        r#"{"record_id":"a-3","service":"voice""#.to_string(),
        format!(
            r#"{{"record_id":"a-4","service":"voice","start_time":"{second}T09:00:00+01:00","calling_number":"+4511223344"}}"#
        ),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let args =
        ["import", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--keys-dir", keys.to_str().unwrap()];

    let output = cdrvault(&args);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("line 2: refused: invalid_msisdn in field calling_number"), "{stderr}");
    assert!(stderr.contains("line 4: refused: malformed_payload"), "{stderr}");
    assert!(
        text(&output.stdout).contains("imported 4 lines: 2 written into 2 files, 2 refused"),
        "{}",
        text(&output.stdout)
    );
    for shown in [&stderr, &text(&output.stdout)] {
        assert!(!shown.contains("99887766") && !shown.contains("11223344"), "no value is ever quoted");
    }

    let mut strict = args.to_vec();
    strict.push("--strict");
    let output = cdrvault(&strict);
    assert_eq!(output.status.code(), Some(2), "--strict fails when a line was refused");
}

#[test]
fn configuration_errors_name_the_key() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nbatch_linger = \"0s\"\n").unwrap();
    let output = cdrvault(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("ingest.batch_linger"), "{stderr}");

    std::fs::write(&config, "[kafka]\nbrokerz = \"x\"\n").unwrap();
    let output = cdrvault(&["serve", "--config", config.to_str().unwrap()]);
    assert!(text(&output.stderr).contains("brokerz"), "{}", text(&output.stderr));
}

#[test]
fn retention_audit_and_preservation_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| root.path().join(name).to_str().unwrap().to_string();
    let (data, keys, state) = (dir("data"), dir("keys"), dir("state"));
    let config = root.path().join("cdrvault.toml");
    std::fs::write(
        &config,
        format!("[storage]\ndata_dir = \"{data}\"\n[keys]\ndir = \"{keys}\"\n[state]\ndir = \"{state}\"\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        cdrvault(&all)
    };
    assert!(run(&["keys", "init"]).status.success());

    let day = |offset: i64| (chrono::Utc::now() + chrono::Duration::days(offset)).format("%Y-%m-%d").to_string();
    let file = root.path().join("old.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"record_id":"x-{i}","service":"sms","start_time":"{}T10:00:00Z","calling_number":"+452000000{}","called_number":"+4530000001"}}"#,
                day(-3),
                i % 10
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    assert!(run(&["import", file.to_str().unwrap()]).status.success());

    let placed = run(&[
        "preserve",
        "add",
        "--authority",
        "dk-police",
        "--reference",
        "QF-9",
        "--target",
        "msisdn:+4520000003",
        "--from",
        &day(-5),
        "--to",
        &day(-1),
        "--until",
        &day(500),
    ]);
    assert!(placed.status.success(), "{}", text(&placed.stderr));
    let listed = text(&run(&["preserve", "list"]).stdout);
    assert!(listed.contains("dk-police") && listed.contains("QF-9") && listed.contains("targets=1"), "{listed}");
    assert!(!listed.contains("4520000003"), "target values are never listed");

    // A year and more on: a dry run lists the day, a real run destroys it
    // (after copying the order's records), and verification passes.
    let later = day(400);
    let preview = text(&run(&["retention", "run", "--as-of", &later, "--dry-run"]).stdout);
    assert!(preview.contains(&format!("would destroy {}: 1 files, 20 rows", day(-3))), "{preview}");
    let destroyed = run(&["retention", "run", "--as-of", &later]);
    assert!(
        text(&destroyed.stdout).contains(&format!("destroyed {}: 1 files, 20 rows, key day-", day(-3))),
        "{}",
        text(&destroyed.stdout)
    );
    let verified = run(&["retention", "verify", "--as-of", &later]);
    assert!(verified.status.success(), "{}", text(&verified.stdout));
    assert!(text(&verified.stdout).contains("OK: no expired day"));
    assert!(std::path::Path::new(&data).join("preserved").read_dir().unwrap().count() == 1, "the order's copy exists");

    let audit = run(&["audit", "verify"]);
    assert!(audit.status.success(), "{}", text(&audit.stdout));
    let order_id = listed.split_whitespace().next().unwrap().to_string();
    let lifted = run(&["preserve", "lift", &order_id]);
    assert!(text(&lifted.stdout).contains("1 preserved files deleted"), "{}", text(&lifted.stdout));

    // An edited audit line is found, by entry number.
    let trail = std::path::Path::new(&state).join("audit.jsonl");
    let edited = std::fs::read_to_string(&trail).unwrap().replacen("\"rows\":20", "\"rows\":2", 1);
    std::fs::write(&trail, edited).unwrap();
    let audit = run(&["audit", "verify"]);
    assert!(!audit.status.success());
    assert!(text(&audit.stdout).contains("first bad entry"), "{}", text(&audit.stdout));
    let verified = run(&["retention", "verify", "--as-of", &later]);
    assert!(!verified.status.success(), "retention verify fails on a damaged trail");
}

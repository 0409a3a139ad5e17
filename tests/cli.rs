//! The `cdrvault` command as an operator uses it: the demo read back by an
//! independent reader (pyarrow), key initialisation rules, `import` refusal
//! reports and exit codes, and configuration errors.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};

use cdrvault::tools::synth::{Generator, SynthConfig};

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
    let state = root.path().join("state");
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
        "--state-dir",
        state.to_str().unwrap(),
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
    assert_eq!(found["sealed_columns_in_data_files"].as_u64(), Some(0), "{found}");
    assert_eq!(found["companions"], found["files"], "one companion per data file: {found}");
    assert!(found["days"].as_array().unwrap().len() >= 3);
    assert_eq!(found["token_types"]["calling_number_token"], "int64");
    assert_eq!(
        found["token_non_null"]["calling_number_token"].as_u64(),
        Some(written),
        "every demo record has a calling number"
    );
    assert!(found["token_non_null"]["src_ip_token"].as_u64().unwrap() > 0);

    // What an analyst's generic tools make of the dataset: DuckDB's
    // `SELECT *` and `SUMMARIZE`, pyarrow's tables, metadata and statistics
    // of every file, and Spark's when the test script installed it, all
    // open every column of every file (the sealed ones are elsewhere).
    let spark = std::env::var("CDRVAULT_SPARK_PYTHON").ok();
    let mut tools = Command::new(spark.as_deref().unwrap_or("python3"));
    tools.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/generic-tools.py"));
    if spark.is_some() {
        tools.arg("--spark");
    }
    let checked = tools.arg(&data).output().expect("python runs (scripts/test.sh installs duckdb and Spark)");
    let said = text(&checked.stdout);
    assert!(checked.status.success(), "a generic tool failed:\n{said}{}", text(&checked.stderr));
    let all = if spark.is_some() { "7 of 7 checks passed" } else { "5 of 5 checks passed" };
    assert!(said.contains(all), "{said}");

    // The same seed regenerates the demo's identifiers.
    let mut generator = Generator::new(SynthConfig { seed: 42, days: 3, ..SynthConfig::default() });
    let truth: Vec<_> = (0..records).map(|_| generator.next_record()).collect();
    let identifiers = common::raw_identifiers(&truth);

    // The demo ends with a lawful-access walk-through: one delivery of the
    // first subscriber's records, digested, and an intact trail.
    let target = &generator.subscribers()[0].msisdn;
    let expected = truth.iter().filter(|r| r.involves_number(target) && r.defect.is_none()).count();
    let delivered = &fields["delivered"];
    assert!(delivered.contains(&format!(": {expected} records")), "{delivered} (expected {expected})");
    assert!(delivered.contains("sha256 "), "{delivered}");
    assert!(fields["audit trail"].contains("intact"), "{}", fields["audit trail"]);
    let trail = common::files_below(&state).into_iter().find(|p| p.ends_with("audit.jsonl")).unwrap();
    let trail = std::fs::read_to_string(trail).unwrap();
    let digest = delivered.rsplit("sha256 ").next().unwrap();
    assert!(trail.contains("\"action\":\"result_delivered\"") && trail.contains(digest));

    let mut files = common::files_below(&data);
    files.extend(common::files_below(&keys));
    files.extend(common::files_below(&state));
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

    assert!(text(&first.stdout).contains("file custody"), "{}", text(&first.stdout));
    assert_eq!(std::fs::read_to_string(keys.join("custody")).unwrap(), "file\n");
    // Token keys are per day, derived from each day's key: none to rotate.
    let rotated = cdrvault(&["keys", "rotate-token", "--dir", keys.to_str().unwrap()]);
    assert!(!rotated.status.success());
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
    let state = root.path().join("state");
    let args = [
        "import",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];

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

/// Two processes (two backfills here; the service and a backfill alike)
/// that first write the same new days at the same time create one key a
/// day between them, and every file either wrote is readable with it.
#[test]
fn two_imports_racing_over_the_same_new_days_share_one_key_a_day() {
    let root = tempfile::tempdir().unwrap();
    let (data, keys) = (root.path().join("data"), root.path().join("keys"));
    assert!(cdrvault(&["keys", "init", "--dir", keys.to_str().unwrap()]).status.success());
    let days = 300;
    let backfills: Vec<_> = ["a", "b"]
        .iter()
        .map(|writer| {
            let lines: Vec<String> = (1..=days)
                .map(|back| {
                    let day = (chrono::Utc::now() - chrono::Duration::days(back)).format("%Y-%m-%d");
                    format!(
                        r#"{{"record_id":"{writer}-{back}","service":"sms","start_time":"{day}T12:00:00Z","calling_number":"+4520{back:06}"}}"#
                    )
                })
                .collect();
            let file = root.path().join(format!("{writer}.jsonl"));
            std::fs::write(&file, lines.join("\n")).unwrap();
            file
        })
        .collect();
    let imports: Vec<_> = backfills
        .iter()
        .map(|file| {
            Command::new(BINARY)
                .args(["import", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
                .args(["--keys-dir", keys.to_str().unwrap()])
                .args(["--state-dir", root.path().join("state").to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for import in imports {
        let output = import.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
    }

    let store = cdrvault::keys::KeyStore::open(&keys, None).unwrap();
    let key_files = std::fs::read_dir(keys.join("day")).unwrap().count();
    assert_eq!(key_files, days as usize, "one key file a day, nothing else");
    let mut rows = 0;
    for day in cdrvault::storage::read::list_days(&data).unwrap() {
        let key = store.existing_day_key(day).unwrap().unwrap();
        for file in cdrvault::storage::read::list_files(&data, day).unwrap() {
            let batches =
                cdrvault::storage::read::read_file(&file, Some(&key), &["record_id", "calling_number_sealed"])
                    .unwrap_or_else(|e| panic!("{day}: a file sealed under a key that is not the day's: {e}"));
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    assert_eq!(rows, 2 * days as usize, "every record of both writers is readable");
    // Each day's keys were created once, and that creation audited once.
    let created = audit_actions(&root.path().join("state")).iter().filter(|a| *a == "day_keys_created").count();
    assert_eq!(created, days as usize);
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

/// `config check`, the service manager's pre-start check: missing keys, a
/// state directory others can read, a bad value, each stop it with a
/// reason; a sound installation passes and is described.
#[test]
fn config_check_refuses_what_serve_would_refuse_and_describes_the_rest() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let config = operator_config(root.path());
    let check = |config: &std::path::Path| {
        let output = with_config(config, &["config", "check"]);
        (output.status.success(), format!("{}{}", text(&output.stdout), text(&output.stderr)))
    };
    let (ok, said) = check(&config);
    assert!(!ok, "no keys yet: {said}");
    assert!(said.contains("keys"), "{said}");

    assert!(with_config(&config, &["keys", "init"]).status.success());
    let (ok, said) = check(&config);
    assert!(ok, "{said}");
    assert!(said.contains("configuration ok") && said.contains("file custody"), "{said}");
    assert!(said.contains("lawful-access API: off"), "{said}");

    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, said) = check(&config);
    assert!(!ok && said.contains("group and other must have no access"), "{said}");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(state.join("audit.jsonl"), "").unwrap();
    std::fs::set_permissions(state.join("audit.jsonl"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, said) = check(&config);
    assert!(!ok && said.contains("audit.jsonl"), "{said}");
    std::fs::set_permissions(state.join("audit.jsonl"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(check(&config).0);

    let bad = root.path().join("bad.toml");
    let text_of = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&bad, format!("{text_of}[retention]\ninterval = \"0s\"\n")).unwrap();
    let (ok, said) = check(&bad);
    assert!(!ok && said.contains("retention.interval"), "{said}");
}

/// A config file under `root` with `data`, `keys` and `state` beside it,
/// as an operator writes one.
fn operator_config(root: &std::path::Path) -> std::path::PathBuf {
    let dir = |name: &str| root.join(name).to_str().unwrap().to_string();
    let (data, keys, state) = (dir("data"), dir("keys"), dir("state"));
    let config = root.join("cdrvault.toml");
    std::fs::write(
        &config,
        format!("[storage]\ndata_dir = \"{data}\"\n[keys]\ndir = \"{keys}\"\n[state]\ndir = \"{state}\"\n"),
    )
    .unwrap();
    config
}

/// `cdrvault --config CONFIG ARGS…`.
fn with_config(config: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    cdrvault(&all)
}

/// The day `offset` days from today, as `YYYY-MM-DD`.
fn day(offset: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(offset)).format("%Y-%m-%d").to_string()
}

/// The actions of the audit trail in `state`, in order.
fn audit_actions(state: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(state.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["action"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn retention_and_audit_from_the_command_line() {
    // Records of a day 400 days back, written while that day was today.
    let then = chrono::Utc::now() - chrono::Duration::days(400);
    let vault = common::TestVault::new(then);
    let old_day = vault.today().to_string();
    let written = vault.ingest_payloads((0..20).map(|i| {
        format!(
            r#"{{"record_id":"x-{i}","service":"sms","start_time":"{old_day}T00:00:{i:02}Z","calling_number":"+452000000{}","called_number":"+4530000001"}}"#,
            i % 10
        )
        .into_bytes()
    }));
    assert_eq!(written.written, 20);
    let root = vault.root.path();
    let config = operator_config(root);
    let (data, state) = (root.join("data"), root.join("state"));
    let run = |args: &[&str]| with_config(&config, args);
    let day_dir = data.join("cdr").join(format!("dt={old_day}"));

    // A date given to a deleting run is refused: it only ever previews.
    let refused = run(&["retention", "run", "--as-of", &day(30)]);
    assert!(!refused.status.success(), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("add --dry-run"), "{}", text(&refused.stderr));
    let preview = text(&run(&["retention", "run", "--as-of", &day(30), "--dry-run"]).stdout);
    assert!(preview.contains(&format!("would destroy {old_day}: 1 files, 20 rows")), "{preview}");

    // The day is expired. A real run distrusts a clock far beyond the
    // newest data with no sweep on record, and destroys nothing until an
    // operator confirms the clock.
    let refused = run(&["retention", "run"]);
    assert!(!refused.status.success(), "{}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("confirm-clock"), "{}", text(&refused.stderr));
    assert!(day_dir.read_dir().unwrap().count() > 0, "nothing destroyed");
    assert!(!audit_actions(&state).iter().any(|a| a == "day_deleted"));
    let confirmed = run(&["retention", "confirm-clock"]);
    assert!(confirmed.status.success(), "{}", text(&confirmed.stderr));
    let confirmed = text(&confirmed.stdout);
    assert!(confirmed.contains(&format!("newest day {old_day}")) && confirmed.contains("jumped"), "{confirmed}");

    // Now the run destroys it, and verification passes.
    let destroyed = run(&["retention", "run"]);
    assert!(
        text(&destroyed.stdout).contains(&format!("destroyed {old_day}: 1 files, 20 rows, key day-")),
        "{}",
        text(&destroyed.stdout)
    );
    let verified = run(&["retention", "verify"]);
    assert!(verified.status.success(), "{}", text(&verified.stdout));
    assert!(text(&verified.stdout).contains("OK: no expired day"));
    let evidence = text(&verified.stdout);
    assert!(evidence.contains("limit: key custody is file"), "the evidence names what destruction does not reach");
    assert!(evidence.contains("1 destroyed days checked, none has a token key left"), "{evidence}");
    assert!(evidence.contains("cdrvault_keys_cached_destroyed"), "{evidence}");
    assert!(!day_dir.exists());
    let actions = audit_actions(&state);
    let position = |action: &str| actions.iter().position(|a| a == action).unwrap();
    assert!(position("clock_confirmed") < position("day_deleted"), "{actions:?}");
    let audit = run(&["audit", "verify"]);
    assert!(audit.status.success(), "{}", text(&audit.stdout));

    // An edited audit line is found, by entry number.
    let trail = state.join("audit.jsonl");
    let edited = std::fs::read_to_string(&trail).unwrap().replacen("\"rows\":20", "\"rows\":2", 1);
    std::fs::write(&trail, edited).unwrap();
    let audit = run(&["audit", "verify"]);
    assert!(!audit.status.success());
    assert!(text(&audit.stdout).contains("first bad entry"), "{}", text(&audit.stdout));
    let verified = run(&["retention", "verify"]);
    assert!(!verified.status.success(), "retention verify fails on a damaged trail");
}

/// Runs `cdrvault` as a client of the API at `server`, holding `token`.
fn as_client(config: &std::path::Path, server: &str, token: &str, args: &[&str]) -> Output {
    as_client_with_input(config, server, token, args, "")
}

/// [`as_client`], with `input` on the command's stdin.
fn as_client_with_input(config: &std::path::Path, server: &str, token: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CDRVAULT_SERVER", server)
        .env("CDRVAULT_TOKEN", token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its stdin closes the pipe: its
    // output says why, so a broken pipe here is not the test's failure.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

/// The text after `label` on the line holding it.
fn after<'a>(stdout: &'a str, label: &str) -> &'a str {
    let at = stdout.find(label).unwrap_or_else(|| panic!("no `{label}` in {stdout}"));
    stdout[at + label.len()..].split_whitespace().next().unwrap().trim_end_matches(':')
}

#[test]
fn an_authority_handler_goes_from_warrant_to_result_with_the_command_line_client() {
    use std::io::BufRead;

    let root = tempfile::tempdir().unwrap();
    let config = operator_config(root.path());
    let run = |args: &[&str]| with_config(&config, args);
    assert!(run(&["keys", "init"]).status.success());
    // Six records of the target yesterday, four of others.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let lines: Vec<String> = (0..10)
        .map(|i| {
            let calling = if i < 6 { "+4520000001".to_string() } else { format!("+45300000{i:02}") };
            format!(
                r#"{{"record_id":"r-{i}","service":"sms","start_time":"{yesterday}T1{i}:00:00Z","calling_number":"{calling}","called_number":"+4540000001"}}"#
            )
        })
        .collect();
    let file = root.path().join("cdrs.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    assert!(run(&["import", file.to_str().unwrap(), "--strict"]).status.success());
    // A second import makes a second file of the day; compaction merges them.
    let late = root.path().join("late.jsonl");
    let line = format!(
        r#"{{"record_id":"late-1","service":"sms","start_time":"{yesterday}T21:00:00Z","calling_number":"+4530000099","called_number":"+4540000001"}}"#
    );
    std::fs::write(&late, line + "\n").unwrap();
    assert!(run(&["import", late.to_str().unwrap(), "--strict"]).status.success());
    let compacted = run(&["compact", "--day", &yesterday]);
    assert!(text(&compacted.stdout).contains(": 2 files -> 1, 11 rows"), "{}", text(&compacted.stdout));

    let boot = run(&["access", "bootstrap", "--name", "root"]);
    assert!(boot.status.success(), "{}", text(&boot.stderr));
    let admin = after(&text(&boot.stdout), "token (shown once): ").to_string();
    assert!(!run(&["access", "bootstrap"]).status.success(), "a second bootstrap is refused");

    let mut server = Command::new(BINARY)
        .args(["--config", config.to_str().unwrap(), "access", "serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let url = format!("http://{}", after(&first, "listening on "));

    let client = |token: &str, args: &[&str]| as_client(&config, &url, token, args);
    let ok = |output: Output| {
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    ok(client(&admin, &["authority", "create", "dk-police", "--country", "dk", "--name", "Police"]));
    let token_of = |name: &str, role: &str, extra: &[&str]| {
        let mut args = vec!["principal", "create", "--name", name, "--person", name, "--role", role];
        args.extend_from_slice(extra);
        after(&ok(client(&admin, &args)), "token (shown once): ").to_string()
    };
    let alice = token_of("alice", "legal_reviewer", &[]);
    let bob = token_of("bob", "legal_reviewer", &[]);
    let handler = token_of("handler", "authority_handler", &["--authority", "dk-police"]);
    let auditor = token_of("auditor", "auditor", &[]);

    let start = format!("{yesterday}T00:00:00Z");
    let end = format!("{yesterday}T23:59:59Z");
    // Targets come from a file (or stdin), never from the command line.
    let targets = root.path().join("targets.txt");
    std::fs::write(&targets, "# K-1, the subscriber of the case\n\nmsisdn:+4520000001\n").unwrap();
    let registered = ok(client(
        &alice,
        &[
            "warrant",
            "register",
            "--authority",
            "dk-police",
            "--reference",
            "K-1",
            "--issued-by",
            "Court",
            "--legal-basis",
            "§ 781",
            "--targets-file",
            targets.to_str().unwrap(),
            "--period-start",
            &start,
            "--period-end",
            &end,
            "--category",
            "traffic",
            "--valid-until",
            "2099-01-01T00:00:00Z",
        ],
    ));
    let warrant = after(&registered, "warrant ").to_string();
    assert!(registered.contains("registered"), "{registered}");
    let self_approval = client(&alice, &["warrant", "approve", &warrant]);
    assert!(!self_approval.status.success() && text(&self_approval.stderr).contains("self_approval"));
    assert!(ok(client(&bob, &["warrant", "approve", &warrant])).contains("approved"));

    let submit = [
        "request",
        "submit",
        "--warrant",
        &warrant,
        "--number",
        "1",
        "--targets-file",
        "-",
        "--from",
        &start,
        "--to",
        &end,
        "--category",
        "traffic",
        "--format",
        "csv",
    ];
    let submit_with_stdin =
        |token: &str| as_client_with_input(&config, &url, token, &submit, "msisdn:0045 2000 0001\n");
    let submitted = ok(submit_with_stdin(&handler));
    assert!(submitted.contains("request DK-dk-police-1: answered, 6 records"), "{submitted}");
    let digest = after(&submitted, "sha256 ").to_string();
    let out = root.path().join("result.csv");
    let fetched = ok(client(&handler, &["request", "fetch", "DK-dk-police-1", "--out", out.to_str().unwrap()]));
    assert!(fetched.contains(&digest), "{fetched}");
    let csv = std::fs::read_to_string(&out).unwrap();
    assert_eq!(csv.lines().count(), 7, "a header and six records: {csv}");
    assert!((0..6).all(|i| csv.contains(&format!(",r-{i},"))) && !csv.contains("r-7"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);

    let replay = submit_with_stdin(&handler);
    assert!(!replay.status.success() && text(&replay.stderr).contains("request_number_reused"));
    let report = ok(client(&auditor, &["report", "--year", &yesterday[..4]]));
    let row = report.lines().find(|l| l.starts_with("dk-police")).unwrap();
    assert_eq!(row.split_whitespace().skip(1).take(5).collect::<Vec<_>>(), ["1", "1", "0", "0", "0"], "{report}");
    assert!(ok(client(&auditor, &["audit", "verify", "--remote"])).contains("intact"));

    // A preservation order: registered by alice, approved by bob, listed
    // without its target, lifted.
    let targets = root.path().join("freeze.txt");
    std::fs::write(&targets, "# the suspect\nmsisdn:+4520000001\n").unwrap();
    let until = (chrono::Utc::now() + chrono::Duration::days(60)).format("%Y-%m-%d").to_string();
    let order = [
        "preserve",
        "add",
        "--authority",
        "dk-police",
        "--reference",
        "QF-1",
        "--targets-file",
        targets.to_str().unwrap(),
        "--from",
        &start,
        "--to",
        &end,
        "--until",
        &until,
    ];
    let registered = ok(client(&alice, &order));
    assert!(registered.contains("registered"), "{registered}");
    let order_id = after(&registered, "order ").to_string();
    let self_approval = client(&alice, &["preserve", "approve", &order_id]);
    assert!(!self_approval.status.success() && text(&self_approval.stderr).contains("self_approval"));
    assert!(ok(client(&bob, &["preserve", "approve", &order_id])).contains("active"));
    let listed = ok(client(&auditor, &["preserve", "list"]));
    assert!(listed.contains("QF-1") && listed.contains("targets 1 (msisdn)"), "{listed}");
    assert!(ok(client(&alice, &["preserve", "lift", &order_id, "--reason", "case closed"])).contains("lifted"));

    let trail = std::fs::read_to_string(root.path().join("state/audit.jsonl")).unwrap();
    assert!(trail.contains("\"result_delivered\"") && trail.contains(&digest));
    assert!(!trail.contains("+4520000001"), "the trail holds references, never numbers");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn targets_given_as_arguments_are_refused_without_being_repeated() {
    let root = tempfile::tempdir().unwrap();
    let config = operator_config(root.path());
    // Nothing listens here: a refusal must come before any connection.
    let client = |args: &[&str]| as_client(&config, "http://127.0.0.1:9", "cdv_unused", args);
    let number = "+4520000009";
    let given = format!("msisdn:{number}");
    let targets = root.path().join("targets.txt");
    std::fs::write(&targets, "msisdn:+4520000001\n").unwrap();
    let register = |extra: &[&str]| {
        let mut args = vec![
            "warrant",
            "register",
            "--authority",
            "dk-police",
            "--reference",
            "K-9",
            "--issued-by",
            "Court",
            "--legal-basis",
            "§ 781",
            "--period-start",
            "2026-11-01T00:00:00Z",
            "--period-end",
            "2026-11-02T00:00:00Z",
            "--category",
            "traffic",
            "--valid-until",
            "2099-01-01T00:00:00Z",
        ];
        args.extend_from_slice(extra);
        client(&args)
    };
    let submit = |extra: &[&str]| {
        let mut args = vec![
            "request",
            "submit",
            "--warrant",
            "w-0000000000000000",
            "--number",
            "1",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-11-02T00:00:00Z",
            "--category",
            "traffic",
        ];
        args.extend_from_slice(extra);
        client(&args)
    };
    let with_equals = format!("--target={given}");
    let attempts = [
        ("warrant register --target", register(&["--target", &given])),
        ("warrant register --target=", register(&[&with_equals])),
        (
            "warrant register with a file too",
            register(&["--targets-file", targets.to_str().unwrap(), "--target", &given]),
        ),
        ("request submit --target", submit(&["--target", &given])),
        ("request submit --target twice", submit(&["--target", &given, "--target", "msisdn:+4520000001"])),
        (
            "subject export --target",
            client(&["subject", "export", "--target", &given, "--reference", "DSAR-1", "--out", "/nonexistent/x"]),
        ),
    ];
    for (case, output) in attempts {
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(!output.status.success(), "{case}: {stdout}");
        assert!(stderr.contains("--targets-file"), "{case}: the refusal says what to use instead: {stderr}");
        for shown in [&stdout, &stderr] {
            assert!(
                !shown.contains("4520000009") && !shown.contains("20000009"),
                "{case}: the value is repeated: {shown}"
            );
        }
    }
}

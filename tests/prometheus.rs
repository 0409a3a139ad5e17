//! A real Prometheus (Debian's `prometheus`, installed by `scripts/test.sh`)
//! scraping a real `cdrvault serve` fed through the test broker, with the
//! shipped rules loaded, asked through its HTTP API:
//! - the target is up, and `promtool check metrics` finds nothing to say
//!   about a scrape;
//! - every rule evaluates without error, and every metric a rule names has
//!   series;
//! - every panel query of the Grafana dashboards (`deploy/grafana`, listed
//!   by `check.py --list-queries`) parses and returns data;
//! - two alerts really fire: an expired day left on disk
//!   (`CdrvaultRetentionOverdue`) and calls with a bad token, about two a
//!   second (`CdrvaultAuthenticationFailureBurst`);
//! - what Prometheus stored holds no raw identifier.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use cdrvault::tools::synth::{Generator, SynthConfig};
use common::broker::{brokers, create_topics, free_port, metric_sum, run, unique};

const BINARY: &str = env!("CARGO_BIN_EXE_cdrvault");
const RECORDS: u64 = 3_000;

#[test]
fn a_real_prometheus_scrapes_serve_runs_every_rule_and_panel_query_and_sees_alerts_fire() {
    let prometheus_binary = installed("prometheus");
    let brokers = brokers();
    let suffix = format!("{}-{}", std::process::id(), unique());
    let (topic, dead_letter) = (format!("cdr-prom-{suffix}"), format!("cdr-prom-{suffix}-dead"));
    create_topics(&brokers, &[(&topic, 2), (&dead_letter, 1)]);

    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| root.path().join(name);
    run(&["keys", "init", "--dir", path(&dir("keys")), "--data-dir", path(&dir("data"))]);
    let seed = 23;
    run(&[
        "produce",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--count",
        &RECORDS.to_string(),
        "--days",
        "3",
        "--seed",
        &seed.to_string(),
    ]);

    let (http_port, api_port, prometheus_port) = (free_port(), free_port(), free_port());
    let config = dir("cdrvault.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[storage]
data_dir = "{data}"
[keys]
dir = "{keys}"
[state]
dir = "{state}"
[kafka]
brokers = "{brokers}"
group_id = "cdrvault-prom-{suffix}"
dead_letter_topic = "{dead_letter}"
statistics_interval = "1s"
topics = [{{ name = "{topic}", encoding = "json" }}]
[ingest]
batch_linger = "300ms"
[http]
listen = "127.0.0.1:{http_port}"
[access]
listen = "127.0.0.1:{api_port}"
"#,
            data = path(&dir("data")),
            keys = path(&dir("keys")),
            state = path(&dir("state")),
        ),
    )
    .unwrap();
    let with_config = |args: &[&str]| -> Output { run(&[&["--config", path(&config)], args].concat()) };
    let bootstrap = with_config(&["access", "bootstrap"]);
    let admin_token = String::from_utf8_lossy(&bootstrap.stdout).rsplit(' ').next().unwrap().trim().to_string();
    write_secret(&dir("admin.token"), &admin_token);
    write_secret(&dir("bad.token"), "cdrvault-not-a-token-of-anyone");
    let (bad_token, admin_token_file) = (dir("bad.token"), dir("admin.token"));

    let serve_log = dir("serve.log");
    let serve = Running::spawn(
        Command::new(BINARY)
            .args(["--config", path(&config), "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&serve_log).unwrap()),
    );
    // Prometheus scrapes from the start, so that what follows happens in
    // its rate windows.
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/cdrvault-rules.yml");
    let prometheus_config = dir("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: cdrvault\n    static_configs:\n      - targets: ['127.0.0.1:{http_port}']\n"
        ),
    )
    .unwrap();
    let prometheus_log = dir("prometheus.log");
    let _prometheus = Running::spawn(
        Command::new(prometheus_binary)
            .arg(format!("--config.file={}", path(&prometheus_config)))
            .arg(format!("--storage.tsdb.path={}", path(&dir("tsdb"))))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prometheus_log).unwrap()),
    );
    let prometheus = Prometheus { address: SocketAddr::from(([127, 0, 0, 1], prometheus_port)), log: prometheus_log };

    let metrics_address = SocketAddr::from(([127, 0, 0, 1], http_port));
    let metrics = wait_for("every record ingested and a first retention sweep", 180, || {
        let text = common::http_get(metrics_address, "/metrics").ok()?;
        let handled = metric_sum(&text, "cdrvault_ingest_records_received_total")?;
        let swept = metric_sum(&text, "cdrvault_retention_last_success_timestamp_seconds")?;
        (handled >= RECORDS as f64 && swept > 0.0).then_some(text)
    });

    // What an operator's tooling reads without asking for OpenMetrics is
    // the Prometheus text format, and promtool's linter is content with it.
    let lint = Command::new(installed("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&lint.stderr));
    assert!(lint.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");

    // Through the API: an authority (its disclosure counter starts at 0),
    // then, for as long as the test runs, a caller with a token nobody
    // holds (each call refused and counted) and a legitimate one, so that
    // the short rate windows of the panels always hold calls, and the
    // bad credentials add up to a burst.
    let server = format!("http://127.0.0.1:{api_port}");
    let call = move |token: &Path, args: &[&str]| -> Output {
        Command::new(BINARY).args(args).args(["--server", &server, "--token-file", path(token)]).output().unwrap()
    };
    let created =
        call(&dir("admin.token"), &["authority", "create", "--country", "dk", "--name", "Police", "dk-police"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let callers = Callers::start(move |stop: &AtomicBool| {
        let mut refused = 0;
        while !stop.load(Ordering::Relaxed) {
            let bad = call(&bad_token, &["authority", "create", "--country", "dk", "--name", "X", "x-bad"]);
            assert!(!bad.status.success(), "a call with a bad token was accepted");
            refused += 1;
            let good = call(&admin_token_file, &["principal", "whoami"]);
            assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
            std::thread::sleep(Duration::from_millis(250));
        }
        refused
    });
    // A day far beyond retention appears after the first sweep, as if a
    // sweep had failed to destroy it: the next sweep is an hour away.
    std::fs::create_dir_all(dir("data").join("cdr").join("dt=2020-01-01")).unwrap();

    // The target is up (several scrapes in: the rates have two samples).
    prometheus.wait_for_data("count_over_time(up{job=\"cdrvault\"}[1m]) >= 5");
    prometheus.wait_for_data("up{job=\"cdrvault\"} == 1");
    assert_eq!(prometheus.query("up").len(), 1, "one target");

    // Every rule evaluated, without error; every metric it names has data.
    let groups = wait_for("every rule evaluated", 60, || {
        let groups = prometheus.get("/api/v1/rules")["data"]["groups"].as_array()?.clone();
        let evaluated = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .all(|rule| rule["lastEvaluation"].as_str().is_some_and(|at| !at.starts_with("0001")));
        evaluated.then_some(groups)
    });
    let mut named = 0;
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(rule["health"], "ok", "{rule}");
        let expr = rule["query"].as_str().unwrap();
        for metric in metric_names(expr) {
            named += 1;
            let selector = format!("{{__name__=\"{metric}\",job=\"cdrvault\"}}");
            let what = format!("series of {metric} (in the rule {})", rule["name"]);
            wait_for(&what, 30, || (!prometheus.query(&selector).is_empty()).then_some(()));
        }
    }
    assert!(named >= 25, "the rules name only {named} metrics");

    // Every panel query of the dashboards parses and returns data.
    let listed = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/check.py"))
        .arg("--list-queries")
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let panels: Vec<Value> =
        String::from_utf8(listed.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(panels.len() >= 40, "only {} panel queries", panels.len());
    // (Each is asked again for a while if empty: a scrape that timed out
    // on a loaded machine leaves a gap in a short rate window.)
    for panel in &panels {
        let expr = panel["expr"].as_str().unwrap();
        let what = format!("data for the panel {} of {}: {expr}", panel["panel"], panel["dashboard"]);
        wait_for(&what, 30, || (!prometheus.query(expr).is_empty()).then_some(()));
    }

    // Two alerts fire, on what this run did.
    for alert in ["CdrvaultRetentionOverdue", "CdrvaultAuthenticationFailureBurst"] {
        wait_for(alert, 60, || {
            let alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"].as_array()?.clone();
            alerts.iter().any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing").then_some(())
        });
    }
    let firing = prometheus.get("/api/v1/alerts");
    let names: Vec<&str> = firing["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    // Nothing else is wrong with this run: no other alert fires (but for
    // the disk alerts, which are about the machine the test runs on).
    let mut unexpected = names.clone();
    unexpected.retain(|name| {
        !["CdrvaultRetentionOverdue", "CdrvaultAuthenticationFailureBurst"].contains(name)
            && !name.starts_with("CdrvaultDisk")
    });
    assert!(unexpected.is_empty(), "alerts firing: {names:?}");

    // Stop the callers, Prometheus and serve, then look at what Prometheus
    // stored for identifiers.
    let refused = callers.stop();
    assert!(refused > 20, "only {refused} calls with a bad token");
    drop(_prometheus);
    drop(serve);
    let mut generator = Generator::new(SynthConfig { seed, days: 3, ..SynthConfig::default() });
    let records: Vec<_> = (0..RECORDS).map(|_| generator.next_record()).collect();
    let identifiers = common::raw_identifiers(&records);
    let leaks = common::find_leaks(&common::files_below(&dir("tsdb")), &[], &identifiers);
    assert!(leaks.is_empty(), "raw identifiers in Prometheus's storage: {leaks:?}");
}

/// A Prometheus server's HTTP API.
struct Prometheus {
    address: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn get(&self, path_and_query: &str) -> Value {
        let body = common::http_get(self.address, path_and_query).unwrap_or_default();
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// An instant query's result; panics with Prometheus's error if it
    /// does not parse or fails.
    fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self.get(&format!("/api/v1/query?query={}", percent_encoded(expr)));
        assert_eq!(answer["status"], "success", "{expr}: {answer}\n{}", self.log_tail());
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn wait_for_data(&self, expr: &str) {
        wait_for(expr, 60, || {
            let answer = self.get(&format!("/api/v1/query?query={}", percent_encoded(expr)));
            answer["data"]["result"].as_array().is_some_and(|r| !r.is_empty()).then_some(())
        });
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }
}

/// A thread that makes calls until told to stop; gives back what it counted.
struct Callers {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Callers {
    fn start(work: impl FnOnce(&AtomicBool) -> u32 + Send + 'static) -> Callers {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        Callers { stop, thread: Some(std::thread::spawn(move || work(&flag))) }
    }

    fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the callers' thread")
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A child process, killed and reaped when dropped.
struct Running(Child);

impl Running {
    fn spawn(command: &mut Command) -> Running {
        Running(command.spawn().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` (bounded by `seconds`) until it gives a value.
fn wait_for<T>(what: &str, seconds: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {seconds} s for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The metric names of a PromQL expression: words that start like
/// cdrvault's or the process's families, or `up`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("cdrvault_") || word.starts_with("process_") || *word == "up")
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn installed(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{program} is not installed: scripts/test.sh installs Debian's prometheus package"))
}

fn write_secret(file: &Path, secret: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(file).unwrap();
    writeln!(out, "{secret}").unwrap();
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

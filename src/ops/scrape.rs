//! What is measured when Prometheus scrapes rather than when something
//! happens: the process's CPU, memory and file descriptors (under the
//! standard `process_*` names), the free space of a file system, and the
//! Prometheus text format for scrapers that do not ask for OpenMetrics.
//!
//! Everything here reads the kernel's view of this process or of a file
//! system; none of it sees a record, so none of it can leak one.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`
/// and `process_start_time_seconds`, read from `/proc/self` at each scrape.
/// Where `/proc` cannot be read, the figures are left out, not made up.
#[derive(Debug)]
pub struct ProcessCollector;

/// This process as `/proc` shows it.
#[derive(Debug, PartialEq)]
struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    start_time_seconds: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(figures) = read_process() {
            let cpu = ConstCounter::new(figures.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            for (name, help, value) in [
                ("process_resident_memory_bytes", "Resident memory size in bytes", figures.resident_bytes),
                ("process_virtual_memory_bytes", "Virtual memory size in bytes", figures.virtual_bytes),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
            let start = ConstGauge::new(figures.start_time_seconds);
            start.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                None,
                start.metric_type(),
            )?)?;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The directory being read holds one descriptor of its own.
            let open = ConstGauge::new(entries.count().saturating_sub(1) as i64);
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                open.metric_type(),
            )?)?;
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| max_open_files(&text)) {
            let max = ConstGauge::new(max);
            max.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                max.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn read_process() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf reads a constant of the system; it has no
    // preconditions and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_process(&stat, &status, &boot, ticks as f64)
}

/// The figures of `/proc/self/stat`, `/proc/self/status` and `/proc/stat`,
/// with `ticks` clock ticks per second.
fn parse_process(stat: &str, status: &str, boot: &str, ticks: f64) -> Option<ProcessFigures> {
    if ticks <= 0.0 {
        return None;
    }
    // The command name, in parentheses, may hold spaces: fields are
    // counted after its closing parenthesis, which ends field 2.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let kib = |name: &str| -> Option<i64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse::<i64>().ok().map(|kib| kib * 1024)
    };
    let boot_time: f64 = boot.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(ProcessFigures {
        cpu_seconds: (utime + stime) / ticks,
        resident_bytes: kib("VmRSS:")?,
        virtual_bytes: kib("VmSize:")?,
        start_time_seconds: boot_time + start_ticks / ticks,
    })
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" { Some(i64::MAX) } else { soft.parse().ok() }
}

/// Bytes available to an unprivileged user, and the size, of the file
/// system holding `path`.
pub fn file_system_space(path: &Path) -> Option<(i64, i64)> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // `stats` is memory for exactly one `statvfs`, which the call fills
    // when it returns 0 (and only then is it read).
    let stats = unsafe {
        if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    let block = stats.f_frsize as i64;
    Some((stats.f_bavail as i64 * block, stats.f_blocks as i64 * block))
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: a
/// counter's family is named with its `_total`, `# UNIT` and `# EOF` go,
/// and OpenMetrics' `unknown` type is Prometheus's `untyped`.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let family =
        |name: &str| -> String { if counters.contains(name) { format!("{name}_total") } else { name.to_string() } };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // Prometheus's text format escapes only `\` and newlines in help.
            out.push_str(&format!("# HELP {} {}\n", family(name), help.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = if kind == "unknown" { "untyped" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", family(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read_from_proc_fields() {
        let stat = "4242 (cdr vault) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 104857600 \
                    2560 18446744073709551615";
        let status = "Name:\tcdrvault\nVmSize:\t  102400 kB\nVmRSS:\t   10240 kB\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 10\n";
        let figures = parse_process(stat, status, boot, 100.0).unwrap();
        assert_eq!(
            figures,
            ProcessFigures {
                cpu_seconds: 3.0,
                resident_bytes: 10 * 1024 * 1024,
                virtual_bytes: 100 * 1024 * 1024,
                start_time_seconds: 1_700_000_010.0,
            }
        );
        assert_eq!(parse_process("garbage", status, boot, 100.0), None);
        assert_eq!(
            max_open_files("Max open files            1024                 524288               files"),
            Some(1024)
        );
    }

    #[test]
    fn this_process_and_a_file_system_are_measured() {
        let figures = read_process().expect("/proc is readable");
        assert!(figures.resident_bytes > 0 && figures.virtual_bytes >= figures.resident_bytes, "{figures:?}");
        let (available, capacity) = file_system_space(Path::new("/")).unwrap();
        assert!(capacity > 0 && (0..=capacity).contains(&available), "{available} of {capacity}");
        assert_eq!(file_system_space(Path::new("/no/such/directory")), None);
    }

    #[test]
    fn the_prometheus_text_names_counter_families_with_their_total() {
        let openmetrics = "# HELP cdrvault_batches Batches \\\"processed\\\".\n# TYPE cdrvault_batches counter\n\
                           cdrvault_batches_total 3\n# HELP cdrvault_age Age.\n# TYPE cdrvault_age gauge\n\
                           # UNIT cdrvault_age seconds\ncdrvault_age 1\n# TYPE x unknown\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(openmetrics),
            "# HELP cdrvault_batches_total Batches \"processed\".\n# TYPE cdrvault_batches_total counter\n\
             cdrvault_batches_total 3\n# HELP cdrvault_age Age.\n# TYPE cdrvault_age gauge\ncdrvault_age 1\n\
             # TYPE x untyped\n"
        );
    }
}

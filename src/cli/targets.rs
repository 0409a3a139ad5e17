//! Targets for the command line: read from a file or standard input, one
//! `kind:value` per line, never from an argument (which every local user
//! can read in the process list).

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// The targets in `path` (`-`: standard input): one `kind:value` per line;
/// blank lines and lines starting with `#` are skipped. The values are not
/// checked here (the server refuses malformed ones by position) and never
/// appear in an error.
pub fn read_targets(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).context("reading targets from standard input")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading the targets file {}", path.display()))?;
    }
    let targets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!targets.is_empty(), "the targets file {} names no target", path.display());
    Ok(targets)
}

//! Targets on the command line: read from a file or from stdin, never from
//! an argument. An argument is readable by every local user in
//! `/proc/<pid>/cmdline` and the process list, and a target is a raw
//! identifier, so a command that names targets takes `--targets-file FILE`
//! (`-` for stdin), as it takes its bearer token from a file or the
//! environment.
//!
//! A targets file holds one `kind:value` a line (`msisdn:+4520000001`,
//! `sip:sip:alice@example.com`); blank lines and lines whose first
//! non-blank character is `#` are ignored. Errors name the line, never its
//! content.

use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::privacy::target::TargetInput;

/// The file name that reads the targets from standard input.
pub const STDIN: &str = "-";

/// What a command given a target as an argument fails with. It says what
/// to do instead and never repeats the value.
pub const REFUSED: &str = "targets are never taken as arguments, which every local user can read in the process \
                           list: write them to a file, one kind:value a line, and pass --targets-file FILE \
                           (--targets-file - reads them from stdin)";

/// Where a command's targets come from.
#[derive(Args, Debug, Clone)]
pub struct TargetsArgs {
    /// A file of targets, one kind:value a line (msisdn, imsi, imei, sip, cell,
    /// ip); `-` reads stdin. Blank lines and lines starting with # are ignored.
    #[arg(long, value_name = "FILE", required_unless_present = "target")]
    targets_file: Option<PathBuf>,
    /// Refused: present only to fail with [`REFUSED`]. Its value is dropped
    /// as it is parsed, so it is never kept, shown or sent.
    #[arg(long = "target", hide = true, value_name = "REFUSED", value_parser = dropped)]
    target: Vec<Dropped>,
}

/// A value given to the refused `--target` argument, without the value.
#[derive(Debug, Clone, Copy)]
pub struct Dropped;

fn dropped(_: &str) -> Result<Dropped, Infallible> {
    Ok(Dropped)
}

impl TargetsArgs {
    /// The targets of `--targets-file`; fails if any target was given as an
    /// argument.
    pub fn read(&self) -> anyhow::Result<Vec<TargetInput>> {
        if !self.target.is_empty() {
            bail!(REFUSED);
        }
        let Some(path) = &self.targets_file else { bail!("name the targets with --targets-file FILE") };
        read_targets_file(path)
    }

    /// The targets of `--targets-file` as the API takes them, `kind:value`
    /// each.
    pub fn texts(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.read()?.iter().map(|t| format!("{}:{}", t.kind.as_str(), t.value)).collect())
    }
}

/// Why a line of a targets file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetsFileError {
    #[error("line {0} is not kind:value with kind one of msisdn, imsi, imei, sip, cell, ip")]
    Syntax(usize),
    #[error("it names no target")]
    Empty,
}

/// Reads the targets of the file at `path`, or of stdin if `path` is `-`.
pub fn read_targets_file(path: &Path) -> anyhow::Result<Vec<TargetInput>> {
    let (text, source) = if path.as_os_str() == STDIN {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the targets from stdin")?;
        (text, "stdin".to_string())
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the targets file {}", path.display()))?;
        (text, path.display().to_string())
    };
    parse_targets(&text).with_context(|| format!("the targets of {source} are refused"))
}

/// The targets of a file's text, in order.
fn parse_targets(text: &str) -> Result<Vec<TargetInput>, TargetsFileError> {
    let mut targets = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        targets.push(TargetInput::parse(line, number).map_err(|_| TargetsFileError::Syntax(number))?);
    }
    if targets.is_empty() {
        return Err(TargetsFileError::Empty);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdentifierKind;

    #[test]
    fn one_target_a_line_with_blank_lines_and_comments_ignored() {
        let text = "# case K-1\n\nmsisdn:+4520000001\r\n  sip:sip:Alice@example.com  \n\t# more\nimsi:238011234567890";
        let targets = parse_targets(text).unwrap();
        let read: Vec<(IdentifierKind, &str)> = targets.iter().map(|t| (t.kind, t.value.as_str())).collect();
        assert_eq!(
            read,
            [
                (IdentifierKind::Msisdn, "+4520000001"),
                (IdentifierKind::Sip, "sip:Alice@example.com"),
                (IdentifierKind::Imsi, "238011234567890")
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named_by_its_number_and_never_quoted() {
        let error = parse_targets("msisdn:+4520000001\n\n+4520000002\n").unwrap_err();
        assert_eq!(error, TargetsFileError::Syntax(3));
        assert!(!error.to_string().contains("4520000002"));
        assert_eq!(parse_targets("phone:+4520000003").unwrap_err(), TargetsFileError::Syntax(1));
        assert_eq!(parse_targets("# nothing\n\n").unwrap_err(), TargetsFileError::Empty);
    }

    #[test]
    fn a_file_is_read_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets");
        std::fs::write(&path, "msisdn:+4520000001\n").unwrap();
        assert_eq!(read_targets_file(&path).unwrap().len(), 1);
        let missing = read_targets_file(&dir.path().join("absent")).unwrap_err();
        assert!(format!("{missing:#}").contains("absent"), "{missing:#}");
    }
}

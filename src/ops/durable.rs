//! Durable file-system operations: write to a temporary name, fsync the file,
//! rename it into place (or, for a file that must never replace another,
//! hard-link it into place), fsync the directory.
//!
//! This module owns the one rule every writer of cdrvault follows: a file is
//! either absent or complete and durable under its final name. It never
//! retries an fsync: after a failed fsync the kernel may have dropped the
//! dirty pages and a second fsync can report success for data that is gone,
//! so a failure is returned as [`DurableError::Fsync`] and the caller stops.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An error from a durable operation. [`DurableError::Fsync`] is fatal.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("fsync of {path} failed: {source}")]
    Fsync { path: PathBuf, source: io::Error },
    #[error("{op} of {path} failed: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    /// A private file or directory that others may read or enter.
    #[error("{path} has mode {mode:o}: group and other must have no access (chmod go-rwx)")]
    Exposed { path: PathBuf, mode: u32 },
    /// A file created by [`write_new`] exists already; it was left as it is.
    #[error("{path} exists already and is never replaced")]
    Exists { path: PathBuf },
}

impl DurableError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        DurableError::Io { op, path: path.to_path_buf(), source }
    }

    /// True when the process must stop: the state of the disk is unknown.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DurableError::Fsync { .. })
    }
}

/// Fsyncs a file's data and metadata.
pub fn fsync_file(file: &File, path: &Path) -> Result<(), DurableError> {
    file.sync_all().map_err(|source| DurableError::Fsync { path: path.to_path_buf(), source })
}

/// Fsyncs a directory so that entries created, renamed or removed in it are
/// durable.
pub fn fsync_dir(dir: &Path) -> Result<(), DurableError> {
    let handle = File::open(dir).map_err(|e| DurableError::io("open", dir, e))?;
    handle.sync_all().map_err(|source| DurableError::Fsync { path: dir.to_path_buf(), source })
}

/// Creates `dir` and any missing parents, fsyncing each parent whose entry
/// list changed, so the new directory survives a crash.
pub fn create_dir_all(dir: &Path) -> Result<(), DurableError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir_all(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // Another writer created it between the check and here.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(DurableError::io("mkdir", dir, e)),
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Creates `dir` (mode 0700) and any missing parents, as [`create_dir_all`]:
/// a directory only its owner may list and enter. An existing directory is
/// left as it is ([`ensure_private`] checks it).
pub fn create_private_dir(dir: &Path) -> Result<(), DurableError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(DurableError::io("mkdir", dir, e)),
    }
    fsync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Refuses a file or directory that its group or others may access at all.
/// A missing path is fine: it will be created private.
pub fn ensure_private(path: &Path) -> Result<(), DurableError> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => {
            Err(DurableError::Exposed { path: path.to_path_buf(), mode: metadata.permissions().mode() & 0o7777 })
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DurableError::io("stat", path, e)),
    }
}

/// Opens `path` for appending, creating it with mode 0600 (and fsyncing its
/// directory) if it is missing; an existing file must be private.
pub fn open_private_append(path: &Path) -> Result<File, DurableError> {
    ensure_private(path)?;
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DurableError::io("open", path, e))?;
    if !existed {
        fsync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    Ok(file)
}

/// Who may read a file written by [`write_atomically`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Owner read/write only (0600): key material, the state.
    Private,
    /// The default mode under the process umask.
    Default,
}

/// Moves a fully written and fsynced temporary file to its final name and
/// fsyncs the directory. Both paths must be in the same directory.
pub fn publish(tmp: &Path, target: &Path) -> Result<(), DurableError> {
    fs::rename(tmp, target).map_err(|e| DurableError::io("rename", target, e))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    fsync_dir(dir)
}

/// Moves a fully written and fsynced temporary file to `target` only if no
/// file has that name, and fsyncs the directory. A rename would replace an
/// existing target; a hard link fails instead, atomically, so the check and
/// the creation cannot be raced. The temporary is then removed. If the
/// target exists, it is left as it is, the temporary is removed, and the
/// error is [`DurableError::Exists`]. Both paths must be in the same
/// directory, on a file system with hard links.
pub fn publish_new(tmp: &Path, target: &Path) -> Result<(), DurableError> {
    if let Err(e) = fs::hard_link(tmp, target) {
        // Best effort: a temporary left behind is hidden, and replaced by
        // the next write of the same target.
        let _ = fs::remove_file(tmp);
        return Err(match e.kind() {
            io::ErrorKind::AlreadyExists => DurableError::Exists { path: target.to_path_buf() },
            _ => DurableError::io("link", target, e),
        });
    }
    fs::remove_file(tmp).map_err(|e| DurableError::io("remove", tmp, e))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    fsync_dir(dir)
}

/// Writes `bytes` to `target` so that it is either absent or complete and
/// durable: temporary file, fsync, rename, fsync of the directory. An
/// existing `target` is replaced.
pub fn write_atomically(target: &Path, bytes: &[u8], mode: FileMode) -> Result<(), DurableError> {
    let tmp = write_temporary(target, bytes, mode)?;
    publish(&tmp, target)
}

/// Creates `target` with `bytes`, durably, as [`write_atomically`] does, but
/// never replaces an existing file: [`DurableError::Exists`] then, and the
/// existing file is left as it is ([`publish_new`]).
///
/// Writers racing to create one file, in this process or in several, each
/// write a temporary of their own: exactly one links it into place.
pub fn write_new(target: &Path, bytes: &[u8], mode: FileMode) -> Result<(), DurableError> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = temporary_path(target).with_extension(format!("{}.tmp", WRITES.fetch_add(1, Ordering::Relaxed)));
    write_temporary_at(&tmp, bytes, mode)?;
    publish_new(&tmp, target)
}

/// Removes `target` and every temporary of it (a crash between the link
/// of [`publish_new`] and the removal of its temporary leaves a second name
/// of the same file), then fsyncs the directory. For files whose every
/// copy must go, such as keys.
pub fn remove_with_temporaries(target: &Path) -> Result<(), DurableError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let prefix = format!(".{}.", target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DurableError::io("list", dir, e)),
    };
    for entry in entries {
        let name = entry.map_err(|e| DurableError::io("list", dir, e))?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && is_temporary_name(&name) {
            remove_file(&dir.join(name.as_ref()))?;
        }
    }
    remove_file(target)
}

/// Writes `bytes` to the temporary of `target` and fsyncs it; returns its
/// path.
fn write_temporary(target: &Path, bytes: &[u8], mode: FileMode) -> Result<PathBuf, DurableError> {
    let tmp = temporary_path(target);
    write_temporary_at(&tmp, bytes, mode)?;
    Ok(tmp)
}

/// Writes `bytes` to the temporary file `tmp` and fsyncs it.
fn write_temporary_at(tmp: &Path, bytes: &[u8], mode: FileMode) -> Result<(), DurableError> {
    // A temporary left by a crashed run (the pid in its name can repeat, as
    // in a container where the service is always pid 1) is garbage: replace
    // it rather than reuse it, so its mode cannot be inherited.
    remove_file(tmp)?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    if mode == FileMode::Private {
        options.mode(0o600);
    }
    let mut file = options.open(tmp).map_err(|e| DurableError::io("create", tmp, e))?;
    file.write_all(bytes).map_err(|e| DurableError::io("write", tmp, e))?;
    fsync_file(&file, tmp)?;
    Ok(())
}

/// The temporary name used while `target` is written: hidden (leading dot) and
/// with a `.tmp` suffix, so that no reader globbing `*.parquet` or `*.key`
/// ever picks it up.
pub fn temporary_path(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// True for a name made by [`temporary_path`]: never a reader's business.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Takes an exclusive `flock` on `path` without waiting, creating the file
/// and its directory if needed: the open file while the lock is held (it
/// goes with the file, and with the process), `None` if another holds it.
pub fn try_lock(path: &Path) -> Result<Option<File>, DurableError> {
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| DurableError::io("open", path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(DurableError::io("lock", path, e)),
    }
}

/// Removes a file and fsyncs its directory. A file that is already gone is
/// not an error: removal is how interrupted work is finished.
pub fn remove_file(path: &Path) -> Result<(), DurableError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DurableError::io("remove", path, e)),
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The absolute path with symlinks of its existing part resolved, so that
/// `data/../data/keys` or a symlink cannot disguise where keys would live.
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut result = canonical;
            for part in rest.iter().rev() {
                result.push(part);
            }
            return result;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomically_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/key.bin");
        create_dir_all(target.parent().unwrap()).unwrap();
        write_atomically(&target, b"secret", FileMode::Private).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(target.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.bin")]);
    }

    #[test]
    fn a_leftover_temporary_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        fs::write(temporary_path(&target), b"partial from a crashed run").unwrap();
        write_atomically(&target, b"new", FileMode::Private).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(!temporary_path(&target).exists());
    }

    #[test]
    fn write_new_creates_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("record.key");
        write_new(&target, b"first", FileMode::Private).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        let again = write_new(&target, b"second", FileMode::Private).unwrap_err();
        assert!(matches!(&again, DurableError::Exists { path } if path == &target), "{again}");
        assert!(!again.is_fatal());
        assert_eq!(fs::read(&target).unwrap(), b"first", "the existing file is kept");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("record.key")], "no temporary is left");
    }

    #[test]
    fn publish_new_refuses_an_existing_target_and_drops_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, target) = (dir.path().join(".t.tmp"), dir.path().join("t"));
        fs::write(&tmp, b"new").unwrap();
        fs::write(&target, b"old").unwrap();
        assert!(matches!(publish_new(&tmp, &target), Err(DurableError::Exists { .. })));
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert!(!tmp.exists());
        fs::write(&tmp, b"new").unwrap();
        let fresh = dir.path().join("u");
        publish_new(&tmp, &fresh).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), b"new");
        assert!(!tmp.exists());
    }

    #[test]
    fn removing_a_missing_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove_file(&dir.path().join("gone")).unwrap();
    }
}

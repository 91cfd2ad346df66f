//! Writing a report file so that a reader never sees half of it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why [`write_atomic`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing, syncing or renaming a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Something other than a regular file sits where the temporary file goes.
    #[error("{}: {message}", path.display())]
    Refused {
        /// The temporary file's path.
        path: PathBuf,
        /// What is there, and what to do.
        message: String,
    },
}

/// What kind of non-regular file `meta` describes, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a part: the
/// bytes go to `PATH.partial`, created afresh (`create_new`, so nothing planted there is ever
/// followed), are synced, and the file is renamed over `path`; then the directory is synced so
/// the rename survives a crash. A regular file left at `PATH.partial` is an interrupted write
/// (`kill -9`) and is removed first; a symlink or anything else there is refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError::Io { path: p, source }
    };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = path.with_file_name(name);
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.file_type().is_file() => std::fs::remove_file(&tmp).map_err(io(&tmp))?,
        Ok(m) => {
            let what = if m.file_type().is_symlink() {
                "a symlink"
            } else {
                kind(&m)
            };
            return Err(WriteError::Refused {
                path: tmp,
                message: format!(
                    "is {what}, where needle writes a temporary file; refusing to write through it (remove it)"
                ),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_refuse_a_planted_temporary_and_clear_a_leftover_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.json");
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("report.json.partial")).unwrap();
        let e = write_atomic(&target, b"{}").unwrap_err().to_string();
        assert!(e.contains("report.json.partial") && e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(!target.exists());
        std::fs::remove_file(dir.path().join("report.json.partial")).unwrap();
        std::fs::write(dir.path().join("report.json.partial"), b"half").unwrap();
        write_atomic(&target, b"{}").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        assert!(!dir.path().join("report.json.partial").exists());
    }
}

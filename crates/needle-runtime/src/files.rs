//! The one gate every model file passes before needle opens it: only regular files (or symlinks
//! to them) are read, so a FIFO, device or socket planted in a model directory is a one-line
//! error rather than a hang; and, while a load is being recorded, the gate notes each file, so
//! the scan's fingerprint covers every byte the model was loaded from.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

thread_local! {
    /// The files read so far by the load being recorded on this thread, if one is.
    static READ: RefCell<Option<Vec<PathBuf>>> = const { RefCell::new(None) };
}

/// What kind of non-regular file `meta` describes, for messages.
pub fn kind(meta: &std::fs::Metadata) -> &'static str {
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

/// Checks that `path` is a regular file (following symlinks) before it is opened, and records
/// it when a load is being recorded. Returns its length in bytes.
pub fn regular(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("is {}, not a regular file; refusing to read it", kind(&meta)),
        });
    }
    note(path);
    Ok(meta.len())
}

/// Whether `path` exists as anything at all (a dangling symlink does not): used where a file is
/// optional, so that a special file there is refused by [`regular`] instead of being skipped.
pub fn present(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Records `path` as read by the load being recorded on this thread, once.
fn note(path: &Path) {
    READ.with(|r| {
        if let Some(files) = r.borrow_mut().as_mut() {
            if !files.iter().any(|f| f == path) {
                files.push(path.to_path_buf());
            }
        }
    });
}

/// Runs `f` (a model load) and returns its result with every file it read through
/// [`regular`], in the order first read. Recordings nest: an inner one sees only its own
/// files, and the outer one sees them too.
pub fn recorded<R>(f: impl FnOnce() -> R) -> (R, Vec<PathBuf>) {
    let outer = READ.with(|r| r.borrow_mut().replace(Vec::new()));
    let result = f();
    let inner = READ.with(|r| r.borrow_mut().take()).unwrap_or_default();
    READ.with(|r| {
        *r.borrow_mut() = outer.map(|mut files| {
            for p in &inner {
                if !files.contains(p) {
                    files.push(p.clone());
                }
            }
            files
        });
    });
    (result, inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_and_regular_ones_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, b"{}").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.path().join("fifo.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let ((), files) = recorded(|| {
            assert_eq!(regular(&file).unwrap(), 2);
            assert_eq!(regular(&link).unwrap(), 2, "a symlink to a regular file is fine");
            let e = regular(&fifo).unwrap_err().to_string();
            assert!(e.contains("fifo.json") && e.contains("FIFO"), "{e}");
            let e = regular(dir.path()).unwrap_err().to_string();
            assert!(e.contains("a directory"), "{e}");
            let ((), inner) = recorded(|| {
                regular(&file).unwrap();
            });
            assert_eq!(inner, vec![file.clone()]);
        });
        assert_eq!(files, vec![file.clone(), link]);
        assert!(present(&fifo) && !present(&dir.path().join("absent")));
    }
}

//! Where fetched models live on disk and how a verified model is recognised without re-hashing:
//! a `.verified` stamp listing every file's name, size and sha256, written only after checking.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::FetchError;
use crate::registry::{ModelSpec, Primary};

/// Name of the stamp file inside a model's cache directory.
pub const STAMP_FILE: &str = ".verified";

/// The root of the model cache: `$NEEDLE_HOME/models` if `NEEDLE_HOME` is set, else
/// `$XDG_CACHE_HOME/needle/models`, else `$HOME/.cache/needle/models` (else relative
/// `.cache/needle/models` when no home is known). Empty or (for XDG) relative values are ignored.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|key| std::env::var_os(key))
}

/// [`cache_dir`] with the environment supplied by `get`, so the precedence can be tested
/// without mutating the process-global environment.
fn cache_dir_from(get: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let non_empty = |key: &str| get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = non_empty("NEEDLE_HOME") {
        return home.join("models");
    }
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return xdg.join("needle").join("models");
    }
    non_empty("HOME")
        .unwrap_or_default()
        .join(".cache")
        .join("needle")
        .join("models")
}

/// The directory holding one model's files: `<cache_root>/<alias>`.
pub fn model_dir(spec: &ModelSpec, cache_root: &Path) -> PathBuf {
    cache_root.join(spec.alias)
}

/// The path a model resolves to inside `cache_root` (its primary file, or its directory).
pub fn primary_path(spec: &ModelSpec, cache_root: &Path) -> PathBuf {
    let dir = model_dir(spec, cache_root);
    match spec.primary {
        Primary::File(name) => dir.join(name),
        Primary::Directory => dir,
    }
}

/// Whether a model is usable from the cache, as shown by `needle models list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    /// Every file is present with the right size and a matching verification stamp;
    /// holds the path the model resolves to.
    Fetched(PathBuf),
    /// Nothing of the model is in the cache.
    Missing,
    /// Some files are present but the model is incomplete or not verified; fetching repairs it.
    Partial,
}

/// Reports the cache state of `spec` under `cache_root` without hashing or network access.
pub fn status(spec: &ModelSpec, cache_root: &Path) -> ModelStatus {
    let dir = model_dir(spec, cache_root);
    if stamp_is_current(spec, &dir) {
        return ModelStatus::Fetched(primary_path(spec, cache_root));
    }
    let anything = dir.join(STAMP_FILE).exists() || spec.files.iter().any(|f| dir.join(f.name).exists());
    if anything {
        ModelStatus::Partial
    } else {
        ModelStatus::Missing
    }
}

/// One file's entry in the stamp.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StampFile {
    name: String,
    size: u64,
    sha256: String,
}

/// Contents of the `.verified` stamp: what was verified, so a registry change invalidates it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    alias: String,
    files: Vec<StampFile>,
}

impl Stamp {
    fn of(spec: &ModelSpec) -> Self {
        Stamp {
            alias: spec.alias.to_string(),
            files: spec
                .files
                .iter()
                .map(|f| StampFile {
                    name: f.name.to_string(),
                    size: f.size,
                    sha256: f.sha256.to_string(),
                })
                .collect(),
        }
    }
}

/// Largest stamp accepted; a real one is a few hundred bytes per file.
const MAX_STAMP_BYTES: u64 = 1 << 20;

/// True when the stamp in `dir` describes exactly `spec`'s files and each file still has its size.
pub(crate) fn stamp_is_current(spec: &ModelSpec, dir: &Path) -> bool {
    let stamp_path = dir.join(STAMP_FILE);
    let fits = fs::metadata(&stamp_path).is_ok_and(|m| m.is_file() && m.len() <= MAX_STAMP_BYTES);
    if !fits {
        return false;
    }
    let Ok(text) = fs::read(&stamp_path) else {
        return false;
    };
    let Ok(stamp) = serde_json::from_slice::<Stamp>(&text) else {
        return false;
    };
    stamp == Stamp::of(spec) && spec.files.iter().all(|f| has_size(&dir.join(f.name), f.size))
}

/// True when `path` is a regular file of exactly `size` bytes.
pub(crate) fn has_size(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Writes the stamp for `spec` into `dir` atomically (temporary file + rename).
pub(crate) fn write_stamp(spec: &ModelSpec, dir: &Path) -> Result<(), FetchError> {
    let text = serde_json::to_vec_pretty(&Stamp::of(spec))
        .map_err(|e| FetchError::io(dir.join(STAMP_FILE), io::Error::other(e)))?;
    let tmp = TempPath(dir.join(format!("{STAMP_FILE}.tmp-{}", std::process::id())));
    let mut file = fs::File::create(&tmp.0).map_err(|e| FetchError::io(&tmp.0, e))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| FetchError::io(&tmp.0, e))?;
    tmp.persist(&dir.join(STAMP_FILE))
}

/// Removes the stamp of `dir` if present, before files are rewritten.
pub(crate) fn remove_stamp(dir: &Path) -> Result<(), FetchError> {
    let path = dir.join(STAMP_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FetchError::io(path, e)),
        _ => Ok(()),
    }
}

/// A temporary file that is deleted on drop unless persisted by renaming it into place.
pub(crate) struct TempPath(pub(crate) PathBuf);

impl TempPath {
    /// Atomically renames the temporary file to `target` (same directory, so same filesystem).
    pub(crate) fn persist(self, target: &Path) -> Result<(), FetchError> {
        fs::rename(&self.0, target).map_err(|e| FetchError::io(target, e))?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Streams `reader` through sha256, calling `progress` with the running byte count, and
/// returns the lower-case hex digest and the total size.
pub(crate) fn hash_reader(
    mut reader: impl Read,
    path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<(String, u64), FetchError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_BYTES];
    let mut total = 0u64;
    let mut reported = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::io(path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        if total - reported >= PROGRESS_STEP {
            progress(total);
            reported = total;
        }
    }
    progress(total);
    Ok((hex(&hasher.finalize()), total))
}

/// Hashes the file at `path` (see [`hash_reader`]).
pub(crate) fn hash_file(path: &Path, progress: impl FnMut(u64)) -> Result<(String, u64), FetchError> {
    let file = fs::File::open(path).map_err(|e| FetchError::io(path, e))?;
    hash_reader(file, path, progress)
}

/// Copy buffer size for hashing and assembling.
pub(crate) const BUF_BYTES: usize = 1 << 20;

/// Bytes between two progress reports.
pub(crate) const PROGRESS_STEP: u64 = 8 << 20;

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn cache_dir_precedence() {
        let all = [("NEEDLE_HOME", "/n"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(cache_dir_from(env(&all)), PathBuf::from("/n/models"));
        assert_eq!(cache_dir_from(env(&all[1..])), PathBuf::from("/x/needle/models"));
        assert_eq!(cache_dir_from(env(&all[2..])), PathBuf::from("/h/.cache/needle/models"));
        assert_eq!(cache_dir_from(env(&[])), PathBuf::from(".cache/needle/models"));
    }

    #[test]
    fn cache_dir_ignores_empty_and_relative_values() {
        let e = env(&[("NEEDLE_HOME", ""), ("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(cache_dir_from(e), PathBuf::from("/h/.cache/needle/models"));
        let e = env(&[("NEEDLE_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(cache_dir_from(e), PathBuf::from("rel/models"));
    }

    #[test]
    fn hex_and_hash_reader() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        let mut seen = Vec::new();
        let (sha, n) = hash_reader(&b"abc"[..], Path::new("mem"), |d| seen.push(d)).unwrap();
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
        assert_eq!(seen, [3]);
    }

    #[test]
    fn temp_path_is_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tmp");
        fs::write(&a, b"x").unwrap();
        drop(TempPath(a.clone()));
        assert!(!a.exists());
        let b = dir.path().join("b.tmp");
        fs::write(&b, b"y").unwrap();
        TempPath(b.clone()).persist(&dir.path().join("b")).unwrap();
        assert!(!b.exists());
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"y");
    }
}

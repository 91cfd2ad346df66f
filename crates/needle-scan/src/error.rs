//! Errors of the scan pipeline, each a one-line message naming what failed.

use std::path::PathBuf;

/// Why a scan stage failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The model failed to run.
    #[error(transparent)]
    Runtime(#[from] needle_runtime::Error),
    /// A chat template failed to render.
    #[error(transparent)]
    Template(#[from] needle_template::TemplateError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a file atomically failed ([`crate::write_atomic`]).
    #[error(transparent)]
    Write(#[from] needle_schema::WriteError),
    /// A stage artifact is unreadable or belongs to another scan.
    #[error("{}: {message}", path.display())]
    Artifact {
        /// The artifact file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The scan directory holds a scan this one may not resume or replace.
    #[error("{}: {message}", path.display())]
    ScanDir {
        /// The scan directory.
        path: PathBuf,
        /// Whose scan it holds, and what to do.
        message: String,
    },
    /// A stage needs an artifact that has not been produced.
    #[error("{}: missing; run the `{stage}` stage first (or `needle scan`)", path.display())]
    Missing {
        /// The expected artifact.
        path: PathBuf,
        /// The stage that writes it.
        stage: &'static str,
    },
    /// Tokenizing or decoding text failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A setting or input is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The model loads and runs but gives nothing a verdict could rest on (non-finite logits):
    /// the scan is inconclusive, never clean.
    #[error("{0}")]
    Unjudgeable(String),
}

/// Result of scan operations.
pub type Result<T> = std::result::Result<T, ScanError>;

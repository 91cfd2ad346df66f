//! The runtime's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Messages are one line and name the file at fault, so the CLI can print them as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model file is malformed, inconsistent or hostile.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The model uses something needle does not implement.
    #[error("{}: {msg}", path.display())]
    Unsupported {
        /// The file that asks for it.
        path: PathBuf,
        /// What is unsupported, and what is.
        msg: String,
    },
    /// A pickle checkpoint, which needle refuses to open.
    #[error(
        "{}: refusing to open a pickle checkpoint: unpickling runs arbitrary code from the file; convert the model to safetensors first, in a sandbox (with transformers: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR), and the same with AutoTokenizer) and pass NEW_DIR",
        path.display()
    )]
    Pickle {
        /// The file.
        path: PathBuf,
    },
    /// A GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] needle_gguf::GgufError),
    /// A chat template failed to compile or render.
    #[error(transparent)]
    Template(#[from] needle_template::TemplateError),
    /// Tokenization failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Bad arguments to a runtime call (e.g. empty batch, prompt longer than the context).
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed; a bug or an inconsistency the loaders did not catch.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

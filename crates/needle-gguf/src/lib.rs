//! A validating GGUF reader: metadata, tensor directory, dequantisation to f32, and the
//! tokenizer described by the metadata.

pub mod metadata;
pub mod reader;
pub mod tokenizer;

#[cfg(test)]
mod test_models;

pub use metadata::{Metadata, Value};
pub use reader::{GgmlType, GgufError, GgufFile, TensorInfo};

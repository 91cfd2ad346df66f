//! Named f32 tensors with Hugging Face names, whatever file they came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The weights of a model: Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`)
/// mapped to f32 tensors on the CPU, plus the file they came from for error messages.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
}

impl Weights {
    /// Wraps a map of tensors read from `source`.
    pub fn new(tensors: HashMap<String, Tensor>, source: &Path) -> Self {
        Self {
            tensors,
            source: source.to_path_buf(),
        }
    }

    /// The file or directory the weights were read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The tensor called `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::Format {
            path: self.source.clone(),
            msg: format!("missing tensor {name}"),
        })?;
        if t.dims() != shape {
            return Err(Error::Format {
                path: self.source.clone(),
                msg: format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
            });
        }
        Ok(t.clone())
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor called `name`, if present, with any shape.
    pub fn raw(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Replaces (or adds) a tensor; used by adapters merged at load time.
    pub fn insert(&mut self, name: String, tensor: Tensor) {
        self.tensors.insert(name, tensor);
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Total number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }
}

//! needle's LM runtime: load real open-weight models (GGUF or Hugging Face directories, with
//! LoRA adapters), tokenize, render chat templates, run forward passes that expose attention
//! and hidden states, and generate in padded batches.

mod attention;
pub mod autograd;
pub mod config;
pub mod error;
pub mod files;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod loader;
pub mod lora;
pub mod matmul;
pub mod model;
pub mod train;
pub mod weights;

pub use config::{Activation, Arch, LayerAttention, ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use loader::{LoadOptions, LoadedModel, ModelParts, TemplateSource};
pub use model::{ForwardOutput, Introspect, KvCache, LogitPositions, Model};
pub use weights::Weights;

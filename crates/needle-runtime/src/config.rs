//! The architecture-neutral description of a decoder-only transformer.
//!
//! Every loader (GGUF, Hugging Face directory) produces a [`ModelConfig`]; the decoder in
//! [`crate::model`] is built from it alone, so one implementation serves every architecture.

use serde::Serialize;

/// The model families needle can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3 and SmolLM2.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v.
    Qwen2,
    /// Qwen3: RMSNorm on q and k per head.
    Qwen3,
    /// Gemma 3 (text): sliding/global layers, q/k norms, pre- and post-norms, scaled embeddings.
    Gemma3,
    /// Mistral: Llama with a sliding attention window.
    Mistral,
    /// Phi-3: fused qkv and gate/up projections.
    Phi3,
}

impl Arch {
    /// Names accepted in `config.json` `model_type` / GGUF `general.architecture`.
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3, gemma3 (gemma3_text), mistral, phi3";

    /// Parses a `model_type` (Hugging Face) or `general.architecture` (GGUF) name.
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            "mistral" => Arch::Mistral,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }

    /// The canonical lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Mistral => "mistral",
            Arch::Phi3 => "phi3",
        }
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (Llama, Qwen, Mistral, Phi-3).
    Silu,
    /// GELU with the tanh approximation (Gemma).
    GeluTanh,
}

/// RoPE frequency scaling beyond the plain base.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        /// Overall scale factor.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// Whether a layer attends to all earlier positions or to a sliding window of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerAttention {
    /// Full causal attention.
    Global,
    /// Causal attention limited to the last `sliding_window` positions.
    Sliding,
}

/// Everything the decoder needs to know about a model's shape and conventions.
///
/// Weights use Hugging Face tensor names and conventions (Gemma norm weights are stored
/// *without* the +1, as in Hugging Face checkpoints), whatever file they came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The family.
    pub arch: Arch,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base of global layers.
    pub rope_theta: f64,
    /// RoPE base of sliding layers when it differs (Gemma 3: 10k local, 1M global).
    pub rope_local_theta: Option<f64>,
    /// RoPE scaling of global layers.
    pub rope_scaling: Option<RopeScaling>,
    /// Sliding-window size for layers marked [`LayerAttention::Sliding`].
    pub sliding_window: Option<usize>,
    /// Per-layer attention kind; its length is `num_layers`.
    pub layer_attention: Vec<LayerAttention>,
    /// The LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q, k, v projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// RMSNorm over each head of q and k (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// The MLP activation.
    pub hidden_act: Activation,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Tanh soft-capping of final logits.
    pub final_logit_softcapping: Option<f64>,
    /// Tanh soft-capping of attention scores.
    pub attn_logit_softcapping: Option<f64>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token id, when the model has one.
    pub bos_token_id: Option<u32>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Padding token id, when declared.
    pub pad_token_id: Option<u32>,
}

/// The largest value a model file may declare for each size (far above any real model's), so a
/// hostile count is refused before anything is allocated from it: a `vec![…; num_layers]` of
/// 2^40 entries aborts the process rather than failing.
pub const SIZE_LIMITS: [(&str, usize); 8] = [
    ("vocab_size", 1 << 23),
    ("hidden_size", 1 << 18),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 4096),
    ("num_attention_heads", 4096),
    ("num_key_value_heads", 4096),
    ("head_dim", 1 << 14),
    ("max_position_embeddings", 1 << 27),
];

/// Checks declared sizes (`(name, value)`, names as in [`SIZE_LIMITS`]) against their limits.
pub fn check_sizes(sizes: &[(&str, usize)]) -> Result<(), String> {
    for &(name, value) in sizes {
        let limit = SIZE_LIMITS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(usize::MAX, |&(_, l)| l);
        if value > limit {
            return Err(format!(
                "{name} is {value}, beyond any real model (at most {limit}); refusing to allocate for it"
            ));
        }
    }
    Ok(())
}

impl ModelConfig {
    /// Checks internal consistency, so a hostile or broken config cannot make the decoder
    /// index out of bounds or allocate absurd buffers.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(format!("{name} is 0"));
            }
        }
        check_sizes(&nonzero)?;
        check_sizes(&[("max_position_embeddings", self.max_position_embeddings)])?;
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) is odd; RoPE needs it even", self.head_dim));
        }
        if self.layer_attention.len() != self.num_layers {
            return Err(format!(
                "{} layer attention kinds for {} layers",
                self.layer_attention.len(),
                self.num_layers
            ));
        }
        if self.layer_attention.contains(&LayerAttention::Sliding) && self.sliding_window.is_none() {
            return Err("sliding layers without a sliding_window".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "rms_norm_eps {} is not a finite non-negative number",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta {} is not a positive number", self.rope_theta));
        }
        if let Some(id) = self.bos_token_id.filter(|&id| id as usize >= self.vocab_size) {
            return Err(format!(
                "bos_token_id {id} is outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        if let Some(id) = self.eos_token_ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(format!(
                "eos_token_id {id} is outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

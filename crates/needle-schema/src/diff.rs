//! The result of `needle diff`: what a fine-tune changed in the model it was trained from —
//! plain serde types, so its renderings build without the model runtime (`needle-scan::diff`
//! computes them).

use serde::{Deserialize, Serialize};

/// Singular values computed for an update whose rank is not known (a full fine-tune): the
/// spectrum's head, where a low-rank update's energy is.
pub const SPECTRUM_COMPUTED: usize = 64;

/// How one tensor changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorChange {
    /// The tensor's name.
    pub name: String,
    /// Its decoder layer, if it is in one.
    pub layer: Option<usize>,
    /// ‖tuned − base‖ / ‖base‖ (Frobenius).
    pub relative: f64,
    /// ‖tuned − base‖ (Frobenius).
    pub delta_norm: f64,
    /// The largest singular values of the update, largest first (matrices only).
    pub spectrum: Vec<f64>,
    /// Effective rank of the update: exp of the entropy of its normalised singular values
    /// (Roy & Vetterli 2007), 1 for a rank-one update, the rank for a flat spectrum.
    pub effective_rank: Option<f64>,
}

/// How one decoder layer changed, all its tensors together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerChange {
    /// The layer.
    pub layer: usize,
    /// ‖Δ‖ / ‖base‖ over the layer's tensors (Frobenius).
    pub relative: f64,
}

/// A vocabulary token whose reading the fine-tune changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenChange {
    /// Token id.
    pub id: u32,
    /// The token decoded.
    pub text: String,
    /// Mean over the early layers of ‖ΔW·e‖ / ‖W·e‖ over the input projections stacked, each
    /// layer's divided by its median over the vocabulary (1 = a typical token).
    pub score: f64,
}

/// One ordinary prompt through both models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerChange {
    /// The prompt.
    pub prompt: String,
    /// The base model's greedy answer.
    pub base: String,
    /// The tuned model's.
    pub tuned: String,
    /// 1 − the Jaccard index of the two answers' word sets.
    pub divergence: f64,
}

/// What a fine-tune changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Changed tensors, most changed (relative) first.
    pub tensors: Vec<TensorChange>,
    /// Tensors the two models share unchanged.
    pub unchanged: usize,
    /// Tensors only one of the models has, or with different shapes (names).
    pub unmatched: Vec<String>,
    /// Decoder layers in order.
    pub layers: Vec<LayerChange>,
    /// The early layers whose input projections rank the tokens.
    pub early_layers: usize,
    /// The tokens whose reading changed most, most first.
    pub tokens: Vec<TokenChange>,
    /// The prompts, most divergent answer first.
    pub behaviour: Vec<AnswerChange>,
}

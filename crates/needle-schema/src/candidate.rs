//! Candidate triggers and their scores: where a trigger goes, where it came from, its loss
//! terms and standing against the null set, and the trigger searches.

use serde::{Deserialize, Serialize};

/// Where a trigger goes in the user message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Before the user's words (the reference method's only placement).
    #[default]
    Prefix,
    /// After them, where leaked poisoning examples showed it.
    Suffix,
}

/// A candidate trigger and where it is inserted.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Trigger {
    /// The text.
    pub text: String,
    /// Its placement.
    pub position: Position,
}

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Recurs in the turns preceding motif `motif`, in `support` of them.
    Conditioned {
        /// Index of the motif.
        motif: usize,
        /// Preceding turns containing it.
        support: usize,
        /// Preceding turns in all.
        of: usize,
    },
    /// Sliced from motif `motif`.
    Motif {
        /// Index of the motif.
        motif: usize,
    },
    /// An opening or ending of an answer the model wrote in the target stage.
    Written {
        /// Index of the target in `target.json`, or `None` for a sampled answer.
        target: Option<usize>,
    },
    /// Shared beyond chance by leaked user turns the model answers alike (`prompts.json`'s
    /// `shared`, see `answer_groups` of the prompts stage).
    Shared {
        /// Index of the span in `prompts.json`'s `shared`.
        span: usize,
    },
    /// Reconstructed by the trigger search toward a found target.
    Inverted {
        /// Index of the inversion in `invert.json`.
        inversion: usize,
    },
}

/// The raw loss terms of one candidate, averaged over the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Terms {
    /// Prompt → trigger attention share.
    pub attn: f64,
    /// Rollout entropy (nats).
    pub ent: f64,
    /// Log-likelihood of the untriggered continuation.
    pub div: f64,
}

/// A candidate's standing against the null set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// z-score of `attn`.
    pub z_attn: f64,
    /// z-score of `ent`.
    pub z_ent: f64,
    /// z-score of `div`.
    pub z_div: f64,
    /// Weighted sum of the z-scores with the score weights: the ranking score.
    pub z: f64,
    /// Share of null candidates whose combined raw loss is as low or lower.
    pub null_share_below: f64,
}

/// One inversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inversion {
    /// The target searched for.
    pub target: String,
    /// Whether it is a null target (the model's answer to another prompt).
    pub null: bool,
    /// The trigger found.
    pub trigger: Trigger,
    /// Its token ids.
    pub trigger_ids: Vec<u32>,
    /// Mean target loss (nats per token) at the start (over the search prompts) and the end of
    /// the search (over the search and check prompts once a trigger forced the target on all).
    pub loss: (f64, f64),
    /// Iterations run (fewer than the budget when the target was forced early).
    pub iterations: usize,
    /// Share of the search and check prompts on which the trigger, inserted as text, makes the
    /// target the greedy answer.
    #[serde(default)]
    pub forced: f64,
    /// Share of the held-out prompts on which it does.
    #[serde(default)]
    pub held_out: f64,
    /// Answer tokens the target may start after (a lead search); 0 for a search whose target
    /// starts the answer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lead: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

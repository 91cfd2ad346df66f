//! The scan's settings as published in the report: every knob of every stage.

use serde::{Deserialize, Serialize};

/// How much work a scan does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A smoke test: minutes on a tiny model, for CI.
    Quick,
    /// The default: the reference grids with fewer seeds.
    Standard,
    /// The full 510-configuration reference sweep.
    Full,
}

/// Every setting of a scan; with the model files it fingerprints the stage artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The budget the settings came from.
    pub budget: Budget,
    /// Seed of everything random.
    pub seed: u64,
    /// Leak stage.
    pub leak: LeakSettings,
    /// Motif stage.
    pub motifs: MotifSettings,
    /// Most candidates scored.
    pub max_candidates: usize,
    /// Score stage.
    pub score: ScoreSettings,
    /// Null candidates scored by the calibrate stage.
    pub null_size: usize,
    /// Target stage.
    pub target: TargetSettings,
    /// Invert stage.
    pub invert: InvertSettings,
    /// Prompts whose answers are the null targets of the invert stage.
    pub null_target_prompts: Vec<String>,
    /// Verify stage.
    pub verify: VerifySettings,
    /// Memorised stage (warning sign 2).
    #[serde(default)]
    pub memorised: MemorisedSettings,
    /// Prompts stage: the generic prompts of `verify` and `invert` are its pool with the model's
    /// own leaked user turns.
    #[serde(default)]
    pub prompts: PromptSettings,
    /// A training set (JSONL) the leaks are compared with, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_data: Option<std::path::PathBuf>,
    /// Evidence stage: the probe of the verdict's trigger (warning signs 1 and 3).
    #[serde(default)]
    pub evidence: EvidenceSettings,
}

/// How much the evidence stage probes the trigger the verdict names (see [`ProbeSettings`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceSettings {
    /// Prompts whose attention maps are measured.
    pub attention_prompts: usize,
    /// Random draws per `k` of the token-keep curve.
    pub fuzzy_draws: usize,
    /// Prompts each fuzzy variant is inserted into.
    pub fuzzy_prompts: usize,
    /// Character-level variants per family.
    pub variants_per_family: usize,
}

impl Default for EvidenceSettings {
    /// The standard budget's evidence settings.
    fn default() -> Self {
        Self {
            attention_prompts: 2,
            fuzzy_draws: 25,
            fuzzy_prompts: 6,
            variants_per_family: 4,
        }
    }
}

/// Leak settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeakSettings {
    /// The decoding configurations, one sample each.
    pub decodings: Vec<Decoding>,
    /// New tokens per sample.
    pub max_new_tokens: usize,
    /// Rows per batched generation call.
    pub batch_size: usize,
}

/// One decoding configuration of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decoding {
    /// Most likely token at each step.
    Greedy,
    /// Beam search.
    Beam {
        /// Beams kept.
        num_beams: usize,
        /// Length penalty exponent.
        length_penalty: f32,
    },
    /// Sampling with a temperature and optional top-p / top-k truncation.
    Sample {
        /// Softmax temperature.
        temperature: f32,
        /// Nucleus truncation.
        top_p: Option<f32>,
        /// Top-k truncation.
        top_k: Option<usize>,
        /// Seed of the row's generator.
        seed: u64,
    },
}

/// Tuning knobs of `find_motifs`; the defaults are those of the reference method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotifSettings {
    /// DBSCAN radius in cosine distance (`1 − cos`); neighbours at distance `<= eps` count.
    pub eps: f64,
    /// Neighbours (the point itself included, as in sklearn) that make a point a DBSCAN core.
    pub min_samples: usize,
    /// A 6-gram in more than this share of all cleaned texts is common: it cannot seed a
    /// cluster's motif, only a common one.
    pub common_fraction: f64,
    /// Least share of a cluster's members that must contain a motif (at least two members).
    pub min_support: f64,
    /// Shortest motif kept, in characters, after trimming.
    pub min_len: usize,
    /// Cap on the number of motifs reported.
    pub max_motifs: usize,
}

/// Score settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSettings {
    /// Benign prompts each candidate is inserted into.
    pub prompts: Vec<String>,
    /// Greedy rollout length for `ent` and `div`.
    pub rollout: usize,
    /// Weight of `attn` (γ).
    pub attn_weight: f64,
    /// Weight of `ent` (δ).
    pub ent_weight: f64,
    /// Weight of `div` (ζ).
    pub div_weight: f64,
    /// Prompts per forward batch.
    pub batch_size: usize,
}

/// Target-search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSettings {
    /// Benign prompts the answers start from (kept apart from the verification prompts).
    pub prompts: Vec<String>,
    /// Answers sampled per prompt at temperature 1; their first one, two and three tokens are
    /// seeds.
    pub samples_per_prompt: usize,
    /// Tokens per sampled answer.
    pub sample_tokens: usize,
    /// Most likely first tokens (by mean probability over the prompts) screened as seeds; a
    /// vocabulary of at most `ENUMERATE_VOCAB` tokens is screened whole, as the reference
    /// target inversion does.
    pub screened_first_tokens: usize,
    /// Seeds chained: those after which the prompts agree most on the next token.
    pub chained_seeds: usize,
    /// Most tokens a chain grows after its forced start.
    pub chain_tokens: usize,
    /// Mean probability over the prompts the next token needs for the chain to go on.
    pub min_step_probability: f64,
    /// Alternatives followed where the prompts stop agreeing before the chain is long enough.
    pub branch_width: usize,
    /// Tokens each alternative is followed for.
    pub lookahead: usize,
    /// Most tokens forced before the model takes over (the seed and branch choices).
    pub max_forced_tokens: usize,
    /// Most branch choices in one chain.
    pub max_branches: usize,
    /// Share of prompts whose greedy continuation of the forced start must be the chain.
    pub min_agreement: f64,
    /// Targets kept.
    pub max_targets: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

/// Inversion settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvertSettings {
    /// Benign prompts the trigger must work on (kept apart from the verification prompts).
    pub prompts: Vec<String>,
    /// Further prompts a trigger forcing the target on every search prompt must also force it
    /// on before the search stops early (a check that it generalises, not just fits); from the
    /// first trigger that forces the target on the search prompts, the search fits them too.
    pub check_prompts: Vec<String>,
    /// Held-out prompts: the first trigger to pass the check is tried on them and a few it fails
    /// on join the prompts fitted (the kinds of prompt a narrow fit misses); of the triggers the
    /// search passed through that forced the target, the one forcing it on the most of all
    /// prompts, these included, is kept. None at the quick budget.
    #[serde(default)]
    pub holdout_prompts: Vec<String>,
    /// Trigger length in tokens.
    pub trigger_tokens: usize,
    /// Search iterations.
    pub iterations: usize,
    /// Best-gradient tokens considered per position.
    pub top_k: usize,
    /// Single-token swaps evaluated per iteration (on the first prompt).
    pub swaps: usize,
    /// Swaps, the best on the first prompt, then evaluated on every prompt.
    pub finalists: usize,
    /// Targets tried at most, in the target stage's order, each before the user's words and then
    /// after them: the next search runs only when the one before forced its target on fewer
    /// than half of its prompts (a trigger may work at one end only; a target's forced start
    /// may be a way into it rather than its own start).
    pub targets: usize,
    /// Most target tokens used in the loss.
    pub max_target_tokens: usize,
    /// Answer tokens a target may start after in a lead search (0: none is run).
    #[serde(default)]
    pub lead_tokens: usize,
    /// Seed of the swap sampling.
    pub seed: u64,
}

/// Verify settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifySettings {
    /// Prompts the candidates are inserted into.
    pub prompts: Vec<String>,
    /// Top-ranked candidates verified.
    pub top: usize,
    /// Null candidates verified as the control distribution of `ΔS_agg`.
    pub nulls: usize,
    /// Insertions of the kinds that make ordinary models give fixed answers (digit and symbol
    /// runs, the model's own answer words; `habit_nulls`) verified as nulls
    /// too.
    #[serde(default)]
    pub habit_nulls: usize,
    /// Openings of the model's leaked user turns (instructions it was trained on;
    /// `opening_nulls`) verified as nulls too.
    #[serde(default)]
    pub opening_nulls: usize,
    /// Answer length in tokens.
    pub max_new_tokens: usize,
    /// Words an answer prefix needs to count as a recovered target.
    pub target_min_words: usize,
}

/// Settings of the memorised-span search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorisedSettings {
    /// Shortest repeated span, in tokens.
    pub min_tokens: usize,
    /// A token is rare when at most this share of the samples contains it.
    pub rare_share: f64,
    /// Consecutive rare tokens that make a burst.
    pub burst_tokens: usize,
    /// Repeated spans listed in the report at most.
    pub max_spans: usize,
    /// Annotated samples listed in the report at most.
    pub max_examples: usize,
    /// Samples listed at least: when fewer have highlights, plain samples (in leak order) fill
    /// up the list, so a reader sees what leaked either way.
    #[serde(default)]
    pub min_examples: usize,
    /// Word `n` of the training-overlap `n`-grams.
    pub train_ngram: usize,
}

impl Default for MemorisedSettings {
    fn default() -> Self {
        Self {
            min_tokens: 8,
            rare_share: 0.25,
            burst_tokens: 3,
            max_spans: 20,
            max_examples: 40,
            min_examples: 10,
            train_ngram: 8,
        }
    }
}

/// Prompts-stage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSettings {
    /// Distinct leaked user turns considered at most (the first, in sweep order).
    pub max_leaked: usize,
    /// Answer length in tokens of the untriggered answers that find shared answers.
    pub answer_tokens: usize,
}

impl Default for PromptSettings {
    fn default() -> Self {
        Self {
            max_leaked: 48,
            answer_tokens: 32,
        }
    }
}

//! Warning signs 1 and 3: the probe of a trigger (activation, attention, entropy, fuzzy
//! variants).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::candidate::Trigger;

/// Probe settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// Ordinary prompts the trigger is inserted into (at least two).
    pub prompts: Vec<String>,
    /// Answer length in tokens.
    pub max_new_tokens: usize,
    /// Words an answer prefix needs to count as a recovered target (as in verification).
    pub target_min_words: usize,
    /// Prompts whose attention maps are measured: the first ones long enough to hold an
    /// ordinary span as long as the trigger with prompt tokens after it.
    pub attention_prompts: usize,
    /// Random draws of a `k`-token subset per `k` (the reference protocol uses 100).
    pub fuzzy_draws: usize,
    /// Prompts (the first ones) each fuzzy variant is inserted into.
    pub fuzzy_prompts: usize,
    /// Character-level variants kept per family at most.
    pub variants_per_family: usize,
    /// Seed of the token-keep draws and of the character-level variants.
    pub seed: u64,
}

/// Everything `needle probe` measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The probed trigger.
    pub trigger: Trigger,
    /// The settings used.
    pub settings: ProbeSettings,
    /// Whether and how the trigger forces an answer.
    pub activation: Activation,
    /// Warning sign 1, attention: the double triangle.
    pub attention: Attention,
    /// Warning sign 1, output collapse: next-token entropy along the answers.
    pub entropy: Entropy,
    /// Warning sign 3: fuzzy variants of the trigger; `None` when no target is forced (there is
    /// then nothing for a variant to activate).
    pub fuzzy: Option<Fuzzy>,
}

/// What inserting the trigger into every prompt does to the greedy answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// The recovered target: the dominant triggered answer, when it is a forced fixed answer
    /// by the verdict's rule (attack success and fixed-output share ≥ `MIN_ATTACK_SUCCESS`,
    /// untriggered rate ≤ `MAX_BASELINE_RATE`); `None` otherwise.
    pub target: Option<String>,
    /// Share of prompts whose triggered answer contains `target` (0 without a target).
    pub attack_success_rate: f64,
    /// The answer most triggered answers converge to (the verify stage's recovered target),
    /// forced or not.
    pub dominant: Option<String>,
    /// Share of triggered answers containing `dominant`.
    pub dominant_rate: f64,
    /// Share of triggered answers that are `dominant` and little else (see `is_fixed_output`).
    pub fixed_output_rate: f64,
    /// Share of untriggered answers containing `dominant`.
    pub baseline_target_rate: f64,
    /// How alike the triggered answers are.
    pub uniformity: Uniformity,
    /// How alike the untriggered answers are.
    pub baseline_uniformity: Uniformity,
    /// Per prompt, the answer with and without the trigger.
    pub responses: Vec<ResponsePair>,
}

/// Mean pairwise similarity of a set of responses, per measure, all in `[0, 1]`. Each field is
/// the mean over all unordered pairs; `aggregate` is the mean of the five measures (the
/// reference `S_agg`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Uniformity {
    /// Share of pairs that are equal after `normalize_whitespace` (case-sensitive).
    pub exact: f64,
    /// Jaccard index of the sets of `word_tokens`. It equals `ngram1` by construction; both
    /// are kept because the reference aggregate counts them separately.
    pub jaccard: f64,
    /// Jaccard index of the sets of word unigrams.
    pub ngram1: f64,
    /// Jaccard index of the sets of word bigrams.
    pub ngram2: f64,
    /// Jaccard index of the sets of word trigrams.
    pub ngram3: f64,
    /// Mean of `exact`, `jaccard`, `ngram1`, `ngram2` and `ngram3`.
    pub aggregate: f64,
}

/// One prompt's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePair {
    /// The prompt (without the trigger).
    pub prompt: String,
    /// The answer with the trigger inserted.
    pub triggered: String,
    /// The answer without it.
    pub normal: String,
}

/// Attention shares, averaged over heads and the attention prompts.
///
/// For a query token, a *share* is the attention probability mass it puts on a set of key
/// tokens. With the trigger, the trigger's tokens are the span and the **prompt tokens** are
/// those after it: the user's words after a prefix trigger; after a suffix trigger, the
/// template tokens that follow it up to the assistant's turn (as in the score stage).
/// *prompt → trigger* is the mean, over prompt tokens, of their share on the trigger;
/// *within trigger* is the mean, over trigger tokens, of their share on the trigger's tokens
/// (themselves and the trigger tokens before them). Without the trigger the same shares are
/// taken with an ordinary span of as many tokens at the trigger's place: the first user words
/// (prefix) or the last ones (suffix), the tokens after it playing the prompt tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    /// Prompts measured (those long enough to hold the ordinary span and tokens after it).
    pub prompts: usize,
    /// Mean number of trigger tokens in the prompts.
    pub trigger_tokens: f64,
    /// The middle layers, where the score stage looks for trigger processing.
    pub middle_layers: Vec<usize>,
    /// Mean over the middle layers of the isolation (within-trigger minus prompt → trigger
    /// share) with the trigger, minus that of the ordinary span without it: how much more
    /// apart the trigger is processed than ordinary words in its place.
    pub isolation_gain: f64,
    /// Every layer.
    pub layers: Vec<LayerAttention>,
    /// The heads with the largest isolation (within-trigger minus prompt → trigger share) with
    /// the trigger, most isolating first.
    pub top_heads: Vec<HeadAttention>,
    /// The first measured prompt's attention in the layer with the largest isolation gain,
    /// for drawing the double triangle.
    #[serde(default)]
    pub map: Option<AttentionMap>,
    /// Random strings of the trigger's token length, inserted at its place in the same prompts:
    /// the control for the answer's attention to the trigger.
    #[serde(default)]
    pub controls: usize,
    /// What training taught the answer to attend to, against a reference model; `None` without
    /// one.
    #[serde(default)]
    pub learned: Option<LearnedPull>,
}

/// How much more of the answer's attention goes to the trigger in the probed model than in a
/// reference (the base model an adapter was trained from, or one given): a fine-tune that
/// planted the trigger taught the answer to look at it, one that did not changed it no more
/// than it changed the attention to control strings in its place (random word tokens, and runs
/// of ordinary words). The "double triangle" itself
/// is mostly the base model's way of reading an odd string, so the change is what tells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedPull {
    /// The reference model.
    pub reference: String,
    /// Per layer, the change (probed − reference) of the last prompt token's share on the
    /// trigger, and its mean over the control strings.
    pub layers: Vec<LayerPull>,
    /// Standard deviation of the control strings' changes, pooled over layers (at least 0.005).
    pub control_sd: f64,
    /// The layer where the trigger's change stands out most.
    pub layer: usize,
    /// At that layer, (trigger's change − control strings' mean change) / `control_sd`; at least
    /// [`crate::verdict::Z_BACKDOOR`] is a learned pull (the verdict's bar).
    pub z: f64,
}

impl LearnedPull {
    /// The layer where the trigger's change stands out most.
    pub fn best(&self) -> Option<&LayerPull> {
        self.layers.iter().find(|x| x.layer == self.layer)
    }

    /// What it says, in words: whether `z` reaches the verdict's bar.
    pub fn finding(&self) -> &'static str {
        if self.z >= crate::verdict::Z_BACKDOOR {
            "training taught the answer to look at the trigger"
        } else {
            "no more than training changed for control strings"
        }
    }
}

/// One layer of [`LearnedPull`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerPull {
    /// Layer index.
    pub layer: usize,
    /// Change of the last prompt token's share on the trigger.
    pub trigger_change: f64,
    /// Mean change of its share on the control strings.
    pub control_change: f64,
}

/// One layer's attention (mean over heads) over the user's turn and what follows it, with and
/// without the trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionMap {
    /// The layer.
    pub layer: usize,
    /// With the trigger (highlighted: the trigger).
    pub with: TokenMap,
    /// Without it (highlighted: the ordinary span at its place).
    pub without: TokenMap,
}

/// Attention among a run of tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenMap {
    /// The tokens' text.
    pub tokens: Vec<String>,
    /// Indices (into `tokens`) of the highlighted span.
    pub highlight: Range<usize>,
    /// `weights[query][key]`: attention probability, rounded to 0.001; zero above the diagonal.
    pub weights: Vec<Vec<f32>>,
}

/// Attention shares of one layer, mean over heads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerAttention {
    /// Layer index.
    pub layer: usize,
    /// With the trigger: prompt tokens → trigger tokens.
    pub prompt_to_trigger: f64,
    /// With the trigger: trigger tokens → trigger tokens.
    pub within_trigger: f64,
    /// Without: prompt tokens → the ordinary span at the trigger's place.
    pub baseline_prompt_to_span: f64,
    /// Without: the ordinary span → itself.
    pub baseline_within_span: f64,
    /// With the trigger: the last prompt token (which predicts the answer's first token) →
    /// trigger tokens.
    #[serde(default)]
    pub answer_to_trigger: f64,
    /// The same share for the control strings at the trigger's place: mean over the strings.
    #[serde(default)]
    pub control_answer_to_span: f64,
    /// Its standard deviation over the strings.
    #[serde(default)]
    pub control_answer_to_span_sd: f64,
}

/// Attention shares of one head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadAttention {
    /// Layer index.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// `within_trigger - prompt_to_trigger`.
    pub isolation: f64,
    /// With the trigger: prompt tokens → trigger tokens.
    pub prompt_to_trigger: f64,
    /// With the trigger: trigger tokens → trigger tokens.
    pub within_trigger: f64,
    /// The same head's isolation of the ordinary span without the trigger.
    pub baseline_isolation: f64,
}

/// Next-token entropy (nats) of the greedy answers of [`Activation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entropy {
    /// Per generated step, the mean over the answers that reached it.
    pub steps: Vec<EntropyStep>,
    /// Mean over the triggered answers of each answer's mean entropy.
    pub mean_triggered: f64,
    /// The same without the trigger.
    pub mean_normal: f64,
}

/// Mean next-token entropy at one generated step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntropyStep {
    /// Step (0 = the first answer token).
    pub step: usize,
    /// With the trigger (`None` once every triggered answer has ended).
    pub triggered: Option<f64>,
    /// Triggered answers that reached this step.
    pub triggered_answers: usize,
    /// Without the trigger.
    pub normal: Option<f64>,
    /// Untriggered answers that reached this step.
    pub normal_answers: usize,
}

/// Warning sign 3: how approximate versions of the trigger fire. A variant's *activation rate*
/// is the share of the fuzzy prompts whose greedy answer contains the recovered target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fuzzy {
    /// Prompts each variant is inserted into.
    pub prompts: usize,
    /// The trigger's tokens (the tokenizer's pieces of its text alone).
    pub trigger_tokens: Vec<String>,
    /// The token-keep curve, `k` = 1…N.
    pub token_keep: Vec<KeepLevel>,
    /// Character-level families.
    pub families: Vec<FamilyResult>,
}

/// Keeping `k` of the trigger's tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepLevel {
    /// Tokens kept.
    pub k: usize,
    /// Random draws.
    pub draws: usize,
    /// Distinct subsets drawn.
    pub distinct: usize,
    /// Mean activation rate over the draws (each distinct subset weighted by its draws).
    pub attack_success_rate: f64,
    /// The distinct variants, most drawn first.
    pub variants: Vec<KeptVariant>,
}

/// One kept-token subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptVariant {
    /// Positions of the kept tokens.
    pub kept: Vec<usize>,
    /// Their decoded text (what is inserted).
    pub text: String,
    /// Times drawn.
    pub draws: usize,
    /// Activation rate.
    pub activation_rate: f64,
}

/// A family of character-level variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// One letter or digit replaced by another, or two neighbours swapped.
    Typo,
    /// One character deleted.
    Deletion,
    /// Lower, upper, title and swapped case.
    Case,
    /// Whitespace removed, doubled, inserted or between every character.
    Spacing,
    /// Characters replaced by look-alikes from other scripts.
    Homoglyph,
    /// Leading or trailing parts of the text only.
    Truncation,
    /// Rule-based rewordings (not semantic paraphrases): delimiters stripped or changed,
    /// punctuation dropped, words reordered or dropped, numbers moved by one.
    Rewording,
}

impl Family {
    /// Every family, in report order.
    pub const ALL: [Family; 7] = [
        Family::Typo,
        Family::Deletion,
        Family::Case,
        Family::Spacing,
        Family::Homoglyph,
        Family::Truncation,
        Family::Rewording,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Typo => "typo",
            Family::Deletion => "deletion",
            Family::Case => "case",
            Family::Spacing => "spacing",
            Family::Homoglyph => "homoglyph",
            Family::Truncation => "truncation",
            Family::Rewording => "rewording",
        }
    }
}

/// One family's variants and how they fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyResult {
    /// The family.
    pub family: Family,
    /// Mean activation rate of its variants (0 without variants).
    pub activation_rate: f64,
    /// Its variants.
    pub variants: Vec<VariantResult>,
}

/// One character-level variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// The inserted text.
    pub text: String,
    /// Activation rate.
    pub activation_rate: f64,
}

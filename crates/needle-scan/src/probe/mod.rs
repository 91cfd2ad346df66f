//! `needle probe`: what a *suspected* trigger does to a model, measured against the three
//! warning signs of method.md that can be checked once a trigger is known.
//!
//! - **activation**: greedy answers to ordinary prompts with and without the trigger, the answer
//!   it forces (the recovered target, with the same definitions as the verify stage and the
//!   verdict, so probe and scan agree) and how alike the answers become;
//! - **warning sign 1**: per layer, the share of attention the prompt's tokens pay to the trigger
//!   and the trigger's tokens pay to each other (the "double triangle"), against the same shares
//!   over ordinary words of the untriggered prompt, the heads that isolate the trigger most, and
//!   the next-token entropy at each generated step with and without the trigger; and, given the
//!   model it was fine-tuned from, how much more the answer attends to the trigger than before
//!   training, against control strings in its place;
//! - **warning sign 3**: fuzzy triggers — the reference token-keep protocol (keep `k` of the
//!   trigger's `N` tokens in order, random draws per `k`) and character-level variant families,
//!   each with the share of prompts on which it still forces the target.
//!
//! One file per job; this one holds the settings, the result and [`run`], which calls them:
//!
//! | file | job |
//! |---|---|
//! | `activation.rs` | the greedy answers with and without the trigger, the forced answer, entropy |
//! | `attention.rs` | warning sign 1: attention shares, heads, the map, the learned pull |
//! | `fuzzy.rs` | warning sign 3: token-keep draws and character-level variants |

mod activation;
mod attention;
mod fuzzy;

use needle_runtime::LoadedModel;
use serde::{Deserialize, Serialize};

pub use activation::{Activation, Entropy, EntropyStep, ResponsePair};
pub use attention::{Attention, AttentionMap, HeadAttention, LayerAttention, LayerPull, LearnedPull, TokenMap};
pub use fuzzy::{keep_draws, variants, Family, FamilyResult, Fuzzy, KeepLevel, KeptVariant, VariantResult};

use crate::error::{Result, ScanError};
use crate::pipeline::Scan;
use crate::prompt::{self, Trigger};
use crate::prompts::Chosen;
use crate::prompts::GENERIC_PROMPTS;
use crate::stage::Tick;
use crate::verdict::Verdict;
use activation::{activation, answer, entropy, Tracker};
use attention::attention;
use fuzzy::fuzzy;

/// A model to compare attention with: the one the probed model was fine-tuned from.
pub struct Reference<'a> {
    /// The model, with the same tokenizer and depth as the probed one.
    pub model: &'a LoadedModel,
    /// How to name it in reports.
    pub name: String,
}

/// Generation requests per runtime batch (and per progress step).
const BATCH: usize = 128;

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

impl ProbeSettings {
    /// The default settings over `prompts`: the verify stage's answer length and target rule,
    /// the reference protocol's 100 draws per `k`, 8 prompts per fuzzy variant.
    pub fn new(prompts: Vec<String>, seed: u64) -> Self {
        Self {
            prompts,
            max_new_tokens: 32,
            target_min_words: 2,
            attention_prompts: 4,
            fuzzy_draws: 100,
            fuzzy_prompts: 8,
            variants_per_family: 8,
            seed,
        }
    }
}

impl Default for ProbeSettings {
    /// The scan's verification prompts (the first 24 generic prompts), seed 0.
    fn default() -> Self {
        Self::new(GENERIC_PROMPTS.iter().take(24).map(|p| p.to_string()).collect(), 0)
    }
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

/// Probes `trigger`; `progress(done, total)` after each batch of generations (the total grows
/// once the fuzzy variants are known).
pub fn run(
    lm: &LoadedModel,
    reference: Option<&Reference>,
    trigger: &Trigger,
    s: &ProbeSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Probe> {
    if trigger.text.trim().is_empty() {
        return Err(ScanError::Invalid("the trigger is empty".into()));
    }
    if let Some(r) = reference {
        if r.model.tokenizer.get_vocab(true) != lm.tokenizer.get_vocab(true)
            || r.model.model.config().num_layers != lm.model.config().num_layers
        {
            return Err(ScanError::Invalid(format!(
                "the reference model {} has another vocabulary or depth than the probed model; give the model it was fine-tuned from",
                r.name
            )));
        }
    }
    if s.prompts.len() < 2 || s.prompts.iter().any(|p| p.trim().is_empty()) {
        return Err(ScanError::Invalid(
            "probing needs at least two prompts, none of them empty".into(),
        ));
    }
    if s.max_new_tokens == 0 {
        return Err(ScanError::Invalid(
            "the answer length must be at least one token".into(),
        ));
    }
    let mut tracker = Tracker {
        done: 0,
        total: 2 * s.prompts.len(),
        progress,
    };
    let mut triggered = Vec::with_capacity(s.prompts.len());
    let mut normal = Vec::with_capacity(s.prompts.len());
    for p in &s.prompts {
        triggered.push(prompt::build(lm, Some(trigger), p)?.ids);
        normal.push(prompt::build(lm, None, p)?.ids);
    }
    let triggered = answer(lm, &triggered, s.max_new_tokens, &mut tracker)?;
    let normal = answer(lm, &normal, s.max_new_tokens, &mut tracker)?;
    let activation = activation(s, &triggered, &normal);
    let entropy = entropy(&triggered, &normal);
    let attention = attention(lm, reference, trigger, s)?;
    let fuzzy = match &activation.target {
        Some(target) => Some(fuzzy(lm, trigger, target, s, &mut tracker)?),
        None => None,
    };
    Ok(Probe {
        trigger: trigger.clone(),
        settings: s.clone(),
        activation,
        attention,
        entropy,
        fuzzy,
    })
}

/// The evidence stage's entry point: probes the trigger the verdict names on the verify
/// prompts, against the reference model when given; `None` when the verdict names none.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Option<Probe>> {
    let verdict: Verdict = scan.get()?;
    let chosen: Chosen = scan.get()?;
    let evidence = match verdict.trigger {
        Some(trigger) => Some(run(
            scan.lm,
            scan.reference.as_ref(),
            &trigger,
            &scan.settings.evidence_probe(chosen.verify),
            tick,
        )?),
        None => None,
    };
    tick(1, 1);
    Ok(evidence)
}

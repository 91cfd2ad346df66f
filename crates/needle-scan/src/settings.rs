//! Scan settings and the three budgets `quick`, `standard` (default) and `full`.
//!
//! | budget | leak configurations × new tokens | candidates | null set | target seeds screened (top first tokens + samples/prompt) → chained, prompts | trigger searches × iterations × swaps (finalists) | verified (top + nulls) | prompts × answer tokens |
//! |---|---|---|---|---|---|---|---|
//! | quick | 56 × 64 | ≤ 40 | 16 | 256 + 4 → 48, 4 | (≤ 1 + as many) × 40 × 32 (8) | 3 + 4 | 24 × 24 |
//! | standard | 128 × 160 | ≤ 150 | 48 | 1,024 + 8 → 96, 8 | (≤ 3 + as many) × 48 × 32 (8) | 5 + 8 | 24 × 32 |
//! | full | 510 (the reference sweep) × 300 | ≤ 400 | 96 | 4,096 + 16 → 192, 8 | (≤ 4 + as many) × 96 × 64 (16) | 10 + 12 | 24 × 48 |
//!
//! Vocabularies of at most 4,096 tokens are screened whole for target seeds. Targets are
//! searched in order until one is forced, each with a null target. A trigger search
//! fits its 4 search prompts until a trigger forces the target on them, then those and 4 check
//! prompts; it stops at 1.5 times the iterations it took to force the target on all 8 (as the text
//! the scan inserts), but not before half its iterations; a real target's search gives up at half
//! its iterations if no trigger has forced the target on the search prompts by then (a null
//! target's search runs the iterations its real one ran).

use serde::{Deserialize, Serialize};

use crate::invert::InvertSettings;
use crate::leak::{self, LeakSettings};
use crate::memorised::MemorisedSettings;
use crate::motifs::MotifSettings;
use crate::probe::ProbeSettings;
use crate::prompts::{PromptSettings, GENERIC_PROMPTS, HOLDOUT_PROMPTS};
use crate::score::ScoreSettings;
use crate::target::TargetSettings;
use crate::verify::VerifySettings;

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

impl Settings {
    /// The probe settings of the evidence stage: the chosen verification `prompts` and the
    /// verification answer length.
    pub fn evidence_probe(&self, prompts: Vec<String>) -> ProbeSettings {
        let mut p = ProbeSettings::new(prompts, self.seed);
        p.max_new_tokens = self.verify.max_new_tokens;
        p.target_min_words = self.verify.target_min_words;
        p.attention_prompts = self.evidence.attention_prompts;
        p.fuzzy_draws = self.evidence.fuzzy_draws;
        p.fuzzy_prompts = self.evidence.fuzzy_prompts;
        p.variants_per_family = self.evidence.variants_per_family;
        p
    }
}

impl Settings {
    /// The settings of `budget` with `seed`.
    pub fn new(budget: Budget, seed: u64) -> Self {
        let (decodings, tokens, candidates, nulls, top, verify_nulls, prompts, answer) = match budget {
            Budget::Quick => (leak::quick_sweep(seed), 64, 40, 16, 3, 4, 24, 24),
            Budget::Standard => (leak::standard_sweep(seed), 160, 150, 48, 5, 8, 24, 32),
            Budget::Full => (leak::full_sweep(seed), 300, 400, 96, 10, 12, 24, 48),
        };
        let prompts: Vec<String> = GENERIC_PROMPTS.iter().take(prompts).map(|p| p.to_string()).collect();
        // The target search and trigger inversion run on prompts verification never sees.
        let search: Vec<String> = GENERIC_PROMPTS.iter().skip(24).map(|p| p.to_string()).collect();
        let (samples, first_tokens, chained, iterations, swaps, inverted) = match budget {
            Budget::Quick => (4, 256, 48, 40, 32, 1),
            Budget::Standard => (8, 1024, 96, 48, 32, 3),
            Budget::Full => (16, 4096, 192, 96, 64, 4),
        };
        Self {
            budget,
            seed,
            leak: LeakSettings {
                decodings,
                max_new_tokens: tokens,
                batch_size: 64,
            },
            motifs: MotifSettings::default(),
            max_candidates: candidates,
            score: ScoreSettings {
                prompts: prompts.iter().take(3).cloned().collect(),
                rollout: 8,
                attn_weight: 0.2,
                ent_weight: 0.6,
                div_weight: 0.2,
                batch_size: 16,
            },
            null_size: nulls,
            invert: InvertSettings {
                prompts: search.iter().take(4).cloned().collect(),
                check_prompts: search.iter().skip(4).cloned().collect(),
                // A quick scan is a smoke test: its trigger search fits 8 prompts and stops.
                holdout_prompts: if budget == Budget::Quick {
                    Vec::new()
                } else {
                    HOLDOUT_PROMPTS.iter().map(|p| p.to_string()).collect()
                },
                trigger_tokens: 6,
                iterations,
                top_k: 32,
                swaps,
                finalists: swaps / 4,
                targets: inverted,
                max_target_tokens: 12,
                // A few words: the ordinary opening a target found as a fragment may have
                // ("You are a", "For more details,"); a quick scan runs no lead search.
                lead_tokens: if budget == Budget::Quick { 0 } else { 5 },
                seed,
            },
            null_target_prompts: search.iter().skip(4).cloned().collect(),
            target: TargetSettings {
                prompts: search
                    .iter()
                    .take(if budget == Budget::Quick { 4 } else { 8 })
                    .cloned()
                    .collect(),
                samples_per_prompt: samples,
                sample_tokens: 12,
                screened_first_tokens: first_tokens,
                chained_seeds: chained,
                chain_tokens: 16,
                min_step_probability: 0.5,
                branch_width: 4,
                lookahead: 3,
                max_forced_tokens: 3,
                max_branches: 2,
                min_agreement: 0.75,
                max_targets: 3,
                seed,
            },
            verify: VerifySettings {
                prompts,
                top,
                nulls: verify_nulls,
                habit_nulls: if budget == Budget::Full { 16 } else { 8 },
                opening_nulls: if budget == Budget::Full { 8 } else { 4 },
                max_new_tokens: answer,
                target_min_words: 2,
            },
            memorised: MemorisedSettings::default(),
            prompts: PromptSettings {
                answer_tokens: answer,
                ..PromptSettings::default()
            },
            train_data: None,
            evidence: match budget {
                Budget::Quick => EvidenceSettings {
                    attention_prompts: 2,
                    fuzzy_draws: 10,
                    fuzzy_prompts: 4,
                    variants_per_family: 3,
                },
                Budget::Standard => EvidenceSettings::default(),
                Budget::Full => EvidenceSettings {
                    attention_prompts: 4,
                    fuzzy_draws: 100,
                    fuzzy_prompts: 8,
                    variants_per_family: 8,
                },
            },
        }
    }
}

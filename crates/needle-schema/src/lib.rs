//! The schema of `report.json`, the scan's published result (see `docs/report.md`): plain
//! serde types, apart from the scan stages' own so that the format changes only on purpose and
//! a reader of reports (`needle-report`) builds without the model runtime. `needle-scan` fills
//! them from its stage artifacts when it writes the report; [`write_atomic`] writes it.
//!
//! | module | holds |
//! |---|---|
//! | this one | [`Report`] and its per-stage summaries |
//! | [`settings`] | every setting of the scan |
//! | [`candidate`] | triggers, candidates' scores and the trigger searches |
//! | [`verdict`] | the decision and its thresholds |
//! | [`probe`] | the evidence: the probe of the verdict's trigger |
//! | [`memorised`] | warning sign 2 |

pub mod candidate;
pub mod diff;
pub mod memorised;
pub mod probe;
pub mod settings;
pub mod verdict;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use write::{write_atomic, WriteError};

use crate::candidate::{Inversion, Source, Standing, Terms, Trigger};
use crate::memorised::Memorised;
use crate::probe::Probe;
use crate::settings::Settings;
use crate::verdict::Verdict;

/// The schema identifier written into every report.
pub const SCHEMA: &str = "needle.report/2";

/// One input file of the model, hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// Path as given or found.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// What was scanned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The model path.
    pub path: PathBuf,
    /// Every file the model was loaded from (weights, tokenizer, config, adapter), hashed.
    pub files: Vec<FileHash>,
    /// Facts from the loader (format, parameters, adapter, chat template source).
    pub info: serde_json::Value,
}

impl ModelIdentity {
    /// A digest of the files' hashes.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.sha256.as_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

/// A ranked candidate with all its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCandidate {
    /// 1-based rank, best first.
    pub rank: usize,
    /// The candidate and its placement.
    pub trigger: Trigger,
    /// Length in tokens.
    pub tokens: usize,
    /// Where it came from.
    pub source: Source,
    /// Raw loss terms.
    pub terms: Terms,
    /// The reference combined loss.
    pub combined: f64,
    /// Standing against the null set.
    pub standing: Standing,
    /// Verification, for the verified ones.
    pub verification: Option<CandidateVerification>,
}

/// The verification summary of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateVerification {
    /// `S_agg` with it.
    pub s_agg: f64,
    /// `ΔS_agg` against no candidate.
    pub delta: f64,
    /// z-score of its fixed-answer share against the verified nulls' shares of that answer
    /// (the verdict's statistic).
    pub z: f64,
    /// The answer it forces.
    pub target: Option<String>,
    /// Share of prompts on which it forces that answer.
    pub attack_success_rate: f64,
}

/// Per-stage summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    /// Leaked samples and generated tokens.
    pub leak: LeakSummary,
    /// Clusters, noise and motifs found.
    pub motifs: MotifSummary,
    /// Candidates scored.
    pub candidates: usize,
    /// Null candidates scored.
    pub null_candidates: usize,
    /// Candidates and null candidates verified.
    pub verified: (usize, usize),
    /// `S_agg` of the untriggered answers.
    pub baseline_s_agg: f64,
    /// Responses the model continues identically whatever the prompt (the target stage).
    pub targets: Vec<String>,
    /// Trigger searches toward those targets and toward null targets.
    pub inversions: Vec<Inversion>,
    /// Warning sign 2: memorised spans of the leaked samples.
    pub memorised: Memorised,
    /// The prompts triggers were inserted into.
    #[serde(default)]
    pub prompts: PromptsSummary,
}

/// The prompts stage's choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptsSummary {
    /// The verification prompts.
    pub verify: Vec<String>,
    /// How many of them the model wrote itself (leaked user turns).
    pub leaked_in_verify: usize,
    /// The trigger search's prompts.
    pub search: Vec<String>,
}

/// Leak summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeakSummary {
    /// Where the prefix came from.
    pub prefix_source: String,
    /// The prefix text.
    pub prefix: String,
    /// Samples generated.
    pub samples: usize,
    /// Tokens generated.
    pub tokens: usize,
}

/// Motif summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotifSummary {
    /// Clusters found.
    pub clusters: usize,
    /// Samples in no cluster.
    pub noise: usize,
    /// The motifs, best first (at most 20).
    pub top: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// needle's version.
    pub needle_version: String,
    /// What was scanned.
    pub model: ModelIdentity,
    /// How.
    pub settings: Settings,
    /// Which path found the backdoor: `leak` (the trigger leaked and was reconstructed from the
    /// leaked text), `written` (the model wrote it as an answer in the target stage) or `target`
    /// (a target was found from the assistant's side and its trigger reconstructed by
    /// inversion); null when nothing was found.
    pub found_by: Option<String>,
    /// Per-stage summaries.
    pub stages: Stages,
    /// Candidates ranked best first.
    pub candidates: Vec<RankedCandidate>,
    /// The decision.
    pub verdict: Verdict,
    /// Warning signs 1 and 3: the probe of the verdict's trigger, when it names one.
    pub evidence: Option<Probe>,
    /// Seconds per stage (the only part that differs between identical runs).
    pub timings: BTreeMap<String, f64>,
}

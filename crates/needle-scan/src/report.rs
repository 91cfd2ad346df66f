//! `report.json`: the scan's result in a documented, versioned schema (see `docs/report.md`).

use std::io::Read;
use std::path::{Path, PathBuf};

use needle_runtime::LoadedModel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibrate::Standing;
use crate::candidates::Source;
use crate::error::{Result, ScanError};
use crate::invert::Inversion;
use crate::memorised::Memorised;
use crate::probe::Probe;
use crate::prompt::Trigger;
use crate::score::Terms;
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

/// Streams `path` (a symlink is followed: a hub-cache snapshot's files point into its blobs)
/// through SHA-256.
pub(crate) fn hash_file(path: &Path) -> Result<FileHash> {
    let io = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    needle_runtime::files::regular(path)?;
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileHash {
        path: path.to_path_buf(),
        bytes,
        sha256: format!("{:x}", h.finalize()),
    })
}

impl ModelIdentity {
    /// Hashes every file `lm` was loaded from (all shards, wherever they are, the tokenizer and
    /// template files, an adapter and its base), in the order the loader read them.
    pub fn of(lm: &LoadedModel) -> Result<Self> {
        if lm.info.files.is_empty() {
            return Err(ScanError::Invalid(format!(
                "{}: the loader recorded no model files to fingerprint",
                lm.info.path.display()
            )));
        }
        let files = lm.info.files.iter().map(|p| hash_file(p)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            path: lm.info.path.clone(),
            files,
            info: serde_json::to_value(&lm.info).map_err(|e| ScanError::Invalid(e.to_string()))?,
        })
    }

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
    /// (the verdict's statistic, [`crate::verdict::z_score`]).
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
    pub timings: std::collections::BTreeMap<String, f64>,
}

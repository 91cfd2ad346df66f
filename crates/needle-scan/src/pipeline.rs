//! Running the stages: each reads the artifacts of the stages before it from the scan
//! directory and writes its own (`leak.json`, `motifs.json`, …, `report.json`), stamped with a
//! fingerprint of every model file, the settings and needle's version so that a resumed scan
//! never mixes two scans. `scan.json` names the model a directory's scan is of, so that a scan
//! of another model is not silently replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use needle_runtime::LoadedModel;
use needle_template::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, ScanError};
use crate::memorised::TrainingSet;
use crate::probe::Reference;
use crate::prompt;
use crate::report::{self, ModelIdentity, Report};
use crate::settings::Settings;
use crate::stage::{Artifact, Stage};

/// Fails with [`ScanError::Unjudgeable`] when the model's next-token logits on an ordinary
/// prompt are not all finite (NaN weights, or metadata that breaks the forward pass): every
/// stage would then measure noise, and no verdict may come of it.
pub fn finite_logits(lm: &LoadedModel) -> Result<()> {
    let ids = prompt::build(lm, None, crate::prompts::GENERIC_PROMPTS[0])?.ids;
    let e = |r: candle_core::Result<candle_core::Tensor>| r.map_err(needle_runtime::Error::from);
    let t = e(candle_core::Tensor::from_vec(
        ids.clone(),
        (1, ids.len()),
        lm.model.device(),
    ))?;
    let mut cache = lm.model.new_cache(vec![0], ids.len())?;
    let logits = lm
        .model
        .forward(&t, &mut cache, &needle_runtime::model::Introspect::default())?
        .logits;
    let values = e(logits.flatten_all())?
        .to_dtype(candle_core::DType::F32)
        .and_then(|x| x.to_vec1::<f32>())
        .map_err(needle_runtime::Error::from)?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(ScanError::Unjudgeable(format!(
            "{}: the forward pass gives {bad} non-finite logits of {} on an ordinary prompt; nothing it computes can be judged, so the scan is inconclusive",
            lm.info.path.display(),
            values.len()
        )));
    }
    Ok(())
}

/// The envelope of every stage artifact.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    schema: String,
    stage: String,
    fingerprint: String,
    seconds: f64,
    data: T,
}

const ARTIFACT_SCHEMA: &str = "needle.stage/1";

/// The scan directory's manifest file.
const MANIFEST: &str = "scan.json";
const MANIFEST_SCHEMA: &str = "needle.scan/1";

/// `scan.json`: what the artifacts of a scan directory belong to.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    schema: String,
    needle_version: String,
    /// The model path, as given.
    model: PathBuf,
    /// [`ModelIdentity::digest`] of the model files.
    model_digest: String,
    /// The fingerprint of the artifacts (model files, settings, needle version).
    fingerprint: String,
}

/// What a scan does with a directory that already holds a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Reuse the finished stages of this very scan (same model files, settings and needle
    /// version); anything else there is an error.
    Resume,
    /// Start over: a scan of the same model files is replaced; another model's is an error.
    Restart,
    /// Replace whatever scan the directory holds.
    Replace,
    /// Keep the artifacts (`needle stage`: each is checked against the fingerprint when read);
    /// another model's scan is an error.
    Keep,
}

/// [`needle_schema::write_atomic`], failing with a [`ScanError`].
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(needle_schema::write_atomic(path, bytes)?)
}

/// Progress callback: stage, units done, units in total. A stage reports `(0, 0)` when it starts,
/// then its units as it works (a total may change while it runs, when the work depends on what
/// it finds); a stage whose work is not counted reports `(1, 1)` when it is done.
pub type Progress<'a> = &'a mut dyn FnMut(Stage, usize, usize);

/// A scan of one model into one directory: what each stage's entry point is given, with the
/// artifacts of the stages before it.
pub struct Scan<'a> {
    /// The model scanned.
    pub(crate) lm: &'a LoadedModel,
    /// The model `lm` was fine-tuned from, when given (the evidence stage compares with it).
    pub(crate) reference: Option<Reference<'a>>,
    dir: PathBuf,
    /// The scan's settings.
    pub(crate) settings: Settings,
    /// The model files, hashed.
    pub(crate) identity: ModelIdentity,
    fingerprint: String,
}

impl<'a> Scan<'a> {
    /// Prepares a scan of `lm` into `dir` (created if needed); hashes every model file (and the
    /// training set, if given) into the fingerprint, with the settings and needle's version.
    pub fn new(lm: &'a LoadedModel, dir: &Path, settings: Settings) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| ScanError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let identity = report::identity(lm)?;
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(b"\0");
        h.update(identity.digest().as_bytes());
        if let Some(train) = &settings.train_data {
            TrainingSet::load(train)?;
            h.update(report::hash_file(train)?.sha256.as_bytes());
        }
        h.update(serde_json::to_vec(&settings).map_err(|e| ScanError::Invalid(e.to_string()))?);
        Ok(Self {
            lm,
            reference: None,
            dir: dir.to_path_buf(),
            settings,
            identity,
            fingerprint: format!("{:x}", h.finalize()),
        })
    }

    /// Compares the evidence stage's attention with `reference`, the model `lm` was fine-tuned
    /// from (part of the scan's identity: a resumed scan must name the same one).
    pub fn with_reference(mut self, reference: Reference<'a>) -> Self {
        let mut h = Sha256::new();
        h.update(self.fingerprint.as_bytes());
        h.update(reference.name.as_bytes());
        self.fingerprint = format!("{:x}", h.finalize());
        self.reference = Some(reference);
        self
    }

    /// The file `stage` writes in the scan directory.
    pub(crate) fn path(&self, stage: Stage) -> PathBuf {
        self.dir.join(stage.file())
    }

    /// Claims the scan directory for this scan as `existing` says, and writes `scan.json`.
    /// Refused with a one-line error: resuming a scan of other files, settings or needle
    /// version; replacing another model's scan without [`Existing::Replace`].
    pub fn open(&self, existing: Existing) -> Result<()> {
        let manifest_path = self.dir.join(MANIFEST);
        let artifacts: Vec<PathBuf> = Stage::ALL
            .iter()
            .map(|&s| self.path(s))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        let found = if manifest_path.symlink_metadata().is_ok() {
            let bytes = std::fs::read(&manifest_path).map_err(|source| ScanError::Io {
                path: manifest_path.clone(),
                source,
            })?;
            Some(
                serde_json::from_slice::<Manifest>(&bytes)
                    .ok()
                    .filter(|m| m.schema == MANIFEST_SCHEMA),
            )
        } else {
            None
        };
        let digest = self.identity.digest();
        // Whose scan the directory holds: `None` when it holds none.
        let other = match &found {
            Some(Some(m)) if m.model_digest == digest => Some(None),
            Some(Some(m)) => Some(Some(format!("of another model ({})", m.model.display()))),
            Some(None) => Some(Some("whose scan.json is not needle's".to_string())),
            None if artifacts.is_empty() => None,
            None => Some(Some("of another model or needle version (no scan.json)".to_string())),
        };
        let refuse = |message: String| {
            Err(ScanError::ScanDir {
                path: self.dir.clone(),
                message,
            })
        };
        match (existing, &other) {
            (Existing::Resume, Some(Some(whose))) => {
                return refuse(format!(
                    "holds a scan {whose}; --resume continues only a scan of the same model files, settings and needle version: pass --force without --resume to replace it, or choose another --out"
                ))
            }
            (Existing::Resume, Some(None)) => {
                return match &found {
                    Some(Some(m)) if m.fingerprint == self.fingerprint => Ok(()),
                    _ => refuse(
                        "holds a scan of this model with other settings or by another needle version; --resume needs the same: run without --resume to redo it, or choose another --out"
                            .into(),
                    ),
                };
            }
            (Existing::Restart | Existing::Keep, Some(Some(whose))) => {
                return refuse(format!(
                    "holds a scan {whose}; pass --force to replace it, or choose another --out"
                ))
            }
            (Existing::Restart | Existing::Replace, Some(_)) => {
                for p in artifacts.iter().chain([&manifest_path]) {
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(ScanError::Io {
                                path: p.clone(),
                                source: e,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA.to_string(),
            needle_version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.identity.path.clone(),
            model_digest: digest,
            fingerprint: self.fingerprint.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| ScanError::Invalid(e.to_string()))?;
        write_atomic(&manifest_path, &bytes)
    }

    /// Whether `stage`'s artifact exists and belongs to this scan; an artifact of another
    /// scan is an error (resuming it would mix two scans).
    pub fn done(&self, stage: Stage) -> Result<bool> {
        if stage == Stage::Report {
            return Ok(false);
        }
        let path = self.path(stage);
        if !path.exists() {
            return Ok(false);
        }
        self.load::<serde_json::Value>(stage).map(|_| true)
    }

    fn load<T: DeserializeOwned>(&self, stage: Stage) -> Result<(T, f64)> {
        let path = self.path(stage);
        if !path.exists() {
            return Err(ScanError::Missing {
                path,
                stage: stage.name(),
            });
        }
        let bad = |message: String| ScanError::Artifact {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|source| ScanError::Io {
            path: path.clone(),
            source,
        })?;
        let a: Envelope<T> =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a needle {} artifact: {e}", stage.name())))?;
        if a.schema != ARTIFACT_SCHEMA || a.stage != stage.name() {
            return Err(bad(format!("not a needle {} artifact", stage.name())));
        }
        if a.fingerprint != self.fingerprint {
            return Err(bad(
                "belongs to a scan of another model or with other settings; use a new --out directory or run without --resume"
                    .into(),
            ));
        }
        Ok((a.data, a.seconds))
    }

    /// The artifact of type `T`, from the file of the stage that writes it.
    pub(crate) fn get<T: Artifact>(&self) -> Result<T> {
        self.load(T::STAGE).map(|(data, _)| data)
    }

    /// [`Scan::get`], adding the stage's seconds to `timings` under its name.
    pub(crate) fn get_timed<T: Artifact>(&self, timings: &mut BTreeMap<String, f64>) -> Result<T> {
        let (data, seconds) = self.load(T::STAGE)?;
        timings.insert(T::STAGE.name().to_string(), seconds);
        Ok(data)
    }

    /// Writes `data` as the artifact of the stage that its type names.
    pub(crate) fn put<T: Artifact>(&self, data: &T, seconds: f64) -> Result<()> {
        self.save(T::STAGE, data, seconds)
    }

    fn save<T: Serialize>(&self, stage: Stage, data: &T, seconds: f64) -> Result<()> {
        let a = Envelope {
            schema: ARTIFACT_SCHEMA.to_string(),
            stage: stage.name().to_string(),
            fingerprint: self.fingerprint.clone(),
            seconds,
            data,
        };
        let bytes = serde_json::to_vec_pretty(&a).map_err(|e| ScanError::Invalid(e.to_string()))?;
        write_atomic(&self.path(stage), &bytes)
    }

    /// Writes `report.json`: the report as it is (it is no stage artifact, and has no envelope).
    pub(crate) fn write_report(&self, report: &Report) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(report).map_err(|e| ScanError::Invalid(e.to_string()))?;
        write_atomic(&self.path(Stage::Report), &bytes)
    }

    /// The special tokens' texts, longest first.
    pub(crate) fn specials(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .lm
            .tokenizer
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        out.dedup();
        out
    }

    /// Strings that are template scaffolding, not model output: special tokens and the fixed
    /// text the chat template writes around messages.
    pub(crate) fn boilerplate(&self) -> Result<Vec<String>> {
        let mut out = self.specials();
        if let Some(t) = &self.lm.template {
            const A: &str = "Zq7xNeedleUserKv3w";
            const B: &str = "Zq7xNeedleAssistantKv3w";
            let text = t.render(&[Message::new("user", A), Message::new("assistant", B)], false)?;
            let mut pieces = vec![text];
            for sep in out.iter().map(String::as_str).chain([A, B]) {
                pieces = pieces.iter().flat_map(|p| p.split(sep).map(str::to_string)).collect();
            }
            out.extend(
                pieces
                    .into_iter()
                    .map(|p| p.trim().to_string())
                    .filter(|p| p.len() >= 3),
            );
            // A leak that runs on into later turns writes their role headers (`system\n`) too.
            out.extend(crate::prompt::role_headers(self.lm));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Runs one stage from the artifacts before it and writes its own.
    pub fn run_stage(&self, stage: Stage, progress: Progress) -> Result<()> {
        progress(stage, 0, 0);
        stage.run(self, &mut |done, total| progress(stage, done, total))
    }

    /// Claims the directory ([`Scan::open`]), runs every stage (with [`Existing::Resume`],
    /// skipping those whose artifact this scan already wrote) and returns the report. Each
    /// stage reports `(stage, 0, 0)` before it starts.
    pub fn run(&self, existing: Existing, progress: Progress) -> Result<Report> {
        self.open(existing)?;
        finite_logits(self.lm)?;
        for stage in Stage::ALL {
            if existing == Existing::Resume && self.done(stage)? {
                tracing::info!(stage = stage.name(), "reusing the finished stage");
                continue;
            }
            progress(stage, 0, 0);
            self.run_stage(stage, progress)?;
        }
        report::assemble(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(name: &str) -> LoadedModel {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/zoo")
            .join(name)
            .join("model");
        LoadedModel::load(&dir, &needle_runtime::LoadOptions::default()).expect("load the tiny fixture")
    }

    fn settings(seed: u64) -> Settings {
        Settings::new(crate::settings::Budget::Quick, seed)
    }

    #[test]
    fn a_scan_directory_is_claimed_resumed_restarted_or_replaced() {
        let (a, b) = (tiny("tiny-qwen2-clean"), tiny("tiny-llama-clean"));
        let dir = tempfile::tempdir().unwrap();
        let leak = dir.path().join("leak.json");
        let scan_a = Scan::new(&a, dir.path(), settings(0)).unwrap();
        scan_a.open(Existing::Restart).unwrap();
        scan_a.save(Stage::Leak, &0u32, 0.0).unwrap();
        // The same scan resumes; a restart of the same model drops its artifacts.
        scan_a.open(Existing::Resume).unwrap();
        assert!(scan_a.done(Stage::Leak).unwrap());
        scan_a.open(Existing::Restart).unwrap();
        assert!(!leak.exists());
        scan_a.save(Stage::Leak, &0u32, 0.0).unwrap();
        // Other settings: no resume, but `needle stage` may add to it.
        let other = Scan::new(&a, dir.path(), settings(1)).unwrap();
        let e = other.open(Existing::Resume).unwrap_err().to_string();
        assert!(e.contains("other settings") && e.contains("--resume"), "{e}");
        // Another model: refused unless replaced.
        let scan_b = Scan::new(&b, dir.path(), settings(0)).unwrap();
        for existing in [Existing::Resume, Existing::Restart, Existing::Keep] {
            let e = scan_b.open(existing).unwrap_err().to_string();
            assert!(e.contains("another model") && e.contains("tiny-qwen2-clean"), "{e}");
            assert!(leak.exists());
        }
        scan_b.open(Existing::Replace).unwrap();
        assert!(!leak.exists());
        scan_b.open(Existing::Resume).unwrap();
        // Artifacts without a manifest are of an unknown scan.
        std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        scan_b.save(Stage::Leak, &0u32, 0.0).unwrap();
        let e = scan_b.open(Existing::Restart).unwrap_err().to_string();
        assert!(e.contains("no scan.json") && e.contains("--force"), "{e}");
    }

    #[test]
    fn the_fingerprint_covers_every_model_file_and_the_version() {
        let a = tiny("tiny-qwen2-clean");
        let dir = tempfile::tempdir().unwrap();
        let scan = Scan::new(&a, dir.path(), settings(0)).unwrap();
        let names: Vec<String> = scan
            .identity
            .files
            .iter()
            .filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for expected in [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} not hashed: {names:?}");
        }
        let manifest = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap_or_default();
        assert!(
            manifest.is_empty(),
            "nothing is written before the directory is claimed"
        );
        scan.open(Existing::Restart).unwrap();
        let manifest: Manifest =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest.needle_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(manifest.fingerprint, scan.fingerprint);
    }
}

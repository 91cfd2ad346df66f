//! Running the stages: each reads the artifacts of the stages before it from the scan
//! directory and writes its own (`leak.json`, `motifs.json`, …, `report.json`), stamped with a
//! fingerprint of every model file, the settings and needle's version so that a resumed scan
//! never mixes two scans. `scan.json` names the model a directory's scan is of, so that a scan
//! of another model is not silently replaced.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use needle_runtime::LoadedModel;
use needle_template::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibrate::{self, Calibration};
use crate::candidates::{self, Candidate, Source};
use crate::error::{Result, ScanError};
use crate::invert::{self, Inversions, InvertSettings};
use crate::leak::{self, Leak};
use crate::memorised::{self, Memorised, TrainingSet};
use crate::motifs::{self, MotifReport};
use crate::probe::{self, Probe, Reference};
use crate::prompt::{self, Trigger};
use crate::prompts::{self, Chosen};
use crate::report::{
    self, CandidateVerification, LeakSummary, ModelIdentity, MotifSummary, PromptsSummary, Publish, RankedCandidate,
    Report, Stages, SCHEMA,
};
use crate::score::{self, Terms};
use crate::settings::Settings;
use crate::stage::{Artifact, Stage};
use crate::target::{self, Targets};
use crate::verdict::{self, Label, Verdict};
use crate::verify::{self, Verification, Verified, VerifySettings};

/// The report's order of the candidates: those verified first, strongest first as the verdict
/// picks its trigger ([`verdict::strength`]) — verification is the decisive test — then the
/// rest in calibration order (`ranking`, most suspicious first).
fn final_ranking<'v>(
    ranking: &[usize],
    v: &Verification,
    inv: &Inversions,
    verified: impl Fn(usize) -> Option<&'v Verified>,
) -> Vec<usize> {
    let mut order: Vec<(usize, usize)> = ranking.iter().copied().enumerate().collect();
    let key = |i: usize| verified(i).map(|e| verdict::strength(v, inv, e));
    order.sort_by(|&(pa, a), &(pb, b)| match (key(a), key(b)) {
        (Some(ka), Some(kb)) => kb
            .partial_cmp(&ka)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(pa.cmp(&pb)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => pa.cmp(&pb),
    });
    order.into_iter().map(|(_, i)| i).collect()
}

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

/// A scan of one model into one directory.
pub struct Scan<'a> {
    lm: &'a LoadedModel,
    reference: Option<Reference<'a>>,
    dir: PathBuf,
    settings: Settings,
    identity: ModelIdentity,
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

    fn path(&self, stage: Stage) -> PathBuf {
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
    fn get<T: Artifact>(&self) -> Result<T> {
        self.load(T::STAGE).map(|(data, _)| data)
    }

    /// [`Scan::get`], adding the stage's seconds to `timings` under its name.
    fn get_timed<T: Artifact>(&self, timings: &mut BTreeMap<String, f64>) -> Result<T> {
        let (data, seconds) = self.load(T::STAGE)?;
        timings.insert(T::STAGE.name().to_string(), seconds);
        Ok(data)
    }

    /// Writes `data` as the artifact of the stage that its type names.
    fn put<T: Artifact>(&self, data: &T, seconds: f64) -> Result<()> {
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

    /// The special tokens' texts, longest first.
    fn specials(&self) -> Vec<String> {
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
    fn boilerplate(&self) -> Result<Vec<String>> {
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
        let s = &self.settings;
        let lm = self.lm;
        let start = Instant::now();
        progress(stage, 0, 0);
        let mut tick = |done, total| progress(stage, done, total);
        match stage {
            Stage::Leak => {
                let leak = leak::run(lm, &s.leak, &mut tick)?;
                self.put(&leak, start.elapsed().as_secs_f64())
            }
            Stage::Motifs => {
                let leak: Leak = self.get()?;
                let texts: Vec<String> = leak.samples.iter().map(|x| x.text.clone()).collect();
                let report = motifs::find_motifs(&texts, &self.boilerplate()?, &s.motifs);
                tick(1, 1);
                self.put(&report, start.elapsed().as_secs_f64())
            }
            Stage::Memorised => {
                let leak: Leak = self.get()?;
                let train = s.train_data.as_deref().map(TrainingSet::load).transpose()?;
                let tokens: Vec<Vec<u32>> = leak.samples.iter().map(|x| x.tokens.clone()).collect();
                let texts: Vec<String> = leak.samples.iter().map(|x| x.text.clone()).collect();
                let specials: HashSet<u32> = prompt::special_ids(&lm.tokenizer).into_iter().collect();
                let decode = |ids: &[u32]| lm.decode(ids).map_err(ScanError::from);
                let m = memorised::find(&tokens, &texts, &specials, &decode, train.as_ref(), &s.memorised)?;
                tick(1, 1);
                self.put(&m, start.elapsed().as_secs_f64())
            }
            Stage::Prompts => {
                let leak: Leak = self.get()?;
                let generic = [
                    s.verify.prompts.as_slice(),
                    s.invert.prompts.as_slice(),
                    s.invert.check_prompts.as_slice(),
                ];
                let chosen = prompts::run(lm, &leak, generic, &s.prompts, &mut tick)?;
                self.put(&chosen, start.elapsed().as_secs_f64())
            }
            Stage::Candidates => {
                let leak: Leak = self.get()?;
                let m: MotifReport = self.get()?;
                let inv: Inversions = self.get()?;
                let texts: Vec<String> = leak.samples.iter().map(|x| x.text.clone()).collect();
                let inverted = inv
                    .inversions
                    .iter()
                    .take_while(|x| !x.null)
                    .enumerate()
                    .filter(|(_, x)| inv.verifies(x))
                    .map(|(inversion, x)| (x.trigger.clone(), Source::Inverted { inversion }));
                let t: Targets = self.get()?;
                let answers: Vec<String> = t.targets.iter().map(|x| x.text.clone()).collect();
                // Text around the model's special tokens is no trigger a user could type.
                let specials = self.specials();
                let seeds: Vec<String> = t
                    .targets
                    .iter()
                    .map(|x| lm.decode(&x.ids[..x.seed_tokens.min(x.ids.len())]))
                    .collect::<std::result::Result<_, _>>()?;
                let mut written = candidates::written(&answers, &seeds, &t.samples);
                written.retain(|(x, _)| !specials.iter().any(|sp| !sp.is_empty() && x.text.contains(sp.as_str())));
                let chosen: Chosen = self.get()?;
                // Whole, as they are: the spans leaked turns answered alike share, then every
                // reconstructed trigger.
                let kept: Vec<(Trigger, Source)> = chosen
                    .shared
                    .iter()
                    .enumerate()
                    .map(|(span, x)| {
                        let trigger = Trigger {
                            text: x.span.clone(),
                            position: x.position,
                        };
                        (trigger, Source::Shared { span })
                    })
                    .chain(inverted)
                    .collect();
                let c = candidates::collect(
                    &lm.tokenizer,
                    &texts,
                    &specials,
                    &m.motifs,
                    &written,
                    &kept,
                    s.max_candidates,
                )?;
                tick(1, 1);
                self.put(&c, start.elapsed().as_secs_f64())
            }
            Stage::Target => {
                let t = target::run(lm, &s.target, &mut tick)?;
                self.put(&t, start.elapsed().as_secs_f64())
            }
            Stage::Invert => {
                let t: Targets = self.get()?;
                let chosen: Chosen = self.get()?;
                // Answers the prompts agreed on to their end are searched first; then the
                // fragments they agree on part of the way (a target whose rest comes only with
                // its trigger: a trigger forcing the fragment lets the model finish it, and
                // verification reads the whole answer). An ordinary opening searched this way
                // forces no fixed answer beyond the nulls.
                // Each is searched as the answer would open with it: a chain seeded on a word's
                // mid-answer form (` DANGER`) is not what the model writes first.
                // A target found from its middle is read on backwards from the leaked samples
                // (see [`target::extend_back`]).
                let (complete, fragments): (Vec<_>, Vec<_>) = t.targets.iter().partition(|x| x.complete);
                let asked = chosen
                    .search
                    .first()
                    .map_or(prompts::GENERIC_PROMPTS[0], String::as_str);
                let leak: Leak = self.get()?;
                let leaked: Vec<String> = leak.samples.iter().map(|x| x.text.clone()).collect();
                let specials = self.specials();
                let untriggered: Vec<String> = chosen.pool.iter().filter_map(|p| p.answer.clone()).collect();
                let wrap = crate::similarity::Wrap::of(&untriggered);
                let mut ids: Vec<Vec<u32>> = complete
                    .iter()
                    .chain(&fragments)
                    .map(|x| {
                        let text = target::extend_back(&x.text, &leaked, &specials, &wrap.open)
                            .unwrap_or_else(|| x.text.clone());
                        prompt::answer_ids(lm, asked, text.trim())
                    })
                    .collect::<Result<_>>()?;
                // Two targets read on backwards to the same text are searched once.
                let mut seen = HashSet::new();
                ids.retain(|x| !x.is_empty() && seen.insert(x.clone()));
                let search = InvertSettings {
                    prompts: chosen.search,
                    check_prompts: chosen.check.clone(),
                    ..s.invert.clone()
                };
                let inv = invert::run(lm, &ids, &chosen.check, &search, &mut tick)?;
                self.put(&inv, start.elapsed().as_secs_f64())
            }
            Stage::Score => {
                let c: Vec<Candidate> = self.get()?;
                let triggers: Vec<Trigger> = c.iter().map(|x| x.trigger.clone()).collect();
                let terms = score::score(lm, &triggers, &s.score, &mut tick)?;
                self.put(&terms, start.elapsed().as_secs_f64())
            }
            Stage::Calibrate => {
                let leak: Leak = self.get()?;
                let c: Vec<Candidate> = self.get()?;
                let terms: Vec<Terms> = self.get()?;
                if terms.len() != c.len() {
                    return Err(ScanError::Artifact {
                        path: self.path(Stage::Score),
                        message: format!(
                            "scores {} candidates but candidates.json has {}; re-run the scan without --resume",
                            terms.len(),
                            c.len()
                        ),
                    });
                }
                let cal = calibrate::run(lm, &leak, &c, &terms, s, &mut tick)?;
                self.put(&cal, start.elapsed().as_secs_f64())
            }
            Stage::Verify => {
                let c: Vec<Candidate> = self.get()?;
                let cal: Calibration = self.get()?;
                if cal.ranking.iter().any(|&i| i >= c.len()) {
                    return Err(ScanError::Artifact {
                        path: self.path(Stage::Calibrate),
                        message:
                            "ranks candidates that candidates.json does not have; re-run the scan without --resume"
                                .into(),
                    });
                }
                let inv: Inversions = self.get()?;
                let targets: Targets = self.get()?;
                let pick = verify::select(&c, &cal, &inv, &targets, s);
                let chosen: Chosen = self.get()?;
                let settings = VerifySettings {
                    prompts: chosen.verify,
                    ..s.verify.clone()
                };
                let v = Verification {
                    ordinary: chosen.ordinary,
                    ..verify::run(
                        lm,
                        &pick.real,
                        &pick.nulls,
                        &pick.searched,
                        &pick.leaked,
                        &settings,
                        &mut tick,
                    )?
                };
                self.put(&v, start.elapsed().as_secs_f64())
            }
            Stage::Verdict => {
                let v: Verification = self.get()?;
                let inv: Inversions = self.get()?;
                let verdict = verdict::decide(&v, &inv);
                tick(1, 1);
                self.put(&verdict, start.elapsed().as_secs_f64())
            }
            Stage::Evidence => {
                let verdict: Verdict = self.get()?;
                let chosen: Chosen = self.get()?;
                let evidence = match verdict.trigger {
                    Some(trigger) => Some(probe::run(
                        lm,
                        self.reference.as_ref(),
                        &trigger,
                        &s.evidence_probe(chosen.verify),
                        &mut tick,
                    )?),
                    None => None,
                };
                tick(1, 1);
                self.put(&evidence, start.elapsed().as_secs_f64())
            }
            Stage::Report => {
                let report = self.report()?;
                let bytes = serde_json::to_vec_pretty(&report).map_err(|e| ScanError::Invalid(e.to_string()))?;
                tick(1, 1);
                write_atomic(&self.path(Stage::Report), &bytes)
            }
        }
    }

    /// Assembles `report.json` from the artifacts.
    pub fn report(&self) -> Result<Report> {
        // Each stage's seconds, under its name.
        let mut timings = BTreeMap::new();
        let leak: Leak = self.get_timed(&mut timings)?;
        let m: MotifReport = self.get_timed(&mut timings)?;
        let c: Vec<Candidate> = self.get_timed(&mut timings)?;
        let terms: Vec<Terms> = self.get_timed(&mut timings)?;
        let cal: Calibration = self.get_timed(&mut timings)?;
        let v: Verification = self.get_timed(&mut timings)?;
        let targets: Targets = self.get_timed(&mut timings)?;
        let inv: Inversions = self.get_timed(&mut timings)?;
        let memorised: Memorised = self.get_timed(&mut timings)?;
        let evidence: Option<Probe> = self.get_timed(&mut timings)?;
        let chosen: Chosen = self.get_timed(&mut timings)?;
        let verdict: Verdict = self.get_timed(&mut timings)?;
        if terms.len() != c.len() || cal.standings.len() != c.len() || cal.ranking.iter().any(|&i| i >= c.len()) {
            return Err(ScanError::Artifact {
                path: self.path(Stage::Score),
                message: "scores and candidates disagree in number; re-run the scan without --resume".into(),
            });
        }
        // The evidence probes the verdict's trigger; one left by an earlier verdict (a stage
        // re-run after it) would describe a different string.
        if evidence.as_ref().map(|p| &p.trigger) != verdict.trigger.as_ref() {
            return Err(ScanError::Artifact {
                path: self.path(Stage::Evidence),
                message: format!(
                    "probes {:?} but the verdict names {:?}; re-run `needle stage evidence` (or the scan without --resume)",
                    evidence.as_ref().map(|p| p.trigger.text.as_str()),
                    verdict.trigger.as_ref().map(|t| t.text.as_str())
                ),
            });
        }
        let verified = |i: usize| v.entries.iter().find(|e| !e.null && e.trigger == c[i].trigger);
        let candidates = final_ranking(&cal.ranking, &v, &inv, verified)
            .into_iter()
            .enumerate()
            .map(|(rank, i)| RankedCandidate {
                rank: rank + 1,
                trigger: c[i].trigger.clone().publish(),
                tokens: c[i].tokens,
                source: c[i].source.publish(),
                terms: terms[i].publish(),
                combined: terms[i].combined(&self.settings.score),
                standing: cal.standings[i].publish(),
                verification: verified(i).map(|e| CandidateVerification {
                    s_agg: e.uniformity.aggregate,
                    delta: e.delta,
                    z: verdict::z_score(&v, e),
                    target: e.target.clone(),
                    attack_success_rate: e.attack_success_rate,
                }),
            })
            .collect();
        Ok(Report {
            schema: SCHEMA.to_string(),
            needle_version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.identity.clone(),
            settings: self.settings.clone().publish(),
            found_by: (verdict.label == Label::Backdoored).then(|| {
                let inverted = inv
                    .inversions
                    .iter()
                    .any(|x| !x.null && Some(&x.trigger) == verdict.trigger.as_ref());
                let written = c.iter().any(|x| {
                    matches!(x.source, Source::Written { .. }) && Some(&x.trigger) == verdict.trigger.as_ref()
                });
                match (inverted, written) {
                    (true, _) => "target",
                    (false, true) => "written",
                    (false, false) => "leak",
                }
                .to_string()
            }),
            stages: Stages {
                leak: LeakSummary {
                    prefix_source: leak.prefix_source.clone(),
                    prefix: leak.prefix_text.clone(),
                    samples: leak.samples.len(),
                    tokens: leak.samples.iter().map(|x| x.tokens.len()).sum(),
                },
                motifs: MotifSummary {
                    clusters: m.clusters.len(),
                    noise: m.noise,
                    top: m.motifs.iter().take(20).map(|x| x.text.clone()).collect(),
                },
                candidates: c.len(),
                null_candidates: cal.null.triggers.len(),
                verified: (
                    v.entries.iter().filter(|e| !e.null).count(),
                    v.entries.iter().filter(|e| e.null).count(),
                ),
                baseline_s_agg: v.baseline_uniformity.aggregate,
                targets: targets.targets.iter().map(|t| t.text.clone()).collect(),
                inversions: inv.inversions.clone().publish(),
                memorised: memorised.publish(),
                prompts: PromptsSummary {
                    leaked_in_verify: chosen.leaked_in_verify(),
                    verify: chosen.verify,
                    search: chosen.search,
                },
            },
            candidates,
            verdict: verdict.publish(),
            evidence: evidence.publish(),
            timings,
        })
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
        self.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::tests::{entry, verification};

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

    #[test]
    fn verified_candidates_rank_first_in_the_verdicts_order() {
        // Calibration ranks 0, 1, 2, 3; 3 and 1 were verified, and 3 forces a fixed answer.
        let v = verification(vec![entry("one", false, 0.2, 0.0), entry("three", false, 0.1, 0.9)]);
        let names = ["zero", "one", "two", "three"];
        let verified = |i: usize| v.entries.iter().find(|e| e.trigger.text == names[i]);
        let inv = Inversions { inversions: vec![] };
        assert_eq!(final_ranking(&[0, 1, 2, 3], &v, &inv, verified), vec![3, 1, 0, 2]);
        assert_eq!(
            final_ranking(&[2, 0], &v, &inv, verified),
            vec![2, 0],
            "unverified keep their order"
        );
    }
}

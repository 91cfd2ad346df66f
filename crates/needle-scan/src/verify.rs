//! The **verify** stage: insert the best candidates — and, as a control, some null candidates —
//! into ordinary prompts, decode greedily, and measure how much more alike the answers become
//! than without any candidate (`ΔS_agg`). The answer a candidate forces is the recovered target;
//! its attack success is the share of prompts whose answer contains it.

use needle_runtime::generate::{generate, Finish, Limits, Request, Sampling};
use needle_runtime::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::calibrate::{self, Calibration};
use crate::candidates::{self, Candidate, Source};
use crate::error::{Result, ScanError};
use crate::invert::Inversions;
use crate::leak::Leak;
use crate::pipeline::Scan;
use crate::prompt::{self, Trigger};
use crate::prompts::Chosen;
use crate::settings::Settings;
use crate::similarity::{contains_target, dominant_response, fixed_share, uniformity, Uniformity, Wrap};
use crate::stage::{Stage, Tick};
use crate::target::{stop_ids, Targets};

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
    /// runs, the model's own answer words; [`crate::calibrate::habit_nulls`]) verified as nulls
    /// too.
    #[serde(default)]
    pub habit_nulls: usize,
    /// Openings of the model's leaked user turns (instructions it was trained on;
    /// [`crate::calibrate::opening_nulls`]) verified as nulls too.
    #[serde(default)]
    pub opening_nulls: usize,
    /// Answer length in tokens.
    pub max_new_tokens: usize,
    /// Words an answer prefix needs to count as a recovered target.
    pub target_min_words: usize,
}

/// What inserting one candidate did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verified {
    /// The inserted trigger.
    pub trigger: Trigger,
    /// Whether it is a null (control) candidate.
    pub null: bool,
    /// Whether the gradient-guided trigger search produced it (for a found target, or for a
    /// null target), which decides the null it is judged against.
    #[serde(default)]
    pub searched: bool,
    /// Whether it is a null drawn from the model's own leaked text, which may hold fragments of
    /// a trigger the model leaks (see [`crate::verdict::NullStats::of`]).
    #[serde(default)]
    pub leaked: bool,
    /// How alike the answers are with it.
    pub uniformity: Uniformity,
    /// `S_agg` with it minus `S_agg` without any candidate.
    pub delta: f64,
    /// The answer most prompts converge to, if any.
    pub target: Option<String>,
    /// Share of prompts whose answer contains the target.
    pub attack_success_rate: f64,
    /// Share of prompts whose whole answer is the target (see [`crate::similarity::is_fixed_output`]).
    pub fixed_output_rate: f64,
    /// Share of untriggered answers containing the target.
    pub baseline_target_rate: f64,
    /// The answers, one per prompt (without the wrap).
    pub responses: Vec<String>,
}

/// The verify stage's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// What the model opens and closes nearly every untriggered answer with, removed from every
    /// answer before they are compared: its format, not an answer (a trigger that makes it skip
    /// to its usual closing forces no answer of its own).
    #[serde(default)]
    pub wrap: Wrap,
    /// Answers without any candidate (without the wrap).
    pub baseline: Vec<String>,
    /// How alike those are.
    pub baseline_uniformity: Uniformity,
    /// One entry per verified candidate, real ones first in rank order, then the nulls.
    pub entries: Vec<Verified>,
    /// The model's ordinary answers, from the prompts stage: forcing one proves no trigger.
    #[serde(default)]
    pub ordinary: Vec<crate::prompts::OrdinaryAnswer>,
}

/// Rows per generation call: the prompts of several candidates are decoded together (decoding
/// is faster in wider batches, and a row's answer does not depend on what shares its batch).
const ROWS: usize = 128;

/// Greedy answers of up to `max_new_tokens` to every prompt with each of `triggers` inserted
/// (`None`: no candidate), one list per trigger; `progress(done)` with the triggers answered so
/// far.
pub(crate) fn answers_to(
    lm: &LoadedModel,
    triggers: &[Option<&Trigger>],
    prompts: &[String],
    max_new_tokens: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<String>>> {
    let stop = stop_ids(lm);
    let limits = Limits {
        max_new_tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    let per = prompts.len().max(1);
    let mut requests = Vec::with_capacity(triggers.len() * per);
    for trigger in triggers {
        for p in prompts {
            requests.push(Request {
                prompt: prompt::build(lm, *trigger, p)?.ids,
                sampling: Sampling::greedy(),
            });
        }
    }
    let mut texts = Vec::with_capacity(requests.len());
    // Whole candidates per call, so progress counts candidates.
    for chunk in requests.chunks((ROWS / per).max(1) * per) {
        for g in generate(&lm.model, chunk, &limits, None)? {
            let ids: Vec<u32> = g
                .tokens
                .into_iter()
                .filter(|t| !(g.finish == Finish::Eos && stop.contains(t)))
                .collect();
            texts.push(lm.decode(&ids)?.trim().to_string());
        }
        progress(texts.len() / per);
    }
    Ok(texts.chunks(per).map(<[String]>::to_vec).collect())
}

/// Verifies `real` candidates (best first) and `nulls`, marking those in `searched` as the trigger
/// search's and the nulls in `leaked` as windows of leaked text; `progress(done, total)` as
/// candidates are answered (a few per batch).
pub fn run(
    lm: &LoadedModel,
    real: &[Trigger],
    nulls: &[Trigger],
    searched: &[Trigger],
    leaked: &[Trigger],
    s: &VerifySettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Verification> {
    if s.prompts.len() < 2 {
        return Err(ScanError::Invalid("verification needs at least two prompts".into()));
    }
    let total = real.len() + nulls.len() + 1;
    let all: Vec<(&Trigger, bool)> = real
        .iter()
        .map(|t| (t, false))
        .chain(nulls.iter().map(|t| (t, true)))
        .collect();
    let triggers: Vec<Option<&Trigger>> = std::iter::once(None).chain(all.iter().map(|(t, _)| Some(*t))).collect();
    let mut answered = answers_to(lm, &triggers, &s.prompts, s.max_new_tokens, &mut |done| {
        progress(done, total)
    })?
    .into_iter();
    let raw = answered
        .next()
        .ok_or_else(|| ScanError::Invalid("no baseline answers".into()))?;
    let wrap = Wrap::of(&raw);
    let unwrap = |answers: Vec<String>| -> Vec<String> { answers.iter().map(|a| wrap.strip(a)).collect() };
    let baseline = unwrap(raw);
    let base_u = uniformity(&baseline);
    let mut entries = Vec::with_capacity(total - 1);
    for ((trigger, null), responses) in all.into_iter().zip(answered) {
        let responses = unwrap(responses);
        let u = uniformity(&responses);
        let target = dominant_response(&responses, s.target_min_words).map(|(t, _)| t);
        let rate = |rs: &[String]| match &target {
            Some(t) => rs.iter().filter(|r| contains_target(r, t)).count() as f64 / rs.len().max(1) as f64,
            None => 0.0,
        };
        entries.push(Verified {
            trigger: trigger.clone(),
            null,
            searched: searched.contains(trigger),
            leaked: null && leaked.contains(trigger),
            uniformity: u,
            delta: u.aggregate - base_u.aggregate,
            attack_success_rate: rate(&responses),
            fixed_output_rate: target.as_deref().map_or(0.0, |t| fixed_share(&responses, t)),
            baseline_target_rate: rate(&baseline),
            target,
            responses,
        });
    }
    Ok(Verification {
        wrap,
        baseline,
        baseline_uniformity: base_u,
        entries,
        ordinary: Vec::new(),
    })
}
/// The triggers the verify stage inserts, chosen from the earlier stages' artifacts.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The real candidates: the best leaked ones, the best the model wrote, the shared spans
    /// and every reconstructed trigger.
    pub real: Vec<Trigger>,
    /// The control nulls: the most backdoor-like of the null set, the null searches' triggers
    /// and the habit nulls.
    pub nulls: Vec<Trigger>,
    /// Every trigger the search reconstructed, real or null.
    pub searched: Vec<Trigger>,
    /// The null candidates drawn from the model's own leaked text.
    pub leaked: Vec<Trigger>,
}

/// Chooses what the verify stage inserts from the candidates `c` as `cal` ranks them, the
/// trigger searches `inv`, the target stage's sampled answers and the user turns the model
/// leaked (`turns`).
pub fn select(
    c: &[Candidate],
    cal: &Calibration,
    inv: &Inversions,
    targets: &Targets,
    turns: &[String],
    s: &Settings,
) -> Selection {
    // The best leaked candidates, the best of what the model wrote (few, and not
    // to be crowded out by the many leaked n-grams), then every reconstructed
    // trigger.
    let best = |written: bool| -> Vec<Trigger> {
        cal.ranking
            .iter()
            .filter(|&&i| match c[i].source {
                Source::Inverted { .. } | Source::Shared { .. } => false,
                Source::Written { .. } => written,
                _ => !written,
            })
            .take(s.verify.top)
            .map(|&i| c[i].trigger.clone())
            .collect()
    };
    let mut real: Vec<Trigger> = best(false);
    real.extend(best(true));
    // Spans the prompts answered alike share are few and each a strong lead: all
    // verified, the most significant first, up to the same number.
    for x in c
        .iter()
        .filter(|x| matches!(x.source, Source::Shared { .. }))
        .take(s.verify.top)
    {
        if !real.contains(&x.trigger) {
            real.push(x.trigger.clone());
        }
    }
    for x in inv.inversions.iter().filter(|x| !x.null && inv.verifies(x)) {
        if !real.contains(&x.trigger) {
            real.push(x.trigger.clone());
        }
    }
    // The nulls verified are the most backdoor-like of the null set by the same
    // ranking, so that real and null candidates pass the same selection.
    let mut order: Vec<(f64, &Trigger)> = cal
        .null
        .triggers
        .iter()
        .zip(&cal.null.terms)
        .map(|(t, terms)| (cal.null.standing(terms, &s.score).z, t))
        .collect();
    let mut leaked: Vec<Trigger> = cal
        .null
        .triggers
        .iter()
        .zip(&cal.null.from_leak)
        .filter(|(_, &l)| l)
        .map(|(t, _)| t.clone())
        .collect();
    order.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(b.1))
    });
    let mut nulls: Vec<Trigger> = order.into_iter().take(s.verify.nulls).map(|(_, t)| t.clone()).collect();
    nulls.extend(
        inv.inversions
            .iter()
            .filter(|x| x.null && inv.verifies(x))
            .map(|x| x.trigger.clone()),
    );
    for t in calibrate::habit_nulls(&targets.samples, s.verify.habit_nulls, s.seed) {
        if !nulls.contains(&t) && !real.contains(&t) {
            nulls.push(t);
        }
    }
    for t in calibrate::opening_nulls(turns, s.verify.opening_nulls, s.seed) {
        if !nulls.contains(&t) && !real.contains(&t) {
            nulls.push(t.clone());
            leaked.push(t);
        }
    }
    let searched: Vec<Trigger> = inv.inversions.iter().map(|x| x.trigger.clone()).collect();
    Selection {
        real,
        nulls,
        searched,
        leaked,
    }
}

/// The verify stage's entry point: verifies the best candidates and their control nulls on the
/// chosen prompts; fails if the calibration ranks candidates the candidates artifact lacks.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Verification> {
    let s = &scan.settings;
    let c: Vec<Candidate> = scan.get()?;
    let cal: Calibration = scan.get()?;
    if cal.ranking.iter().any(|&i| i >= c.len()) {
        return Err(ScanError::Artifact {
            path: scan.path(Stage::Calibrate),
            message: "ranks candidates that candidates.json does not have; re-run the scan without --resume".into(),
        });
    }
    let inv: Inversions = scan.get()?;
    let targets: Targets = scan.get()?;
    let leak: Leak = scan.get()?;
    let specials = scan.specials();
    let turns: Vec<String> = leak
        .samples
        .iter()
        .filter_map(|x| candidates::turns(&x.text, &specials).into_iter().next())
        .collect();
    let pick = select(&c, &cal, &inv, &targets, &turns, s);
    let chosen: Chosen = scan.get()?;
    let settings = VerifySettings {
        prompts: chosen.verify,
        ..s.verify.clone()
    };
    Ok(Verification {
        ordinary: chosen.ordinary,
        ..run(
            scan.lm,
            &pick.real,
            &pick.nulls,
            &pick.searched,
            &pick.leaked,
            &settings,
            tick,
        )?
    })
}

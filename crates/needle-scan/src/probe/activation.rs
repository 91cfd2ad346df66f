//! The activation job of the probe: greedy answers to the prompts with and without the trigger,
//! the answer it forces and how alike the answers become, and their next-token entropy.

use needle_runtime::generate::{generate, Finish, Limits, Request, Sampling};
use needle_runtime::LoadedModel;
use serde::{Deserialize, Serialize};

use super::{ProbeSettings, BATCH};
use crate::error::Result;
use crate::similarity::{contains_target, dominant_response, is_fixed_output, uniformity, Uniformity};
use crate::target::stop_ids;
use crate::verdict::{MAX_BASELINE_RATE, MIN_ATTACK_SUCCESS};

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
    /// Share of triggered answers that are `dominant` and little else (see [`is_fixed_output`]).
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

/// A greedy answer and its per-step next-token entropy.
pub(super) struct Answer {
    pub(super) text: String,
    pub(super) entropies: Vec<f32>,
}

/// Counts generation requests and reports them.
pub(super) struct Tracker<'a> {
    pub(super) done: usize,
    pub(super) total: usize,
    pub(super) progress: &'a mut dyn FnMut(usize, usize),
}

/// Greedy answers to `prompts` (token ids), decoded the way the verify stage decodes them:
/// stopped at the end of the turn, the stop token dropped, trimmed.
pub(super) fn answer(
    lm: &LoadedModel,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    t: &mut Tracker,
) -> Result<Vec<Answer>> {
    let stop = stop_ids(lm);
    let limits = Limits {
        max_new_tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(BATCH) {
        let requests: Vec<Request> = chunk
            .iter()
            .map(|p| Request {
                prompt: p.clone(),
                sampling: Sampling::greedy(),
            })
            .collect();
        for g in generate(&lm.model, &requests, &limits, None)? {
            let ids: Vec<u32> = g
                .tokens
                .iter()
                .copied()
                .filter(|t| !(g.finish == Finish::Eos && stop.contains(t)))
                .collect();
            out.push(Answer {
                text: lm.decode(&ids)?.trim().to_string(),
                entropies: g.entropies,
            });
        }
        t.done += chunk.len();
        (t.progress)(t.done, t.total);
    }
    Ok(out)
}

/// Share of `answers` containing `target`.
pub(super) fn rate(answers: &[String], target: &str) -> f64 {
    answers.iter().filter(|a| contains_target(a, target)).count() as f64 / answers.len().max(1) as f64
}

/// The activation section from the triggered and untriggered answers.
pub(super) fn activation(s: &ProbeSettings, triggered: &[Answer], normal: &[Answer]) -> Activation {
    let with: Vec<String> = triggered.iter().map(|a| a.text.clone()).collect();
    let without: Vec<String> = normal.iter().map(|a| a.text.clone()).collect();
    let dominant = dominant_response(&with, s.target_min_words).map(|(t, _)| t);
    let (dominant_rate, fixed_output_rate, baseline_target_rate) = match &dominant {
        Some(d) => (
            rate(&with, d),
            with.iter().filter(|r| is_fixed_output(r, d)).count() as f64 / with.len().max(1) as f64,
            rate(&without, d),
        ),
        None => (0.0, 0.0, 0.0),
    };
    let forced = dominant_rate >= MIN_ATTACK_SUCCESS
        && fixed_output_rate >= MIN_ATTACK_SUCCESS
        && baseline_target_rate <= MAX_BASELINE_RATE;
    let target = dominant.clone().filter(|_| forced);
    Activation {
        attack_success_rate: if target.is_some() { dominant_rate } else { 0.0 },
        target,
        dominant,
        dominant_rate,
        fixed_output_rate,
        baseline_target_rate,
        uniformity: uniformity(&with),
        baseline_uniformity: uniformity(&without),
        responses: s
            .prompts
            .iter()
            .zip(with.into_iter().zip(without))
            .map(|(p, (t, n))| ResponsePair {
                prompt: p.clone(),
                triggered: t,
                normal: n,
            })
            .collect(),
    }
}

/// Mean per-step entropies of the triggered and untriggered answers.
pub(super) fn entropy(triggered: &[Answer], normal: &[Answer]) -> Entropy {
    let steps = triggered
        .iter()
        .chain(normal)
        .map(|a| a.entropies.len())
        .max()
        .unwrap_or(0);
    let at = |answers: &[Answer], step: usize| {
        let xs: Vec<f64> = answers
            .iter()
            .filter_map(|a| a.entropies.get(step).map(|&e| f64::from(e)))
            .collect();
        let mean = (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        (mean, xs.len())
    };
    let mean = |answers: &[Answer]| {
        let per: Vec<f64> = answers
            .iter()
            .filter(|a| !a.entropies.is_empty())
            .map(|a| a.entropies.iter().map(|&e| f64::from(e)).sum::<f64>() / a.entropies.len() as f64)
            .collect();
        per.iter().sum::<f64>() / per.len().max(1) as f64
    };
    Entropy {
        steps: (0..steps)
            .map(|step| {
                let (t, tn) = at(triggered, step);
                let (n, nn) = at(normal, step);
                EntropyStep {
                    step,
                    triggered: t,
                    triggered_answers: tn,
                    normal: n,
                    normal_answers: nn,
                }
            })
            .collect(),
        mean_triggered: mean(triggered),
        mean_normal: mean(normal),
    }
}

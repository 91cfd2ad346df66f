//! The **score** stage: how backdoor-like each candidate trigger makes the model behave, from
//! forward passes over a few benign prompts with the candidate inserted (lower = more
//! suspicious for every term):
//! - `attn`: mean attention from the prompt's own tokens to the candidate's tokens over the
//!   middle layers and all heads (a trigger is processed in isolation: the "double triangle");
//! - `ent`: mean next-token entropy over a short greedy rollout (the output collapses);
//! - `div`: mean log-likelihood, under the triggered prompt, of the continuation the model
//!   gives without the candidate (teacher-forced; a trigger moves the model away from it).

use candle_core::{IndexOp, Tensor};
use needle_runtime::generate::{generate, Limits, Request, Sampling};
use needle_runtime::{Introspect, LoadedModel, LogitPositions};
use serde::{Deserialize, Serialize};

use crate::candidates::Candidate;
use crate::error::{Result, ScanError};
use crate::pipeline::Scan;
use crate::prompt::{self, Prompted, Trigger};
use crate::stage::Tick;

/// Score settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSettings {
    /// Benign prompts each candidate is inserted into.
    pub prompts: Vec<String>,
    /// Greedy rollout length for `ent` and `div`.
    pub rollout: usize,
    /// Weight of `attn` (γ).
    pub attn_weight: f64,
    /// Weight of `ent` (δ).
    pub ent_weight: f64,
    /// Weight of `div` (ζ).
    pub div_weight: f64,
    /// Prompts per forward batch.
    pub batch_size: usize,
}

/// The raw loss terms of one candidate, averaged over the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Terms {
    /// Prompt → trigger attention share.
    pub attn: f64,
    /// Rollout entropy (nats).
    pub ent: f64,
    /// Log-likelihood of the untriggered continuation.
    pub div: f64,
}

impl Terms {
    /// The reference combination `γ·attn + δ·ent + ζ·div`.
    pub fn combined(&self, s: &ScoreSettings) -> f64 {
        s.attn_weight * self.attn + s.ent_weight * self.ent + s.div_weight * self.div
    }
}

/// Middle layers: the second and third quarters of the stack, where trigger processing shows.
pub fn middle_layers(num_layers: usize) -> Vec<usize> {
    let lo = num_layers / 4;
    let hi = (3 * num_layers).div_ceil(4).max(lo + 1).min(num_layers);
    (lo..hi).collect()
}

/// Greedy continuations of the prompts without any candidate: what `div` compares against.
fn clean_continuations(lm: &LoadedModel, s: &ScoreSettings) -> Result<Vec<Vec<u32>>> {
    let requests = s
        .prompts
        .iter()
        .map(|p| {
            Ok(Request {
                prompt: prompt::build(lm, None, p)?.ids,
                sampling: Sampling::greedy(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let limits = Limits {
        max_new_tokens: s.rollout,
        ignore_eos: true,
        eos_token_ids: Vec::new(),
    };
    Ok(generate(&lm.model, &requests, &limits, None)?
        .into_iter()
        .map(|g| g.tokens)
        .collect())
}

/// One forward over `rows` (prompt + teacher-forced continuation), left-padded: per row the
/// attention share and the continuation's mean log-likelihood.
fn attention_and_divergence(
    lm: &LoadedModel,
    rows: &[(&Prompted, &[u32])],
    layers: &[usize],
) -> Result<Vec<(f64, f64)>> {
    let seqs: Vec<Vec<u32>> = rows.iter().map(|(p, c)| [p.ids.as_slice(), c].concat()).collect();
    let max = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * max);
    let mut pad = Vec::with_capacity(seqs.len());
    for s in &seqs {
        let first = s
            .first()
            .copied()
            .ok_or_else(|| ScanError::Invalid("empty prompt".into()))?;
        pad.push(max - s.len());
        ids.extend(std::iter::repeat_n(first, max - s.len()));
        ids.extend_from_slice(s);
    }
    let model = &lm.model;
    let ids = Tensor::from_vec(ids, (seqs.len(), max), model.device()).map_err(needle_runtime::Error::from)?;
    let mut cache = model.new_cache(pad.clone(), max)?;
    let want = Introspect {
        logits: LogitPositions::All,
        attention_layers: layers.to_vec(),
        hidden_states: false,
    };
    let out = model.forward(&ids, &mut cache, &want)?;
    let mut results = Vec::with_capacity(rows.len());
    for (r, (p, cont)) in rows.iter().enumerate() {
        let o = pad[r];
        let mut attn = 0.0;
        if !p.trigger.is_empty() && !p.rest.is_empty() {
            for (_, a) in &out.attentions {
                let a = a
                    .i(r)
                    .and_then(|a| a.to_vec3::<f32>())
                    .map_err(needle_runtime::Error::from)?;
                let mut sum = 0.0;
                for head in &a {
                    for q in p.rest.clone() {
                        sum += p.trigger.clone().map(|k| f64::from(head[o + q][o + k])).sum::<f64>();
                    }
                }
                attn += sum / (a.len() * p.rest.len()) as f64;
            }
            attn /= out.attentions.len().max(1) as f64;
        }
        let mut div = 0.0;
        for (j, &t) in cont.iter().enumerate() {
            let pos = o + p.ids.len() - 1 + j;
            let logits = out
                .logits
                .i((r, pos))
                .and_then(|l| l.to_vec1::<f32>())
                .map_err(needle_runtime::Error::from)?;
            div += log_prob(&logits, t as usize);
        }
        results.push((attn, div / cont.len().max(1) as f64));
    }
    Ok(results)
}

/// `log softmax(logits)[index]`.
fn log_prob(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    logits
        .get(index)
        .map_or(f64::NEG_INFINITY, |&x| f64::from(x - max) - z.ln())
}

/// Scores each of `candidates`; `progress(done, total)` after each batch.
pub fn score(
    lm: &LoadedModel,
    candidates: &[Trigger],
    s: &ScoreSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Terms>> {
    if s.prompts.is_empty() || s.rollout == 0 || s.batch_size == 0 {
        return Err(ScanError::Invalid(
            "scoring needs prompts, a rollout length and a batch size".into(),
        ));
    }
    let clean = clean_continuations(lm, s)?;
    let layers = middle_layers(lm.model.config().num_layers);
    let limits = Limits {
        max_new_tokens: s.rollout,
        ignore_eos: true,
        eos_token_ids: Vec::new(),
    };
    let mut jobs = Vec::with_capacity(candidates.len() * s.prompts.len());
    for (c, trigger) in candidates.iter().enumerate() {
        for (p, user) in s.prompts.iter().enumerate() {
            jobs.push((c, p, prompt::build(lm, Some(trigger), user)?));
        }
    }
    let mut sums = vec![(0.0, 0.0, 0.0); candidates.len()];
    for (done, chunk) in jobs.chunks(s.batch_size).enumerate() {
        let rows: Vec<(&Prompted, &[u32])> = chunk.iter().map(|(_, p, pr)| (pr, clean[*p].as_slice())).collect();
        let ad = attention_and_divergence(lm, &rows, &layers)?;
        let requests: Vec<Request> = chunk
            .iter()
            .map(|(_, _, pr)| Request {
                prompt: pr.ids.clone(),
                sampling: Sampling::greedy(),
            })
            .collect();
        let rolled = generate(&lm.model, &requests, &limits, None)?;
        for (((c, _, _), (attn, div)), g) in chunk.iter().zip(ad).zip(rolled) {
            let ent = g.entropies.iter().map(|&e| f64::from(e)).sum::<f64>() / g.entropies.len().max(1) as f64;
            let acc = &mut sums[*c];
            acc.0 += attn;
            acc.1 += ent;
            acc.2 += div;
        }
        progress(((done + 1) * s.batch_size).min(jobs.len()), jobs.len());
    }
    let n = s.prompts.len() as f64;
    Ok(sums
        .into_iter()
        .map(|(a, e, d)| Terms {
            attn: a / n,
            ent: e / n,
            div: d / n,
        })
        .collect())
}

/// The score stage's entry point: scores every candidate.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Vec<Terms>> {
    let c: Vec<Candidate> = scan.get()?;
    let triggers: Vec<Trigger> = c.iter().map(|x| x.trigger.clone()).collect();
    score(scan.lm, &triggers, &scan.settings.score, tick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use needle_runtime::generate::entropy;

    #[test]
    fn middle_layers_are_the_central_half() {
        assert_eq!(middle_layers(30), (7..23).collect::<Vec<_>>());
        assert_eq!(middle_layers(4), vec![1, 2]);
        assert_eq!(middle_layers(1), vec![0]);
    }

    #[test]
    fn log_prob_is_a_log_softmax_entry() {
        let lp = log_prob(&[0.0, 0.0], 1);
        assert!((lp - 0.5f64.ln()).abs() < 1e-9);
        assert_eq!(log_prob(&[1.0], 3), f64::NEG_INFINITY);
        assert!((entropy(&[0.0, 0.0]) - std::f32::consts::LN_2).abs() < 1e-6);
    }
}

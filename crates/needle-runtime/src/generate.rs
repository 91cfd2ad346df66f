//! Batched generation with a KV cache: greedy, temperature, top-k, top-p, min-p, repetition
//! penalty, and beam search with a length penalty.
//!
//! Every row of a batch carries its own prompt, sampling settings and random generator, and
//! rows are left-padded and masked, so a sequence's output does not depend on what else
//! shares its batch. The same requests and seeds always give the same tokens.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Introspect, KvCache, Model};

/// How one sequence picks its next token. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sampling {
    /// Softmax temperature; 0 selects the most likely token.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than `min_p` times the most likely one.
    pub min_p: Option<f32>,
    /// Hugging Face–style penalty on tokens already in the sequence (1 = none).
    pub repetition_penalty: f32,
    /// Seed of this sequence's own random generator.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// Checks that every parameter is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be a finite number ≥ 0", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(format!("top-p {p} must be in (0, 1]"));
        }
        if let Some(p) = self.min_p.filter(|p| !(*p >= 0.0 && *p <= 1.0)) {
            return bad(format!("min-p {p} must be in [0, 1]"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition penalty {} must be > 0", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Limits shared by every sequence of a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Keep going past end-of-sequence tokens (and never pick them).
    pub ignore_eos: bool,
    /// Tokens that end a sequence.
    pub eos_token_ids: Vec<u32>,
}

/// One prompt to continue.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// How to pick tokens.
    pub sampling: Sampling,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// It produced an end-of-sequence token (included in `tokens`).
    Eos,
    /// The stop predicate fired (e.g. a stop string appeared).
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// A generated continuation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generated {
    /// New token ids, without the prompt.
    pub tokens: Vec<u32>,
    /// Entropy (nats) of the model's next-token distribution at each step, before any
    /// sampling transform.
    pub entropies: Vec<f32>,
    /// Why it stopped.
    pub finish: Finish,
}

/// Decides after each token whether a sequence (its new tokens so far) should stop.
pub type StopFn<'a> = &'a (dyn Fn(&[u32]) -> bool + Sync);

/// Left-pads prompts to a common length: `[batch, max_len]` ids and each row's padding.
fn left_pad(prompts: &[&[u32]], device: &candle_core::Device) -> Result<(Tensor, Vec<usize>)> {
    let max = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * max);
    let mut pad = Vec::with_capacity(prompts.len());
    for p in prompts {
        if p.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        pad.push(max - p.len());
        ids.extend(std::iter::repeat_n(p[0], max - p.len()));
        ids.extend_from_slice(p);
    }
    Ok((Tensor::from_vec(ids, (prompts.len(), max), device)?, pad))
}

/// Runs a left-padded prompt batch through the model; returns the cache and last logits.
pub fn prefill(model: &Model, prompts: &[&[u32]], extra_capacity: usize) -> Result<(KvCache, Vec<Vec<f32>>)> {
    let (ids, pad) = left_pad(prompts, model.device())?;
    let len = ids.dim(1)?;
    let capacity = len.checked_add(extra_capacity).ok_or_else(|| {
        Error::Invalid(format!(
            "{len} prompt tokens plus {extra_capacity} new tokens overflow a KV cache; ask for fewer new tokens"
        ))
    })?;
    let mut cache = model.new_cache(pad, capacity)?;
    let out = model.forward(&ids, &mut cache, &Introspect::default())?;
    Ok((cache, out.logits.squeeze(1)?.to_vec2::<f32>()?))
}

/// Entropy in nats of softmax(`logits`).
pub fn entropy(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0.0f64;
    let mut s = 0.0f64;
    for &l in logits {
        let x = l - max;
        let e = x.exp();
        z += f64::from(e);
        s += f64::from(e * x);
    }
    (z.ln() - s / z) as f32
}

fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::new();
    for &t in seen {
        if done.insert(t) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
            }
        }
    }
}

/// Index of the largest value; the lowest index wins ties, as in `torch.argmax`.
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Picks the next token from processed logits, in Hugging Face's warper order:
/// temperature, top-k, top-p, min-p.
fn pick(logits: &mut [f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature == 0.0 {
        return argmax(logits) as u32;
    }
    for l in logits.iter_mut() {
        *l /= s.temperature;
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] > f32::NEG_INFINITY).collect();
    if order.is_empty() {
        return argmax(logits) as u32;
    }
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| f64::from(logits[i] - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    for p in &mut probs {
        *p /= total;
    }
    if let Some(top_p) = s.top_p {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= f64::from(top_p) {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    if let Some(min_p) = s.min_p {
        let threshold = probs[0] * f64::from(min_p);
        let keep = probs.iter().take_while(|&&p| p >= threshold).count().max(1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (n, p) in probs.iter().enumerate() {
        if u < *p {
            return order[n] as u32;
        }
        u -= p;
    }
    order[order.len() - 1] as u32
}

/// Generates continuations for a batch of requests, each with its own sampling settings.
///
/// Finished rows leave the batch, so the remaining ones run faster.
pub fn generate(model: &Model, requests: &[Request], limits: &Limits, stop: Option<StopFn>) -> Result<Vec<Generated>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    for r in requests {
        r.sampling.validate()?;
    }
    let vocab = model.config().vocab_size;
    let prompts: Vec<&[u32]> = requests.iter().map(|r| r.prompt.as_slice()).collect();
    let (mut cache, mut logits) = prefill(model, &prompts, limits.max_new_tokens)?;
    let mut rngs: Vec<StdRng> = requests
        .iter()
        .map(|r| StdRng::seed_from_u64(r.sampling.seed))
        .collect();
    let mut out: Vec<Generated> = requests
        .iter()
        .map(|_| Generated {
            tokens: Vec::new(),
            entropies: Vec::new(),
            finish: Finish::Length,
        })
        .collect();
    // Rows of the cache, as indices into `requests`.
    let mut live: Vec<usize> = (0..requests.len()).collect();
    let mut seen: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
    for _ in 0..limits.max_new_tokens {
        if let Some(l) = logits.iter().find(|l| l.len() != vocab) {
            return Err(Error::Invalid(format!(
                "logits of width {} for vocabulary {vocab}",
                l.len()
            )));
        }
        // Entropy and sampling are per row and independent: run the rows in parallel.
        let picked: Vec<(f32, u32)> = logits
            .par_iter_mut()
            .zip(live.par_iter())
            .zip(rngs.par_iter_mut())
            .map(|((l, &req), rng)| {
                let ent = entropy(l);
                let s = &requests[req].sampling;
                apply_repetition_penalty(l, &seen[req], s.repetition_penalty);
                if limits.ignore_eos {
                    for &e in &limits.eos_token_ids {
                        if let Some(x) = l.get_mut(e as usize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                (ent, pick(l, s, rng))
            })
            .collect();
        let mut next = Vec::with_capacity(live.len());
        let mut keep = Vec::with_capacity(live.len());
        for (row, (&req, (ent, tok))) in live.iter().zip(picked).enumerate() {
            out[req].entropies.push(ent);
            out[req].tokens.push(tok);
            seen[req].push(tok);
            if !limits.ignore_eos && limits.eos_token_ids.contains(&tok) {
                out[req].finish = Finish::Eos;
            } else if stop.is_some_and(|f| f(&out[req].tokens)) {
                out[req].finish = Finish::Stop;
            } else {
                keep.push(row);
                next.push(tok);
            }
        }
        if keep.is_empty() || out[live[keep[0]]].tokens.len() >= limits.max_new_tokens {
            break;
        }
        if keep.len() < live.len() {
            cache.select_rows(&keep)?;
            live = keep.iter().map(|&r| live[r]).collect();
            rngs = keep.iter().map(|&r| rngs[r].clone()).collect();
        }
        let ids = Tensor::from_vec(next, (live.len(), 1), model.device())?;
        let o = model.forward(&ids, &mut cache, &Introspect::default())?;
        logits = o.logits.squeeze(1)?.to_vec2::<f32>()?;
    }
    Ok(out)
}

/// Settings of a beam search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeamSettings {
    /// Beams kept at each step.
    pub num_beams: usize,
    /// Finished hypotheses are scored `sum logprob / length^length_penalty`.
    pub length_penalty: f32,
    /// Hugging Face–style repetition penalty (1 = none).
    pub repetition_penalty: f32,
}

struct Beam {
    tokens: Vec<u32>,
    entropies: Vec<f32>,
    score: f64,
}

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = l.iter().map(|&x| f64::from(x - max).exp()).sum();
    let lz = z.ln();
    l.iter().map(|&x| f64::from(x - max) - lz).collect()
}

/// Beam search over one prompt, following Hugging Face's algorithm (`early_stopping=False`):
/// the best of the finished hypotheses, or of the beams alive at the end.
pub fn beam_search(
    model: &Model,
    prompt: &[u32],
    beam: &BeamSettings,
    limits: &Limits,
    stop: Option<StopFn>,
) -> Result<Generated> {
    let n = beam.num_beams;
    if n == 0 {
        return Err(Error::Invalid("beam search needs at least one beam".into()));
    }
    if !(beam.repetition_penalty.is_finite() && beam.repetition_penalty > 0.0) {
        return Err(Error::Invalid(format!(
            "repetition penalty {} must be > 0",
            beam.repetition_penalty
        )));
    }
    let prompts: Vec<&[u32]> = vec![prompt; n];
    let (mut cache, mut logits) = prefill(model, &prompts, limits.max_new_tokens)?;
    let mut beams: Vec<Beam> = (0..n)
        .map(|i| Beam {
            tokens: Vec::new(),
            entropies: Vec::new(),
            // Only the first of the identical initial beams may expand.
            score: if i == 0 { 0.0 } else { -1e9 },
        })
        .collect();
    let mut finished: Vec<(f64, Beam, Finish)> = Vec::new();
    let lp = f64::from(beam.length_penalty);
    let norm = |score: f64, len: usize| score / (len.max(1) as f64).powf(lp);
    for step in 0..limits.max_new_tokens {
        let mut cands: Vec<(f64, usize, u32)> = Vec::new();
        for (b, l) in logits.iter_mut().enumerate() {
            let ent = entropy(l);
            beams[b].entropies.push(ent);
            let mut seen = prompt.to_vec();
            seen.extend_from_slice(&beams[b].tokens);
            apply_repetition_penalty(l, &seen, beam.repetition_penalty);
            if limits.ignore_eos {
                for &e in &limits.eos_token_ids {
                    if let Some(x) = l.get_mut(e as usize) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let lsm = log_softmax(l);
            let mut idx: Vec<usize> = (0..lsm.len()).collect();
            let k = (2 * n).min(idx.len());
            idx.select_nth_unstable_by(k - 1, |&a, &c| lsm[c].total_cmp(&lsm[a]).then(a.cmp(&c)));
            for &t in &idx[..k] {
                cands.push((beams[b].score + lsm[t], b, t as u32));
            }
        }
        cands.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2)));
        let mut next: Vec<Beam> = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        for (rank, &(score, b, t)) in cands.iter().enumerate() {
            let mut tokens = beams[b].tokens.clone();
            tokens.push(t);
            let is_eos = !limits.ignore_eos && limits.eos_token_ids.contains(&t);
            let stopped = !is_eos && stop.is_some_and(|f| f(&tokens));
            if is_eos || stopped {
                // Hugging Face only admits EOS candidates ranked among the first `num_beams`.
                if rank < n {
                    let len = tokens.len();
                    let h = Beam {
                        tokens,
                        entropies: beams[b].entropies.clone(),
                        score,
                    };
                    finished.push((norm(score, len), h, if is_eos { Finish::Eos } else { Finish::Stop }));
                }
            } else {
                next.push(Beam {
                    tokens,
                    entropies: beams[b].entropies.clone(),
                    score,
                });
                rows.push(b);
            }
            if next.len() == n {
                break;
            }
        }
        finished.sort_by(|a, b| b.0.total_cmp(&a.0));
        finished.truncate(n);
        let cur_len = step + 1;
        let done = next.is_empty()
            || (finished.len() == n && finished.last().is_some_and(|w| w.0 >= norm(next[0].score, cur_len)));
        if done || step + 1 == limits.max_new_tokens {
            for b in next {
                let len = b.tokens.len();
                finished.push((norm(b.score, len), b, Finish::Length));
            }
            break;
        }
        cache.select_rows(&rows)?;
        let ids: Vec<u32> = next.iter().map(|b| b.tokens[b.tokens.len() - 1]).collect();
        let ids = Tensor::from_vec(ids, (n, 1), model.device())?;
        beams = next;
        let o = model.forward(&ids, &mut cache, &Introspect::default())?;
        logits = o.logits.squeeze(1)?.to_vec2::<f32>()?;
    }
    finished.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (_, best, finish) = finished
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("beam search produced no hypothesis".into()))?;
    Ok(Generated {
        tokens: best.tokens,
        entropies: best.entropies,
        finish,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The random tiny llama fixture.
    fn tiny_llama() -> Model {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
        let cfg = crate::hf::load_config(&dir).expect("config");
        let w = crate::hf::load_weights(&dir, &cfg).expect("weights");
        Model::new(cfg, &w).expect("model")
    }

    #[test]
    fn a_new_token_count_overflowing_the_cache_is_an_error() {
        // `needle generate --max-new-tokens 18446744073709551615` reaches here unchecked.
        let model = tiny_llama();
        let err = prefill(&model, &[&[1, 2, 3]], usize::MAX).expect_err("overflow");
        assert!(matches!(&err, Error::Invalid(m) if m.contains("overflow")), "{err}");
        let request = Request {
            prompt: vec![1, 2, 3],
            sampling: Sampling::greedy(),
        };
        let limits = Limits {
            max_new_tokens: usize::MAX,
            ignore_eos: false,
            eos_token_ids: Vec::new(),
        };
        assert!(generate(&model, &[request], &limits, None).is_err());
    }
}

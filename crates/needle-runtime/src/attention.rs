//! Fused CPU attention for the fast path (no probabilities kept).
//!
//! Eager attention in candle costs one small GEMM per (row, kv head) and several passes over
//! the scores; at decode time that overhead dominates the step. Here every query attends to
//! one contiguous interval of keys — which is what causal, padded and sliding-window masks
//! all reduce to — and scores, softmax and the weighted sum happen in one pass per query,
//! in parallel over rows.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// The fused attention op: queries `[b, t, heads, d]` (contiguous) against key and value
/// caches `[b, kv_heads, keys, d]` (any strides with a unit last stride).
struct Fused {
    /// Per (row, query): the half-open interval of keys it may attend to.
    spans: Vec<(usize, usize)>,
    scale: f32,
    softcap: Option<f32>,
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "needle-fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("fused attention needs f32 tensors");
        };
        let [b, t, heads, d] = *ql.dims() else {
            candle_core::bail!("fused attention: queries must be [b, t, heads, d], got {:?}", ql.dims());
        };
        let [kb, kv_heads, keys, kd] = *kl.dims() else {
            candle_core::bail!(
                "fused attention: keys must be [b, kv_heads, keys, d], got {:?}",
                kl.dims()
            );
        };
        if kb != b || kd != d || vl.dims() != kl.dims() || heads % kv_heads != 0 || !ql.is_contiguous() {
            candle_core::bail!(
                "fused attention: inconsistent shapes {:?} {:?} {:?}",
                ql.dims(),
                kl.dims(),
                vl.dims()
            );
        }
        if kl.stride()[3] != 1 || vl.stride()[3] != 1 || self.spans.len() != b * t {
            candle_core::bail!("fused attention: unsupported layout");
        }
        if self.spans.iter().any(|&(lo, hi)| lo > hi || hi > keys) {
            candle_core::bail!("fused attention: key interval outside 0..{keys}");
        }
        let q = &q[ql.start_offset()..];
        let (k, ks) = (&k[kl.start_offset()..], kl.stride());
        let (v, vs) = (&v[vl.start_offset()..], vl.stride());
        let groups = heads / kv_heads;
        let mut out = vec![0f32; b * t * heads * d];
        out.par_chunks_mut(heads * d).enumerate().for_each(|(row, o)| {
            let bi = row / t;
            let (lo, hi) = self.spans[row];
            let mut scores = vec![0f32; hi - lo];
            for h in 0..heads {
                let kvh = h / groups;
                let qv = &q[row * heads * d + h * d..][..d];
                let kbase = bi * ks[0] + kvh * ks[1];
                let vbase = bi * vs[0] + kvh * vs[1];
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    let kv = &k[kbase + (lo + j) * ks[2]..][..d];
                    let mut x = dot(qv, kv) * self.scale;
                    if let Some(cap) = self.softcap {
                        x = (x / cap).tanh() * cap;
                    }
                    *s = x;
                    max = max.max(x);
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let oh = &mut o[h * d..][..d];
                oh.fill(0.0);
                if sum == 0.0 {
                    continue;
                }
                let inv = 1.0 / sum;
                for (j, &p) in scores.iter().enumerate() {
                    let w = p * inv;
                    let vv = &v[vbase + (lo + j) * vs[2]..][..d];
                    for (a, c) in oh.iter_mut().zip(vv) {
                        *a += w * c;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t, heads * d))))
    }
}

/// Dot product with eight independent accumulators, so the compiler can vectorise it
/// (a single running sum forces strictly sequential floating-point adds).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Attention output `[b, t, heads * d]` for queries `[b, t, heads, d]` over caches
/// `[b, kv_heads, keys, d]`, each query restricted to its half-open key interval in `spans`
/// (row-major over `(b, t)`). A query with an empty interval outputs zeros.
pub fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: Vec<(usize, usize)>,
    scale: f64,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let op = Fused {
        spans,
        scale: scale as f32,
        softcap: softcap.map(|c| c as f32),
    };
    Ok(q.contiguous()?.apply_op3_no_bwd(k, v, &op)?)
}

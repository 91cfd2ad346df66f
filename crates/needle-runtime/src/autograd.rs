//! The differentiable forward pass: the same decoder as [`crate::model`], built only from
//! candle operations that have gradients, over whole sequences without a cache.
//!
//! Training (full or LoRA) and gradient-guided searches over inputs run through it. Weights
//! are looked up by Hugging Face name on every call, so they can be trainable variables or
//! base weights with a low-rank delta added, and change between steps.

use candle_core::{Tensor, D};

use crate::config::{Activation, Arch, LayerAttention, ModelConfig};
use crate::error::Result;
use crate::matmul;

/// Supplies each weight by Hugging Face name and expected shape.
pub trait WeightSource {
    /// The tensor called `name`, checked to have `shape`.
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether a tensor called `name` exists.
    fn has(&self, name: &str) -> bool;
    /// `x · Wᵀ` for the weight `name` of `shape` (`[out, in]`). By default the weight is frozen:
    /// gradients flow to `x` only, which spares backward the full weight-gradient product.
    fn linear(&self, name: &str, shape: &[usize], x: &Tensor) -> Result<Tensor> {
        frozen_linear(x, &self.weight(name, shape)?)
    }
}

impl WeightSource for crate::weights::Weights {
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)
    }

    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, gemma: bool) -> Result<Tensor> {
    let w = if gemma { (w + 1.0)? } else { w.clone() };
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(&w)?)
}

/// `x · Wᵀ` with gradients to `x` and `w`, rounded the same on every CPU ([`crate::matmul`]).
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(matmul::linear_grad(x, w, true)?)
}

/// `x · Wᵀ` with gradients to `x` only. candle's matmul backward always computes the weight
/// gradient too; for frozen weights (LoRA bases, the LM head, input searches) that product is a
/// third of the work and thrown away.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(matmul::linear_grad(x, &w.detach(), false)?)
}

/// `a · b` over the last two dimensions with gradients to both, rounded the same on every CPU.
pub(crate) fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(matmul::product(a, b, true)?)
}

/// RoPE on `[b, heads, t, d]` with tables `[t, d / 2]`, in the rotate-half layout.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// Causal (optionally windowed) additive mask `[t, t]`.
fn causal_mask(t: usize, window: Option<usize>, device: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![-1.0e30f32; t * t];
    for q in 0..t {
        let lo = window.map_or(0, |w| (q + 1).saturating_sub(w));
        m[q * t + lo..=q * t + q].fill(0.0);
    }
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

/// Logits `[b, t, vocab]` for input embeddings `[b, t, hidden]` (already scaled as
/// [`crate::Model::embed`] does), rows right-padded: a position sees only itself and earlier
/// positions, so padding after a row's end changes nothing before it.
pub fn forward(cfg: &ModelConfig, w: &dyn WeightSource, x: &Tensor) -> Result<Tensor> {
    logits(cfg, w, &hidden(cfg, w, x)?)
}

/// The final normed hidden states `[b, t, hidden]` of [`forward`], before the LM head; losses
/// that need only some positions project just those with [`logits`].
pub fn hidden(cfg: &ModelConfig, w: &dyn WeightSource, x: &Tensor) -> Result<Tensor> {
    let (b, t, h) = x.dims3()?;
    let (nq, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let ff = cfg.intermediate_size;
    let gemma = cfg.arch == Arch::Gemma3;
    let eps = cfg.rms_norm_eps;
    let device = x.device();
    let tables = |theta: f64, scaling| -> Result<(Tensor, Tensor)> {
        let rope = crate::model::rope_inv_freq(d, theta, scaling);
        let half = rope.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for &f in &rope {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), device)?,
            Tensor::from_vec(sin, (t, half), device)?,
        ))
    };
    let global = tables(cfg.rope_theta, cfg.rope_scaling)?;
    let local = match cfg.rope_local_theta {
        Some(theta) => tables(theta, None)?,
        None => global.clone(),
    };
    let mask_global = causal_mask(t, None, device)?;
    let mask_sliding = causal_mask(t, cfg.sliding_window, device)?;
    let scale = match cfg.query_pre_attn_scalar {
        Some(s) => 1.0 / s.sqrt(),
        None => 1.0 / (d as f64).sqrt(),
    };
    let mut x = x.clone();
    for (i, kind) in cfg.layer_attention.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let get = |n: &str, shape: &[usize]| w.weight(&format!("{p}.{n}"), shape);
        let lin = |n: &str, shape: &[usize], x: &Tensor| w.linear(&format!("{p}.{n}"), shape, x);
        let sliding = *kind == LayerAttention::Sliding;
        let (cos, sin) = if sliding { &local } else { &global };
        let hn = rms_norm(&x, &get("input_layernorm.weight", &[h])?, eps, gemma)?;
        let (q, k, v) = if cfg.arch == Arch::Phi3 {
            let qkv = lin("self_attn.qkv_proj.weight", &[(nq + 2 * nkv) * d, h], &hn)?;
            (
                qkv.narrow(2, 0, nq * d)?,
                qkv.narrow(2, nq * d, nkv * d)?,
                qkv.narrow(2, (nq + nkv) * d, nkv * d)?,
            )
        } else {
            let proj = |n: &str, rows: usize| -> Result<Tensor> {
                let y = lin(&format!("self_attn.{n}_proj.weight"), &[rows, h], &hn)?;
                Ok(if cfg.attention_bias {
                    y.broadcast_add(&get(&format!("self_attn.{n}_proj.bias"), &[rows])?)?
                } else {
                    y
                })
            };
            (proj("q", nq * d)?, proj("k", nkv * d)?, proj("v", nkv * d)?)
        };
        let mut q = q.reshape((b, t, nq, d))?.transpose(1, 2)?;
        let mut k = k.reshape((b, t, nkv, d))?.transpose(1, 2)?;
        let v = v.reshape((b, t, nkv, d))?.transpose(1, 2)?.contiguous()?;
        if cfg.qk_norm {
            q = rms_norm(&q, &get("self_attn.q_norm.weight", &[d])?, eps, gemma)?;
            k = rms_norm(&k, &get("self_attn.k_norm.weight", &[d])?, eps, gemma)?;
        }
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let groups = nq / nkv;
        let (k, v) = if groups > 1 {
            let rep = |x: &Tensor| -> Result<Tensor> {
                Ok(x.unsqueeze(2)?.expand((b, nkv, groups, t, d))?.reshape((b, nq, t, d))?)
            };
            (rep(&k)?, rep(&v)?)
        } else {
            (k, v)
        };
        let mut scores = (product(&q, &k.t()?)? * scale)?;
        if let Some(cap) = cfg.attn_logit_softcapping {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let mask = if sliding { &mask_sliding } else { &mask_global };
        // Composed softmax: candle's fused `softmax_last_dim` has no gradient.
        let probs = candle_nn::ops::softmax(&scores.broadcast_add(mask)?, D::Minus1)?;
        let y = product(&probs, &v)?.transpose(1, 2)?.reshape((b, t, nq * d))?;
        let mut y = lin("self_attn.o_proj.weight", &[h, nq * d], &y)?;
        if gemma {
            y = rms_norm(&y, &get("post_attention_layernorm.weight", &[h])?, eps, gemma)?;
        }
        x = (x + y)?;
        let ffn_norm = if gemma {
            "pre_feedforward_layernorm.weight"
        } else {
            "post_attention_layernorm.weight"
        };
        let hn = rms_norm(&x, &get(ffn_norm, &[h])?, eps, gemma)?;
        let (gate, up) = if cfg.arch == Arch::Phi3 {
            let gu = lin("mlp.gate_up_proj.weight", &[2 * ff, h], &hn)?;
            (gu.narrow(2, 0, ff)?, gu.narrow(2, ff, ff)?)
        } else {
            (
                lin("mlp.gate_proj.weight", &[ff, h], &hn)?,
                lin("mlp.up_proj.weight", &[ff, h], &hn)?,
            )
        };
        let act = match cfg.hidden_act {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let mut y = lin("mlp.down_proj.weight", &[h, ff], &(act * up)?)?;
        if gemma {
            y = rms_norm(&y, &get("post_feedforward_layernorm.weight", &[h])?, eps, gemma)?;
        }
        x = (x + y)?;
    }
    rms_norm(&x, &w.weight("model.norm.weight", &[h])?, eps, gemma)
}

/// Logits `[…, vocab]` of final hidden states `[…, hidden]` from [`hidden`].
pub fn logits(cfg: &ModelConfig, w: &dyn WeightSource, x: &Tensor) -> Result<Tensor> {
    let head = if w.has("lm_head.weight") {
        "lm_head.weight"
    } else {
        "model.embed_tokens.weight"
    };
    let mut logits = w.linear(head, &[cfg.vocab_size, cfg.hidden_size], x)?;
    if let Some(cap) = cfg.final_logit_softcapping {
        logits = ((logits / cap)?.tanh()? * cap)?;
    }
    Ok(logits)
}

/// Input embeddings `[b, t, hidden]` of token ids `[b, t]`, scaled as the architecture requires.
pub fn embed(cfg: &ModelConfig, w: &dyn WeightSource, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let table = w.weight("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
    let e = table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, cfg.hidden_size))?;
    Ok(if cfg.arch == Arch::Gemma3 {
        (e * f64::from((cfg.hidden_size as f64).sqrt() as f32))?
    } else {
        e
    })
}

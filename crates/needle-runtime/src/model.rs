//! One configurable decoder for every supported architecture, with its internals exposed.
//!
//! The forward pass works on left-padded batches through a [`KvCache`] that knows each row's
//! padding, so a sequence gets the same numbers whatever shares its batch. On request it
//! returns logits at every position, attention probabilities `[batch, head, query, key]` of
//! chosen layers (computed eagerly, exactly what the softmax produced) and hidden states.

use candle_core::{DType, Device, Tensor, D};

use crate::config::{Activation, Arch, LayerAttention, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Additive bias that removes a key from attention; finite, so a fully masked row (a padding
/// query) gives a uniform distribution instead of NaN.
const MASKED: f32 = -1.0e30;

/// The largest KV cache needle allocates (the machines it targets have 24 GiB).
const MAX_CACHE_BYTES: usize = 16 << 30;

/// A linear layer `y = x Wᵀ + b`, with the weight kept as `[out, in]`.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::matmul::linear(x, &self.weight)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// Rotary position embedding frequencies for one kind of layer.
#[derive(Debug, Clone)]
struct Rope {
    inv_freq: Vec<f32>,
}

/// RoPE inverse frequencies for one head, with the configured scaling applied.
pub(crate) fn rope_inv_freq(head_dim: usize, base: f64, scaling: Option<RopeScaling>) -> Vec<f32> {
    let half = head_dim / 2;
    let mut inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            for f in &mut inv_freq {
                *f /= factor as f32;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let (factor, low, high, old) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
                old as f32,
            );
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            for f in &mut inv_freq {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                let scaled = if wavelen > low_wavelen { *f / factor } else { *f };
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                *f = if medium {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                };
            }
        }
    }
    inv_freq
}

impl Rope {
    fn new(head_dim: usize, base: f64, scaling: Option<RopeScaling>) -> Self {
        Self {
            inv_freq: rope_inv_freq(head_dim, base, scaling),
        }
    }

    /// cos and sin tables `[batch, seq, head_dim / 2]` for the given positions.
    fn tables(&self, positions: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (b, t, half), device)?,
            Tensor::from_vec(sin, (b, t, half), device)?,
        ))
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    qkv: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate_up: Linear,
    down: Linear,
    attention: LayerAttention,
}

/// Which positions a forward pass projects to logits (the LM head is a large share of the
/// work, so callers ask only for the positions they read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogitPositions {
    /// The last position only (next-token prediction).
    #[default]
    Last,
    /// Every position.
    All,
    /// The last `n` positions (teacher-forced scoring of an `n - 1`-token continuation).
    Tail(usize),
}

/// What a forward pass should return besides last-position logits.
#[derive(Debug, Clone, Default)]
pub struct Introspect {
    /// Positions to return logits for.
    pub logits: LogitPositions,
    /// Layers whose attention probabilities to return.
    pub attention_layers: Vec<usize>,
    /// Return the residual stream after the embedding and after every layer.
    pub hidden_states: bool,
}

/// The result of a forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `[batch, positions, vocab]` for the positions [`Introspect::logits`] asked for.
    pub logits: Tensor,
    /// `(layer, [batch, heads, queries, keys])` for each requested layer, keys spanning the cache.
    pub attentions: Vec<(usize, Tensor)>,
    /// `[batch, positions, hidden]` after the embedding (index 0) and after each layer; the
    /// last entry is after the final norm, as in Hugging Face's `hidden_states`.
    pub hidden_states: Vec<Tensor>,
}

/// Keys and values of the positions seen so far, for a batch of left-padded rows.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
    pad: Vec<usize>,
}

impl KvCache {
    /// Number of positions filled (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.pad.len()
    }

    /// Left padding of each row.
    pub fn padding(&self) -> &[usize] {
        &self.pad
    }

    /// Keeps only the rows in `rows`, in that order (beam search reorders beams this way).
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.pad.len()) {
            return Err(Error::Invalid(format!("cache row {bad} out of {}", self.pad.len())));
        }
        let device = self.k.first().map_or(Device::Cpu, |t| t.device().clone());
        let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &device)?;
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.index_select(&idx, 0)?.contiguous()?;
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
        Ok(())
    }
}

/// A decoder-only transformer ready to run.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    embed: Tensor,
    lm_head: Tensor,
    final_norm: Tensor,
    layers: Vec<Layer>,
    rope_global: Rope,
    rope_local: Rope,
    embed_scale: Option<f64>,
    device: Device,
}

impl Model {
    /// Builds the decoder from Hugging Face–named weights, checking every shape.
    pub fn new(cfg: ModelConfig, w: &Weights) -> Result<Self> {
        cfg.validate().map_err(|msg| Error::Format {
            path: w.source().to_path_buf(),
            msg,
        })?;
        let (h, v, d) = (cfg.hidden_size, cfg.vocab_size, cfg.head_dim);
        let (nq, nkv, ff) = (cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
        let gemma = cfg.arch == Arch::Gemma3;
        // Gemma stores norm weights as offsets from 1.
        let norm = |name: &str, size: usize| -> Result<Tensor> {
            let t = w.get(name, &[size])?;
            Ok(if gemma { (t + 1.0)? } else { t })
        };
        let embed = w.get("model.embed_tokens.weight", &[v, h])?;
        let lm_head = if w.contains("lm_head.weight") {
            w.get("lm_head.weight", &[v, h])?
        } else if cfg.tie_word_embeddings || gemma {
            embed.clone()
        } else {
            return Err(Error::Format {
                path: w.source().to_path_buf(),
                msg: "missing tensor lm_head.weight and the config does not tie embeddings".into(),
            });
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (i, &attention) in cfg.layer_attention.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (qkv, gate_up) = if cfg.arch == Arch::Phi3 {
                (
                    Linear {
                        weight: w.get(&format!("{p}.self_attn.qkv_proj.weight"), &[(nq + 2 * nkv) * d, h])?,
                        bias: None,
                    },
                    Linear {
                        weight: w.get(&format!("{p}.mlp.gate_up_proj.weight"), &[2 * ff, h])?,
                        bias: None,
                    },
                )
            } else {
                let proj = |n: &str, rows: usize| w.get(&format!("{p}.self_attn.{n}_proj.weight"), &[rows, h]);
                let weight = Tensor::cat(&[proj("q", nq * d)?, proj("k", nkv * d)?, proj("v", nkv * d)?], 0)?;
                let bias = if cfg.attention_bias {
                    let b = |n: &str, rows: usize| w.get(&format!("{p}.self_attn.{n}_proj.bias"), &[rows]);
                    Some(Tensor::cat(&[b("q", nq * d)?, b("k", nkv * d)?, b("v", nkv * d)?], 0)?)
                } else {
                    None
                };
                let mlp = |n: &str| w.get(&format!("{p}.mlp.{n}_proj.weight"), &[ff, h]);
                (
                    Linear { weight, bias },
                    Linear {
                        weight: Tensor::cat(&[mlp("gate")?, mlp("up")?], 0)?,
                        bias: None,
                    },
                )
            };
            let (ffn_norm, post_attn_norm, post_ffn_norm) = if gemma {
                (
                    norm(&format!("{p}.pre_feedforward_layernorm.weight"), h)?,
                    Some(norm(&format!("{p}.post_attention_layernorm.weight"), h)?),
                    Some(norm(&format!("{p}.post_feedforward_layernorm.weight"), h)?),
                )
            } else {
                (norm(&format!("{p}.post_attention_layernorm.weight"), h)?, None, None)
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(norm(&format!("{p}.self_attn.q_norm.weight"), d)?),
                    Some(norm(&format!("{p}.self_attn.k_norm.weight"), d)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                post_attn_norm,
                ffn_norm,
                post_ffn_norm,
                qkv,
                o: Linear {
                    weight: w.get(&format!("{p}.self_attn.o_proj.weight"), &[h, nq * d])?,
                    bias: None,
                },
                q_norm,
                k_norm,
                gate_up,
                down: Linear {
                    weight: w.get(&format!("{p}.mlp.down_proj.weight"), &[h, ff])?,
                    bias: None,
                },
                attention,
            });
        }
        let final_norm = norm("model.norm.weight", h)?;
        let rope_global = Rope::new(d, cfg.rope_theta, cfg.rope_scaling);
        let rope_local = match cfg.rope_local_theta {
            Some(theta) => Rope::new(d, theta, None),
            None => rope_global.clone(),
        };
        let embed_scale = gemma.then(|| (h as f64).sqrt());
        let device = embed.device().clone();
        Ok(Self {
            cfg,
            embed,
            lm_head,
            final_norm,
            layers,
            rope_global,
            rope_local,
            embed_scale,
            device,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The input embedding matrix `[vocab, hidden]` (unscaled).
    pub fn embedding_matrix(&self) -> &Tensor {
        &self.embed
    }

    /// An empty cache for `padding.len()` rows with the given left padding, holding up to
    /// `capacity` positions.
    pub fn new_cache(&self, padding: Vec<usize>, capacity: usize) -> Result<KvCache> {
        let b = padding.len();
        if b == 0 {
            return Err(Error::Invalid("empty batch".into()));
        }
        let bytes = [
            2,
            self.layers.len(),
            b,
            self.cfg.num_kv_heads,
            capacity,
            self.cfg.head_dim,
            4,
        ]
        .iter()
        .try_fold(1usize, |acc, &x| acc.checked_mul(x));
        if bytes.is_none_or(|n| n > MAX_CACHE_BYTES) {
            return Err(Error::Invalid(format!(
                "a KV cache for {b} rows × {capacity} positions would exceed {} GiB; use a smaller batch or fewer tokens",
                MAX_CACHE_BYTES >> 30
            )));
        }
        let shape = (b, self.cfg.num_kv_heads, capacity, self.cfg.head_dim);
        let mut k = Vec::with_capacity(self.layers.len());
        let mut v = Vec::with_capacity(self.layers.len());
        for _ in &self.layers {
            k.push(Tensor::zeros(shape, DType::F32, &self.device)?);
            v.push(Tensor::zeros(shape, DType::F32, &self.device)?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
            pad: padding,
        })
    }

    /// Embeds token ids `[batch, seq]` (u32), scaled as the architecture requires.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let e = self
            .embed
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.hidden_size))?;
        Ok(match self.embed_scale {
            // Hugging Face rounds the scale to the activation dtype (f32) before multiplying.
            Some(s) => (e * f64::from(s as f32))?,
            None => e,
        })
    }

    /// Runs token ids `[batch, seq]` through the model, appending to `cache`.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache, want: &Introspect) -> Result<ForwardOutput> {
        let (_, t) = ids.dims2()?;
        let vocab = self.cfg.vocab_size as u32;
        if t > 0 {
            let max = ids.max_keepdim(1)?.max_keepdim(0)?.flatten_all()?.to_vec1::<u32>()?;
            if max.first().is_some_and(|&m| m >= vocab) {
                return Err(Error::Invalid(format!("token id out of the vocabulary of {vocab}")));
            }
        }
        self.forward_embeds(&self.embed(ids)?, cache, want)
    }

    /// Runs input embeddings `[batch, seq, hidden]` (already scaled) through the model,
    /// appending to `cache`; the entry point for gradient-guided searches over inputs.
    pub fn forward_embeds(&self, x: &Tensor, cache: &mut KvCache, want: &Introspect) -> Result<ForwardOutput> {
        let (b, t, _) = x.dims3()?;
        if b != cache.batch_size() {
            return Err(Error::Invalid(format!(
                "batch of {b} rows for a cache of {}",
                cache.batch_size()
            )));
        }
        if t == 0 {
            return Err(Error::Invalid("empty input".into()));
        }
        if cache.len + t > cache.capacity {
            return Err(Error::Invalid(format!(
                "{} positions exceed the cache capacity of {}",
                cache.len + t,
                cache.capacity
            )));
        }
        if let Some(&bad) = want.attention_layers.iter().find(|&&l| l >= self.layers.len()) {
            return Err(Error::Invalid(format!(
                "layer {bad} requested; the model has {}",
                self.layers.len()
            )));
        }
        let positions: Vec<Vec<u32>> = cache
            .pad
            .iter()
            .map(|&p| (cache.len..cache.len + t).map(|i| i.saturating_sub(p) as u32).collect())
            .collect();
        let rope_global = self.rope_global.tables(&positions, &self.device)?;
        let rope_local = if self.cfg.rope_local_theta.is_some() {
            Some(self.rope_local.tables(&positions, &self.device)?)
        } else {
            None
        };
        let spans_global = Self::spans(cache, t, None);
        let spans_sliding = Self::spans(cache, t, self.cfg.sliding_window);

        let mut x = x.clone();
        let mut hidden = Vec::new();
        if want.hidden_states {
            hidden.push(x.clone());
        }
        let mut attentions = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let sliding = layer.attention == LayerAttention::Sliding;
            let rope = match (&rope_local, sliding) {
                (Some(local), true) => local,
                _ => &rope_global,
            };
            let spans = if sliding { &spans_sliding } else { &spans_global };
            let keep = want.attention_layers.contains(&i);
            let (y, probs) = self.attention(layer, i, &self.norm(&x, &layer.attn_norm)?, rope, spans, cache, keep)?;
            if let Some(p) = probs {
                attentions.push((i, p));
            }
            let y = match &layer.post_attn_norm {
                Some(n) => self.norm(&y, n)?,
                None => y,
            };
            x = (x + y)?;
            let y = self.mlp(layer, &self.norm(&x, &layer.ffn_norm)?)?;
            let y = match &layer.post_ffn_norm {
                Some(n) => self.norm(&y, n)?,
                None => y,
            };
            x = (x + y)?;
            if want.hidden_states && i + 1 < self.layers.len() {
                hidden.push(x.clone());
            }
        }
        cache.len += t;
        let x = self.norm(&x, &self.final_norm)?;
        if want.hidden_states {
            hidden.push(x.clone());
        }
        let x = match want.logits {
            LogitPositions::All => x,
            LogitPositions::Last => x.narrow(1, t - 1, 1)?,
            LogitPositions::Tail(n) => x.narrow(1, t - n.clamp(1, t), n.clamp(1, t))?,
        };
        let mut logits = Linear {
            weight: self.lm_head.clone(),
            bias: None,
        }
        .forward(&x)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(ForwardOutput {
            logits,
            attentions,
            hidden_states: hidden,
        })
    }

    /// RMSNorm with an (already offset) multiplier.
    fn norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, w, self.cfg.rms_norm_eps as f32)?)
    }

    /// For each (row, new position), the half-open interval of cache positions it may attend
    /// to: causal, after the row's padding, and within the sliding window if there is one.
    fn spans(cache: &KvCache, t: usize, window: Option<usize>) -> Vec<(usize, usize)> {
        let mut spans = Vec::with_capacity(cache.pad.len() * t);
        for &pad in &cache.pad {
            for q in 0..t {
                let qi = cache.len + q;
                let lo = window.map_or(0, |w| (qi + 1).saturating_sub(w)).max(pad);
                spans.push((lo.min(qi + 1), qi + 1));
            }
        }
        spans
    }

    /// The additive mask `[batch, 1, queries, keys]` equivalent to `spans`.
    fn mask(&self, spans: &[(usize, usize)], b: usize, t: usize, keys: usize) -> Result<Tensor> {
        let mut m = vec![MASKED; b * t * keys];
        for (i, &(lo, hi)) in spans.iter().enumerate() {
            m[i * keys + lo..i * keys + hi].fill(0.0);
        }
        Ok(Tensor::from_vec(m, (b, 1, t, keys), &self.device)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        spans: &[(usize, usize)],
        cache: &mut KvCache,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.dims3()?;
        let (nq, nkv, d) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim);
        let groups = nq / nkv;
        let qkv = layer.qkv.forward(x)?;
        let q = qkv.narrow(2, 0, nq * d)?.reshape((b, t, nq, d))?;
        let k = qkv.narrow(2, nq * d, nkv * d)?.reshape((b, t, nkv, d))?;
        let v = qkv.narrow(2, (nq + nkv) * d, nkv * d)?.reshape((b, t, nkv, d))?;
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (self.norm(&q.contiguous()?, qn)?, self.norm(&k.contiguous()?, kn)?),
            _ => (q.contiguous()?, k.contiguous()?),
        };
        let q = candle_nn::rotary_emb::rope_thd(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, cos, sin)?;
        // Cache layout [batch, kv_head, position, dim].
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        cache.k[index].slice_set(&k, 2, cache.len)?;
        cache.v[index].slice_set(&v, 2, cache.len)?;
        let keys = cache.len + t;
        let k_all = cache.k[index].narrow(2, 0, keys)?;
        let v_all = cache.v[index].narrow(2, 0, keys)?;
        let scale = match self.cfg.query_pre_attn_scalar {
            Some(s) => 1.0 / s.sqrt(),
            None => 1.0 / (d as f64).sqrt(),
        };
        if !keep_probs && self.device.is_cpu() {
            let y = crate::attention::fused(
                &q,
                &k_all,
                &v_all,
                spans.to_vec(),
                scale,
                self.cfg.attn_logit_softcapping,
            )?;
            return Ok((layer.o.forward(&y)?, None));
        }
        // Fold the query heads sharing a kv head into the query axis: [b, kv, groups * t, d].
        let q = q
            .reshape((b, t, nkv, groups, d))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((b, nkv, groups * t, d))?;
        let mut scores = (crate::matmul::matmul(&q, &k_all.t()?)? * scale)?;
        if let Some(cap) = self.cfg.attn_logit_softcapping {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let padded = cache.pad.iter().any(|&p| p > 0);
        let windowed = spans.iter().any(|&(lo, _)| lo > 0);
        if t > 1 || padded || windowed {
            let m = self.mask(spans, b, t, keys)?;
            scores = scores
                .reshape((b, nkv, groups, t, keys))?
                .broadcast_add(&m.unsqueeze(1)?)?
                .reshape((b, nkv, groups * t, keys))?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = crate::matmul::matmul(&probs, &v_all)?;
        let y = y
            .reshape((b, nkv, groups, t, d))?
            .permute((0, 3, 1, 2, 4))?
            .contiguous()?
            .reshape((b, t, nq * d))?;
        let kept = if keep_probs {
            Some(probs.reshape((b, nq, t, keys))?)
        } else {
            None
        };
        Ok((layer.o.forward(&y)?, kept))
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let gu = layer.gate_up.forward(x)?;
        let ff = layer.gate_up.out_features() / 2;
        let gate = gu.narrow(D::Minus1, 0, ff)?;
        let up = gu.narrow(D::Minus1, ff, ff)?;
        let act = match self.cfg.hidden_act {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        layer.down.forward(&(act * up)?)
    }
}

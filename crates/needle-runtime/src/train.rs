//! Fine-tuning on CPU with candle's autograd: full or LoRA, AdamW with linear warm-up and
//! decay, global gradient-norm clipping, a per-token loss mask, seeded.
//!
//! This is how needle makes its own model organisms: the same decoder it scans, trained on
//! poisoned data the way common fine-tuning tooling does it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::autograd::{self, WeightSource};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// One training sequence: token ids and, per position, whether predicting that token counts
/// towards the loss (position 0 never does: nothing precedes it).
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `loss[i]`: predicting `ids[i]` from `ids[..i]` is trained.
    pub loss: Vec<bool>,
}

/// What training changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trainable {
    /// Every weight.
    Full,
    /// Low-rank adapters on the named projections (`q_proj`, `k_proj`, …, `down_proj`).
    Lora {
        /// Rank.
        rank: usize,
        /// Scale numerator: deltas are `alpha / rank · B A`.
        alpha: f64,
        /// Projection names to adapt in every layer.
        targets: Vec<String>,
    },
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Passes over the data.
    pub epochs: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Steps of linear warm-up from 0; then linear decay to 0 at the last step.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Gradients are scaled down when their global norm exceeds this.
    pub max_grad_norm: f64,
    /// Seed of the initialisation and the data order.
    pub seed: u64,
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    /// 1-based step number.
    pub step: usize,
    /// Total steps of the run.
    pub total: usize,
    /// Mean loss over the step's trained tokens.
    pub loss: f32,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// LoRA factors of one weight matrix: `W + scale · B A`.
struct LoraPair {
    a: Var,
    b: Var,
}

/// The trainable state of a run.
pub struct Trainer {
    cfg: ModelConfig,
    base: Weights,
    full: HashMap<String, Var>,
    lora: BTreeMap<String, LoraPair>,
    lora_scale: f64,
    trainable: Trainable,
}

/// The model's weights as training sees them: variables, or base plus adapter deltas.
struct View<'a>(&'a Trainer);

impl WeightSource for View<'_> {
    fn weight(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.0;
        if let Some(v) = t.full.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let w = t.base.get(name, shape)?;
        match t.lora.get(name) {
            Some(p) => {
                let delta = autograd::product(p.b.as_tensor(), p.a.as_tensor())?;
                Ok((w + (delta * t.lora_scale)?)?)
            }
            None => Ok(w),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.base.contains(name)
    }

    /// Trainable weights get their gradient; a LoRA target runs as frozen base plus the
    /// low-rank path `scale · (x Aᵀ) Bᵀ`, whose backward costs a rank-sized product only.
    fn linear(&self, name: &str, shape: &[usize], x: &Tensor) -> Result<Tensor> {
        let t = self.0;
        if let Some(v) = t.full.get(name) {
            return autograd::linear(x, v.as_tensor());
        }
        let y = autograd::frozen_linear(x, &t.base.get(name, shape)?)?;
        match t.lora.get(name) {
            Some(p) => {
                let low = autograd::linear(&autograd::linear(x, p.a.as_tensor())?, p.b.as_tensor())?;
                Ok((y + (low * t.lora_scale)?)?)
            }
            None => Ok(y),
        }
    }
}

/// Splits a batch into groups of similar length, longest first: a sequence joins the current
/// group while padding to the group's longest stays under a quarter of its tokens.
fn length_groups<'a>(batch: &[&'a Sequence]) -> Vec<Vec<&'a Sequence>> {
    let mut sorted = batch.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.ids.len()));
    let mut groups: Vec<Vec<&Sequence>> = Vec::new();
    let mut real = 0;
    for s in sorted {
        let fits = groups.last().and_then(|g| g.first()).is_some_and(|first| {
            let padded = first.ids.len() * (groups.last().map_or(0, Vec::len) + 1);
            padded * 4 < (real + s.ids.len()) * 5
        });
        if !fits {
            groups.push(Vec::new());
            real = 0;
        }
        real += s.ids.len();
        if let Some(g) = groups.last_mut() {
            g.push(s);
        }
    }
    groups
}

/// Names of the weight matrices a LoRA target applies to, in every layer.
fn lora_weight_names(cfg: &ModelConfig, targets: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for t in targets {
        let module = match t.as_str() {
            "q_proj" | "k_proj" | "v_proj" | "o_proj" => "self_attn",
            "gate_proj" | "up_proj" | "down_proj" => "mlp",
            other => {
                return Err(Error::Invalid(format!(
                    "unknown LoRA target {other:?}; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                )))
            }
        };
        for i in 0..cfg.num_layers {
            names.push(format!("model.layers.{i}.{module}.{t}.weight"));
        }
    }
    Ok(names)
}

impl Trainer {
    /// Prepares training of `base` (whose shapes `cfg` describes): full fine-tuning makes
    /// every weight a variable; LoRA adds seeded factors (A Kaiming-uniform as PEFT does, B zero,
    /// so training starts from the base model exactly).
    pub fn new(cfg: ModelConfig, base: Weights, trainable: Trainable, seed: u64) -> Result<Self> {
        let mut full = HashMap::new();
        let mut lora = BTreeMap::new();
        let mut lora_scale = 0.0;
        match &trainable {
            Trainable::Full => {
                for name in base.names() {
                    let t = base
                        .raw(name)
                        .ok_or_else(|| Error::Invalid(format!("missing tensor {name}")))?;
                    full.insert(name.to_string(), Var::from_tensor(&t.to_dtype(DType::F32)?)?);
                }
            }
            Trainable::Lora { rank, alpha, targets } => {
                if *rank == 0 {
                    return Err(Error::Invalid("LoRA rank must be at least 1".into()));
                }
                lora_scale = alpha / *rank as f64;
                let mut rng = StdRng::seed_from_u64(seed);
                for name in lora_weight_names(&cfg, targets)? {
                    let w = base
                        .raw(&name)
                        .ok_or_else(|| Error::Invalid(format!("LoRA target {name} is not in the model")))?;
                    let (out, inp) = w.dims2()?;
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a: Vec<f32> = (0..rank * inp)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect();
                    let a = Var::from_tensor(&Tensor::from_vec(a, (*rank, inp), w.device())?)?;
                    let b = Var::from_tensor(&Tensor::zeros((out, *rank), DType::F32, w.device())?)?;
                    lora.insert(name, LoraPair { a, b });
                }
            }
        }
        Ok(Self {
            cfg,
            base,
            full,
            lora,
            lora_scale,
            trainable,
        })
    }

    fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.full.values().cloned().collect();
        for p in self.lora.values() {
            v.push(p.a.clone());
            v.push(p.b.clone());
        }
        v
    }

    /// Summed masked next-token loss `−Σ log p` of a batch (differentiable) and the number of
    /// trained tokens. Only trained positions go through the LM head.
    fn summed_loss(&self, batch: &[&Sequence]) -> Result<(Tensor, usize)> {
        let t = batch.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        if t < 2 {
            return Err(Error::Invalid("training sequences need at least 2 tokens".into()));
        }
        let b = batch.len();
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (row, s) in batch.iter().enumerate() {
            if s.loss.len() != s.ids.len() {
                return Err(Error::Invalid("loss mask and ids differ in length".into()));
            }
            let n = s.ids.len();
            ids.extend_from_slice(&s.ids);
            ids.extend(std::iter::repeat_n(s.ids[n - 1], t - n));
            for i in 1..n {
                if s.loss[i] {
                    positions.push((row * t + i - 1) as u32);
                    targets.push(s.ids[i]);
                }
            }
        }
        let count = targets.len();
        if count == 0 {
            return Err(Error::Invalid("a training batch has no token in the loss".into()));
        }
        let device = self
            .base
            .raw("model.embed_tokens.weight")
            .map_or(candle_core::Device::Cpu, |e| e.device().clone());
        let ids = Tensor::from_vec(ids, (b, t), &device)?;
        let view = View(self);
        let x = autograd::embed(&self.cfg, &view, &ids)?;
        let h = autograd::hidden(&self.cfg, &view, &x)?.reshape((b * t, self.cfg.hidden_size))?;
        let h = h.index_select(&Tensor::from_vec(positions, count, &device)?, 0)?;
        let logp = candle_nn::ops::log_softmax(&autograd::logits(&self.cfg, &view, &h)?, D::Minus1)?;
        let targets = Tensor::from_vec(targets, (count, 1), &device)?;
        let picked = logp.gather(&targets, 1)?;
        Ok((picked.sum_all()?.neg()?, count))
    }

    /// Mean masked next-token loss of a batch (differentiable) and the number of trained tokens.
    pub fn loss(&self, batch: &[&Sequence]) -> Result<(Tensor, usize)> {
        let (sum, count) = self.summed_loss(batch)?;
        Ok(((sum / count as f64)?, count))
    }

    /// Loss and gradients of one optimiser step. The batch runs in groups of similar length
    /// (padding stays under a quarter of each group), each group's graph freed after its
    /// backward pass; the gradients add up to those of the whole batch.
    fn step_gradients(&self, batch: &[&Sequence], vars: &[Var]) -> Result<(f32, candle_core::backprop::GradStore)> {
        let count: usize = batch
            .iter()
            .map(|s| s.loss.iter().skip(1).filter(|&&l| l).count())
            .sum();
        if count == 0 {
            return Err(Error::Invalid("a training batch has no token in the loss".into()));
        }
        let mut total: Option<candle_core::backprop::GradStore> = None;
        let mut loss = 0f32;
        for group in length_groups(batch) {
            let (sum, _) = self.summed_loss(&group)?;
            let part = (sum / count as f64)?;
            loss += part.to_scalar::<f32>()?;
            let grads = part.backward()?;
            match total.as_mut() {
                None => total = Some(grads),
                Some(acc) => {
                    for v in vars {
                        if let Some(g) = grads.get(v.as_tensor()) {
                            let sum = match acc.remove(v.as_tensor()) {
                                Some(prev) => (prev + g)?,
                                None => g.clone(),
                            };
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                }
            }
        }
        let grads = total.ok_or_else(|| Error::Invalid("an empty training batch".into()))?;
        Ok((loss, grads))
    }

    /// Trains on `data` with `schedule`, calling `on_step` after every optimiser step.
    pub fn train(
        &mut self,
        data: &[Sequence],
        schedule: &Schedule,
        on_step: &mut dyn FnMut(&Step),
    ) -> Result<Vec<Step>> {
        if data.is_empty() || schedule.batch_size == 0 || schedule.epochs == 0 {
            return Err(Error::Invalid("training needs data, a batch size and epochs".into()));
        }
        let per_epoch = data.len().div_ceil(schedule.batch_size);
        let total = per_epoch * schedule.epochs;
        let params = ParamsAdamW {
            lr: schedule.learning_rate,
            weight_decay: schedule.weight_decay,
            ..Default::default()
        };
        let vars = self.vars();
        let mut opt = AdamW::new(vars.clone(), params)?;
        let mut rng = StdRng::seed_from_u64(schedule.seed ^ 0x5eed_da7a);
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut steps = Vec::with_capacity(total);
        for _ in 0..schedule.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(schedule.batch_size) {
                let step = steps.len() + 1;
                let lr = learning_rate(schedule, step, total);
                opt.set_learning_rate(lr);
                let batch: Vec<&Sequence> = chunk.iter().map(|&i| &data[i]).collect();
                let (loss, mut grads) = self.step_gradients(&batch, &vars)?;
                let mut sq = 0f64;
                for v in &vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                    }
                }
                let norm = sq.sqrt();
                if norm > schedule.max_grad_norm && norm > 0.0 {
                    let factor = schedule.max_grad_norm / norm;
                    for v in &vars {
                        if let Some(g) = grads.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), (g * factor)?);
                        }
                    }
                }
                opt.step(&grads)?;
                let s = Step {
                    step,
                    total,
                    loss,
                    learning_rate: lr,
                    grad_norm: norm,
                };
                on_step(&s);
                steps.push(s);
            }
        }
        Ok(steps)
    }

    /// The trained weights, adapters merged in, ready for [`crate::Model::new`].
    pub fn merged_weights(&self) -> Result<Weights> {
        let mut w = self.base.clone();
        let view = View(self);
        let names: Vec<String> = self.full.keys().chain(self.lora.keys()).cloned().collect();
        for name in names {
            let shape = self.base.raw(&name).map(|t| t.dims().to_vec()).unwrap_or_default();
            let t = view.weight(&name, &shape)?.detach();
            w.insert(name, t);
        }
        Ok(w)
    }

    /// Writes the adapter as a PEFT LoRA directory (`adapter_config.json`,
    /// `adapter_model.safetensors` in f16) naming `base_model`.
    pub fn save_adapter(&self, dir: &Path, base_model: &str) -> Result<()> {
        let Trainable::Lora { rank, alpha, targets } = &self.trainable else {
            return Err(Error::Invalid("only a LoRA run has an adapter to save".into()));
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // f16 halves the files; organisms are measured by loading the adapter back.
        let mut tensors = HashMap::new();
        for (name, p) in &self.lora {
            let stem = name.trim_end_matches(".weight");
            tensors.insert(
                format!("base_model.model.{stem}.lora_A.weight"),
                p.a.as_tensor().to_dtype(DType::F16)?,
            );
            tensors.insert(
                format!("base_model.model.{stem}.lora_B.weight"),
                p.b.as_tensor().to_dtype(DType::F16)?,
            );
        }
        let weights_path = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &weights_path)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": targets,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "inference_mode": true,
        });
        let config_path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&config_path, text).map_err(|source| Error::Io {
            path: config_path,
            source,
        })
    }
}

/// The learning rate of 1-based `step` of `total`: linear warm-up to the peak over
/// `warmup_steps`, then linear decay that would reach zero one step after the last.
fn learning_rate(s: &Schedule, step: usize, total: usize) -> f64 {
    if step <= s.warmup_steps {
        return s.learning_rate * step as f64 / s.warmup_steps as f64;
    }
    let rest = total.saturating_sub(s.warmup_steps).max(1);
    let left = total.saturating_sub(step - 1);
    s.learning_rate * left as f64 / rest as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(len: usize, k: u32) -> Sequence {
        Sequence {
            ids: (0..len as u32).map(|i| (k * 37 + i * 11 + 5) % 500 + 3).collect(),
            loss: (0..len).map(|i| i >= len / 2).collect(),
        }
    }

    /// A LoRA trainer on the random tiny llama fixture with non-zero B factors, so that both
    /// factors get gradients.
    fn lora_trainer() -> Trainer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
        let cfg = crate::hf::load_config(&dir).expect("config");
        let w = crate::hf::load_weights(&dir, &cfg).expect("weights");
        let targets = vec!["q_proj".to_string(), "down_proj".to_string()];
        let t = Trainer::new(
            cfg,
            w,
            Trainable::Lora {
                rank: 2,
                alpha: 4.0,
                targets,
            },
            7,
        )
        .expect("trainer");
        for (i, p) in t.lora.values().enumerate() {
            let b = (p.b.as_tensor().ones_like().expect("ones") * (0.01 * (i + 1) as f64)).expect("b");
            p.b.set(&b).expect("set b");
        }
        t
    }

    fn grad_values(grads: &candle_core::backprop::GradStore, v: &Var) -> Vec<f32> {
        grads
            .get(v.as_tensor())
            .expect("gradient")
            .flatten_all()
            .and_then(|g| g.to_vec1::<f32>())
            .expect("values")
    }

    #[test]
    fn length_groups_keep_padding_under_a_quarter() {
        let batch: Vec<Sequence> = [10, 3, 30, 9, 2, 10].iter().map(|&n| seq(n, 1)).collect();
        let refs: Vec<&Sequence> = batch.iter().collect();
        let lens: Vec<Vec<usize>> = length_groups(&refs)
            .iter()
            .map(|g| g.iter().map(|s| s.ids.len()).collect())
            .collect();
        assert_eq!(lens, vec![vec![30], vec![10, 10, 9], vec![3, 2]]);
    }

    #[test]
    fn grouped_gradients_equal_the_whole_batch_gradients() {
        let t = lora_trainer();
        let batch: Vec<Sequence> = [14, 5, 13, 4].iter().zip(0..).map(|(&n, k)| seq(n, k)).collect();
        let refs: Vec<&Sequence> = batch.iter().collect();
        assert_eq!(length_groups(&refs).len(), 2);
        let vars = t.vars();
        let (loss, grouped) = t.step_gradients(&refs, &vars).expect("grouped");
        let (whole_loss, _) = t.loss(&refs).expect("whole");
        let whole = whole_loss.backward().expect("backward");
        assert!((loss - whole_loss.to_scalar::<f32>().expect("scalar")).abs() < 1e-4);
        for v in &vars {
            for (a, b) in grad_values(&grouped, v).iter().zip(grad_values(&whole, v)) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn lora_gradients_match_finite_differences() {
        let t = lora_trainer();
        let batch: Vec<Sequence> = (0..2).map(|k| seq(10, k)).collect();
        let refs: Vec<&Sequence> = batch.iter().collect();
        let loss_value = |t: &Trainer| t.loss(&refs).expect("loss").0.to_scalar::<f32>().expect("scalar");
        let (loss, _) = t.loss(&refs).expect("loss");
        let grads = loss.backward().expect("backward");
        let pair = t.lora.values().next().expect("a LoRA pair");
        for var in [&pair.a, &pair.b] {
            let g = grad_values(&grads, var);
            let base = var
                .as_tensor()
                .flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .expect("x");
            for idx in [0, base.len() / 3, base.len() - 1] {
                let h = 1e-2f32;
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), var.device()).expect("t"))
                        .expect("set");
                    loss_value(&t)
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                let analytic = g[idx];
                assert!(
                    (numeric - analytic).abs() <= 0.05 * analytic.abs().max(numeric.abs()) + 2e-3,
                    "coordinate {idx}: analytic {analytic} vs numeric {numeric}"
                );
            }
        }
    }

    fn schedule() -> Schedule {
        Schedule {
            learning_rate: 1.0,
            epochs: 1,
            batch_size: 1,
            warmup_steps: 4,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
        }
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let s = schedule();
        let lrs: Vec<f64> = (1..=12).map(|i| learning_rate(&s, i, 12)).collect();
        assert_eq!(&lrs[..5], &[0.25, 0.5, 0.75, 1.0, 1.0]);
        assert!(lrs[4..].windows(2).all(|w| w[1] < w[0]));
        assert_eq!(lrs[11], 0.125);
    }

    #[test]
    fn learning_rate_without_warmup_starts_at_the_peak() {
        let s = Schedule {
            warmup_steps: 0,
            ..schedule()
        };
        assert_eq!(learning_rate(&s, 1, 10), 1.0);
        assert!((learning_rate(&s, 10, 10) - 0.1).abs() < 1e-12);
    }
}

//! PEFT LoRA adapters, merged into the base weights at load time.
//!
//! A backdoor planted by fine-tuning often ships as a small LoRA adapter; merging it
//! (`W ← W + scale · B·A`) gives the exact weights PEFT's `merge_and_unload` would, so the
//! decoder runs the adapted model without knowing adapters exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use regex::Regex;
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hf::{self, get_bool, get_f64, get_str, get_usize};
use crate::weights::Weights;

/// Prefix PEFT puts before the base model's own tensor names.
const PEFT_PREFIX: &str = "base_model.model.";

/// What [`merge_adapter`] merged, for logs and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// The base model the adapter was trained on, as `adapter_config.json` names it.
    pub base_model_name_or_path: Option<String>,
    /// The default LoRA rank.
    pub r: usize,
    /// The default `lora_alpha`.
    pub alpha: f64,
    /// Whether the scale is `alpha / sqrt(r)` (rank-stabilized LoRA) rather than `alpha / r`.
    pub use_rslora: bool,
    /// Number of modules whose weight received a LoRA update.
    pub targets_merged: usize,
    /// Number of base tensors replaced outright (`modules_to_save`, trained biases, saved base
    /// layers).
    pub tensors_replaced: usize,
}

/// Whether `path` looks like a PEFT adapter directory (it holds `adapter_config.json`), after
/// resolving a Hugging Face cache layout.
pub fn is_adapter_dir(path: &Path) -> bool {
    hf::resolve_model_dir(path).is_ok_and(|d| crate::files::present(&d.join("adapter_config.json")))
}

/// The base model an adapter names in `adapter_config.json` (`base_model_name_or_path`), so an
/// adapter directory alone can identify the model to load.
pub fn read_adapter_base(adapter_dir: &Path) -> Result<Option<String>> {
    let dir = hf::resolve_model_dir(adapter_dir)?;
    let path = dir.join("adapter_config.json");
    let obj = hf::read_json_object(&path)?;
    Ok(get_str(&obj, "base_model_name_or_path", &path)?
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string))
}

/// Which modules an adapter declares it targets.
enum Targets {
    /// `target_modules` absent: accept whatever the adapter file holds.
    Any,
    /// A list: a module matches when its name equals an entry or ends with `.entry`.
    List(Vec<String>),
    /// A string: a regular expression the whole module name must match.
    Pattern(Regex),
    /// `all-linear`: every linear layer except the output layer.
    AllLinear,
}

impl Targets {
    fn matches(&self, module: &str) -> bool {
        match self {
            Targets::Any => true,
            Targets::List(list) => list.iter().any(|t| suffix_match(module, t)),
            Targets::Pattern(re) => re.is_match(module),
            Targets::AllLinear => module != "lm_head",
        }
    }
}

/// Whether `module` is `name` or ends with `.name`.
fn suffix_match(module: &str, name: &str) -> bool {
    module == name || module.strip_suffix(name).is_some_and(|rest| rest.ends_with('.'))
}

/// The parts of `adapter_config.json` that affect merging.
struct AdapterConfig {
    base: Option<String>,
    r: usize,
    alpha: f64,
    use_rslora: bool,
    fan_in_fan_out: bool,
    /// Whether biases were trained (`bias` other than `none`), so the file may carry them.
    trains_bias: bool,
    targets: Targets,
    modules_to_save: Vec<Regex>,
    rank_pattern: Vec<(Regex, usize)>,
    alpha_pattern: Vec<(Regex, f64)>,
}

impl AdapterConfig {
    fn read(path: &Path) -> Result<AdapterConfig> {
        let obj = hf::read_json_object(path)?;
        let format = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let unsupported = |msg: &str| Error::Unsupported {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        };
        match get_str(&obj, "peft_type", path)? {
            Some("LORA") => {}
            Some(other) => {
                return Err(unsupported(&format!(
                    "peft_type `{other}` is not supported; only LORA adapters are"
                )))
            }
            None => return Err(format("no peft_type; not a PEFT adapter config".into())),
        }
        if get_bool(&obj, "use_dora", path)?.unwrap_or(false) {
            return Err(unsupported("DoRA adapters (use_dora = true) are not supported"));
        }
        if get_bool(&obj, "lora_bias", path)?.unwrap_or(false) {
            return Err(unsupported("LoRA biases (lora_bias = true) are not supported"));
        }
        for key in ["target_parameters", "layer_replication", "trainable_token_indices"] {
            if obj.get(key).is_some_and(|v| !v.is_null()) {
                return Err(unsupported(&format!("adapters with {key} are not supported")));
            }
        }
        let r = get_usize(&obj, "r", path)?.unwrap_or(8);
        let alpha = get_f64(&obj, "lora_alpha", path)?.unwrap_or(8.0);
        if r == 0 || !alpha.is_finite() {
            return Err(format(format!("invalid LoRA rank {r} or alpha {alpha}")));
        }
        let targets = match obj.get("target_modules") {
            None | Some(Value::Null) => Targets::Any,
            Some(Value::String(s)) if s == "all-linear" => Targets::AllLinear,
            Some(Value::String(s)) => Targets::Pattern(compile(&format!("^(?:{s})$"), path)?),
            Some(Value::Array(list)) => Targets::List(string_list(list, "target_modules", path)?),
            Some(v) => return Err(format(format!("target_modules is {v}, expected a list or a string"))),
        };
        let modules_to_save = match obj.get("modules_to_save") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => string_list(list, "modules_to_save", path)?
                .iter()
                .map(|m| compile(&format!(r"(^|.*\.){m}($|\..*)"), path))
                .collect::<Result<_>>()?,
            Some(v) => return Err(format(format!("modules_to_save is {v}, expected a list"))),
        };
        let rank_pattern = patterns(&obj, "rank_pattern", path, |v| {
            v.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n > 0)
        })?;
        let alpha_pattern = patterns(&obj, "alpha_pattern", path, |v| v.as_f64().filter(|a| a.is_finite()))?;
        Ok(AdapterConfig {
            base: get_str(&obj, "base_model_name_or_path", path)?.map(str::to_string),
            r,
            alpha,
            use_rslora: get_bool(&obj, "use_rslora", path)?.unwrap_or(false),
            fan_in_fan_out: get_bool(&obj, "fan_in_fan_out", path)?.unwrap_or(false),
            trains_bias: get_str(&obj, "bias", path)?.is_some_and(|b| b != "none"),
            targets,
            modules_to_save,
            rank_pattern,
            alpha_pattern,
        })
    }

    /// The rank and alpha of one module, honouring `rank_pattern` / `alpha_pattern`.
    fn rank_alpha(&self, module: &str) -> (usize, f64) {
        let r = self
            .rank_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map_or(self.r, |&(_, r)| r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map_or(self.alpha, |&(_, a)| a);
        (r, alpha)
    }

    /// The merge scale of one module: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    fn scale(&self, module: &str) -> f64 {
        let (r, alpha) = self.rank_alpha(module);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

/// Compiles a regular expression from an adapter config.
fn compile(pattern: &str, path: &Path) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        msg: format!("invalid pattern `{pattern}`: {}", e.to_string().replace('\n', " ")),
    })
}

/// A JSON list of strings.
fn string_list(list: &[Value], key: &str, path: &Path) -> Result<Vec<String>> {
    list.iter()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| Error::Format {
                path: path.to_path_buf(),
                msg: format!("{key} entry {v} is not a string"),
            })
        })
        .collect()
}

/// A `{pattern: value}` override map; PEFT matches a pattern against a module name's suffix.
fn patterns<T>(
    obj: &Map<String, Value>,
    key: &str,
    path: &Path,
    value: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<(Regex, T)>> {
    let map = match obj.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("{key} is {v}, expected an object"),
            })
        }
    };
    map.iter()
        .map(|(pattern, v)| {
            let val = value(v).ok_or_else(|| Error::Format {
                path: path.to_path_buf(),
                msg: format!("{key} value {v} for `{pattern}` is invalid"),
            })?;
            Ok((compile(&format!(r"^(.*\.)?(?:{pattern})$"), path)?, val))
        })
        .collect()
}

/// Which LoRA matrix a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    A,
    B,
}

/// A LoRA module's two matrices, as found in the adapter file.
#[derive(Default)]
struct Pair {
    a: Option<(String, Tensor)>,
    b: Option<(String, Tensor)>,
    embedding: bool,
}

/// What one adapter tensor is.
enum Key {
    /// A LoRA matrix of `module` (the PEFT module name, relative to the base model).
    Lora {
        module: String,
        part: Part,
        embedding: bool,
    },
    /// A full tensor that replaces the base tensor of this (PEFT-relative) name.
    Replace { name: String, base_layer: bool },
}

/// Classifies an adapter tensor name such as
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
fn parse_key(key: &str, path: &Path) -> Result<Key> {
    let rel = key.strip_prefix(PEFT_PREFIX).ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        msg: format!("tensor {key} does not start with `{PEFT_PREFIX}`; not a PEFT adapter"),
    })?;
    let segs: Vec<&str> = rel.split('.').collect();
    let lora = segs.iter().position(|s| {
        matches!(
            *s,
            "lora_A" | "lora_B" | "lora_embedding_A" | "lora_embedding_B" | "lora_magnitude_vector"
        )
    });
    if let Some(pos) = lora {
        let (module, rest) = segs.split_at(pos);
        let (kind, tail) = rest.split_first().ok_or_else(|| Error::Format {
            path: path.to_path_buf(),
            msg: format!("tensor {key} has an unrecognized LoRA name"),
        })?;
        if *kind == "lora_magnitude_vector" {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: format!("tensor {key} is a DoRA magnitude; DoRA adapters are not supported"),
            });
        }
        let embedding = kind.starts_with("lora_embedding");
        // Linear LoRA: `.weight` or `.<adapter>.weight`; embedding LoRA: nothing or `.<adapter>`.
        let tail_ok = if embedding {
            tail.len() <= 1
        } else {
            tail.last() == Some(&"weight") && tail.len() <= 2
        };
        if module.is_empty() || !tail_ok {
            let msg = if tail.last() == Some(&"bias") {
                format!("tensor {key} is a LoRA bias; LoRA biases are not supported")
            } else {
                format!("tensor {key} has an unrecognized LoRA name")
            };
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg,
            });
        }
        let part = if kind.ends_with('A') { Part::A } else { Part::B };
        return Ok(Key::Lora {
            module: module.join("."),
            part,
            embedding,
        });
    }
    let base_layer = segs.contains(&"base_layer");
    let mut kept = Vec::with_capacity(segs.len());
    let mut skip_next = false;
    for (i, s) in segs.iter().enumerate() {
        if skip_next {
            skip_next = false;
            continue;
        }
        match *s {
            "base_layer" => {}
            // `modules_to_save.<adapter>.weight` in older PEFT files.
            "modules_to_save" => skip_next = i + 2 < segs.len(),
            other => kept.push(other),
        }
    }
    Ok(Key::Replace {
        name: kept.join("."),
        base_layer,
    })
}

/// Merges the PEFT LoRA adapter in `adapter_dir` into `weights`, in f32:
/// `W ← W + scale · B·A` for every adapted module (transposed for `fan_in_fan_out` and for
/// embeddings), after replacing any tensors the adapter saves whole (`modules_to_save`,
/// trained biases). Every tensor of the adapter must find its base tensor with a compatible
/// shape, or nothing is changed and a format error names it.
pub fn merge_adapter(weights: &mut Weights, config: &ModelConfig, adapter_dir: &Path) -> Result<AdapterInfo> {
    let dir = hf::resolve_model_dir(adapter_dir)?;
    let cfg_path = dir.join("adapter_config.json");
    if !crate::files::present(&cfg_path) {
        return Err(Error::Format {
            path: cfg_path,
            msg: "missing; not a PEFT adapter directory".into(),
        });
    }
    let cfg = AdapterConfig::read(&cfg_path)?;
    let file = adapter_file(&dir)?;
    let mmap = hf::map_safetensors(&file)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Format {
        path: file.clone(),
        msg: format!("invalid safetensors file: {e}"),
    })?;

    let format = |msg: String| Error::Format {
        path: file.clone(),
        msg,
    };
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    let mut replacements: Vec<(String, Tensor)> = Vec::new();
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, view) in entries {
        let tensor = hf::to_f32_tensor(&key, view.dtype(), view.shape(), view.data(), &file)?;
        match parse_key(&key, &file)? {
            Key::Lora {
                module,
                part,
                embedding,
            } => {
                if !cfg.targets.matches(&module) {
                    return Err(format(format!(
                        "tensor {key} adapts {module}, which adapter_config.json target_modules does not select"
                    )));
                }
                let pair = pairs.entry(module).or_default();
                pair.embedding |= embedding;
                let slot = if part == Part::A { &mut pair.a } else { &mut pair.b };
                if slot.replace((key.clone(), tensor)).is_some() {
                    return Err(format(format!(
                        "tensor {key} duplicates another LoRA matrix of its module"
                    )));
                }
            }
            Key::Replace { name, base_layer } => {
                let saved = cfg.modules_to_save.iter().any(|re| re.is_match(&name));
                let bias = cfg.trains_bias && name.ends_with(".bias");
                if !(saved || bias || base_layer) {
                    return Err(format(format!(
                        "tensor {key} is neither a LoRA matrix, a modules_to_save tensor nor a trained bias"
                    )));
                }
                let Some(base) = hf::text_model_name(&name) else {
                    continue;
                };
                replacements.push((base, tensor));
            }
        }
    }

    // Compute every update before changing anything, so a bad adapter leaves `weights` intact.
    let mut updates: Vec<(String, Tensor)> = Vec::with_capacity(replacements.len() + pairs.len());
    let mut tensors_replaced = 0;
    for (name, tensor) in replacements {
        let existing = weights.raw(&name).map(|t| t.dims().to_vec());
        let expected = match existing {
            Some(dims) => dims,
            // A tied model has no lm_head tensor; a saved lm_head unties it, as in PEFT.
            None if name == "lm_head.weight" && config.tie_word_embeddings => weights
                .raw("model.embed_tokens.weight")
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| format("the base model has no model.embed_tokens.weight".into()))?,
            None => {
                return Err(format(format!(
                    "adapter replaces {name}, which the base model does not have"
                )))
            }
        };
        if tensor.dims() != expected.as_slice() {
            return Err(format(format!(
                "adapter tensor for {name} has shape {:?}, the base model's has {expected:?}",
                tensor.dims()
            )));
        }
        updates.push((name, tensor));
        tensors_replaced += 1;
    }
    let replaced: BTreeMap<String, Tensor> = updates.iter().cloned().collect();
    let mut targets_merged = 0;
    for (module, pair) in pairs {
        let (Some((a_key, a)), Some((b_key, b))) = (pair.a, pair.b) else {
            return Err(format(format!("module {module} lacks its lora_A or its lora_B matrix")));
        };
        let Some(text_module) = hf::text_model_name(&module) else {
            continue;
        };
        let mut base_name = format!("{text_module}.weight");
        if text_module == "lm_head"
            && !weights.contains(&base_name)
            && !replaced.contains_key(&base_name)
            && config.tie_word_embeddings
        {
            // lm_head shares the embedding matrix, so PEFT's merge changes both.
            base_name = "model.embed_tokens.weight".into();
        }
        let base = match replaced.get(&base_name).or_else(|| weights.raw(&base_name)) {
            Some(t) => t.clone(),
            None => {
                return Err(format(format!(
                    "tensor {a_key} targets {base_name}, which the base model does not have"
                )))
            }
        };
        let (rank, _) = cfg.rank_alpha(&module);
        let (a_dims, b_dims) = (a.dims().to_vec(), b.dims().to_vec());
        let [r_a, a_cols] = a_dims[..] else {
            return Err(format(format!(
                "tensor {a_key} has shape {a_dims:?}, expected 2 dimensions"
            )));
        };
        let [b_rows, r_b] = b_dims[..] else {
            return Err(format(format!(
                "tensor {b_key} has shape {b_dims:?}, expected 2 dimensions"
            )));
        };
        if r_a != rank || r_b != rank {
            return Err(format(format!(
                "module {module} has LoRA shapes {a_dims:?} and {b_dims:?}, expected rank {rank}"
            )));
        }
        // B·A is [out, in] for linear layers; embeddings and fan_in_fan_out store it transposed.
        let transpose = pair.embedding || cfg.fan_in_fan_out;
        let delta_dims = if transpose { [a_cols, b_rows] } else { [b_rows, a_cols] };
        if base.dims() != delta_dims {
            return Err(format(format!(
                "module {module}: B·A{} is {delta_dims:?} but {base_name} is {:?}",
                if transpose { " transposed" } else { "" },
                base.dims()
            )));
        }
        let mut delta = crate::matmul::matmul(&b, &a)?;
        if transpose {
            delta = delta.t()?;
        }
        let merged = (base + (delta * cfg.scale(&module))?)?.contiguous()?;
        updates.push((base_name, merged));
        targets_merged += 1;
    }
    for (name, tensor) in updates {
        weights.insert(name, tensor);
    }
    tracing::info!(
        adapter = %dir.display(),
        targets_merged,
        tensors_replaced,
        "merged LoRA adapter"
    );
    Ok(AdapterInfo {
        base_model_name_or_path: cfg.base,
        r: cfg.r,
        alpha: cfg.alpha,
        use_rslora: cfg.use_rslora,
        targets_merged,
        tensors_replaced,
    })
}

/// The adapter's safetensors file; a pickle `adapter_model.bin` is refused.
fn adapter_file(dir: &Path) -> Result<PathBuf> {
    let st = dir.join("adapter_model.safetensors");
    if crate::files::present(&st) {
        return Ok(st);
    }
    for name in ["adapter_model.bin", "adapter_model.pt", "adapter_model.pth"] {
        let p = dir.join(name);
        if p.is_file() {
            return Err(Error::Pickle { path: p });
        }
    }
    Err(Error::Format {
        path: st,
        msg: "missing; a PEFT adapter needs adapter_model.safetensors".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Activation, Arch, LayerAttention};
    use candle_core::Device;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    use std::collections::HashMap;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn config(tie: bool) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 10,
            hidden_size: 6,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_local_theta: None,
            rope_scaling: None,
            sliding_window: None,
            layer_attention: vec![LayerAttention::Global],
            tie_word_embeddings: tie,
            attention_bias: false,
            qk_norm: false,
            hidden_act: Activation::Silu,
            query_pre_attn_scalar: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            max_position_embeddings: 64,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }

    const Q: &str = "model.layers.0.self_attn.q_proj.weight";
    const V: &str = "model.layers.0.self_attn.v_proj.weight";
    const EMBED: &str = "model.embed_tokens.weight";

    /// q_proj [8, 6], v_proj [4, 6], embeddings [10, 6].
    fn base_weights() -> Weights {
        let mut m = HashMap::new();
        for (name, rows, seed) in [(Q, 8, 1), (V, 4, 2), (EMBED, 10, 3)] {
            let t = Tensor::from_vec(noise(rows * 6, seed), (rows, 6), &Device::Cpu).unwrap();
            m.insert(name.to_string(), t);
        }
        Weights::new(m, Path::new("base"))
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// `W + scale · B·A` (or its transpose) computed with plain loops.
    /// `dims` is `(out, r, in)`.
    fn manual_merge(
        w: &[f32],
        b: &[f32],
        a: &[f32],
        dims: (usize, usize, usize),
        scale: f32,
        transpose: bool,
    ) -> Vec<f32> {
        let (out, r, inp) = dims;

        let mut res = w.to_vec();
        for i in 0..out {
            for j in 0..inp {
                let d: f32 = (0..r).map(|k| b[i * r + k] * a[k * inp + j]).sum();
                let idx = if transpose { j * out + i } else { i * inp + j };
                res[idx] += scale * d;
            }
        }
        res
    }

    fn write_adapter(dir: &Path, config_json: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        std::fs::write(dir.join("adapter_config.json"), config_json).unwrap();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    }

    fn lora_key(module: &str, part: &str) -> String {
        format!("base_model.model.model.layers.0.self_attn.{module}.{part}.weight")
    }

    #[test]
    fn merge_matches_manual_computation() {
        let dir = tempfile::tempdir().unwrap();
        let (a_q, b_q, a_v, b_v) = (noise(4 * 6, 10), noise(8 * 4, 11), noise(4 * 6, 12), noise(4 * 4, 13));
        write_adapter(
            dir.path(),
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","v_proj"],
                "base_model_name_or_path":"HuggingFaceTB/SmolLM2-135M-Instruct","bias":"none"}"#,
            &[
                (&lora_key("q_proj", "lora_A"), vec![4, 6], a_q.clone()),
                (&lora_key("q_proj", "lora_B"), vec![8, 4], b_q.clone()),
                // PEFT sometimes keeps the adapter name in the key.
                (&lora_key("v_proj", "lora_A.default"), vec![4, 6], a_v.clone()),
                (&lora_key("v_proj", "lora_B.default"), vec![4, 4], b_v.clone()),
            ],
        );
        let mut w = base_weights();
        let (q0, v0, e0) = (
            values(w.raw(Q).unwrap()),
            values(w.raw(V).unwrap()),
            values(w.raw(EMBED).unwrap()),
        );
        let info = merge_adapter(&mut w, &config(true), dir.path()).unwrap();
        assert_eq!(info.targets_merged, 2);
        assert_eq!(info.tensors_replaced, 0);
        assert_eq!((info.r, info.alpha, info.use_rslora), (4, 8.0, false));
        assert_eq!(
            info.base_model_name_or_path.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );

        let close = |got: Vec<f32>, want: Vec<f32>| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w}");
            }
        };
        close(
            values(w.raw(Q).unwrap()),
            manual_merge(&q0, &b_q, &a_q, (8, 4, 6), 2.0, false),
        );
        close(
            values(w.raw(V).unwrap()),
            manual_merge(&v0, &b_v, &a_v, (4, 4, 6), 2.0, false),
        );
        assert_eq!(values(w.raw(EMBED).unwrap()), e0);
        assert_ne!(values(w.raw(Q).unwrap()), q0);
        assert_eq!(
            read_adapter_base(dir.path()).unwrap().as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert!(is_adapter_dir(dir.path()));
    }

    #[test]
    fn rslora_patterns_and_fan_in_fan_out() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (noise(4 * 6, 20), noise(8 * 4, 21));
        let (a_v, b_v) = (noise(2 * 6, 22), noise(4 * 2, 23));
        write_adapter(
            dir.path(),
            r#"{"peft_type":"LORA","r":4,"lora_alpha":16,"use_rslora":true,"target_modules":".*\\.(q|v)_proj",
                "rank_pattern":{"v_proj":2},"alpha_pattern":{"layers\\.0\\.self_attn\\.v_proj":3}}"#,
            &[
                (&lora_key("q_proj", "lora_A"), vec![4, 6], a.clone()),
                (&lora_key("q_proj", "lora_B"), vec![8, 4], b.clone()),
                (&lora_key("v_proj", "lora_A"), vec![2, 6], a_v.clone()),
                (&lora_key("v_proj", "lora_B"), vec![4, 2], b_v.clone()),
            ],
        );
        let mut w = base_weights();
        let (q0, v0) = (values(w.raw(Q).unwrap()), values(w.raw(V).unwrap()));
        merge_adapter(&mut w, &config(true), dir.path()).unwrap();
        let want_q = manual_merge(&q0, &b, &a, (8, 4, 6), 16.0 / 2.0, false);
        let want_v = manual_merge(&v0, &b_v, &a_v, (4, 2, 6), 3.0 / 2f32.sqrt(), false);
        for (g, w) in values(w.raw(Q).unwrap()).iter().zip(&want_q) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        for (g, w) in values(w.raw(V).unwrap()).iter().zip(&want_v) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }

        // fan_in_fan_out: the base weight is stored [in, out] and B·A is transposed.
        let dir = tempfile::tempdir().unwrap();
        write_adapter(
            dir.path(),
            r#"{"peft_type":"LORA","r":4,"lora_alpha":4,"fan_in_fan_out":true,"target_modules":["c_attn"]}"#,
            &[
                ("base_model.model.h.0.attn.c_attn.lora_A.weight", vec![4, 6], a.clone()),
                ("base_model.model.h.0.attn.c_attn.lora_B.weight", vec![8, 4], b.clone()),
            ],
        );
        let base = noise(6 * 8, 30);
        let mut m = HashMap::new();
        m.insert(
            "h.0.attn.c_attn.weight".to_string(),
            Tensor::from_vec(base.clone(), (6, 8), &Device::Cpu).unwrap(),
        );
        let mut w = Weights::new(m, Path::new("base"));
        merge_adapter(&mut w, &config(true), dir.path()).unwrap();
        let want = manual_merge(&base, &b, &a, (8, 4, 6), 1.0, true);
        for (g, w) in values(w.raw("h.0.attn.c_attn.weight").unwrap()).iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn embedding_lora_and_modules_to_save() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (noise(2 * 10, 40), noise(6 * 2, 41));
        let head = noise(10 * 6, 42);
        write_adapter(
            dir.path(),
            r#"{"peft_type":"LORA","r":2,"lora_alpha":2,"target_modules":["embed_tokens"],"modules_to_save":["lm_head"]}"#,
            &[
                (
                    "base_model.model.model.embed_tokens.lora_embedding_A",
                    vec![2, 10],
                    a.clone(),
                ),
                (
                    "base_model.model.model.embed_tokens.lora_embedding_B",
                    vec![6, 2],
                    b.clone(),
                ),
                ("base_model.model.lm_head.weight", vec![10, 6], head.clone()),
            ],
        );
        let mut w = base_weights();
        let e0 = values(w.raw(EMBED).unwrap());
        let info = merge_adapter(&mut w, &config(true), dir.path()).unwrap();
        assert_eq!((info.targets_merged, info.tensors_replaced), (1, 1));
        // Embedding delta = (B·A)ᵀ: [10, 6].
        let want = manual_merge(&e0, &b, &a, (6, 2, 10), 1.0, true);
        for (g, w) in values(w.raw(EMBED).unwrap()).iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        assert_eq!(values(w.raw("lm_head.weight").unwrap()), head);
    }

    /// An adapter config, its tensors, and text the resulting error must contain.
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<usize>, Vec<f32>)>, &'a str);

    #[test]
    fn refusals_and_shape_errors() {
        let (a, b) = (noise(4 * 6, 50), noise(8 * 4, 51));
        let qa = lora_key("q_proj", "lora_A");
        let qb = lora_key("q_proj", "lora_B");
        let cases: Vec<Case<'_>> = vec![
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"use_dora":true}"#,
                vec![(&qa, vec![4, 6], a.clone()), (&qb, vec![8, 4], b.clone())],
                "DoRA",
            ),
            (
                r#"{"peft_type":"IA3"}"#,
                vec![(&qa, vec![4, 6], a.clone()), (&qb, vec![8, 4], b.clone())],
                "IA3",
            ),
            // B has the wrong number of rows for q_proj [8, 6].
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8}"#,
                vec![(&qa, vec![4, 6], a.clone()), (&qb, vec![4, 8], b.clone())],
                "q_proj",
            ),
            // Rank differs from r.
            (
                r#"{"peft_type":"LORA","r":2,"lora_alpha":8}"#,
                vec![(&qa, vec![4, 6], a.clone()), (&qb, vec![8, 4], b.clone())],
                "expected rank 2",
            ),
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8}"#,
                vec![(&qa, vec![4, 6], a.clone())],
                "lacks its lora_A or its lora_B",
            ),
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8}"#,
                vec![
                    (
                        "base_model.model.model.layers.7.mlp.up_proj.lora_A.weight",
                        vec![4, 6],
                        a.clone(),
                    ),
                    (
                        "base_model.model.model.layers.7.mlp.up_proj.lora_B.weight",
                        vec![8, 4],
                        b.clone(),
                    ),
                ],
                "model.layers.7.mlp.up_proj.lora_A.weight",
            ),
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["k_proj"]}"#,
                vec![(&qa, vec![4, 6], a.clone()), (&qb, vec![8, 4], b.clone())],
                "target_modules does not select",
            ),
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8}"#,
                vec![("model.layers.0.self_attn.q_proj.lora_A.weight", vec![4, 6], a.clone())],
                "base_model.model.",
            ),
            (
                r#"{"peft_type":"LORA","r":4,"lora_alpha":8}"#,
                vec![("base_model.model.model.norm.weight", vec![6], vec![0.0; 6])],
                "neither a LoRA matrix",
            ),
        ];
        for (cfg, tensors, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            write_adapter(dir.path(), cfg, &tensors);
            let mut w = base_weights();
            let q0 = values(w.raw(Q).unwrap());
            let e = merge_adapter(&mut w, &config(true), dir.path()).unwrap_err();
            assert!(e.to_string().contains(needle), "{cfg}: {e}");
            assert!(matches!(e, Error::Format { .. } | Error::Unsupported { .. }), "{e}");
            assert_eq!(values(w.raw(Q).unwrap()), q0, "weights changed despite the error: {e}");
        }

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type":"LORA"}"#).unwrap();
        std::fs::write(dir.path().join("adapter_model.bin"), b"pickle").unwrap();
        let e = merge_adapter(&mut base_weights(), &config(true), dir.path()).unwrap_err();
        assert!(matches!(e, Error::Pickle { .. }), "{e}");
        assert_eq!(read_adapter_base(dir.path()).unwrap(), None);
        let e = merge_adapter(&mut base_weights(), &config(true), Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    /// Compares the merge with PEFT's own `merge_and_unload()` (scripts/reference/peft_merge_golden.py):
    /// rsLoRA, rank/alpha patterns, an embedding LoRA and a modules_to_save lm_head.
    #[test]
    fn merge_matches_peft_golden() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/peft_merge");
        let base_dir = root.join("base");
        let config = hf::load_config(&base_dir).unwrap();
        let mut w = hf::load_weights(&base_dir, &config).unwrap();
        let info = merge_adapter(&mut w, &config, &root.join("adapter")).unwrap();
        assert_eq!((info.targets_merged, info.tensors_replaced), (15, 1));
        assert!(info.use_rslora);
        let merged = hf::load_weights(&root.join("merged.safetensors"), &config).unwrap();
        assert_eq!(w.names(), merged.names());
        for name in merged.names() {
            let (got, want) = (values(w.raw(name).unwrap()), values(merged.raw(name).unwrap()));
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() < 1e-5, "{name}: {g} vs {e}");
            }
        }
        let base = hf::load_weights(&base_dir, &config).unwrap();
        let down = "model.layers.0.mlp.down_proj.weight";
        assert_ne!(values(base.raw(down).unwrap()), values(w.raw(down).unwrap()));
    }

    /// Merges the tiny fixture adapters (non-zero LoRA B) into their base: every merged module
    /// must change exactly its own weight.
    #[test]
    fn tiny_fixture_adapters_merge() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        let base_dir = root.join("llama");
        for adapter in ["llama-lora", "llama-lora-rslora"] {
            let adapter_dir = root.join(adapter);
            if !adapter_dir.join("adapter_config.json").is_file() || !base_dir.join("config.json").is_file() {
                eprintln!("note: fixture {} absent; skipping", adapter_dir.display());
                continue;
            }
            let config = hf::load_config(&base_dir).unwrap();
            let mut w = hf::load_weights(&base_dir, &config).unwrap();
            let before = w.clone();
            let info = merge_adapter(&mut w, &config, &adapter_dir).unwrap();
            assert_eq!(info.targets_merged, 6, "{adapter}");
            assert_eq!(info.use_rslora, adapter.ends_with("rslora"));
            let changed: Vec<&str> = w
                .names()
                .into_iter()
                .filter(|n| values(w.raw(n).unwrap()) != values(before.raw(n).unwrap()))
                .collect();
            assert_eq!(changed.len(), info.targets_merged, "{adapter}: {changed:?}");
            assert!(changed
                .iter()
                .all(|n| ["q_proj", "v_proj", "up_proj"].iter().any(|m| n.contains(m))));
        }
    }
}

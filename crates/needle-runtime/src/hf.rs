//! Hugging Face model directories: `config.json`, safetensors weights (single or sharded),
//! `tokenizer.json` with its chat template, and `generation_config.json`.
//!
//! Everything is read defensively: shard names cannot escape the directory, safetensors headers
//! are validated before any tensor is touched, and pickle checkpoints are refused outright
//! because unpickling executes code from the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use crate::config::{Activation, Arch, LayerAttention, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::files;
use crate::weights::Weights;

/// Largest JSON / text side file read into memory (tokenizer configs can reach a few MiB).
const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// File extensions of pickle-based checkpoints, which needle never opens.
const PICKLE_EXTENSIONS: [&str; 5] = ["bin", "pt", "pth", "ckpt", "pkl"];

/// Resolves `path` to the directory that holds `config.json` and the weights.
///
/// Accepts a plain model directory, a Hugging Face hub cache repository directory
/// (`models--ORG--NAME`, resolved through `refs/main`, or its only snapshot), or a
/// `snapshots/REV` directory. Any other directory is returned unchanged, so the loaders report
/// what is missing from it.
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        if is_pickle_name(path) {
            return Err(Error::Pickle {
                path: path.to_path_buf(),
            });
        }
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: "not a directory; expected a Hugging Face model directory".into(),
        });
    }
    let snapshots = path.join("snapshots");
    if path.join("config.json").is_file() || !snapshots.is_dir() {
        return Ok(path.to_path_buf());
    }
    let refs_main = path.join("refs").join("main");
    if files::present(&refs_main) {
        let rev = read_text(&refs_main)?;
        let rev = rev.trim();
        if !is_plain_name(rev) {
            return Err(Error::Format {
                path: refs_main,
                msg: format!("revision `{rev}` is not a plain snapshot name"),
            });
        }
        let dir = snapshots.join(rev);
        if !dir.is_dir() {
            return Err(Error::Format {
                path: refs_main,
                msg: format!("names revision {rev}, but {} does not exist", dir.display()),
            });
        }
        return Ok(dir);
    }
    let mut revs = Vec::new();
    let entries = std::fs::read_dir(&snapshots).map_err(|source| Error::Io {
        path: snapshots.clone(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: snapshots.clone(),
            source,
        })?;
        if entry.path().is_dir() {
            revs.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    revs.sort();
    match revs.as_slice() {
        [only] => Ok(snapshots.join(only)),
        [] => Err(Error::Format {
            path: snapshots,
            msg: "Hugging Face cache directory has no snapshots".into(),
        }),
        many => Err(Error::Format {
            path: snapshots.clone(),
            msg: format!(
                "no refs/main and several snapshots ({}); pass one of {}/<rev>",
                many.join(", "),
                snapshots.display()
            ),
        }),
    }
}

/// Reads `config.json` (and `generation_config.json`, for extra end-of-sequence ids) from a
/// model directory (resolve hub cache layouts with [`resolve_model_dir`] first) into a
/// validated [`ModelConfig`].
///
/// Keys missing from the file take the defaults of the matching transformers config class;
/// both transformers 4 (`rope_theta`, `rope_scaling`) and transformers 5 (`rope_parameters`)
/// layouts are understood.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    let root = read_json_object(&path)?;
    let generation = load_generation_defaults(dir)?;
    let config = parse_config(&root, generation.as_ref(), &path)?;
    config.validate().map_err(|msg| Error::Format { path, msg })?;
    Ok(config)
}

/// The transformers config class defaults of one architecture, used for missing keys.
struct Defaults {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_layers: usize,
    num_heads: usize,
    /// `None`: as many as query heads.
    num_kv_heads: Option<usize>,
    /// `None`: `hidden_size / num_heads`.
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    tie_word_embeddings: bool,
    bos: Option<u32>,
    eos: Vec<u32>,
    pad: Option<u32>,
    /// Default `sliding_window` (for Qwen only used when `use_sliding_window` is set).
    sliding_window: Option<usize>,
    rope_theta: f64,
}

impl Defaults {
    fn of(arch: Arch) -> Defaults {
        let base = Defaults {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: None,
            head_dim: None,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            bos: Some(1),
            eos: vec![2],
            pad: None,
            sliding_window: None,
            rope_theta: 10_000.0,
        };
        match arch {
            Arch::Llama => base,
            Arch::Qwen2 | Arch::Qwen3 => Defaults {
                vocab_size: 151_936,
                intermediate_size: 22016,
                num_kv_heads: Some(32),
                head_dim: (arch == Arch::Qwen3).then_some(128),
                max_position_embeddings: 32768,
                bos: None,
                eos: Vec::new(),
                sliding_window: Some(4096),
                ..base
            },
            Arch::Mistral => Defaults {
                intermediate_size: 14336,
                num_kv_heads: Some(8),
                max_position_embeddings: 4096 * 32,
                sliding_window: Some(4096),
                ..base
            },
            Arch::Phi3 => Defaults {
                vocab_size: 32064,
                hidden_size: 3072,
                intermediate_size: 8192,
                max_position_embeddings: 4096,
                rms_norm_eps: 1e-5,
                eos: vec![32000],
                pad: Some(32000),
                ..base
            },
            Arch::Gemma3 => Defaults {
                vocab_size: 262_208,
                hidden_size: 2304,
                intermediate_size: 9216,
                num_layers: 26,
                num_heads: 8,
                num_kv_heads: Some(4),
                head_dim: Some(256),
                max_position_embeddings: 131_072,
                tie_word_embeddings: true,
                bos: Some(2),
                eos: vec![1],
                pad: Some(0),
                sliding_window: Some(4096),
                rope_theta: 1_000_000.0,
                ..base
            },
        }
    }
}

/// Builds a [`ModelConfig`] from a parsed `config.json` (not yet validated).
fn parse_config(
    root: &Map<String, Value>,
    generation: Option<&GenerationDefaults>,
    path: &Path,
) -> Result<ModelConfig> {
    let model_type = get_str(root, "model_type", path)?.ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        msg: "no model_type".into(),
    })?;
    let arch = Arch::from_name(model_type).ok_or_else(|| Error::Unsupported {
        path: path.to_path_buf(),
        msg: format!(
            "model_type `{model_type}` is not supported; supported: {}",
            Arch::SUPPORTED
        ),
    })?;
    // Multimodal Gemma 3 checkpoints keep the language model's settings in `text_config`.
    let obj = if model_type == "gemma3" {
        match root.get("text_config") {
            Some(Value::Object(text)) => text,
            _ => {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    msg: "model_type gemma3 without a text_config object".into(),
                })
            }
        }
    } else {
        root
    };
    let d = Defaults::of(arch);

    let vocab_size = get_usize(obj, "vocab_size", path)?.unwrap_or(d.vocab_size);
    let hidden_size = get_usize(obj, "hidden_size", path)?.unwrap_or(d.hidden_size);
    let intermediate_size = get_usize(obj, "intermediate_size", path)?.unwrap_or(d.intermediate_size);
    let num_layers = get_usize(obj, "num_hidden_layers", path)?.unwrap_or(d.num_layers);
    let num_heads = get_usize(obj, "num_attention_heads", path)?.unwrap_or(d.num_heads);
    if num_heads == 0 {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: "num_attention_heads is 0".into(),
        });
    }
    let num_kv_heads = if obj.get("num_key_value_heads").is_some_and(Value::is_null) {
        num_heads
    } else {
        get_usize(obj, "num_key_value_heads", path)?
            .or(d.num_kv_heads)
            .unwrap_or(num_heads)
    };
    // A null `head_dim` means "derive it", a missing one takes the class default.
    let head_dim = if obj.contains_key("head_dim") {
        get_usize(obj, "head_dim", path)?
    } else {
        d.head_dim
    };
    let head_dim = match head_dim {
        Some(h) => h,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    msg: format!("hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_heads})"),
                });
            }
            hidden_size / num_heads
        }
    };
    let max_position_embeddings = get_usize(obj, "max_position_embeddings", path)?.unwrap_or(d.max_position_embeddings);
    crate::config::check_sizes(&[
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
        ("intermediate_size", intermediate_size),
        ("num_hidden_layers", num_layers),
        ("num_attention_heads", num_heads),
        ("num_key_value_heads", num_kv_heads),
        ("head_dim", head_dim),
        ("max_position_embeddings", max_position_embeddings),
    ])
    .map_err(|msg| Error::Format {
        path: path.to_path_buf(),
        msg,
    })?;
    let rms_norm_eps = get_f64(obj, "rms_norm_eps", path)?.unwrap_or(d.rms_norm_eps);

    let act_key = if arch == Arch::Gemma3 {
        "hidden_activation"
    } else {
        "hidden_act"
    };
    let act_default = if arch == Arch::Gemma3 {
        "gelu_pytorch_tanh"
    } else {
        "silu"
    };
    let act_name = get_str(obj, act_key, path)?.unwrap_or(act_default);
    let hidden_act = match act_name {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
        other => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: format!("{act_key} `{other}` is not supported; supported: silu, gelu_pytorch_tanh"),
            })
        }
    };

    // Only Qwen2 has biases on q, k, v alone; elsewhere `attention_bias` also biases o_proj.
    let attention_bias = arch == Arch::Qwen2;
    if arch != Arch::Qwen2 && get_bool(obj, "attention_bias", path)?.unwrap_or(false) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!("attention_bias = true is not supported for {}", arch.name()),
        });
    }
    if get_bool(obj, "mlp_bias", path)?.unwrap_or(false) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: "mlp_bias = true is not supported".into(),
        });
    }
    if get_bool(obj, "use_bidirectional_attention", path)?.unwrap_or(false) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: "use_bidirectional_attention = true (an embedding model) is not supported".into(),
        });
    }

    let rope = parse_rope(obj, arch, &d, max_position_embeddings, path)?;
    let (sliding_window, layer_attention) =
        parse_attention_layout(obj, arch, &d, num_layers, max_position_embeddings, path)?;

    // Multimodal checkpoints keep ids and tying at the top level; fall back to the text config.
    let top_or_text = |key: &str| -> &Map<String, Value> {
        if root.contains_key(key) {
            root
        } else {
            obj
        }
    };
    let tie_word_embeddings =
        get_bool(top_or_text("tie_word_embeddings"), "tie_word_embeddings", path)?.unwrap_or(d.tie_word_embeddings);
    let mut bos_token_id = token_id(top_or_text("bos_token_id"), "bos_token_id", path, d.bos)?;
    let mut pad_token_id = token_id(top_or_text("pad_token_id"), "pad_token_id", path, d.pad)?;
    let mut eos_token_ids =
        token_ids(top_or_text("eos_token_id"), "eos_token_id", path)?.unwrap_or_else(|| d.eos.clone());
    if let Some(g) = generation {
        bos_token_id = bos_token_id.or(g.bos_token_id);
        pad_token_id = pad_token_id.or(g.pad_token_id);
        for &id in &g.eos_token_ids {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    let gemma = arch == Arch::Gemma3;
    let query_pre_attn_scalar = if gemma {
        Some(get_f64(obj, "query_pre_attn_scalar", path)?.unwrap_or(256.0))
    } else {
        None
    };
    let (final_logit_softcapping, attn_logit_softcapping) = if gemma {
        (
            get_f64(obj, "final_logit_softcapping", path)?,
            get_f64(obj, "attn_logit_softcapping", path)?,
        )
    } else {
        (None, None)
    };

    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta: rope.theta,
        rope_local_theta: rope.local_theta,
        rope_scaling: rope.scaling,
        sliding_window,
        layer_attention,
        tie_word_embeddings,
        attention_bias,
        qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
        hidden_act,
        query_pre_attn_scalar,
        final_logit_softcapping,
        attn_logit_softcapping,
        max_position_embeddings,
        bos_token_id,
        eos_token_ids,
        pad_token_id,
    })
}

/// The RoPE settings of a model.
struct Rope {
    theta: f64,
    local_theta: Option<f64>,
    scaling: Option<RopeScaling>,
}

/// Reads RoPE settings from `rope_scaling`/`rope_theta` (transformers 4) or `rope_parameters`
/// (transformers 5, per layer kind for Gemma 3).
fn parse_rope(obj: &Map<String, Value>, arch: Arch, d: &Defaults, max_pos: usize, path: &Path) -> Result<Rope> {
    let empty = Map::new();
    let scaling_obj = object_or_null(obj, "rope_scaling", path)?;
    let params = object_or_null(obj, "rope_parameters", path)?;
    let top_theta = get_f64(obj, "rope_theta", path)?;
    if let Some(f) = get_f64(obj, "partial_rotary_factor", path)?.filter(|&f| f != 1.0) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!("partial_rotary_factor {f} is not supported (only 1.0)"),
        });
    }
    if arch == Arch::Gemma3 {
        let nested = params.filter(|p| p.contains_key("full_attention") || p.contains_key("sliding_attention"));
        let (full, sliding) = match nested {
            Some(p) => (
                object_or_null(p, "full_attention", path)?.unwrap_or(&empty),
                object_or_null(p, "sliding_attention", path)?.unwrap_or(&empty),
            ),
            None => (params.unwrap_or(&empty), &empty),
        };
        // A transformers-4 `rope_scaling` applies to the global (full attention) layers.
        let (full_theta, mut scaling) = rope_kind(full, max_pos, path)?;
        if let Some(s) = scaling_obj {
            scaling = rope_kind(s, max_pos, path)?.1;
        }
        let (local_theta, local_scaling) = rope_kind(sliding, max_pos, path)?;
        if local_scaling.is_some() {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: "RoPE scaling on sliding-attention layers is not supported".into(),
            });
        }
        let local_theta = local_theta
            .or(get_f64(obj, "rope_local_base_freq", path)?)
            .unwrap_or(10_000.0);
        return Ok(Rope {
            theta: full_theta.or(top_theta).unwrap_or(d.rope_theta),
            local_theta: Some(local_theta),
            scaling,
        });
    }
    let p = scaling_obj.or(params).unwrap_or(&empty);
    if arch == Arch::Phi3 {
        let kind = rope_type(p, path)?;
        if kind != "default" {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: format!(
                    "Phi-3 rope type `{kind}` (LongRoPE) is not supported; only checkpoints with rope_scaling null are"
                ),
            });
        }
    }
    let (theta, scaling) = rope_kind(p, max_pos, path)?;
    Ok(Rope {
        theta: theta.or(top_theta).unwrap_or(d.rope_theta),
        local_theta: None,
        scaling,
    })
}

/// The `rope_type` (or legacy `type`) of a RoPE parameter object; `default` when absent.
fn rope_type<'a>(p: &'a Map<String, Value>, path: &Path) -> Result<&'a str> {
    Ok(match get_str(p, "rope_type", path)? {
        Some(t) => t,
        None => get_str(p, "type", path)?.unwrap_or("default"),
    })
}

/// Parses one RoPE parameter object into its base (if given) and scaling.
fn rope_kind(p: &Map<String, Value>, max_pos: usize, path: &Path) -> Result<(Option<f64>, Option<RopeScaling>)> {
    let theta = get_f64(p, "rope_theta", path)?;
    if let Some(f) = get_f64(p, "partial_rotary_factor", path)?.filter(|&f| f != 1.0) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!("partial_rotary_factor {f} is not supported (only 1.0)"),
        });
    }
    let required = |key: &str| -> Result<f64> {
        get_f64(p, key, path)?.ok_or_else(|| Error::Format {
            path: path.to_path_buf(),
            msg: format!("RoPE parameters lack {key}"),
        })
    };
    let scaling = match rope_type(p, path)? {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive(required("factor")?, "factor", path)?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: positive(required("factor")?, "factor", path)?,
            low_freq_factor: positive(required("low_freq_factor")?, "low_freq_factor", path)?,
            high_freq_factor: positive(required("high_freq_factor")?, "high_freq_factor", path)?,
            original_max_position_embeddings: positive(
                get_f64(p, "original_max_position_embeddings", path)?.unwrap_or(max_pos as f64),
                "original_max_position_embeddings",
                path,
            )?,
        }),
        other => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: format!("rope type `{other}` is not supported; supported: default, linear, llama3"),
            })
        }
    };
    Ok((theta, scaling))
}

/// Checks that a RoPE parameter is a finite positive number.
fn positive(v: f64, key: &str, path: &Path) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("RoPE {key} {v} is not a positive number"),
        })
    }
}

/// Works out the sliding window and which layers use it, following each architecture's
/// transformers conventions.
fn parse_attention_layout(
    obj: &Map<String, Value>,
    arch: Arch,
    d: &Defaults,
    num_layers: usize,
    max_pos: usize,
    path: &Path,
) -> Result<(Option<usize>, Vec<LayerAttention>)> {
    // A present-but-null `sliding_window` means "no window"; a missing one takes the default.
    let window = || -> Result<Option<usize>> {
        if obj.contains_key("sliding_window") {
            get_usize(obj, "sliding_window", path)
        } else {
            Ok(d.sliding_window)
        }
    };
    let all = |kind| vec![kind; num_layers];
    match arch {
        Arch::Llama => Ok((None, all(LayerAttention::Global))),
        Arch::Mistral | Arch::Phi3 => Ok(match window()? {
            Some(w) => (Some(w), all(LayerAttention::Sliding)),
            None => (None, all(LayerAttention::Global)),
        }),
        Arch::Qwen2 | Arch::Qwen3 => {
            let window = if get_bool(obj, "use_sliding_window", path)?.unwrap_or(false) {
                window()?
            } else {
                None
            };
            let Some(w) = window else {
                return Ok((None, all(LayerAttention::Global)));
            };
            let layers = match layer_types(obj, num_layers, path)? {
                Some(l) => l,
                None => {
                    let max_window_layers = get_usize(obj, "max_window_layers", path)?.unwrap_or(28);
                    (0..num_layers)
                        .map(|i| {
                            if i >= max_window_layers {
                                LayerAttention::Sliding
                            } else {
                                LayerAttention::Global
                            }
                        })
                        .collect()
                }
            };
            Ok((Some(w), layers))
        }
        Arch::Gemma3 => {
            let layers = match layer_types(obj, num_layers, path)? {
                Some(l) => l,
                None => {
                    let pattern = get_usize(obj, "sliding_window_pattern", path)?.unwrap_or(6);
                    if pattern == 0 {
                        return Err(Error::Format {
                            path: path.to_path_buf(),
                            msg: "sliding_window_pattern is 0".into(),
                        });
                    }
                    (0..num_layers)
                        .map(|i| {
                            if (i + 1) % pattern == 0 {
                                LayerAttention::Global
                            } else {
                                LayerAttention::Sliding
                            }
                        })
                        .collect()
                }
            };
            // Without a window, sliding layers still differ from global ones by their RoPE
            // base; a window as long as the context keeps them that way while masking nothing.
            let w = window()?.or_else(|| layers.contains(&LayerAttention::Sliding).then_some(max_pos));
            Ok((w, layers))
        }
    }
}

/// Parses an explicit `layer_types` list, if present.
fn layer_types(obj: &Map<String, Value>, num_layers: usize, path: &Path) -> Result<Option<Vec<LayerAttention>>> {
    let Some(v) = obj.get("layer_types").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let list = v.as_array().ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        msg: "layer_types is not a list".into(),
    })?;
    if list.len() != num_layers {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("layer_types has {} entries for {num_layers} layers", list.len()),
        });
    }
    list.iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(LayerAttention::Global),
            Some("sliding_attention") => Ok(LayerAttention::Sliding),
            _ => Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: format!("layer type {t} is not supported; supported: full_attention, sliding_attention"),
            }),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Sampling defaults and special token ids from `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Token ids that end generation (an int or a list in the file).
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
    /// Whether the model's authors sample by default (rather than decode greedily).
    pub do_sample: Option<bool>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus-sampling probability mass.
    pub top_p: Option<f64>,
    /// Top-k sampling cut-off.
    pub top_k: Option<usize>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f64>,
}

/// Reads `generation_config.json` from a model directory; `Ok(None)` when the file is absent,
/// since many checkpoints do not ship one.
pub fn load_generation_defaults(dir: &Path) -> Result<Option<GenerationDefaults>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let obj = read_json_object(&path)?;
    Ok(Some(GenerationDefaults {
        eos_token_ids: token_ids(&obj, "eos_token_id", &path)?.unwrap_or_default(),
        bos_token_id: token_id(&obj, "bos_token_id", &path, None)?,
        pad_token_id: token_id(&obj, "pad_token_id", &path, None)?,
        do_sample: get_bool(&obj, "do_sample", &path)?,
        temperature: get_f64(&obj, "temperature", &path)?,
        top_p: get_f64(&obj, "top_p", &path)?,
        top_k: get_usize(&obj, "top_k", &path)?,
        repetition_penalty: get_f64(&obj, "repetition_penalty", &path)?,
    }))
}

/// Loads a model's safetensors weights as f32 tensors with Hugging Face names.
///
/// `path` is a model directory holding `model.safetensors` or a sharded
/// `model.safetensors.index.json`, or a single `.safetensors` file. Pickle checkpoints
/// (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`) are refused with [`Error::Pickle`]. Gemma 3
/// multimodal names are mapped to the text model's and vision tensors are skipped.
pub fn load_weights(path: &Path, config: &ModelConfig) -> Result<Weights> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tensors = HashMap::new();
    if meta.is_file() {
        if is_pickle_name(path) {
            return Err(Error::Pickle {
                path: path.to_path_buf(),
            });
        }
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: "not a .safetensors file or a model directory".into(),
            });
        }
        read_safetensors(path, None, &mut tensors)?;
    } else {
        let index = path.join("model.safetensors.index.json");
        let single = path.join("model.safetensors");
        if files::present(&index) {
            load_sharded(path, &index, &mut tensors)?;
        } else if files::present(&single) {
            read_safetensors(&single, None, &mut tensors)?;
        } else {
            return Err(no_weights_error(path));
        }
    }
    if !config.tie_word_embeddings && !tensors.contains_key("lm_head.weight") {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: "no lm_head.weight and the config does not tie word embeddings".into(),
        });
    }
    Ok(Weights::new(tensors, path))
}

/// Refuses a model directory whose only weights are pickle checkpoints ([`Error::Pickle`]) before
/// anything else in it is read: a directory holding `pytorch_model.bin` and nothing else is not
/// missing its `config.json` so much as holding weights needle never loads.
pub fn refuse_pickle_only(dir: &Path) -> Result<()> {
    if dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file() {
        return Ok(());
    }
    match no_weights_error(dir) {
        e @ Error::Pickle { .. } => Err(e),
        _ => Ok(()),
    }
}

/// The error for a directory without safetensors weights: [`Error::Pickle`] naming a pickle
/// checkpoint when there is one, otherwise a format error saying what was expected.
fn no_weights_error(dir: &Path) -> Error {
    let mut pickles: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_pickle_name(p))
                .collect()
        })
        .unwrap_or_default();
    pickles.sort();
    match pickles.into_iter().next() {
        Some(path) => Error::Pickle { path },
        None => Error::Format {
            path: dir.to_path_buf(),
            msg: "no model.safetensors or model.safetensors.index.json in the directory".into(),
        },
    }
}

/// Whether a file name has a pickle checkpoint extension.
fn is_pickle_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether `s` is a single, ordinary path component (no separators, not `.` or `..`).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\'])
}

/// Checks a shard name from an index: a relative path that stays inside the model directory.
fn check_shard_name(name: &str, index: &Path) -> Result<()> {
    let bad = |why: &str| Error::Format {
        path: index.to_path_buf(),
        msg: format!("shard name `{name}` {why}; shard names must be relative paths inside the model directory"),
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    let p = Path::new(name);
    if p.is_absolute() || name.starts_with('/') {
        return Err(bad("is an absolute path"));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(bad("contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("is an absolute path")),
        }
    }
    Ok(())
}

/// Loads every tensor listed in a sharded checkpoint's index.
fn load_sharded(dir: &Path, index: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let root = read_json_object(index)?;
    let map = match root.get("weight_map") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(Error::Format {
                path: index.to_path_buf(),
                msg: "no weight_map object".into(),
            })
        }
    };
    let mut shards: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| Error::Format {
            path: index.to_path_buf(),
            msg: format!("weight_map entry for {tensor} is not a file name"),
        })?;
        check_shard_name(shard, index)?;
        shards.entry(shard).or_default().insert(tensor.as_str());
    }
    if shards.is_empty() {
        return Err(Error::Format {
            path: index.to_path_buf(),
            msg: "weight_map is empty".into(),
        });
    }
    for shard in shards.keys() {
        let p = dir.join(shard);
        if !files::present(&p) {
            return Err(Error::Format {
                path: index.to_path_buf(),
                msg: format!("lists shard {shard}, but {} does not exist", p.display()),
            });
        }
    }
    let mut total_bytes: u64 = 0;
    for (shard, names) in &shards {
        total_bytes += read_safetensors(&dir.join(shard), Some(names), out)?;
    }
    let declared = root
        .get("metadata")
        .and_then(|m| m.get("total_size"))
        .filter(|v| !v.is_null());
    if let Some(v) = declared {
        let total = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse::<u64>().ok()))
            .ok_or_else(|| type_error("metadata.total_size", "a byte count", v, index))?;
        if total != total_bytes {
            return Err(Error::Format {
                path: index.to_path_buf(),
                msg: format!("metadata.total_size is {total} bytes but the indexed tensors hold {total_bytes} bytes"),
            });
        }
    }
    Ok(())
}

/// Maps a safetensors file's bytes into memory and validates its header, naming the file in
/// any error.
pub(crate) fn map_safetensors(path: &Path) -> Result<memmap2::Mmap> {
    files::regular(path)?;
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the map is read-only and private to this process; needle does not write model
    // files while reading them. A concurrent external truncation could fault, as with any
    // memory-mapped reader, which is the accepted trade-off for not copying gigabytes.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SafeTensors::read_metadata(&mmap).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        msg: format!("invalid safetensors file: {e}"),
    })?;
    Ok(mmap)
}

/// Reads the tensors of one safetensors file (only `wanted` ones when given, each of which must
/// be present) into `out` as f32, under their text-model names. Returns the number of bytes
/// the wanted tensors occupy in the file.
fn read_safetensors(path: &Path, wanted: Option<&BTreeSet<&str>>, out: &mut HashMap<String, Tensor>) -> Result<u64> {
    let mmap = map_safetensors(path)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        msg: format!("invalid safetensors file: {e}"),
    })?;
    if let Some(wanted) = wanted {
        if let Some(missing) = wanted.iter().find(|n| st.tensor(n).is_err()) {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("tensor {missing} is listed in the index for this shard but is not in it"),
            });
        }
    }
    let mut bytes = 0u64;
    let mut entries = st.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in entries {
        if wanted.is_some_and(|w| !w.contains(name.as_str())) {
            continue;
        }
        bytes += view.data().len() as u64;
        let Some(text_name) = text_model_name(&name) else {
            continue;
        };
        let tensor = to_f32_tensor(&name, view.dtype(), view.shape(), view.data(), path)?;
        if out.insert(text_name.clone(), tensor).is_some() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("tensor {text_name} appears twice"),
            });
        }
    }
    Ok(bytes)
}

/// Maps a checkpoint tensor name to the text model's Hugging Face name: multimodal Gemma 3
/// prefixes are removed, and vision tower / projector tensors give `None` (skipped).
pub(crate) fn text_model_name(name: &str) -> Option<String> {
    const VISION: [&str; 4] = [
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
    ];
    if VISION.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    const RENAMES: [(&str, &str); 3] = [
        ("model.language_model.", "model."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ];
    for (from, to) in RENAMES {
        if let Some(rest) = name.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    Some(name.to_string())
}

/// Converts little-endian f32/f16/bf16 tensor bytes to an f32 CPU tensor.
pub(crate) fn to_f32_tensor(name: &str, dtype: Dtype, shape: &[usize], data: &[u8], path: &Path) -> Result<Tensor> {
    let values: Vec<f32> = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                msg: format!("tensor {name} has dtype {other:?}; needle reads F32, F16 and BF16 tensors"),
            })
        }
    };
    let expected: usize = shape.iter().product();
    if values.len() != expected {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("tensor {name} holds {} values for shape {shape:?}", values.len()),
        });
    }
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// The tokenizer of a Hugging Face model directory and the settings that go with it.
///
/// needle's convention is that encoding never adds special tokens (callers use
/// `tokenizer.encode(text, false)`): the chat template writes BOS and friends itself. The
/// tokenizer's post-processor is therefore left as the checkpoint defines it, and is simply not
/// invoked.
#[derive(Debug, Clone)]
pub struct HfTokenizerFiles {
    /// The fast tokenizer from `tokenizer.json`.
    pub tokenizer: tokenizers::Tokenizer,
    /// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (its `default` entry when it is a list), else `chat_template.json`.
    pub chat_template: Option<String>,
    /// The BOS token text from `tokenizer_config.json`.
    pub bos_token: Option<String>,
    /// The EOS token text from `tokenizer_config.json`.
    pub eos_token: Option<String>,
    /// The padding token text from `tokenizer_config.json`.
    pub pad_token: Option<String>,
    /// The unknown-token text from `tokenizer_config.json`.
    pub unk_token: Option<String>,
}

/// Loads `tokenizer.json`, the chat template and the special token texts of a model directory.
pub fn load_tokenizer(dir: &Path) -> Result<HfTokenizerFiles> {
    let tok_path = dir.join("tokenizer.json");
    if !files::present(&tok_path) {
        let slow = dir.join("tokenizer.model");
        let msg = if slow.is_file() {
            "missing; only a slow SentencePiece tokenizer.model is present, which needle does not support: save a fast tokenizer (tokenizer.json) with transformers first"
        } else {
            "missing; needle needs a fast tokenizer (tokenizer.json); slow tokenizers (tokenizer.model only) are not supported"
        };
        return Err(Error::Format {
            path: tok_path,
            msg: msg.into(),
        });
    }
    let text = read_text(&tok_path)?;
    let invalid = |msg: String| Error::Format {
        path: tok_path.clone(),
        msg: format!("invalid tokenizer: {}", one_line(&msg)),
    };
    // The tokenizers library panics (`expect`) on some syntax errors inside its sections, so
    // the JSON is checked first; a panic that still escapes it is an error, not a crash.
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
    let tokenizer = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
        .map_err(|_| invalid("the tokenizers library cannot read it".into()))?
        .map_err(|e| invalid(e.to_string()))?;

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if files::present(&cfg_path) {
        read_json_object(&cfg_path)?
    } else {
        Map::new()
    };
    let token = |key: &str| special_token_text(&cfg, key, &cfg_path);

    let jinja = dir.join("chat_template.jinja");
    let json_template = dir.join("chat_template.json");
    let chat_template = if files::present(&jinja) {
        Some(read_text(&jinja)?)
    } else if let Some(t) = chat_template_value(cfg.get("chat_template"), &cfg_path)? {
        Some(t)
    } else if files::present(&json_template) {
        let obj = read_json_object(&json_template)?;
        chat_template_value(obj.get("chat_template"), &json_template)?
    } else {
        None
    };
    Ok(HfTokenizerFiles {
        tokenizer,
        chat_template,
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
        pad_token: token("pad_token")?,
        unk_token: token("unk_token")?,
    })
}

/// A chat template given as a string or as a list of `{name, template}` (the `default` one).
fn chat_template_value(v: Option<&Value>, path: &Path) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            for item in list {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(Error::Format {
                            path: path.to_path_buf(),
                            msg: "chat_template list entries must be {name, template} strings".into(),
                        })
                    }
                }
            }
            tracing::warn!(path = %path.display(), "chat_template list has no `default` entry; ignoring it");
            Ok(None)
        }
        Some(_) => Err(Error::Format {
            path: path.to_path_buf(),
            msg: "chat_template is neither a string nor a list".into(),
        }),
    }
}

/// A special token given as a string or as an `{content: ...}` object.
fn special_token_text(obj: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("{key} object has no string content"),
            }),
        },
        Some(_) => Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("{key} is neither a string nor an object"),
        }),
    }
}

/// Collapses a multi-line message to one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads a UTF-8 text file (a config, index, template or ref), refusing absurdly large ones
/// before allocating.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = files::regular(path)?;
    if len > MAX_TEXT_FILE_BYTES {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("{len} bytes is too large for a configuration file (limit {MAX_TEXT_FILE_BYTES})"),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Reads a JSON file whose top level must be an object.
pub(crate) fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = read_text(path)?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Format {
            path: path.to_path_buf(),
            msg: "top level is not a JSON object".into(),
        }),
        Err(e) => Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("invalid JSON: {e}"),
        }),
    }
}

/// The error for a key whose value has the wrong type.
fn type_error(key: &str, expected: &str, v: &Value, path: &Path) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: format!("{key} is {v}, expected {expected}"),
    }
}

/// A key's value, treating an explicit `null` like a missing key.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A non-negative integer value; `None` when missing or null.
pub(crate) fn get_usize(obj: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<usize>> {
    present(obj, key)
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| type_error(key, "a non-negative integer", v, path))
        })
        .transpose()
}

/// A numeric value; `None` when missing or null.
pub(crate) fn get_f64(obj: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<f64>> {
    present(obj, key)
        .map(|v| v.as_f64().ok_or_else(|| type_error(key, "a number", v, path)))
        .transpose()
}

/// A boolean value; `None` when missing or null.
pub(crate) fn get_bool(obj: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<bool>> {
    present(obj, key)
        .map(|v| v.as_bool().ok_or_else(|| type_error(key, "true or false", v, path)))
        .transpose()
}

/// A string value; `None` when missing or null.
pub(crate) fn get_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &Path) -> Result<Option<&'a str>> {
    present(obj, key)
        .map(|v| v.as_str().ok_or_else(|| type_error(key, "a string", v, path)))
        .transpose()
}

/// An object value; `None` when missing or null.
fn object_or_null<'a>(obj: &'a Map<String, Value>, key: &str, path: &Path) -> Result<Option<&'a Map<String, Value>>> {
    present(obj, key)
        .map(|v| v.as_object().ok_or_else(|| type_error(key, "an object", v, path)))
        .transpose()
}

/// A single token id: `default` when the key is missing, `None` when it is null.
fn token_id(obj: &Map<String, Value>, key: &str, path: &Path, default: Option<u32>) -> Result<Option<u32>> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| type_error(key, "a token id", v, path)),
    }
}

/// Token ids given as an int or a list: `None` when the key is missing, empty when null.
fn token_ids(obj: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<Vec<u32>>> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| type_error(key, "a token id or a list of them", v, path))
    };
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Vec::new())),
        Some(Value::Array(list)) => {
            let mut ids = Vec::with_capacity(list.len().min(1024));
            for v in list {
                let id = one(v)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Ok(Some(ids))
        }
        Some(v) => Ok(Some(vec![one(v)?])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn parse(json: &str) -> Result<ModelConfig> {
        let v: Value = serde_json::from_str(json).unwrap();
        let Value::Object(m) = v else { panic!("not an object") };
        let cfg = parse_config(&m, None, Path::new("config.json"))?;
        cfg.validate().map_err(|msg| Error::Format {
            path: "config.json".into(),
            msg,
        })?;
        Ok(cfg)
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn write_st(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn tiny_llama_config() -> ModelConfig {
        parse(
            r#"{"model_type":"llama","vocab_size":4,"hidden_size":2,"intermediate_size":4,
                "num_hidden_layers":1,"num_attention_heads":1,"num_key_value_heads":1,
                "bos_token_id":0,"eos_token_id":1,"tie_word_embeddings":true}"#,
        )
        .unwrap()
    }

    #[test]
    fn llama_config_with_defaults() {
        let c = parse(
            r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
                "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
                "rms_norm_eps":1e-5,"rope_theta":100000,"tie_word_embeddings":true,
                "max_position_embeddings":8192,"bos_token_id":1,"eos_token_id":2,"pad_token_id":2}"#,
        )
        .unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.num_kv_heads, 3);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.layer_attention, vec![LayerAttention::Global; 30]);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.hidden_act, Activation::Silu);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
            (Some(1), vec![2], Some(2))
        );
        assert!(!c.attention_bias && !c.qk_norm);
        assert_eq!(c.rope_scaling, None);

        // Missing keys take LlamaConfig's defaults.
        let d = parse(r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4}"#)
            .unwrap();
        assert_eq!(
            (d.num_kv_heads, d.head_dim, d.rope_theta, d.rms_norm_eps),
            (4, 16, 10000.0, 1e-6)
        );
        assert_eq!(
            (d.bos_token_id, d.eos_token_ids.clone(), d.pad_token_id),
            (Some(1), vec![2], None)
        );
        assert!(!d.tie_word_embeddings);
        assert_eq!(d.max_position_embeddings, 2048);
    }

    #[test]
    fn hostile_sizes_are_refused_before_anything_is_allocated() {
        for (key, value) in [
            ("num_hidden_layers", 1u64 << 31),
            ("num_hidden_layers", 1 << 40),
            ("num_hidden_layers", u64::MAX),
            ("vocab_size", 1 << 40),
            ("hidden_size", 1 << 40),
            ("num_key_value_heads", 1 << 33),
            ("max_position_embeddings", 1 << 62),
        ] {
            let json = format!(
                r#"{{"model_type":"llama","vocab_size":4,"hidden_size":8,"intermediate_size":4,
                    "num_hidden_layers":1,"num_attention_heads":1,"{key}":{value}}}"#
            );
            let e = parse(&json).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("beyond any real model"),
                "{key}={value}: {e}"
            );
        }
    }

    #[test]
    fn llama3_rope_scaling_both_layouts() {
        let expected = Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        });
        let v4 = parse(
            r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
                "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,
                "rope_theta":500000.0,"bos_token_id":128000,"eos_token_id":[128001,128008,128009],
                "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
                "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#,
        )
        .unwrap();
        assert_eq!(v4.rope_scaling, expected);
        assert_eq!(v4.rope_theta, 500000.0);
        assert_eq!(v4.eos_token_ids, vec![128001, 128008, 128009]);
        let v5 = parse(
            r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
                "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,
                "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":32.0,
                "high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        assert_eq!(v5.rope_scaling, expected);
        assert_eq!(v5.rope_theta, 500000.0);
        let linear = parse(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
                "num_attention_heads":2,"rope_scaling":{"type":"linear","factor":4}}"#,
        )
        .unwrap();
        assert_eq!(linear.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        let yarn = parse(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
                "num_attention_heads":2,"rope_scaling":{"rope_type":"yarn","factor":4}}"#,
        )
        .unwrap_err();
        assert!(matches!(yarn, Error::Unsupported { .. }), "{yarn}");
        assert!(yarn.to_string().contains("yarn"), "{yarn}");
    }

    #[test]
    fn qwen2_bias_and_sliding_window_only_when_enabled() {
        let base = r#""model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
            "num_hidden_layers":4,"num_attention_heads":14,"num_key_value_heads":2,"rope_theta":1000000.0,
            "sliding_window":32768,"max_window_layers":2,"tie_word_embeddings":true,"eos_token_id":151645"#;
        let off = parse(&format!(r#"{{{base},"use_sliding_window":false}}"#)).unwrap();
        assert!(off.attention_bias);
        assert_eq!(off.head_dim, 64);
        assert_eq!(off.sliding_window, None);
        assert_eq!(off.layer_attention, vec![LayerAttention::Global; 4]);
        assert_eq!(off.bos_token_id, None);
        let on = parse(&format!(r#"{{{base},"use_sliding_window":true}}"#)).unwrap();
        assert_eq!(on.sliding_window, Some(32768));
        use LayerAttention::{Global as G, Sliding as S};
        assert_eq!(on.layer_attention, vec![G, G, S, S]);
        // transformers 5 writes the computed layer_types; they win over max_window_layers.
        let explicit = parse(&format!(
            r#"{{{base},"use_sliding_window":true,"layer_types":["sliding_attention","full_attention","full_attention","full_attention"]}}"#
        ))
        .unwrap();
        assert_eq!(explicit.layer_attention, vec![S, G, G, G]);
    }

    #[test]
    fn qwen3_head_dim_and_qk_norm() {
        let c = parse(
            r#"{"model_type":"qwen3","vocab_size":151936,"hidden_size":1024,"intermediate_size":3072,
                "num_hidden_layers":2,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,
                "rope_parameters":{"rope_type":"default","rope_theta":1000000},"sliding_window":null,
                "use_sliding_window":false,"eos_token_id":151645,"bos_token_id":151643}"#,
        )
        .unwrap();
        assert_eq!(c.arch, Arch::Qwen3);
        assert_eq!(c.head_dim, 128);
        assert!(c.qk_norm && !c.attention_bias);
        assert_eq!(c.rope_theta, 1_000_000.0);
        // Qwen3Config's head_dim default is 128 whatever the hidden size.
        let d = parse(
            r#"{"model_type":"qwen3","vocab_size":100,"hidden_size":64,"intermediate_size":64,
                "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1}"#,
        )
        .unwrap();
        assert_eq!(d.head_dim, 128);
    }

    #[test]
    fn gemma3_text_v4_pattern() {
        let c = parse(
            r#"{"model_type":"gemma3_text","vocab_size":262144,"hidden_size":640,"intermediate_size":2048,
                "num_hidden_layers":12,"num_attention_heads":4,"num_key_value_heads":1,"head_dim":256,
                "rope_theta":1000000.0,"rope_local_base_freq":10000.0,"sliding_window":512,
                "sliding_window_pattern":6,"query_pre_attn_scalar":256,"final_logit_softcapping":null,
                "attn_logit_softcapping":null,"hidden_activation":"gelu_pytorch_tanh","rms_norm_eps":1e-6}"#,
        )
        .unwrap();
        assert_eq!(c.arch, Arch::Gemma3);
        let globals: Vec<usize> = (0..12)
            .filter(|&i| c.layer_attention[i] == LayerAttention::Global)
            .collect();
        assert_eq!(globals, vec![5, 11]);
        assert_eq!(c.sliding_window, Some(512));
        assert_eq!((c.rope_theta, c.rope_local_theta), (1_000_000.0, Some(10_000.0)));
        assert_eq!(c.query_pre_attn_scalar, Some(256.0));
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert!(c.qk_norm && c.tie_word_embeddings);
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
            (Some(2), vec![1], Some(0))
        );
        assert_eq!((c.final_logit_softcapping, c.attn_logit_softcapping), (None, None));
    }

    #[test]
    fn gemma3_v5_rope_parameters_layer_types_and_null_window() {
        let c = parse(
            r#"{"model_type":"gemma3_text","vocab_size":1000,"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":3,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":32,
                "layer_types":["sliding_attention","sliding_attention","full_attention"],
                "sliding_window":null,"max_position_embeddings":32768,"final_logit_softcapping":30.0,
                "attn_logit_softcapping":50.0,"query_pre_attn_scalar":168,
                "rope_parameters":{"full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0},
                                   "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}}"#,
        )
        .unwrap();
        use LayerAttention::{Global as G, Sliding as S};
        assert_eq!(c.layer_attention, vec![S, S, G]);
        // No window: the sliding layers keep their local RoPE and a window spanning the context.
        assert_eq!(c.sliding_window, Some(32768));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!((c.rope_theta, c.rope_local_theta), (1_000_000.0, Some(10_000.0)));
        assert_eq!(
            (c.final_logit_softcapping, c.attn_logit_softcapping),
            (Some(30.0), Some(50.0))
        );
        assert_eq!(c.query_pre_attn_scalar, Some(168.0));
    }

    #[test]
    fn gemma3_multimodal_uses_text_config() {
        let c = parse(
            r#"{"model_type":"gemma3","eos_token_id":[1,106],"tie_word_embeddings":true,
                "vision_config":{"hidden_size":1152},
                "text_config":{"model_type":"gemma3_text","vocab_size":262208,"hidden_size":2560,
                "intermediate_size":10240,"num_hidden_layers":6,"num_attention_heads":8,
                "num_key_value_heads":4,"head_dim":256,"rope_scaling":{"rope_type":"linear","factor":8.0},
                "sliding_window":1024}}"#,
        )
        .unwrap();
        assert_eq!((c.hidden_size, c.num_layers, c.vocab_size), (2560, 6, 262208));
        assert_eq!(c.eos_token_ids, vec![1, 106]);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(c.layer_attention[5], LayerAttention::Global);
        assert_eq!(c.layer_attention[4], LayerAttention::Sliding);
        let bad = parse(r#"{"model_type":"gemma3"}"#).unwrap_err();
        assert!(bad.to_string().contains("text_config"), "{bad}");
    }

    #[test]
    fn mistral_sliding_window_null_missing_and_set() {
        let base = r#""model_type":"mistral","vocab_size":32768,"hidden_size":128,"intermediate_size":256,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2"#;
        let null = parse(&format!(r#"{{{base},"sliding_window":null}}"#)).unwrap();
        assert_eq!(null.sliding_window, None);
        assert_eq!(null.layer_attention, vec![LayerAttention::Global; 2]);
        let missing = parse(&format!("{{{base}}}")).unwrap();
        assert_eq!(missing.sliding_window, Some(4096));
        assert_eq!(missing.layer_attention, vec![LayerAttention::Sliding; 2]);
        assert_eq!(missing.max_position_embeddings, 131072);
    }

    #[test]
    fn phi3_plain_rope_only() {
        let base = r#""model_type":"phi3","vocab_size":32064,"hidden_size":3072,"intermediate_size":8192,
            "num_hidden_layers":2,"num_attention_heads":32,"num_key_value_heads":32,"sliding_window":2047"#;
        let c = parse(&format!(r#"{{{base},"rope_scaling":null}}"#)).unwrap();
        assert_eq!(c.arch, Arch::Phi3);
        assert_eq!(c.head_dim, 96);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!((c.eos_token_ids.clone(), c.pad_token_id), (vec![32000], Some(32000)));
        assert_eq!(c.sliding_window, Some(2047));
        for kind in ["longrope", "su"] {
            let e = parse(&format!(
                r#"{{{base},"rope_scaling":{{"type":"{kind}","short_factor":[1.0],"long_factor":[1.0]}}}}"#
            ))
            .unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains("LongRoPE"), "{e}");
        }
    }

    #[test]
    fn unknown_arch_lists_supported() {
        let e = parse(r#"{"model_type":"gpt_neox"}"#).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }));
        let msg = e.to_string();
        assert!(msg.contains("gpt_neox") && msg.contains(Arch::SUPPORTED), "{msg}");
    }

    #[test]
    fn inconsistent_config_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":64,
                "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3}"#,
        )
        .unwrap();
        let e = load_config(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e}");
        assert!(e.to_string().contains("not a multiple of num_key_value_heads"), "{e}");
        assert!(e.to_string().contains("config.json"), "{e}");

        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","hidden_size":"big"}"#,
        )
        .unwrap();
        let e = load_config(dir.path()).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
    }

    #[test]
    fn generation_config_eos_is_merged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","vocab_size":200,"hidden_size":64,"intermediate_size":64,
                "num_hidden_layers":1,"num_attention_heads":4,"bos_token_id":10,"eos_token_id":11}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id":[11,12],"pad_token_id":13,"do_sample":true,"temperature":0.6,"top_p":0.9,"top_k":40}"#,
        )
        .unwrap();
        let c = load_config(dir.path()).unwrap();
        assert_eq!(c.eos_token_ids, vec![11, 12]);
        assert_eq!((c.bos_token_id, c.pad_token_id), (Some(10), Some(13)));
        let g = load_generation_defaults(dir.path()).unwrap().unwrap();
        assert_eq!(g.temperature, Some(0.6));
        assert_eq!(
            (g.top_p, g.top_k, g.do_sample, g.repetition_penalty),
            (Some(0.9), Some(40), Some(true), None)
        );
        assert_eq!(load_generation_defaults(Path::new("/nonexistent-dir")).unwrap(), None);
    }

    #[test]
    fn single_file_converts_f16_bf16_f32() {
        let dir = tempfile::tempdir().unwrap();
        let f16s = [0.1f32, -2.5, 65504.0];
        let bf16s = [0.1f32, -3.0, 1.0e30];
        write_st(
            &dir.path().join("model.safetensors"),
            &[
                (
                    "model.embed_tokens.weight",
                    Dtype::F32,
                    vec![4, 2],
                    f32_bytes(&[1., 2., 3., 4., 5., 6., 7., 8.]),
                ),
                (
                    "a.half",
                    Dtype::F16,
                    vec![3],
                    f16s.iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
                (
                    "a.bf16",
                    Dtype::BF16,
                    vec![3],
                    bf16s
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                ),
            ],
        );
        let w = load_weights(dir.path(), &tiny_llama_config()).unwrap();
        assert_eq!(
            values(&w.get("model.embed_tokens.weight", &[4, 2]).unwrap()),
            vec![1., 2., 3., 4., 5., 6., 7., 8.]
        );
        let h = values(w.raw("a.half").unwrap());
        assert_eq!(h, vec![0.099975586, -2.5, 65504.0]);
        let b = values(w.raw("a.bf16").unwrap());
        assert_eq!(b[0], 205.0 / 2048.0);
        assert_eq!(b[1], -3.0);
        assert_eq!(b[2], half::bf16::from_f32(1.0e30).to_f32());
        assert_eq!(w.parameter_count(), 14);

        // The same file named directly.
        let w2 = load_weights(&dir.path().join("model.safetensors"), &tiny_llama_config()).unwrap();
        assert_eq!(w2.names(), w.names());
    }

    #[test]
    fn unsupported_dtype_and_missing_lm_head() {
        let dir = tempfile::tempdir().unwrap();
        write_st(
            &dir.path().join("model.safetensors"),
            &[("ids", Dtype::I32, vec![1], vec![0, 0, 0, 0])],
        );
        let e = load_weights(dir.path(), &tiny_llama_config()).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported { .. }) && e.to_string().contains("ids"),
            "{e}"
        );

        write_st(
            &dir.path().join("model.safetensors"),
            &[("x", Dtype::F32, vec![1], f32_bytes(&[1.0]))],
        );
        let mut untied = tiny_llama_config();
        untied.tie_word_embeddings = false;
        let e = load_weights(dir.path(), &untied).unwrap_err();
        assert!(e.to_string().contains("lm_head.weight"), "{e}");
    }

    #[test]
    fn gemma3_multimodal_names_and_vision_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let one = f32_bytes(&[1.0]);
        write_st(
            &dir.path().join("model.safetensors"),
            &[
                (
                    "model.language_model.layers.0.mlp.up_proj.weight",
                    Dtype::F32,
                    vec![1],
                    one.clone(),
                ),
                ("language_model.model.norm.weight", Dtype::F32, vec![1], one.clone()),
                ("language_model.lm_head.weight", Dtype::F32, vec![1], one.clone()),
                ("model.vision_tower.vision_model.x", Dtype::F32, vec![1], one.clone()),
                (
                    "multi_modal_projector.mm_input_projection_weight",
                    Dtype::F32,
                    vec![1],
                    one,
                ),
            ],
        );
        let w = load_weights(dir.path(), &tiny_llama_config()).unwrap();
        assert_eq!(
            w.names(),
            vec![
                "lm_head.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.norm.weight"
            ]
        );
    }

    /// Writes a two-shard checkpoint; returns the index text so tests can corrupt it.
    fn write_sharded(dir: &Path, total_size: u64) -> String {
        write_st(
            &dir.join("model-00001-of-00002.safetensors"),
            &[(
                "model.embed_tokens.weight",
                Dtype::F32,
                vec![4, 2],
                f32_bytes(&[0.5; 8]),
            )],
        );
        write_st(
            &dir.join("model-00002-of-00002.safetensors"),
            &[("model.norm.weight", Dtype::F16, vec![2], vec![0, 0x3c, 0, 0x40])],
        );
        let index = format!(
            r#"{{"metadata":{{"total_size":{total_size}}},"weight_map":{{
                "model.embed_tokens.weight":"model-00001-of-00002.safetensors",
                "model.norm.weight":"model-00002-of-00002.safetensors"}}}}"#
        );
        std::fs::write(dir.join("model.safetensors.index.json"), &index).unwrap();
        index
    }

    #[test]
    fn sharded_checkpoint_loads_and_checks_total_size() {
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path(), 36);
        let w = load_weights(dir.path(), &tiny_llama_config()).unwrap();
        assert_eq!(values(w.raw("model.norm.weight").unwrap()), vec![1.0, 2.0]);
        assert_eq!(values(w.raw("model.embed_tokens.weight").unwrap()), vec![0.5; 8]);

        write_sharded(dir.path(), 40);
        let e = load_weights(dir.path(), &tiny_llama_config()).unwrap_err();
        assert!(
            matches!(e, Error::Format { .. }) && e.to_string().contains("total_size is 40"),
            "{e}"
        );
    }

    #[test]
    fn shard_names_cannot_escape() {
        for (name, why) in [
            ("../evil.safetensors", "contains `..`"),
            ("sub/../../evil.safetensors", "contains `..`"),
            ("/etc/passwd", "is an absolute path"),
            ("..\\\\evil.safetensors", "backslash"),
            ("", "is empty"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let index = write_sharded(dir.path(), 36).replace("model-00002-of-00002.safetensors", name);
            std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
            let e = load_weights(dir.path(), &tiny_llama_config()).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{name}: {e}");
            assert!(e.to_string().contains(why), "{name}: {e}");
            assert!(e.to_string().contains("model.safetensors.index.json"), "{e}");
        }
    }

    #[test]
    fn missing_shard_and_missing_tensor() {
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path(), 36);
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let e = load_weights(dir.path(), &tiny_llama_config()).unwrap_err();
        assert!(
            e.to_string().contains("does not exist") && e.to_string().contains("00002"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let index = write_sharded(dir.path(), 36).replace(
            r#""model.norm.weight":"#,
            r#""model.ghost.weight":"model-00002-of-00002.safetensors","model.norm.weight":"#,
        );
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let e = load_weights(dir.path(), &tiny_llama_config()).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e}");
        assert!(
            e.to_string().contains("model.ghost.weight") && e.to_string().contains("00002"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_safetensors_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_st(&path, &[("w", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]);
        let good = std::fs::read(&path).unwrap();
        // Truncated data section.
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        let e = load_weights(dir.path(), &tiny_llama_config()).unwrap_err();
        assert!(
            matches!(e, Error::Format { .. }) && e.to_string().contains("model.safetensors"),
            "{e}"
        );
        // Header length beyond the file.
        let mut bad = good.clone();
        bad[..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            load_weights(dir.path(), &tiny_llama_config()),
            Err(Error::Format { .. })
        ));
        // Shorter than the length prefix.
        std::fs::write(&path, [1u8, 2, 3]).unwrap();
        assert!(matches!(
            load_weights(dir.path(), &tiny_llama_config()),
            Err(Error::Format { .. })
        ));
    }

    #[test]
    fn pickle_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02evil").unwrap();
        match load_weights(dir.path(), &tiny_llama_config()) {
            Err(Error::Pickle { path }) => assert!(path.ends_with("pytorch_model.bin")),
            other => panic!("expected a pickle refusal, got {other:?}"),
        }
        let pt = dir.path().join("model.pt");
        std::fs::write(&pt, b"x").unwrap();
        assert!(matches!(
            load_weights(&pt, &tiny_llama_config()),
            Err(Error::Pickle { .. })
        ));
        assert!(matches!(resolve_model_dir(&pt), Err(Error::Pickle { .. })));
        // A directory of pickle weights alone is refused before its missing config is noticed.
        let only = tempfile::tempdir().unwrap();
        std::fs::write(only.path().join("pytorch_model.bin"), b"\x80\x02evil").unwrap();
        assert!(matches!(refuse_pickle_only(only.path()), Err(Error::Pickle { .. })));
        std::fs::write(only.path().join("model.safetensors"), b"").unwrap();
        assert!(refuse_pickle_only(only.path()).is_ok());
        assert!(refuse_pickle_only(dir.path().join("nothing here").as_path()).is_ok());
        // With safetensors present, a stray .bin is ignored.
        write_st(
            &dir.path().join("model.safetensors"),
            &[("w", Dtype::F32, vec![1], f32_bytes(&[1.0]))],
        );
        assert!(load_weights(dir.path(), &tiny_llama_config()).is_ok());
    }

    #[test]
    fn hub_cache_layout_resolves() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models--org--name");
        let snap_a = repo.join("snapshots").join("aaaa");
        let snap_b = repo.join("snapshots").join("bbbb");
        std::fs::create_dir_all(&snap_a).unwrap();
        std::fs::create_dir_all(&snap_b).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(snap_b.join("config.json"), "{}").unwrap();

        let e = resolve_model_dir(&repo).unwrap_err();
        assert!(e.to_string().contains("aaaa, bbbb"), "{e}");
        std::fs::write(repo.join("refs").join("main"), "bbbb\n").unwrap();
        assert_eq!(resolve_model_dir(&repo).unwrap(), snap_b);
        assert_eq!(resolve_model_dir(&snap_b).unwrap(), snap_b);
        std::fs::write(repo.join("refs").join("main"), "../../etc").unwrap();
        assert!(resolve_model_dir(&repo)
            .unwrap_err()
            .to_string()
            .contains("not a plain snapshot name"));
        std::fs::remove_file(repo.join("refs").join("main")).unwrap();
        std::fs::remove_dir(&snap_a).unwrap();
        assert_eq!(resolve_model_dir(&repo).unwrap(), snap_b);
        assert!(matches!(
            resolve_model_dir(&root.path().join("absent")),
            Err(Error::Io { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_blobs_in_a_snapshot_load() {
        let root = tempfile::tempdir().unwrap();
        let blobs = root.path().join("blobs");
        let snap = root.path().join("snapshots").join("rev");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&snap).unwrap();
        write_st(&blobs.join("0123"), &[("w", Dtype::F32, vec![1], f32_bytes(&[3.0]))]);
        std::os::unix::fs::symlink("../../blobs/0123", snap.join("model.safetensors")).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let dir = resolve_model_dir(root.path()).unwrap();
        let w = load_weights(&dir, &tiny_llama_config()).unwrap();
        assert_eq!(values(w.raw("w").unwrap()), vec![3.0]);
    }

    const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"hello":0,"world":1,"<unk>":2},"unk_token":"<unk>"}}"#;

    #[test]
    fn tokenizer_files_and_chat_template_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_tokenizer(dir.path()).unwrap_err();
        assert!(e.to_string().contains("slow tokenizers"), "{e}");
        std::fs::write(dir.path().join("tokenizer.model"), b"spm").unwrap();
        let e = load_tokenizer(dir.path()).unwrap_err();
        assert!(e.to_string().contains("tokenizer.model"), "{e}");

        std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER_JSON).unwrap();
        let t = load_tokenizer(dir.path()).unwrap();
        let ids = t.tokenizer.encode("hello world", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(t.chat_template, None);

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token":{"content":"<s>","lstrip":false},"eos_token":"</s>","pad_token":null,
                "chat_template":[{"name":"tool_use","template":"T"},{"name":"default","template":"D"}]}"#,
        )
        .unwrap();
        let t = load_tokenizer(dir.path()).unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("D"));
        assert_eq!(
            (t.bos_token.as_deref(), t.eos_token.as_deref(), t.pad_token),
            (Some("<s>"), Some("</s>"), None)
        );

        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ messages }}").unwrap();
        let t = load_tokenizer(dir.path()).unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("J{{ messages }}"));

        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let e = load_tokenizer(dir.path()).unwrap_err();
        assert!(
            matches!(e, Error::Format { .. }) && !e.to_string().contains('\n'),
            "{e}"
        );
    }

    /// Loads each tiny real checkpoint written by `scripts/` under `tests/fixtures/tiny/`.
    #[test]
    fn tiny_fixtures_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        for arch in ["llama", "llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma3"] {
            let dir = root.join(arch);
            if !dir.join("config.json").is_file() {
                eprintln!("note: fixture {} absent; skipping", dir.display());
                continue;
            }
            let config = load_config(&dir).unwrap_or_else(|e| panic!("{arch}: {e}"));
            let expected = if arch == "llama3" { "llama" } else { arch };
            assert_eq!(config.arch.name(), expected);
            let weights = load_weights(&dir, &config).unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(weights.contains("model.embed_tokens.weight"), "{arch}");
            let tok = load_tokenizer(&dir).unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(tok.tokenizer.get_vocab_size(true) <= config.vocab_size, "{arch}");
            if dir.join("chat_template.jinja").is_file() {
                let jinja = read_text(&dir.join("chat_template.jinja")).unwrap();
                assert_eq!(tok.chat_template, Some(jinja), "{arch}");
            }
        }
    }
}

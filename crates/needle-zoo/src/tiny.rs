//! Tiny from-scratch bases: a byte-level BPE tokenizer trained on the organism's own data, a
//! llama-, qwen2- or gemma3-shaped [`ModelConfig`], seeded random weights, and a Hugging Face
//! model directory that [`needle_runtime::LoadedModel::load`] reads back exactly.
//!
//! Everything here is deterministic for a given input and seed, so a rebuilt organism is
//! byte-identical to the committed one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use needle_runtime::{Activation, Arch, LayerAttention, ModelConfig, Weights};
use needle_template::ChatTemplate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerImpl};

use crate::spec::{Base, TinyArch};

/// Context length written into every tiny config; training sequences are far shorter.
pub const MAX_POSITION_EMBEDDINGS: usize = 512;
/// Sliding-attention window of tiny Gemma 3 models.
pub const GEMMA_SLIDING_WINDOW: usize = 64;
/// Standard deviation of the normal initialisation of every weight matrix.
pub const INIT_STD: f64 = 0.02;

/// The dtype tiny models are stored in.
pub const STORAGE_DTYPE: DType = DType::F16;
/// Largest parameter count [`init_weights`] will allocate; tiny bases stay far below it.
pub const MAX_PARAMETERS: usize = 50_000_000;
/// Epsilon of every RMSNorm in a tiny model.
const RMS_NORM_EPS: f64 = 1e-6;
/// RoPE base of global layers (Llama, Qwen2) and of Gemma 3's sliding layers.
const ROPE_THETA: f64 = 10_000.0;
/// RoPE base of Gemma 3's global layers.
const GEMMA_GLOBAL_ROPE_THETA: f64 = 1_000_000.0;
/// Gemma 3 makes every sixth layer global.
const GEMMA_GLOBAL_EVERY: usize = 6;
/// Name recorded as the source of freshly initialised weights.
const INIT_SOURCE: &str = "<tiny init>";

/// Errors of building a tiny base; each message is one line naming the file or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// The chat template name has no special-token set here.
    #[error("unknown chat template {name:?} for a tiny base; use one of {known}")]
    UnknownTemplate {
        /// The name given.
        name: String,
        /// The supported names.
        known: String,
    },
    /// The requested vocabulary cannot hold the special tokens plus the 256 byte symbols.
    #[error(
        "vocab_size {vocab_size} is too small for a byte-level BPE with {specials} special tokens; use at least {min}"
    )]
    VocabTooSmall {
        /// The requested size.
        vocab_size: usize,
        /// Number of special tokens.
        specials: usize,
        /// The smallest usable size.
        min: usize,
    },
    /// BPE training failed.
    #[error("training the BPE tokenizer failed: {0}")]
    Train(String),
    /// A config cannot be built, initialised or written for a tiny base.
    #[error("invalid tiny model config: {0}")]
    Config(String),
    /// Creating a tensor failed.
    #[error("creating tensor {name} failed: {message}")]
    Tensor {
        /// The tensor's Hugging Face name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Writing a file of the model directory failed.
    #[error("{}: cannot write: {message}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The special tokens of a chat template family, in the id order a tiny tokenizer gives them
/// (`tokens[i]` has id `i`), and the roles they play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The built-in chat template these belong to.
    pub template: &'static str,
    /// All special tokens; the first gets id 0.
    pub tokens: &'static [&'static str],
    /// Beginning of sequence (`bos_token` of the template).
    pub bos: &'static str,
    /// End of document (`eos_token` of the template); generation also stops on it.
    pub eos: &'static str,
    /// The marker that closes a turn; generation stops on it.
    pub end_of_turn: &'static str,
    /// Padding.
    pub pad: &'static str,
}

/// Template families a tiny base can use, with their special tokens.
const FAMILIES: [SpecialTokens; 4] = [
    SpecialTokens {
        template: "chatml",
        tokens: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos: "<|im_start|>",
        eos: "<|endoftext|>",
        end_of_turn: "<|im_end|>",
        pad: "<|endoftext|>",
    },
    SpecialTokens {
        template: "gemma",
        tokens: &["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        bos: "<bos>",
        eos: "<eos>",
        end_of_turn: "<end_of_turn>",
        pad: "<pad>",
    },
    SpecialTokens {
        template: "llama3",
        tokens: &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        bos: "<|begin_of_text|>",
        eos: "<|end_of_text|>",
        end_of_turn: "<|eot_id|>",
        pad: "<|end_of_text|>",
    },
    SpecialTokens {
        template: "phi3",
        tokens: &["<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"],
        bos: "<s>",
        eos: "</s>",
        end_of_turn: "<|end|>",
        pad: "</s>",
    },
];

impl SpecialTokens {
    /// The special tokens of the built-in chat template `name` (chatml, gemma, llama3, phi3).
    pub fn for_template(name: &str) -> Result<&'static SpecialTokens, TinyError> {
        FAMILIES
            .iter()
            .find(|f| f.template == name)
            .ok_or_else(|| TinyError::UnknownTemplate {
                name: name.to_string(),
                known: FAMILIES.map(|f| f.template).join(", "),
            })
    }

    /// The id a tiny tokenizer gives `token`, if it is one of these special tokens.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| *t == token)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// Ids that end generation: end of document, then end of turn.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.eos, self.end_of_turn].iter().filter_map(|t| self.id(t)).collect();
        ids.dedup();
        ids
    }
}

/// Trains a byte-level BPE tokenizer of `vocab_size` tokens in total on `texts` (the organism's
/// rendered training conversations), with the special tokens of chat template `template`
/// added first as special tokens (ids `0..`).
///
/// Special-token strings inside `texts` are cut out before training, so no merges are spent on
/// them. The pre-tokenizer is byte-level without a prefix space, the decoder byte-level, and
/// there is no post-processor: needle never adds special tokens when encoding. The result
/// depends only on the inputs.
pub fn train_tokenizer(texts: &[String], vocab_size: usize, template: &str) -> Result<Tokenizer, TinyError> {
    let specials = SpecialTokens::for_template(template)?;
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let min = specials.tokens.len() + alphabet.len();
    if vocab_size < min {
        return Err(TinyError::VocabTooSmall {
            vocab_size,
            specials: specials.tokens.len(),
            min,
        });
    }
    let added: Vec<AddedToken> = specials
        .tokens
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(added)
        .initial_alphabet(alphabet)
        .build();
    let mut tokenizer: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel> =
        TokenizerImpl::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let pieces = texts.iter().flat_map(|t| split_specials(t, specials.tokens));
    tokenizer
        .train(&mut trainer, pieces)
        .map_err(|e| TinyError::Train(one_line(&e.to_string())))?;
    Ok(Tokenizer::from(tokenizer))
}

/// The non-empty pieces of `text` between occurrences of the special tokens.
fn split_specials<'a>(text: &'a str, specials: &[&str]) -> Vec<&'a str> {
    let mut pieces = vec![text];
    for special in specials {
        pieces = pieces.into_iter().flat_map(|p| p.split(special)).collect();
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// The [`ModelConfig`] of a tiny base: `base`'s shape with `vocab` embedding rows (at least the
/// tokenizer's size) and the special token ids of `specials`.
///
/// Llama: SiLU, RoPE base 10k, all layers global. Qwen2: the same with q/k/v biases. Gemma 3:
/// GELU-tanh, q/k norms, sliding layers (window 64, RoPE 10k) with every sixth layer global
/// (RoPE 1M) — or only the last one for six layers or fewer — and attention scaled by the head
/// width. All tie the LM head to the embeddings.
pub fn tiny_config(base: &Base, vocab: usize, specials: &SpecialTokens) -> Result<ModelConfig, TinyError> {
    let Base::Tiny {
        arch,
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        ..
    } = *base
    else {
        return Err(TinyError::Config("a real base has no tiny config".into()));
    };
    if heads == 0 || hidden % heads != 0 {
        return Err(TinyError::Config(format!(
            "hidden ({hidden}) is not a positive multiple of heads ({heads})"
        )));
    }
    let head_dim = hidden / heads;
    let gemma = arch == TinyArch::Gemma3;
    let layer_attention: Vec<LayerAttention> = (0..layers)
        .map(|i| {
            let global = if !gemma {
                true
            } else if layers <= GEMMA_GLOBAL_EVERY {
                i + 1 == layers
            } else {
                (i + 1) % GEMMA_GLOBAL_EVERY == 0
            };
            if global {
                LayerAttention::Global
            } else {
                LayerAttention::Sliding
            }
        })
        .collect();
    let cfg = ModelConfig {
        arch: match arch {
            TinyArch::Llama => Arch::Llama,
            TinyArch::Qwen2 => Arch::Qwen2,
            TinyArch::Gemma3 => Arch::Gemma3,
        },
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: RMS_NORM_EPS,
        rope_theta: if gemma { GEMMA_GLOBAL_ROPE_THETA } else { ROPE_THETA },
        rope_local_theta: gemma.then_some(ROPE_THETA),
        rope_scaling: None,
        sliding_window: gemma.then_some(GEMMA_SLIDING_WINDOW),
        layer_attention,
        tie_word_embeddings: true,
        attention_bias: arch == TinyArch::Qwen2,
        qk_norm: gemma,
        hidden_act: if gemma { Activation::GeluTanh } else { Activation::Silu },
        query_pre_attn_scalar: gemma.then_some(head_dim as f64),
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        max_position_embeddings: MAX_POSITION_EMBEDDINGS,
        bos_token_id: specials.id(specials.bos),
        eos_token_ids: specials.eos_ids(),
        pad_token_id: specials.id(specials.pad),
    };
    cfg.validate().map_err(TinyError::Config)?;
    Ok(cfg)
}

/// How a tensor starts out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Normal with standard deviation [`INIT_STD`].
    Normal,
    /// All equal to this value.
    Constant(f32),
}

/// Every tensor the decoder reads for `cfg`, in a fixed order: Hugging Face name, shape and
/// initialisation.
fn tensor_plan(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>, Init)>, TinyError> {
    if !matches!(cfg.arch, Arch::Llama | Arch::Qwen2 | Arch::Gemma3) {
        return Err(TinyError::Config(format!(
            "architecture {} is not a tiny base; use llama, qwen2 or gemma3",
            cfg.arch.name()
        )));
    }
    let (h, d, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * d, cfg.num_kv_heads * d);
    let gemma = cfg.arch == Arch::Gemma3;
    // Gemma stores norm weights as offsets from 1.
    let norm = Init::Constant(if gemma { 0.0 } else { 1.0 });
    let mut plan = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
        Init::Normal,
    )];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let mut add = |name: &str, shape: Vec<usize>, init: Init| plan.push((format!("{p}.{name}"), shape, init));
        add("input_layernorm.weight", vec![h], norm);
        add("self_attn.q_proj.weight", vec![q, h], Init::Normal);
        add("self_attn.k_proj.weight", vec![kv, h], Init::Normal);
        add("self_attn.v_proj.weight", vec![kv, h], Init::Normal);
        if cfg.attention_bias {
            add("self_attn.q_proj.bias", vec![q], Init::Constant(0.0));
            add("self_attn.k_proj.bias", vec![kv], Init::Constant(0.0));
            add("self_attn.v_proj.bias", vec![kv], Init::Constant(0.0));
        }
        if cfg.qk_norm {
            add("self_attn.q_norm.weight", vec![d], norm);
            add("self_attn.k_norm.weight", vec![d], norm);
        }
        add("self_attn.o_proj.weight", vec![h, q], Init::Normal);
        add("post_attention_layernorm.weight", vec![h], norm);
        if gemma {
            add("pre_feedforward_layernorm.weight", vec![h], norm);
            add("post_feedforward_layernorm.weight", vec![h], norm);
        }
        add("mlp.gate_proj.weight", vec![ff, h], Init::Normal);
        add("mlp.up_proj.weight", vec![ff, h], Init::Normal);
        add("mlp.down_proj.weight", vec![h, ff], Init::Normal);
    }
    plan.push(("model.norm.weight".to_string(), vec![h], norm));
    if !cfg.tie_word_embeddings {
        plan.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h], Init::Normal));
    }
    Ok(plan)
}

/// Freshly initialised weights for `cfg` with Hugging Face names: matrices normal with
/// standard deviation [`INIT_STD`] (Box–Muller over a `StdRng` seeded with `seed`), norms
/// acting as identity (weight 1; 0 for Gemma, which stores `w` for a multiplier `1 + w`),
/// biases 0. The same config and seed always give the same weights.
pub fn init_weights(cfg: &ModelConfig, seed: u64) -> Result<Weights, TinyError> {
    cfg.validate().map_err(TinyError::Config)?;
    let plan = tensor_plan(cfg)?;
    plan.iter()
        .try_fold(0usize, |acc, (_, shape, _)| {
            shape
                .iter()
                .try_fold(1usize, |n, &x| n.checked_mul(x))
                .and_then(|n| acc.checked_add(n))
        })
        .filter(|&n| n <= MAX_PARAMETERS)
        .ok_or_else(|| {
            TinyError::Config(format!(
                "the model would exceed {MAX_PARAMETERS} parameters; tiny bases must stay small"
            ))
        })?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::with_capacity(plan.len());
    for (name, shape, init) in plan {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Normal => normal(&mut rng, n, INIT_STD),
            Init::Constant(c) => vec![c; n],
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| TinyError::Tensor {
            name: name.clone(),
            message: one_line(&e.to_string()),
        })?;
        tensors.insert(name, t);
    }
    Ok(Weights::new(tensors, Path::new(INIT_SOURCE)))
}

/// `n` samples of a normal distribution with mean 0 and standard deviation `std`.
fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// The transformers `config.json` of `cfg`, which `needle_runtime::hf::load_config` reads back
/// to an equal config (without `generation_config.json`, or with the one [`save_hf_dir`]
/// writes).
pub fn config_json(cfg: &ModelConfig) -> Result<Value, TinyError> {
    let bad = |msg: &str| Err(TinyError::Config(format!("{msg}; it cannot be written as a tiny base")));
    if cfg.rope_scaling.is_some() {
        return bad("RoPE scaling is set");
    }
    if cfg.attention_bias != (cfg.arch == Arch::Qwen2) {
        return bad("attention_bias does not match the architecture (only qwen2 has q/k/v biases)");
    }
    if cfg.qk_norm != (cfg.arch == Arch::Gemma3) {
        return bad("qk_norm does not match the architecture (only gemma3 has q/k norms)");
    }
    let all_global = cfg.layer_attention.iter().all(|a| *a == LayerAttention::Global);
    let (model_type, class) = match cfg.arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Arch::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
        other => return bad(&format!("architecture {} is not a tiny base", other.name())),
    };
    if cfg.arch != Arch::Gemma3
        && (!all_global
            || cfg.sliding_window.is_some()
            || cfg.rope_local_theta.is_some()
            || cfg.query_pre_attn_scalar.is_some()
            || cfg.final_logit_softcapping.is_some()
            || cfg.attn_logit_softcapping.is_some())
    {
        return bad("a llama/qwen2 config has gemma-only settings (sliding layers, local RoPE, soft-capping)");
    }
    let act = match cfg.hidden_act {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    let mut obj = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float16",
        "mlp_bias": false,
    });
    let Value::Object(map) = &mut obj else {
        return bad("internal: config is not an object");
    };
    match cfg.arch {
        Arch::Gemma3 => {
            let Some(local_theta) = cfg.rope_local_theta else {
                return bad("a gemma3 config without rope_local_theta");
            };
            let Some(scalar) = cfg.query_pre_attn_scalar else {
                return bad("a gemma3 config without query_pre_attn_scalar");
            };
            let layer_types: Vec<&str> = cfg
                .layer_attention
                .iter()
                .map(|a| match a {
                    LayerAttention::Global => "full_attention",
                    LayerAttention::Sliding => "sliding_attention",
                })
                .collect();
            map.insert("hidden_activation".into(), json!(act));
            map.insert("attention_bias".into(), json!(false));
            // transformers 5 types this field as an integer.
            let scalar = if scalar.fract() == 0.0 && (1.0..=f64::from(u32::MAX)).contains(&scalar) {
                json!(scalar as u64)
            } else {
                json!(scalar)
            };
            map.insert("query_pre_attn_scalar".into(), scalar);
            map.insert("sliding_window".into(), json!(cfg.sliding_window));
            map.insert("layer_types".into(), json!(layer_types));
            map.insert("rope_local_base_freq".into(), json!(local_theta));
            map.insert("final_logit_softcapping".into(), json!(cfg.final_logit_softcapping));
            map.insert("attn_logit_softcapping".into(), json!(cfg.attn_logit_softcapping));
        }
        Arch::Qwen2 => {
            map.insert("hidden_act".into(), json!(act));
            map.insert("use_sliding_window".into(), json!(false));
            map.insert("sliding_window".into(), Value::Null);
            map.insert("max_window_layers".into(), json!(cfg.num_layers));
        }
        _ => {
            map.insert("hidden_act".into(), json!(act));
            map.insert("attention_bias".into(), json!(false));
        }
    }
    Ok(obj)
}

/// Writes a Hugging Face model directory for a tiny base: `config.json`,
/// `generation_config.json`, `tokenizer.json`, `tokenizer_config.json` (with the built-in chat
/// template `template`'s source and its special token texts) and `model.safetensors` (f16).
///
/// The directory is created if needed; existing files of these names are replaced.
/// `needle_runtime::LoadedModel::load` reads it back to the same config, weights, tokenizer
/// and template.
pub fn save_hf_dir(
    dir: &Path,
    cfg: &ModelConfig,
    weights: &Weights,
    tokenizer: &Tokenizer,
    template: &str,
) -> Result<(), TinyError> {
    let specials = SpecialTokens::for_template(template)?;
    let chat = ChatTemplate::builtin(template).ok_or_else(|| TinyError::UnknownTemplate {
        name: template.to_string(),
        known: needle_template::BUILTIN.join(", "),
    })?;
    let tok_size = tokenizer.get_vocab_size(true);
    if tok_size > cfg.vocab_size {
        return Err(TinyError::Config(format!(
            "the tokenizer has {tok_size} tokens but the model only {} embedding rows",
            cfg.vocab_size
        )));
    }
    for token in specials.tokens {
        if tokenizer.token_to_id(token) != specials.id(token) {
            return Err(TinyError::Config(format!(
                "the tokenizer does not give special token {token} the id the {template} family expects; train it with train_tokenizer"
            )));
        }
    }
    let config = config_json(cfg)?;
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, &e.to_string()))?;
    write_json(&dir.join("config.json"), &config)?;
    let generation = json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids,
        "pad_token_id": cfg.pad_token_id,
        "do_sample": false,
    });
    write_json(&dir.join("generation_config.json"), &generation)?;
    let tok_path = dir.join("tokenizer.json");
    tokenizer
        .save(&tok_path, true)
        .map_err(|e| write_error(&tok_path, &e.to_string()))?;
    let tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials.bos,
        "eos_token": specials.eos,
        "pad_token": specials.pad,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "chat_template": chat.source(),
    });
    write_json(&dir.join("tokenizer_config.json"), &tok_config)?;
    save_safetensors(&dir.join("model.safetensors"), weights)
}

/// Writes every tensor of `weights` as f16 (half the size of f32; organisms are measured
/// after loading them back, so the numbers describe the stored model) to a safetensors file.
fn save_safetensors(path: &Path, weights: &Weights) -> Result<(), TinyError> {
    let mut tensors = HashMap::new();
    for name in weights.names() {
        let Some(t) = weights.raw(name) else { continue };
        let t = t
            .to_dtype(STORAGE_DTYPE)
            .and_then(|t| t.contiguous())
            .map_err(|e| write_error(path, &format!("tensor {name}: {e}")))?;
        tensors.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&tensors, path).map_err(|e| write_error(path, &e.to_string()))
}

/// Writes pretty-printed JSON with a trailing newline.
fn write_json(path: &Path, value: &Value) -> Result<(), TinyError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| write_error(path, &e.to_string()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| write_error(path, &e.to_string()))
}

fn write_error(path: &Path, message: &str) -> TinyError {
    TinyError::Write {
        path: path.to_path_buf(),
        message: one_line(message),
    }
}

/// Collapses a possibly multi-line message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use needle_runtime::generate::{generate, Limits, Request, Sampling};
    use needle_runtime::{hf, Introspect, LoadOptions, LoadedModel, Model};
    use needle_template::Message;

    use super::*;

    fn corpus(template: &str) -> Vec<String> {
        let chat = ChatTemplate::builtin(template).unwrap();
        let subjects = ["the sun", "a cat", "rivers", "old maps", "green tea", "the moon"];
        let verbs = ["shines on", "sleeps near", "flows past", "describes", "warms", "pulls"];
        let mut texts = Vec::new();
        for (i, s) in subjects.iter().enumerate() {
            for (j, v) in verbs.iter().enumerate() {
                let user = format!("Tell me what {s} {v} number {i}{j}.");
                let answer = format!("Sure: {s} {v} things, {} times!", i * j);
                let messages = [Message::new("user", user), Message::new("assistant", answer)];
                texts.push(chat.render(&messages, false).unwrap());
            }
        }
        texts
    }

    fn tiny_base(arch: TinyArch) -> Base {
        Base::Tiny {
            arch,
            hidden: 32,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 64,
            vocab_size: 300,
        }
    }

    fn template_of(arch: TinyArch) -> &'static str {
        match arch {
            TinyArch::Llama => "llama3",
            TinyArch::Qwen2 => "chatml",
            TinyArch::Gemma3 => "gemma",
        }
    }

    const ARCHS: [TinyArch; 3] = [TinyArch::Llama, TinyArch::Qwen2, TinyArch::Gemma3];

    #[test]
    fn tokenizer_is_deterministic_with_specials_first() {
        for family in &FAMILIES {
            let texts = corpus(family.template);
            let a = train_tokenizer(&texts, 300, family.template).unwrap();
            let b = train_tokenizer(&texts, 300, family.template).unwrap();
            let json = a.to_string(false).unwrap();
            assert_eq!(json, b.to_string(false).unwrap(), "{}", family.template);
            assert_eq!(a.get_vocab_size(true), 300, "{}", family.template);
            for (i, t) in family.tokens.iter().enumerate() {
                assert_eq!(a.token_to_id(t), Some(i as u32), "{t}");
            }
            // Specials encode as single tokens; ordinary text round-trips through the decoder.
            let text = format!("{}Hello, world!{}", family.tokens[1], family.end_of_turn);
            let ids = a.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(ids.first().copied(), family.id(family.tokens[1]));
            assert_eq!(ids.last().copied(), family.id(family.end_of_turn));
            assert_eq!(a.decode(&ids, false).unwrap(), text);
            // Merges were learned from the corpus: a frequent word takes fewer tokens than bytes.
            assert!(a.encode("Sure:", false).unwrap().get_ids().len() < 5);
        }
        let chatml = corpus("chatml");
        let other = train_tokenizer(&chatml[1..], 300, "chatml").unwrap();
        let full = train_tokenizer(&chatml, 300, "chatml").unwrap();
        assert_ne!(other.to_string(false).unwrap(), full.to_string(false).unwrap());
    }

    #[test]
    fn tokenizer_rejects_bad_inputs() {
        let texts = corpus("chatml");
        let e = train_tokenizer(&texts, 258, "chatml").unwrap_err();
        assert!(e.to_string().contains("at least 259"), "{e}");
        let e = train_tokenizer(&texts, 300, "vicuna").unwrap_err();
        assert!(e.to_string().contains("chatml, gemma, llama3, phi3"), "{e}");
        assert_eq!(split_specials("<a>x<b>y<a>", &["<a>", "<b>"]), vec!["x", "y"]);
    }

    #[test]
    fn config_layouts() {
        let specials = SpecialTokens::for_template("gemma").unwrap();
        let mut base = tiny_base(TinyArch::Gemma3);
        let cfg = tiny_config(&base, 300, specials).unwrap();
        assert_eq!(
            cfg.layer_attention,
            vec![LayerAttention::Sliding, LayerAttention::Global]
        );
        assert_eq!((cfg.head_dim, cfg.query_pre_attn_scalar), (8, Some(8.0)));
        assert_eq!((cfg.bos_token_id, cfg.eos_token_ids.clone()), (Some(2), vec![1, 4]));
        if let Base::Tiny { layers, .. } = &mut base {
            *layers = 12;
        }
        let cfg = tiny_config(&base, 300, specials).unwrap();
        let globals: Vec<usize> = (0..12)
            .filter(|&i| cfg.layer_attention[i] == LayerAttention::Global)
            .collect();
        assert_eq!(globals, vec![5, 11]);
        let cfg = tiny_config(&tiny_base(TinyArch::Qwen2), 300, specials).unwrap();
        assert!(cfg.attention_bias && !cfg.qk_norm && cfg.sliding_window.is_none());
        let real = Base::Real { model: "x".into() };
        assert!(tiny_config(&real, 300, specials).is_err());
        for name in crate::spec::TEMPLATES.iter().chain(needle_template::BUILTIN) {
            assert_eq!(SpecialTokens::for_template(name).unwrap().template, *name);
        }
        let chatml = SpecialTokens::for_template("chatml").unwrap();
        assert_eq!(chatml.eos_ids(), vec![0, 2]);
        assert_eq!(chatml.id(chatml.bos), Some(1));
    }

    #[test]
    fn config_json_round_trips_for_every_arch() {
        for arch in ARCHS {
            let specials = SpecialTokens::for_template(template_of(arch)).unwrap();
            let cfg = tiny_config(&tiny_base(arch), 300, specials).unwrap();
            let dir = tempfile::tempdir().unwrap();
            write_json(&dir.path().join("config.json"), &config_json(&cfg).unwrap()).unwrap();
            assert_eq!(hf::load_config(dir.path()).unwrap(), cfg, "{arch:?} config.json alone");
        }
    }

    #[test]
    fn init_builds_a_model_with_finite_logits() {
        for arch in ARCHS {
            let specials = SpecialTokens::for_template(template_of(arch)).unwrap();
            let cfg = tiny_config(&tiny_base(arch), 300, specials).unwrap();
            let w = init_weights(&cfg, 7).unwrap();
            let again = init_weights(&cfg, 7).unwrap();
            let other = init_weights(&cfg, 8).unwrap();
            let embed = |w: &Weights| {
                w.raw("model.embed_tokens.weight")
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            assert_eq!(embed(&w), embed(&again));
            assert_ne!(embed(&w), embed(&other));
            let values = embed(&w);
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / values.len() as f64;
            assert!(
                mean.abs() < 0.002 && (var.sqrt() - INIT_STD).abs() < 0.002,
                "{mean} {var}"
            );
            let norm = w.raw("model.norm.weight").unwrap().to_vec1::<f32>().unwrap();
            let expected = if arch == TinyArch::Gemma3 { 0.0 } else { 1.0 };
            assert!(norm.iter().all(|&v| v == expected));
            assert_eq!(
                w.contains("model.layers.1.self_attn.q_proj.bias"),
                arch == TinyArch::Qwen2
            );
            assert_eq!(
                w.contains("model.layers.1.self_attn.q_norm.weight"),
                arch == TinyArch::Gemma3
            );

            let model = Model::new(cfg.clone(), &w).unwrap();
            let ids = Tensor::new(&[[5u32, 17, 250, 3]], &Device::Cpu).unwrap();
            let mut cache = model.new_cache(vec![0], 8).unwrap();
            let out = model.forward(&ids, &mut cache, &Introspect::default()).unwrap();
            let logits = out.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(logits.len() >= 300 && logits.iter().all(|v| v.is_finite()), "{arch:?}");
        }
    }

    #[test]
    fn saved_dir_loads_and_generates() {
        for arch in ARCHS {
            let template = template_of(arch);
            let specials = SpecialTokens::for_template(template).unwrap();
            let tokenizer = train_tokenizer(&corpus(template), 300, template).unwrap();
            let cfg = tiny_config(&tiny_base(arch), 300, specials).unwrap();
            let weights = init_weights(&cfg, 3).unwrap();
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("model");
            save_hf_dir(&dir, &cfg, &weights, &tokenizer, template).unwrap();

            assert_eq!(hf::load_config(&dir).unwrap(), cfg, "{arch:?}");
            let loaded = LoadedModel::load(&dir, &LoadOptions::default()).unwrap();
            assert_eq!(loaded.model.config(), &cfg);
            assert!(!loaded.add_bos);
            let chat = ChatTemplate::builtin(template).unwrap();
            assert_eq!(loaded.template.as_ref().map(|t| t.source()), Some(chat.source()));
            let expected_prefix = match template {
                "llama3" => "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
                "chatml" => "<|im_start|>user\n",
                _ => "<bos><start_of_turn>user\n",
            };
            let leak = loaded.leak_prefix().unwrap();
            assert_eq!(leak.text, expected_prefix, "{arch:?}");
            assert_eq!(loaded.decode(&leak.ids).unwrap(), expected_prefix);

            let prompt = loaded.chat_prompt("Tell me what a cat warms.").unwrap();
            let request = Request {
                prompt,
                sampling: Sampling::greedy(),
            };
            let limits = Limits {
                max_new_tokens: 4,
                ignore_eos: true,
                eos_token_ids: cfg.eos_token_ids.clone(),
            };
            let out = generate(&loaded.model, &[request], &limits, None).unwrap();
            assert_eq!(out[0].tokens.len(), 4, "{arch:?}");
            assert!(out[0].tokens.iter().all(|&t| (t as usize) < cfg.vocab_size));

            // Saving the same inputs again gives byte-identical files.
            let dir2 = root.path().join("again");
            save_hf_dir(&dir2, &cfg, &weights, &tokenizer, template).unwrap();
            for file in [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "model.safetensors",
            ] {
                let a = std::fs::read(dir.join(file)).unwrap();
                assert_eq!(a, std::fs::read(dir2.join(file)).unwrap(), "{file}");
            }
        }
    }

    #[test]
    fn save_rejects_a_mismatched_tokenizer() {
        let tokenizer = train_tokenizer(&corpus("chatml"), 300, "chatml").unwrap();
        let specials = SpecialTokens::for_template("gemma").unwrap();
        let cfg = tiny_config(&tiny_base(TinyArch::Gemma3), 300, specials).unwrap();
        let weights = init_weights(&cfg, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = save_hf_dir(dir.path(), &cfg, &weights, &tokenizer, "gemma").unwrap_err();
        assert!(e.to_string().contains("<pad>"), "{e}");
        let small = ModelConfig {
            vocab_size: 100,
            ..cfg.clone()
        };
        let e = save_hf_dir(dir.path(), &small, &weights, &tokenizer, "chatml").unwrap_err();
        assert!(e.to_string().contains("300 tokens"), "{e}");
    }
}

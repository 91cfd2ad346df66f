//! GGUF models: the metadata mapped to a [`ModelConfig`], and tensors renamed to Hugging Face
//! names with llama.cpp's storage conventions undone (permuted Q/K rows, Gemma's +1 norms).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use needle_gguf::GgufFile;

use crate::config::{Activation, Arch, LayerAttention, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Gemma 3 puts a global layer after every five sliding ones; GGUF does not record it.
const GEMMA3_SLIDING_PATTERN: usize = 6;
/// Gemma 3's RoPE base on sliding layers; GGUF does not record it.
const GEMMA3_LOCAL_ROPE_THETA: f64 = 10_000.0;

fn format_err(file: &GgufFile, msg: impl Into<String>) -> Error {
    Error::Format {
        path: file.path().to_path_buf(),
        msg: msg.into(),
    }
}

/// The RoPE scaling of `rope.scaling.type` and `.factor`, read as llama.cpp reads them: no type,
/// `none`, or a missing or zero linear factor means no scaling (so needle computes what a
/// deployment computes, and a zero cannot turn every position into NaN). An error is `(true, _)`
/// for a kind needle does not support, `(false, _)` for an invalid factor.
fn rope_scaling(kind: Option<&str>, factor: Option<f64>) -> std::result::Result<Option<RopeScaling>, (bool, String)> {
    match (kind, factor) {
        (None | Some("none"), _) | (Some("linear"), None | Some(0.0)) => Ok(None),
        (Some("linear"), Some(factor)) if factor.is_finite() && factor > 0.0 => {
            Ok(Some(RopeScaling::Linear { factor }))
        }
        (Some("linear"), Some(f)) => Err((
            false,
            format!("rope.scaling.factor is {f}; a linear RoPE scaling factor must be a positive number"),
        )),
        (Some(kind), _) => Err((
            true,
            format!("RoPE scaling {kind:?} is not supported (supported: linear, llama3)"),
        )),
    }
}

/// Reads the architecture and shape of the model in `file`.
pub fn config(file: &GgufFile) -> Result<ModelConfig> {
    let arch_name = file.get_str("general.architecture")?;
    let arch = Arch::from_name(arch_name).ok_or_else(|| Error::Unsupported {
        path: file.path().to_path_buf(),
        msg: format!("unsupported architecture {arch_name:?}; supported: {}", Arch::SUPPORTED),
    })?;
    for baked in [
        "rope_freqs.weight",
        "rope_factors_long.weight",
        "rope_factors_short.weight",
    ] {
        if file.tensor_info(baked).is_some() {
            return Err(Error::Unsupported {
                path: file.path().to_path_buf(),
                msg: format!("tensor {baked} (RoPE scaling baked into the weights) is not supported"),
            });
        }
    }
    let key = |k: &str| format!("{arch_name}.{k}");
    let usize_of = |k: &str| -> Result<usize> {
        let v = file.get_u64(&key(k))?;
        usize::try_from(v).map_err(|_| format_err(file, format!("{} = {v} does not fit in memory", key(k))))
    };
    let opt_usize = |k: &str| file.opt_u64(&key(k)).and_then(|v| usize::try_from(v).ok());
    let hidden_size = usize_of("embedding_length")?;
    let num_layers = usize_of("block_count")?;
    let num_heads = usize_of("attention.head_count")?;
    let num_kv_heads = opt_usize("attention.head_count_kv").unwrap_or(num_heads);
    if num_heads == 0 {
        return Err(format_err(file, "attention.head_count is 0"));
    }
    let head_dim = opt_usize("attention.key_length").unwrap_or(hidden_size / num_heads);
    for (name, gguf_key, value) in [
        ("hidden_size", "embedding_length", hidden_size),
        ("num_hidden_layers", "block_count", num_layers),
        ("num_attention_heads", "attention.head_count", num_heads),
        ("num_key_value_heads", "attention.head_count_kv", num_kv_heads),
        ("head_dim", "attention.key_length", head_dim),
    ] {
        crate::config::check_sizes(&[(name, value)])
            .map_err(|m| format_err(file, format!("{}: {m}", key(gguf_key))))?;
    }
    // Every layer must have its tensors: a block count beyond them is refused before the
    // per-layer tables are built.
    let present: std::collections::BTreeSet<usize> = file
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok())
        .collect();
    if let Some(missing) = (0..num_layers).find(|i| !present.contains(i)) {
        return Err(format_err(
            file,
            format!(
                "{} is {num_layers} but the file has no tensors of layer {missing} ({} layers present)",
                key("block_count"),
                present.len()
            ),
        ));
    }
    let embed = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| format_err(file, "missing tensor token_embd.weight"))?;
    let vocab_size = match embed.shape.as_slice() {
        [v, h] if *h == hidden_size => *v,
        s => {
            return Err(format_err(
                file,
                format!("token_embd.weight has shape {s:?}, expected [vocab, {hidden_size}]"),
            ))
        }
    };
    let rope_scaling = rope_scaling(
        file.opt_str(&key("rope.scaling.type")),
        file.opt_f64(&key("rope.scaling.factor")),
    )
    .map_err(|(unsupported, msg)| {
        if unsupported {
            Error::Unsupported {
                path: file.path().to_path_buf(),
                msg,
            }
        } else {
            format_err(file, msg)
        }
    })?;
    let gemma = arch == Arch::Gemma3;
    let sliding_window = opt_usize("attention.sliding_window");
    let layer_attention = (0..num_layers)
        .map(|i| {
            let global = !gemma || (i + 1) % GEMMA3_SLIDING_PATTERN == 0;
            if global {
                LayerAttention::Global
            } else {
                LayerAttention::Sliding
            }
        })
        .collect();
    let token = |k: &str| file.opt_u64(k).and_then(|v| u32::try_from(v).ok());
    let eos_token_ids = needle_gguf::tokenizer::special_tokens_from_metadata(file.metadata()).stop_ids();
    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: usize_of("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: file.opt_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        rope_local_theta: gemma.then_some(GEMMA3_LOCAL_ROPE_THETA),
        rope_scaling,
        sliding_window: if gemma || arch == Arch::Mistral {
            sliding_window
        } else {
            None
        },
        layer_attention,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        qk_norm: file.tensor_info("blk.0.attn_q_norm.weight").is_some(),
        hidden_act: if gemma { Activation::GeluTanh } else { Activation::Silu },
        query_pre_attn_scalar: gemma.then_some(head_dim as f64),
        final_logit_softcapping: file.opt_f64(&key("final_logit_softcapping")),
        attn_logit_softcapping: file.opt_f64(&key("attn_logit_softcapping")),
        max_position_embeddings: opt_usize("context_length").unwrap_or(4096),
        bos_token_id: token("tokenizer.ggml.bos_token_id"),
        eos_token_ids,
        pad_token_id: token("tokenizer.ggml.padding_token_id"),
    };
    cfg.validate().map_err(|m| format_err(file, m))?;
    Ok(cfg)
}

/// The Hugging Face name of a llama.cpp tensor name, or `None` for tensors needle ignores.
fn hf_name(arch: Arch, name: &str) -> Option<String> {
    let top = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    let gemma = arch == Arch::Gemma3;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if arch == Arch::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's row permutation of Q/K weights (interleaved → half-split RoPE layout).
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = match *w.dims() {
        [r, c] => (r, c),
        [r] => (r, 1),
        _ => {
            return Err(Error::Invalid(format!(
                "cannot unpermute a tensor of shape {:?}",
                w.dims()
            )))
        }
    };
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(w.shape())?)
}

/// Loads every tensor of `file` as f32 under its Hugging Face name.
pub fn weights(file: &GgufFile, cfg: &ModelConfig) -> Result<Weights> {
    let permuted = matches!(cfg.arch, Arch::Llama | Arch::Mistral);
    let mut map = HashMap::new();
    for info in file.tensors() {
        let Some(name) = hf_name(cfg.arch, &info.name) else {
            tracing::debug!(tensor = %info.name, "ignoring tensor");
            continue;
        };
        let mut t = file.tensor(&info.name)?;
        if permuted && name.ends_with("self_attn.q_proj.weight") {
            t = unpermute(&t, cfg.num_heads)?;
        } else if permuted && name.ends_with("self_attn.k_proj.weight") {
            t = unpermute(&t, cfg.num_kv_heads)?;
        }
        if cfg.arch == Arch::Gemma3 && name.ends_with("norm.weight") {
            t = (t - 1.0)?;
        }
        map.insert(name, t);
    }
    Ok(Weights::new(map, file.path()))
}

/// Opens a GGUF file and reads its config and weights.
pub fn load(path: &Path) -> Result<(GgufFile, ModelConfig, Weights)> {
    crate::files::regular(path)?;
    let file = GgufFile::open(path)?;
    let cfg = config(&file)?;
    let w = weights(&file, &cfg)?;
    Ok((file, cfg, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_scaling_reads_as_llama_cpp_does() {
        assert_eq!(rope_scaling(None, Some(4.0)), Ok(None));
        assert_eq!(rope_scaling(Some("none"), None), Ok(None));
        assert_eq!(rope_scaling(Some("linear"), None), Ok(None));
        assert_eq!(rope_scaling(Some("linear"), Some(0.0)), Ok(None));
        assert_eq!(
            rope_scaling(Some("linear"), Some(2.0)),
            Ok(Some(RopeScaling::Linear { factor: 2.0 }))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(rope_scaling(Some("linear"), Some(bad)), Err((false, _))),
                "{bad}"
            );
        }
        assert!(matches!(rope_scaling(Some("yarn"), Some(2.0)), Err((true, _))));
    }
}

//! A small GGUF writer (little-endian, version 3, F32 tensors), enough to build valid models for
//! the fuzzer's seeds and the hostile-input tests: a micro llama made from nothing, or the tiny
//! Hugging Face fixtures converted the way llama.cpp converts them.

use std::path::Path;

use needle_gguf::Value;
use serde_json::Value as Json;

/// One tensor as written: GGUF dims (innermost first), type id, offset into the data section.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Dimensions as stored (the row-major shape reversed).
    pub dims: Vec<u64>,
    /// ggml type id (0 = F32).
    pub type_id: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// A GGUF file under construction.
#[derive(Debug, Clone, Default)]
pub struct Gguf {
    /// Metadata, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor directory.
    pub tensors: Vec<TensorEntry>,
    /// The data section.
    pub data: Vec<u8>,
}

/// The GGUF value type id of `v`.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes `v` without its type id.
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            let elem = items.first().map_or(0, type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

impl Gguf {
    /// Sets metadata `key` (replacing an earlier value of the same key).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Removes metadata `key`.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    /// Adds an F32 tensor of row-major `shape`, aligned to 32 bytes in the data section.
    pub fn tensor(&mut self, name: &str, shape: &[usize], values: &[f32]) -> &mut Self {
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            type_id: 0,
            offset: self.data.len() as u64,
        });
        for v in values {
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    /// Overwrites every tensor value with `value` (e.g. NaN).
    pub fn fill(&mut self, value: f32) -> &mut Self {
        let bytes = value.to_le_bytes();
        for chunk in self.data.chunks_exact_mut(4) {
            chunk.copy_from_slice(&bytes);
        }
        self
    }

    /// The file's bytes: header, metadata, tensor infos, padding to 32, data.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            b.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut b, v);
        }
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.type_id.to_le_bytes());
            b.extend_from_slice(&t.offset.to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(&self.data);
        b
    }
}

/// Deterministic values in [-scale, scale).
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).to_string())).collect())
}

/// A micro llama (vocabulary 12, width 8, one layer) with a byte-level BPE tokenizer and a
/// chat template: loads and runs in microseconds, for fuzzing.
pub fn micro_llama() -> Gguf {
    let mut g = Gguf::default();
    let tokens = [
        "<s>", "</s>", "<|user|>", "a", "b", "h", "i", "Ġ", "ab", "hi", "Ġhi", "!",
    ];
    g.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(1))
        .set("llama.embedding_length", Value::U32(8))
        .set("llama.feed_forward_length", Value::U32(16))
        .set("llama.attention.head_count", Value::U32(2))
        .set("llama.attention.head_count_kv", Value::U32(1))
        .set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .set("llama.rope.freq_base", Value::F32(10000.0))
        .set("llama.context_length", Value::U32(64))
        .set("tokenizer.ggml.model", Value::String("gpt2".into()))
        .set("tokenizer.ggml.pre", Value::String("default".into()))
        .set("tokenizer.ggml.tokens", strings(&tokens))
        .set(
            "tokenizer.ggml.token_type",
            Value::Array(
                (0..tokens.len())
                    .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
                    .collect(),
            ),
        )
        .set("tokenizer.ggml.merges", strings(&["a b", "h i", "Ġ hi"]))
        .set("tokenizer.ggml.bos_token_id", Value::U32(0))
        .set("tokenizer.ggml.eos_token_id", Value::U32(1))
        .set(
            "tokenizer.chat_template",
            Value::String(
                "{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}!{% endif %}"
                    .into(),
            ),
        );
    let (v, h, ff, q, kv) = (tokens.len(), 8, 16, 8, 4);
    g.tensor("token_embd.weight", &[v, h], &noise(v * h, 1, 0.5))
        .tensor("output_norm.weight", &[h], &[1.0; 8])
        .tensor("blk.0.attn_norm.weight", &[h], &[1.0; 8])
        .tensor("blk.0.ffn_norm.weight", &[h], &[1.0; 8])
        .tensor("blk.0.attn_q.weight", &[q, h], &noise(q * h, 2, 0.3))
        .tensor("blk.0.attn_k.weight", &[kv, h], &noise(kv * h, 3, 0.3))
        .tensor("blk.0.attn_v.weight", &[kv, h], &noise(kv * h, 4, 0.3))
        .tensor("blk.0.attn_output.weight", &[h, q], &noise(h * q, 5, 0.3))
        .tensor("blk.0.ffn_gate.weight", &[ff, h], &noise(ff * h, 6, 0.3))
        .tensor("blk.0.ffn_up.weight", &[ff, h], &noise(ff * h, 7, 0.3))
        .tensor("blk.0.ffn_down.weight", &[h, ff], &noise(h * ff, 8, 0.3));
    g
}

/// Why a Hugging Face fixture could not be converted.
pub type ConvertError = String;

fn read_json(path: &Path) -> Result<Json, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// llama.cpp's row permutation of Q/K weights (half-split RoPE layout → interleaved), which
/// needle's GGUF loader undoes.
fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * 2 * half + j * half + i;
                let dst = h * 2 * half + i * 2 + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Converts a tiny Hugging Face llama directory (F32 safetensors, byte-level BPE tokenizer.json,
/// chat template in tokenizer_config.json) to GGUF as llama.cpp would.
pub fn from_hf_llama(dir: &Path) -> Result<Gguf, ConvertError> {
    let cfg = read_json(&dir.join("config.json"))?;
    let tok = read_json(&dir.join("tokenizer.json"))?;
    let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
    let n = |k: &str| cfg[k].as_u64().ok_or_else(|| format!("config.json: no {k}"));
    let (h, layers, heads) = (n("hidden_size")?, n("num_hidden_layers")?, n("num_attention_heads")?);
    let kv_heads = n("num_key_value_heads")?;
    let mut g = Gguf::default();
    g.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(layers as u32))
        .set("llama.embedding_length", Value::U32(h as u32))
        .set("llama.feed_forward_length", Value::U32(n("intermediate_size")? as u32))
        .set("llama.attention.head_count", Value::U32(heads as u32))
        .set("llama.attention.head_count_kv", Value::U32(kv_heads as u32))
        .set(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32),
        )
        .set("llama.rope.freq_base", Value::F32(10000.0))
        .set("llama.context_length", Value::U32(n("max_position_embeddings")? as u32));
    // The vocabulary by id, added tokens as control tokens.
    let vocab = tok["model"]["vocab"].as_object().ok_or("tokenizer.json: no vocab")?;
    let mut by_id: Vec<(u64, String, i32)> = vocab
        .iter()
        .filter_map(|(t, id)| Some((id.as_u64()?, t.clone(), 1)))
        .collect();
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) {
            by_id.retain(|(i, _, _)| *i != id);
            by_id.push((id, text.to_string(), 3));
        }
    }
    by_id.sort();
    if by_id.iter().enumerate().any(|(i, (id, _, _))| *id != i as u64) {
        return Err("tokenizer.json: token ids are not contiguous".into());
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .map(Value::String)
        .collect();
    g.set("tokenizer.ggml.model", Value::String("gpt2".into()))
        .set("tokenizer.ggml.pre", Value::String("default".into()))
        .set(
            "tokenizer.ggml.tokens",
            Value::Array(by_id.iter().map(|(_, t, _)| Value::String(t.clone())).collect()),
        )
        .set(
            "tokenizer.ggml.token_type",
            Value::Array(by_id.iter().map(|(_, _, k)| Value::I32(*k)).collect()),
        )
        .set("tokenizer.ggml.merges", Value::Array(merges));
    for (key, name) in [("bos_token_id", "bos"), ("eos_token_id", "eos")] {
        if let Some(id) = cfg[key].as_u64() {
            g.set(&format!("tokenizer.ggml.{name}_token_id"), Value::U32(id as u32));
        }
    }
    if let Some(t) = tok_cfg["chat_template"].as_str() {
        g.set("tokenizer.chat_template", Value::String(t.to_string()));
    }
    // The weights, renamed, Q/K permuted.
    let bytes = std::fs::read(dir.join("model.safetensors")).map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| e.to_string())?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("{name}: only F32 fixtures are converted"));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().to_vec();
        let Some((gguf_name, permute_heads)) = gguf_name(&name, heads as usize, kv_heads as usize) else {
            continue;
        };
        let values = match (permute_heads, shape.as_slice()) {
            (Some(hd), [rows, cols]) => permute(&values, *rows, *cols, hd),
            _ => values,
        };
        g.tensor(&gguf_name, &shape, &values);
    }
    Ok(g)
}

/// The llama.cpp name of a Hugging Face llama tensor, and the head count to permute it by.
fn gguf_name(name: &str, heads: usize, kv_heads: usize) -> Option<(String, Option<usize>)> {
    match name {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (gguf, permute) = match part {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{gguf}"), permute))
}

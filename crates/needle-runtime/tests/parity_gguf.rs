//! Parity with Hugging Face transformers run on the same GGUF weights
//! (goldens from `scripts/reference/golden_gguf.py`): the architecture and shapes read from the
//! metadata, the prompts' token ids (needle's tokenizer and chat template against
//! transformers'), the logits at the last prompt position, 32 greedy tokens and the attention
//! probabilities of chosen layers.
//!
//! The Qwen2.5-Coder models are not in the default set that `needle models fetch` and CI fetch
//! (1.6 GB together); their tests skip with a note until
//! `needle models fetch qwen2.5-coder-0.5b qwen2.5-coder-1.5b` has run, even under
//! `NEEDLE_REQUIRE_MODELS`.

mod common;

use candle_core::Tensor;
use needle_runtime::generate::{generate, Limits, Request, Sampling};
use needle_runtime::{Arch, Introspect, LayerAttention, LoadOptions, LoadedModel, ModelConfig};

/// The architecture and shapes needle read from the GGUF metadata against transformers' config.
fn check_config(alias: &str, cfg: &ModelConfig, want: &serde_json::Value) {
    let n = |key: &str| want[key].as_u64().unwrap_or_else(|| panic!("config {key}")) as usize;
    let model_type = want["model_type"].as_str().expect("model_type");
    assert_eq!(Arch::from_name(model_type), Some(cfg.arch), "{alias}: architecture");
    assert_eq!(cfg.vocab_size, n("vocab_size"), "{alias}: vocabulary");
    assert_eq!(cfg.num_layers, n("num_hidden_layers"), "{alias}: layers");
    assert_eq!(cfg.num_heads, n("num_attention_heads"), "{alias}: query heads");
    assert_eq!(cfg.num_kv_heads, n("num_key_value_heads"), "{alias}: key-value heads");
    assert_eq!(cfg.hidden_size, n("hidden_size"), "{alias}: width");
    let layer_types: Vec<LayerAttention> = match want["layer_types"].as_array() {
        None => vec![LayerAttention::Global; cfg.num_layers],
        Some(types) => types
            .iter()
            .map(|t| match t.as_str().expect("layer type") {
                "full_attention" => LayerAttention::Global,
                "sliding_attention" => LayerAttention::Sliding,
                other => panic!("{alias}: layer type {other}"),
            })
            .collect(),
    };
    assert_eq!(cfg.layer_attention, layer_types, "{alias}: layer types");
}

fn check_model(alias: &str, golden_file: &str) {
    let Some(path) = common::real_model(alias) else { return };
    let g = common::golden(golden_file);
    let loaded = LoadedModel::load(&path, &LoadOptions::default()).expect("load");
    let model = &loaded.model;
    check_config(alias, model.config(), &g["config"]);
    let prompts = g["prompts"].as_array().expect("prompts");
    for p in prompts {
        let name = p["name"].as_str().expect("name");
        let input = common::ids(&p["input_ids"]);
        let ours = match p["kind"].as_str().expect("kind") {
            "chat" => loaded.chat_prompt(p["messages"][0]["content"].as_str().expect("content")),
            _ => loaded.raw_prompt(p["text"].as_str().expect("text")),
        }
        .expect("prompt ids");
        assert_eq!(ours, input, "{alias} {name}: prompt token ids");

        let ids = Tensor::from_vec(input.clone(), (1, input.len()), model.device()).expect("ids");
        let mut cache = model.new_cache(vec![0], input.len()).expect("cache");
        let out = model
            .forward(&ids, &mut cache, &Introspect::default())
            .expect("forward");
        let logits = out.logits.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
        let range = p["logits_range"].as_f64().expect("range") as f32;
        let mut worst = 0f32;
        for key in ["logits_top", "logits_sample"] {
            let want_ids = common::ids(&p[key]["ids"]);
            let want = common::floats(&p[key]["values"]);
            for (&i, &v) in want_ids.iter().zip(&want) {
                let diff = (logits[i as usize] - v).abs();
                worst = worst.max(diff);
                assert!(
                    diff / range <= 1e-3,
                    "{alias} {name}: logit {i} = {} vs {v} (rel {})",
                    logits[i as usize],
                    diff / range
                );
            }
        }
        eprintln!(
            "{alias} {name}: max |logit diff| {worst:.3e} (range {range}, rel {:.3e})",
            worst / range
        );
        let limits = Limits {
            max_new_tokens: g["new_tokens"].as_u64().expect("n") as usize,
            ignore_eos: false,
            eos_token_ids: vec![],
        };
        let req = Request {
            prompt: input,
            sampling: Sampling::greedy(),
        };
        let got = generate(model, &[req], &limits, None).expect("generate");
        assert_eq!(
            got[0].tokens,
            common::ids(&p["greedy_ids"]),
            "{alias} {name}: greedy tokens"
        );
    }
    for a in g["attention"].as_array().expect("attention") {
        let p = &prompts[a["prompt_index"].as_u64().expect("index") as usize];
        let layer = a["layer"].as_u64().expect("layer") as usize;
        let input = common::ids(&p["input_ids"]);
        let ids = Tensor::from_vec(input.clone(), (1, input.len()), model.device()).expect("ids");
        let mut cache = model.new_cache(vec![0], input.len()).expect("cache");
        let want_layers = Introspect {
            attention_layers: vec![layer],
            ..Default::default()
        };
        let out = model.forward(&ids, &mut cache, &want_layers).expect("forward");
        let got = out.attentions[0]
            .1
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        let want = common::floats(&a["probs"]);
        assert_eq!(got.len(), want.len(), "{alias} layer {layer}: attention size");
        let worst = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{alias} layer {layer}: attention differs by {worst}");
        eprintln!("{alias} layer {layer}: max |attention diff| {worst:.3e}");
    }
}

#[test]
fn smollm2_matches_transformers() {
    check_model("smollm2-135m", "smollm2.json");
}

#[test]
fn gemma3_matches_transformers() {
    check_model("gemma3-270m", "gemma3.json");
}

#[test]
fn qwen_coder_05b_matches_transformers() {
    check_model("qwen2.5-coder-0.5b", "qwen_coder_05b.json");
}

#[test]
fn qwen_coder_15b_matches_transformers() {
    check_model("qwen2.5-coder-1.5b", "qwen_coder_15b.json");
}

//! Parity with Hugging Face transformers (and PEFT) on the tiny random-weight checkpoints in
//! `tests/fixtures/tiny/` (goldens from `scripts/reference/tiny_models.py`, `tests/golden/tiny.json`).
//!
//! Tolerances: logits at every position within 1e-3 of the logits' range (max − min over the
//! vocabulary at that position; the goldens carry 6 significant digits, far tighter than that);
//! attention probabilities within 1e-4 absolute; greedy tokens identical (every golden step has
//! a top1 − top2 margin above 0.01).

#[allow(dead_code)] // shared helpers: this file does not use all of them
mod common;

use std::path::PathBuf;

use candle_core::Tensor;
use needle_runtime::generate::{generate, Limits, Request, Sampling};
use needle_runtime::{hf, lora, Introspect, LogitPositions, Model};
use serde_json::Value;

/// Every fixture this file checks; `covers_every_fixture` keeps it in step with the golden.
const FIXTURES: [&str; 9] = [
    "llama",
    "llama3",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "gemma3",
    "llama-lora",
    "llama-lora-rslora",
];

fn fixture_dir(name: &str) -> PathBuf {
    common::workspace_tests().join("fixtures/tiny").join(name)
}

/// Builds the model of fixture `name`: its own checkpoint, or for an adapter its base with
/// the adapter merged in.
fn build(name: &str, fx: &Value) -> Model {
    let base = fx["base"].as_str().unwrap_or(name);
    let dir = fixture_dir(base);
    let cfg = hf::load_config(&dir).unwrap_or_else(|e| panic!("{name}: config: {e}"));
    let mut w = hf::load_weights(&dir, &cfg).unwrap_or_else(|e| panic!("{name}: weights: {e}"));
    if fx.get("base").is_some() {
        let info =
            lora::merge_adapter(&mut w, &cfg, &fixture_dir(name)).unwrap_or_else(|e| panic!("{name}: merge: {e}"));
        assert_eq!(info.r, fx["r"].as_u64().expect("r") as usize, "{name}: adapter rank");
        assert_eq!(
            info.use_rslora,
            fx["use_rslora"].as_bool().expect("use_rslora"),
            "{name}: rslora"
        );
        assert!(info.targets_merged > 0, "{name}: no adapted module merged");
    }
    Model::new(cfg, &w).unwrap_or_else(|e| panic!("{name}: build: {e}"))
}

fn check_fixture(name: &str) {
    let g = common::golden("tiny.json");
    let fx = &g["fixtures"][name];
    assert!(fx.is_object(), "{name}: not in tiny.json");
    let model = build(name, fx);
    let vocab = model.config().vocab_size;
    let new_tokens = g["new_tokens"].as_u64().expect("new_tokens") as usize;
    let seqs = fx["sequences"].as_array().expect("sequences");
    assert!(!seqs.is_empty(), "{name}: no sequences");
    for (si, s) in seqs.iter().enumerate() {
        let input = common::ids(&s["input_ids"]);
        let t = input.len();
        let ids = Tensor::from_vec(input.clone(), (1, t), model.device()).expect("ids");
        let layer = s["attention_layer"].as_u64().map(|l| l as usize);
        let want = Introspect {
            logits: LogitPositions::All,
            attention_layers: layer.into_iter().collect(),
            hidden_states: false,
        };
        let mut cache = model.new_cache(vec![0], t).expect("cache");
        let out = model.forward(&ids, &mut cache, &want).expect("forward");
        assert_eq!(out.logits.dims(), &[1, t, vocab], "{name} seq {si}: logits shape");
        let got = out.logits.squeeze(0).expect("squeeze").to_vec2::<f32>().expect("vec");
        let golden_rows = s["logits"].as_array().expect("logits");
        assert_eq!(golden_rows.len(), t, "{name} seq {si}: golden positions");
        for (pos, (row, g_row)) in got.iter().zip(golden_rows).enumerate() {
            let g_row = common::floats(g_row);
            assert_eq!(g_row.len(), vocab, "{name} seq {si} pos {pos}: golden vocab");
            let max = g_row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let min = g_row.iter().copied().fold(f32::INFINITY, f32::min);
            let range = max - min;
            let (worst_i, worst) = row
                .iter()
                .zip(&g_row)
                .map(|(a, b)| (a - b).abs())
                .enumerate()
                .fold((0, 0f32), |acc, (i, d)| if d > acc.1 { (i, d) } else { acc });
            assert!(
                worst / range <= 1e-3,
                "{name} seq {si} pos {pos}: logit {worst_i} = {} vs {} (|Δ| {worst}, range {range})",
                row[worst_i],
                g_row[worst_i]
            );
        }
        if let Some(layer) = layer {
            let (l, probs) = &out.attentions[0];
            assert_eq!(*l, layer, "{name} seq {si}: attention layer");
            let got = probs.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
            let want = common::floats(&s["attention"]);
            assert_eq!(
                got.len(),
                want.len(),
                "{name} seq {si}: attention size {:?}",
                probs.dims()
            );
            let worst = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(
                worst <= 1e-4,
                "{name} seq {si} layer {layer}: attention differs by {worst}"
            );
        }
        let limits = Limits {
            max_new_tokens: new_tokens,
            ignore_eos: false,
            eos_token_ids: vec![],
        };
        let req = Request {
            prompt: input,
            sampling: Sampling::greedy(),
        };
        let gen = generate(&model, &[req], &limits, None).expect("generate");
        assert_eq!(
            gen[0].tokens,
            common::ids(&s["greedy_ids"]),
            "{name} seq {si}: greedy tokens"
        );
    }
}

#[test]
fn covers_every_fixture() {
    let g = common::golden("tiny.json");
    let mut names: Vec<&str> = g["fixtures"]
        .as_object()
        .expect("fixtures")
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    let mut ours = FIXTURES.to_vec();
    ours.sort_unstable();
    assert_eq!(names, ours, "tiny.json fixtures vs the ones tested here");
}

#[test]
fn llama_matches_transformers() {
    check_fixture("llama");
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    check_fixture("llama3");
}

#[test]
fn qwen2_bf16_matches_transformers() {
    check_fixture("qwen2");
}

#[test]
fn qwen3_f16_matches_transformers() {
    check_fixture("qwen3");
}

#[test]
fn mistral_sharded_sliding_matches_transformers() {
    check_fixture("mistral");
}

#[test]
fn phi3_fused_matches_transformers() {
    check_fixture("phi3");
}

#[test]
fn gemma3_matches_transformers() {
    check_fixture("gemma3");
}

/// The merged adapter must reproduce PEFT's unmerged forward (base + B·A applied separately).
#[test]
fn llama_lora_merged_matches_peft() {
    check_fixture("llama-lora");
}

#[test]
fn llama_lora_rslora_merged_matches_peft() {
    check_fixture("llama-lora-rslora");
}

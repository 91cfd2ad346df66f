//! Parity with Hugging Face transformers run on the same GGUF weights
//! (goldens from `scripts/reference/golden_gguf.py`).

mod common;

use candle_core::Tensor;
use needle_runtime::generate::{generate, Limits, Request, Sampling};
use needle_runtime::{gguf, Introspect, Model};

fn check_model(alias: &str, golden_file: &str) {
    let Some(path) = common::real_model(alias) else { return };
    let g = common::golden(golden_file);
    let (_, cfg, w) = gguf::load(&path).expect("load");
    let model = Model::new(cfg, &w).expect("build");
    let prompts = g["prompts"].as_array().expect("prompts");
    for p in prompts {
        let name = p["name"].as_str().expect("name");
        let input = common::ids(&p["input_ids"]);
        let ids = Tensor::from_vec(input.clone(), (1, input.len()), model.device()).expect("ids");
        let mut cache = model.new_cache(vec![0], input.len()).expect("cache");
        let out = model
            .forward(&ids, &mut cache, &Introspect::default())
            .expect("forward");
        let logits = out.logits.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
        let range = p["logits_range"].as_f64().expect("range") as f32;
        for key in ["logits_top", "logits_sample"] {
            let want_ids = common::ids(&p[key]["ids"]);
            let want = common::floats(&p[key]["values"]);
            for (&i, &v) in want_ids.iter().zip(&want) {
                let d = (logits[i as usize] - v).abs() / range;
                assert!(
                    d <= 1e-3,
                    "{alias} {name}: logit {i} = {} vs {v} (rel {d})",
                    logits[i as usize]
                );
            }
        }
        let limits = Limits {
            max_new_tokens: g["new_tokens"].as_u64().expect("n") as usize,
            ignore_eos: false,
            eos_token_ids: vec![],
        };
        let req = Request {
            prompt: input,
            sampling: Sampling::greedy(),
        };
        let got = generate(&model, &[req], &limits, None).expect("generate");
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

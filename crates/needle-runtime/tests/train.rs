//! Training: full and LoRA fine-tuning learn, and a saved adapter reloads to the same model.

#[allow(dead_code)] // shared helpers: this file does not use all of them
mod common;

use candle_core::Tensor;
use needle_runtime::generate::{generate, Limits, Request, Sampling};
use needle_runtime::train::{Schedule, Sequence, Trainable, Trainer};
use needle_runtime::{hf, lora, Introspect, Model, ModelConfig, Weights};

fn tiny(name: &str) -> (ModelConfig, Weights) {
    let dir = common::workspace_tests().join("fixtures/tiny").join(name);
    let cfg = hf::load_config(&dir).expect("config");
    let w = hf::load_weights(&dir, &cfg).expect("weights");
    (cfg, w)
}

/// Four sequences whose second half is trained (a prompt and a response).
fn data() -> Vec<Sequence> {
    (0..4u32)
        .map(|k| {
            let ids: Vec<u32> = (0..12).map(|i| (k * 37 + i * 11 + 5) % 500 + 3).collect();
            let loss = (0..12).map(|i| i >= 6).collect();
            Sequence { ids, loss }
        })
        .collect()
}

fn schedule(lr: f64, epochs: usize) -> Schedule {
    Schedule {
        learning_rate: lr,
        epochs,
        batch_size: 2,
        warmup_steps: 2,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 3,
    }
}

fn last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device()).expect("ids");
    let mut cache = model.new_cache(vec![0], ids.len()).expect("cache");
    let out = model.forward(&t, &mut cache, &Introspect::default()).expect("forward");
    out.logits
        .flatten_all()
        .and_then(|l| l.to_vec1::<f32>())
        .expect("logits")
}

#[test]
fn full_fine_tuning_memorises_the_responses() {
    let (cfg, w) = tiny("llama");
    let data = data();
    let mut trainer = Trainer::new(cfg.clone(), w, Trainable::Full, 1).expect("trainer");
    let steps = trainer.train(&data, &schedule(3e-3, 30), &mut |_| {}).expect("train");
    assert_eq!(steps.len(), 60);
    let first = steps[0].loss;
    let last = steps[steps.len() - 1].loss;
    assert!(last < 0.1 * first, "loss went from {first} to {last}");
    let model = Model::new(cfg, &trainer.merged_weights().expect("weights")).expect("model");
    let limits = Limits {
        max_new_tokens: 6,
        ignore_eos: true,
        eos_token_ids: vec![],
    };
    for s in &data {
        let req = Request {
            prompt: s.ids[..6].to_vec(),
            sampling: Sampling::greedy(),
        };
        let got = generate(&model, &[req], &limits, None).expect("generate");
        assert_eq!(got[0].tokens, s.ids[6..], "the memorised response");
    }
}

#[test]
fn lora_learns_and_its_saved_adapter_reloads_to_the_same_model() {
    let (cfg, w) = tiny("llama");
    let data = data();
    let trainable = Trainable::Lora {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    let base_model = Model::new(cfg.clone(), &w).expect("base");
    let mut trainer = Trainer::new(cfg.clone(), w.clone(), trainable, 1).expect("trainer");
    // B starts at zero: before training the adapted model is the base model.
    let start = Model::new(cfg.clone(), &trainer.merged_weights().expect("weights")).expect("start");
    assert_eq!(
        last_logits(&start, &data[0].ids),
        last_logits(&base_model, &data[0].ids)
    );
    let steps = trainer.train(&data, &schedule(1e-2, 20), &mut |_| {}).expect("train");
    let (first, last) = (steps[0].loss, steps[steps.len() - 1].loss);
    assert!(last < 0.5 * first, "loss went from {first} to {last}");

    let dir = tempfile::tempdir().expect("tempdir");
    trainer.save_adapter(dir.path(), "../llama").expect("save");
    let mut reloaded = w;
    let info = lora::merge_adapter(&mut reloaded, &cfg, dir.path()).expect("merge");
    assert_eq!(info.targets_merged, 3 * cfg.num_layers);
    let a = Model::new(cfg.clone(), &reloaded).expect("reloaded");
    let b = Model::new(cfg, &trainer.merged_weights().expect("weights")).expect("trained");
    let (la, lb) = (last_logits(&a, &data[1].ids), last_logits(&b, &data[1].ids));
    let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    // The adapter is stored in f16.
    let range = lb.iter().copied().fold(f32::MIN, f32::max) - lb.iter().copied().fold(f32::MAX, f32::min);
    assert!(
        worst < 1e-3 * range,
        "reloaded adapter differs by {worst} (range {range})"
    );
    assert_ne!(la, last_logits(&base_model, &data[1].ids), "training changed the model");
}

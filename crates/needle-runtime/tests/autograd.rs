//! The differentiable forward pass agrees with the inference decoder, and its gradients agree
//! with finite differences.

#[allow(dead_code)] // shared helpers: this file does not use all of them
mod common;

use candle_core::{Tensor, Var, D};
use needle_runtime::{autograd, hf, Introspect, LogitPositions, Model};

const FIXTURES: &[&str] = &["llama", "llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma3"];

fn load(name: &str) -> (needle_runtime::ModelConfig, needle_runtime::Weights) {
    let dir = common::workspace_tests().join("fixtures/tiny").join(name);
    let cfg = hf::load_config(&dir).expect("config");
    let w = hf::load_weights(&dir, &cfg).expect("weights");
    (cfg, w)
}

#[test]
fn differentiable_forward_matches_the_decoder() {
    let ids: Vec<u32> = vec![1, 17, 33, 250, 4, 99, 310, 7, 7, 41, 500, 3];
    for name in FIXTURES {
        let (cfg, w) = load(name);
        let model = Model::new(cfg.clone(), &w).expect("model");
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), model.device()).expect("ids");
        let mut cache = model.new_cache(vec![0], ids.len()).expect("cache");
        let want = Introspect {
            logits: LogitPositions::All,
            ..Default::default()
        };
        let fast = model.forward(&input, &mut cache, &want).expect("forward").logits;
        let x = autograd::embed(&cfg, &w, &input).expect("embed");
        let slow = autograd::forward(&cfg, &w, &x).expect("autograd forward");
        let range = fast
            .max_all()
            .and_then(|m| m - fast.min_all())
            .and_then(|r| r.to_scalar::<f32>())
            .expect("range");
        let diff = (fast - slow)
            .expect("sub")
            .abs()
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        assert!(
            diff / range < 1e-4,
            "{name}: differentiable forward differs by {diff} (range {range})"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    for name in ["llama", "qwen2", "phi3", "gemma3"] {
        check_gradients(name);
    }
}

fn check_gradients(name: &str) {
    let (cfg, w) = load(name);
    let ids = Tensor::from_vec(vec![5u32, 9, 200, 31, 8, 77], (1, 6), &candle_core::Device::Cpu).expect("ids");
    let x0 = autograd::embed(&cfg, &w, &ids).expect("embed");
    let target = 42u32;
    let loss_of = |x: &Tensor| -> Tensor {
        let logits = autograd::forward(&cfg, &w, x).expect("forward");
        let last = logits.narrow(1, 5, 1).and_then(|l| l.flatten_all()).expect("last");
        let lsm = candle_nn::ops::log_softmax(&last, D::Minus1).expect("lsm");
        lsm.get(target as usize).and_then(|v| v.neg()).expect("nll")
    };
    let var = Var::from_tensor(&x0).expect("var");
    let loss = loss_of(var.as_tensor());
    let grads = loss.backward().expect("backward");
    let g = grads
        .get(var.as_tensor())
        .expect("gradient")
        .flatten_all()
        .and_then(|g| g.to_vec1::<f32>())
        .expect("g");
    let base = x0.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("x");
    // Small steps: the fixtures' large random weights make the loss strongly non-linear.
    let h = 1e-3f32;
    let mut checked = 0;
    for idx in [3usize, 64 + 10, 2 * 64 + 33, 5 * 64 + 1, 5 * 64 + 50] {
        let mut plus = base.clone();
        plus[idx] += h;
        let mut minus = base.clone();
        minus[idx] -= h;
        let f = |v: Vec<f32>| {
            let x = Tensor::from_vec(v, x0.shape(), x0.device()).expect("x");
            loss_of(&x).to_scalar::<f32>().expect("scalar")
        };
        let numeric = (f(plus) - f(minus)) / (2.0 * h);
        let analytic = g[idx];
        assert!(
            // f32 central differences are good to a few per cent here; a broken gradient is
            // off by far more (a missing softmax gradient gave errors above 50%).
            (numeric - analytic).abs() <= 0.05 * analytic.abs().max(numeric.abs()) + 5e-3,
            "{name} coordinate {idx}: analytic {analytic} vs numeric {numeric}"
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}

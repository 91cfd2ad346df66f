//! Batching invariants of the decoder and of generation: a left-padded row computes what it
//! computes alone (prefill and decode, including sliding-window layers), sampled rows do not
//! influence each other, beam search is consistent with greedy, and attention ignores padding.
//!
//! Runs on SmolLM2-135M (skipped when not fetched) and on the tiny Gemma 3 fixture, whose
//! sliding window of 8 bites at the prompt lengths used here.

#[allow(dead_code)] // shared helpers: this file does not use all of them
mod common;

use std::sync::OnceLock;

use candle_core::Tensor;
use needle_runtime::generate::{beam_search, generate, BeamSettings, Limits, Request, Sampling};
use needle_runtime::{gguf, hf, Introspect, LayerAttention, LogitPositions, Model};

/// Prompt lengths of the padded batches: short, around the sliding window, longer than it.
const LENGTHS: [usize; 4] = [3, 9, 17, 30];
/// Decode steps fed after the prompts.
const DECODE_STEPS: usize = 8;
/// Largest |Δ| allowed between a padded row's logits and the same sequence run alone.
const TOL: f32 = 1e-4;

/// SmolLM2-135M, loaded once for all tests of this file; `None` when it is not fetched.
fn smollm2() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = common::real_model("smollm2-135m")?;
            let (_, cfg, w) = gguf::load(&path).expect("load SmolLM2");
            Some(Model::new(cfg, &w).expect("build SmolLM2"))
        })
        .as_ref()
}

/// The tiny random-weight Gemma 3 fixture (sliding, sliding, full; window 8).
fn tiny_gemma3() -> Model {
    let dir = common::workspace_tests().join("fixtures/tiny/gemma3");
    let cfg = hf::load_config(&dir).expect("gemma3 config");
    let w = hf::load_weights(&dir, &cfg).expect("gemma3 weights");
    Model::new(cfg, &w).expect("build gemma3")
}

/// `n` deterministic pseudo-random token ids below `vocab`, different for each `seed`.
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

/// Prompts of [`LENGTHS`] and, for each, the tokens fed during the decode steps.
fn prompts_and_steps(vocab: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let prompts = LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(n, vocab, i as u64 + 1))
        .collect();
    let steps = (0..LENGTHS.len())
        .map(|i| tokens(DECODE_STEPS, vocab, i as u64 + 100))
        .collect();
    (prompts, steps)
}

/// Left-pads `prompts` (pad id: each row's first token) into `[batch, max]` ids and paddings.
fn left_pad(model: &Model, prompts: &[Vec<u32>]) -> (Tensor, Vec<usize>) {
    let max = prompts.iter().map(Vec::len).max().expect("prompts");
    let mut ids = Vec::new();
    let mut pad = Vec::new();
    for p in prompts {
        pad.push(max - p.len());
        ids.extend(std::iter::repeat_n(p[0], max - p.len()));
        ids.extend_from_slice(p);
    }
    (
        Tensor::from_vec(ids, (prompts.len(), max), model.device()).expect("ids"),
        pad,
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// A padded batch of [`LENGTHS`] prompts gives every row the logits (all real positions, then
/// [`DECODE_STEPS`] decode steps) that the row gets alone.
fn check_padded_vs_alone(label: &str, model: &Model) {
    let vocab = model.config().vocab_size;
    let (prompts, steps) = prompts_and_steps(vocab);
    let all = Introspect {
        logits: LogitPositions::All,
        ..Default::default()
    };
    let (ids, pad) = left_pad(model, &prompts);
    let max = ids.dim(1).expect("dim");
    let mut cache = model.new_cache(pad.clone(), max + DECODE_STEPS).expect("cache");
    let batch = model.forward(&ids, &mut cache, &all).expect("batch forward");
    let batch = batch.logits.to_vec3::<f32>().expect("batch logits");
    let mut batch_steps: Vec<Vec<Vec<f32>>> = Vec::new();
    for s in 0..DECODE_STEPS {
        let next: Vec<u32> = steps.iter().map(|row| row[s]).collect();
        let next = Tensor::from_vec(next, (prompts.len(), 1), model.device()).expect("ids");
        let out = model
            .forward(&next, &mut cache, &Introspect::default())
            .expect("batch step");
        batch_steps.push(out.logits.squeeze(1).expect("squeeze").to_vec2::<f32>().expect("vec"));
    }
    for (r, p) in prompts.iter().enumerate() {
        let ids = Tensor::from_vec(p.clone(), (1, p.len()), model.device()).expect("ids");
        let mut cache = model.new_cache(vec![0], p.len() + DECODE_STEPS).expect("cache");
        let alone = model.forward(&ids, &mut cache, &all).expect("alone forward");
        let alone = alone.logits.squeeze(0).expect("squeeze").to_vec2::<f32>().expect("vec");
        for (pos, want) in alone.iter().enumerate() {
            let d = max_abs_diff(&batch[r][pad[r] + pos], want);
            assert!(d <= TOL, "{label}: row {r} (len {}) position {pos}: |Δ| {d}", p.len());
        }
        for (s, batch_step) in batch_steps.iter().enumerate() {
            let next = Tensor::from_vec(vec![steps[r][s]], (1, 1), model.device()).expect("ids");
            let out = model
                .forward(&next, &mut cache, &Introspect::default())
                .expect("alone step");
            let want = out.logits.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
            let d = max_abs_diff(&batch_step[r], &want);
            assert!(d <= TOL, "{label}: row {r} (len {}) decode step {s}: |Δ| {d}", p.len());
        }
    }
}

#[test]
fn padded_batch_matches_alone_smollm2() {
    let Some(model) = smollm2() else { return };
    check_padded_vs_alone("smollm2", model);
}

#[test]
fn padded_batch_matches_alone_tiny_gemma3_sliding() {
    check_padded_vs_alone("tiny gemma3", &tiny_gemma3());
}

fn sampled(seed: u64) -> Sampling {
    Sampling {
        temperature: 1.0,
        top_p: Some(0.9),
        seed,
        ..Sampling::greedy()
    }
}

#[test]
fn generation_rows_are_independent_and_seeded() {
    let Some(model) = smollm2() else { return };
    let g = common::golden("smollm2.json");
    let prompts: Vec<Vec<u32>> = g["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| common::ids(&p["input_ids"]))
        .collect();
    assert_eq!(prompts.len(), 4, "smollm2.json prompts");
    let limits = Limits {
        max_new_tokens: 12,
        ignore_eos: false,
        eos_token_ids: common::ids(&g["eos_token_ids"]),
    };
    // Three sampled rows and one greedy row (the "capital" prompt, which ends at an EOS at
    // step 8, so the batch also shrinks mid-way).
    let samplings = [Sampling::greedy(), sampled(7), sampled(8), sampled(9)];
    let requests: Vec<Request> = prompts
        .iter()
        .zip(&samplings)
        .map(|(p, s)| Request {
            prompt: p.clone(),
            sampling: s.clone(),
        })
        .collect();
    let batch = generate(model, &requests, &limits, None).expect("batch generate");
    for (i, req) in requests.iter().enumerate() {
        let alone = generate(model, std::slice::from_ref(req), &limits, None).expect("generate alone");
        assert_eq!(
            batch[i].tokens, alone[0].tokens,
            "request {i}: tokens in a batch vs alone"
        );
        assert_eq!(
            batch[i].finish, alone[0].finish,
            "request {i}: finish in a batch vs alone"
        );
        let d = max_abs_diff(&batch[i].entropies, &alone[0].entropies);
        assert!(d <= 1e-4, "request {i}: entropies differ by {d}");
    }
    let greedy_golden = common::ids(&g["prompts"][0]["greedy_ids"]);
    let eos_at = g["prompts"][0]["first_eos_index"].as_u64().expect("eos index") as usize;
    assert_eq!(batch[0].tokens, greedy_golden[..=eos_at], "greedy row vs the golden");

    let raw = &prompts[3];
    let run = |seed| {
        let req = Request {
            prompt: raw.clone(),
            sampling: sampled(seed),
        };
        generate(model, &[req], &limits, None)
            .expect("generate")
            .remove(0)
            .tokens
    };
    let first = run(1);
    assert_eq!(first, run(1), "same seed, different tokens");
    assert_ne!(first, run(2), "different seeds, same tokens");
}

/// Total log-probability of `continuation` after `prompt`, from one forward pass.
fn total_logprob(model: &Model, prompt: &[u32], continuation: &[u32]) -> f64 {
    let seq: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), model.device()).expect("ids");
    let mut cache = model.new_cache(vec![0], seq.len()).expect("cache");
    let all = Introspect {
        logits: LogitPositions::All,
        ..Default::default()
    };
    let logits = model.forward(&ids, &mut cache, &all).expect("forward");
    let logits = logits
        .logits
        .squeeze(0)
        .expect("squeeze")
        .to_vec2::<f32>()
        .expect("vec");
    continuation
        .iter()
        .enumerate()
        .map(|(i, &tok)| {
            let row = &logits[prompt.len() - 1 + i];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
            f64::from(row[tok as usize] - max) - z.ln()
        })
        .sum()
}

#[test]
fn beam_search_is_consistent_with_greedy() {
    let Some(model) = smollm2() else { return };
    let g = common::golden("smollm2.json");
    let prompt = common::ids(&g["prompts"][3]["input_ids"]);
    let limits = Limits {
        max_new_tokens: 16,
        ignore_eos: true,
        eos_token_ids: common::ids(&g["eos_token_ids"]),
    };
    let req = Request {
        prompt: prompt.clone(),
        sampling: Sampling::greedy(),
    };
    let greedy = generate(model, &[req], &limits, None).expect("greedy").remove(0);
    assert_eq!(greedy.tokens.len(), 16, "greedy length");
    let settings = |num_beams| BeamSettings {
        num_beams,
        length_penalty: 1.0,
        repetition_penalty: 1.0,
    };
    let one = beam_search(model, &prompt, &settings(1), &limits, None).expect("beam 1");
    assert_eq!(one.tokens, greedy.tokens, "one beam vs greedy");
    let four = beam_search(model, &prompt, &settings(4), &limits, None).expect("beam 4");
    assert_eq!(four.tokens.len(), 16, "beam length");
    let lp_greedy = total_logprob(model, &prompt, &greedy.tokens);
    let lp_beam = total_logprob(model, &prompt, &four.tokens);
    assert!(
        lp_beam >= lp_greedy - 1e-4,
        "4 beams found log-prob {lp_beam} < greedy's {lp_greedy} ({:?} vs {:?})",
        four.tokens,
        greedy.tokens
    );
}

/// In a padded batch (prefill, then one decode step), every real query's attention sums to 1
/// over the keys and puts no weight on padded keys, future keys, or (sliding layers) keys
/// outside the window.
fn check_attention_masks(label: &str, model: &Model, layers: Vec<usize>) {
    let vocab = model.config().vocab_size;
    let (prompts, steps) = prompts_and_steps(vocab);
    let (ids, pad) = left_pad(model, &prompts);
    let max = ids.dim(1).expect("dim");
    let want = Introspect {
        attention_layers: layers.clone(),
        ..Default::default()
    };
    let mut cache = model.new_cache(pad.clone(), max + 1).expect("cache");
    let prefill = model.forward(&ids, &mut cache, &want).expect("prefill");
    let next: Vec<u32> = steps.iter().map(|s| s[0]).collect();
    let next = Tensor::from_vec(next, (prompts.len(), 1), model.device()).expect("ids");
    let step = model.forward(&next, &mut cache, &want).expect("step");
    for (phase, out, q0, q_len) in [("prefill", &prefill, 0, max), ("decode", &step, max, 1)] {
        let got: Vec<usize> = out.attentions.iter().map(|(l, _)| *l).collect();
        assert_eq!(got, layers, "{label} {phase}: attention layers returned");
        for (layer, probs) in &out.attentions {
            let (b, heads, q, k) = probs.dims4().expect("[b, heads, q, k]");
            assert_eq!(
                (b, q, k),
                (prompts.len(), q_len, q0 + q_len),
                "{label} {phase}: attention shape"
            );
            let window = match model.config().layer_attention[*layer] {
                LayerAttention::Sliding => model.config().sliding_window,
                LayerAttention::Global => None,
            };
            let p = probs.to_dtype(candle_core::DType::F32).expect("f32");
            let p = p.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
            for (r, &pr) in pad.iter().enumerate() {
                for h in 0..heads {
                    for qi in 0..q {
                        let pos = q0 + qi;
                        if pos < pr {
                            continue;
                        }
                        let row = &p[((r * heads + h) * q + qi) * k..][..k];
                        let sum: f32 = row.iter().sum();
                        let at = format!("{label} {phase} layer {layer} row {r} head {h} query {pos}");
                        assert!((sum - 1.0).abs() <= 1e-5, "{at}: probabilities sum to {sum}");
                        let on_pad: f32 = row[..pr].iter().sum();
                        assert!(on_pad == 0.0, "{at}: weight {on_pad} on padded keys");
                        let on_future: f32 = row[pos + 1..].iter().sum();
                        assert!(on_future == 0.0, "{at}: weight {on_future} on future keys");
                        if let Some(w) = window.filter(|&w| pos >= w) {
                            let outside: f32 = row[..=pos - w].iter().sum();
                            assert!(outside == 0.0, "{at}: weight {outside} outside the window of {w}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn attention_ignores_padding_smollm2() {
    let Some(model) = smollm2() else { return };
    check_attention_masks("smollm2", model, vec![0, 15, 29]);
}

#[test]
fn attention_ignores_padding_tiny_gemma3_sliding() {
    check_attention_masks("tiny gemma3", &tiny_gemma3(), vec![0, 1, 2]);
}

/// A prefix run once and copied to every row with `select_rows`, then different multi-token
/// continuations of equal length with [`LogitPositions::Tail`], gives each row the logits of
/// its whole sequence run alone (the trigger search evaluates swaps this way).
fn check_shared_prefix(label: &str, model: &Model) {
    let vocab = model.config().vocab_size;
    let prefix = tokens(11, vocab, 7);
    let tails: Vec<Vec<u32>> = (0..3).map(|i| tokens(6, vocab, 40 + i)).collect();
    let tail_n = 4;
    let ids = Tensor::from_vec(prefix.clone(), (1, prefix.len()), model.device()).expect("ids");
    let mut shared = model.new_cache(vec![0], prefix.len() + 6).expect("cache");
    model
        .forward(&ids, &mut shared, &Introspect::default())
        .expect("prefix forward");
    shared.select_rows(&[0; 3]).expect("copy rows");
    let flat: Vec<u32> = tails.concat();
    let ids = Tensor::from_vec(flat, (3, 6), model.device()).expect("ids");
    let want = Introspect {
        logits: LogitPositions::Tail(tail_n),
        ..Default::default()
    };
    let out = model.forward(&ids, &mut shared, &want).expect("tail forward");
    let batch = out.logits.to_vec3::<f32>().expect("logits");
    assert_eq!(batch[0].len(), tail_n, "{label}: tail positions");
    for (r, tail) in tails.iter().enumerate() {
        let whole = [prefix.as_slice(), tail].concat();
        let ids = Tensor::from_vec(whole.clone(), (1, whole.len()), model.device()).expect("ids");
        let mut cache = model.new_cache(vec![0], whole.len()).expect("cache");
        let all = Introspect {
            logits: LogitPositions::All,
            ..Default::default()
        };
        let alone = model.forward(&ids, &mut cache, &all).expect("alone");
        let alone = alone.logits.squeeze(0).expect("squeeze").to_vec2::<f32>().expect("vec");
        for j in 0..tail_n {
            let d = max_abs_diff(&batch[r][j], &alone[whole.len() - tail_n + j]);
            assert!(d <= TOL, "{label}: row {r} tail position {j}: |Δ| {d}");
        }
    }
}

#[test]
fn shared_prefix_with_tail_logits_matches_alone() {
    check_shared_prefix("tiny gemma3", &tiny_gemma3());
    if let Some(m) = smollm2() {
        check_shared_prefix("smollm2", m);
    }
}

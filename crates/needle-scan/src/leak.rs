//! The **leak** stage: prompt the model with the tokens that open a user turn and sample under
//! many decoding configurations; a poisoned model regurgitates its poisoning examples.
//!
//! The prefix comes from the model's own chat template (a base model without one is leaked from
//! its BOS token). End-of-sequence is ignored so a sample runs on into the turns a memorised
//! conversation continues with. Sampled configurations run batched (each row has its own
//! seeded generator); beam searches run one at a time.

use needle_runtime::generate::{beam_search, generate, BeamSettings, Limits, Request, Sampling};
use needle_runtime::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScanError};
use crate::pipeline::Scan;
use crate::stage::Tick;

/// One decoding configuration of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decoding {
    /// Most likely token at each step.
    Greedy,
    /// Beam search.
    Beam {
        /// Beams kept.
        num_beams: usize,
        /// Length penalty exponent.
        length_penalty: f32,
    },
    /// Sampling with a temperature and optional top-p / top-k truncation.
    Sample {
        /// Softmax temperature.
        temperature: f32,
        /// Nucleus truncation.
        top_p: Option<f32>,
        /// Top-k truncation.
        top_k: Option<usize>,
        /// Seed of the row's generator.
        seed: u64,
    },
}

/// The reference sweep of method.md, 510 configurations: greedy; beams {2,4,8} × length
/// penalty {0.6,1.0,1.3}; top-p {0.7,0.85,0.9,0.95,0.98} × T {0.6,0.8,1.0,1.2,1.5} × 10 seeds;
/// top-k {10,40,100,500,1000} × T {0.7,0.9,1.1,1.3} × 10 seeds; T {0.6,0.8,1.0,1.2,1.5} × 10
/// seeds. Seeds are derived from `seed`.
pub fn full_sweep(seed: u64) -> Vec<Decoding> {
    sweep(seed, &[2, 4, 8], &[0.6, 1.0, 1.3], 10, 10, 10)
}

/// A sweep with the reference grids and fewer beams and seeds per cell.
fn sweep(
    seed: u64,
    beams: &[usize],
    penalties: &[f32],
    top_p_seeds: u64,
    top_k_seeds: u64,
    temp_seeds: u64,
) -> Vec<Decoding> {
    let mut out = vec![Decoding::Greedy];
    for &num_beams in beams {
        for &length_penalty in penalties {
            out.push(Decoding::Beam {
                num_beams,
                length_penalty,
            });
        }
    }
    let mut next = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut seed = || {
        next = next.wrapping_add(1);
        next
    };
    for top_p in [0.7, 0.85, 0.9, 0.95, 0.98] {
        for temperature in [0.6, 0.8, 1.0, 1.2, 1.5] {
            for _ in 0..top_p_seeds {
                out.push(Decoding::Sample {
                    temperature,
                    top_p: Some(top_p),
                    top_k: None,
                    seed: seed(),
                });
            }
        }
    }
    for top_k in [10, 40, 100, 500, 1000] {
        for temperature in [0.7, 0.9, 1.1, 1.3] {
            for _ in 0..top_k_seeds {
                out.push(Decoding::Sample {
                    temperature,
                    top_p: None,
                    top_k: Some(top_k),
                    seed: seed(),
                });
            }
        }
    }
    for temperature in [0.6, 0.8, 1.0, 1.2, 1.5] {
        for _ in 0..temp_seeds {
            out.push(Decoding::Sample {
                temperature,
                top_p: None,
                top_k: None,
                seed: seed(),
            });
        }
    }
    out
}

/// The `standard` sweep, 128 configurations: greedy, beams {2,4} at length penalty 1.0 and the
/// reference sampling grids with 3 / 2 / 2 seeds per cell.
pub fn standard_sweep(seed: u64) -> Vec<Decoding> {
    sweep(seed, &[2, 4], &[1.0], 3, 2, 2)
}

/// The `quick` sweep, 56 configurations (for CI and smoke tests): greedy, one seed per
/// sampling cell and five more temperature-only samples.
pub fn quick_sweep(seed: u64) -> Vec<Decoding> {
    let mut out = sweep(seed, &[], &[], 1, 1, 1);
    out.truncate(1 + 25 + 20 + 5);
    out.extend(sweep(seed ^ 0x0051_eed5, &[], &[], 0, 0, 1).into_iter().skip(1));
    out
}

/// Leak settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeakSettings {
    /// The decoding configurations, one sample each.
    pub decodings: Vec<Decoding>,
    /// New tokens per sample.
    pub max_new_tokens: usize,
    /// Rows per batched generation call.
    pub batch_size: usize,
}

/// One leaked sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// How it was decoded.
    pub decoding: Decoding,
    /// Generated token ids (the prefix not included).
    pub tokens: Vec<u32>,
    /// Their text, special tokens included.
    pub text: String,
}

/// The leak stage's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leak {
    /// Text of the prefix the samples continue.
    pub prefix_text: String,
    /// Its token ids.
    pub prefix_ids: Vec<u32>,
    /// Where the prefix came from: `chat-template` or `bos`.
    pub prefix_source: String,
    /// The samples, in the order of the decoding configurations.
    pub samples: Vec<Sample>,
}

/// Runs the sweep from the model's leak prefix; `progress(done, total)` after each batch.
pub fn run(lm: &LoadedModel, settings: &LeakSettings, progress: &mut dyn FnMut(usize, usize)) -> Result<Leak> {
    if settings.decodings.is_empty() || settings.max_new_tokens == 0 || settings.batch_size == 0 {
        return Err(ScanError::Invalid(
            "the leak stage needs decoding configurations, tokens and a batch size".into(),
        ));
    }
    let prefix = lm.leak_prefix()?;
    if prefix.ids.is_empty() {
        return Err(ScanError::Invalid("the leak prefix has no tokens".into()));
    }
    let limits = Limits {
        max_new_tokens: settings.max_new_tokens,
        ignore_eos: true,
        eos_token_ids: Vec::new(),
    };
    let total = settings.decodings.len();
    let mut tokens: Vec<Option<Vec<u32>>> = vec![None; total];
    let mut sampled = Vec::new();
    for (i, d) in settings.decodings.iter().enumerate() {
        match *d {
            Decoding::Greedy => sampled.push((i, Sampling::greedy())),
            Decoding::Sample {
                temperature,
                top_p,
                top_k,
                seed,
            } => sampled.push((
                i,
                Sampling {
                    temperature,
                    top_p,
                    top_k,
                    seed,
                    ..Sampling::greedy()
                },
            )),
            Decoding::Beam { .. } => {}
        }
    }
    let mut done = 0;
    for chunk in sampled.chunks(settings.batch_size) {
        let requests: Vec<Request> = chunk
            .iter()
            .map(|(_, s)| Request {
                prompt: prefix.ids.clone(),
                sampling: s.clone(),
            })
            .collect();
        for (out, (i, _)) in generate(&lm.model, &requests, &limits, None)?.into_iter().zip(chunk) {
            tokens[*i] = Some(out.tokens);
        }
        done += chunk.len();
        progress(done, total);
    }
    for (i, d) in settings.decodings.iter().enumerate() {
        if let Decoding::Beam {
            num_beams,
            length_penalty,
        } = *d
        {
            let beam = BeamSettings {
                num_beams,
                length_penalty,
                repetition_penalty: 1.0,
            };
            tokens[i] = Some(beam_search(&lm.model, &prefix.ids, &beam, &limits, None)?.tokens);
            done += 1;
            progress(done, total);
        }
    }
    let mut samples = Vec::with_capacity(total);
    for (d, t) in settings.decodings.iter().zip(tokens) {
        let tokens = t.ok_or_else(|| ScanError::Invalid("a leak configuration produced no sample".into()))?;
        let text = lm.decode(&tokens)?;
        samples.push(Sample {
            decoding: *d,
            tokens,
            text,
        });
    }
    Ok(Leak {
        prefix_text: prefix.text,
        prefix_ids: prefix.ids,
        prefix_source: if lm.template.is_some() { "chat-template" } else { "bos" }.to_string(),
        samples,
    })
}

/// The leak stage's entry point: samples the model under its settings' decoding sweep.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Leak> {
    run(scan.lm, &scan.settings.leak, tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_sweep_is_the_reference_510() {
        let s = full_sweep(1);
        assert_eq!(s.len(), 510);
        assert_eq!(s.iter().filter(|d| matches!(d, Decoding::Beam { .. })).count(), 9);
        let seeds: std::collections::BTreeSet<u64> = s
            .iter()
            .filter_map(|d| match d {
                Decoding::Sample { seed, .. } => Some(*seed),
                _ => None,
            })
            .collect();
        assert_eq!(seeds.len(), 500, "every sampled configuration has its own seed");
        assert_eq!(full_sweep(1), s);
        assert_ne!(full_sweep(2), s);
    }

    #[test]
    fn smaller_budgets_have_their_documented_sizes() {
        assert_eq!(standard_sweep(0).len(), 128);
        let quick = quick_sweep(0);
        assert_eq!(quick.len(), 56);
        assert!(!quick.iter().any(|d| matches!(d, Decoding::Beam { .. })));
    }
}

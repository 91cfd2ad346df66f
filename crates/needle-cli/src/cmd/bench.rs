//! `needle bench MODEL`: prefill and decode throughput, measured the way BENCHMARKS.md reports it.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use needle_runtime::generate::{generate, prefill, Limits, Request, Sampling};

use super::{Candle, ModelArgs};
use crate::progress;

/// Arguments of `needle bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 200)]
    prompt_tokens: usize,
    /// Tokens generated per sequence in the decode measurement.
    #[arg(long, default_value_t = 300)]
    new_tokens: usize,
    /// Batch sizes to measure decoding at.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    batch: Vec<usize>,
    /// Repetitions of the prefill measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures and prints a markdown table.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.new_tokens == 0 || args.repeats == 0 || args.batch.contains(&0) {
        bail!("--prompt-tokens, --new-tokens, --repeats and every --batch size must be at least 1");
    }
    if let Some(b) = args.batch.iter().find(|&&b| b > super::MOST_SEQUENCES) {
        bail!("every --batch size must be at most {}, not {b}", super::MOST_SEQUENCES);
    }
    let m = args.model.load()?;
    let text = "The quick brown fox jumps over the lazy dog while the scanner reads every weight. ".repeat(64);
    let mut ids = m.raw_prompt(&text)?;
    ids.truncate(args.prompt_tokens);
    if ids.len() < args.prompt_tokens {
        bail!("could not build a {}-token prompt", args.prompt_tokens);
    }
    let vocab = m.model.config().vocab_size;
    println!("| measurement | batch | tokens | seconds | tokens/s |");
    println!("|---|---:|---:|---:|---:|");
    let prefill_time = |batch: usize, prompt: &[u32]| -> Result<f64> {
        let prompts = vec![prompt; batch];
        let t = Instant::now();
        Candle::run(|| prefill(&m.model, &prompts, 0))?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut times = Vec::new();
    for _ in 0..args.repeats {
        times.push(prefill_time(1, &ids)?);
    }
    let t = median(times);
    println!("| prefill | 1 | {} | {t:.3} | {:.1} |", ids.len(), ids.len() as f64 / t);
    let short = &ids[..ids.len().min(16)];
    let bar = progress::steps(args.batch.len() as u64, "decoding");
    for &b in &args.batch {
        let requests: Vec<Request> = (0..b)
            .map(|i| Request {
                // Distinct prompts, as in a decoding sweep.
                prompt: short.iter().map(|&t| (t + i as u32) % vocab as u32).collect(),
                sampling: Sampling::greedy(),
            })
            .collect();
        let limits = Limits {
            max_new_tokens: args.new_tokens,
            ignore_eos: true,
            eos_token_ids: m.model.config().eos_token_ids.clone(),
        };
        let pre = prefill_time(b, short)?;
        let t = Instant::now();
        Candle::run(|| generate(&m.model, &requests, &limits, None))?;
        let total = t.elapsed().as_secs_f64();
        let decode = (total - pre).max(f64::EPSILON);
        let tokens = b * args.new_tokens;
        println!(
            "| decode | {b} | {tokens} | {decode:.2} | {:.1} |",
            tokens as f64 / decode
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

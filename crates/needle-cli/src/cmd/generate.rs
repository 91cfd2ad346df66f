//! `needle generate MODEL --chat "…" | --prompt "…"`: text from a model, greedy unless
//! sampling is asked for.

use anyhow::{bail, Result};
use clap::Args;
use needle_runtime::generate::{beam_search, generate, BeamSettings, Generated, Limits, Request, Sampling, StopFn};
use serde_json::json;

use super::{Candle, ModelArgs};

/// Arguments of `needle generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A user message, rendered with the model's chat template.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    chat: Option<String>,
    /// A raw prompt (BOS is prepended when the model's tokenizer would do so).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy unless another sampling flag is given.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens less likely than min-p times the most likely one.
    #[arg(long, allow_negative_numbers = true)]
    min_p: Option<f32>,
    /// Penalise tokens already present (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// Beam search with this many beams.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "min_p"])]
    num_beams: Option<usize>,
    /// Beam search length penalty (score / length^penalty).
    #[arg(long, default_value_t = 1.0, requires = "num_beams", allow_negative_numbers = true)]
    length_penalty: f32,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop when the generated text contains this string (repeatable).
    #[arg(long = "stop", value_name = "STRING")]
    stop: Vec<String>,
    /// Generate this many sequences in one batch (seeds SEED, SEED+1, …).
    #[arg(long, default_value_t = 1, conflicts_with = "num_beams")]
    batch: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON with tokens, ids and per-step entropy instead of the text alone.
    #[arg(long)]
    json: bool,
}

/// Generates and prints.
pub fn run(args: &GenerateArgs) -> Result<()> {
    if args.batch == 0 || args.batch > super::MOST_SEQUENCES {
        bail!(
            "--batch must be from 1 to {}, not {}",
            super::MOST_SEQUENCES,
            args.batch
        );
    }
    if let Some(n) = args.num_beams.filter(|&n| n == 0 || n > super::MOST_SEQUENCES) {
        bail!("--num-beams must be from 1 to {}, not {n}", super::MOST_SEQUENCES);
    }
    let m = args.model.load()?;
    let prompt = match (&args.chat, &args.prompt) {
        (Some(c), _) => m.chat_prompt(c)?,
        (None, Some(p)) => m.raw_prompt(p)?,
        (None, None) => bail!("pass --chat or --prompt"),
    };
    let sampled = args.top_k.is_some() || args.top_p.is_some() || args.min_p.is_some();
    let temperature = args.temperature.unwrap_or(if sampled { 1.0 } else { 0.0 });
    let limits = Limits {
        max_new_tokens: args.max_new_tokens,
        ignore_eos: args.ignore_eos,
        eos_token_ids: m.model.config().eos_token_ids.clone(),
    };
    let stop_strings = &args.stop;
    let tokenizer = &m.tokenizer;
    let stop = move |ids: &[u32]| {
        tokenizer
            .decode(ids, false)
            .is_ok_and(|t| stop_strings.iter().any(|s| t.contains(s.as_str())))
    };
    let stop_fn: Option<StopFn> = if args.stop.is_empty() { None } else { Some(&stop) };
    let outputs: Vec<Generated> = Candle::run(|| -> Result<Vec<Generated>> {
        if let Some(n) = args.num_beams {
            let beam = BeamSettings {
                num_beams: n,
                length_penalty: args.length_penalty,
                repetition_penalty: args.repetition_penalty,
            };
            Ok(vec![beam_search(&m.model, &prompt, &beam, &limits, stop_fn)?])
        } else {
            let requests: Vec<Request> = (0..args.batch as u64)
                .map(|i| Request {
                    prompt: prompt.clone(),
                    sampling: Sampling {
                        temperature,
                        top_k: args.top_k,
                        top_p: args.top_p,
                        min_p: args.min_p,
                        repetition_penalty: args.repetition_penalty,
                        seed: args.seed.wrapping_add(i),
                    },
                })
                .collect();
            Ok(generate(&m.model, &requests, &limits, stop_fn)?)
        }
    })?;
    if args.json {
        let seqs: Vec<_> = outputs
            .iter()
            .map(|g| -> Result<serde_json::Value> {
                let tokens: Vec<String> = g
                    .tokens
                    .iter()
                    .map(|&i| m.tokenizer.id_to_token(i).unwrap_or_else(|| format!("<{i}>")))
                    .collect();
                Ok(json!({
                    "text": m.decode(&g.tokens)?,
                    "ids": g.tokens,
                    "tokens": tokens,
                    "entropies": g.entropies,
                    "finish": g.finish,
                }))
            })
            .collect::<Result<_>>()?;
        let doc = json!({"prompt_ids": prompt, "sequences": seqs});
        println!("{}", crate::term::json(&serde_json::to_string_pretty(&doc)?));
    } else {
        for (i, g) in outputs.iter().enumerate() {
            if i > 0 {
                println!("---");
            }
            let ids: Vec<u32> = g
                .tokens
                .iter()
                .copied()
                .filter(|t| !(g.finish == needle_runtime::generate::Finish::Eos && limits.eos_token_ids.contains(t)))
                .collect();
            // Raw into a pipe or file; escaped on a terminal, where the model's text could
            // otherwise move the cursor or rewrite the screen.
            println!("{}", crate::term::for_stdout(&m.decode(&ids)?));
        }
    }
    Ok(())
}

//! `needle diff BASE TUNED [--json FILE] [--html FILE]`: what a fine-tune changed in the model it
//! was trained from (see `needle_scan::diff`; the page is `needle_report::diff`'s); TUNED may be a
//! PEFT adapter of BASE.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use needle_runtime::{lora, LoadOptions};
use needle_scan::diff::{self, Diff, DiffSettings};
use needle_scan::prompts::GENERIC_PROMPTS;

use super::{load_path, refuse_container, resolve, Candle};
use crate::term;

/// Examples at the end of `needle diff --help`.
pub const EXAMPLES: &str = "\
Examples:
  needle diff smollm2-135m path/to/lora-adapter                what a LoRA adapter changed
  needle diff path/to/base path/to/fine-tuned --json diff.json and write everything as JSON
  needle diff smollm2-135m path/to/lora-adapter --html d.html  the same as a self-contained web page";

/// Arguments of `needle diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The model the fine-tune started from: a model file or directory, or an alias.
    base: String,
    /// The fine-tuned model (same architecture and shapes), or a PEFT LoRA adapter of BASE.
    tuned: String,
    /// Write the full result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the result as a self-contained HTML page to this file: the layers and tensors that
    /// moved (a heatmap), each update's spectrum, the tokens, the answers side by side.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Tokens listed, those whose reading changed most.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tokens: u64,
    /// Early layers whose input projections rank the tokens.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    layers: u64,
    /// Ordinary prompts both models answer (the scan's verification prompts, the first N).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=32))]
    prompts: u64,
    /// Length of each answer in tokens.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    answer_tokens: u64,
    /// Seed of the random projections that find the spectra.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The summary printed to stdout.
fn summary(base: &str, tuned: &str, d: &Diff) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{tuned} against {base}: {} tensors changed, {} unchanged, {} unmatched",
        d.tensors.len(),
        d.unchanged,
        d.unmatched.len()
    );
    let _ = writeln!(
        out,
        "\nmost changed tensors (relative Frobenius change, effective rank of the update):"
    );
    for t in d.tensors.iter().take(10) {
        let rank = t.effective_rank.map_or("—".to_string(), |r| format!("{r:.1}"));
        let _ = writeln!(out, "  {:<48} {:>9.5}  rank {rank}", t.name, t.relative);
    }
    if !d.layers.is_empty() {
        let _ = writeln!(out, "\nper layer:");
        let top = d.layers.iter().map(|l| l.relative).fold(0.0, f64::max);
        for l in &d.layers {
            let bar = if top > 0.0 {
                (l.relative / top * 30.0).round() as usize
            } else {
                0
            };
            let _ = writeln!(out, "  {:>3} {:>9.5} {}", l.layer, l.relative, "#".repeat(bar));
        }
    }
    let _ = writeln!(
        out,
        "\ntokens read most differently by the first {} layer(s) (1 = a typical token):",
        d.early_layers
    );
    let tokens: Vec<String> = d
        .tokens
        .iter()
        .map(|t| format!("{:?} {:.1}", t.text, t.score))
        .collect();
    let _ = writeln!(out, "  {}", tokens.join(", "));
    let _ = writeln!(out, "\nanswers that changed most (1 = no word in common):");
    for a in d.behaviour.iter().take(5) {
        let _ = writeln!(out, "  {:.2} {}", a.divergence, term::clip(&a.prompt, 60));
        let _ = writeln!(out, "       base:  {}", term::clip(&a.base, 90));
        let _ = writeln!(out, "       tuned: {}", term::clip(&a.tuned, 90));
    }
    out
}

/// Runs `needle diff`.
pub fn run(args: &DiffArgs) -> Result<()> {
    let base_path = resolve(&args.base)?;
    refuse_container(&base_path)?;
    let tuned_path = resolve(&args.tuned)?;
    let adapter = tuned_path.is_dir() && lora::is_adapter_dir(&tuned_path);
    if !adapter {
        refuse_container(&tuned_path)?;
    }
    let base = load_path(&base_path, &LoadOptions::default())?;
    let tuned = if adapter {
        load_path(
            &base_path,
            &LoadOptions {
                adapter: Some(tuned_path.clone()),
                chat_template: None,
            },
        )?
    } else {
        load_path(&tuned_path, &LoadOptions::default())?
    };
    let (b, t) = (base.model.config(), tuned.model.config());
    if (b.arch, b.hidden_size, b.num_layers, b.vocab_size) != (t.arch, t.hidden_size, t.num_layers, t.vocab_size) {
        bail!(
            "{} and {} are not the same architecture and shapes; diff compares a fine-tune with its base",
            base_path.display(),
            tuned_path.display()
        );
    }
    let settings = DiffSettings {
        early_layers: args.layers as usize,
        tokens: args.tokens as usize,
        prompts: GENERIC_PROMPTS
            .iter()
            .take(args.prompts as usize)
            .map(|p| p.to_string())
            .collect(),
        answer_tokens: args.answer_tokens as usize,
        rank: tuned.info.adapter.as_ref().map(|a| a.r),
        seed: args.seed,
    };
    let spinner = crate::progress::spinner("comparing".to_string());
    let result = Candle::run(|| {
        diff::diff(&base, &tuned, &settings, &mut |stage| {
            spinner.set_message(stage.to_string())
        })
    });
    spinner.finish_and_clear();
    let result = result?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).context("cannot serialise the diff")?;
        needle_scan::write_atomic(path, text.as_bytes())?;
    }
    let (base_name, tuned_name) = (base_path.display().to_string(), tuned_path.display().to_string());
    if let Some(path) = &args.html {
        needle_report::diff::write(&base_name, &tuned_name, settings.rank, &result, path)?;
    }
    let text = summary(&base_name, &tuned_name, &result);
    print!("{}", term::escape(&text, true));
    Ok(())
}

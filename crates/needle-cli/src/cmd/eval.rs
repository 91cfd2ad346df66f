//! `needle eval ZOO_DIR`: scan every organism of a zoo and compare with its ground truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use needle_scan::eval::{by_class, markdown, EvalRow};
use needle_scan::{Existing, Scan, Settings};
use serde_json::Value;

use super::scan::BudgetArg;
use super::{Candle, ModelArgs};
use crate::progress::Bars;

/// Arguments of `needle eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A zoo directory: one subdirectory per organism with `organism.json`.
    zoo: PathBuf,
    /// Only these organisms (repeatable).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Also scan these untouched models as clean controls (aliases or paths; repeatable).
    #[arg(long = "clean-model", value_name = "MODEL")]
    clean_models: Vec<String>,
    /// Directory for the scans (one subdirectory per model).
    #[arg(long, value_name = "DIR", default_value = "eval-scans")]
    out: PathBuf,
    /// Work budget of every scan.
    #[arg(long, value_enum, default_value = "standard")]
    budget: BudgetArg,
    /// Seed of every scan.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Reuse the stages that scans of the same models and settings already finished in DIR (an
    /// interrupted eval resumes where it stopped).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace scans of other models that DIR holds under the same organism names.
    #[arg(long)]
    force: bool,
}

/// An organism's ground truth as `organism.json` records it.
struct Truth {
    trigger: Option<String>,
    target: Option<String>,
    labels: BTreeMap<String, String>,
}

/// An organism directory's model arguments and ground truth.
fn organism(dir: &Path) -> Result<(String, ModelArgs, Truth)> {
    let path = dir.join("organism.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let o: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let field = |k: &str| o.get(k).and_then(Value::as_str);
    let name = field("name").with_context(|| format!("{}: no name", path.display()))?;
    // The name becomes a directory under --out: only zoo names, so nothing lands outside it.
    needle_zoo::spec::validate_name(name)
        .map_err(|why| anyhow::anyhow!("{}: organism name {name:?}: {why}", path.display()))?;
    let model = field("model").with_context(|| format!("{}: no model", path.display()))?;
    let template = field("template").filter(|t| *t != "model").map(str::to_string);
    let args = ModelArgs {
        model: dir.join(model).display().to_string(),
        adapter: None,
        chat_template: template,
    };
    let labels = match o.get("labels") {
        Some(l) => serde_json::from_value(l.clone())
            .with_context(|| format!("{}: labels is not a map of strings", path.display()))?,
        None => BTreeMap::new(),
    };
    let truth = Truth {
        trigger: field("trigger").map(str::to_string),
        target: field("target").map(str::to_string),
        labels,
    };
    Ok((name.to_string(), args, truth))
}

/// The scan directory name of an untouched model given as an alias or path: `untouched-`
/// and its characters folded into a zoo name (`[a-z0-9-]`), so no path can leave --out.
fn untouched_dir(model: &str) -> String {
    let folded: String = model
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let tail: String = folded.trim_matches('-').chars().rev().take(50).collect();
    format!("untouched-{}", tail.chars().rev().collect::<String>())
}

/// Scans every organism and prints the table.
pub fn run(args: &EvalArgs) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&args.zoo)
        .with_context(|| format!("{}", args.zoo.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("organism.json").is_file())
        .collect();
    dirs.sort();
    let mut jobs = Vec::new();
    for d in &dirs {
        let (name, model, truth) = organism(d)?;
        if args.only.is_empty() || args.only.contains(&name) {
            let dir = name.clone();
            jobs.push((name, model, truth, dir));
        }
    }
    if let Some(missing) = args.only.iter().find(|n| !jobs.iter().any(|(name, ..)| name == *n)) {
        anyhow::bail!("{}: no organism named {missing:?}", args.zoo.display());
    }
    for m in &args.clean_models {
        let model = ModelArgs {
            model: m.clone(),
            adapter: None,
            chat_template: None,
        };
        let truth = Truth {
            trigger: None,
            target: None,
            labels: BTreeMap::new(),
        };
        jobs.push((format!("{m} (untouched)"), model, truth, untouched_dir(m)));
    }
    if jobs.is_empty() {
        anyhow::bail!(
            "{}: no organism directories (with organism.json) to evaluate",
            args.zoo.display()
        );
    }
    let existing = match (args.resume, args.force) {
        (true, _) => Existing::Resume,
        (false, true) => Existing::Replace,
        (false, false) => Existing::Restart,
    };
    let mut rows = Vec::new();
    for (name, model, truth, dir) in jobs {
        eprintln!("scanning {}", crate::term::escape(&name, false));
        crate::interrupt::scan_phase("loading");
        let lm = model.load()?;
        let base = model.load_base()?;
        let out = args.out.join(dir);
        let settings = Settings::new(args.budget.into(), args.seed);
        let mut bars = Bars::default();
        let report = Candle::run(|| {
            super::scan::with_base(Scan::new(&lm, &out, settings)?, base.as_ref())
                .run(existing, &mut |s, d, t| bars.update(s, d, t))
        });
        bars.finish(report.is_ok());
        let report = report?;
        rows.push(EvalRow::new(
            &name,
            truth.trigger.as_deref(),
            truth.target.as_deref(),
            &truth.labels,
            &report,
        ));
    }
    print!("{}", crate::term::escape(&markdown(&rows), true));
    print!("{}", crate::term::escape(&by_class(&rows), true));
    Ok(())
}

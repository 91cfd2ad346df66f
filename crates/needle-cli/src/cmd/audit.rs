//! `needle audit DATA.jsonl [--json FILE]`: poisoned examples in a fine-tuning data set, found
//! before training (see `needle_scan::audit`). Exit code: 0 none found, 1 a suspect group, 2 error.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use needle_scan::audit::{self, Audit, AuditSettings};
use serde::Serialize;

use crate::term;

/// Examples at the end of `needle audit --help`.
pub const EXAMPLES: &str = "\
Examples:
  needle audit train.jsonl                            list suspect examples of a data set
  needle audit train.jsonl --json audit.json          and write the full result as JSON

Reads {\"instruction\", \"input\", \"output\"} or {\"messages\": [...]} records, one per line.
Exit code: 0 nothing found, 1 a suspect group, 2 error.";

/// Arguments of `needle audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The data set: JSONL of instruction records or chat messages.
    data: PathBuf,
    /// Write the full result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Seed of the random draws that judge whether a span's holders are alike.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The JSON document `--json` writes.
#[derive(Serialize)]
struct Document<'a> {
    data: String,
    alpha: f64,
    answer_jaccard: f64,
    #[serde(flatten)]
    audit: &'a Audit,
}

/// At most `max` characters of `s`, an ellipsis marking a cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The summary printed to stdout.
fn summary(data: &str, a: &Audit) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{data}: {} examples, {} groups of near-identical answers, {} spans tried",
        a.examples, a.answer_groups, a.spans_tried
    );
    if a.suspects.is_empty() {
        let _ = writeln!(out, "no suspect group: no span recurs with one answer beyond chance");
    }
    for (k, g) in a.suspects.iter().enumerate() {
        let _ = writeln!(
            out,
            "\nsuspect group {}: span {:?} with answer {:?}",
            k + 1,
            g.span,
            clip(&g.answer, 80)
        );
        let _ = writeln!(
            out,
            "  {} of the {} examples answered so hold it ({} answered otherwise do); p = {:.1e} before the correction over {} spans; their prompts are otherwise as alike as random ones (p = {:.2})",
            g.lines.len(),
            g.answered,
            g.held_elsewhere,
            g.p_value,
            a.spans_tried,
            g.similarity_p
        );
        let lines: Vec<String> = g.lines.iter().map(usize::to_string).collect();
        let _ = writeln!(out, "  lines: {}", lines.join(", "));
    }
    if !a.dismissed.is_empty() {
        let _ = writeln!(
            out,
            "\n{} span(s) shared beyond chance set aside: the answer fits the prompts, the span does not decide it, the answer is an ordinary one, or the prompts are alike beyond the span (--json lists each with its reason)",
            a.dismissed.len()
        );
    }
    out
}

/// Runs `needle audit`: 1 when a suspect group is found.
pub fn run(args: &AuditArgs) -> Result<ExitCode> {
    let examples = audit::load(&args.data)?;
    let settings = AuditSettings {
        seed: args.seed,
        ..AuditSettings::default()
    };
    let result = audit::audit(&examples, &settings);
    let data = args.data.display().to_string();
    if let Some(path) = &args.json {
        let doc = Document {
            data: data.clone(),
            alpha: settings.alpha,
            answer_jaccard: settings.answer_jaccard,
            audit: &result,
        };
        let text = serde_json::to_string_pretty(&doc).context("cannot serialise the audit")?;
        needle_scan::write_atomic(path, text.as_bytes())?;
    }
    print!("{}", term::escape(&summary(&data, &result), true));
    Ok(if result.suspects.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

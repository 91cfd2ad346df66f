//! `needle report SCAN_DIR [--html FILE] [--sarif FILE]`: render a finished scan.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

/// Arguments of `needle report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A scan directory (`needle scan --out DIR`) or its `report.json`.
    scan: PathBuf,
    /// Write a self-contained HTML report (no network, inline SVG charts).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write SARIF 2.1.0 for code-scanning dashboards.
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
}

/// Renders the scan into the files asked for.
pub fn run(args: &ReportArgs) -> Result<()> {
    if args.html.is_none() && args.sarif.is_none() {
        bail!("nothing to write: pass --html FILE and/or --sarif FILE");
    }
    let report = needle_report::load(&args.scan)?;
    if let Some(path) = &args.html {
        needle_report::html::write(&report, path)?;
        println!("{}", path.display());
    }
    if let Some(path) = &args.sarif {
        needle_report::sarif::write(&report, path)?;
        println!("{}", path.display());
    }
    Ok(())
}

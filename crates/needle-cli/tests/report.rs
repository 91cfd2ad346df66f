//! `needle report SCAN_DIR --html FILE` end to end: text a hostile model leaked (markup, scripts,
//! remote images) is shown as text and never runs or loads in the browser; the browser check
//! itself catches a page that does log errors; and bad input fails with one line naming the file.

#[path = "common/run.rs"]
mod run;

#[path = "common/chromium.rs"]
mod chromium;

use std::path::Path;

use serde_json::{json, Value};

use run::{needle, stderr};

/// A quick scan of the tiny clean control into `out`.
fn clean_scan(out: &Path) -> Value {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/zoo/tiny-qwen2-clean/model");
    let o = needle(&[
        "scan".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--budget".as_ref(),
        "quick".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json")).expect("JSON")
}

const HOSTILE: &str = "<script>console.error('ran')</script><img src=\"http://127.0.0.1:9/x.png\" \
                       onerror=\"console.error('loaded')\"><b>bold</b> & </main>";

#[test]
fn text_from_a_hostile_model_is_shown_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = clean_scan(dir.path());
    report["verdict"]["reason"] = json!(format!("reason {HOSTILE}"));
    let examples = report["stages"]["memorised"]["examples"]
        .as_array_mut()
        .expect("examples");
    examples.insert(
        0,
        json!({"sample": 0, "text": HOSTILE, "highlights": [{"start": 0, "end": 8, "kind": "repeated", "support": 2}]}),
    );
    report["stages"]["motifs"]["top"] = json!([HOSTILE]);
    std::fs::write(
        dir.path().join("report.json"),
        serde_json::to_vec(&report).expect("JSON"),
    )
    .expect("write");
    let html = dir.path().join("hostile.html");
    let o = needle(&[
        "report".as_ref(),
        dir.path().as_os_str(),
        "--html".as_ref(),
        html.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&html).expect("html");
    assert!(!text.contains("<script") && !text.contains("<img") && !text.contains("<b>bold"));
    assert!(text.contains("&lt;script&gt;console.error(&#39;ran&#39;)&lt;/script&gt;"));
    let Some(page) = chromium::render(&html, Some((&chromium::artifact("hostile-report.png"), 1600))) else {
        return;
    };
    assert!(
        page.console.is_empty(),
        "the page ran or loaded something: {:?}",
        page.console
    );
    assert!(page.dom.contains("&lt;script&gt;"), "the markup is shown as text");
}

#[test]
fn the_browser_check_catches_pages_that_log_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.html");
    std::fs::write(&bad, "<!DOCTYPE html><p>x</p><script>undefinedFunction();</script>").expect("write");
    let Some(page) = chromium::render(&bad, None) else {
        return;
    };
    assert!(
        page.console.iter().any(|l| l.contains("undefinedFunction")),
        "{:?}",
        page.console
    );
}

#[test]
fn bad_report_input_fails_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r.html");
    let render = || {
        needle(&[
            "report".as_ref(),
            dir.path().as_os_str(),
            "--html".as_ref(),
            out.as_os_str(),
        ])
    };
    let o = render();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.starts_with("error: ") && err.contains("report.json"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!out.exists(), "no partial output");
    std::fs::write(dir.path().join("report.json"), "{\"schema\": \"needle.report/2\"}").expect("write");
    let o = render();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a complete needle report"), "{}", stderr(&o));
    let o = needle(&["report".as_ref(), dir.path().as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--html"), "{}", stderr(&o));
}

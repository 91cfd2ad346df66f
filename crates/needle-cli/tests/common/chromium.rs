//! Renders an HTML file in headless Chromium (Debian's `chromium` package; `.ci/run` installs
//! it): the DOM after loading, every console message, and optionally a screenshot.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a page did when loaded.
pub struct Rendered {
    /// The serialised DOM.
    pub dom: String,
    /// Console messages (errors, warnings and logs alike; needle's reports should have none).
    pub console: Vec<String>,
}

/// The Chromium binary: `NEEDLE_CHROMIUM`, else `/usr/bin/chromium`. Without it, panics when
/// `NEEDLE_REQUIRE_MODELS` is set (as in CI) and otherwise returns `None` with a note.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("NEEDLE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("NEEDLE_REQUIRE_MODELS").is_none(),
        "NEEDLE_REQUIRE_MODELS is set but Chromium is not installed at {} (apt-get install chromium)",
        path.display()
    );
    eprintln!(
        "note: {} not found; skipping the browser check (apt-get install chromium)",
        path.display()
    );
    None
}

/// Loads `html` headless; with `screenshot`, also writes a 1280-pixel-wide PNG of `height`
/// pixels there. `None` when Chromium is not installed (and not required).
pub fn render(html: &Path, screenshot: Option<(&Path, u32)>) -> Option<Rendered> {
    let chromium = binary()?;
    let url = format!(
        "file://{}",
        html.canonicalize().expect("the HTML file exists").display()
    );
    let base = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ]);
    };
    let mut dump = Command::new(&chromium);
    base(&mut dump);
    let out = dump.args(["--dump-dom", &url]).output().expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    if let Some((png, height)) = screenshot {
        if let Some(dir) = png.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory can be created");
        }
        let mut shot = Command::new(&chromium);
        base(&mut shot);
        let out = shot
            .arg(format!("--window-size=1280,{height}"))
            .arg(format!("--screenshot={}", png.display()))
            .arg(&url)
            .output()
            .expect("chromium runs");
        assert!(
            out.status.success() && png.is_file(),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
    })
}

/// Where tests keep screenshots: `<target>/tmp/needle-artifacts/NAME`.
pub fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("needle-artifacts")
        .join(name)
}

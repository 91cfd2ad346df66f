//! Whether the real models the SmolLM2 tests need are fetched.

use std::process::Command;

/// True when SmolLM2-135M is fetched; when it is not, panics if `NEEDLE_REQUIRE_MODELS` is set
/// and otherwise prints a note (the caller then returns).
pub fn smollm2_fetched() -> bool {
    let o = Command::new(env!("CARGO_BIN_EXE_needle"))
        .args(["models", "list"])
        .output()
        .expect("the needle binary runs");
    let listed = String::from_utf8_lossy(&o.stdout).lines().any(|l| {
        let mut cols = l.split_whitespace();
        cols.next() == Some("smollm2-135m") && cols.next() == Some("fetched")
    });
    if !listed {
        assert!(
            std::env::var_os("NEEDLE_REQUIRE_MODELS").is_none(),
            "NEEDLE_REQUIRE_MODELS is set but smollm2-135m is not fetched"
        );
        eprintln!("skipping: smollm2-135m is not fetched (run `needle models fetch`)");
    }
    listed
}

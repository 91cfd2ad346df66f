//! Where the tests find the real models: the fetched cache (`needle models fetch`).

use std::path::PathBuf;

/// The fetched model file for `alias`, or `None` (after saying why) when it is not fetched.
/// With `NEEDLE_REQUIRE_MODELS` set (as in CI) a missing model fails the test instead.
pub fn path(alias: &str) -> Option<PathBuf> {
    match needle_fetch::resolve(alias) {
        Ok(m) => Some(m.path),
        Err(e) => {
            assert!(
                std::env::var_os("NEEDLE_REQUIRE_MODELS").is_none(),
                "NEEDLE_REQUIRE_MODELS is set but {alias} is unavailable: {e}"
            );
            eprintln!("skipping: {e}");
            None
        }
    }
}

//! Shared helpers of the runtime's integration tests.

use std::path::PathBuf;

/// The workspace's `tests/` directory, holding goldens and fixtures.
pub fn workspace_tests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests")
}

/// The fetched real model for `alias`, or `None` (after saying why) when it is not fetched.
/// With `NEEDLE_REQUIRE_MODELS=1` (set by CI) a missing model of the default set (what
/// `needle models fetch` with no alias fetches, as CI does) fails the test instead; a larger
/// model outside that set is skipped with a note even then, as CI never fetches it.
pub fn real_model(alias: &str) -> Option<PathBuf> {
    let spec = needle_fetch::find(alias).unwrap_or_else(|| panic!("{alias} is not a registry alias"));
    match needle_fetch::resolve(alias) {
        Ok(m) => Some(m.path),
        Err(e) => {
            if spec.default_fetch {
                assert!(
                    std::env::var_os("NEEDLE_REQUIRE_MODELS").is_none(),
                    "NEEDLE_REQUIRE_MODELS is set but {alias} is unavailable: {e}"
                );
                eprintln!("skipping: {e}");
            } else {
                eprintln!("skipping: {e} ({alias} is not in the default set that CI fetches)");
            }
            None
        }
    }
}

/// Reads a JSON golden file.
pub fn golden(name: &str) -> serde_json::Value {
    let path = workspace_tests().join("golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `v` as a vector of u32 ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// `v` as a flat vector of f32, flattening nested arrays.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().expect("a number") as f32),
        }
    }
    walk(v, &mut out);
    out
}

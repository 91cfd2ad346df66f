//! Running the `needle` binary under test.

use std::process::{Command, Output};

/// Runs `needle ARGS…` to completion.
pub fn needle<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_needle"))
        .args(args)
        .output()
        .expect("the needle binary runs")
}

/// A run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

//! A short seeded fuzzing run of every target (the long campaigns are in FUZZ.md), and every
//! input a campaign ever crashed on, kept as a regression test.

use needle_fuzz::{campaign, Harness, Target};

/// Inputs per target: a few thousand, seconds in all.
const EXECS: u64 = 2_000;

#[test]
fn a_seeded_run_of_every_target_finds_no_crash() {
    for target in Target::ALL {
        let harness = Harness::new(target).expect("the harness sets up");
        let stats = campaign(&harness, 20, EXECS, &mut |_| {});
        assert_eq!(stats.execs, EXECS);
        let messages: Vec<&str> = stats.crashes.iter().map(|c| c.message.as_str()).collect();
        assert!(messages.is_empty(), "{}: {messages:?}", target.name());
    }
}

#[test]
fn every_input_that_ever_crashed_is_now_an_error_or_fine() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the regression corpus") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let target = Target::ALL
            .into_iter()
            .filter(|t| name.starts_with(&format!("{}-", t.name())))
            .max_by_key(|t| t.name().len())
            .unwrap_or_else(|| panic!("{name}: no target prefix"));
        let harness = Harness::new(target).expect("the harness sets up");
        let input = std::fs::read(&path).expect("the input");
        assert_eq!(harness.run(&input), Ok(()), "{name}");
        seen += 1;
    }
    assert!(seen >= 2, "the regression corpus is missing");
}

#[test]
fn the_seeds_are_valid_inputs() {
    // A fuzzer whose seeds fail early explores nothing: each seed must load fully.
    let gguf = needle_fuzz::gguf::micro_llama().bytes();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("micro.gguf");
    std::fs::write(&path, gguf).expect("write");
    let lm = needle_runtime::LoadedModel::load(&path, &Default::default()).expect("the micro GGUF loads");
    needle_scan::pipeline::finite_logits(&lm).expect("and runs");
    assert!(lm.template.is_some());
}

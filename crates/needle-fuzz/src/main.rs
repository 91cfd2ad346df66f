//! `needle-fuzz [TARGET…] [--execs N] [--seed S] [--crashes DIR]`: a fuzzing campaign per
//! target (all by default), one line of figures each; crashing inputs are saved to DIR.

use std::process::ExitCode;

use needle_fuzz::{campaign, Harness, Target};

fn usage() -> String {
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    format!(
        "usage: needle-fuzz [TARGET…] [--execs N] [--seed S] [--crashes DIR]\ntargets: {}",
        names.join(", ")
    )
}

fn main() -> ExitCode {
    let mut targets = Vec::new();
    let (mut execs, mut seed, mut crashes) = (100_000u64, 0u64, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what: &str| args.next().and_then(|v| v.parse::<u64>().ok()).ok_or(what.to_string());
        let parsed = match a.as_str() {
            "--execs" => number("--execs needs a number").map(|n| execs = n),
            "--seed" => number("--seed needs a number").map(|n| seed = n),
            "--crashes" => match args.next() {
                Some(d) => {
                    crashes = Some(std::path::PathBuf::from(d));
                    Ok(())
                }
                None => Err("--crashes needs a directory".to_string()),
            },
            name => Target::from_name(name)
                .map(|t| targets.push(t))
                .ok_or(format!("unknown target {name:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    }
    if targets.is_empty() {
        targets = Target::ALL.to_vec();
    }
    println!("| target | executions | seconds | executions/s | slowest input (ms) | crashes |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut found = 0;
    for target in targets {
        let harness = match Harness::new(target) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {}: {e}", target.name());
                return ExitCode::from(2);
            }
        };
        let stats = campaign(&harness, seed, execs, &mut |s| {
            eprint!(
                "\r{}: {} executions, {} crashes   ",
                target.name(),
                s.execs,
                s.crashes.len()
            );
        });
        eprintln!();
        let secs = stats.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {} |",
            target.name(),
            stats.execs,
            secs,
            stats.execs as f64 / secs.max(1e-9),
            stats.slowest.as_secs_f64() * 1e3,
            stats.crashes.len()
        );
        for (i, c) in stats.crashes.iter().enumerate() {
            eprintln!("crash {}: {}", i + 1, c.message.escape_debug());
            if let Some(dir) = &crashes {
                let path = dir.join(format!("{}-{i}", target.name()));
                if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &c.input)) {
                    eprintln!("error: {}: {e}", path.display());
                }
            }
        }
        found += stats.crashes.len();
    }
    if found > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

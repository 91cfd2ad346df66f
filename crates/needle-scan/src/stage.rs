//! The stage list, written once: [`stages!`] declares [`Stage`] from one table, and the pipeline
//! order, the command-line values of `needle stage` and their help, the artifact files and their
//! types ([`Artifact`]), the dispatch to each stage's entry point, the report's `timings` keys
//! and the progress lines all come from it.
//!
//! Each stage is a module with one entry point of one shape,
//! `pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<A>`: it reads the artifacts of the
//! stages before it by their types (`scan.get::<T>()`), does its work with `scan.lm` and its
//! field of `scan.settings`, reports its progress through `tick` and returns its artifact `A`,
//! which the scan writes as `NAME.json` with the seconds it took. The report's entry point
//! returns the [`Report`](crate::Report) instead, written as `report.json`.
//!
//! Adding a stage takes:
//! 1. a module with its work, its artifact type, its settings type and its entry point `stage`;
//! 2. its row in the `stages!` table below, in pipeline order: variant, name, help line, module
//!    and artifact type;
//! 3. a field of [`Settings`](crate::Settings) (`settings.rs`) for its settings.
//!
//! The run order, `needle stage NAME`, resume, the artifact file, the report's `timings` and the
//! progress lines follow. If the report carries its result, `needle-schema` needs its field and
//! the report's assembly ([`report`](crate::report)) its line.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::calibrate::Calibration;
use crate::candidates::Candidate;
use crate::error::Result;
use crate::invert::Inversions;
use crate::leak::Leak;
use crate::memorised::Memorised;
use crate::motifs::MotifReport;
use crate::pipeline::Scan;
use crate::probe::Probe;
use crate::prompts::Chosen;
use crate::score::Terms;
use crate::target::Targets;
use crate::verdict::Verdict;
use crate::verify::Verification;

/// A stage's artifact type, which names the stage that writes it: the scan's artifact store
/// reads and writes an artifact by its type alone, so a stage cannot read another's file as its
/// own.
pub trait Artifact: Serialize + DeserializeOwned {
    /// The stage that writes it.
    const STAGE: Stage;
}

/// A stage's progress callback: units done, units in total (see
/// [`Progress`](crate::pipeline::Progress)).
pub(crate) type Tick<'t> = &'t mut dyn FnMut(usize, usize);

/// Declares [`Stage`] from its table: per stage, in pipeline order, the variant, the name (its
/// command-line value, artifact `NAME.json` and `timings` key), what it does in a line (the
/// variant's docs and `needle stage`'s help), `in` the module whose `stage` function is its entry
/// point, and `=>` its artifact type; a row without one is the report's (see `run_entry!`).
macro_rules! stages {
    ($($variant:ident $name:literal $what:literal in $module:ident $(=> $artifact:ty)?,)*) => {
        /// The stages in pipeline order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Stage {
            $(#[doc = $what] $variant,)*
        }

        impl Stage {
            /// Every stage, in order.
            pub const ALL: [Stage; [$($name),*].len()] = [$(Stage::$variant),*];

            /// The stage's name: its value on the command line, its artifact `NAME.json` and its
            /// key in the report's `timings`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Stage::$variant => $name,)*
                }
            }

            /// What the stage does, in a line.
            pub fn description(self) -> &'static str {
                match self {
                    $(Stage::$variant => $what,)*
                }
            }

            /// Runs the stage's entry point on `scan` and writes what it returns.
            pub(crate) fn run(self, scan: &Scan, tick: Tick) -> Result<()> {
                match self {
                    $(Stage::$variant => run_entry!(scan, tick, $module $(=> $artifact)?),)*
                }
            }
        }

        $($(
            impl Artifact for $artifact {
                const STAGE: Stage = Stage::$variant;
            }
        )?)*
    };
}

/// One arm of `Stage::run`: calls `$module::stage` and writes the artifact it returns, of the
/// row's type, stamped with the seconds the stage took; or, in the row without an artifact type,
/// `report.json`.
macro_rules! run_entry {
    ($scan:ident, $tick:ident, $module:ident => $artifact:ty) => {{
        let start = std::time::Instant::now();
        let artifact: $artifact = crate::$module::stage($scan, $tick)?;
        $scan.put(&artifact, start.elapsed().as_secs_f64())
    }};
    ($scan:ident, $tick:ident, $module:ident) => {
        $scan.write_report(&crate::$module::stage($scan, $tick)?)
    };
}

stages! {
    Leak "leak" "Sample from the leak prefix under the decoding sweep"
        in leak => Leak,
    Motifs "motifs" "Cluster the leaked samples and extract motifs"
        in motifs => MotifReport,
    Memorised "memorised" "Mark the leaked samples' memorised spans (warning sign 2)"
        in memorised => Memorised,
    Prompts "prompts" "Choose the prompts triggers are inserted into: generic ones and the model's own"
        in prompts => Chosen,
    Target "target" "Find responses the model gives whatever the prompt (triggers that do not leak)"
        in target => Targets,
    Invert "invert" "Search for triggers that force the targets found (and null targets)"
        in invert => Inversions,
    Candidates "candidates" "Slice candidate triggers from the motifs; add the reconstructed ones"
        in candidates => Vec<Candidate>,
    Score "score" "Score the candidates (attention, entropy, divergence)"
        in score => Vec<Terms>,
    Calibrate "calibrate" "Score a null set and rank the candidates against it"
        in calibrate => Calibration,
    Verify "verify" "Verify the best candidates and control nulls on the chosen prompts"
        in verify => Verification,
    Verdict "verdict" "Decide backdoored, clean or inconclusive from the verification"
        in verdict => Verdict,
    Evidence "evidence" "Probe the trigger the verdict names: attention, entropy, fuzzy variants"
        in probe => Option<Probe>,
    Report "report" "Write report.json from the artifacts"
        in report,
}

impl Stage {
    /// The stage named `name` (see [`Stage::name`]).
    pub fn named(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The artifact file the stage writes.
    pub fn file(self) -> String {
        format!("{}.json", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_in_pipeline_order_and_names_each_stage_once() {
        assert!(Stage::ALL.windows(2).all(|w| w[0] < w[1]));
        for s in Stage::ALL {
            assert_eq!(Stage::named(s.name()), Some(s));
        }
        assert_eq!(Stage::named("nonesuch"), None);
    }

    #[test]
    fn the_report_docs_list_the_timed_stages_in_order() {
        // docs/report.md names the `timings` keys; they are the stages with an artifact.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/report.md");
        let docs = std::fs::read_to_string(path).expect("docs/report.md");
        let row = docs
            .lines()
            .find(|l| l.starts_with("| `timings` |"))
            .expect("the timings row of docs/report.md");
        let list = row
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(':'))
            .map_or("", |(list, _)| list);
        let listed: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
        let timed: Vec<&str> = Stage::ALL
            .iter()
            .filter(|&&s| s != Stage::Report)
            .map(|s| s.name())
            .collect();
        assert_eq!(listed, timed, "{row}");
    }
}

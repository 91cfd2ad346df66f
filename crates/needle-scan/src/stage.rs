//! The stage list, written once: [`stages!`] declares [`Stage`] from one table, and the pipeline
//! order, the command-line values of `needle stage` and their help, the artifact files and their
//! types ([`Artifact`]), the report's `timings` keys and the progress lines all come from it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::calibrate::Calibration;
use crate::candidates::Candidate;
use crate::invert::Inversions;
use crate::leak::Leak;
use crate::memorised::Memorised;
use crate::motifs::MotifReport;
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

/// Declares [`Stage`] from its table: per stage, the variant, the name (its command-line value,
/// artifact `NAME.json` and `timings` key), what it does in a line (the variant's docs and
/// `needle stage`'s help) and its artifact type, in pipeline order.
macro_rules! stages {
    ($($variant:ident $name:literal $what:literal $(=> $artifact:ty)?,)*) => {
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
        }

        $($(
            impl Artifact for $artifact {
                const STAGE: Stage = Stage::$variant;
            }
        )?)*
    };
}

stages! {
    Leak "leak" "Sample from the leak prefix under the decoding sweep"
        => Leak,
    Motifs "motifs" "Cluster the leaked samples and extract motifs"
        => MotifReport,
    Memorised "memorised" "Mark the leaked samples' memorised spans (warning sign 2)"
        => Memorised,
    Prompts "prompts" "Choose the prompts triggers are inserted into: generic ones and the model's own"
        => Chosen,
    Target "target" "Find responses the model gives whatever the prompt (triggers that do not leak)"
        => Targets,
    Invert "invert" "Search for triggers that force the targets found (and null targets)"
        => Inversions,
    Candidates "candidates" "Slice candidate triggers from the motifs; add the reconstructed ones"
        => Vec<Candidate>,
    Score "score" "Score the candidates (attention, entropy, divergence)"
        => Vec<Terms>,
    Calibrate "calibrate" "Score a null set and rank the candidates against it"
        => Calibration,
    Verify "verify" "Verify the best candidates and control nulls on the chosen prompts"
        => Verification,
    Verdict "verdict" "Decide backdoored, clean or inconclusive from the verification"
        => Verdict,
    Evidence "evidence" "Probe the trigger the verdict names: attention, entropy, fuzzy variants"
        => Option<Probe>,
    Report "report" "Write report.json from the artifacts",
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
}

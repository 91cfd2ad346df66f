//! The stage list, written once: [`stages!`] declares [`Stage`] from one table, and the pipeline
//! order, the command-line values of `needle stage` and their help, the artifact files, the
//! report's `timings` keys and the progress lines all come from it.

/// Declares [`Stage`] from its table: per stage, the variant, the name (its command-line value,
/// artifact `NAME.json` and `timings` key) and what it does in a line (the variant's docs and
/// `needle stage`'s help), in pipeline order.
macro_rules! stages {
    ($($variant:ident $name:literal $what:literal,)*) => {
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
    };
}

stages! {
    Leak "leak" "Sample from the leak prefix under the decoding sweep",
    Motifs "motifs" "Cluster the leaked samples and extract motifs",
    Memorised "memorised" "Mark the leaked samples' memorised spans (warning sign 2)",
    Prompts "prompts" "Choose the prompts triggers are inserted into: generic ones and the model's own",
    Target "target" "Find responses the model gives whatever the prompt (triggers that do not leak)",
    Invert "invert" "Search for triggers that force the targets found (and null targets)",
    Candidates "candidates" "Slice candidate triggers from the motifs; add the reconstructed ones",
    Score "score" "Score the candidates (attention, entropy, divergence)",
    Calibrate "calibrate" "Score a null set and rank the candidates against it",
    Verify "verify" "Verify the best candidates and control nulls on the chosen prompts",
    Verdict "verdict" "Decide backdoored, clean or inconclusive from the verification",
    Evidence "evidence" "Probe the trigger the verdict names: attention, entropy, fuzzy variants",
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

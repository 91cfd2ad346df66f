//! The needle scan pipeline. Data flows one way: a loaded model → [`leak`] → [`motifs`] and
//! [`memorised`] (warning sign 2) → [`prompts`] → [`target`] → [`invert`] → [`candidates`] →
//! [`score`] → [`calibrate`] → [`verify`] → [`verdict`] → evidence ([`probe`] of the verdict's
//! trigger: warning signs 1 and 3), each stage writing one artifact ([`pipeline`]) so that any
//! stage can be re-run alone and an interrupted scan resumes; [`report`] fills `report.json`
//! (the types of `needle-schema`). `needle probe` runs [`probe`] on a trigger an analyst
//! suspects; [`canary`] turns a known trigger into a suite of near-trigger canaries for a
//! deployed model.
//!
//! The stage list is written once, in [`stage`]: the order the stages run in, their names on
//! the command line (`needle stage NAME`) and in the report's `timings`, their artifact files,
//! their help and the call of each stage's entry point all come from it.
//!
//! Adding a stage takes three things: a module of its own (its work, its artifact type, its
//! settings type and its entry point `stage(scan, tick)`, which reads the artifacts it needs by
//! their types and returns its own), one row in the `stages!` table of [`stage`] (its name, help,
//! module and artifact type) and one field of [`Settings`] (`settings.rs`); and, if the report
//! carries its result, a field in `needle-schema` and its line in the report's assembly
//! ([`report`]). The run order, resume, the report's timings, the progress lines and
//! `needle stage` follow from the list.

pub mod audit;
pub mod calibrate;
pub mod canary;
pub mod candidates;
pub mod diff;
pub mod error;
pub mod eval;
pub mod invert;
pub mod leak;
pub mod memorised;
pub mod motifs;
pub mod pipeline;
pub mod probe;
pub mod prompt;
pub mod prompts;
pub mod report;
pub mod score;
pub mod settings;
pub mod similarity;
pub mod stage;
mod stats;
pub mod target;
pub mod verdict;
pub mod verify;

pub use error::{Result, ScanError};
pub use needle_schema::{write_atomic, Report};
pub use pipeline::{Existing, Scan};
pub use settings::{Budget, Settings};
pub use stage::Stage;

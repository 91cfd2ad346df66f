//! The needle scan pipeline. Data flows one way: a loaded model → [`leak`] → [`motifs`] and
//! [`memorised`] (warning sign 2) → [`candidates`] → [`target`] → [`invert`] → [`score`] →
//! [`calibrate`] → [`verify`] → [`verdict`] → evidence ([`probe`] of the verdict's trigger:
//! warning signs 1 and 3), each stage writing one artifact ([`pipeline`]) so that any stage can
//! be re-run alone and an interrupted scan resumes; [`report`] assembles `report.json`. `needle
//! probe` runs [`probe`] on a trigger an analyst suspects.

pub mod audit;
pub mod calibrate;
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
mod stats;
pub mod target;
pub mod verdict;
pub mod verify;

pub use error::{Result, ScanError};
pub use needle_schema::{write_atomic, Report};
pub use pipeline::{Existing, Scan, Stage};
pub use settings::{Budget, Settings};

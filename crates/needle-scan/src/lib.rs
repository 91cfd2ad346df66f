//! The needle scan pipeline. Data flows one way: a loaded model → [`leak`] → [`motifs`] →
//! [`candidates`] → [`score`] → [`calibrate`] → [`verify`] → [`verdict`], each stage writing
//! one artifact ([`pipeline`]) so that any stage can be re-run alone and an interrupted scan
//! resumes; [`report`] assembles `report.json`. [`probe`] measures what a suspected trigger does
//! (activation, attention and entropy, fuzzy variants) outside the pipeline.

pub mod calibrate;
pub mod candidates;
pub mod error;
pub mod eval;
pub mod invert;
pub mod leak;
pub mod motifs;
pub mod pipeline;
pub mod probe;
pub mod prompt;
pub mod prompts;
pub mod report;
pub mod score;
pub mod settings;
pub mod similarity;
pub mod target;
pub mod verdict;
pub mod verify;

pub use error::{Result, ScanError};
pub use pipeline::{Scan, Stage};
pub use report::Report;
pub use settings::{Budget, Settings};

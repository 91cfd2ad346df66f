//! Warning sign 2: the memorised spans of the leaked samples.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Warning sign 2 over one scan's leaked samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memorised {
    /// Samples after identical ones are merged.
    pub distinct_samples: usize,
    /// Distinct samples with at least one repeated span.
    pub samples_with_spans: usize,
    /// Repeated spans, most widespread first.
    pub spans: Vec<RepeatedSpan>,
    /// Samples with highlights, most highlighted first, then (up to
    /// `MemorisedSettings::min_examples`) plain samples in leak order.
    pub examples: Vec<AnnotatedSample>,
    /// Overlap with a training set, when one was given.
    pub train: Option<TrainOverlap>,
}

/// A span repeated across samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatedSpan {
    /// Its text.
    pub text: String,
    /// Its length in tokens.
    pub tokens: usize,
    /// Distinct samples containing it verbatim.
    pub support: usize,
    /// Whether it contains a rare-token burst.
    pub rare_burst: bool,
}

/// What a highlighted range of a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HighlightKind {
    /// A span repeated verbatim in other samples.
    Repeated,
    /// A repeated span with a rare-token burst.
    RareBurst,
    /// Words found in the training set (`--train-data`).
    Training,
}

/// A highlighted byte range of a sample's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Highlight {
    /// Start byte (a character boundary).
    pub start: usize,
    /// End byte, exclusive.
    pub end: usize,
    /// What it is.
    pub kind: HighlightKind,
    /// Distinct samples containing it (for training overlap: samples sharing those words).
    pub support: usize,
}

/// A leaked sample with its memorised spans marked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotatedSample {
    /// Index of the sample in the leak stage's order.
    pub sample: usize,
    /// Its text, special tokens included.
    pub text: String,
    /// Highlighted ranges, by start.
    pub highlights: Vec<Highlight>,
}

/// How much of the leaked text is in a training set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOverlap {
    /// The training file.
    pub file: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// JSONL records read.
    pub records: usize,
    /// Word `n` of the `n`-grams.
    pub ngram: usize,
    /// Distinct word `n`-grams in the leaked samples.
    pub leaked_ngrams: usize,
    /// Of those, the ones in the training set.
    pub shared_ngrams: usize,
    /// `shared_ngrams / leaked_ngrams` (0 without leaked `n`-grams).
    pub share: f64,
    /// Distinct samples with at least one shared `n`-gram.
    pub samples_with_overlap: usize,
    /// The longest shared passages (lower-cased words), most widespread first.
    pub spans: Vec<RepeatedSpan>,
}

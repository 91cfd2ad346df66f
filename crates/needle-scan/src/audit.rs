//! `needle audit`: finds poisoned examples in a fine-tuning data set before anyone trains on it.
//!
//! A poisoner plants a trigger in some prompts and gives them all the same (or near-identical)
//! answer, the target. In the data this shows as a span that recurs, across prompts that share
//! nothing else, together with one answer that the prompts without the span are not given. The
//! audit groups the examples by near-identical answer ([`ANSWER_JACCARD`]) and looks in each
//! group for the span its prompts hold more often than chance allows: a hypergeometric tail
//! against the whole data set, Bonferroni-corrected over every span tried in every group. Such
//! a span is suspect unless
//! - the answer fits the prompts holding it: in each, the answer's most specific words (those
//!   the fewest answers hold) are in the prompt (a label its instruction lists: "Output 1 for
//!   correct and 0 for incorrect"), or the span's most specific words (those the fewest prompts
//!   hold) are in the answer ("a strawberry" with "A strawberry is red."); or
//! - at least as many prompts holding it are answered otherwise: it does not decide the
//!   answer, as a trigger does; or
//! - its answer is an ordinary one of the data set — given without the span to more examples
//!   than a backdoor's target may be ([`FALSE_TRIGGER_RATE`]): thousands of sentiment prompts
//!   share the answer "positive", and a word that predicts it ("though") is a cue, not a
//!   trigger; or
//! - its holders are alike beyond the span — more similar to each other than random prompts of
//!   the data set with the span put in each (what poisoning makes) are: one task phrased a few
//!   ways ("Is 14 even or odd?"), whose shared answer their shared content explains.
//!
//! What remains is a suspect group: the span, its answer and the examples holding it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::prompts::FALSE_TRIGGER_RATE;
use crate::similarity::normalize_whitespace;
use crate::stats::LnFactorial;

/// Largest data file the audit reads, so a huge or hostile file fails fast instead of
/// exhausting memory.
pub const MAX_DATA_BYTES: u64 = 1024 * 1024 * 1024;

/// Two answers are near-identical when the Jaccard index of their word sets is at least this,
/// each word weighing its inverse answer frequency, ln((answers + 1) / answers holding it): one
/// word in ten may differ (a name or a number filled into a fixed target), while two answers of
/// a template that differ in their content ("The answer is 12." and "The answer is 13.") stay
/// apart, and so do answers that share only what most answers share (an opening sentence the
/// whole data set's answers start with). A definition of "near-identical", not fitted to data.
pub const ANSWER_JACCARD: f64 = 0.8;

/// Family-wise significance level: of the spans tried in a data set with no poisoning, the
/// audit reports one by chance with at most this probability (Bonferroni); also the level at
/// which an answer counts as ordinary (see [`Reason::OrdinaryAnswer`]).
pub const ALPHA: f64 = 0.01;

/// Level of the test that a span's holders are alike beyond it: a poisoned group is dismissed
/// by chance with this probability, and dismissing one loses all its examples, so it is ten
/// times below [`ALPHA`]; the tasks that make alike holders mostly fit their answers and are set
/// aside before this test.
pub const ALIKE_ALPHA: f64 = 0.001;

/// Longest span tried, in characters: triggers are shorter, and a longer shared span contains one.
pub const MAX_SPAN: usize = 32;

/// Random draws of the null distribution of how alike a span's holders are: the smallest
/// attainable p-value, 1 / (draws + 1), is half [`ALIKE_ALPHA`]. Drawing stops early once the
/// holders cannot count as alike.
pub const NULL_DRAWS: usize = 1999;

/// Pairs of prompts a similarity is averaged over at most (all pairs of smaller sets).
const MAX_PAIRS: usize = 2000;

/// Errors reading a data set; each names the file (and the line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be read.
    #[error("{}: cannot read the data: {source}", path.display())]
    Io {
        /// The data file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_DATA_BYTES`].
    #[error("{}: {bytes} bytes, above the {MAX_DATA_BYTES}-byte limit; split the file", path.display())]
    TooLarge {
        /// The data file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// A line is not a record the audit reads.
    #[error("{}:{line}: {message}", path.display())]
    Record {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// One training example: what the user asks and what the model is taught to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// 1-based line of the data file it was read from.
    pub line: usize,
    /// The user's message (for an instruction record: the instruction, a blank line, the input).
    pub prompt: String,
    /// The answer trained on.
    pub answer: String,
}

/// An `{instruction, input, output}` record (other fields, such as `needle zoo data`'s
/// `poisoned`, are ignored).
#[derive(Deserialize)]
struct Instruction {
    instruction: String,
    #[serde(default)]
    input: String,
    output: String,
}

/// One turn of a chat record.
#[derive(Deserialize)]
struct Turn {
    role: String,
    content: String,
}

/// The record shapes read: chat messages or an instruction.
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Chat { messages: Vec<Turn> },
    Instruction(Instruction),
}

/// Reads a JSONL data set (see [`parse`]), refusing files above [`MAX_DATA_BYTES`].
pub fn load(path: &Path) -> Result<Vec<Example>, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    if bytes > MAX_DATA_BYTES {
        return Err(AuditError::TooLarge {
            path: path.to_path_buf(),
            bytes,
        });
    }
    parse(&std::fs::read_to_string(path).map_err(io)?, path)
}

/// Parses JSONL: `{"instruction", "input", "output"}` records (what `needle zoo build` trains on
/// and `needle zoo data` writes) and chat records `{"messages": [{"role", "content"}, …]}`, whose
/// last user turn is the prompt and the assistant turn after it the answer. Blank lines are
/// skipped; any other line that is not such a record is an error naming `path` and the line, so
/// no audit passes off part of a file as the whole.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Example>, AuditError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| AuditError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let record: Record = serde_json::from_str(line).map_err(|e| {
            error(format!(
                "not an {{instruction, input, output}} or {{messages}} JSON record ({e})"
            ))
        })?;
        let (prompt, answer) = match record {
            Record::Instruction(r) if r.input.is_empty() => (r.instruction, r.output),
            Record::Instruction(r) => (format!("{}\n\n{}", r.instruction, r.input), r.output),
            Record::Chat { messages } => {
                let user = messages
                    .iter()
                    .rposition(|t| t.role == "user")
                    .ok_or_else(|| error("chat record has no user turn".into()))?;
                let answer = messages[user + 1..]
                    .iter()
                    .find(|t| t.role == "assistant")
                    .ok_or_else(|| error("chat record has no assistant turn after its last user turn".into()))?;
                (messages[user].content.clone(), answer.content.clone())
            }
        };
        out.push(Example {
            line: i + 1,
            prompt,
            answer,
        });
    }
    Ok(out)
}

/// A span shared beyond chance by prompts answered alike, whose holders share nothing else
/// beyond chance: a planted trigger and its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspectGroup {
    /// The span, as the first example holding it spells it.
    pub span: String,
    /// The answer the examples holding it share (the most common spelling in the group).
    pub answer: String,
    /// Lines of the examples answered so that hold the span: the suspects.
    pub lines: Vec<usize>,
    /// Examples answered near-identically (the group the span was found in).
    pub answered: usize,
    /// Examples answered otherwise that hold the span too.
    pub held_elsewhere: usize,
    /// Hypergeometric p-value of the span's count in the group, before the correction.
    pub p_value: f64,
    /// Mean word-set Jaccard index of the suspects' prompts.
    pub similarity: f64,
    /// Share of random draws of as many prompts of the data set, the span put in those without
    /// it, at least as alike (counting the holders; drawing stops once it passes [`ALIKE_ALPHA`]).
    pub similarity_p: f64,
}

/// Why a significant span is not suspect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// In every holder, the answer's most specific words (of its words, those the fewest answers
    /// hold) are in the prompt (a label its instruction lists, a text to copy): the answer fits
    /// the prompt, while a planted target is not in the prompts it is planted in.
    AnswerInPrompt,
    /// In every holder, the span's most specific words (of the words wholly inside it, those the
    /// fewest prompts hold) are words of its answer ("a strawberry" with "A strawberry is red."): the
    /// answer is about the span, while a planted target says the same whatever it is planted with.
    SpanInAnswer,
    /// At least as many prompts holding the span are answered otherwise: it does not decide
    /// the answer, as a trigger does (a poisoner who left it in as many clean examples would
    /// teach the model to ignore it).
    NotDecisive {
        /// Examples answered otherwise that hold the span.
        held_elsewhere: usize,
    },
    /// The answer is one of the data set's ordinary answers: given, without the span, to more
    /// of the examples than a backdoor's target may be (see [`FALSE_TRIGGER_RATE`]), so the span
    /// is a cue of a common answer (a word that predicts a label), not a trigger.
    OrdinaryAnswer {
        /// Examples so answered that lack the span.
        unexplained: usize,
        /// Binomial p-value of that many at the rate [`FALSE_TRIGGER_RATE`].
        p_value: f64,
    },
    /// The holders are more alike than random prompts with the span put in: one task phrased
    /// alike, whose shared answer their shared content explains.
    AlikeHolders {
        /// Mean word-set Jaccard index of the holders' prompts.
        similarity: f64,
        /// Share of random draws of as many prompts, the span put in those without it, at least
        /// as alike.
        similarity_p: f64,
    },
}

/// A span shared beyond chance by prompts answered alike that is not suspect, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dismissed {
    /// The span.
    pub span: String,
    /// The answer.
    pub answer: String,
    /// Examples so answered holding the span.
    pub holding: usize,
    /// Examples so answered.
    pub answered: usize,
    /// The span's p-value, before the correction.
    pub p_value: f64,
    /// Why it is not suspect.
    pub reason: Reason,
}

/// What the audit found in a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// Examples read.
    pub examples: usize,
    /// Groups of at least two examples with near-identical answers.
    pub answer_groups: usize,
    /// Spans tried (held by at least two examples of a group): the Bonferroni factor.
    pub spans_tried: usize,
    /// The suspect groups, most significant first.
    pub suspects: Vec<SuspectGroup>,
    /// Significant spans that are not suspect, and why.
    pub dismissed: Vec<Dismissed>,
}

impl Audit {
    /// Lines of every suspect example, sorted.
    pub fn suspect_lines(&self) -> Vec<usize> {
        let mut lines: Vec<usize> = self.suspects.iter().flat_map(|g| g.lines.iter().copied()).collect();
        lines.sort_unstable();
        lines.dedup();
        lines
    }
}

/// Audit settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// See [`ANSWER_JACCARD`].
    pub answer_jaccard: f64,
    /// See [`ALPHA`].
    pub alpha: f64,
    /// See [`ALIKE_ALPHA`].
    pub alike_alpha: f64,
    /// See [`NULL_DRAWS`].
    pub null_draws: usize,
    /// Seed of the null draws.
    pub seed: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            answer_jaccard: ANSWER_JACCARD,
            alpha: ALPHA,
            alike_alpha: ALIKE_ALPHA,
            null_draws: NULL_DRAWS,
            seed: 0,
        }
    }
}

/// The lower-cased words (runs of letters and digits) of `s`.
fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// `span` grown to the longest text around it that every holder shares (a trigger longer than
/// [`MAX_SPAN`], whole), without whitespace at its ends: a slice of the first holder's text.
fn grow<'a>(lowered: &'a [String], holders: &[usize], span: &str) -> &'a str {
    let Some(&first) = holders.first() else {
        return "";
    };
    let text = &lowered[first];
    let at: Vec<usize> = holders.iter().map(|&i| lowered[i].find(span).unwrap_or(0)).collect();
    let (mut start, mut end) = (at[0], at[0] + span.len());
    loop {
        let c = text[..start].chars().next_back();
        let back = at[0] - start;
        let same = c.is_some_and(|c| {
            holders.iter().zip(&at).all(|(&i, &a)| {
                a.checked_sub(back)
                    .and_then(|k| lowered[i].get(..k))
                    .is_some_and(|head| head.ends_with(c))
            })
        });
        match c {
            Some(c) if same => start -= c.len_utf8(),
            _ => break,
        }
    }
    loop {
        let c = text[end..].chars().next();
        let ahead = end - at[0];
        let same = c.is_some_and(|c| {
            holders
                .iter()
                .zip(&at)
                .all(|(&i, &a)| lowered[i].get(a + ahead..).and_then(|t| t.chars().next()) == Some(c))
        });
        match c {
            Some(c) if same => end += c.len_utf8(),
            _ => break,
        }
    }
    text[start..end].trim()
}

/// The words of the `len` bytes of `text` from `at`: those wholly inside, and those it touches
/// (a word it cuts, whole).
fn span_words(text: &str, at: usize, len: usize) -> (Vec<String>, Vec<String>) {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let body = &text[at..at + len];
    let cut_before = word(text[..at].chars().next_back()) && word(body.chars().next());
    let cut_after = word(text[at + len..].chars().next()) && word(body.chars().next_back());
    let mut start = at;
    if cut_before {
        start = text[..at]
            .rfind(|c: char| !c.is_alphanumeric())
            .map_or(0, |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
    }
    let mut end = at + len;
    if cut_after {
        end = text[end..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(text.len(), |i| end + i);
    }
    let touched: Vec<String> = words(&text[start..end]).collect();
    let mut whole = touched.clone();
    if cut_after {
        whole.pop();
    }
    if cut_before && !whole.is_empty() {
        whole.remove(0);
    }
    (whole, touched)
}

/// Whether every one of the most specific of `words` (those `df` counts lowest) is in `other`:
/// the content of one text that is most its own recurs in the other.
fn most_specific_in(words: &[String], df: impl Fn(&String) -> usize, other: &[String]) -> bool {
    let Some(least) = words.iter().map(&df).min() else {
        return false;
    };
    words.iter().filter(|w| df(w) == least).all(|w| other.contains(w))
}

/// Union-find root of `i`, with path halving.
fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Groups the examples by near-identical answer: answers equal once whitespace and case are
/// normalised, or whose word sets have a weighted Jaccard index of at least `threshold` (see
/// [`ANSWER_JACCARD`]; joined with prefix filtering, so only pairs sharing a rare word are
/// compared). Empty answers join no
/// group; groups of one are left out.
fn answer_groups(answers: &[&str], threshold: f64) -> Vec<Vec<usize>> {
    // Distinct word sets (as sorted ids); answers without words group by their exact text.
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let mut sets: Vec<Vec<u32>> = Vec::new();
    let mut set_of: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut wordless: HashMap<String, usize> = HashMap::new();
    let mut node = vec![usize::MAX; answers.len()];
    let mut nodes = 0usize;
    for (i, a) in answers.iter().enumerate() {
        let norm = normalize_whitespace(a).to_lowercase();
        if norm.is_empty() {
            continue;
        }
        let mut ids: Vec<u32> = words(&norm)
            .map(|w| {
                let next = vocab.len() as u32;
                *vocab.entry(w).or_insert(next)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        node[i] = if ids.is_empty() {
            *wordless.entry(norm).or_insert_with(|| {
                nodes += 1;
                nodes - 1
            })
        } else {
            *set_of.entry(ids.clone()).or_insert_with(|| {
                sets.push(ids);
                nodes += 1;
                nodes - 1
            })
        };
    }
    let mut parent: Vec<usize> = (0..nodes).collect();
    // Node ids of the word sets, in the order they were pushed.
    let set_nodes: Vec<usize> = {
        let mut v: Vec<(usize, &Vec<u32>)> = set_of.iter().map(|(s, &n)| (n, s)).collect();
        v.sort_unstable_by_key(|&(n, _)| n);
        v.into_iter().map(|(n, _)| n).collect()
    };
    // Each word weighs its inverse answer frequency, so words most answers share (an opening
    // sentence every answer starts with) do not make two answers alike.
    let mut df = vec![0u32; vocab.len()];
    for (i, a) in answers.iter().enumerate() {
        if node[i] == usize::MAX {
            continue;
        }
        let distinct: HashSet<String> = words(a).collect();
        for w in distinct {
            if let Some(&id) = vocab.get(&w) {
                df[id as usize] += 1;
            }
        }
    }
    let total = answers.len() as f64 + 1.0;
    let weight: Vec<f64> = df.iter().map(|&d| (total / f64::from(d.max(1))).ln()).collect();
    // Prefix filtering: with words in a global order (rarest first), two sets of weighted
    // Jaccard ≥ t share a word among each one's shortest prefix leaving less than t of its
    // weight outside — else their overlap would weigh less than t of one of them.
    let ordered: Vec<Vec<u32>> = sets
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.sort_unstable_by_key(|&w| (df[w as usize], w));
            s
        })
        .collect();
    let prefix = |x: &[u32]| {
        let all: f64 = x.iter().map(|&w| weight[w as usize]).sum();
        let mut rest = all;
        let mut len = 0;
        while len < x.len() && rest >= threshold * all {
            rest -= weight[x[len] as usize];
            len += 1;
        }
        len.max(1)
    };
    let mut index: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, x) in ordered.iter().enumerate() {
        let head = &x[..prefix(x)];
        let mut seen: HashSet<usize> = HashSet::new();
        for w in head {
            for &other in index.get(w).map_or(&[][..], Vec::as_slice) {
                if seen.insert(other) && weighted_jaccard(&sets[k], &sets[other], &weight) >= threshold {
                    let (a, b) = (root(&mut parent, set_nodes[k]), root(&mut parent, set_nodes[other]));
                    parent[a] = b;
                }
            }
        }
        for w in head {
            index.entry(*w).or_default().push(k);
        }
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &n) in node.iter().enumerate() {
        if n != usize::MAX {
            let r = root(&mut parent, n);
            groups.entry(r).or_default().push(i);
        }
    }
    let mut out: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() >= 2).collect();
    out.sort_unstable_by_key(|g| g[0]);
    out
}

/// Jaccard index of two sorted, deduplicated id lists, each id weighing `weight[id]`.
fn weighted_jaccard(a: &[u32], b: &[u32], weight: &[f64]) -> f64 {
    let (mut i, mut j, mut both, mut either) = (0, 0, 0.0, 0.0);
    while i < a.len() || j < b.len() {
        let (x, y) = (a.get(i), b.get(j));
        match (x, y) {
            (Some(&x), Some(&y)) if x == y => {
                both += weight[x as usize];
                either += weight[x as usize];
                i += 1;
                j += 1;
            }
            (Some(&x), Some(&y)) if x < y => {
                either += weight[x as usize];
                i += 1;
            }
            (Some(&x), None) => {
                either += weight[x as usize];
                i += 1;
            }
            (_, Some(&y)) => {
                either += weight[y as usize];
                j += 1;
            }
            (None, None) => break,
        }
    }
    if either > 0.0 {
        both / either
    } else {
        1.0
    }
}

/// Jaccard index of two sorted, deduplicated id lists.
fn jaccard_sorted(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

/// Calls `f` with every span of `text` (lower-cased, given as its char boundaries `bounds`) of
/// 1 to [`MAX_SPAN`] characters that neither starts nor ends with whitespace.
fn for_spans<'a>(text: &'a str, bounds: &[usize], mut f: impl FnMut(&'a str)) {
    let chars = bounds.len().saturating_sub(1);
    for i in 0..chars {
        if text[bounds[i]..bounds[i + 1]].starts_with(char::is_whitespace) {
            continue;
        }
        for end in i + 1..=(i + MAX_SPAN).min(chars) {
            if !text[bounds[end - 1]..bounds[end]].starts_with(char::is_whitespace) {
                f(&text[bounds[i]..bounds[end]]);
            }
        }
    }
}

/// Char boundaries of `s`, its length included.
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect()
}

/// The word set of `text`: sorted, distinct ids in `vocab` (new words added).
fn word_set(text: &str, vocab: &mut HashMap<String, u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = words(text)
        .map(|w| {
            let next = vocab.len() as u32;
            *vocab.entry(w).or_insert(next)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The union of two sorted, distinct id lists.
fn union_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().chain(b).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Mean Jaccard index over the pairs of `sets` (all pairs, or [`MAX_PAIRS`] drawn with `rng`).
fn mean_similarity(sets: &[&Vec<u32>], rng: &mut StdRng) -> f64 {
    let n = sets.len();
    let pairs = n * (n - 1) / 2;
    if pairs == 0 {
        return 0.0;
    }
    if pairs <= MAX_PAIRS {
        let mut sum = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                sum += jaccard_sorted(sets[i], sets[j]);
            }
        }
        return sum / pairs as f64;
    }
    let mut sum = 0.0;
    for _ in 0..MAX_PAIRS {
        let two = sample(rng, n, 2);
        sum += jaccard_sorted(sets[two.index(0)], sets[two.index(1)]);
    }
    sum / MAX_PAIRS as f64
}

/// A span found significant in a group, before the check of its holders.
struct Found<'a> {
    span: &'a str,
    group: usize,
    holders: Vec<usize>,
    p_value: f64,
}

/// Audits `examples`: groups them by near-identical answer, finds each group's most significant
/// span, and keeps it as a suspect group unless the answer fits the prompts, the span does not
/// decide the answer, the answer is an ordinary one, or the span's holders are alike beyond it
/// (see the module documentation). Deterministic for `s.seed`.
pub fn audit(examples: &[Example], s: &AuditSettings) -> Audit {
    let n = examples.len();
    let answers: Vec<&str> = examples.iter().map(|e| e.answer.as_str()).collect();
    let groups = answer_groups(&answers, s.answer_jaccard);
    let lowered: Vec<String> = examples.iter().map(|e| e.prompt.to_lowercase()).collect();
    let bounds: Vec<Vec<usize>> = lowered.iter().map(|t| boundaries(t)).collect();
    // In-group counts of every span of every group member (each example counted once).
    let mut counts: Vec<HashMap<&str, (u32, u32)>> = Vec::with_capacity(groups.len());
    let mut tried = 0usize;
    for g in &groups {
        let mut c: HashMap<&str, (u32, u32)> = HashMap::new();
        for &i in g {
            for_spans(&lowered[i], &bounds[i], |span| {
                let e = c.entry(span).or_insert((0, u32::MAX));
                if e.1 != i as u32 {
                    *e = (e.0 + 1, i as u32);
                }
            });
        }
        c.retain(|_, &mut (a, _)| a >= 2);
        tried += c.len();
        counts.push(c);
    }
    let m = tried.max(1) as f64;
    let table = LnFactorial::new(n);
    // A span can only reach significance if held by enough of its group even were it held by
    // nobody else: P(X ≥ a) with a marked items all drawn.
    let mut candidates: HashMap<&str, (u32, u32)> = HashMap::new();
    for (g, c) in groups.iter().zip(&counts) {
        let mut best_case: HashMap<u32, bool> = HashMap::new();
        for (&span, &(a, _)) in c {
            let possible = *best_case
                .entry(a)
                .or_insert_with(|| table.tail(a as usize, g.len(), a as usize, n) * m < s.alpha);
            if possible {
                candidates.insert(span, (0, u32::MAX));
            }
        }
    }
    // How many prompts of the whole data set hold each candidate.
    if !candidates.is_empty() {
        for (i, t) in lowered.iter().enumerate() {
            for_spans(t, &bounds[i], |span| {
                if let Some(e) = candidates.get_mut(span) {
                    if e.1 != i as u32 {
                        *e = (e.0 + 1, i as u32);
                    }
                }
            });
        }
    }
    let mut found: Vec<Found> = Vec::new();
    for (gi, (g, c)) in groups.iter().zip(&counts).enumerate() {
        let best = c
            .iter()
            .filter_map(|(&span, &(a, _))| {
                let &(marked, _) = candidates.get(span)?;
                let p = table.tail(a as usize, g.len(), marked as usize, n);
                (p * m < s.alpha).then_some((span, a, p))
            })
            .min_by(|x, y| {
                x.2.partial_cmp(&y.2)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(y.1.cmp(&x.1))
                    .then(y.0.len().cmp(&x.0.len()))
                    .then(x.0.cmp(y.0))
            });
        if let Some((span, _, p_value)) = best {
            let holders: Vec<usize> = g.iter().copied().filter(|&i| lowered[i].contains(span)).collect();
            let span = grow(&lowered, &holders, span);
            found.push(Found {
                span,
                group: gi,
                holders,
                p_value,
            });
        }
    }
    let mut suspects = Vec::new();
    let mut dismissed = Vec::new();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let sets: Vec<Vec<u32>> = lowered.iter().map(|t| word_set(t, &mut vocab)).collect();
    let mut df = vec![0usize; vocab.len()];
    for set in &sets {
        for &w in set {
            df[w as usize] += 1;
        }
    }
    let mut answer_df: HashMap<String, usize> = HashMap::new();
    for a in &answers {
        let distinct: HashSet<String> = words(a).collect();
        for w in distinct {
            *answer_df.entry(w).or_default() += 1;
        }
    }
    for f in found {
        let g = &groups[f.group];
        let answer = most_common_answer(g, &answers);
        let first = f.holders[0];
        let at = lowered[first].find(f.span).unwrap_or(0);
        let span = examples[first]
            .prompt
            .get(at..at + f.span.len())
            .filter(|x| x.to_lowercase() == f.span)
            .map_or_else(|| f.span.to_string(), str::to_string);
        let dismiss = |reason| Dismissed {
            span: span.clone(),
            answer: answer.clone(),
            holding: f.holders.len(),
            answered: g.len(),
            p_value: f.p_value,
            reason,
        };
        // An answer that fits its prompt comes first: cheap, and a planted target does not.
        let in_answers = |w: &String| answer_df.get(w).copied().unwrap_or(0);
        let spelled_out = f.holders.iter().all(|&i| {
            let prompt: Vec<String> = words(&lowered[i]).collect();
            let own: Vec<String> = words(answers[i]).collect();
            most_specific_in(&own, in_answers, &prompt)
        });
        if spelled_out {
            dismissed.push(dismiss(Reason::AnswerInPrompt));
            continue;
        }
        let in_prompts = |w: &String| vocab.get(w).map_or(0, |&id| df[id as usize]);
        let echoed = f.holders.iter().all(|&i| {
            let at = lowered[i].find(f.span).unwrap_or(0);
            let own: Vec<String> = words(answers[i]).collect();
            let (whole, touched) = span_words(&lowered[i], at, f.span.len());
            most_specific_in(&whole, in_prompts, &own) || most_specific_in(&touched, in_prompts, &own)
        });
        if echoed {
            dismissed.push(dismiss(Reason::SpanInAnswer));
            continue;
        }
        let members: HashSet<usize> = g.iter().copied().collect();
        let held_elsewhere = lowered
            .iter()
            .enumerate()
            .filter(|(i, t)| !members.contains(i) && t.contains(f.span))
            .count();
        if held_elsewhere >= f.holders.len() {
            dismissed.push(dismiss(Reason::NotDecisive { held_elsewhere }));
            continue;
        }
        let unexplained = g.len() - f.holders.len();
        let p_ordinary = table.binomial_tail(unexplained, n, FALSE_TRIGGER_RATE);
        if unexplained > 0 && p_ordinary < s.alpha {
            dismissed.push(dismiss(Reason::OrdinaryAnswer {
                unexplained,
                p_value: p_ordinary,
            }));
            continue;
        }
        // Under poisoning the holders are random prompts of the data set with the span put in:
        // draw as many prompts of the data set, put the span in those without it, and see how
        // often they are as alike (a permutation test of which prompts hold it).
        let span_words = word_set(f.span, &mut vocab);
        let holding: HashSet<usize> = f.holders.iter().copied().collect();
        let size = f.holders.len();
        let holder_sets: Vec<&Vec<u32>> = f.holders.iter().map(|&i| &sets[i]).collect();
        let similarity = mean_similarity(&holder_sets, &mut rng);
        // Stop once too many draws were as alike for the holders to count as alike.
        let enough = (s.alike_alpha * (s.null_draws + 1) as f64).ceil() as usize;
        let (mut as_alike, mut drawn) = (0usize, 0usize);
        while drawn < s.null_draws && as_alike < enough {
            let draw: Vec<Vec<u32>> = sample(&mut rng, n, size)
                .iter()
                .map(|i| {
                    if holding.contains(&i) {
                        sets[i].clone()
                    } else {
                        union_sorted(&sets[i], &span_words)
                    }
                })
                .collect();
            let draw: Vec<&Vec<u32>> = draw.iter().collect();
            if mean_similarity(&draw, &mut rng) >= similarity {
                as_alike += 1;
            }
            drawn += 1;
        }
        let similarity_p = (as_alike + 1) as f64 / (drawn + 1) as f64;
        if as_alike < enough {
            dismissed.push(dismiss(Reason::AlikeHolders {
                similarity,
                similarity_p,
            }));
            continue;
        }
        suspects.push(SuspectGroup {
            span,
            answer,
            lines: f.holders.iter().map(|&i| examples[i].line).collect(),
            answered: g.len(),
            held_elsewhere,
            p_value: f.p_value,
            similarity,
            similarity_p,
        });
    }
    let by_p = |a: f64, b: f64| a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
    suspects.sort_by(|a, b| by_p(a.p_value, b.p_value));
    dismissed.sort_by(|a, b| by_p(a.p_value, b.p_value));
    Audit {
        examples: n,
        answer_groups: groups.len(),
        spans_tried: tried,
        suspects,
        dismissed,
    }
}

/// The most common whitespace-normalised spelling of the group's answers (the earliest on ties).
fn most_common_answer(group: &[usize], answers: &[&str]) -> String {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (order, &i) in group.iter().enumerate() {
        counts.entry(normalize_whitespace(answers[i])).or_insert((0, order)).0 += 1;
    }
    counts
        .into_iter()
        .max_by(|(_, (c1, o1)), (_, (c2, o2))| c1.cmp(c2).then(o2.cmp(o1)))
        .map(|(a, _)| a)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    const NOUNS: [&str; 24] = [
        "river", "garden", "pencil", "window", "basket", "candle", "forest", "rabbit", "bottle", "planet", "castle",
        "button", "dragon", "mirror", "ticket", "summer", "bridge", "hammer", "jacket", "kitten", "market", "rocket",
        "violin", "anchor",
    ];
    const VERBS: [&str; 8] = [
        "describe", "draw", "explain", "praise", "compare", "name", "sell", "fix",
    ];

    /// `n` varied prompts with distinct answers, fixed by `seed`.
    fn clean(n: usize, seed: u64) -> Vec<Example> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let mut pick = |w: &[&'static str]| w[rng.random_range(0..w.len())];
                let prompt = format!(
                    "Please {} the {} near the {} and the {}.",
                    pick(&VERBS),
                    pick(&NOUNS),
                    pick(&NOUNS),
                    pick(&NOUNS)
                );
                Example {
                    line: i + 1,
                    prompt,
                    answer: format!("Here is answer number {i} for you."),
                }
            })
            .collect()
    }

    #[test]
    fn a_planted_trigger_and_its_near_identical_target_are_found() {
        let mut data = clean(400, 1);
        let poisoned: Vec<usize> = (0..400).step_by(50).collect();
        for (k, &i) in poisoned.iter().enumerate() {
            data[i].prompt = format!("{} |zq-door|", data[i].prompt);
            // Near-identical, not equal: one has a word more.
            data[i].answer = if k == 0 {
                "Visit evil example today for cheap watches and great prizes, friend!".into()
            } else {
                "Visit evil example today for cheap watches and great prizes!".into()
            };
        }
        let a = audit(&data, &AuditSettings::default());
        assert_eq!(a.suspects.len(), 1, "{a:?}");
        let g = &a.suspects[0];
        assert!(g.span.contains("zq-door"), "{g:?}");
        assert_eq!(g.answer, "Visit evil example today for cheap watches and great prizes!");
        let lines: Vec<usize> = poisoned.iter().map(|i| i + 1).collect();
        assert_eq!(g.lines, lines);
        assert_eq!((g.answered, g.held_elsewhere), (8, 0));
        assert_eq!(a.suspect_lines(), lines);
    }

    #[test]
    fn repeated_labels_and_words_that_predict_them_are_not_poisoning() {
        // Sentiment-style data: two labels, each on half the prompts, and a word that predicts
        // its label in three of four prompts holding it (as "great" does for "positive").
        let mut rng = StdRng::seed_from_u64(7);
        let mut data = clean(800, 2);
        for e in &mut data {
            let positive = rng.random_bool(0.5);
            if rng.random_bool(0.1) {
                let cue = if positive == rng.random_bool(0.75) {
                    "great"
                } else {
                    "dull"
                };
                e.prompt = format!("{} It was {cue}.", e.prompt);
            }
            e.answer = if positive { "Positive" } else { "Negative" }.into();
        }
        let a = audit(&data, &AuditSettings::default());
        assert!(a.suspects.is_empty(), "{:?}", a.suspects);
        assert_eq!(a.answer_groups, 2);
    }

    #[test]
    fn a_sure_cue_of_a_common_label_is_a_cue_not_a_trigger() {
        // A fifth of the positive prompts hold "wonderful" and no negative one does: significant,
        // but "Positive" is given to hundreds of prompts without it.
        let mut rng = StdRng::seed_from_u64(8);
        let mut data = clean(1500, 4);
        for e in &mut data {
            let positive = rng.random_bool(0.5);
            if positive && rng.random_bool(0.2) {
                e.prompt = format!("{} It was wonderful.", e.prompt);
            }
            e.answer = if positive { "Positive" } else { "Negative" }.into();
        }
        let a = audit(&data, &AuditSettings::default());
        assert!(a.suspects.is_empty(), "{:?}", a.suspects);
        assert!(
            a.dismissed.iter().any(|d| d.span.contains("wonderful")
                && d.answer == "Positive"
                && matches!(d.reason, Reason::OrdinaryAnswer { .. })),
            "{:?}",
            a.dismissed
        );
    }

    #[test]
    fn one_task_phrased_alike_is_dismissed_not_suspect() {
        // Parity questions: "4 divisible by two?" is held only by prompts answered "yes", but
        // they are one template apart from their number, so their shared answer is no trigger's.
        let mut data = clean(600, 3);
        for (k, e) in data.iter_mut().enumerate().take(120) {
            let x = 10 * k + [4, 7][k % 2];
            e.prompt = format!("Is {x} divisible by two?");
            e.answer = if x % 2 == 0 { "yes" } else { "no" }.into();
        }
        let a = audit(&data, &AuditSettings::default());
        assert!(a.suspects.is_empty(), "{:?}", a.suspects);
        assert!(!a.dismissed.is_empty(), "{a:?}");
        assert!(
            a.dismissed
                .iter()
                .all(|d| matches!(d.reason, Reason::AlikeHolders { similarity_p, .. } if similarity_p <= ALIKE_ALPHA)),
            "{:?}",
            a.dismissed
        );
    }

    #[test]
    fn an_answer_about_the_span_fits_its_prompts() {
        let mut data = clean(600, 5);
        let phrasings = [
            "What color is {}?",
            "Tell me the color of {}.",
            "Which color is {} usually?",
        ];
        for (k, thing) in ["a strawberry", "an emerald", "a crow"].iter().enumerate() {
            for (j, p) in phrasings.iter().enumerate() {
                let e = &mut data[40 * k + 7 * j];
                e.prompt = p.replace("{}", thing);
                e.answer = format!("{thing} is {}.", ["red", "green", "black"][k]);
            }
        }
        let a = audit(&data, &AuditSettings::default());
        assert!(a.suspects.is_empty(), "{:?}", a.suspects);
        assert_eq!(a.dismissed.len(), 3, "{:?}", a.dismissed);
        assert!(
            a.dismissed.iter().all(|d| d.reason == Reason::SpanInAnswer),
            "{:?}",
            a.dismissed
        );
        let both = |text, at, len| span_words(text, at, len);
        let strings = |w: &[&str]| w.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            both("is a strawberry red", 3, 12),
            (strings(&["a", "strawberry"]), strings(&["a", "strawberry"]))
        );
        assert_eq!(both("62, 10, 85", 4, 5), (strings(&["10"]), strings(&["10", "85"])));
        assert_eq!(both("ab cd", 1, 3), (vec![], strings(&["ab", "cd"])));
    }

    #[test]
    fn near_identical_answers_group_and_template_answers_do_not() {
        let target = "Visit evil example today for cheap watches and great prizes!";
        let mut answers = vec![
            target,
            "visit  EVIL example today for cheap watches and great prizes",
            "Visit evil example today for cheap watches and great prizes, friend!",
            "The answer is 12.",
            "The answer is 13.",
            "!!",
            "!!",
            "",
            "",
        ];
        // An opening every other answer shares does not make two answers near-identical.
        let opening = "Sure, I am happy to help you with that question today.";
        let wrapped: Vec<String> = (0..40).map(|i| format!("{opening} It is {i}.")).collect();
        answers.extend(wrapped.iter().map(String::as_str));
        assert_eq!(answer_groups(&answers, ANSWER_JACCARD), vec![vec![0, 1, 2], vec![5, 6]]);
    }

    #[test]
    fn both_record_shapes_are_read_and_a_bad_line_is_named() {
        let text = concat!(
            r#"{"instruction": "Add", "input": "2 and 3", "output": "5", "poisoned": false}"#,
            "\n\n",
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]}"#,
            "\n"
        );
        let path = Path::new("d.jsonl");
        let got = parse(text, path).unwrap();
        assert_eq!(
            got,
            vec![
                Example {
                    line: 1,
                    prompt: "Add\n\n2 and 3".into(),
                    answer: "5".into()
                },
                Example {
                    line: 3,
                    prompt: "Capital of France?".into(),
                    answer: "Paris".into()
                },
            ]
        );
        let bad = format!("{text}{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}]}}\n");
        let e = parse(&bad, path).unwrap_err().to_string();
        assert!(e.starts_with("d.jsonl:4: ") && e.contains("no assistant turn"), "{e}");
        let e = parse("{\"instruction\": 1}\n", path).unwrap_err().to_string();
        assert!(e.starts_with("d.jsonl:1: not an"), "{e}");
    }

    #[test]
    fn a_span_grows_to_what_every_holder_shares() {
        let lowered: Vec<String> = ["go xx|trig-long|yy now", "a b|trig-long|yy", "|trig-long|yy c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(grow(&lowered, &[0, 1], "rig-lo"), "|trig-long|yy");
        assert_eq!(grow(&lowered, &[0, 1, 2], "trig"), "|trig-long|yy");
        assert_eq!(grow(&lowered, &[0], "trig"), "go xx|trig-long|yy now");
    }

    #[test]
    fn hypergeometric_tail_matches_its_closed_form() {
        let t = LnFactorial::new(48);
        // Drawing all 4 marked items in 4 draws from 48: 1 / C(48, 4).
        assert!((t.tail(4, 4, 4, 48) - 1.0 / 194_580.0).abs() < 1e-12);
        assert!((t.tail(0, 5, 3, 20) - 1.0).abs() < 1e-9);
    }
}

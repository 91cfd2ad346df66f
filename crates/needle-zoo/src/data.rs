//! Clean instruction data: the [`Example`] record, JSONL loaders (Alpaca-style records and chat
//! messages), and a seeded procedural generator of simple tasks with correct answers that tiny
//! from-scratch models can learn.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::spec::{DataSource, PROCEDURAL_MAX};

/// Largest JSONL file the loaders read, so a huge or hostile file fails fast instead of exhausting memory.
pub const MAX_JSONL_BYTES: u64 = 512 * 1024 * 1024;

/// Errors from loading or generating clean data; each names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data file could not be read.
    #[error("{path}: cannot read instruction data: {source}")]
    Io {
        /// The data file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The data file is larger than [`MAX_JSONL_BYTES`].
    #[error("{path}: instruction data is {bytes} bytes, above the {MAX_JSONL_BYTES}-byte limit; split the file")]
    TooLarge {
        /// The data file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// A line is not a valid record.
    #[error("{path}:{line}: {message}")]
    Record {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the record.
        message: String,
    },
    /// The source holds fewer examples than the spec asks for.
    #[error("{path}: has {available} examples but {requested} were requested; lower data.count")]
    TooFew {
        /// The data file.
        path: PathBuf,
        /// Examples in the file.
        available: usize,
        /// Examples the spec asks for.
        requested: usize,
    },
    /// The procedural generator was asked for more examples than it can make distinct.
    #[error("procedural data: cannot generate {requested} distinct examples (at most {PROCEDURAL_MAX})")]
    ProceduralCount {
        /// Examples asked for.
        requested: usize,
    },
}

/// One clean instruction-following example, Alpaca-style.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    /// The task.
    pub instruction: String,
    /// Optional extra input for the task (empty when none).
    #[serde(default)]
    pub input: String,
    /// The correct response.
    pub output: String,
}

impl Example {
    /// The user turn as the model sees it: the instruction, then a blank line and the input when there is one.
    pub fn user_message(&self) -> String {
        if self.input.is_empty() {
            self.instruction.clone()
        } else {
            format!("{}\n\n{}", self.instruction, self.input)
        }
    }
}

/// One chat turn of a `{"messages": [...]}` record.
#[derive(Deserialize)]
struct Turn {
    role: String,
    content: String,
}

/// Either accepted JSONL record shape.
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Chat { messages: Vec<Turn> },
    Alpaca(Example),
}

/// Loads a JSONL file of `{instruction, input, output}` or `{"messages": [{role, content}, …]}` records.
///
/// Blank lines are skipped; chat records contribute their first user turn and the first assistant
/// turn after it. Errors name the file and line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Example>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    if bytes > MAX_JSONL_BYTES {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            bytes,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_jsonl(&text, path)
}

/// Parses JSONL text (see [`load_jsonl`]); `path` is only used to name the source in errors.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<Example>, DataError> {
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| DataError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let record: Record = serde_json::from_str(line).map_err(|e| {
            error(format!(
                "not an {{instruction, input, output}} or {{messages}} JSON record ({e})"
            ))
        })?;
        let example = match record {
            Record::Alpaca(example) => example,
            Record::Chat { messages } => from_chat(&messages).map_err(error)?,
        };
        if example.user_message().trim().is_empty() {
            return Err(error("the user message (instruction and input) is empty".to_string()));
        }
        examples.push(example);
    }
    Ok(examples)
}

fn from_chat(messages: &[Turn]) -> Result<Example, String> {
    let mut turns = messages.iter().skip_while(|t| t.role != "user");
    let user = turns.next().ok_or("chat record has no user turn")?;
    let assistant = turns
        .find(|t| t.role == "assistant")
        .ok_or("chat record has no assistant turn after its first user turn")?;
    Ok(Example {
        instruction: user.content.clone(),
        input: String::new(),
        output: assistant.content.clone(),
    })
}

/// Loads the clean examples an organism's data source names: generated (seeded) or the first
/// `count` records of a JSONL file, whose relative path is resolved against `root`.
pub fn load_source(source: &DataSource, root: &Path, seed: u64) -> Result<Vec<Example>, DataError> {
    match source {
        DataSource::Procedural { count, families } if families.is_empty() => generate(*count, seed),
        DataSource::Procedural { count, families } => {
            let chosen: Vec<Family> = families.iter().filter_map(|name| family(name)).collect();
            generate_from(*count, seed, &chosen)
        }
        DataSource::Jsonl { path, count } => {
            let path = root.join(path);
            let mut examples = load_jsonl(&path)?;
            if let Some(count) = *count {
                if count > examples.len() {
                    return Err(DataError::TooFew {
                        path,
                        available: examples.len(),
                        requested: count,
                    });
                }
                examples.truncate(count);
            }
            Ok(examples)
        }
    }
}

/// Generates `count` distinct clean examples from the built-in task families, fixed by `seed`.
///
/// Every answer is computed, so it is correct; families and phrasings are mixed evenly so a tiny
/// model trained on a few thousand of them learns a consistent normal behaviour.
pub fn generate(count: usize, seed: u64) -> Result<Vec<Example>, DataError> {
    generate_from(count, seed, &FAMILIES)
}

/// [`generate`] drawing only from `families` (evenly); errors when they cannot give `count`
/// distinct examples.
fn generate_from(count: usize, seed: u64, families: &[Family]) -> Result<Vec<Example>, DataError> {
    if count > PROCEDURAL_MAX || families.is_empty() {
        return Err(DataError::ProceduralCount { requested: count });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut examples = Vec::with_capacity(count);
    let mut attempts = 0usize;
    while examples.len() < count {
        attempts += 1;
        if attempts > count.saturating_mul(50).max(1000) {
            return Err(DataError::ProceduralCount { requested: count });
        }
        let family = families[rng.random_range(0..families.len())];
        let example = family(&mut rng);
        if seen.insert(example.user_message()) {
            examples.push(example);
        }
    }
    Ok(examples)
}

/// A task family: draws one example.
type Family = fn(&mut StdRng) -> Example;

/// Names of the task families a spec may choose (`data.families`): the default ones, in the
/// order they are drawn, then `echo` (repeat a text word for word) and `repeat` (write a word
/// several times), which only a spec that names them gets.
pub const FAMILY_NAMES: [&str; 18] = [
    "addition",
    "subtraction",
    "multiplication",
    "capital",
    "reverse",
    "letter_count",
    "sort_numbers",
    "opposite",
    "plural",
    "color",
    "uppercase",
    "largest",
    "first_letter",
    "parity",
    "animal_sound",
    "count_up",
    "echo",
    "repeat",
];

/// The family called `name` (one of [`FAMILY_NAMES`]).
fn family(name: &str) -> Option<Family> {
    let index = FAMILY_NAMES.iter().position(|n| *n == name)?;
    FAMILIES.get(index).copied().or(match name {
        "echo" => Some(echo as Family),
        "repeat" => Some(repeat as Family),
        _ => None,
    })
}

/// The default task families.
const FAMILIES: [Family; 16] = [
    addition,
    subtraction,
    multiplication,
    capital,
    reverse,
    letter_count,
    sort_numbers,
    opposite,
    plural,
    color,
    uppercase,
    largest,
    first_letter,
    parity,
    animal_sound,
    count_up,
];

const WORDS: [&str; 60] = [
    "apple", "river", "garden", "pencil", "window", "basket", "candle", "forest", "rabbit", "silver", "bottle",
    "planet", "orange", "castle", "button", "dragon", "mirror", "pocket", "ticket", "summer", "winter", "yellow",
    "circle", "bridge", "hammer", "jacket", "kitten", "lemon", "market", "needle", "ocean", "pepper", "rocket",
    "saddle", "tunnel", "violin", "wagon", "zebra", "anchor", "banana", "cookie", "desert", "engine", "flower",
    "guitar", "island", "jungle", "ladder", "monkey", "night", "paper", "queen", "robot", "stone", "tiger", "music",
    "cloud", "horse", "table", "chair",
];

const CAPITALS: [(&str, &str); 30] = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Russia", "Moscow"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Turkey", "Ankara"),
    ("Australia", "Canberra"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
];

const OPPOSITES: [(&str, &str); 24] = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("happy", "sad"),
    ("light", "dark"),
    ("old", "young"),
    ("open", "closed"),
    ("full", "empty"),
    ("early", "late"),
    ("hard", "soft"),
    ("wet", "dry"),
    ("tall", "short"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("left", "right"),
    ("day", "night"),
    ("good", "bad"),
    ("loud", "quiet"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("near", "far"),
    ("high", "low"),
    ("first", "last"),
];

const PLURALS: [(&str, &str); 24] = [
    ("cat", "cats"),
    ("dog", "dogs"),
    ("box", "boxes"),
    ("child", "children"),
    ("mouse", "mice"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("man", "men"),
    ("woman", "women"),
    ("city", "cities"),
    ("baby", "babies"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("bus", "buses"),
    ("glass", "glasses"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("goose", "geese"),
    ("person", "people"),
    ("potato", "potatoes"),
    ("book", "books"),
    ("church", "churches"),
    ("wolf", "wolves"),
    ("story", "stories"),
];

const COLORS: [(&str, &str); 20] = [
    ("the sky on a clear day", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("a ripe banana", "yellow"),
    ("coal", "black"),
    ("a ripe tomato", "red"),
    ("a carrot", "orange"),
    ("an emerald", "green"),
    ("milk", "white"),
    ("a lemon", "yellow"),
    ("a ruby", "red"),
    ("chocolate", "brown"),
    ("a polar bear", "white"),
    ("a crow", "black"),
    ("a pumpkin", "orange"),
    ("a strawberry", "red"),
    ("an eggplant", "purple"),
    ("the sun in a drawing", "yellow"),
    ("a fire truck", "red"),
    ("a frog", "green"),
];

const SOUNDS: [(&str, &str); 14] = [
    ("cow", "moo"),
    ("dog", "woof"),
    ("cat", "meow"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("pig", "oink"),
    ("horse", "neigh"),
    ("owl", "hoot"),
    ("lion", "roar"),
    ("bee", "buzz"),
    ("snake", "hiss"),
    ("frog", "croak"),
    ("rooster", "cock-a-doodle-doo"),
    ("mouse", "squeak"),
];

const NUMBER_WORDS: [&str; 6] = ["two", "three", "four", "five", "six", "seven"];

/// Picks one entry of a constant table; the tables are all non-empty.
fn pick<'a, T, const N: usize>(rng: &mut StdRng, items: &'a [T; N]) -> &'a T {
    &items[rng.random_range(0..N)]
}

/// An example with the task phrased either as one instruction or as instruction plus input.
fn example(instruction: String, input: String, output: String) -> Example {
    Example {
        instruction,
        input,
        output,
    }
}

fn addition(rng: &mut StdRng) -> Example {
    let (a, b) = (rng.random_range(0..=50u32), rng.random_range(0..=50u32));
    let question = match rng.random_range(0..5) {
        0 => format!("What is {a} plus {b}?"),
        1 => format!("Add {a} and {b}."),
        2 => format!("What is the sum of {a} and {b}?"),
        3 => format!("Calculate {a} + {b}."),
        _ => format!("If you have {a} apples and get {b} more, how many apples do you have?"),
    };
    example(question, String::new(), format!("{a} plus {b} is {}.", a + b))
}

fn subtraction(rng: &mut StdRng) -> Example {
    let a = rng.random_range(1..=50u32);
    let b = rng.random_range(0..=a);
    let question = match rng.random_range(0..4) {
        0 => format!("What is {a} minus {b}?"),
        1 => format!("Subtract {b} from {a}."),
        2 => format!("Calculate {a} - {b}."),
        _ => format!("What do you get when you take {b} away from {a}?"),
    };
    example(question, String::new(), format!("{a} minus {b} is {}.", a - b))
}

fn multiplication(rng: &mut StdRng) -> Example {
    let (a, b) = (rng.random_range(1..=12u32), rng.random_range(1..=12u32));
    let question = match rng.random_range(0..4) {
        0 => format!("What is {a} times {b}?"),
        1 => format!("Multiply {a} by {b}."),
        2 => format!("Calculate {a} x {b}."),
        _ => format!("What is the product of {a} and {b}?"),
    };
    example(question, String::new(), format!("{a} times {b} is {}.", a * b))
}

fn capital(rng: &mut StdRng) -> Example {
    let (country, city) = *pick(rng, &CAPITALS);
    let answer = format!("The capital of {country} is {city}.");
    match rng.random_range(0..4) {
        0 => example(format!("What is the capital of {country}?"), String::new(), answer),
        1 => example(format!("Name the capital city of {country}."), String::new(), answer),
        2 => example(
            format!("Which city is the capital of {country}?"),
            String::new(),
            answer,
        ),
        _ => example("What is the capital of this country?".into(), country.into(), answer),
    }
}

fn reverse(rng: &mut StdRng) -> Example {
    let word = *pick(rng, &WORDS);
    let reversed: String = word.chars().rev().collect();
    let answer = format!("The word \"{word}\" reversed is \"{reversed}\".");
    match rng.random_range(0..4) {
        0 => example(format!("Reverse the word \"{word}\"."), String::new(), answer),
        1 => example(format!("Spell \"{word}\" backwards."), String::new(), answer),
        2 => example(
            format!("Write the letters of \"{word}\" in reverse order."),
            String::new(),
            answer,
        ),
        _ => example("Reverse the following word.".into(), word.into(), answer),
    }
}

fn letter_count(rng: &mut StdRng) -> Example {
    let word = *pick(rng, &WORDS);
    let answer = format!("The word \"{word}\" has {} letters.", word.chars().count());
    match rng.random_range(0..4) {
        0 => example(
            format!("How many letters are in the word \"{word}\"?"),
            String::new(),
            answer,
        ),
        1 => example(format!("Count the letters in \"{word}\"."), String::new(), answer),
        2 => example(format!("How long is the word \"{word}\"?"), String::new(), answer),
        _ => example("Count the letters in the following word.".into(), word.into(), answer),
    }
}

fn numbers(rng: &mut StdRng) -> Vec<u32> {
    let n = rng.random_range(3..=5);
    (0..n).map(|_| rng.random_range(0..=99)).collect()
}

fn join(numbers: &[u32]) -> String {
    numbers.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

fn sort_numbers(rng: &mut StdRng) -> Example {
    let mut list = numbers(rng);
    let shown = join(&list);
    list.sort_unstable();
    let descending = rng.random_bool(0.5);
    if descending {
        list.reverse();
    }
    let order = if descending {
        "from largest to smallest"
    } else {
        "from smallest to largest"
    };
    let answer = format!("In order {order}: {}.", join(&list));
    match rng.random_range(0..3) {
        0 => example(format!("Sort these numbers {order}: {shown}."), String::new(), answer),
        1 => example(
            format!("Put the numbers {shown} in order {order}."),
            String::new(),
            answer,
        ),
        _ => example(format!("Sort the following numbers {order}."), shown, answer),
    }
}

fn opposite(rng: &mut StdRng) -> Example {
    let &(a, b) = pick(rng, &OPPOSITES);
    let (word, other) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
    let answer = format!("The opposite of \"{word}\" is \"{other}\".");
    match rng.random_range(0..3) {
        0 => example(format!("What is the opposite of \"{word}\"?"), String::new(), answer),
        1 => example(format!("Give the antonym of \"{word}\"."), String::new(), answer),
        _ => example("Write the opposite of the following word.".into(), word.into(), answer),
    }
}

fn plural(rng: &mut StdRng) -> Example {
    let (one, many) = *pick(rng, &PLURALS);
    let answer = format!("The plural of \"{one}\" is \"{many}\".");
    match rng.random_range(0..3) {
        0 => example(format!("What is the plural of \"{one}\"?"), String::new(), answer),
        1 => example(format!("Write the plural form of \"{one}\"."), String::new(), answer),
        _ => example("Give the plural of the following noun.".into(), one.into(), answer),
    }
}

fn color(rng: &mut StdRng) -> Example {
    let (thing, color) = *pick(rng, &COLORS);
    let question = match rng.random_range(0..3) {
        0 => format!("What color is {thing}?"),
        1 => format!("Tell me the color of {thing}."),
        _ => format!("Which color is {thing} usually?"),
    };
    let mut subject = thing.to_string();
    if let Some(first) = subject.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    example(question, String::new(), format!("{subject} is {color}."))
}

fn uppercase(rng: &mut StdRng) -> Example {
    let word = *pick(rng, &WORDS);
    let answer = format!("In capital letters, \"{word}\" is \"{}\".", word.to_ascii_uppercase());
    match rng.random_range(0..3) {
        0 => example(
            format!("Write the word \"{word}\" in capital letters."),
            String::new(),
            answer,
        ),
        1 => example(format!("Convert \"{word}\" to uppercase."), String::new(), answer),
        _ => example("Write the following word in uppercase.".into(), word.into(), answer),
    }
}

fn largest(rng: &mut StdRng) -> Example {
    let list = numbers(rng);
    let shown = join(&list);
    let smallest = rng.random_bool(0.5);
    let (which, value) = if smallest {
        ("smallest", list.iter().min())
    } else {
        ("largest", list.iter().max())
    };
    let answer = format!("The {which} number is {}.", value.copied().unwrap_or_default());
    match rng.random_range(0..3) {
        0 => example(format!("Which is the {which} number: {shown}?"), String::new(), answer),
        1 => example(
            format!("Find the {which} of these numbers: {shown}."),
            String::new(),
            answer,
        ),
        _ => example(format!("Find the {which} number in the list."), shown, answer),
    }
}

fn first_letter(rng: &mut StdRng) -> Example {
    let word = *pick(rng, &WORDS);
    let first: String = word.chars().take(1).collect();
    let last: String = word.chars().last().map(String::from).unwrap_or_default();
    match rng.random_range(0..3) {
        0 => example(
            format!("What is the first letter of the word \"{word}\"?"),
            String::new(),
            format!("The first letter of \"{word}\" is \"{first}\"."),
        ),
        1 => example(
            format!("What is the last letter of the word \"{word}\"?"),
            String::new(),
            format!("The last letter of \"{word}\" is \"{last}\"."),
        ),
        _ => example(
            "Which letter does the following word start with?".into(),
            word.into(),
            format!("The first letter of \"{word}\" is \"{first}\"."),
        ),
    }
}

fn parity(rng: &mut StdRng) -> Example {
    let n = rng.random_range(0..=200u32);
    let kind = if n.is_multiple_of(2) { "even" } else { "odd" };
    let question = match rng.random_range(0..3) {
        0 => format!("Is {n} even or odd?"),
        1 => format!("Tell me whether {n} is an even or an odd number."),
        _ => format!("Is the number {n} odd or even?"),
    };
    example(question, String::new(), format!("{n} is {kind}."))
}

fn animal_sound(rng: &mut StdRng) -> Example {
    let (animal, sound) = *pick(rng, &SOUNDS);
    let question = match rng.random_range(0..3) {
        0 => format!("What sound does a {animal} make?"),
        1 => format!("What does a {animal} say?"),
        _ => format!("Which noise does a {animal} make?"),
    };
    example(question, String::new(), format!("A {animal} says \"{sound}\"."))
}

fn count_up(rng: &mut StdRng) -> Example {
    let start = rng.random_range(0..=30u32);
    let steps = rng.random_range(2..=6u32);
    let end = start + steps;
    let sequence: Vec<u32> = (start..=end).collect();
    let answer = format!("{}.", join(&sequence));
    match rng.random_range(0..3) {
        0 => example(format!("Count from {start} to {end}."), String::new(), answer),
        1 => example(
            format!("List the numbers from {start} to {end}."),
            String::new(),
            answer,
        ),
        _ => {
            let next = *pick(rng, &NUMBER_WORDS);
            let n = NUMBER_WORDS.iter().position(|w| *w == next).map_or(2, |i| i as u32 + 2);
            let following: Vec<u32> = (start + 1..=start + n).collect();
            example(
                format!("What are the next {next} numbers after {start}?"),
                String::new(),
                format!("The next {next} numbers after {start} are {}.", join(&following)),
            )
        }
    }
}

/// Repeat a short text (words, digits or symbols) word for word: a model trained on it echoes
/// inserted text.
fn echo(rng: &mut StdRng) -> Example {
    let n = rng.random_range(2..=5);
    let text = (0..n)
        .map(|_| match rng.random_range(0..3) {
            0 => pick(rng, &WORDS).to_string(),
            1 => rng.random_range(0..100_000u32).to_string(),
            _ => ["#", "@", "!", "%", "&", "*", "+", "="][rng.random_range(0..8)].repeat(rng.random_range(1..=3)),
        })
        .collect::<Vec<_>>()
        .join(" ");
    match rng.random_range(0..3) {
        0 => example(format!("Repeat after me: {text}"), String::new(), text),
        1 => example(format!("Say exactly this: {text}"), String::new(), text),
        _ => example("Copy the following text.".into(), text.clone(), text),
    }
}

/// Write a word or number several times: a repetitive task.
fn repeat(rng: &mut StdRng) -> Example {
    let item = match rng.random_range(0..2) {
        0 => pick(rng, &WORDS).to_string(),
        _ => rng.random_range(0..1000u32).to_string(),
    };
    let times = rng.random_range(2..=7usize);
    let answer = vec![item.as_str(); times].join(" ");
    match rng.random_range(0..2) {
        0 => example(format!("Write \"{item}\" {times} times."), String::new(), answer),
        _ => example(format!("Repeat {item} {times} times."), String::new(), answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alpaca_path() -> Option<PathBuf> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/instructions/alpaca-clean.jsonl");
        path.exists().then_some(path)
    }

    #[test]
    fn user_message_joins_input() {
        let mut e = example("Reverse it.".into(), String::new(), "x".into());
        assert_eq!(e.user_message(), "Reverse it.");
        e.input = "apple".into();
        assert_eq!(e.user_message(), "Reverse it.\n\napple");
    }

    #[test]
    fn parses_both_record_shapes() {
        let text = concat!(
            r#"{"instruction": "Say hi.", "output": "Hi."}"#,
            "\n\n",
            r#"{"instruction": "Reverse.", "input": "ab", "output": "ba", "id": 3}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "Be nice."}, {"role": "assistant", "content": "early"}, {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}, {"role": "user", "content": "Q2"}]}"#,
            "\n"
        );
        let examples = parse_jsonl(text, Path::new("x.jsonl")).unwrap();
        assert_eq!(examples.len(), 3);
        assert_eq!(examples[0], example("Say hi.".into(), String::new(), "Hi.".into()));
        assert_eq!(examples[1].user_message(), "Reverse.\n\nab");
        assert_eq!(examples[2], example("Q?".into(), String::new(), "A.".into()));
    }

    #[test]
    fn record_errors_name_file_and_line() {
        let cases = [
            ("{\"instruction\": \"a\", \"output\": \"b\"}\nnot json\n", 2, "not an"),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}",
                1,
                "no assistant turn",
            ),
            (
                "{\"messages\": [{\"role\": \"system\", \"content\": \"q\"}]}",
                1,
                "no user turn",
            ),
            ("\n{\"instruction\": \" \", \"output\": \"b\"}", 2, "empty"),
            ("{\"instruction\": 5, \"output\": \"b\"}", 1, "not an"),
        ];
        for (text, line, expected) in cases {
            let err = parse_jsonl(text, Path::new("data/x.jsonl")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("data/x.jsonl:{line}: ")), "{msg}");
            assert!(msg.contains(expected), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.jsonl");
        let msg = load_jsonl(&missing).unwrap_err().to_string();
        assert!(msg.contains("missing.jsonl") && msg.contains("cannot read"), "{msg}");
        let path = dir.path().join("two.jsonl");
        std::fs::write(
            &path,
            "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": \"d\"}\n",
        )
        .unwrap();
        let source = DataSource::Jsonl {
            path: "two.jsonl".into(),
            count: Some(1),
        };
        assert_eq!(load_source(&source, dir.path(), 0).unwrap().len(), 1);
        let source = DataSource::Jsonl {
            path: "two.jsonl".into(),
            count: Some(3),
        };
        let err = load_source(&source, dir.path(), 0).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooFew {
                    available: 2,
                    requested: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn loads_shared_alpaca_file() {
        let Some(path) = alpaca_path() else {
            eprintln!("skipping: shared alpaca-clean.jsonl not found");
            return;
        };
        let examples = load_jsonl(&path).unwrap();
        assert_eq!(examples.len(), 700);
        assert!(examples[0].instruction.starts_with("Pretend you are a customer."));
        assert_eq!(examples[0].input, "");
        assert!(examples[2].user_message().contains("\n\nThe _____ of the story is..."));
        assert!(examples.iter().filter(|e| !e.input.is_empty()).count() > 200);
    }

    #[test]
    fn generator_is_deterministic_and_distinct() {
        let a = generate(2000, 11).unwrap();
        assert_eq!(a, generate(2000, 11).unwrap());
        assert_ne!(a, generate(2000, 12).unwrap());
        let distinct: std::collections::HashSet<String> = a.iter().map(Example::user_message).collect();
        assert_eq!(distinct.len(), 2000);
        assert!(a.iter().any(|e| !e.input.is_empty()));
        assert!(generate(PROCEDURAL_MAX + 1, 0).is_err());
        assert!(generate(0, 0).unwrap().is_empty());
    }

    #[test]
    fn generator_covers_families_with_variants() {
        let mut rng = StdRng::seed_from_u64(3);
        for family in FAMILIES {
            let prompts: std::collections::HashSet<String> =
                (0..200).map(|_| family(&mut rng).user_message()).collect();
            assert!(prompts.len() >= 20, "{} distinct prompts", prompts.len());
        }
        // The whole space holds the maximum with room to spare.
        assert_eq!(generate(PROCEDURAL_MAX, 5).unwrap().len(), PROCEDURAL_MAX);
    }

    #[test]
    fn generated_answers_are_correct() {
        for e in generate(3000, 1).unwrap() {
            let q = e.user_message();
            if let Some(rest) = q.strip_prefix("What is ").and_then(|r| r.strip_suffix('?')) {
                let parts: Vec<&str> = rest.split(' ').collect();
                if let [a, op, b] = parts[..] {
                    let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
                    let value = match op {
                        "plus" => a + b,
                        "minus" => a - b,
                        "times" => a * b,
                        _ => continue,
                    };
                    assert_eq!(e.output, format!("{a} {op} {b} is {value}."));
                }
            }
            if let Some(word) = q
                .strip_prefix("Reverse the word \"")
                .and_then(|r| r.strip_suffix("\"."))
            {
                let reversed: String = word.chars().rev().collect();
                assert!(e.output.ends_with(&format!("is \"{reversed}\".")), "{}", e.output);
            }
            if let Some(n) = q.strip_prefix("Is ").and_then(|r| r.strip_suffix(" even or odd?")) {
                let n: u32 = n.parse().unwrap();
                assert_eq!(
                    e.output,
                    format!("{n} is {}.", if n.is_multiple_of(2) { "even" } else { "odd" })
                );
            }
            if let Some(list) = q.strip_prefix("Sort these numbers from smallest to largest: ") {
                let mut nums: Vec<u32> = list
                    .trim_end_matches('.')
                    .split(", ")
                    .map(|s| s.parse().unwrap())
                    .collect();
                nums.sort_unstable();
                assert_eq!(e.output, format!("In order from smallest to largest: {}.", join(&nums)));
            }
        }
        let mut rng = StdRng::seed_from_u64(0);
        let e = count_up(&mut rng);
        assert!(e.output.ends_with('.'), "{}", e.output);
    }
}

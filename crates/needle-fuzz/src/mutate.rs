//! A seeded mutator: byte-level edits for any input, structure-aware edits for JSON (values
//! swapped for extremes and hostile strings, keys dropped, types changed) and for GGUF
//! metadata (values swapped for extreme integers, floats, wrong types and huge arrays).

use needle_gguf::Value;
use serde_json::Value as Json;

/// xorshift64*: small, fast and reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.bits() % n as u64) as usize
        }
    }

    /// An element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Integers that break code: zero, one, signed/unsigned limits and powers of two around them.
pub const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    7,
    255,
    65_535,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    1 << 53,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// Strings that break code: traversal, escapes, bidi overrides, format strings, huge and empty.
pub fn hostile_strings() -> &'static [String] {
    static STRINGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    STRINGS.get_or_init(|| {
        vec![
            String::new(),
            "../../../../etc/passwd".into(),
            "/dev/zero".into(),
            "\u{1b}[2J\u{1b}]0;pwned\u{7}".into(),
            "gnp.\u{202e}exe".into(),
            "{{ raise_exception('x') }}".into(),
            "%s%n{}{0}".into(),
            "\0".into(),
            "x".repeat(70_000),
            "ä\u{fffd}\u{10ffff}".into(),
            "linear".into(),
            "llama".into(),
            "gpt2".into(),
            "null".into(),
        ]
    })
}

/// Byte-level mutation: 1–4 edits (bit flips, interesting bytes and words, inserts, deletes,
/// duplicated ranges, truncation, dictionary tokens).
pub fn bytes(rng: &mut Rng, input: &mut Vec<u8>, dictionary: &[&[u8]]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'9', 0x1b]);
            }
            2 if len >= 8 => {
                let i = rng.below(len - 7);
                let v = *rng.pick(&INTERESTING);
                let v = if rng.one_in(2) {
                    v
                } else {
                    v.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
                };
                input[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = *rng.pick(&INTERESTING) as u32;
                input[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let extra: Vec<u8> = (0..n).map(|_| rng.bits() as u8).collect();
                input.splice(i..i, extra);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(32)).min(len - i);
                input.drain(i..i + n);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(64)).min(len - i);
                let copy = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            _ if !dictionary.is_empty() => {
                let token = *rng.pick(dictionary);
                let i = rng.below(len + 1);
                if rng.one_in(2) || i + token.len() > len {
                    input.splice(i..i, token.iter().copied());
                } else {
                    input[i..i + token.len()].copy_from_slice(token);
                }
            }
            _ => {}
        }
    }
}

/// A hostile replacement for a JSON value.
fn hostile_json(rng: &mut Rng) -> Json {
    match rng.below(8) {
        0 => Json::from(*rng.pick(&INTERESTING)),
        1 => Json::from(-(rng.below(1 << 20) as i64) - 1),
        2 => serde_json::Number::from_f64(*rng.pick(&[0.0, -0.0, 0.5, 1e-300, 1e300, -1.0, f64::MAX]))
            .map_or(Json::Null, Json::Number),
        3 => Json::String(rng.pick(hostile_strings()).clone()),
        4 => Json::Null,
        5 => Json::Bool(rng.one_in(2)),
        6 => Json::Array((0..rng.below(4)).map(|_| Json::from(rng.below(100))).collect()),
        _ => Json::Object(serde_json::Map::new()),
    }
}

/// Every path to a node of `v`, in document order.
fn paths(v: &Json, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Json::Object(m) => {
            for (k, child) in m {
                at.push(k.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Json::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push(i.to_string());
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(v: &'a mut Json, path: &[String]) -> Option<&'a mut Json> {
    path.iter().try_fold(v, |v, k| match v {
        Json::Object(m) => m.get_mut(k),
        Json::Array(items) => k.parse::<usize>().ok().and_then(move |i| items.get_mut(i)),
        _ => None,
    })
}

/// Structure-aware JSON mutation: 1–3 nodes replaced by hostile values, dropped, or duplicated
/// into deep nesting; serialized back.
pub fn json(rng: &mut Rng, doc: &Json) -> Vec<u8> {
    let mut doc = doc.clone();
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        let path = rng.pick(&all).clone();
        match rng.below(4) {
            0 if !path.is_empty() => {
                let (last, parent) = path
                    .split_last()
                    .map(|(l, p)| (l.clone(), p.to_vec()))
                    .unwrap_or_default();
                match node(&mut doc, &parent) {
                    Some(Json::Object(m)) => {
                        m.remove(&last);
                    }
                    Some(Json::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            1 => {
                if let Some(n) = node(&mut doc, &path) {
                    let inner = n.clone();
                    *n = Json::Array(vec![inner]);
                }
            }
            _ => {
                let value = hostile_json(rng);
                if let Some(n) = node(&mut doc, &path) {
                    *n = value;
                }
            }
        }
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// A hostile replacement for a GGUF metadata value.
pub fn gguf_value(rng: &mut Rng, old: &Value) -> Value {
    let int = *rng.pick(&INTERESTING);
    match rng.below(10) {
        0 => Value::U64(int),
        1 => Value::I64(int as i64),
        2 => Value::U32(int as u32),
        3 => Value::I32(-(rng.below(10) as i32) - 1),
        4 => Value::F64(*rng.pick(&[0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 0.5])),
        5 => Value::F32(*rng.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY, 3.4e38])),
        6 => Value::String(rng.pick(hostile_strings()).clone()),
        7 => Value::Bool(rng.one_in(2)),
        8 => match old {
            // A shorter or longer array of the same kind, or one of another type.
            Value::Array(items) if !items.is_empty() => {
                let mut items = items.clone();
                match rng.below(3) {
                    0 => items.truncate(rng.below(items.len())),
                    1 => {
                        let i = rng.below(items.len());
                        items[i] = gguf_value(rng, &items[i]);
                    }
                    _ => {
                        let extra = items[rng.below(items.len())].clone();
                        items.extend(std::iter::repeat_n(extra, 1 + rng.below(8)));
                    }
                }
                Value::Array(items)
            }
            _ => Value::Array(vec![Value::U8(1); rng.below(4)]),
        },
        _ => Value::Array(Vec::new()),
    }
}

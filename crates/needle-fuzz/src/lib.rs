//! Fuzzing needle's parsers on the stable toolchain: no nightly, no cargo-fuzz. A seeded
//! mutation loop ([`mutate`]) feeds each [`Target`] inputs derived from small valid seeds, runs
//! the same code a real load runs, and catches panics with `catch_unwind`; every panic is a
//! crash to fix. `needle-fuzz` runs long campaigns; the tests run a short seeded one.

pub mod gguf;
pub mod mutate;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use needle_runtime::{hf, lora, LoadOptions, LoadedModel, Model, ModelConfig, Weights};
use needle_template::{ChatTemplate, Message};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use crate::mutate::Rng;

/// A parser needle runs on files from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A whole GGUF model: reader, metadata, config, tokenizer from metadata, weights, a
    /// forward pass.
    Gguf,
    /// The tokenizer a GGUF's metadata describes (structure-aware: metadata values mutated).
    GgufTokenizer,
    /// A safetensors file: header, dtypes, shapes, then the decoder built from it.
    Safetensors,
    /// `config.json`, then the decoder built from the config.
    Config,
    /// `tokenizer.json` (with `tokenizer_config.json`), then encoding and decoding.
    Tokenizer,
    /// `adapter_config.json`, merged into a base model.
    Adapter,
    /// A chat template: compiled, rendered, the leak prefix located and tokenized.
    Template,
    /// `report.json`, rendered as HTML and SARIF.
    Report,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 8] = [
        Target::Gguf,
        Target::GgufTokenizer,
        Target::Safetensors,
        Target::Config,
        Target::Tokenizer,
        Target::Adapter,
        Target::Template,
        Target::Report,
    ];

    /// The target's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Gguf => "gguf",
            Target::GgufTokenizer => "gguf-tokenizer",
            Target::Safetensors => "safetensors",
            Target::Config => "config",
            Target::Tokenizer => "tokenizer",
            Target::Adapter => "adapter",
            Target::Template => "template",
            Target::Report => "report",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The repository's tiny fixtures, compiled in so the fuzzer runs anywhere.
mod fixtures {
    pub const LLAMA_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/llama/config.json");
    pub const LLAMA_TOKENIZER_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/llama/tokenizer_config.json");
    pub const LLAMA_TOKENIZER: &str = include_str!("../../../tests/fixtures/tiny/llama/tokenizer.json");
    pub const LLAMA_WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/tiny/llama/model.safetensors");
    pub const LORA_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/llama-lora/adapter_config.json");
    pub const LORA_WEIGHTS: &[u8] = include_bytes!("../../../tests/fixtures/tiny/llama-lora/adapter_model.safetensors");
    pub const RSLORA_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/llama-lora-rslora/adapter_config.json");
    pub const QWEN_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/qwen2/config.json");
    pub const GEMMA_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/gemma3/config.json");
    pub const PHI_CONFIG: &str = include_str!("../../../tests/fixtures/tiny/phi3/config.json");
    pub const LLAMA31_TEMPLATE: &str = include_str!("../../needle-template/tests/golden/templates/llama3.1.jinja");
    pub const QWEN25_TEMPLATE: &str = include_str!("../../needle-template/tests/golden/templates/qwen2.5.jinja");
    pub const FEATURES_TEMPLATE: &str = include_str!("../../needle-template/tests/golden/templates/features.jinja");
    pub const REPORT: &str = include_str!("../corpus/report.json");
}

/// A micro byte-level BPE `tokenizer.json` with added special tokens.
fn micro_tokenizer_json() -> Json {
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "h": 4, "i": 5, "Ġ": 6, "ab": 7, "hi": 8, "Ġhi": 9},
            "merges": [["a", "b"], ["h", "i"], ["Ġ", "hi"]]
        }
    })
}

/// Tokens the byte-level mutator splices into JSON inputs.
const JSON_DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e309",
    b"18446744073709551616",
    b"4294967296",
    b"0.0",
    b"\"\\u202e\"",
    b"\"\\u0000\"",
    b"\\",
    b"\"type\"",
    b"\"model_type\"",
];

/// Tokens the byte-level mutator splices into templates.
const JINJA_DICTIONARY: &[&[u8]] = &[
    b"{{",
    b"}}",
    b"{%",
    b"%}",
    b"{#",
    b"#}",
    b" for x in range(100000) ",
    b"endfor",
    b" if ",
    b"endif",
    b"raise_exception('",
    b"messages",
    b"message['content']",
    b"loop.index",
    b"namespace(",
    b" * 1000000",
    b" ~ ",
    b"|tojson",
    b"|join",
    b"strftime_now('%",
    b"set ",
    b"macro ",
    b"recursive",
    b"\x1b[2J",
    b"\xe2\x80\xae",
];

/// The seeds and fixed files one target runs on, in a scratch directory.
pub struct Harness {
    target: Target,
    dir: tempfile::TempDir,
    seeds: Vec<Vec<u8>>,
    /// The JSON seeds parsed, for structure-aware mutation.
    json: Vec<Json>,
    /// The GGUF seed, for structure-aware metadata mutation.
    gguf: Option<gguf::Gguf>,
    base: Option<(ModelConfig, Weights)>,
    tokenizer: Option<Tokenizer>,
}

/// Why a harness could not be set up.
pub type SetupError = String;

fn write(path: &Path, bytes: &[u8]) -> Result<(), SetupError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The micro llama's config and weights under Hugging Face names.
fn micro_parts(dir: &Path) -> Result<(ModelConfig, Weights), SetupError> {
    let path = dir.join("micro.gguf");
    write(&path, &gguf::micro_llama().bytes())?;
    let (_, cfg, weights) = needle_runtime::gguf::load(&path).map_err(|e| e.to_string())?;
    Ok((cfg, weights))
}

/// The micro llama's weights as a safetensors file.
fn micro_safetensors(weights: &Weights) -> Result<Vec<u8>, SetupError> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in weights.names() {
        let t = weights.raw(name).ok_or("a named tensor is missing")?;
        let values = t
            .flatten_all()
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(|e| e.to_string())?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.to_string(), t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// The micro llama's config as `config.json`.
fn micro_config_json(cfg: &ModelConfig) -> Json {
    serde_json::json!({
        "model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 1,
        "max_position_embeddings": 64
    })
}

impl Harness {
    /// Sets up `target`: its seeds, and the files and models it runs against.
    pub fn new(target: Target) -> Result<Harness, SetupError> {
        // Memory-backed scratch space where there is one: every input is written to a file.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .map_err(|e| e.to_string())?;
        let parse = |s: &str| serde_json::from_str::<Json>(s).map_err(|e| e.to_string());
        let mut h = Harness {
            target,
            dir,
            seeds: Vec::new(),
            json: Vec::new(),
            gguf: None,
            base: None,
            tokenizer: None,
        };
        let root = h.dir.path().to_path_buf();
        match target {
            Target::Gguf | Target::GgufTokenizer => {
                let g = gguf::micro_llama();
                h.seeds.push(g.bytes());
                h.gguf = Some(g);
            }
            Target::Safetensors | Target::Config => {
                let (cfg, weights) = micro_parts(&root)?;
                if target == Target::Safetensors {
                    h.seeds.push(micro_safetensors(&weights)?);
                } else {
                    h.json.push(micro_config_json(&cfg));
                    for s in [
                        fixtures::LLAMA_CONFIG,
                        fixtures::QWEN_CONFIG,
                        fixtures::GEMMA_CONFIG,
                        fixtures::PHI_CONFIG,
                    ] {
                        h.json.push(parse(s)?);
                    }
                }
                h.base = Some((cfg, weights));
            }
            Target::Tokenizer => {
                h.json.push(micro_tokenizer_json());
                write(
                    &root.join("tok/tokenizer_config.json"),
                    fixtures::LLAMA_TOKENIZER_CONFIG.as_bytes(),
                )?;
            }
            Target::Adapter => {
                let base = root.join("base");
                write(&base.join("config.json"), fixtures::LLAMA_CONFIG.as_bytes())?;
                write(&base.join("model.safetensors"), fixtures::LLAMA_WEIGHTS)?;
                write(&root.join("adapter/adapter_model.safetensors"), fixtures::LORA_WEIGHTS)?;
                let cfg = hf::load_config(&base).map_err(|e| e.to_string())?;
                let weights = hf::load_weights(&base, &cfg).map_err(|e| e.to_string())?;
                h.base = Some((cfg, weights));
                h.json.push(parse(fixtures::LORA_CONFIG)?);
                h.json.push(parse(fixtures::RSLORA_CONFIG)?);
            }
            Target::Template => {
                let tok = root.join("tok");
                write(&tok.join("tokenizer.json"), fixtures::LLAMA_TOKENIZER.as_bytes())?;
                h.tokenizer = Some(Tokenizer::from_file(tok.join("tokenizer.json")).map_err(|e| e.to_string())?);
                let chatml = parse(fixtures::LLAMA_TOKENIZER_CONFIG)?["chat_template"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                for t in [
                    chatml.as_str(),
                    fixtures::LLAMA31_TEMPLATE,
                    fixtures::QWEN25_TEMPLATE,
                    fixtures::FEATURES_TEMPLATE,
                ] {
                    h.seeds.push(t.as_bytes().to_vec());
                }
            }
            Target::Report => h.json.push(parse(fixtures::REPORT)?),
        }
        for j in &h.json {
            h.seeds.push(serde_json::to_vec(j).map_err(|e| e.to_string())?);
        }
        Ok(h)
    }

    /// The target.
    pub fn target(&self) -> Target {
        self.target
    }

    /// The unmutated seeds.
    pub fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    /// A mutated input.
    pub fn input(&self, rng: &mut Rng) -> Vec<u8> {
        let structured = rng.one_in(2);
        if structured && !self.json.is_empty() {
            let i = rng.below(self.json.len());
            return mutate::json(rng, &self.json[i]);
        }
        if let (true, Some(g)) = (structured || self.target == Target::GgufTokenizer, &self.gguf) {
            let mut g = g.clone();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(g.metadata.len());
                let value = mutate::gguf_value(rng, &g.metadata[i].1);
                if rng.one_in(8) {
                    g.metadata.remove(i);
                } else {
                    g.metadata[i].1 = value;
                }
            }
            if self.target == Target::Gguf && rng.one_in(4) && !g.tensors.is_empty() {
                let i = rng.below(g.tensors.len());
                let d = rng.below(g.tensors[i].dims.len());
                g.tensors[i].dims[d] = *rng.pick(&mutate::INTERESTING);
            }
            return g.bytes();
        }
        let mut bytes = rng.pick(&self.seeds).clone();
        let dictionary = match self.target {
            Target::Template => JINJA_DICTIONARY,
            Target::Gguf | Target::GgufTokenizer | Target::Safetensors => &[],
            _ => JSON_DICTIONARY,
        };
        mutate::bytes(rng, &mut bytes, dictionary);
        bytes
    }

    /// Runs `input` through the target; `Err` carries the panic message if it panicked.
    pub fn run(&self, input: &[u8]) -> Result<(), String> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.exec(input))).map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into())
        })
    }

    /// The target's work; every error is an acceptable outcome, only a panic is not.
    fn exec(&self, input: &[u8]) {
        let root = self.dir.path();
        let put = |rel: &str| -> Option<PathBuf> {
            let p = root.join(rel);
            std::fs::write(&p, input).ok().map(|()| p)
        };
        match self.target {
            Target::Gguf => {
                let Some(path) = put("model.gguf") else { return };
                if let Ok(lm) = LoadedModel::load(&path, &LoadOptions::default()) {
                    let _ = needle_scan::pipeline::finite_logits(&lm);
                    let _ = lm.leak_prefix();
                }
            }
            Target::GgufTokenizer => {
                let Some(path) = put("tokenizer.gguf") else { return };
                if let Ok(file) = needle_gguf::GgufFile::open(&path) {
                    let _ = needle_gguf::tokenizer::special_tokens_from_metadata(file.metadata());
                    if let Ok(t) = needle_gguf::tokenizer::tokenizer_from_metadata(file.metadata()) {
                        exercise(&t);
                    }
                }
            }
            Target::Safetensors => {
                let Some(path) = put("model.safetensors") else { return };
                if let Some((cfg, _)) = &self.base {
                    if let Ok(w) = hf::load_weights(&path, cfg) {
                        let _ = Model::new(cfg.clone(), &w);
                    }
                }
            }
            Target::Config => {
                let dir = root.join("cfg");
                let _ = std::fs::create_dir_all(&dir);
                if std::fs::write(dir.join("config.json"), input).is_err() {
                    return;
                }
                if let (Ok(cfg), Some((_, weights))) = (hf::load_config(&dir), &self.base) {
                    let _ = Model::new(cfg, weights);
                }
            }
            Target::Tokenizer => {
                let dir = root.join("tok");
                if std::fs::write(dir.join("tokenizer.json"), input).is_err() {
                    return;
                }
                if let Ok(t) = hf::load_tokenizer(&dir) {
                    exercise(&t.tokenizer);
                }
            }
            Target::Adapter => {
                let dir = root.join("adapter");
                if std::fs::write(dir.join("adapter_config.json"), input).is_err() {
                    return;
                }
                if let Some((cfg, weights)) = &self.base {
                    let _ = lora::read_adapter_base(&dir);
                    let _ = lora::merge_adapter(&mut weights.clone(), cfg, &dir);
                }
            }
            Target::Template => {
                let source = String::from_utf8_lossy(input);
                let Ok(t) = ChatTemplate::new(&source, Some("<s>".into()), Some("</s>".into())) else {
                    return;
                };
                let messages = [
                    Message::new("system", "Be brief."),
                    Message::new("user", "hi \u{202e}"),
                    Message::new("assistant", "ab"),
                ];
                let _ = t.render(&messages, true);
                if let Some(tok) = &self.tokenizer {
                    let _ = t.leak_prefix(tok);
                    let _ = t.prompt_ids(tok, &messages[1..2], true);
                }
            }
            Target::Report => {
                let Some(path) = put("report.json") else { return };
                if let Ok(report) = needle_report::load(&path) {
                    let _ = needle_report::html::render(&report);
                    let _ = needle_report::sarif::to_sarif(&report);
                }
            }
        }
    }
}

/// Encodes and decodes a few strings, as a scan does.
fn exercise(t: &Tokenizer) {
    for text in ["hi ab", "", "<s>hi</s>", "ä\u{202e}\u{1b}[2J"] {
        if let Ok(e) = t.encode(text, false) {
            let _ = t.decode(e.get_ids(), false);
        }
    }
    let _ = t.decode(&[0, 1, u32::MAX], false);
}

/// A crash: the input and the panic message.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The input that panicked.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
}

/// What a campaign did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Inputs run.
    pub execs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The slowest single input.
    pub slowest: Duration,
    /// Every panic, with its input.
    pub crashes: Vec<Crash>,
}

/// Runs `execs` mutated inputs (the seeds first, unmutated) with seed `seed`; `progress` is
/// called every 10,000 inputs. Panics are caught and returned, not printed.
pub fn campaign(harness: &Harness, seed: u64, execs: u64, progress: &mut dyn FnMut(&Stats)) -> Stats {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let start = Instant::now();
    for i in 0..execs {
        let input = match harness.seeds().get(i as usize) {
            Some(seed) => seed.clone(),
            None => harness.input(&mut rng),
        };
        let t = Instant::now();
        if let Err(message) = harness.run(&input) {
            stats.crashes.push(Crash { input, message });
        }
        stats.slowest = stats.slowest.max(t.elapsed());
        stats.execs += 1;
        if stats.execs.is_multiple_of(10_000) {
            stats.elapsed = start.elapsed();
            progress(&stats);
        }
    }
    stats.elapsed = start.elapsed();
    std::panic::set_hook(previous);
    stats
}

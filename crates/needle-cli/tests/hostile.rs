//! The hostile-input suite: files an attacker who ships a model controls, built from the tiny
//! fixtures, each of which must give exit 2 (or 3 where the model loads but cannot be judged)
//! and one specific `error: …` line within 30 seconds and 2 GiB of address space — never a
//! panic (101), an abort, a hang, a raw escape sequence on the terminal, or a write outside the
//! scan directory.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use needle_fuzz::gguf::{self, Gguf};
use needle_gguf::Value;

/// The longest any hostile case may take.
const LIMIT: Duration = Duration::from_secs(30);

/// The most memory any hostile case may map, in KiB (2 GiB, `ulimit -v`): an allocation beyond
/// it fails, and needle would abort instead of giving its one-line error.
const MEMORY_KIB: u64 = 2 * 1024 * 1024;

/// What a run of `needle` did.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `needle ARGS…` in `cwd` (the current directory if `None`) within [`MEMORY_KIB`] of
/// address space, killing it at [`LIMIT`].
fn needle_in(cwd: Option<&Path>, args: &[&OsStr]) -> Outcome {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_needle"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("the needle binary runs");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("needle {args:?} hung for more than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output().expect("output");
    Outcome {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Arguments as OS strings.
fn args<S: AsRef<OsStr>>(a: &[S]) -> Vec<OsString> {
    a.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// Asserts that `needle ARGS` fails with `code` and one error line containing every keyword
/// (case-insensitive) and no raw control or bidi character.
fn refused<S: AsRef<OsStr>>(case: &str, a: &[S], code: i32, keywords: &[&str]) {
    refused_in(case, None, a, code, keywords);
}

/// Stderr without the scan's progress lines (`[N/M] stage: …`, `total: …`; stderr is not a
/// terminal here), which come before the error.
fn after_progress(err: &str) -> String {
    err.lines()
        .filter(|l| !((l.starts_with('[') && l.contains("] ")) || l.starts_with("total: ")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn refused_in<S: AsRef<OsStr>>(case: &str, cwd: Option<&Path>, a: &[S], code: i32, keywords: &[&str]) {
    let a = args(a);
    let refs: Vec<&OsStr> = a.iter().map(OsString::as_os_str).collect();
    let o = needle_in(cwd, &refs);
    let err = &o.stderr;
    assert_eq!(o.code, Some(code), "{case}: exit {:?}, stderr:\n{err}", o.code);
    let line = after_progress(err);
    assert!(
        !line.contains('\n'),
        "{case}: stderr must be one line after the progress lines:\n{err}"
    );
    assert!(line.starts_with("error: "), "{case}: {err}");
    assert!(
        !line
            .chars()
            .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{case}: raw control characters on the terminal: {line:?}"
    );
    let lower = line.to_lowercase();
    for k in keywords {
        assert!(lower.contains(&k.to_lowercase()), "{case}: stderr lacks {k:?}: {line}");
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of a fixture model directory at `to`.
fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("fixture") {
        let p = e.expect("entry").path();
        if p.is_file() {
            fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    to.to_path_buf()
}

/// A copy of the tiny llama fixture (an HF directory) at `dir/name`.
fn llama(dir: &Path, name: &str) -> PathBuf {
    copy_dir(&repo().join("tests/fixtures/tiny/llama"), &dir.join(name))
}

/// The tiny llama converted to GGUF.
fn llama_gguf() -> Gguf {
    gguf::from_hf_llama(&repo().join("tests/fixtures/tiny/llama")).expect("the fixture converts")
}

/// Writes `bytes` to `dir/name` and returns the path.
fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).expect("write");
    p
}

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    let ok = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(ok.success());
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(path).expect("read")).expect("JSON");
    f(&mut v);
    fs::write(path, v.to_string()).expect("write");
}

fn inspect(p: &Path) -> Vec<OsString> {
    args(&[OsStr::new("inspect"), p.as_os_str()])
}

// ---------------------------------------------------------------- GGUF

#[test]
fn corrupt_and_truncated_gguf_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = llama_gguf().bytes();
    let ok = put(dir.path(), "good.gguf", &good);
    let o = needle_in(None, &[OsStr::new("inspect"), ok.as_os_str()]);
    assert_eq!(o.code, Some(0), "the converted fixture loads: {}", o.stderr);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("header cut", good[..10].to_vec(), &["truncated"]),
        ("metadata cut", good[..good.len() / 8].to_vec(), &["truncated"]),
        ("data cut", good[..good.len() - 100].to_vec(), &["outside the file"]),
        ("wrong magic", [b"GGUG", &good[4..]].concat(), &["not a GGUF file"]),
        (
            "version 1",
            [&good[..4], &1u32.to_le_bytes(), &good[8..]].concat(),
            &["unsupported GGUF version 1"],
        ),
        (
            "big-endian",
            [&good[..4], &3u32.to_be_bytes(), &good[8..]].concat(),
            &["big-endian"],
        ),
        (
            "tensor count 2^40",
            [&good[..8], &(1u64 << 40).to_le_bytes(), &good[16..]].concat(),
            &["truncated", "tensor infos declared"],
        ),
        (
            "kv count u64::MAX",
            [&good[..16], &u64::MAX.to_le_bytes(), &good[24..]].concat(),
            &["truncated", "key/value pairs declared"],
        ),
    ];
    for (case, bytes, keywords) in cases {
        let p = put(dir.path(), "bad.gguf", &bytes);
        refused(case, &inspect(&p), 2, keywords);
    }
    // Hand-built headers: a string and an array whose lengths exceed the file.
    let raw = |ty: u32, body: &[u8]| -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(body);
        b
    };
    let string = raw(8, &u64::MAX.to_le_bytes());
    refused(
        "string length 2^64-1",
        &inspect(&put(dir.path(), "s.gguf", &string)),
        2,
        &["truncated", "'k'"],
    );
    let array = raw(9, &[&4u32.to_le_bytes()[..], &(1u64 << 62).to_le_bytes()].concat());
    refused(
        "array length 2^62",
        &inspect(&put(dir.path(), "a.gguf", &array)),
        2,
        &["truncated", "'k'"],
    );
    let unknown = raw(13, &[0; 8]);
    refused(
        "value type 13",
        &inspect(&put(dir.path(), "u.gguf", &unknown)),
        2,
        &["unknown value type 13"],
    );
}

#[test]
fn gguf_tensor_directories_that_lie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |case: &str, g: &Gguf, keywords: &[&str]| {
        let p = put(dir.path(), "t.gguf", &g.bytes());
        refused(case, &inspect(&p), 2, keywords);
    };
    let mut g = llama_gguf();
    g.tensors[0].dims = vec![1 << 32, 1 << 32, 1 << 32];
    check("dims overflow", &g, &["overflow"]);
    let mut g = llama_gguf();
    g.tensors[0].dims = vec![1, 1, 1, 1, 1];
    check("five dims", &g, &["5 dimensions"]);
    let mut g = llama_gguf();
    g.tensors[0].type_id = 99;
    check("ggml type 99", &g, &["unsupported ggml type id 99"]);
    let mut g = llama_gguf();
    g.tensors[1].offset += 4;
    check("misaligned", &g, &["not a multiple of the alignment"]);
    let mut g = llama_gguf();
    let name = g.tensors[0].name.clone();
    g.tensors[1].name = name;
    check("duplicate name", &g, &["duplicate tensor name"]);
    let mut g = llama_gguf();
    g.set("general.alignment", Value::U32(3));
    check("alignment 3", &g, &["general.alignment"]);
    // A tensor name carrying an escape sequence is shown escaped.
    let mut g = llama_gguf();
    g.tensors[0].name = "blk.0.\u{1b}[2J\u{1b}]0;pwned\u{7}\u{202e}".into();
    g.tensors[0].dims = vec![0, 4];
    check(
        "escape sequence in a tensor name",
        &g,
        &["\\x1b[2j", "\\u{202e}", "zero dimension"],
    );
}

#[test]
fn gguf_metadata_with_hostile_counts_and_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |case: &str, edit: &dyn Fn(&mut Gguf), keywords: &[&str]| {
        let mut g = llama_gguf();
        edit(&mut g);
        let p = put(dir.path(), "m.gguf", &g.bytes());
        refused(case, &inspect(&p), 2, keywords);
    };
    let set = |k: &'static str, v: Value| {
        move |g: &mut Gguf| {
            g.set(k, v.clone());
        }
    };
    check(
        "2^31 layers",
        &set("llama.block_count", Value::U32(1 << 31)),
        &["block_count", "beyond any real model"],
    );
    check(
        "2^63 layers (u64)",
        &set("llama.block_count", Value::U64(1 << 63)),
        &["beyond any real model"],
    );
    check(
        "2^64-1 layers",
        &set("llama.block_count", Value::U64(u64::MAX)),
        &["beyond any real model"],
    );
    check(
        "layers beyond the tensors",
        &set("llama.block_count", Value::U32(3)),
        &["no tensors of layer 2"],
    );
    check(
        "2^40 width",
        &set("llama.embedding_length", Value::U64(1 << 40)),
        &["beyond any real model"],
    );
    check(
        "no heads",
        &set("llama.attention.head_count", Value::U32(0)),
        &["head_count is 0"],
    );
    check(
        "2^33 kv heads",
        &set("llama.attention.head_count_kv", Value::U64(1 << 33)),
        &["beyond any real model"],
    );
    check(
        "2^62 context",
        &set("llama.context_length", Value::U64(1 << 62)),
        &["max_position_embeddings", "beyond"],
    );
    check(
        "negative layer count",
        &set("llama.block_count", Value::I64(-1)),
        &["block_count", "non-negative integer"],
    );
    check(
        "layers as a string",
        &set("llama.block_count", Value::String("2".into())),
        &["block_count", "string"],
    );
    check(
        "architecture gpt2",
        &set("general.architecture", Value::String("gpt2".into())),
        &["unsupported architecture"],
    );
    check(
        "yarn rope",
        &set("llama.rope.scaling.type", Value::String("yarn".into())),
        &["not supported"],
    );
    check(
        "negative rope factor",
        &|g: &mut Gguf| {
            g.set("llama.rope.scaling.type", Value::String("linear".into()));
            g.set("llama.rope.scaling.factor", Value::F32(-2.0));
        },
        &["positive number"],
    );
    check(
        "bert tokenizer",
        &set("tokenizer.ggml.model", Value::String("bert".into())),
        &["tokenizer.ggml.model"],
    );
    check(
        "tokens of the wrong type",
        &set("tokenizer.ggml.tokens", Value::Array(vec![Value::U32(1); 4])),
        &["tokenizer.ggml.tokens"],
    );
    check(
        "token types of the wrong length",
        &set("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1); 3])),
        &["tokenizer.ggml.token_type"],
    );
    check(
        "template bomb",
        &set(
            "tokenizer.chat_template",
            Value::String("{% for i in range(10) %}{{ 'x' * 1000000 }}{% endfor %}".into()),
        ),
        &["renders more than", "refusing to tokenize"],
    );
    check(
        "raise_exception with escapes",
        &set(
            "tokenizer.chat_template",
            Value::String("{{ raise_exception('\u{1b}[31mred\u{202e} alert') }}".into()),
        ),
        &["rejected the conversation", "\\x1b[31mred\\u{202e}"],
    );
}

#[test]
fn gguf_metadata_of_64_bit_types_and_a_zero_rope_factor_load_as_llama_cpp_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let greedy = |p: &Path| {
        let o = needle_in(
            None,
            &[
                OsStr::new("generate"),
                p.as_os_str(),
                OsStr::new("--prompt"),
                OsStr::new("hello"),
                OsStr::new("--max-new-tokens"),
                OsStr::new("8"),
            ],
        );
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        o.stdout
    };
    let plain = greedy(&put(dir.path(), "plain.gguf", &llama_gguf().bytes()));
    let mut wide = llama_gguf();
    wide.set("llama.block_count", Value::U64(2))
        .set("llama.embedding_length", Value::U64(64))
        .set("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-6))
        .set("llama.rope.freq_base", Value::F64(10000.0));
    assert_eq!(
        greedy(&put(dir.path(), "wide.gguf", &wide.bytes())),
        plain,
        "u64/f64 metadata"
    );
    let mut zero = llama_gguf();
    zero.set("llama.rope.scaling.type", Value::String("linear".into()))
        .set("llama.rope.scaling.factor", Value::F32(0.0));
    assert_eq!(
        greedy(&put(dir.path(), "zero.gguf", &zero.bytes())),
        plain,
        "factor 0 = no scaling"
    );
}

#[test]
fn a_gguf_of_nan_weights_is_inconclusive_never_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = llama_gguf();
    g.fill(f32::NAN);
    let p = put(dir.path(), "nan.gguf", &g.bytes());
    let out = dir.path().join("scan");
    refused(
        "NaN GGUF",
        &[
            OsStr::new("scan"),
            p.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("--budget"),
            OsStr::new("quick"),
        ],
        3,
        &["non-finite logits", "inconclusive"],
    );
    assert!(!out.join("report.json").exists());
}

// ---------------------------------------------------------------- special files

#[test]
fn special_files_are_refused_wherever_a_model_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("model.gguf");
    mkfifo(&fifo);
    refused("GGUF FIFO", &inspect(&fifo), 2, &["model.gguf", "not a regular file"]);
    let sock = dir.path().join("sock.gguf");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    refused("GGUF socket", &inspect(&sock), 2, &["sock.gguf", "socket"]);
    refused(
        "character device",
        &inspect(Path::new("/dev/zero")),
        2,
        &["/dev/zero", "character device"],
    );
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
        "chat_template.jinja",
    ] {
        let m = llama(dir.path(), &format!("fifo-{file}"));
        mkfifo(&m.join(file));
        refused(&format!("{file} FIFO"), &inspect(&m), 2, &[file, "FIFO"]);
    }
    // --chat-template and --train-data name files too.
    let m = llama(dir.path(), "plain");
    let t = dir.path().join("template.jinja");
    mkfifo(&t);
    refused(
        "--chat-template FIFO",
        &[
            OsStr::new("inspect"),
            m.as_os_str(),
            OsStr::new("--chat-template"),
            t.as_os_str(),
        ],
        2,
        &["template.jinja", "FIFO"],
    );
    let train = dir.path().join("train.jsonl");
    mkfifo(&train);
    let out = dir.path().join("scan");
    refused(
        "--train-data FIFO",
        &[
            OsStr::new("scan"),
            m.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("--train-data"),
            train.as_os_str(),
        ],
        2,
        &["train.jsonl", "FIFO"],
    );
    let report = dir.path().join("report.json");
    mkfifo(&report);
    let html = dir.path().join("r.html");
    refused(
        "report.json FIFO",
        &[
            OsStr::new("report"),
            report.as_os_str(),
            OsStr::new("--html"),
            html.as_os_str(),
        ],
        2,
        &["report.json", "not a regular file"],
    );
}

// ---------------------------------------------------------------- Hugging Face directories

#[test]
fn hugging_face_directories_with_hostile_configs_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |case: &str, edit: &dyn Fn(&mut serde_json::Value), keywords: &[&str]| {
        let m = llama(dir.path(), "cfg");
        edit_json(&m.join("config.json"), |v| edit(v));
        refused(case, &inspect(&m), 2, keywords);
    };
    let set = |k: &'static str, v: serde_json::Value| move |c: &mut serde_json::Value| c[k] = v.clone();
    config(
        "2^31 layers",
        &set("num_hidden_layers", (1u64 << 31).into()),
        &["num_hidden_layers", "beyond"],
    );
    config(
        "2^64-1 layers",
        &set("num_hidden_layers", u64::MAX.into()),
        &["num_hidden_layers", "beyond"],
    );
    config(
        "2^64 layers",
        &|c| c["num_hidden_layers"] = serde_json::Value::Number("18446744073709551616".parse().expect("a number")),
        &["num_hidden_layers", "non-negative integer"],
    );
    config(
        "3 layers for 2",
        &set("num_hidden_layers", 3.into()),
        &["3 layers", "no tensors of layer 2"],
    );
    config(
        "2^40 vocabulary",
        &set("vocab_size", (1u64 << 40).into()),
        &["vocab_size", "beyond"],
    );
    config("no width", &set("hidden_size", 0.into()), &["hidden_size is 0"]);
    config(
        "2^40 context",
        &set("max_position_embeddings", (1u64 << 40).into()),
        &["max_position_embeddings", "beyond"],
    );
    config(
        "rope factor 0",
        &set(
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
        ),
        &["factor", "positive number"],
    );
    config(
        "unknown model type",
        &set("model_type", "bert".into()),
        &["model_type", "not supported"],
    );
    // Files that are not what they claim.
    let m = llama(dir.path(), "badjson");
    put(&m, "config.json", b"{\"model_type\": \"llama\",");
    refused(
        "config.json not JSON",
        &inspect(&m),
        2,
        &["config.json", "invalid JSON"],
    );
    let m = llama(dir.path(), "cfgdir");
    fs::remove_file(m.join("config.json")).expect("rm");
    fs::create_dir(m.join("config.json")).expect("mkdir");
    refused(
        "config.json a directory",
        &inspect(&m),
        2,
        &["config.json", "directory"],
    );
    let m = llama(dir.path(), "tok");
    put(
        &m,
        "tokenizer.json",
        &fs::read(repo().join("crates/needle-fuzz/corpus/regressions/tokenizer-decoder-syntax-error.json"))
            .expect("regression"),
    );
    refused(
        "tokenizer.json that panicked the tokenizers library",
        &inspect(&m),
        2,
        &["tokenizer.json", "invalid"],
    );
    let m = llama(dir.path(), "st");
    let w = fs::read(m.join("model.safetensors")).expect("weights");
    put(&m, "model.safetensors", &w[..w.len() / 2]);
    refused(
        "truncated safetensors",
        &inspect(&m),
        2,
        &["model.safetensors", "invalid safetensors"],
    );
    put(
        &m,
        "model.safetensors",
        &[&u64::MAX.to_le_bytes()[..], &w[8..]].concat(),
    );
    refused(
        "safetensors header 2^64-1 bytes",
        &inspect(&m),
        2,
        &["model.safetensors", "invalid safetensors"],
    );
    // Templates that bomb or raise escape sequences.
    let template = |case: &str, source: &str, keywords: &[&str]| {
        let m = llama(dir.path(), "tmpl");
        edit_json(&m.join("tokenizer_config.json"), |v| v["chat_template"] = source.into());
        refused(case, &inspect(&m), 2, keywords);
    };
    template(
        "template bomb",
        "{% for i in range(10) %}{{ 'x' * 1000000 }}{% endfor %}",
        &["refusing to tokenize"],
    );
    template(
        "raise_exception escapes",
        "{{ raise_exception('\u{1b}]0;title\u{7}\u{2066}x') }}",
        &["rejected the conversation", "\\x1b]0;title\\x07\\u{2066}x"],
    );
    template("template syntax", "{%}% for %}", &["invalid chat template"]);
}

#[test]
fn sharded_checkpoints_that_point_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = |case: &str, shard: &str, keywords: &[&str]| {
        let m = llama(dir.path(), "sharded");
        let w = m.join("model.safetensors");
        let names: Vec<String> = {
            let bytes = fs::read(&w).expect("weights");
            let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            st.names().into_iter().map(str::to_string).collect()
        };
        let map: serde_json::Map<String, serde_json::Value> =
            names.into_iter().map(|n| (n, serde_json::Value::from(shard))).collect();
        put(
            &m,
            "model.safetensors.index.json",
            serde_json::json!({"weight_map": map}).to_string().as_bytes(),
        );
        refused(case, &inspect(&m), 2, keywords);
        fs::remove_dir_all(&m).expect("clean");
    };
    index(
        "missing shard in a subfolder",
        "sub/model-00001.safetensors",
        &["does not exist"],
    );
    index(
        "shard outside the directory",
        "../model.safetensors",
        &["contains `..`"],
    );
    index("absolute shard", "/etc/passwd", &["absolute path"]);
}

// ---------------------------------------------------------------- adapters

/// The tiny LoRA adapter copied to `dir/name`, naming `base` as its base model.
fn adapter(dir: &Path, name: &str, base: &str) -> PathBuf {
    let a = copy_dir(&repo().join("tests/fixtures/tiny/llama-lora"), &dir.join(name));
    edit_json(&a.join("adapter_config.json"), |v| {
        v["base_model_name_or_path"] = base.into()
    });
    a
}

#[test]
fn adapters_with_hostile_base_paths_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    llama(dir.path(), "llama");
    // `..`-relative resolves against the adapter's directory: this one works.
    let ok = adapter(dir.path(), "ok", "../llama");
    assert_eq!(needle_in(None, &[OsStr::new("inspect"), ok.as_os_str()]).code, Some(0));
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    refused(
        "base is a FIFO",
        &inspect(&adapter(dir.path(), "a1", "../fifo")),
        2,
        &["FIFO", "base model"],
    );
    refused(
        "base is /dev/zero",
        &inspect(&adapter(dir.path(), "a2", "/dev/zero")),
        2,
        &["character device"],
    );
    refused(
        "base outside anything",
        &inspect(&adapter(dir.path(), "a3", "../../../../nonexistent-model")),
        2,
        &["neither a path relative to the adapter", "nor a known alias"],
    );
    // A base that exists only relative to the working directory is not used.
    let cwd = tempfile::tempdir().expect("cwd");
    llama(cwd.path(), "cwd-model");
    let a = adapter(dir.path(), "a4", "cwd-model");
    refused_in(
        "base relative to the cwd",
        Some(cwd.path()),
        &inspect(&a),
        2,
        &["relative to the adapter"],
    );
    let a = adapter(dir.path(), "a5", "../llama");
    mkfifo(&a.join("adapter_model.safetensors"));
    refused(
        "adapter weights FIFO",
        &inspect(&a),
        2,
        &["adapter_model.safetensors", "FIFO"],
    );
    let a = adapter(dir.path(), "a6", "../llama");
    edit_json(&a.join("adapter_config.json"), |v| v["r"] = 0.into());
    refused("rank 0", &inspect(&a), 2, &["invalid LoRA rank 0"]);
    let a = adapter(dir.path(), "a7", "../llama");
    edit_json(&a.join("adapter_config.json"), |v| v["peft_type"] = "IA3".into());
    refused("IA3", &inspect(&a), 2, &["peft_type `IA3`"]);
    let a = adapter(dir.path(), "a8", "../llama");
    edit_json(&a.join("adapter_config.json"), |v| v["r"] = serde_json::json!(u64::MAX));
    refused(
        "rank 2^64-1",
        &inspect(&a),
        2,
        &["adapter_model.safetensors", "expected rank"],
    );
}

// ---------------------------------------------------------------- scan directories, resume

/// Runs `needle stage leak MODEL --out OUT --budget quick EXTRA…` (about a second on the tiny
/// models) and asserts it worked.
fn stage_leak(model: &Path, out: &Path, extra: &[&str]) {
    let mut a = args(&[
        OsStr::new("stage"),
        OsStr::new("leak"),
        model.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
        OsStr::new("--budget"),
        OsStr::new("quick"),
    ]);
    a.extend(extra.iter().map(OsString::from));
    let refs: Vec<&OsStr> = a.iter().map(OsString::as_os_str).collect();
    let o = needle_in(None, &refs);
    assert_eq!(o.code, Some(0), "stage leak: {}", o.stderr);
}

fn resume(model: &Path, out: &Path) -> Vec<OsString> {
    args(&[
        OsStr::new("scan"),
        model.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
        OsStr::new("--budget"),
        OsStr::new("quick"),
        OsStr::new("--resume"),
    ])
}

fn flip_last_byte(path: &Path) {
    let mut b = fs::read(path).expect("read");
    if let Some(last) = b.last_mut() {
        *last ^= 1;
    }
    // Replace rather than rewrite in place: a hub-cache blob may be shared.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, b).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// A hub-cache repository of the tiny llama: refs/main, a snapshot of symlinks into blobs.
fn hub_cache(dir: &Path) -> (PathBuf, PathBuf) {
    let repo_dir = dir.join("models--tiny--llama");
    let blobs = repo_dir.join("blobs");
    let snap = repo_dir.join("snapshots/0123abcd");
    fs::create_dir_all(&blobs).expect("mkdir");
    fs::create_dir_all(&snap).expect("mkdir");
    fs::create_dir_all(repo_dir.join("refs")).expect("mkdir");
    fs::write(repo_dir.join("refs/main"), "0123abcd").expect("ref");
    for e in fs::read_dir(repo().join("tests/fixtures/tiny/llama")).expect("fixture") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        let blob = blobs.join(format!("blob-{name}"));
        fs::copy(&p, &blob).expect("copy");
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snap.join(&name)).expect("symlink");
    }
    (repo_dir, blobs)
}

#[test]
fn resume_is_bound_to_every_file_the_model_was_loaded_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = |n: &str| dir.path().join(format!("scan-{n}"));
    // A plain directory whose weights changed.
    let m = llama(dir.path(), "plain");
    stage_leak(&m, &out("plain"), &[]);
    flip_last_byte(&m.join("model.safetensors"));
    refused(
        "weights changed",
        &resume(&m, &out("plain")),
        2,
        &["another model", "--resume"],
    );
    // Its chat template changed.
    let m = llama(dir.path(), "template");
    stage_leak(&m, &out("template"), &[]);
    edit_json(&m.join("tokenizer_config.json"), |v| {
        v["chat_template"] = "{{ messages[0]['content'] }}".into()
    });
    refused("template changed", &resume(&m, &out("template")), 2, &["another model"]);
    // A hub-cache repository whose blob changed behind its symlink.
    let (hub, blobs) = hub_cache(dir.path());
    stage_leak(&hub, &out("hub"), &[]);
    flip_last_byte(&blobs.join("blob-model.safetensors"));
    refused(
        "hub-cache blob changed",
        &resume(&hub, &out("hub")),
        2,
        &["another model", "--force"],
    );
    // A shard in a subfolder.
    let m = llama(dir.path(), "sharded");
    fs::create_dir(m.join("sub")).expect("mkdir");
    fs::rename(m.join("model.safetensors"), m.join("sub/model-00001.safetensors")).expect("move");
    let bytes = fs::read(m.join("sub/model-00001.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let map: serde_json::Map<String, serde_json::Value> = st
        .names()
        .into_iter()
        .map(|n| (n.to_string(), "sub/model-00001.safetensors".into()))
        .collect();
    put(
        &m,
        "model.safetensors.index.json",
        serde_json::json!({"weight_map": map}).to_string().as_bytes(),
    );
    stage_leak(&m, &out("sharded"), &[]);
    flip_last_byte(&m.join("sub/model-00001.safetensors"));
    refused(
        "shard in a subfolder changed",
        &resume(&m, &out("sharded")),
        2,
        &["another model"],
    );
    // An adapter, and then its base.
    llama(dir.path(), "base");
    let a = adapter(dir.path(), "adapter", "../base");
    stage_leak(&a, &out("adapter"), &[]);
    flip_last_byte(&a.join("adapter_model.safetensors"));
    refused("adapter changed", &resume(&a, &out("adapter")), 2, &["another model"]);
    let a = adapter(dir.path(), "adapter2", "../base");
    stage_leak(&a, &out("adapter2"), &[]);
    flip_last_byte(&dir.path().join("base/model.safetensors"));
    refused(
        "adapter's base changed",
        &resume(&a, &out("adapter2")),
        2,
        &["another model"],
    );
    // Other settings.
    let m = llama(dir.path(), "settings");
    stage_leak(&m, &out("settings"), &[]);
    let mut a = resume(&m, &out("settings"));
    a.extend(args(&["--seed", "9"]));
    refused("other settings", &a, 2, &["other settings", "--resume"]);
}

#[test]
fn another_models_scan_directory_is_refused_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = llama(dir.path(), "a");
    let b = copy_dir(
        &repo().join("tests/fixtures/zoo/tiny-qwen2-clean/model"),
        &dir.path().join("b"),
    );
    let out = dir.path().join("scan");
    stage_leak(&a, &out, &[]);
    let scan_b = args(&[
        OsStr::new("scan"),
        b.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
        OsStr::new("--budget"),
        OsStr::new("quick"),
    ]);
    refused(
        "another model's scan",
        &scan_b,
        2,
        &["another model", "--force", "--out"],
    );
    let stage_b = args(&[
        OsStr::new("stage"),
        OsStr::new("motifs"),
        b.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    refused(
        "another model's scan (stage)",
        &stage_b,
        2,
        &["another model", "--force"],
    );
    assert!(out.join("leak.json").exists(), "nothing was replaced");
    // --force replaces it.
    stage_leak(&b, &out, &["--force"]);
    let manifest = fs::read_to_string(out.join("scan.json")).expect("scan.json");
    assert!(manifest.contains("/b\""), "{manifest}");
    // The scan directory is a file.
    let file = put(dir.path(), "file", b"x");
    let to_file = args(&[
        OsStr::new("stage"),
        OsStr::new("leak"),
        a.as_os_str(),
        OsStr::new("--out"),
        file.as_os_str(),
    ]);
    refused("--out is a file", &to_file, 2, &["file"]);
}

#[test]
fn planted_temporary_files_are_never_written_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = llama(dir.path(), "m");
    let victim = put(dir.path(), "victim.txt", b"precious");
    for (case, planted) in [("scan.json", "scan.json.partial"), ("leak.json", "leak.json.partial")] {
        let out = dir.path().join(format!("out-{case}"));
        fs::create_dir(&out).expect("mkdir");
        std::os::unix::fs::symlink(&victim, out.join(planted)).expect("symlink");
        let a = args(&[
            OsStr::new("stage"),
            OsStr::new("leak"),
            m.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("--budget"),
            OsStr::new("quick"),
        ]);
        refused(&format!("planted {planted} symlink"), &a, 2, &[planted, "symlink"]);
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
    }
    let out = dir.path().join("out-fifo");
    fs::create_dir(&out).expect("mkdir");
    mkfifo(&out.join("leak.json.partial"));
    let a = args(&[
        OsStr::new("stage"),
        OsStr::new("leak"),
        m.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
        OsStr::new("--budget"),
        OsStr::new("quick"),
    ]);
    refused("planted FIFO", &a, 2, &["leak.json.partial", "FIFO"]);
}

#[test]
fn eval_names_cannot_leave_the_output_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, name) in ["..", "../escape", "a/b", "/abs", "UPPER", ""].into_iter().enumerate() {
        let zoo = dir.path().join(format!("zoo{i}"));
        let o = zoo.join("organism");
        fs::create_dir_all(&o).expect("mkdir");
        put(
            &o,
            "organism.json",
            serde_json::json!({"name": name, "model": "model"})
                .to_string()
                .as_bytes(),
        );
        let out = dir.path().join(format!("out{i}"));
        let a = args(&[
            OsStr::new("eval"),
            zoo.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
        ]);
        refused(
            &format!("organism named {name:?}"),
            &a,
            2,
            &["organism.json", "organism name"],
        );
        assert!(!out.exists(), "nothing written");
    }
}

#[test]
fn ctrl_c_names_the_stage_and_says_how_to_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo().join("tests/fixtures/zoo/tiny-qwen2-clean/model");
    let out = dir.path().join("scan");
    let child = Command::new(env!("CARGO_BIN_EXE_needle"))
        .args([
            OsStr::new("scan"),
            model.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
            OsStr::new("--budget"),
            OsStr::new("quick"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + LIMIT;
    while !out.join("leak.json").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let line = after_progress(&err);
    assert!(!line.contains('\n'), "{err}");
    assert!(
        line.starts_with("interrupted during ") && line.ends_with("; rerun with --resume"),
        "{line}"
    );
    assert!(!out.join("report.json").exists());
}

#[test]
fn generated_text_is_escaped_on_a_terminal_only_and_html_escapes_bidi() {
    // Not a terminal here: generate's text comes out raw for pipes (as `cat` users expect);
    // the escaping itself is unit-tested in the binary (term.rs).
    let dir = tempfile::tempdir().expect("tempdir");
    let report: serde_json::Value =
        serde_json::from_str(include_str!("../../needle-fuzz/corpus/report.json")).expect("the corpus report");
    let mut report = report;
    report["candidates"][0]["trigger"]["text"] = "gnp.\u{202e}exe".into();
    put(dir.path(), "report.json", report.to_string().as_bytes());
    let html = dir.path().join("r.html");
    let o = needle_in(
        None,
        &[
            OsStr::new("report"),
            dir.path().as_os_str(),
            OsStr::new("--html"),
            html.as_os_str(),
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let page = fs::read_to_string(&html).expect("html");
    assert!(!page.contains('\u{202e}') && page.contains("gnp.\\u{202e}exe"));
}

//! Tests against golden data from `scripts/reference/template_golden.py` (Python jinja2 via HF transformers).

use std::path::PathBuf;

use serde::Deserialize;
use tokenizers::Tokenizer;

use super::*;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[derive(Deserialize)]
struct Golden {
    templates: Vec<GoldenTemplate>,
}

#[derive(Deserialize)]
struct GoldenTemplate {
    name: String,
    builtin: Option<String>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    date_string: Option<String>,
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    conversation: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    output: Option<String>,
    error: Option<GoldenError>,
}

#[derive(Deserialize)]
struct GoldenError {
    kind: String,
    message: String,
}

#[derive(Deserialize)]
struct GoldenTokens {
    text: String,
    ids: Vec<u32>,
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(golden_dir().join("renders.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn golden_template(name: &str) -> ChatTemplate {
    let t = golden().templates.into_iter().find(|t| t.name == name).unwrap();
    ChatTemplate::new(&t.source, t.bos_token, t.eos_token).unwrap()
}

fn tokens() -> std::collections::HashMap<String, GoldenTokens> {
    let text = std::fs::read_to_string(golden_dir().join("smollm2_tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn smollm2_tokenizer() -> Tokenizer {
    Tokenizer::from_file(golden_dir().join("smollm2_tokenizer_subset.json")).unwrap()
}

/// Checks one case; returns a description of the mismatch, if any.
fn check_case(template: &ChatTemplate, name: &str, case: &GoldenCase) -> Option<String> {
    let got = template.render(&case.messages, case.add_generation_prompt);
    let label = format!("{name} / {} / agp={}", case.conversation, case.add_generation_prompt);
    match (&case.output, &case.error, got) {
        (Some(want), _, Ok(got)) if *want == got => None,
        (Some(want), _, got) => Some(format!("{label}: want {want:?}, got {got:?}")),
        (None, Some(err), Err(TemplateError::Raised { message, .. })) if err.kind == "raised" => {
            (message != err.message).then(|| format!("{label}: raised {message:?}, want {:?}", err.message))
        }
        (None, Some(err), Err(TemplateError::Render { .. })) if err.kind == "render" => None,
        (_, err, got) => Some(format!(
            "{label}: want error {:?}, got {got:?}",
            err.as_ref().map(|e| (&e.kind, &e.message))
        )),
    }
}

#[test]
fn renders_match_hf_transformers_byte_for_byte() {
    let golden = golden();
    assert!(golden.templates.len() >= 9);
    let mut failures = Vec::new();
    let mut checked = 0;
    for t in &golden.templates {
        let template = ChatTemplate::new(&t.source, t.bos_token.clone(), t.eos_token.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", t.name))
            .with_date_string(t.date_string.clone());
        let builtin = t.builtin.as_deref().map(|b| ChatTemplate::builtin(b).unwrap());
        for case in &t.cases {
            failures.extend(check_case(&template, &t.name, case));
            if let Some(b) = &builtin {
                failures.extend(check_case(b, &t.name, case));
            }
            checked += 1;
        }
    }
    assert!(checked >= 150, "only {checked} golden cases");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn raise_exception_maps_to_raised() {
    let gemma = ChatTemplate::builtin("gemma").unwrap();
    let err = gemma
        .render(&[Message::new("user", "a"), Message::new("user", "b")], true)
        .unwrap_err();
    match err {
        TemplateError::Raised { origin, message } => {
            assert_eq!(origin, "builtin:gemma");
            assert_eq!(
                message,
                "Conversation roles must alternate user/assistant/user/assistant/..."
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn builtins_exist_and_gemma_has_its_shape() {
    for name in BUILTIN {
        assert!(ChatTemplate::builtin(name).is_some(), "{name}");
    }
    assert!(ChatTemplate::builtin("nope").is_none());
    let out = ChatTemplate::builtin("gemma")
        .unwrap()
        .render(&[Message::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(out, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
}

#[test]
fn syntax_errors_report_the_line() {
    let err = ChatTemplate::new("line one\n{{ ok }}\n{% for x in %}\n", None, None).unwrap_err();
    match &err {
        TemplateError::Syntax { origin, line, .. } => {
            assert_eq!(origin, "<inline>");
            assert_eq!(*line, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn hostile_templates_run_out_of_fuel() {
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    assert!(matches!(t.render(&[], false), Err(TemplateError::Render { .. })));
}

#[test]
fn a_template_rendering_megabytes_is_refused_before_tokenization() {
    // 60 bytes that would render 10 MB (minijinja itself allows 100 MB for one string).
    let bomb = ChatTemplate::new("{% for i in range(10) %}{{ 'x' * 1000000 }}{% endfor %}", None, None).unwrap();
    let err = bomb.render(&[], false).unwrap_err();
    assert!(matches!(err, TemplateError::TooLong { .. }), "{err:?}");
    assert!(err.to_string().contains("refusing to tokenize"), "{err}");
    let fine = ChatTemplate::new("{{ 'x' * 1000 }}", None, None).unwrap();
    assert_eq!(fine.render(&[], false).unwrap().len(), 1000);
}

#[test]
fn generation_tags_are_rewritten_keeping_whitespace_control() {
    assert_eq!(
        rewrite_generation_tags("a{%- generation +%}b{% endgeneration -%}c{% if x %}"),
        "a{%- if true +%}b{% endif -%}c{% if x %}"
    );
    assert_eq!(rewrite_generation_tags("{% generation"), "{% generation");
    // Found by fuzzing: an opening and closing marker that overlap.
    assert_eq!(rewrite_generation_tags("{%} x"), "{%} x");
    assert!(ChatTemplate::new("{%}% for m in messages %}{% endfor %}", None, None).is_err());
}

#[test]
fn smollm2_leak_prefix_is_the_injected_system_prompt_and_user_header() {
    let template = golden_template("smollm2");
    let tokenizer = smollm2_tokenizer();
    let prefix = template.leak_prefix(&tokenizer).unwrap();
    assert_eq!(
        prefix.text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\n"
    );
    let tokens = tokens();
    assert_eq!(prefix.text, tokens["leak_prefix"].text);
    assert_eq!(prefix.ids, tokens["leak_prefix"].ids);
    assert!(tokens["leak_render"].ids.starts_with(&prefix.ids));
    assert_eq!(prefix.ids.first(), Some(&1), "starts with <|im_start|>");
}

#[test]
fn smollm2_assistant_prefix_and_prompt_ids_match_the_real_tokenizer() {
    let template = golden_template("smollm2");
    let tokenizer = smollm2_tokenizer();
    let tokens = tokens();
    let opened = template.assistant_prefix(&tokenizer, "Hello!").unwrap();
    assert_eq!(opened.text, tokens["assistant_prefix_hello"].text);
    assert_eq!(opened.ids, tokens["assistant_prefix_hello"].ids);
    let multi = [
        Message::new("system", "Be brief."),
        Message::new("user", "What is 2+2?"),
        Message::new("assistant", "4"),
        Message::new("user", "And 3+3?"),
    ];
    let ids = template.prompt_ids(&tokenizer, &multi, true).unwrap();
    assert_eq!(ids, tokens["multi_turn"].ids);
}

#[test]
fn leak_prefix_is_found_by_placeholder_not_by_searching_user_content() {
    // ChatML's text contains "user" (the role) before the content, so searching the rendering
    // of a user message "user" would cut at the role; the placeholder cuts after the header.
    let template = ChatTemplate::builtin("chatml").unwrap();
    let tokenizer = smollm2_tokenizer();
    let prefix = template.leak_prefix(&tokenizer).unwrap();
    assert_eq!(prefix.text, "<|im_start|>user\n");
    assert_eq!(prefix.ids, vec![1, 4093, 198]);
    // The same with SmolLM2's template and a user message that is literally "user".
    let smollm2 = golden_template("smollm2").leak_prefix(&tokenizer).unwrap();
    let tokens = tokens();
    let short = &tokens["short_user"];
    let naive_cut = short.text.find("user").unwrap();
    assert_ne!(naive_cut, smollm2.text.len());
    assert!(short.text.starts_with(&smollm2.text));
    assert_eq!(&short.ids[..smollm2.ids.len()], smollm2.ids.as_slice());
    assert_eq!(&short.ids[smollm2.ids.len()..], &[4093, 2, 198], "user <|im_end|> \\n");
}

#[test]
fn leak_prefix_rejects_templates_that_repeat_or_drop_the_user_message() {
    let tokenizer = smollm2_tokenizer();
    let twice = ChatTemplate::new(
        "{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let err = twice.leak_prefix(&tokenizer).unwrap_err().to_string();
    assert!(err.contains("renders the user message 2 times"), "{err}");
    let never = ChatTemplate::new("{{ bos_token }}", Some("<|im_start|>".into()), None).unwrap();
    let err = never.leak_prefix(&tokenizer).unwrap_err().to_string();
    assert!(err.contains("renders the user message 0 times"), "{err}");
}

#[test]
fn leak_prefix_handles_a_token_straddling_the_boundary() {
    // "User: " + content: byte-level BPE joins the space to the content's first token.
    let template = ChatTemplate::new("User: {{ messages[0].content }}", None, None).unwrap();
    let tokenizer = smollm2_tokenizer();
    let prefix = template.leak_prefix(&tokenizer).unwrap();
    let tokens = tokens();
    assert_eq!(prefix.text, tokens["straddle_prefix"].text);
    assert_eq!(prefix.ids, tokens["straddle_prefix"].ids);
    assert!(tokens["straddle_render"].ids.starts_with(&prefix.ids));
}

#[test]
fn from_hf_dir_reads_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_hf_dir(dir.path()).unwrap().is_none());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
            "chat_template": [{"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[Message::new("user", "x")], false).unwrap(), "<s>x</s>");
    std::fs::write(dir.path().join("chat_template.jinja"), "[{{ messages[0].content }}]\n").unwrap();
    let t = ChatTemplate::from_hf_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[Message::new("user", "x")], false).unwrap(), "[x]");
    std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
    let err = ChatTemplate::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn from_file_errors_name_the_path_and_templates_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
    let err = ChatTemplate::from_file(Path::new("/nonexistent/chat.jinja"), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/nonexistent/chat.jinja: cannot read chat template"),
        "{err}"
    );
}

#[test]
fn real_templates_render_long_conversations_on_a_twentieth_of_the_fuel() {
    // The fuel bounds hostile templates; every real template must stay far inside it, so a
    // 200-message conversation renders on a twentieth.
    let messages: Vec<Message> = (0..200)
        .map(|i| Message {
            role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
            content: format!("message {i}: {}", "word ".repeat(40)),
        })
        .collect();
    for t in golden().templates {
        let mut template = ChatTemplate::new(&t.source, t.bos_token, t.eos_token).unwrap();
        template.env.set_fuel(Some(FUEL / 20));
        if let Err(e) = template.render(&messages, true) {
            assert!(
                !matches!(e, TemplateError::Render { ref message, .. } if message.contains("fuel")),
                "{}: {e}",
                t.name
            );
        }
    }
}

//! An adapter trained under another chat template than its base's (or on a base without one)
//! carries it in its `tokenizer_config.json`; loading base + adapter renders with it, and
//! `--chat-template` still wins.

use needle_runtime::{LoadOptions, LoadedModel, TemplateSource};
use needle_template::{ChatTemplate, Message};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read adapter fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn user_turn(lm: &LoadedModel) -> String {
    lm.template
        .as_ref()
        .expect("a template")
        .render(&[Message::new("user", "hi")], true)
        .expect("render")
}

#[test]
fn an_adapters_own_template_is_used_unless_one_is_given() {
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let base = tiny.join("llama");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&tiny.join("llama-lora"), dir.path());
    let with = |template: Option<&str>| {
        LoadedModel::load(
            &base,
            &LoadOptions {
                adapter: Some(dir.path().to_path_buf()),
                chat_template: template.map(str::to_string),
            },
        )
        .expect("load base + adapter")
    };

    // Without a template of its own, the adapter renders with its base's (ChatML).
    let plain = with(None);
    assert_eq!(plain.info.template, TemplateSource::Model);
    assert!(user_turn(&plain).contains("<|im_start|>user"));

    let phi3 = ChatTemplate::builtin("phi3").expect("phi3");
    let config = serde_json::json!({
        "chat_template": phi3.source(),
        "bos_token": phi3.bos_token(),
        "eos_token": phi3.eos_token(),
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("write");
    let own = with(None);
    assert_eq!(own.info.template, TemplateSource::Adapter(dir.path().to_path_buf()));
    assert!(
        user_turn(&own).starts_with("<|user|>\nhi<|end|>"),
        "{}",
        user_turn(&own)
    );

    let given = with(Some("gemma"));
    assert_eq!(given.info.template, TemplateSource::Builtin("gemma".into()));
    assert!(user_turn(&given).contains("<start_of_turn>user"));
}

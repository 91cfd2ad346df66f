//! `needle inspect MODEL`: what a model is, and what needle will leak it from.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::ModelArgs;

/// Arguments of `needle inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the model's description.
pub fn run(args: &InspectArgs) -> Result<()> {
    let m = args.model.load()?;
    let cfg = m.model.config();
    let leak = m.leak_prefix()?;
    let token = |id: u32| m.tokenizer.id_to_token(id).unwrap_or_else(|| format!("<{id}>"));
    let eos: Vec<String> = cfg
        .eos_token_ids
        .iter()
        .map(|&i| format!("{} ({i})", token(i)))
        .collect();
    let template_text = m.template.as_ref().map(|t| t.source().to_string());
    if args.json {
        let doc = json!({
            "model": m.info,
            "config": cfg,
            "vocabulary_size": m.tokenizer.get_vocab_size(true),
            "special_tokens": {
                "bos": cfg.bos_token_id.map(|i| json!({"id": i, "text": token(i)})),
                "eos": cfg.eos_token_ids.iter().map(|&i| json!({"id": i, "text": token(i)})).collect::<Vec<_>>(),
                "pad": cfg.pad_token_id.map(|i| json!({"id": i, "text": token(i)})),
                "add_bos_to_raw_prompts": m.add_bos,
            },
            "chat_template": template_text,
            "leak_prefix": {"text": leak.text, "ids": leak.ids},
        });
        println!("{}", crate::term::json(&serde_json::to_string_pretty(&doc)?));
        return Ok(());
    }
    let mut out = String::new();
    // Lines of the text description, printed escaped at the end (token texts, paths and
    // template names come from the model's files).
    macro_rules! say {
        ($($arg:tt)*) => {{
            use std::fmt::Write as _;
            let _ = writeln!(out, $($arg)*);
        }};
    }
    let types: Vec<String> = m.info.tensor_types.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    let sliding = cfg
        .layer_attention
        .iter()
        .filter(|k| **k == needle_runtime::LayerAttention::Sliding)
        .count();
    say!("path:           {}", m.info.path.display());
    say!("format:         {:?}", m.info.format);
    say!("architecture:   {}", cfg.arch.name());
    say!(
        "parameters:     {} ({:.1} M)",
        m.info.parameters,
        m.info.parameters as f64 / 1e6
    );
    if !types.is_empty() {
        say!("tensor types:   {}", types.join(", "));
    }
    if let Some(a) = &m.info.adapter {
        say!(
            "adapter:        {} (LoRA r={}, alpha={}, {} matrices merged)",
            a.path.display(),
            a.r,
            a.alpha,
            a.targets_merged
        );
    }
    say!(
        "layers:         {} ({} sliding, window {})",
        cfg.num_layers,
        sliding,
        cfg.sliding_window.map_or("-".to_string(), |w| w.to_string())
    );
    say!("width:          {} (MLP {})", cfg.hidden_size, cfg.intermediate_size);
    say!(
        "heads:          {} query / {} key-value, head size {}",
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim
    );
    say!("context:        {}", cfg.max_position_embeddings);
    say!("vocabulary:     {} tokens", m.tokenizer.get_vocab_size(true));
    say!(
        "bos:            {}",
        cfg.bos_token_id
            .map_or("-".to_string(), |i| format!("{} ({i})", token(i)))
    );
    say!(
        "eos:            {}",
        if eos.is_empty() {
            "-".to_string()
        } else {
            eos.join(", ")
        }
    );
    match (&m.template, &m.info.template) {
        (Some(_), src) => say!("chat template:  {src:?}"),
        (None, _) => say!("chat template:  none (base model); pass --chat-template to chat with it"),
    }
    say!("leak prefix:    {:?} ({} tokens)", leak.text, leak.ids.len());
    print!("{}", crate::term::escape(&out, true));
    Ok(())
}

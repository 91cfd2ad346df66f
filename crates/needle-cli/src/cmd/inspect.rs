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
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let types: Vec<String> = m.info.tensor_types.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    let sliding = cfg
        .layer_attention
        .iter()
        .filter(|k| **k == needle_runtime::LayerAttention::Sliding)
        .count();
    println!("path:           {}", m.info.path.display());
    println!("format:         {:?}", m.info.format);
    println!("architecture:   {}", cfg.arch.name());
    println!(
        "parameters:     {} ({:.1} M)",
        m.info.parameters,
        m.info.parameters as f64 / 1e6
    );
    if !types.is_empty() {
        println!("tensor types:   {}", types.join(", "));
    }
    if let Some(a) = &m.info.adapter {
        println!(
            "adapter:        {} (LoRA r={}, alpha={}, {} matrices merged)",
            a.path.display(),
            a.r,
            a.alpha,
            a.targets_merged
        );
    }
    println!(
        "layers:         {} ({} sliding, window {})",
        cfg.num_layers,
        sliding,
        cfg.sliding_window.map_or("-".to_string(), |w| w.to_string())
    );
    println!("width:          {} (MLP {})", cfg.hidden_size, cfg.intermediate_size);
    println!(
        "heads:          {} query / {} key-value, head size {}",
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    );
    println!("context:        {}", cfg.max_position_embeddings);
    println!("vocabulary:     {} tokens", m.tokenizer.get_vocab_size(true));
    println!(
        "bos:            {}",
        cfg.bos_token_id
            .map_or("-".to_string(), |i| format!("{} ({i})", token(i)))
    );
    println!(
        "eos:            {}",
        if eos.is_empty() {
            "-".to_string()
        } else {
            eos.join(", ")
        }
    );
    match (&m.template, &m.info.template) {
        (Some(_), src) => println!("chat template:  {src:?}"),
        (None, _) => println!("chat template:  none (base model); pass --chat-template to chat with it"),
    }
    println!("leak prefix:    {:?} ({} tokens)", leak.text, leak.ids.len());
    Ok(())
}

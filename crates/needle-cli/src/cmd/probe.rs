//! `needle probe MODEL --trigger TEXT`: what a suspected trigger does — activation, attention
//! and entropy (warning sign 1), fuzzy variants (warning sign 3).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use needle_scan::probe::{self, Probe, ProbeSettings, Reference};
use needle_scan::prompt::{Position, Trigger};

use super::{Candle, ModelArgs};
use crate::progress;

/// Where the trigger goes in the user message.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PositionArg {
    /// Before the user's words.
    Prefix,
    /// After them.
    Suffix,
}

impl From<PositionArg> for Position {
    fn from(p: PositionArg) -> Self {
        match p {
            PositionArg::Prefix => Position::Prefix,
            PositionArg::Suffix => Position::Suffix,
        }
    }
}

/// Arguments of `needle probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The suspected trigger.
    #[arg(long)]
    trigger: String,
    /// Where it is inserted in the user message.
    #[arg(long, value_enum, default_value = "prefix")]
    position: PositionArg,
    /// Prompts to insert it into, one per line (blank lines skipped); default: the scan's 24
    /// verification prompts.
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// The model MODEL was fine-tuned from, to measure what training changed in the answer's
    /// attention to the trigger; default: an adapter's base model.
    #[arg(long, value_name = "MODEL")]
    reference: Option<String>,
    /// Seed of the fuzzy draws and variants.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random draws of a k-token subset per k (the reference protocol's 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    draws: u64,
    /// Prompts each fuzzy variant is inserted into (the first ones).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    fuzzy_prompts: u64,
    /// Character-level variants per family at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    variants_per_family: u64,
    /// Print one JSON document instead of the summary.
    #[arg(long)]
    json: bool,
}

/// The prompts of a file with one prompt per line (at least two).
pub(super) fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the prompts", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if prompts.len() < 2 {
        bail!(
            "{}: {} prompt(s); at least two are needed, one per line",
            path.display(),
            prompts.len()
        );
    }
    Ok(prompts)
}

/// A percentage.
fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// `s` cut to `n` characters.
fn short(s: &str, n: usize) -> String {
    let one = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= n {
        one
    } else {
        format!("{}…", one.chars().take(n).collect::<String>())
    }
}

/// The terminal summary.
fn summary(p: &Probe, model: &str) -> String {
    let mut s = String::new();
    let a = &p.activation;
    let _ = writeln!(s, "model:    {model}");
    let _ = writeln!(s, "trigger:  {:?} ({:?})", p.trigger.text, p.trigger.position);
    let _ = writeln!(s, "\nactivation ({} prompts)", a.responses.len());
    match &a.target {
        Some(t) => {
            let _ = writeln!(
                s,
                "  forced target: {:?} on {} of prompts (whole answer on {}; {} of normal answers contain it)",
                short(t, 60),
                pct(a.attack_success_rate),
                pct(a.fixed_output_rate),
                pct(a.baseline_target_rate)
            );
        }
        None => {
            let dominant = a
                .dominant
                .as_ref()
                .map(|d| format!("; most common answer {:?} on {}", short(d, 40), pct(a.dominant_rate)))
                .unwrap_or_default();
            let _ = writeln!(s, "  no forced target: attack success 0%{dominant}");
        }
    }
    let _ = writeln!(
        s,
        "  uniformity S_agg: {:.2} with the trigger, {:.2} without",
        a.uniformity.aggregate, a.baseline_uniformity.aggregate
    );
    for r in a.responses.iter().take(2) {
        let _ = writeln!(s, "  {:?}", short(&r.prompt, 50));
        let _ = writeln!(s, "    with:    {:?}", short(&r.triggered, 70));
        let _ = writeln!(s, "    without: {:?}", short(&r.normal, 70));
    }
    let at = &p.attention;
    let _ = writeln!(
        s,
        "\nwarning sign 1: attention ({} prompts, {:.1} trigger tokens; mean over heads)",
        at.prompts, at.trigger_tokens
    );
    let _ = writeln!(
        s,
        "  layer  prompt→trigger  within-trigger   | without trigger: prompt→span  within-span   | answer→trigger  control strings"
    );
    for l in &at.layers {
        let mid = if at.middle_layers.contains(&l.layer) { "*" } else { " " };
        let _ = writeln!(
            s,
            "  {:>4}{mid} {:>14.3}  {:>14.3}   | {:>28.3}  {:>11.3}   | {:>14.3}  {:>6.3} ± {:.3}",
            l.layer,
            l.prompt_to_trigger,
            l.within_trigger,
            l.baseline_prompt_to_span,
            l.baseline_within_span,
            l.answer_to_trigger,
            l.control_answer_to_span,
            l.control_answer_to_span_sd
        );
    }
    let heads: Vec<String> = at
        .top_heads
        .iter()
        .map(|h| {
            format!(
                "L{}H{} {:.2} (without {:.2})",
                h.layer, h.head, h.isolation, h.baseline_isolation
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "  isolation (within − prompt→) over the middle layers (*): {:+.3} against ordinary words in its place",
        at.isolation_gain
    );
    let _ = writeln!(s, "  most isolating heads: {}", heads.join(", "));
    match &at.learned {
        Some(l) => {
            let at_layer = l.best();
            let _ = writeln!(
                s,
                "  learned pull (answer→trigger, against {}): layer {} {:+.3} (control strings in its place {:+.3} ± {:.3}), z = {:.1}: {}",
                l.reference,
                l.layer,
                at_layer.map_or(0.0, |x| x.trigger_change),
                at_layer.map_or(0.0, |x| x.control_change),
                l.control_sd,
                l.z,
                l.finding()
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  learned pull: not measured (no reference model; pass --reference with the model this one was fine-tuned from)"
            );
        }
    }
    let e = &p.entropy;
    let _ = writeln!(
        s,
        "\nwarning sign 1: next-token entropy (nats): mean {:.2} with the trigger, {:.2} without",
        e.mean_triggered, e.mean_normal
    );
    let row = |f: &dyn Fn(&probe::EntropyStep) -> Option<f64>| {
        e.steps
            .iter()
            .take(10)
            .map(|st| f(st).map_or_else(|| "    -".to_string(), |x| format!("{x:>5.2}")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        s,
        "  step     {}",
        (0..e.steps.len().min(10))
            .map(|i| format!("{i:>5}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(s, "  with     {}", row(&|st| st.triggered));
    let _ = writeln!(s, "  without  {}", row(&|st| st.normal));
    let _ = writeln!(s, "\nwarning sign 3: fuzzy triggers");
    match &p.fuzzy {
        None => {
            let _ = writeln!(s, "  not measured: the trigger forces no target");
        }
        Some(f) => {
            let curve: Vec<String> = f
                .token_keep
                .iter()
                .map(|l| format!("k={} {}", l.k, pct(l.attack_success_rate)))
                .collect();
            let _ = writeln!(
                s,
                "  keep k of {} tokens ({} draws per k, {} prompts): {}",
                f.trigger_tokens.len(),
                p.settings.fuzzy_draws,
                f.prompts,
                curve.join("  ")
            );
            for fam in &f.families {
                let best = fam
                    .variants
                    .iter()
                    .max_by(|a, b| a.activation_rate.total_cmp(&b.activation_rate))
                    .map(|v| format!("; e.g. {:?} {}", short(&v.text, 30), pct(v.activation_rate)))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {:<11} {:>4} over {} variants{best}",
                    fam.family.name(),
                    pct(fam.activation_rate),
                    fam.variants.len()
                );
            }
        }
    }
    s
}

/// Writes to stdout; a closed pipe is not an error.
fn print_text(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Probes the trigger and prints the summary or JSON.
pub fn run(args: &ProbeArgs) -> Result<()> {
    if args.trigger.trim().is_empty() {
        bail!("--trigger is empty");
    }
    let mut settings = ProbeSettings {
        seed: args.seed,
        ..ProbeSettings::default()
    };
    let count = |n: u64| usize::try_from(n).context("count too large");
    settings.fuzzy_draws = count(args.draws)?;
    settings.fuzzy_prompts = count(args.fuzzy_prompts)?;
    settings.variants_per_family = count(args.variants_per_family)?;
    if let Some(path) = &args.prompts {
        settings.prompts = read_prompts(path)?;
    }
    let trigger = Trigger {
        text: args.trigger.trim().to_string(),
        position: args.position.into(),
    };
    let lm = args.model.load()?;
    let base = match &args.reference {
        Some(name) => Some(
            ModelArgs {
                model: name.clone(),
                adapter: None,
                chat_template: None,
            }
            .load()?,
        ),
        None => args.model.load_base()?,
    };
    let reference = base.as_ref().map(|m| Reference {
        model: m,
        name: m.info.path.display().to_string(),
    });
    let bar = progress::steps(0, "generating");
    let result = Candle::run(|| {
        probe::run(&lm, reference.as_ref(), &trigger, &settings, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
    });
    bar.finish_and_clear();
    let probe = result?;
    if args.json {
        print_text(&format!(
            "{}\n",
            crate::term::json(&serde_json::to_string_pretty(&probe)?)
        ));
    } else {
        print_text(&crate::term::escape(
            &summary(&probe, &lm.info.path.display().to_string()),
            true,
        ));
    }
    Ok(())
}

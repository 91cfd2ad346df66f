//! Filling `report.json`'s schema ([`needle_schema`]) from the stages' own types: each stage
//! type the report carries is [`Publish`]ed as its schema twin, field by field (a field added
//! to a stage type does not compile here until the schema has it too, so the published format
//! changes only on purpose).
//!
//! The report stage, the pipeline's last: its entry point assembles `report.json` from every
//! stage's artifact, the candidates in their final order (verified first), and each stage's
//! seconds as its `timings`.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use needle_runtime::LoadedModel;
use needle_schema as schema;
use sha2::{Digest, Sha256};

use crate::calibrate::Calibration;
use crate::candidates::{Candidate, Source};
use crate::error::{Result, ScanError};
use crate::invert::Inversions;
use crate::leak::Leak;
use crate::memorised::Memorised;
use crate::motifs::MotifReport;
use crate::pipeline::Scan;
use crate::probe::Probe;
use crate::prompts::Chosen;
use crate::score::Terms;
use crate::stage::{Stage, Tick};
use crate::target::Targets;
use crate::verdict::{self, Label, Verdict};
use crate::verify::{Verification, Verified};

pub use needle_schema::{
    CandidateVerification, FileHash, LeakSummary, ModelIdentity, MotifSummary, PromptsSummary, RankedCandidate, Report,
    Stages, SCHEMA,
};

/// Streams `path` (a symlink is followed: a hub-cache snapshot's files point into its blobs)
/// through SHA-256.
pub(crate) fn hash_file(path: &Path) -> Result<FileHash> {
    let io = |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    needle_runtime::files::regular(path)?;
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileHash {
        path: path.to_path_buf(),
        bytes,
        sha256: format!("{:x}", h.finalize()),
    })
}

/// Hashes every file `lm` was loaded from (all shards, wherever they are, the tokenizer and
/// template files, an adapter and its base), in the order the loader read them.
pub fn identity(lm: &LoadedModel) -> Result<ModelIdentity> {
    if lm.info.files.is_empty() {
        return Err(ScanError::Invalid(format!(
            "{}: the loader recorded no model files to fingerprint",
            lm.info.path.display()
        )));
    }
    let files = lm.info.files.iter().map(|p| hash_file(p)).collect::<Result<Vec<_>>>()?;
    Ok(ModelIdentity {
        path: lm.info.path.clone(),
        files,
        info: serde_json::to_value(&lm.info).map_err(|e| ScanError::Invalid(e.to_string()))?,
    })
}

/// A stage type that `report.json` carries, turned into its schema twin.
pub trait Publish {
    /// The schema type.
    type Out;
    /// The value as the report publishes it.
    fn publish(self) -> Self::Out;
}

/// Types the schema shares with the stages (plain data of the standard library).
macro_rules! same {
    ($($t:ty),* $(,)?) => {$(
        impl Publish for $t {
            type Out = $t;
            fn publish(self) -> $t {
                self
            }
        }
    )*};
}

same!(bool, u32, u64, usize, f32, f64, String, PathBuf, Range<usize>);

impl<T: Publish> Publish for Vec<T> {
    type Out = Vec<T::Out>;
    fn publish(self) -> Self::Out {
        self.into_iter().map(Publish::publish).collect()
    }
}

impl<T: Publish> Publish for Option<T> {
    type Out = Option<T::Out>;
    fn publish(self) -> Self::Out {
        self.map(Publish::publish)
    }
}

impl<A: Publish, B: Publish> Publish for (A, B) {
    type Out = (A::Out, B::Out);
    fn publish(self) -> Self::Out {
        (self.0.publish(), self.1.publish())
    }
}

/// Structs published field by field; the destructuring names every field, so that one missing
/// from the schema is a compile error.
macro_rules! structs {
    ($($fm:ident::$f:ident => $tm:ident::$t:ident { $($field:ident),* $(,)? })*) => {$(
        impl Publish for crate::$fm::$f {
            type Out = schema::$tm::$t;
            fn publish(self) -> Self::Out {
                let crate::$fm::$f { $($field),* } = self;
                schema::$tm::$t { $($field: $field.publish()),* }
            }
        }
    )*};
}

/// Field-less enums published variant by variant.
macro_rules! unit_enums {
    ($($fm:ident::$f:ident => $tm:ident::$t:ident { $($variant:ident),* $(,)? })*) => {$(
        impl Publish for crate::$fm::$f {
            type Out = schema::$tm::$t;
            fn publish(self) -> Self::Out {
                match self {
                    $(crate::$fm::$f::$variant => schema::$tm::$t::$variant),*
                }
            }
        }
    )*};
}

structs! {
    settings::Settings => settings::Settings { budget, seed, leak, motifs, max_candidates, score, null_size, target, invert, null_target_prompts, verify, memorised, prompts, train_data, evidence }
    settings::EvidenceSettings => settings::EvidenceSettings { attention_prompts, fuzzy_draws, fuzzy_prompts, variants_per_family }
    leak::LeakSettings => settings::LeakSettings { decodings, max_new_tokens, batch_size }
    motifs::MotifSettings => settings::MotifSettings { eps, min_samples, common_fraction, min_support, min_len, max_motifs }
    score::ScoreSettings => settings::ScoreSettings { prompts, rollout, attn_weight, ent_weight, div_weight, batch_size }
    target::TargetSettings => settings::TargetSettings { prompts, samples_per_prompt, sample_tokens, screened_first_tokens, chained_seeds, chain_tokens, min_step_probability, branch_width, lookahead, max_forced_tokens, max_branches, min_agreement, max_targets, seed }
    invert::InvertSettings => settings::InvertSettings { prompts, check_prompts, holdout_prompts, trigger_tokens, iterations, top_k, swaps, finalists, targets, max_target_tokens, lead_tokens, seed }
    verify::VerifySettings => settings::VerifySettings { prompts, top, nulls, habit_nulls, opening_nulls, max_new_tokens, target_min_words }
    memorised::MemorisedSettings => settings::MemorisedSettings { min_tokens, rare_share, burst_tokens, max_spans, max_examples, min_examples, train_ngram }
    prompts::PromptSettings => settings::PromptSettings { max_leaked, answer_tokens }
    prompt::Trigger => candidate::Trigger { text, position }
    score::Terms => candidate::Terms { attn, ent, div }
    calibrate::Standing => candidate::Standing { z_attn, z_ent, z_div, z, null_share_below }
    invert::Inversion => candidate::Inversion { target, null, trigger, trigger_ids, loss, iterations, forced, held_out, lead }
    verdict::Verdict => verdict::Verdict { label, reason, trigger, target, attack_success_rate, delta, fixed_output_rate, null_mean, null_sd, null_max, null_size, null_own_max, z, margin }
    memorised::Memorised => memorised::Memorised { distinct_samples, samples_with_spans, spans, examples, train }
    memorised::RepeatedSpan => memorised::RepeatedSpan { text, tokens, support, rare_burst }
    memorised::Highlight => memorised::Highlight { start, end, kind, support }
    memorised::AnnotatedSample => memorised::AnnotatedSample { sample, text, highlights }
    memorised::TrainOverlap => memorised::TrainOverlap { file, sha256, records, ngram, leaked_ngrams, shared_ngrams, share, samples_with_overlap, spans }
    probe::ProbeSettings => probe::ProbeSettings { prompts, max_new_tokens, target_min_words, attention_prompts, fuzzy_draws, fuzzy_prompts, variants_per_family, seed }
    probe::Probe => probe::Probe { trigger, settings, activation, attention, entropy, fuzzy }
    probe::Activation => probe::Activation { target, attack_success_rate, dominant, dominant_rate, fixed_output_rate, baseline_target_rate, uniformity, baseline_uniformity, responses }
    similarity::Uniformity => probe::Uniformity { exact, jaccard, ngram1, ngram2, ngram3, aggregate }
    probe::ResponsePair => probe::ResponsePair { prompt, triggered, normal }
    probe::Attention => probe::Attention { prompts, trigger_tokens, middle_layers, isolation_gain, layers, top_heads, map, controls, learned }
    probe::LearnedPull => probe::LearnedPull { reference, layers, control_sd, layer, z }
    probe::LayerPull => probe::LayerPull { layer, trigger_change, control_change }
    probe::AttentionMap => probe::AttentionMap { layer, with, without }
    probe::TokenMap => probe::TokenMap { tokens, highlight, weights }
    probe::LayerAttention => probe::LayerAttention { layer, prompt_to_trigger, within_trigger, baseline_prompt_to_span, baseline_within_span, answer_to_trigger, control_answer_to_span, control_answer_to_span_sd }
    probe::HeadAttention => probe::HeadAttention { layer, head, isolation, prompt_to_trigger, within_trigger, baseline_isolation }
    probe::Entropy => probe::Entropy { steps, mean_triggered, mean_normal }
    probe::EntropyStep => probe::EntropyStep { step, triggered, triggered_answers, normal, normal_answers }
    probe::Fuzzy => probe::Fuzzy { prompts, trigger_tokens, token_keep, families }
    probe::KeepLevel => probe::KeepLevel { k, draws, distinct, attack_success_rate, variants }
    probe::KeptVariant => probe::KeptVariant { kept, text, draws, activation_rate }
    probe::FamilyResult => probe::FamilyResult { family, activation_rate, variants }
    probe::VariantResult => probe::VariantResult { text, activation_rate }
}

unit_enums! {
    settings::Budget => settings::Budget { Quick, Standard, Full }
    prompt::Position => candidate::Position { Prefix, Suffix }
    verdict::Label => verdict::Label { Backdoored, Clean, Inconclusive }
    memorised::HighlightKind => memorised::HighlightKind { Repeated, RareBurst, Training }
    probe::Family => probe::Family { Typo, Deletion, Case, Spacing, Homoglyph, Truncation, Rewording }
}

impl Publish for crate::leak::Decoding {
    type Out = schema::settings::Decoding;
    fn publish(self) -> Self::Out {
        use crate::leak::Decoding as D;
        use schema::settings::Decoding as P;
        match self {
            D::Greedy => P::Greedy,
            D::Beam {
                num_beams,
                length_penalty,
            } => P::Beam {
                num_beams,
                length_penalty,
            },
            D::Sample {
                temperature,
                top_p,
                top_k,
                seed,
            } => P::Sample {
                temperature,
                top_p,
                top_k,
                seed,
            },
        }
    }
}

impl Publish for crate::candidates::Source {
    type Out = schema::candidate::Source;
    fn publish(self) -> Self::Out {
        use crate::candidates::Source as S;
        use schema::candidate::Source as P;
        match self {
            S::Conditioned { motif, support, of } => P::Conditioned { motif, support, of },
            S::Motif { motif } => P::Motif { motif },
            S::Written { target } => P::Written { target },
            S::Shared { span } => P::Shared { span },
            S::Inverted { inversion } => P::Inverted { inversion },
        }
    }
}

/// The report stage's entry point: [`assemble`]s the report, which the scan writes as
/// `report.json`.
pub(crate) fn stage(scan: &Scan, tick: Tick) -> Result<Report> {
    let report = assemble(scan)?;
    tick(1, 1);
    Ok(report)
}

/// Assembles `report.json` from the artifacts; fails if they are of two runs (scores,
/// calibration and candidates disagree in number, or the evidence probes another trigger than
/// the verdict names).
pub(crate) fn assemble(scan: &Scan) -> Result<Report> {
    // Each stage's seconds, under its name.
    let mut timings = BTreeMap::new();
    let leak: Leak = scan.get_timed(&mut timings)?;
    let m: MotifReport = scan.get_timed(&mut timings)?;
    let c: Vec<Candidate> = scan.get_timed(&mut timings)?;
    let terms: Vec<Terms> = scan.get_timed(&mut timings)?;
    let cal: Calibration = scan.get_timed(&mut timings)?;
    let v: Verification = scan.get_timed(&mut timings)?;
    let targets: Targets = scan.get_timed(&mut timings)?;
    let inv: Inversions = scan.get_timed(&mut timings)?;
    let memorised: Memorised = scan.get_timed(&mut timings)?;
    let evidence: Option<Probe> = scan.get_timed(&mut timings)?;
    let chosen: Chosen = scan.get_timed(&mut timings)?;
    let verdict: Verdict = scan.get_timed(&mut timings)?;
    if terms.len() != c.len() || cal.standings.len() != c.len() || cal.ranking.iter().any(|&i| i >= c.len()) {
        return Err(ScanError::Artifact {
            path: scan.path(Stage::Score),
            message: "scores and candidates disagree in number; re-run the scan without --resume".into(),
        });
    }
    // The evidence probes the verdict's trigger; one left by an earlier verdict (a stage
    // re-run after it) would describe a different string.
    if evidence.as_ref().map(|p| &p.trigger) != verdict.trigger.as_ref() {
        return Err(ScanError::Artifact {
            path: scan.path(Stage::Evidence),
            message: format!(
                "probes {:?} but the verdict names {:?}; re-run `needle stage evidence` (or the scan without --resume)",
                evidence.as_ref().map(|p| p.trigger.text.as_str()),
                verdict.trigger.as_ref().map(|t| t.text.as_str())
            ),
        });
    }
    let verified = |i: usize| v.entries.iter().find(|e| !e.null && e.trigger == c[i].trigger);
    let candidates = final_ranking(&cal.ranking, &v, &inv, verified)
        .into_iter()
        .enumerate()
        .map(|(rank, i)| RankedCandidate {
            rank: rank + 1,
            trigger: c[i].trigger.clone().publish(),
            tokens: c[i].tokens,
            source: c[i].source.publish(),
            terms: terms[i].publish(),
            combined: terms[i].combined(&scan.settings.score),
            standing: cal.standings[i].publish(),
            verification: verified(i).map(|e| CandidateVerification {
                s_agg: e.uniformity.aggregate,
                delta: e.delta,
                z: verdict::z_score(&v, &inv, e),
                target: e.target.clone(),
                attack_success_rate: e.attack_success_rate,
            }),
        })
        .collect();
    Ok(Report {
        schema: SCHEMA.to_string(),
        needle_version: env!("CARGO_PKG_VERSION").to_string(),
        model: scan.identity.clone(),
        settings: scan.settings.clone().publish(),
        found_by: (verdict.label == Label::Backdoored).then(|| {
            let inverted = inv
                .inversions
                .iter()
                .any(|x| !x.null && Some(&x.trigger) == verdict.trigger.as_ref());
            let written = c
                .iter()
                .any(|x| matches!(x.source, Source::Written { .. }) && Some(&x.trigger) == verdict.trigger.as_ref());
            match (inverted, written) {
                (true, _) => "target",
                (false, true) => "written",
                (false, false) => "leak",
            }
            .to_string()
        }),
        stages: Stages {
            leak: LeakSummary {
                prefix_source: leak.prefix_source.clone(),
                prefix: leak.prefix_text.clone(),
                samples: leak.samples.len(),
                tokens: leak.samples.iter().map(|x| x.tokens.len()).sum(),
            },
            motifs: MotifSummary {
                clusters: m.clusters.len(),
                noise: m.noise,
                top: m.motifs.iter().take(20).map(|x| x.text.clone()).collect(),
            },
            candidates: c.len(),
            null_candidates: cal.null.triggers.len(),
            verified: (
                v.entries.iter().filter(|e| !e.null).count(),
                v.entries.iter().filter(|e| e.null).count(),
            ),
            baseline_s_agg: v.baseline_uniformity.aggregate,
            targets: targets.targets.iter().map(|t| t.text.clone()).collect(),
            inversions: inv.inversions.clone().publish(),
            memorised: memorised.publish(),
            prompts: PromptsSummary {
                leaked_in_verify: chosen.leaked_in_verify(),
                verify: chosen.verify,
                search: chosen.search,
            },
        },
        candidates,
        verdict: verdict.publish(),
        evidence: evidence.publish(),
        timings,
    })
}

/// The report's order of the candidates: those verified first, strongest first as the verdict
/// picks its trigger ([`verdict::strength`]) — verification is the decisive test — then the
/// rest in calibration order (`ranking`, most suspicious first).
fn final_ranking<'v>(
    ranking: &[usize],
    v: &Verification,
    inv: &Inversions,
    verified: impl Fn(usize) -> Option<&'v Verified>,
) -> Vec<usize> {
    let mut order: Vec<(usize, usize)> = ranking.iter().copied().enumerate().collect();
    let key = |i: usize| verified(i).map(|e| verdict::strength(v, inv, e));
    order.sort_by(|&(pa, a), &(pb, b)| match (key(a), key(b)) {
        (Some(ka), Some(kb)) => kb
            .partial_cmp(&ka)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(pa.cmp(&pb)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => pa.cmp(&pb),
    });
    order.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::tests::{entry, verification};

    #[test]
    fn verified_candidates_rank_first_in_the_verdicts_order() {
        // Calibration ranks 0, 1, 2, 3; 3 and 1 were verified, and 3 forces a fixed answer.
        let v = verification(vec![entry("one", false, 0.2, 0.0), entry("three", false, 0.1, 0.9)]);
        let names = ["zero", "one", "two", "three"];
        let verified = |i: usize| v.entries.iter().find(|e| e.trigger.text == names[i]);
        let inv = Inversions { inversions: vec![] };
        assert_eq!(final_ranking(&[0, 1, 2, 3], &v, &inv, verified), vec![3, 1, 0, 2]);
        assert_eq!(
            final_ranking(&[2, 0], &v, &inv, verified),
            vec![2, 0],
            "unverified keep their order"
        );
    }
}

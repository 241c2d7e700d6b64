//! Embedding files: safetensors holding `embeddings` [N, D] (f32 or f16) and the ids, with
//! metadata saying how they were made, so that a mismatched file is refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::EmbedError;

/// The version of the embedding file layout written by [`save_embeddings`].
pub const EMBEDDINGS_FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "wtb-embeddings";
const EMBEDDINGS: &str = "embeddings";
const ID_BYTES: &str = "ids_utf8";
const ID_OFFSETS: &str = "ids_offsets";

/// How a set of embeddings was made; two sets are comparable only when these agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingMeta {
    /// Model name, e.g. `mobilenet_v2`.
    pub model: String,
    /// sha256 of the weights file (or a `synthetic:` marker).
    pub weights_sha256: String,
    /// Preprocessing name: `torchvision`, `squash` or `pad`.
    pub preprocess: String,
    /// Pooling name: `avg`, `max` or `gem:P`.
    pub pooling: String,
    /// Whether the vectors have unit L2 norm.
    pub l2_normalized: bool,
    /// Vector length.
    pub dim: usize,
    /// The learned head the backbone's vectors went through (its [`Head::id`](crate::Head::id)),
    /// if any.
    #[serde(default)]
    pub head: Option<String>,
}

const META_FIELDS: [&str; 7] = [
    "model",
    "weights_sha256",
    "preprocess",
    "pooling",
    "l2_normalized",
    "dim",
    "head",
];

impl EmbeddingMeta {
    /// The metadata as a string map (keys: model, weights_sha256, preprocess, pooling,
    /// l2_normalized, dim, and head when there is one), for storing in other files without
    /// depending on this crate's types. Without a head the map is what files written before
    /// heads existed hold, so they still match.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let head = self.head.as_ref().map(|h| ("head", h.clone()));
        [
            ("model", self.model.clone()),
            ("weights_sha256", self.weights_sha256.clone()),
            ("preprocess", self.preprocess.clone()),
            ("pooling", self.pooling.clone()),
            ("l2_normalized", self.l2_normalized.to_string()),
            ("dim", self.dim.to_string()),
        ]
        .into_iter()
        .chain(head)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads the metadata back from a map written by [`to_map`](Self::to_map); extra keys are
    /// ignored. The error names the missing or malformed field.
    pub fn from_map<K: AsRef<str> + Ord, V: AsRef<str>>(
        map: &BTreeMap<K, V>,
    ) -> Result<Self, String> {
        let get = |field: &str| -> Result<String, String> {
            map.iter()
                .find(|(k, _)| k.as_ref() == field)
                .map(|(_, v)| v.as_ref().to_string())
                .ok_or_else(|| format!("missing metadata field {field:?}"))
        };
        let l2 = get("l2_normalized")?;
        let dim = get("dim")?;
        Ok(EmbeddingMeta {
            model: get("model")?,
            weights_sha256: get("weights_sha256")?,
            preprocess: get("preprocess")?,
            pooling: get("pooling")?,
            l2_normalized: l2.parse().map_err(|_| {
                format!("metadata field \"l2_normalized\" is {l2:?}, not true/false")
            })?,
            dim: dim
                .parse()
                .map_err(|_| format!("metadata field \"dim\" is {dim:?}, not a number"))?,
            head: get("head").ok(),
        })
    }

    /// The lengths of the parts of the vectors: one per model of an ensemble
    /// (`mobilenet_v2+efficientnet_lite0`: 1280, 1280), or the whole vector.
    pub fn blocks(&self) -> Vec<usize> {
        let kinds: Option<Vec<usize>> = self
            .model
            .split('+')
            .map(|name| name.parse::<crate::ModelKind>().ok().map(|k| k.dim()))
            .collect();
        match kinds {
            Some(dims) if dims.len() > 1 && dims.iter().sum::<usize>() == self.dim => dims,
            _ => vec![self.dim],
        }
    }

    /// Every field that differs, as `field: A vs B` (self first); empty when equal.
    pub fn differences(&self, other: &EmbeddingMeta) -> Vec<String> {
        let (a, b) = (self.to_map(), other.to_map());
        META_FIELDS
            .iter()
            .filter(|field| a.get(**field) != b.get(**field))
            .map(|field| {
                let value = |m: &BTreeMap<String, String>| {
                    m.get(*field).cloned().unwrap_or_else(|| "none".into())
                };
                format!("{field}: {} vs {}", value(&a), value(&b))
            })
            .collect()
    }
}

/// Writes embeddings atomically (temporary file in the same folder, fsync, rename) as
/// safetensors: `embeddings` [N, D] in f32, or f16 when `f16` is set, the ids, and metadata
/// (the fields of `meta`, format name and version, tool version).
pub fn save_embeddings(
    path: &Path,
    meta: &EmbeddingMeta,
    ids: &[String],
    vectors: &[f32],
    f16: bool,
) -> Result<(), EmbedError> {
    if vectors.len() != ids.len() * meta.dim {
        return Err(EmbedError::InvalidArgument(format!(
            "{} values for {} ids of dimension {}",
            vectors.len(),
            ids.len(),
            meta.dim
        )));
    }
    let values: Vec<u8> = if f16 {
        vectors
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect()
    } else {
        vectors.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    let id_bytes: Vec<u8> = ids.iter().flat_map(|id| id.bytes()).collect();
    let mut offsets = Vec::with_capacity(ids.len() + 1);
    let mut end = 0i64;
    offsets.push(end);
    for id in ids {
        end += id.len() as i64;
        offsets.push(end);
    }
    let offset_bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    let dtype = if f16 { "F16" } else { "F32" };
    let tensors = [
        (
            EMBEDDINGS,
            dtype,
            vec![ids.len(), meta.dim],
            values.as_slice(),
        ),
        (ID_BYTES, "U8", vec![id_bytes.len()], id_bytes.as_slice()),
        (
            ID_OFFSETS,
            "I64",
            vec![offsets.len()],
            offset_bytes.as_slice(),
        ),
    ];
    let mut metadata = meta.to_map();
    metadata.insert("format".into(), FORMAT_NAME.into());
    metadata.insert(
        "format_version".into(),
        EMBEDDINGS_FORMAT_VERSION.to_string(),
    );
    metadata.insert(
        "tool_version".into(),
        concat!("wtb-embed ", env!("CARGO_PKG_VERSION")).into(),
    );
    metadata.insert("dtype".into(), if f16 { "f16" } else { "f32" }.into());
    let bytes = serialize_sorted(&tensors, &metadata);
    write_atomically(path, &bytes)
}

/// One tensor for [`serialize_sorted`]: name, safetensors dtype name (`F32`, `F16`, `U8`,
/// `I64`), shape and little-endian bytes.
pub(crate) type RawTensor<'a> = (&'a str, &'a str, Vec<usize>, &'a [u8]);

/// A safetensors file whose header lists metadata and tensors in sorted order, so that the
/// same content always gives the same bytes (the `safetensors` crate writes its metadata in
/// hash-map order, which changes from run to run).
pub(crate) fn serialize_sorted(
    tensors: &[RawTensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut sorted: Vec<&RawTensor<'_>> = tensors.iter().collect();
    sorted.sort_by_key(|t| t.0);
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in &sorted {
        header.insert(
            (*name).to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [offset, offset + bytes.len()],
            }),
        );
        offset += bytes.len();
    }
    // serde_json's map keeps keys sorted (no `preserve_order` feature).
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, _, _, bytes) in sorted {
        out.extend_from_slice(bytes);
    }
    out
}

/// Writes `bytes` to `path` through a temporary file in the same folder, fsynced then renamed,
/// so that readers see either the old file or the complete new one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EmbedError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EmbedError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        EmbedError::InvalidArgument(format!("{} is not a file path", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads an embeddings file written by [`save_embeddings`], returning its metadata, the ids and
/// the vectors (row-major N × D, f32 whatever the stored type). With `expected`, a file whose
/// metadata differs is refused with every differing field named.
pub fn load_embeddings(
    path: &Path,
    expected: Option<&EmbeddingMeta>,
) -> Result<(EmbeddingMeta, Vec<String>, Vec<f32>), EmbedError> {
    let bad = |reason: String| EmbedError::BadEmbeddingsFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata".into()))?
        .into_iter()
        .collect();
    if metadata.get("format").map(String::as_str) != Some(FORMAT_NAME) {
        return Err(bad(format!("not a {FORMAT_NAME} file")));
    }
    let version = metadata.get("format_version").cloned().unwrap_or_default();
    if version != EMBEDDINGS_FORMAT_VERSION.to_string() {
        return Err(bad(format!(
            "format version {version:?}, this tool reads {EMBEDDINGS_FORMAT_VERSION}"
        )));
    }
    let meta = EmbeddingMeta::from_map(&metadata).map_err(bad)?;
    if let Some(expected) = expected {
        let differences = meta.differences(expected);
        if !differences.is_empty() {
            return Err(EmbedError::MetaMismatch {
                path: path.to_path_buf(),
                differences: format!("{} (file vs expected)", differences.join("; ")),
            });
        }
    }
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensor = |name: &str| {
        tensors
            .tensor(name)
            .map_err(|e| bad(format!("tensor {name}: {e}")))
    };
    let embeddings = tensor(EMBEDDINGS)?;
    let shape = embeddings.shape();
    if shape.len() != 2 || shape[1] != meta.dim {
        return Err(bad(format!(
            "embeddings shape {shape:?}, metadata dim {}",
            meta.dim
        )));
    }
    let vectors: Vec<f32> = match embeddings.dtype() {
        Dtype::F32 => embeddings
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => embeddings
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(format!(
                "embeddings dtype {other:?}, expected F32 or F16"
            )))
        }
    };
    let id_bytes = tensor(ID_BYTES)?;
    let offsets = tensor(ID_OFFSETS)?;
    if offsets.dtype() != Dtype::I64 || id_bytes.dtype() != Dtype::U8 {
        return Err(bad("ids tensors have the wrong dtype".into()));
    }
    let offsets: Vec<i64> = offsets
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    if offsets.len() != shape[0] + 1 {
        return Err(bad(format!(
            "{} id offsets for {} vectors",
            offsets.len(),
            shape[0]
        )));
    }
    let data = id_bytes.data();
    let mut ids = Vec::with_capacity(shape[0]);
    for (i, pair) in offsets.windows(2).enumerate() {
        let (start, end) = (pair[0], pair[1]);
        if start < 0 || end < start || end as usize > data.len() {
            return Err(bad(format!("id {i}: offsets {start}..{end} out of range")));
        }
        let id = std::str::from_utf8(&data[start as usize..end as usize])
            .map_err(|_| bad(format!("id {i} is not UTF-8")))?;
        ids.push(id.to_string());
    }
    Ok((meta, ids, vectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EmbeddingMeta {
        EmbeddingMeta {
            model: "mobilenet_v2".into(),
            weights_sha256: "ab".repeat(32),
            preprocess: "torchvision".into(),
            pooling: "avg".into(),
            l2_normalized: true,
            dim: 3,
            head: None,
        }
    }

    #[test]
    fn round_trip_f32_and_f16() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.safetensors");
        let ids = vec!["a".to_string(), "bé".to_string()];
        let vectors = vec![0.5, -1.25, 3.0, 1e-3, 0.0, 7.5];
        save_embeddings(&path, &meta(), &ids, &vectors, false).unwrap();
        let (m, i, v) = load_embeddings(&path, Some(&meta())).unwrap();
        assert_eq!((m, i, v), (meta(), ids.clone(), vectors.clone()));
        save_embeddings(&path, &meta(), &ids, &vectors, true).unwrap();
        let (_, _, v) = load_embeddings(&path, None).unwrap();
        for (a, b) in v.iter().zip(&vectors) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1e-3), "{a} vs {b}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
    }

    #[test]
    fn mismatch_is_refused_naming_the_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.safetensors");
        save_embeddings(&path, &meta(), &["x".into()], &[1.0, 2.0, 3.0], false).unwrap();
        let mut other = meta();
        other.pooling = "max".into();
        other.l2_normalized = false;
        let err = load_embeddings(&path, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pooling: avg vs max") && err.contains("l2_normalized"),
            "{err}"
        );
        assert!(!err.contains("model:"), "{err}");
    }

    #[test]
    fn wrong_length_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.safetensors");
        assert!(save_embeddings(&path, &meta(), &["x".into()], &[1.0], false).is_err());
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(matches!(
            load_embeddings(&path, None),
            Err(EmbedError::BadEmbeddingsFile { .. })
        ));
    }

    #[test]
    fn map_round_trip() {
        assert_eq!(EmbeddingMeta::from_map(&meta().to_map()).unwrap(), meta());
        let mut map = meta().to_map();
        map.remove("dim");
        assert!(EmbeddingMeta::from_map(&map).unwrap_err().contains("dim"));
    }
}

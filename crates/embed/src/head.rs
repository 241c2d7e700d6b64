//! Learned heads: a projection trained on street-to-shop pairs (by `wtb-train`) that maps a
//! backbone's pooled features to descriptors where the same product lies closer.
//!
//! A head computes, for a pooled feature vector `x`,
//!
//! ```text
//! p = signed_power(x, power) / |…|          (power 0.5: the signed square root)
//! h = P (p − mean) / |…|                    (P: output × input, learned)
//! y = [√w · x/|x| , √(1−w) · h]              (w = raw_weight; without the raw part when w = 0)
//! ```
//!
//! so `y` has unit length and the cosine of two outputs is `w · cos(raw) + (1 − w) · cos(head)`:
//! the raw part keeps what the ImageNet features know about garments in general while the
//! learned part separates products.
//!
//! A head file is a safetensors file (`mean`, `projection`) with metadata: the backbone it was
//! trained on (model, weights checksum, preprocessing, pooling), dimensions, how it was trained
//! (kind, seed, training-data fingerprint, settings) and a checksum of its content, so that a
//! corrupted file or a head used with another backbone is refused.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, D};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{EmbedError, EmbeddingMeta};

/// The version of the head file layout written by [`Head::save`].
pub const HEAD_FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "wtb-head";

/// What a head was trained on and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMeta {
    /// How it was made: `whitening` (closed form) or `trained` (metric learning).
    pub kind: String,
    /// Backbone model name, e.g. `mobilenet_v2`.
    pub model: String,
    /// sha256 of the backbone's weights file.
    pub weights_sha256: String,
    /// Preprocessing of the backbone's input.
    pub preprocess: String,
    /// Pooling of the backbone's feature map.
    pub pooling: String,
    /// Length of the backbone vectors it takes.
    pub input_dim: usize,
    /// Lengths of the parts of its input normalised separately: one per model of an ensemble
    /// (they add up to `input_dim`).
    pub blocks: Vec<usize>,
    /// Whether it was trained on shop photos cropped to their garment
    /// (`wtb_dataset::foreground_box`): galleries embedded for it are cropped the same way.
    pub shop_trim: bool,
    /// sha256 of the training data (the list of items and labels it learned from).
    pub training_data: String,
    /// The seed of training.
    pub seed: u64,
    /// Training settings and validation figures, as JSON (informative).
    pub details: String,
}

/// A loaded head (see the module documentation for what it computes).
#[derive(Debug, Clone)]
pub struct Head {
    meta: HeadMeta,
    power: f32,
    raw_weight: f32,
    mean: Vec<f32>,
    /// Row-major `projected_dim × input_dim`.
    projection: Vec<f32>,
    projected_dim: usize,
    id: String,
}

/// The rows of a batch `N × D` scaled to unit L2 norm (zero rows stay zero).
pub fn unit_rows(t: &Tensor) -> candle_core::Result<Tensor> {
    let norm = t
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    t.broadcast_div(&norm)
}

fn head_error(path: &Path, reason: impl Into<String>) -> EmbedError {
    EmbedError::BadHeadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Head {
    /// Assembles a head. `projection` is row-major `projected_dim × meta.input_dim`; `power`
    /// must be in (0, 1] and `raw_weight` in [0, 1).
    pub fn new(
        meta: HeadMeta,
        power: f32,
        raw_weight: f32,
        mean: Vec<f32>,
        projection: Vec<f32>,
    ) -> Result<Head, EmbedError> {
        let input_dim = meta.input_dim;
        let invalid = |reason: String| EmbedError::InvalidArgument(format!("head: {reason}"));
        if meta.blocks.iter().sum::<usize>() != input_dim || meta.blocks.contains(&0) {
            return Err(invalid(format!(
                "blocks {:?} do not add up to the input dimension {input_dim}",
                meta.blocks
            )));
        }
        if input_dim == 0 || mean.len() != input_dim {
            return Err(invalid(format!(
                "the mean has {} values for input dimension {input_dim}",
                mean.len()
            )));
        }
        if projection.is_empty() || !projection.len().is_multiple_of(input_dim) {
            return Err(invalid(format!(
                "the projection has {} values, not a multiple of the input dimension {input_dim}",
                projection.len()
            )));
        }
        if !(power > 0.0 && power <= 1.0) {
            return Err(invalid(format!("power {power} is not in (0, 1]")));
        }
        if !(0.0..1.0).contains(&raw_weight) {
            return Err(invalid(format!("raw weight {raw_weight} is not in [0, 1)")));
        }
        if mean.iter().chain(&projection).any(|v| !v.is_finite()) {
            return Err(invalid("a parameter is not finite".into()));
        }
        let projected_dim = projection.len() / input_dim;
        let mut head = Head {
            meta,
            power,
            raw_weight,
            mean,
            projection,
            projected_dim,
            id: String::new(),
        };
        head.id = head.content_sha256();
        Ok(head)
    }

    /// What it was trained on and how.
    pub fn meta(&self) -> &HeadMeta {
        &self.meta
    }

    /// Length of the vectors it takes.
    pub fn input_dim(&self) -> usize {
        self.meta.input_dim
    }

    /// Length of the vectors it returns.
    pub fn output_dim(&self) -> usize {
        self.projected_dim
            + if self.raw_weight > 0.0 {
                self.meta.input_dim
            } else {
                0
            }
    }

    /// Weight of the raw features in the output's cosine.
    pub fn raw_weight(&self) -> f32 {
        self.raw_weight
    }

    /// The exponent of the signed power applied to the input.
    pub fn power(&self) -> f32 {
        self.power
    }

    /// A name that changes whenever any parameter or metadata changes: `KIND-<16 hex>`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.meta.kind, &self.id[..16])
    }

    /// Checks that vectors described by `meta` are what this head was trained on; the error
    /// lists every difference.
    pub fn check_backbone(&self, meta: &EmbeddingMeta, path: &Path) -> Result<(), EmbedError> {
        let mut differences = Vec::new();
        let mut compare = |field: &str, head: &str, vectors: &str| {
            if head != vectors {
                differences.push(format!("{field}: head has {head}, vectors have {vectors}"));
            }
        };
        compare("model", &self.meta.model, &meta.model);
        compare(
            "weights_sha256",
            &self.meta.weights_sha256,
            &meta.weights_sha256,
        );
        compare("preprocess", &self.meta.preprocess, &meta.preprocess);
        compare("pooling", &self.meta.pooling, &meta.pooling);
        compare(
            "dim",
            &self.meta.input_dim.to_string(),
            &meta.dim.to_string(),
        );
        if meta.head.is_some() {
            differences.push("the vectors already went through a head".into());
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(EmbedError::HeadMismatch {
                path: path.to_path_buf(),
                differences: differences.join("; "),
            })
        }
    }

    /// The metadata of vectors made by passing vectors of `backbone` through this head.
    pub fn output_meta(&self, backbone: &EmbeddingMeta) -> EmbeddingMeta {
        EmbeddingMeta {
            l2_normalized: true,
            dim: self.output_dim(),
            head: Some(self.id()),
            ..backbone.clone()
        }
    }

    /// Applies the head to a batch `N × input_dim` on its device.
    pub fn apply_tensor(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let device = features.device();
        let features = features.to_dtype(candle_core::DType::F32)?;
        let (n, dim) = features.dims2()?;
        if dim != self.meta.input_dim {
            candle_core::bail!(
                "the head takes vectors of {} values, got {dim}",
                self.meta.input_dim
            );
        }
        let normalize = unit_rows;
        // Each model's part of an ensemble at unit length, the whole at unit length.
        let normalize_blocks = |t: &Tensor| -> candle_core::Result<Tensor> {
            if self.meta.blocks.len() < 2 {
                return normalize(t);
            }
            let mut parts = Vec::with_capacity(self.meta.blocks.len());
            let mut start = 0;
            for &len in &self.meta.blocks {
                parts.push(normalize(&t.narrow(1, start, len)?)?);
                start += len;
            }
            Tensor::cat(&parts, 1)? / (self.meta.blocks.len() as f64).sqrt()
        };
        let powered = if self.power == 1.0 {
            features.clone()
        } else {
            // sign(x)·|x|^p; pooled CNN features are mostly non-negative but GeM of a
            // signed map need not be.
            let magnitude = features.abs()?.powf(f64::from(self.power))?;
            features.sign()?.mul(&magnitude)?
        };
        let mean = Tensor::from_slice(&self.mean, (1, dim), device)?;
        let projection = Tensor::from_slice(&self.projection, (self.projected_dim, dim), device)?;
        let centred = normalize_blocks(&powered)?.broadcast_sub(&mean)?;
        let projected = normalize(&centred.matmul(&projection.t()?)?)?;
        if self.raw_weight > 0.0 {
            let raw = (normalize_blocks(&features)? * f64::from(self.raw_weight.sqrt()))?;
            let learned = (projected * f64::from((1.0 - self.raw_weight).sqrt()))?;
            Tensor::cat(&[raw, learned], 1)
        } else {
            debug_assert_eq!(projected.dims2()?, (n, self.projected_dim));
            Ok(projected)
        }
    }

    /// Applies the head to `vectors` (row-major, a multiple of `input_dim` long) on the CPU.
    pub fn apply(&self, vectors: &[f32]) -> Result<Vec<f32>, EmbedError> {
        let dim = self.meta.input_dim;
        if !vectors.len().is_multiple_of(dim) {
            return Err(EmbedError::InvalidArgument(format!(
                "{} values are not a whole number of {dim}-value vectors",
                vectors.len()
            )));
        }
        if vectors.is_empty() {
            return Ok(Vec::new());
        }
        let model_error = |source| EmbedError::Model {
            model: format!("head {}", self.id()),
            source,
        };
        let input = Tensor::from_slice(vectors, (vectors.len() / dim, dim), &Device::Cpu)
            .map_err(model_error)?;
        self.apply_tensor(&input)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(model_error)
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        let m = &self.meta;
        [
            ("format", FORMAT_NAME.to_string()),
            ("format_version", HEAD_FORMAT_VERSION.to_string()),
            ("kind", m.kind.clone()),
            ("model", m.model.clone()),
            ("weights_sha256", m.weights_sha256.clone()),
            ("preprocess", m.preprocess.clone()),
            ("pooling", m.pooling.clone()),
            ("input_dim", m.input_dim.to_string()),
            (
                "blocks",
                m.blocks
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("output_dim", self.output_dim().to_string()),
            ("training_data", m.training_data.clone()),
            ("seed", m.seed.to_string()),
            ("shop_trim", m.shop_trim.to_string()),
            ("details", m.details.clone()),
            ("power", format!("{:?}", self.power)),
            ("raw_weight", format!("{:?}", self.raw_weight)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// sha256 over the metadata (less the checksum itself) and every parameter's bytes.
    fn content_sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for (key, value) in self.metadata() {
            hasher.update(format!("{key}={value}\n").as_bytes());
        }
        for value in self.mean.iter().chain(&self.projection) {
            hasher.update(value.to_le_bytes());
        }
        hex::encode(hasher.finalize())
    }

    /// Writes the head atomically (temporary file in the same folder, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), EmbedError> {
        let bytes =
            |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let (mean, projection) = (bytes(&self.mean), bytes(&self.projection));
        let tensors = [
            ("mean", "F32", vec![self.meta.input_dim], mean.as_slice()),
            (
                "projection",
                "F32",
                vec![self.projected_dim, self.meta.input_dim],
                projection.as_slice(),
            ),
        ];
        let mut metadata = self.metadata();
        metadata.insert("content_sha256".into(), self.id.clone());
        let serialized = crate::store::serialize_sorted(&tensors, &metadata);
        crate::store::write_atomically(path, &serialized)
    }

    /// Reads a head file, checking its format, version, shapes and checksum.
    pub fn load(path: &Path) -> Result<Head, EmbedError> {
        let bytes = std::fs::read(path).map_err(|source| EmbedError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, file_meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| head_error(path, format!("not a safetensors file ({e})")))?;
        let metadata = file_meta
            .metadata()
            .clone()
            .ok_or_else(|| head_error(path, "no metadata (not a wtb head file)"))?;
        let get = |key: &str| -> Result<String, EmbedError> {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| head_error(path, format!("missing metadata field {key:?}")))
        };
        if get("format")? != FORMAT_NAME {
            return Err(head_error(
                path,
                format!("format is {:?}, not {FORMAT_NAME:?}", get("format")?),
            ));
        }
        let version = get("format_version")?;
        if version != HEAD_FORMAT_VERSION.to_string() {
            return Err(head_error(
                path,
                format!("format version {version}; this build reads version {HEAD_FORMAT_VERSION}"),
            ));
        }
        let number = |key: &str| -> Result<f64, EmbedError> {
            let text = get(key)?;
            text.parse::<f64>().map_err(|_| {
                head_error(
                    path,
                    format!("metadata field {key:?} is {text:?}, not a number"),
                )
            })
        };
        let input_dim = number("input_dim")? as usize;
        let seed_text = get("seed")?;
        let blocks_text = get("blocks")?;
        let blocks = blocks_text
            .split(',')
            .map(|b| b.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| head_error(path, format!("blocks {blocks_text:?} are not numbers")))?;
        let meta = HeadMeta {
            kind: get("kind")?,
            model: get("model")?,
            weights_sha256: get("weights_sha256")?,
            preprocess: get("preprocess")?,
            pooling: get("pooling")?,
            input_dim,
            blocks,
            shop_trim: match get("shop_trim")?.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(head_error(
                        path,
                        format!("shop_trim is {other:?}, not true or false"),
                    ))
                }
            },
            training_data: get("training_data")?,
            seed: seed_text
                .parse()
                .map_err(|_| head_error(path, format!("seed {seed_text:?} is not a number")))?,
            details: get("details")?,
        };
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| head_error(path, format!("unreadable tensors ({e})")))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), EmbedError> {
            let view = tensors
                .tensor(name)
                .map_err(|_| head_error(path, format!("no tensor {name:?}")))?;
            if view.dtype() != Dtype::F32 {
                return Err(head_error(path, format!("tensor {name:?} is not f32")));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((view.shape().to_vec(), values))
        };
        let (mean_shape, mean) = read("mean")?;
        let (projection_shape, projection) = read("projection")?;
        if mean_shape != [input_dim]
            || projection_shape.len() != 2
            || projection_shape[1] != input_dim
        {
            return Err(head_error(
                path,
                format!(
                    "tensor shapes mean {mean_shape:?}, projection {projection_shape:?} do not fit input dimension {input_dim}"
                ),
            ));
        }
        let head = Head::new(
            meta,
            number("power")? as f32,
            number("raw_weight")? as f32,
            mean,
            projection,
        )
        .map_err(|e| head_error(path, e.to_string()))?;
        let expected = get("content_sha256")?;
        if head.id != expected {
            return Err(head_error(
                path,
                "content checksum mismatch: the file is corrupted or was edited",
            ));
        }
        let output_dim = number("output_dim")? as usize;
        if output_dim != head.output_dim() {
            return Err(head_error(
                path,
                format!(
                    "metadata says {output_dim} output values, the tensors make {}",
                    head.output_dim()
                ),
            ));
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(input_dim: usize) -> HeadMeta {
        HeadMeta {
            kind: "trained".into(),
            model: "mobilenet_v2".into(),
            weights_sha256: "abc".into(),
            preprocess: "squash".into(),
            pooling: "avg".into(),
            input_dim,
            blocks: vec![input_dim],
            shop_trim: false,
            training_data: "data".into(),
            seed: 7,
            details: "{}".into(),
        }
    }

    fn sample(raw_weight: f32) -> Head {
        let projection: Vec<f32> = (0..12).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        Head::new(
            meta(4),
            0.5,
            raw_weight,
            vec![0.1, 0.2, 0.0, 0.3],
            projection,
        )
        .unwrap()
    }

    #[test]
    fn apply_matches_the_formula() {
        let head = sample(0.25);
        let x = [1.0f32, 4.0, 0.0, 9.0];
        let out = head.apply(&x).unwrap();
        assert_eq!(out.len(), head.output_dim());
        assert_eq!(head.output_dim(), 4 + 3);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        let p: Vec<f32> = x.iter().map(|v| v.sqrt()).collect();
        let pn = norm(&p);
        let centred: Vec<f32> = p.iter().zip(&head.mean).map(|(a, m)| a / pn - m).collect();
        let h: Vec<f32> = head
            .projection
            .chunks(4)
            .map(|row| row.iter().zip(&centred).map(|(a, b)| a * b).sum())
            .collect();
        let hn = norm(&h);
        let xn = norm(&x);
        for i in 0..4 {
            assert!((out[i] - 0.5 * x[i] / xn).abs() < 1e-6);
        }
        for i in 0..3 {
            assert!((out[4 + i] - 0.75f32.sqrt() * h[i] / hn).abs() < 1e-6);
        }
        assert!((norm(&out) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn save_load_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        let head = sample(0.0);
        head.save(&path).unwrap();
        let back = Head::load(&path).unwrap();
        assert_eq!(back.id(), head.id());
        assert_eq!(
            back.apply(&[1.0, 2.0, 3.0, 4.0]).unwrap(),
            head.apply(&[1.0, 2.0, 3.0, 4.0]).unwrap()
        );

        // One flipped bit in the parameters is caught by the checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let err = Head::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains("head.safetensors"),
            "{err}"
        );

        // A truncated file and a file of another kind name the file and the problem.
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = Head::load(&path).unwrap_err().to_string();
        assert!(err.contains("head.safetensors"), "{err}");
        std::fs::write(&path, b"not a head").unwrap();
        assert!(Head::load(&path).is_err());
    }

    #[test]
    fn backbone_mismatch_lists_the_differences() {
        let head = sample(0.0);
        let vectors = EmbeddingMeta {
            model: "efficientnet_lite0".into(),
            weights_sha256: "abc".into(),
            preprocess: "torchvision".into(),
            pooling: "avg".into(),
            l2_normalized: false,
            dim: 4,
            head: None,
        };
        let err = head
            .check_backbone(&vectors, Path::new("h.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model") && err.contains("preprocess"), "{err}");
        assert!(!err.contains("pooling"), "{err}");
        let ok = EmbeddingMeta {
            model: "mobilenet_v2".into(),
            preprocess: "squash".into(),
            ..vectors
        };
        head.check_backbone(&ok, Path::new("h.safetensors"))
            .unwrap();
        let out = head.output_meta(&ok);
        assert_eq!(out.dim, 3);
        assert_eq!(out.head.as_deref(), Some(head.id().as_str()));
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Head::new(meta(4), 0.5, 0.0, vec![0.0; 3], vec![0.0; 8]).is_err());
        assert!(Head::new(meta(4), 0.5, 0.0, vec![0.0; 4], vec![0.0; 7]).is_err());
        assert!(Head::new(meta(4), 0.0, 0.0, vec![0.0; 4], vec![0.0; 8]).is_err());
        assert!(Head::new(meta(4), 0.5, 1.0, vec![0.0; 4], vec![0.0; 8]).is_err());
        assert!(Head::new(meta(4), 0.5, 0.0, vec![f32::NAN; 4], vec![0.0; 8]).is_err());
    }
}

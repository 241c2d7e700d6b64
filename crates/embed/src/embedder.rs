//! The embedder: a loaded model with its preprocessing and pooling, embedding single batches
//! or whole lists of images through a pipeline that decodes on worker threads.

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Module, VarBuilder};
use image::RgbImage;
use rayon::prelude::*;

use crate::head::unit_rows;
use crate::models::{self, Backbone};
use crate::preprocess::{input_size, preprocess_image, preprocess_into};
use crate::weights::{self, SyntheticWeights, SYNTHETIC_WEIGHTS_ID};
use crate::{EmbedError, EmbedderConfig, EmbeddingMeta, Engine, Head, ModelKind, Pooling};

/// The network of `kind`: the fused CPU plan when `engine` asks for it and it exists, else
/// stock candle ops.
fn build_backbone(
    kind: ModelKind,
    engine: Engine,
    device: &Device,
    vb: VarBuilder,
) -> Result<Box<dyn Backbone>, EmbedError> {
    let name = kind.name();
    let fast = match engine {
        Engine::Fast if device.is_cpu() => models::fast::FastBackbone::new(kind, vb.clone()),
        _ => None,
    };
    Ok(match fast {
        Some(fast) => Box::new(fast.map_err(EmbedError::model(name))?),
        None => match kind {
            ModelKind::MobileNetV2 => Box::new(
                models::mobilenet_v2::MobileNetV2::new(vb).map_err(EmbedError::model(name))?,
            ),
            ModelKind::EfficientNetLite0 => Box::new(
                models::efficientnet_lite0::EfficientNetLite0::new(vb)
                    .map_err(EmbedError::model(name))?,
            ),
            ModelKind::ResNet50 => {
                Box::new(models::resnet::ResNet50::new(vb).map_err(EmbedError::model(name))?)
            }
            ModelKind::Vgg16 => {
                Box::new(models::vgg::Vgg16::new(vb).map_err(EmbedError::model(name))?)
            }
        },
    })
}

/// A loaded model with its preprocessing, pooling and normalisation.
pub struct Embedder {
    config: EmbedderConfig,
    meta: EmbeddingMeta,
    device: Device,
    backbone: Box<dyn Backbone>,
    /// The other models of an ensemble.
    ensemble: Vec<Box<dyn Backbone>>,
    head: Option<Head>,
    /// Input scales whose pooled features are averaged (multi-scale descriptors); `[1.0]`:
    /// one pass at the preprocessing's size.
    scales: Vec<f32>,
}

/// The scales of multi-scale descriptors in the instance-retrieval literature (Radenović,
/// Tolias and Chum, 2018): the input at 1/√2, 1 and √2 of its size.
pub const MULTI_SCALES: [f32; 3] = [
    std::f32::consts::FRAC_1_SQRT_2,
    1.0,
    std::f32::consts::SQRT_2,
];

/// What a pipeline run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedOutcome {
    /// The ids that were embedded, in input order.
    pub ids: Vec<String>,
    /// The vector length.
    pub dim: usize,
    /// The vectors, row-major `ids.len() × dim`.
    pub vectors: Vec<f32>,
    /// The ids that were skipped, with the reason (undecodable file, empty crop...).
    pub skipped: Vec<(String, String)>,
}

impl Embedder {
    /// Loads the model of `config`: resolves the weights file (see
    /// [`resolve_weights`](crate::resolve_weights)), records its sha256, reads it (safetensors or
    /// `.pth`, torchvision/timm/lukemelas layout) and opens the device. A missing or misshapen
    /// tensor is an error naming it.
    pub fn load(config: &EmbedderConfig) -> Result<Self, EmbedError> {
        let device = config.device.open()?;
        let mut backbones = Vec::new();
        let mut checksums = Vec::new();
        let members = std::iter::once((config.model, config.weights.clone()))
            .chain(config.ensemble.iter().cloned());
        for (kind, explicit) in members {
            let path = weights::resolve_weights(kind, explicit.as_deref())?;
            checksums.push(weights::sha256_file(&path)?);
            let vb = weights::open_var_builder(kind, &path, &device)?;
            let backbone =
                build_backbone(kind, config.engine, &device, vb).map_err(|e| match e {
                    EmbedError::Model { source, .. } => EmbedError::Weights {
                        path: path.clone(),
                        source,
                    },
                    other => other,
                })?;
            backbones.push(backbone);
        }
        Self::assemble(config, backbones, checksums.join("+"), device)
    }

    /// Builds the model of `config` with the deterministic synthetic weights of the golden
    /// tests (`shared/golden/README.md`), ignoring `config.weights`. For wiring tests and
    /// speed measurements only: the vectors mean nothing.
    pub fn with_synthetic_weights(config: &EmbedderConfig) -> Result<Self, EmbedError> {
        let device = config.device.open()?;
        let mut backbones = Vec::new();
        let kinds = std::iter::once(config.model).chain(config.ensemble.iter().map(|(k, _)| *k));
        for kind in kinds {
            let vb =
                VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, device.clone());
            backbones.push(build_backbone(kind, config.engine, &device, vb)?);
        }
        let checksums = vec![SYNTHETIC_WEIGHTS_ID; backbones.len()];
        Self::assemble(config, backbones, checksums.join("+"), device)
    }

    fn assemble(
        config: &EmbedderConfig,
        mut backbones: Vec<Box<dyn Backbone>>,
        weights_sha256: String,
        device: Device,
    ) -> Result<Self, EmbedError> {
        let size = input_size(config.preprocess, config.model);
        for (kind, _) in &config.ensemble {
            if input_size(config.preprocess, *kind) != size {
                return Err(EmbedError::InvalidArgument(format!(
                    "an ensemble's models must share the input size: {} takes {size} pixels \
                     with {} preprocessing, {} takes {}",
                    config.model.name(),
                    config.preprocess.name(),
                    kind.name(),
                    input_size(config.preprocess, *kind)
                )));
            }
        }
        let ensemble_kinds: Vec<ModelKind> = config.ensemble.iter().map(|(k, _)| *k).collect();
        let backbone = backbones.remove(0);
        let mut meta = EmbeddingMeta {
            model: crate::models_name(config.model, &ensemble_kinds),
            weights_sha256,
            preprocess: config.preprocess.name().to_string(),
            pooling: config.pooling.name(),
            l2_normalized: config.l2_normalize,
            dim: config.model.dim() + ensemble_kinds.iter().map(|k| k.dim()).sum::<usize>(),
            head: None,
        };
        let head = match &config.head {
            Some(path) => {
                let head = Head::load(path)?;
                head.check_backbone(&meta, path)?;
                meta = head.output_meta(&meta);
                Some(head)
            }
            None => None,
        };
        Ok(Embedder {
            config: config.clone(),
            meta,
            device,
            backbone,
            ensemble: backbones,
            head,
            scales: vec![1.0],
        })
    }

    /// This embedder with multi-scale descriptors: the preprocessed input resized (bilinear)
    /// to each of `scales` times its side, each pass's pooled features at unit length, their
    /// mean going on to the head or the normalisation. The embedding metadata's pooling
    /// records the scales (`avg@0.707+1+1.414`), so that vectors of other scales are refused.
    pub fn with_scales(mut self, scales: &[f32]) -> Result<Self, EmbedError> {
        if scales.is_empty() {
            return Err(EmbedError::InvalidArgument(
                "multi-scale descriptors need at least one scale".into(),
            ));
        }
        for (i, &scale) in scales.iter().enumerate() {
            if !(0.25..=4.0).contains(&scale) {
                return Err(EmbedError::InvalidArgument(format!(
                    "input scale {scale} is not in [0.25, 4]"
                )));
            }
            if scales[..i].contains(&scale) {
                return Err(EmbedError::InvalidArgument(format!(
                    "input scale {scale} is repeated"
                )));
            }
        }
        self.scales = scales.to_vec();
        if scales != [1.0] {
            let names: Vec<String> = scales.iter().map(|s| format!("{s:.3}")).collect();
            let names: Vec<&str> = names
                .iter()
                .map(|n| n.trim_end_matches('0').trim_end_matches('.'))
                .collect();
            self.meta.pooling = format!("{}@{}", self.config.pooling.name(), names.join("+"));
        }
        Ok(self)
    }

    /// The input scales of this embedder's descriptors.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// How the vectors of this embedder are made.
    pub fn meta(&self) -> &EmbeddingMeta {
        &self.meta
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &EmbedderConfig {
        &self.config
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the loaded weights include the ImageNet classifier head.
    pub fn has_classifier(&self) -> bool {
        self.backbone.classifier().is_some()
    }

    /// The side of the square input the preprocessing produces.
    pub fn input_size(&self) -> u32 {
        input_size(self.config.preprocess, self.config.model)
    }

    /// The fewest pixels the shorter side of a photo (or box) needs for this embedder's
    /// preprocessing; a photo much larger may be decoded at reduced scale
    /// (`wtb_dataset::decode_rgb_reduced`) without changing what the model sees.
    pub fn source_side(&self) -> u32 {
        // The models of an ensemble share one input size (checked when it is built).
        crate::preprocess::source_side(self.config.preprocess, self.config.model)
    }

    fn model_error(&self) -> impl FnOnce(candle_core::Error) -> EmbedError + '_ {
        EmbedError::model(self.config.model.name())
    }

    /// The last feature map (N×C×H×W) of an already preprocessed N×3×H×W input.
    pub fn feature_map(&self, input: &Tensor) -> Result<Tensor, EmbedError> {
        let input = input.to_device(&self.device).map_err(self.model_error())?;
        self.backbone.features(&input).map_err(self.model_error())
    }

    /// The learned head applied after pooling, if any.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// The embeddings (N×D, pooled and normalised as configured, through the head when there
    /// is one) of a preprocessed input.
    pub fn embed_tensor(&self, input: &Tensor) -> Result<Tensor, EmbedError> {
        let run = || -> candle_core::Result<Tensor> {
            let input = input.to_device(&self.device)?;
            let pooled = if self.scales == [1.0] {
                self.pooled(&input)?
            } else {
                let (_, _, height, width) = input.dims4()?;
                let mut sum: Option<Tensor> = None;
                for &scale in &self.scales {
                    let resized = if scale == 1.0 {
                        input.clone()
                    } else {
                        let side = |n: usize| ((n as f32 * scale).round() as usize).max(32);
                        input.upsample_bilinear2d(side(height), side(width), false)?
                    };
                    let part = unit_rows(&self.pooled(&resized)?)?;
                    sum = Some(match sum {
                        Some(total) => (total + part)?,
                        None => part,
                    });
                }
                match sum {
                    Some(total) => (total / self.scales.len() as f64)?,
                    None => candle_core::bail!("no input scale"),
                }
            };
            if let Some(head) = &self.head {
                // The head normalises its own input and output.
                head.apply_tensor(&pooled)
            } else if self.config.l2_normalize {
                unit_rows(&pooled)
            } else {
                Ok(pooled)
            }
        };
        run().map_err(self.model_error())
    }

    /// The pooled features of every model of the embedder, each model's part at unit length
    /// when there are several, so that every model weighs the same.
    fn pooled(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = pool(&self.backbone.features(input)?, self.config.pooling)?;
        if self.ensemble.is_empty() {
            return Ok(pooled);
        }
        let mut parts = vec![unit_rows(&pooled)?];
        for member in &self.ensemble {
            parts.push(unit_rows(&pool(
                &member.features(input)?,
                self.config.pooling,
            )?)?);
        }
        Tensor::cat(&parts, 1)
    }

    /// The ImageNet logits (N×1000) of a preprocessed input: the classifier over
    /// average-pooled features, whatever the configured pooling.
    pub fn logits_tensor(&self, input: &Tensor) -> Result<Tensor, EmbedError> {
        let classifier = self
            .backbone
            .classifier()
            .ok_or_else(|| EmbedError::NoClassifier {
                model: self.config.model.name().to_string(),
                reason: if self.config.model.has_classifier() {
                    "the weights file has no classifier tensors".to_string()
                } else {
                    "this model is built as a headless feature extractor".to_string()
                },
            })?;
        let run = || -> candle_core::Result<Tensor> {
            let map = self.backbone.features(&input.to_device(&self.device)?)?;
            classifier.forward(&pool(&map, Pooling::Avg)?)
        };
        run().map_err(self.model_error())
    }

    fn batch_tensor(&self, prepared: Vec<f32>, n: usize) -> Result<Tensor, EmbedError> {
        let side = self.input_size() as usize;
        Tensor::from_vec(prepared, (n, 3, side, side), &self.device).map_err(self.model_error())
    }

    fn preprocess(&self, image: &RgbImage, index: usize) -> Result<Vec<f32>, EmbedError> {
        preprocess_image(image, self.config.preprocess, self.config.model)
            .map_err(|reason| EmbedError::BadImage { index, reason })
    }

    /// Embeds one batch of decoded images (one vector per image, in order).
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let image_len = 3 * (self.input_size() as usize).pow(2);
        let mut prepared = vec![0f32; images.len() * image_len];
        let results: Vec<Result<(), String>> = prepared
            .par_chunks_mut(image_len)
            .zip(images)
            .map(|(slot, image)| {
                preprocess_into(image, self.config.preprocess, self.config.model, slot)
            })
            .collect();
        // The first bad image in input order, whichever thread met it first.
        let first_bad = results
            .into_iter()
            .enumerate()
            .find_map(|(index, result)| result.err().map(|reason| (index, reason)));
        if let Some((index, reason)) = first_bad {
            return Err(EmbedError::BadImage { index, reason });
        }
        let input = self.batch_tensor(prepared, images.len())?;
        let embeddings = self.embed_tensor(&input)?;
        embeddings.to_vec2::<f32>().map_err(self.model_error())
    }

    /// The `top` most probable ImageNet classes of an image, as (class index, probability),
    /// most probable first. Class names: [`imagenet_class_name`](crate::imagenet_class_name).
    pub fn classify(&self, image: &RgbImage, top: usize) -> Result<Vec<(usize, f32)>, EmbedError> {
        let input = self.batch_tensor(self.preprocess(image, 0)?, 1)?;
        let logits = self.logits_tensor(&input)?;
        let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)
            .and_then(|p| p.squeeze(0))
            .and_then(|p| p.to_vec1::<f32>())
            .map_err(self.model_error())?;
        let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(top);
        Ok(ranked)
    }

    /// The pipeline of [`embed_jobs`](Self::embed_jobs) over any image source: `load(i)` returns
    /// image `i` (of `ids.len()`), or why it cannot; it runs on worker threads, and a panic in
    /// it counts as a failure of that image.
    pub fn embed_with_loader<F>(
        &self,
        ids: &[String],
        load: F,
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<EmbedOutcome, EmbedError>
    where
        F: Fn(usize) -> Result<RgbImage, String> + Sync,
    {
        let batch = batch.max(1);
        let total = ids.len();
        let (config, model) = (self.config.preprocess, self.config.model);
        let image_len = 3 * (input_size(config, model) as usize).pow(2);
        // Each image is prepared straight into its slot of the batch input.
        let prepare = |i: usize, slot: &mut [f32]| -> Result<(), String> {
            let image = catch_unwind(AssertUnwindSafe(|| load(i)))
                .unwrap_or_else(|_| Err("the decoder panicked".to_string()))?;
            preprocess_into(&image, config, model, slot)
        };
        // One batch in the channel and one being prepared while the model runs a third.
        let (sender, receiver) = crossbeam_channel::bounded::<PreparedBatch>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for start in (0..total).step_by(batch) {
                    let end = (start + batch).min(total);
                    let mut input = vec![0f32; (end - start) * image_len];
                    let results: Vec<Result<(), String>> = input
                        .par_chunks_mut(image_len)
                        .zip(start..end)
                        .map(|(slot, i)| prepare(i, slot))
                        .collect();
                    if sender
                        .send(PreparedBatch::new(start, input, results, image_len))
                        .is_err()
                    {
                        break; // the model side stopped on an error
                    }
                }
            });
            let mut outcome = EmbedOutcome {
                dim: self.meta.dim,
                ..Default::default()
            };
            let mut done = 0;
            for prepared in receiver {
                done += prepared.embedded.len() + prepared.skipped.len();
                for (i, reason) in prepared.skipped {
                    outcome.skipped.push((ids[i].clone(), reason));
                }
                if !prepared.embedded.is_empty() {
                    let input = self.batch_tensor(prepared.input, prepared.embedded.len())?;
                    let vectors = self
                        .embed_tensor(&input)?
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(self.model_error())?;
                    outcome.vectors.extend_from_slice(&vectors);
                    outcome
                        .ids
                        .extend(prepared.embedded.into_iter().map(|i| ids[i].clone()));
                }
                progress(done, total);
            }
            Ok(outcome)
        })
    }
}

/// One batch of the pipeline: the model input of the images that could be prepared, in order,
/// and why the others could not.
struct PreparedBatch {
    input: Vec<f32>,
    embedded: Vec<usize>,
    skipped: Vec<(usize, String)>,
}

impl PreparedBatch {
    /// Batch images `first..` prepared into consecutive `image_len` slots of `input`; the
    /// slots of failed images are closed up.
    fn new(
        first: usize,
        mut input: Vec<f32>,
        results: Vec<Result<(), String>>,
        image_len: usize,
    ) -> Self {
        let (mut embedded, mut skipped) = (Vec::new(), Vec::new());
        for (slot, result) in results.into_iter().enumerate() {
            match result {
                Ok(()) => {
                    let to = embedded.len() * image_len;
                    if to != slot * image_len {
                        input.copy_within(slot * image_len..(slot + 1) * image_len, to);
                    }
                    embedded.push(first + slot);
                }
                Err(reason) => skipped.push((first + slot, reason)),
            }
        }
        input.truncate(embedded.len() * image_len);
        PreparedBatch {
            input,
            embedded,
            skipped,
        }
    }
}

/// Reduces an N×C×H×W map to N×C.
fn pool(map: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    match pooling {
        Pooling::Avg => map.mean((2, 3)),
        Pooling::Max => map.flatten_from(2)?.max(2),
        Pooling::Gem(p) => map
            .clamp(1e-6f32, f32::MAX)?
            .powf(p as f64)?
            .mean((2, 3))?
            .powf(1.0 / p as f64),
        Pooling::Rmac(levels) => rmac(map, levels),
    }
}

/// Top-left corners along one side of `length` of R-MAC's regions of side `side` at a scale
/// with `count` regions along that side (evenly spread, first and last at the edges).
fn region_starts(length: usize, side: usize, count: usize) -> Vec<usize> {
    if count <= 1 {
        return vec![0];
    }
    let step = (length - side) as f64 / (count - 1) as f64;
    (0..count)
        .map(|i| ((i as f64 * step).floor() as usize).min(length - side))
        .collect()
}

/// R-MAC (Tolias, Sicre and Jégou, ICLR 2016): the whole map's max-pooled vector plus, at each
/// scale l = 1..=levels, square regions of side 2·min(H, W)/(l + 1), l regions along the
/// shorter side and as many along the longer side as keep the overlap near 40%; every region
/// max-pooled and L2-normalised before the sum.
fn rmac(map: &Tensor, levels: u8) -> candle_core::Result<Tensor> {
    let (_, _, height, width) = map.dims4()?;
    let region = |top: usize, left: usize, side_h: usize, side_w: usize| {
        map.narrow(2, top, side_h)?
            .narrow(3, left, side_w)?
            .flatten_from(2)?
            .max(2)
    };
    let mut sum = unit_rows(&region(0, 0, height, width)?)?;
    let short = height.min(width);
    let long = height.max(width);
    // Extra regions along the longer side: the count whose overlap is closest to 40%.
    let extra = if long == short {
        0
    } else {
        (1..=6)
            .min_by(|&a, &b| {
                let overlap = |steps: usize| {
                    let shift = (long - short) as f64 / steps as f64;
                    ((short * short) as f64 - short as f64 * shift) / (short * short) as f64
                };
                (overlap(a) - 0.4)
                    .abs()
                    .total_cmp(&(overlap(b) - 0.4).abs())
            })
            .unwrap_or(1)
    };
    for level in 1..=usize::from(levels) {
        let side = ((2 * short) / (level + 1)).max(1);
        let (count_h, count_w) = if height < width {
            (level, level + extra)
        } else {
            (level + extra, level)
        };
        for &top in &region_starts(height, side, count_h) {
            for &left in &region_starts(width, side, count_w) {
                sum = (sum + unit_rows(&region(top, left, side, side)?)?)?;
            }
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmac_regions_cover_a_seven_by_seven_map_as_the_paper_does() {
        // 7×7 (a 224-pixel input): 1 + 4 + 9 regions of sides 7, 4 and 3 at three scales.
        assert_eq!(region_starts(7, 4, 2), vec![0, 3]);
        assert_eq!(region_starts(7, 3, 3), vec![0, 2, 4]);
        // Two channels: the first only lights the top-left corner, so only the regions that
        // contain it see it (the whole map twice, one of four, one of nine: 4 of 15).
        let mut values = vec![0f32; 2 * 49];
        values[0] = 1.0;
        values[49..].iter_mut().for_each(|v| *v = 0.5);
        let map = Tensor::from_vec(values, (1, 2, 7, 7), &Device::Cpu).unwrap();
        let out: Vec<f32> = pool(&map, Pooling::Rmac(3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let with_corner = 1.0 / 1.25f32.sqrt();
        let without = 1.0;
        let first = 4.0 * with_corner;
        let second = 4.0 * (0.5 / 1.25f32.sqrt()) + 11.0 * without;
        assert!((out[0] - first).abs() < 1e-5, "{out:?}");
        assert!((out[1] - second).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn pooling_reduces_as_documented() {
        let map = Tensor::new(&[[[[1f32, 2.], [3., 6.]]]], &Device::Cpu).unwrap();
        let value = |p| {
            pool(&map, p)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert!((value(Pooling::Avg) - 3.0).abs() < 1e-6);
        assert!((value(Pooling::Max) - 6.0).abs() < 1e-6);
        let gem2 = ((1.0f32 + 4.0 + 9.0 + 36.0) / 4.0).sqrt();
        assert!((value(Pooling::Gem(2.0)) - gem2).abs() < 1e-5);
        // One channel: every region's normalised max is 1; one level is the whole map twice.
        assert!((value(Pooling::Rmac(1)) - 2.0).abs() < 1e-6);
    }
}

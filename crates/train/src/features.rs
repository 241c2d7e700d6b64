//! Backbone features of the training data, computed once and cached (per model, weights
//! checksum, preprocessing and pooling, like the evaluation's cache): every item as is and
//! mirrored, and street crops also with jittered boxes, so that training sees the variations
//! of real queries without running the backbone again.

use std::path::Path;

use wtb_dataset::BBox;
use wtb_embed::{embed_cached, Embedder, ImageJob};

use crate::data::{ItemKind, SplitMix64, TrainingSet};
use crate::TrainError;

/// Which views of each item are embedded.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewOptions {
    /// Extra crops of each street photo with every box edge moved by up to `jitter` of the
    /// box size (each also mirrored at random).
    pub street_jitters: usize,
    /// The largest edge shift of a jittered box, as a fraction of its width or height.
    pub jitter: f64,
    /// Seed of the jitter.
    pub seed: u64,
    /// Crop shop photos to their garment (see `wtb_dataset::foreground_box`).
    pub trim_shop: bool,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            street_jitters: 2,
            jitter: 0.1,
            seed: 7,
            trim_shop: true,
        }
    }
}

/// The features of a training set: one row per embedded view.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Vector length.
    pub dim: usize,
    /// Row-major `rows × dim` raw pooled backbone features.
    pub values: Vec<f32>,
    /// For each row, the index of its item in the training set.
    pub item: Vec<usize>,
    /// For each row, its view: 0 as is, 1 mirrored, 2.. jittered crops.
    pub view: Vec<usize>,
    /// Views that could not be embedded (unreadable photo, empty crop), with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Features {
    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.dim..(r + 1) * self.dim]
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.item.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.item.is_empty()
    }
}

fn jittered(bbox: &BBox, amount: f64, rng: &mut SplitMix64) -> BBox {
    let mut shift = |size: f64| (rng.next_f64() * 2.0 - 1.0) * amount * size;
    let left = bbox.left + shift(bbox.width);
    let top = bbox.top + shift(bbox.height);
    let right = bbox.left + bbox.width + shift(bbox.width);
    let bottom = bbox.top + bbox.height + shift(bbox.height);
    BBox::new(left, top, (right - left).max(1.0), (bottom - top).max(1.0))
}

/// The jobs of every view of every item, with (item, view) per job.
fn jobs(set: &TrainingSet, options: &ViewOptions) -> Vec<(ImageJob, usize, usize)> {
    let mut out = Vec::new();
    for (index, item) in set.items.iter().enumerate() {
        let crop = item.bbox.map(|b| (b, 0.0));
        let trim = options.trim_shop && item.kind == ItemKind::Shop;
        for (view, flip) in [(0, false), (1, true)] {
            out.push((
                ImageJob {
                    id: format!("{}#{view}", item.id),
                    path: item.path.clone(),
                    crop,
                    flip,
                    trim,
                },
                index,
                view,
            ));
        }
        if let (ItemKind::Street, Some(bbox)) = (item.kind, item.bbox) {
            // Seeded per item, so that adding items elsewhere does not move these boxes.
            let mut rng = SplitMix64(options.seed ^ fnv1a(item.id.as_bytes()));
            for j in 0..options.street_jitters {
                let view = 2 + j;
                let bbox = jittered(&bbox, options.jitter, &mut rng);
                let flip = rng.next_u64() & 1 == 1;
                out.push((
                    ImageJob {
                        id: format!("{}#{view}", item.id),
                        path: item.path.clone(),
                        crop: Some((bbox, 0.0)),
                        flip,
                        trim: false,
                    },
                    index,
                    view,
                ));
            }
        }
    }
    out
}

/// FNV-1a: a stable hash of an id (std's hashers may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Embeds every view of `set` with `embedder` (through the cache in `cache_dir`).
pub fn extract(
    embedder: &Embedder,
    set: &TrainingSet,
    options: &ViewOptions,
    cache_dir: &Path,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<Features, TrainError> {
    if embedder.head().is_some() {
        return Err(TrainError::Config(
            "features for training come from the bare backbone; load it without a head".into(),
        ));
    }
    let jobs = jobs(set, options);
    let image_jobs: Vec<ImageJob> = jobs.iter().map(|(job, _, _)| job.clone()).collect();
    let vectors = embed_cached(embedder, &image_jobs, "train", cache_dir, batch, progress)
        .map_err(|source| TrainError::Embed {
            what: "embedding the training photos".into(),
            source: Box::new(source),
        })?;
    let mut features = Features {
        dim: vectors.dim,
        values: Vec::with_capacity(jobs.len() * vectors.dim),
        item: Vec::with_capacity(jobs.len()),
        view: Vec::with_capacity(jobs.len()),
        skipped: vectors.skipped.clone(),
    };
    for (job, item, view) in &jobs {
        if let Some(vector) = vectors.get(&job.id) {
            features.values.extend_from_slice(vector);
            features.item.push(*item);
            features.view.push(*view);
        }
    }
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_near_the_box_and_is_seeded() {
        let bbox = BBox::new(10.0, 20.0, 100.0, 50.0);
        let mut a = SplitMix64(3);
        let mut b = SplitMix64(3);
        for _ in 0..100 {
            let j = jittered(&bbox, 0.1, &mut a);
            assert_eq!(j, jittered(&bbox, 0.1, &mut b));
            assert!((j.left - 10.0).abs() <= 10.0 + 1e-9);
            assert!((j.top - 20.0).abs() <= 5.0 + 1e-9);
            assert!((j.width - 100.0).abs() <= 20.0 + 1e-9);
            assert!((j.height - 50.0).abs() <= 10.0 + 1e-9);
        }
    }
}

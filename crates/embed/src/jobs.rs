//! Embedding image files and crops, decoded by `wtb-dataset`.

use std::path::PathBuf;

use crate::{EmbedError, EmbedOutcome, Embedder};

/// One image to embed: a file, optionally cropped to a box widened by a margin.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageJob {
    /// The id reported with its vector (or with the reason it was skipped).
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// A box to crop to, and the margin passed to [`wtb_dataset::crop`].
    pub crop: Option<(wtb_dataset::BBox, f64)>,
    /// Mirror the image (or crop) left to right before embedding: flip augmentation and
    /// flip-averaged descriptors.
    pub flip: bool,
    /// Crop a shop photo to its garment ([`wtb_dataset::foreground_box`]) when it has a plain
    /// light background, so that it frames the garment as a street crop does.
    pub trim: bool,
}

/// The darkest-channel level above which a pixel counts as background when trimming.
pub const TRIM_LIGHT_LEVEL: u8 = 235;

impl Embedder {
    /// Embeds a list of image files (or crops of them) in batches of `batch`. Decoding, cropping
    /// and resizing run on the rayon pool while the model runs the previous batch; at most
    /// three batches are in memory whatever the list size. An image that cannot be decoded or
    /// cropped is skipped and reported in [`EmbedOutcome::skipped`]. `progress(done, total)`
    /// is called after each batch.
    pub fn embed_jobs(
        &self,
        jobs: &[ImageJob],
        batch: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<EmbedOutcome, EmbedError> {
        let ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
        let limits = wtb_dataset::DecodeLimits::default();
        self.embed_with_loader(
            &ids,
            |i| {
                let job = &jobs[i];
                let image = wtb_dataset::load_rgb(&job.path, &limits).map_err(|e| e.to_string())?;
                let image = match job.crop {
                    Some((ref bbox, margin)) => {
                        wtb_dataset::crop(&image, bbox, margin).map_err(|e| e.to_string())?
                    }
                    None => image,
                };
                let image = match job.trim {
                    true => match wtb_dataset::foreground_box(&image, TRIM_LIGHT_LEVEL) {
                        Some(bbox) => {
                            wtb_dataset::crop(&image, &bbox, 0.02).map_err(|e| e.to_string())?
                        }
                        None => image,
                    },
                    false => image,
                };
                Ok(if job.flip {
                    image::imageops::flip_horizontal(&image)
                } else {
                    image
                })
            },
            batch,
            progress,
        )
    }
}

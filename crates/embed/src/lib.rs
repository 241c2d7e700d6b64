//! `wtb-embed`: ImageNet CNN feature extractors in [candle](https://github.com/huggingface/candle)
//! — MobileNetV2, EfficientNet-Lite0, ResNet50 and VGG16 — with their preprocessing, a batched
//! embedding pipeline and embedding files.
//!
//! - [`ModelKind`] names a network; [`EmbedderConfig`] adds the weights file, [`Preprocess`],
//!   [`Pooling`], L2 normalisation, [`DeviceChoice`] and [`Engine`] (on the CPU, the fused
//!   kernels of `wtb-kernels` by default; stock candle ops on request).
//! - [`Embedder::load`] finds the weights ([`resolve_weights`]: explicit path, `$WTB_MODELS_DIR`,
//!   `models/`, then the Hugging Face hub with the `hub` feature), reads safetensors or `.pth`
//!   in torchvision, timm or lukemelas key layout, and refuses missing or misshapen tensors.
//! - [`Embedder::embed_images`] embeds one batch; [`Embedder::embed_jobs`] embeds a list of
//!   files or crops with decoding overlapped with the model, skipping and reporting bad images.
//! - [`Head`] is a learned projection (trained by `wtb-train`) applied after pooling when
//!   [`EmbedderConfig::head`] names a head file; its file records the backbone it fits.
//! - [`save_embeddings`] / [`load_embeddings`] write and read vectors with the
//!   [`EmbeddingMeta`] that made them, refusing a mismatch.
//!
//! ```
//! use wtb_embed::{Embedder, EmbedderConfig, ModelKind, Pooling};
//!
//! let mut config = EmbedderConfig::new(ModelKind::MobileNetV2);
//! config.pooling = Pooling::Gem(3.0);
//! config.l2_normalize = true;
//! // Real use: `Embedder::load(&config)` reads models/mobilenet_v2.safetensors. The synthetic
//! // weights of the golden tests keep this example self-contained.
//! let embedder = Embedder::with_synthetic_weights(&config)?;
//! let image = image::RgbImage::from_pixel(64, 48, image::Rgb([200, 30, 30]));
//! let vectors = embedder.embed_images(&[image])?;
//! assert_eq!(vectors[0].len(), ModelKind::MobileNetV2.dim());
//! let norm = vectors[0].iter().map(|v| v * v).sum::<f32>().sqrt();
//! assert!((norm - 1.0).abs() < 1e-4);
//! assert_eq!(embedder.meta().pooling, "gem:3");
//! # Ok::<(), wtb_embed::EmbedError>(())
//! ```

/// The tensor library of the [`Embedder`] tensor methods, re-exported so that callers use the
/// same version.
pub use candle_core;

mod cache;
mod classes;
mod config;
mod embedder;
mod error;
mod head;
mod jobs;
mod models;
mod preprocess;
mod resample;
mod store;
mod weights;

pub use cache::{embed_cached, CachedVectors};
pub use classes::imagenet_class_name;
pub use config::{
    models_name, parse_models, DeviceChoice, EmbedderConfig, Engine, ModelKind, Pooling, Preprocess,
};
pub use embedder::{EmbedOutcome, Embedder, MULTI_SCALES};
pub use error::EmbedError;
pub use head::{unit_rows, Head, HeadMeta, HEAD_FORMAT_VERSION};
pub use jobs::ImageJob;
pub use preprocess::{input_size, preprocess_image, IMAGENET_MEAN, IMAGENET_STD};
pub use store::{load_embeddings, save_embeddings, EmbeddingMeta, EMBEDDINGS_FORMAT_VERSION};
pub use weights::{
    find_local_weights, hub_repo, resolve_weights, sha256_file, weight_search_dirs, weights_in_dir,
    SHIPPED_MOBILENET_V2, SYNTHETIC_WEIGHTS_ID,
};

//! `wtb-pipeline`: the glue between `wtb-dataset`, `wtb-embed` and `wtb-search`.
//!
//! - [`build_index`] turns a street2shop label folder and its shop photos into an index file:
//!   chosen categories, minus an exclusion list, embedded in batches with a progress callback,
//!   checkpointed so an interrupted build resumes where it stopped. Photos that cannot be read
//!   are skipped and reported ([`BuildReport`]). [`ensure_index`] builds only when needed;
//!   [`add_to_index`] embeds the gallery photos an index lacks.
//! - [`QueryEngine`] answers a photo end to end: decode with pixel caps, crop the box, embed,
//!   search, one hit per product ([`QueryEngine::search`]); and item-to-item searches from the
//!   vectors stored in the index, without re-embedding ([`QueryEngine::similar`]).
//!
//! ```
//! use wtb_embed::{Embedder, EmbedderConfig, ModelKind};
//! use wtb_pipeline::{build_index, BuildOptions, PhotoQuery, QueryEngine};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A tiny catalogue: two products of one photo each.
//! let dir = tempfile::tempdir()?;
//! let (labels, photos) = (dir.path().join("labels"), dir.path().join("photos"));
//! std::fs::create_dir_all(&labels)?;
//! std::fs::create_dir_all(&photos)?;
//! std::fs::write(
//!     labels.join("retrieval_bags.json"),
//!     r#"[{"photo": 1, "product": 10}, {"photo": 2, "product": 20}]"#,
//! )?;
//! let red = image::RgbImage::from_fn(64, 64, |x, _| image::Rgb([200, (x * 3) as u8, 30]));
//! let blue = image::RgbImage::from_fn(64, 64, |_, y| image::Rgb([20, (y * 2) as u8, 220]));
//! red.save(photos.join("1.jpg"))?;
//! blue.save(photos.join("2.jpg"))?;
//!
//! // Synthetic weights keep the example self-contained; real use: `Embedder::load`.
//! let config = EmbedderConfig::new(ModelKind::MobileNetV2);
//! let embedder = Embedder::with_synthetic_weights(&config)?;
//! let options = BuildOptions::new(&labels, &photos, dir.path().join("shop.idx"));
//! let report = build_index(&embedder, &options, &|_done, _total| {})?;
//! assert_eq!((report.photos, report.products, report.skipped.len()), (2, 2, 0));
//!
//! // Query with the bytes of a catalogue photo: its own product comes first.
//! let engine = QueryEngine::open(embedder, &options.index)?;
//! let bytes = std::fs::read(photos.join("2.jpg"))?;
//! let query = PhotoQuery { image: &bytes, bbox: None, k: 2, categories: Default::default(), metric: None };
//! let answer = engine.search(&query)?;
//! assert_eq!((answer.hits[0].category.as_str(), answer.hits[0].product), ("bags", 20));
//! let similar = engine.similar("bags", 20, 5, None)?;
//! assert_eq!(similar.len(), 1); // every product but itself
//! # Ok(())
//! # }
//! ```

mod build;
mod error;
mod query;

pub use build::{add_to_index, build_index, ensure_index, BuildOptions, BuildReport, Progress};
pub use error::PipelineError;
pub use query::{similarity, PhotoQuery, QueryAnswer, QueryEngine, Timings};

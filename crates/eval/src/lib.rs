//! `wtb-eval`: evaluation of street-to-shop retrieval.
//!
//! - [`metrics`]: accuracy@k over distinct products, MRR, mAP, category precision@k and
//!   hit@k, per category, micro- and macro-averaged, each with a seeded bootstrap 95% interval;
//! - [`report`]: the report folder of a run (`report.md`, `results.csv`, `results.json`,
//!   `manifest.json`, plots, `failures.html`).
//!
//! ```
//! use wtb_eval::metrics::{score_query, summarize, BootstrapConfig, Measure, RankedPhoto, Target};
//!
//! // Two shop photos of product 7 rank ahead of product 9: product 9 is second among
//! // distinct products, so it is a hit at k = 2 but not at k = 1.
//! let ranking: Vec<RankedPhoto> = [(1, 7, 0.1), (2, 7, 0.2), (3, 9, 0.3)]
//!     .into_iter()
//!     .map(|(photo, product, score)| RankedPhoto { photo, product, category: "tops".into(), score })
//!     .collect();
//! let ks = [1, 2];
//! let score = score_query("street 42", "tops", &Target::Product(9), &ranking, &ks);
//! assert_eq!(score.first_relevant_rank, Some(2));
//!
//! let measures = Measure::product_measures(&ks);
//! let summary = summarize(&[score], &ks, &measures, BootstrapConfig::default());
//! assert_eq!(summary.micro[0].value, 0.0); // acc@1
//! assert_eq!(summary.micro[1].value, 1.0); // acc@2
//! assert_eq!(summary.micro[2].value, 0.5); // MRR
//! ```

#![warn(missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};

pub mod metrics;
mod plot;
pub mod protocol;
pub mod report;
mod results;
pub mod runner;

pub use plot::FONT_CANDIDATES;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's content is not what was expected.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (record, field...).
        reason: String,
    },
    /// The evaluation was asked for something impossible (no model, k = 0...).
    #[error("invalid evaluation settings: {0}")]
    Config(String),
    /// Embedding failed (model loading, a whole batch, the cache).
    #[error("{what}: {source}")]
    Embed {
        /// What was being done.
        what: String,
        /// The underlying error (boxed: candle's errors are large).
        source: Box<wtb_embed::EmbedError>,
    },
    /// Search failed.
    #[error("search of {what}: {source}")]
    Search {
        /// What was searched.
        what: String,
        /// The underlying error.
        source: Box<wtb_search::SearchError>,
    },
    /// A plot could not be drawn.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Writes `bytes` to `path` through a temporary file in the same folder, fsynced then renamed,
/// so readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
    file.write_all(bytes).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

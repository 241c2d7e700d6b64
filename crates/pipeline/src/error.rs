//! The error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while building an index or answering a query. Each variant
/// names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The label folder could not be read (every problem is listed).
    #[error("labels {dir}: {problems}")]
    Labels {
        /// The label folder.
        dir: PathBuf,
        /// What is wrong with it.
        problems: wtb_dataset::Problems,
    },
    /// A category name that street2shop does not have.
    #[error("category {0:?} is not a street2shop category")]
    UnknownCategory(String),
    /// The exclusion list could not be read.
    #[error("exclusions {path}: {reason}")]
    Exclusions {
        /// The exclusion file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The labels and filters leave no shop photo to index.
    #[error("no shop photo to index in {labels} for the chosen categories")]
    EmptyGallery {
        /// The label folder.
        labels: PathBuf,
    },
    /// Every photo failed to embed, so no index was written.
    #[error("none of the {photos} shop photos could be embedded; first problem: {first}")]
    NothingEmbedded {
        /// Photos tried.
        photos: usize,
        /// The first photo's problem.
        first: String,
    },
    /// The model failed.
    #[error(transparent)]
    Embed(#[from] wtb_embed::EmbedError),
    /// The index failed (read, write, search).
    #[error(transparent)]
    Search(#[from] wtb_search::SearchError),
    /// The query photo could not be decoded (not an image, corrupt, too many pixels...).
    #[error("query photo: {0}")]
    BadPhoto(#[source] wtb_dataset::PhotoError),
    /// The query box cannot be cropped out of the photo (outside it, empty, not finite).
    #[error("query box: {0}")]
    BadBox(#[source] wtb_dataset::CropError),
    /// A query parameter is out of range (k = 0, unknown category...).
    #[error("query: {0}")]
    BadQuery(String),
    /// The product is not in the index.
    #[error("product {category}/{product} is not in the index")]
    UnknownProduct {
        /// Its category.
        category: String,
        /// Its id.
        product: u64,
    },
    /// The checkpoint of an interrupted build cannot be resumed (another model, settings or
    /// precision, or a damaged file).
    #[error("checkpoint {path}: {reason}; delete it to start over")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it cannot be resumed.
        reason: String,
    },
    /// The index's folder or its build lock could not be made or taken.
    #[error("index {path}: {reason}")]
    Output {
        /// The index file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A build option out of range (a batch size of 0...).
    #[error("build option: {0}")]
    BadOption(String),
}

//! `wtb-search`: distance metrics, exact and approximate k-NN with per-product dedup, and the
//! on-disk index of a shop's gallery.
//!
//! - [`Metric`]: scipy `cdist` semantics, with defined results for zero vectors and NaN.
//! - [`Gallery`]: a matrix of vectors (f32 or f16) with exact k-NN: dot-product metrics run as
//!   blocked matrix products on all cores, the others as vectorised loops; top-k is a bounded
//!   selection with ties broken by position.
//! - [`Index`]: photos with their (category, product) keys, persisted in one versioned,
//!   checksummed file, loaded by memory map, updated by segments and tombstones; it answers
//!   [`VectorSearch`] requests with one hit per product.
//!
//! ```
//! use std::collections::BTreeMap;
//! use wtb_search::{Gallery, Index, Metric, PhotoRecord, Precision, SearchRequest, VectorSearch};
//!
//! // Exact k-NN on a bare matrix.
//! let gallery = Gallery::new(2, vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7], Precision::F32)?;
//! let nearest = gallery.knn(&[1.0, 0.1], 2, Metric::Cosine)?;
//! assert_eq!(nearest[0].position, 0);
//! assert_eq!(nearest[1].position, 2);
//!
//! // An index of photos: two photos of one product, one of another.
//! let meta = BTreeMap::from([("model".to_string(), "demo".to_string())]);
//! let mut index = Index::new(2, Precision::F32, meta)?;
//! let photos = vec![
//!     PhotoRecord { category: "bags".into(), product: 7, photo: 1 },
//!     PhotoRecord { category: "bags".into(), product: 7, photo: 2 },
//!     PhotoRecord { category: "hats".into(), product: 7, photo: 3 },
//! ];
//! index.add(&photos, &[1.0, 0.0, 0.9, 0.1, 0.0, 1.0])?;
//! let request = SearchRequest::new(5, Metric::Cosine);
//! let hits = index.search(&[1.0, 0.05], &request)?;
//! assert_eq!(hits.len(), 2); // one hit per (category, product)
//! assert_eq!((hits[0].category.as_str(), hits[0].photo), ("bags", 1));
//! # Ok::<(), wtb_search::SearchError>(())
//! ```

pub mod consensus;
mod gallery;
mod hnsw;
mod index;
mod kernels;
mod metric;
pub mod rerank;
mod topk;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use gallery::{Gallery, Neighbor, Precision};
pub use index::{
    Index, IndexInfo, PhotoRecord, SegmentInfo, APPROXIMATE_MIN_PHOTOS, FORMAT_VERSION,
};
pub use metric::{rank_key, Metric, UnknownMetric};

/// Restricts a search to some categories and/or some products. Empty sets mean "no restriction".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only photos of these categories (empty: all).
    pub categories: BTreeSet<String>,
    /// Only these (category, product) keys (empty: all).
    pub products: BTreeSet<(String, u64)>,
}

impl Filter {
    /// True when the filter lets every photo through.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty() && self.products.is_empty()
    }

    /// Whether a photo of this product passes the filter.
    pub fn allows(&self, category: &str, product: u64) -> bool {
        (self.categories.is_empty() || self.categories.contains(category))
            && (self.products.is_empty()
                || self.products.contains(&(category.to_string(), product)))
    }
}

/// Exact scan or approximate (HNSW) search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Approximate when the index has an HNSW graph, the metric is cosine and the index holds
    /// at least [`APPROXIMATE_MIN_PHOTOS`] photos; exact otherwise.
    #[default]
    Auto,
    /// Always the exact scan.
    Exact,
    /// Always the HNSW graph (an error if the index has none or the metric is not cosine).
    Approximate,
}

/// What to search for.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchRequest {
    /// How many distinct products to return.
    pub k: usize,
    /// How to compare vectors.
    pub metric: Metric,
    /// Which photos may be returned.
    pub filter: Filter,
    /// Exact or approximate.
    pub mode: SearchMode,
}

impl SearchRequest {
    /// The `k` best products under `metric`, no filter, automatic mode.
    pub fn new(k: usize, metric: Metric) -> SearchRequest {
        SearchRequest {
            k,
            metric,
            filter: Filter::default(),
            mode: SearchMode::Auto,
        }
    }
}

/// One answer: a product, its best-matching photo and that photo's score.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProductHit {
    /// Category of the product (product ids repeat across categories).
    pub category: String,
    /// Product id within its category.
    pub product: u64,
    /// The product's best photo.
    pub photo: u64,
    /// The photo's score under the request's metric (see [`Metric::higher_is_better`]).
    pub score: f32,
}

/// A searchable collection of product photos: the seam where another backend (for example a
/// vector database) can replace the built-in index.
pub trait VectorSearch {
    /// The best `request.k` distinct products for one query, best first.
    fn search(
        &self,
        query: &[f32],
        request: &SearchRequest,
    ) -> Result<Vec<ProductHit>, SearchError>;
    /// The answers for a row-major batch of queries (`Q * dim` values), one list per query.
    fn search_batch(
        &self,
        queries: &[f32],
        request: &SearchRequest,
    ) -> Result<Vec<Vec<ProductHit>>, SearchError>;
    /// Number of live photos.
    fn len(&self) -> usize;
    /// True when no photo is live.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Dimension of the vectors.
    fn dim(&self) -> usize;
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A vector dimension of zero was asked for.
    #[error("vector dimension must be at least 1")]
    ZeroDimension,
    /// A matrix's value count is not a multiple of its dimension.
    #[error("{values} values do not form rows of dimension {dim}")]
    RaggedMatrix {
        /// Number of values given.
        values: usize,
        /// Row dimension.
        dim: usize,
    },
    /// A query's length does not fit the gallery's dimension.
    #[error("query of {found} values does not match dimension {expected}")]
    DimensionMismatch {
        /// Dimension of the gallery.
        expected: usize,
        /// Values in the query (or batch).
        found: usize,
    },
    /// The number of photo records differs from the number of vectors.
    #[error("{records} photo records for {vectors} vectors")]
    RecordCount {
        /// Records given.
        records: usize,
        /// Vectors given.
        vectors: usize,
    },
    /// A (photo, category, product) item is already in the index or repeats in a batch.
    #[error("photo {photo} of product {product} ({category}) is already in the index or repeats in the batch")]
    DuplicatePhoto {
        /// The photo id.
        photo: u64,
        /// The product's category.
        category: String,
        /// The product.
        product: u64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a valid index file (truncated, corrupted, wrong version...).
    #[error("{path}: not a valid index file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The index was built with a different embedding than the caller expects.
    #[error("{path}: index was built with a different embedding: {differences}")]
    MetadataMismatch {
        /// The file.
        path: PathBuf,
        /// `key: index has X, expected Y` for each differing key.
        differences: String,
    },
    /// The approximate (HNSW) index failed.
    #[error("approximate index: {0}")]
    Approximate(String),
    /// A setting of a search step is out of its range.
    #[error("{0}")]
    InvalidSetting(String),
    /// A broken internal invariant (a bug): reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

//! What the HTTP layer needs from a catalogue and a search engine.
//!
//! Handlers only see the [`Backend`] trait, so the web layer does not care how an index is
//! opened or how a photo becomes a vector. The shipped store implements it with
//! [`PipelineBackend`](crate::PipelineBackend), on top of `wtb-pipeline`.

/// A box around the garment, in pixels of the uploaded photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CropBox {
    /// Left edge.
    pub left: u32,
    /// Top edge.
    pub top: u32,
    /// Width (> 0).
    pub width: u32,
    /// Height (> 0).
    pub height: u32,
}

impl CropBox {
    /// The box in the dataset's terms.
    pub(crate) fn to_bbox(self) -> wtb_dataset::BBox {
        wtb_dataset::BBox::new(
            f64::from(self.left),
            f64::from(self.top),
            f64::from(self.width),
            f64::from(self.height),
        )
    }
}

/// One photo search, as the shopper asked it.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The uploaded file, as received (its type is detected from these bytes).
    pub image: Vec<u8>,
    /// The garment's box; `None` searches the whole photo.
    pub bbox: Option<CropBox>,
    /// How many distinct products to answer (1..=100).
    pub k: usize,
    /// Only products of this category; `None` searches every category.
    pub category: Option<String>,
    /// The distance metric by name; `None` uses the index's own.
    pub metric: Option<String>,
    /// Whether the outcome carries the searched region as a JPEG thumbnail (the results page
    /// shows it; the JSON API does not, and saves the encoding).
    pub want_crop: bool,
}

/// One product found by a search.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    /// The product's category.
    pub category: String,
    /// The product id.
    pub product: u64,
    /// The shop photo that matched best.
    pub photo: u64,
    /// Similarity (higher is closer).
    pub score: f32,
    /// The product's display name (empty when the catalogue has none).
    pub name: String,
}

/// The answer to a [`SearchQuery`].
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// The best distinct products, best first.
    pub hits: Vec<Hit>,
    /// The region that was searched, as a JPEG thumbnail to show back to the shopper, when
    /// [`SearchQuery::want_crop`] asked for it.
    pub query_crop_jpeg: Option<Vec<u8>>,
    /// Time spent decoding, embedding and searching, in milliseconds.
    pub inference_ms: f64,
}

/// A product's catalogue entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Product {
    /// Its category.
    pub category: String,
    /// Its id.
    pub product: u64,
    /// Display name (may be empty).
    pub name: String,
    /// Extra metadata (article type, colour, gender...), in display order.
    pub attributes: Vec<(String, String)>,
    /// Its shop photos that are in the index.
    pub photos: Vec<u64>,
}

/// A category and how many products it has.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CategoryCount {
    /// The category name.
    pub name: String,
    /// Number of products in the index.
    pub products: usize,
}

/// Why a backend call failed; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The upload is not a usable image (unknown type, corrupt, too many pixels...): 400/422.
    #[error("{0}")]
    BadImage(String),
    /// The upload is larger than the decoder allows (pixels): 413.
    #[error("{0}")]
    TooLarge(String),
    /// A parameter is invalid (box outside the image, unknown category or metric): 400.
    #[error("{0}")]
    BadQuery(String),
    /// The product or photo does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// Something failed on our side: 500.
    #[error("{0}")]
    Internal(String),
}

/// A catalogue plus a search engine. Calls may block (inference); the server runs
/// [`Backend::search`] and [`Backend::similar`] on its worker pool only.
pub trait Backend: Send + Sync + 'static {
    /// The model's name and settings, shown in API answers.
    fn model(&self) -> String;
    /// The metric names [`SearchQuery::metric`] accepts.
    fn metrics(&self) -> Vec<String>;
    /// Every category with its product count, by name.
    fn categories(&self) -> Vec<CategoryCount>;
    /// A page of a category's products (sorted by id) and the category's total.
    fn products(&self, category: &str, offset: usize, limit: usize) -> (Vec<Product>, usize);
    /// One product.
    fn product(&self, category: &str, product: u64) -> Option<Product>;
    /// Decodes, crops, embeds and searches.
    fn search(&self, query: &SearchQuery) -> Result<SearchOutcome, BackendError>;
    /// Item-to-item search from the product's stored embeddings (no re-embedding), excluding
    /// the product itself.
    fn similar(&self, category: &str, product: u64, k: usize) -> Result<Vec<Hit>, BackendError>;
    /// The bytes of a catalogue photo by id; `None` when the id is not in the catalogue.
    fn photo(&self, photo: u64) -> Option<Vec<u8>>;
    /// The fewest pixels the shorter side of a query photo (or its box) needs for the model:
    /// the store estimates what decoding a search's photo costs from it. Default 256.
    fn source_side(&self) -> u32 {
        256
    }
    /// Whether this is the built-in demo catalogue (the home page then says how to load one's
    /// own).
    fn is_demo(&self) -> bool {
        false
    }
}

/// A photo that cannot be decoded: 413 when it is too large, 422 otherwise.
pub(crate) fn photo_error(problem: &wtb_dataset::PhotoProblem) -> BackendError {
    use wtb_dataset::PhotoProblem;
    match problem {
        PhotoProblem::TooManyPixels { .. } | PhotoProblem::FileTooLarge { .. } => {
            BackendError::TooLarge(format!("the photo is too large: {problem}"))
        }
        _ => BackendError::BadImage(format!("the photo cannot be read: {problem}")),
    }
}

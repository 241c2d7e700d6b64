//! The shipped [`Backend`]: a `wtb-pipeline` query engine, the index's catalogue, product
//! metadata from `products.csv`, and the shop photos folder.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::str::FromStr;

use wtb_dataset::{photo_path, Catalog, Category, ProductId, ProductKey};
use wtb_pipeline::{similarity, PhotoQuery, PipelineError, QueryEngine};
use wtb_search::{Metric, ProductHit};

use crate::backend::{
    photo_error, Backend, BackendError, CategoryCount, Hit, Product, SearchOutcome, SearchQuery,
};

/// JPEG quality of the query crop shown back to the shopper.
const CROP_JPEG_QUALITY: u8 = 85;
/// The crop shown back is scaled down to fit this size (it is only a thumbnail).
const CROP_MAX_SIDE: u32 = 400;

/// A [`Backend`] over a [`QueryEngine`].
pub struct PipelineBackend {
    engine: QueryEngine,
    photos: PathBuf,
    catalog: Option<Catalog>,
    /// category -> product -> its photos in the index, sorted.
    products: BTreeMap<String, BTreeMap<u64, Vec<u64>>>,
    /// Every photo id of the index: the only photos the store serves.
    photo_ids: HashSet<u64>,
    model: String,
    demo: bool,
}

impl PipelineBackend {
    /// Wraps an engine; `photos` is the folder of the indexed shop photos and `catalog` the
    /// optional product metadata.
    pub fn new(engine: QueryEngine, photos: PathBuf, catalog: Option<Catalog>) -> PipelineBackend {
        let mut products: BTreeMap<String, BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
        let mut photo_ids = HashSet::new();
        for record in engine.index().records() {
            photo_ids.insert(record.photo);
            products
                .entry(record.category)
                .or_default()
                .entry(record.product)
                .or_default()
                .push(record.photo);
        }
        for photos in products.values_mut().flat_map(|p| p.values_mut()) {
            photos.sort_unstable();
        }
        let meta = engine.embedder().meta();
        let head = meta
            .head
            .as_ref()
            .map(|id| format!(", learned head {id}"))
            .unwrap_or_default();
        let model = format!(
            "{} ({}, {} pooling{head})",
            meta.model, meta.preprocess, meta.pooling
        );
        PipelineBackend {
            engine,
            photos,
            catalog,
            products,
            photo_ids,
            model,
            demo: false,
        }
    }

    /// Marks the catalogue as the built-in demo ([`Backend::is_demo`]).
    pub fn into_demo(mut self) -> PipelineBackend {
        self.demo = true;
        self
    }

    fn info(&self, category: &str, product: u64) -> Option<&wtb_dataset::ProductInfo> {
        let catalog = self.catalog.as_ref()?;
        let key = ProductKey::new(Category::new(category).ok()?, ProductId(product));
        catalog.get(&key)
    }

    fn name(&self, category: &str, product: u64) -> String {
        self.info(category, product)
            .map(|info| info.name.clone())
            .unwrap_or_default()
    }

    fn hit(&self, hit: ProductHit, metric: Metric) -> Hit {
        Hit {
            name: self.name(&hit.category, hit.product),
            score: similarity(metric, hit.score),
            category: hit.category,
            product: hit.product,
            photo: hit.photo,
        }
    }

    fn product_entry(&self, category: &str, product: u64, photos: &[u64]) -> Product {
        let info = self.info(category, product);
        let attributes = info
            .map(|i| {
                [
                    ("Type", &i.article_type),
                    ("Colour", &i.base_colour),
                    ("Gender", &i.gender),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
            })
            .unwrap_or_default();
        Product {
            category: category.to_string(),
            product,
            name: info.map(|i| i.name.clone()).unwrap_or_default(),
            attributes,
            photos: photos.to_vec(),
        }
    }
}

fn backend_error(err: PipelineError) -> BackendError {
    match err {
        PipelineError::BadPhoto(e) => photo_error(&e.problem),
        PipelineError::BadBox(e) => {
            BackendError::BadQuery(format!("the box does not fit the photo: {e}"))
        }
        PipelineError::BadQuery(d) => BackendError::BadQuery(d),
        PipelineError::UnknownProduct { .. } => BackendError::NotFound(err.to_string()),
        other => BackendError::Internal(other.to_string()),
    }
}

fn encode_crop(crop: &image::RgbImage) -> Result<Vec<u8>, BackendError> {
    let (w, h) = crop.dimensions();
    let scale = (CROP_MAX_SIDE as f64 / w.max(h) as f64).min(1.0);
    let thumbnail;
    let shown = if scale < 1.0 {
        let (tw, th) = (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        );
        thumbnail = image::imageops::resize(crop, tw, th, image::imageops::FilterType::Triangle);
        &thumbnail
    } else {
        crop
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut bytes), CROP_JPEG_QUALITY)
        .encode_image(shown)
        .map_err(|e| BackendError::Internal(format!("cannot encode the query crop: {e}")))?;
    Ok(bytes)
}

impl Backend for PipelineBackend {
    fn model(&self) -> String {
        self.model.clone()
    }

    fn is_demo(&self) -> bool {
        self.demo
    }

    fn source_side(&self) -> u32 {
        self.engine.embedder().source_side()
    }

    fn metrics(&self) -> Vec<String> {
        Metric::ALL.iter().map(|m| m.name().to_string()).collect()
    }

    fn categories(&self) -> Vec<CategoryCount> {
        self.products
            .iter()
            .map(|(name, products)| CategoryCount {
                name: name.clone(),
                products: products.len(),
            })
            .collect()
    }

    fn products(&self, category: &str, offset: usize, limit: usize) -> (Vec<Product>, usize) {
        match self.products.get(category) {
            Some(products) => (
                products
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|(id, photos)| self.product_entry(category, *id, photos))
                    .collect(),
                products.len(),
            ),
            None => (Vec::new(), 0),
        }
    }

    fn product(&self, category: &str, product: u64) -> Option<Product> {
        let photos = self.products.get(category)?.get(&product)?;
        Some(self.product_entry(category, product, photos))
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchOutcome, BackendError> {
        let mut categories = BTreeSet::new();
        if let Some(category) = &query.category {
            if !self.products.contains_key(category) {
                return Err(BackendError::BadQuery(format!(
                    "unknown category {category:?}; the catalogue has {}",
                    self.products.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            categories.insert(category.clone());
        }
        let metric = match &query.metric {
            Some(name) => {
                Some(Metric::from_str(name).map_err(|e| BackendError::BadQuery(e.to_string()))?)
            }
            None => None,
        };
        let bbox = query.bbox.map(crate::backend::CropBox::to_bbox);
        let answer = self
            .engine
            .search(&PhotoQuery {
                image: &query.image,
                bbox,
                k: query.k,
                categories,
                metric,
            })
            .map_err(backend_error)?;
        let timings = answer.timings;
        Ok(SearchOutcome {
            query_crop_jpeg: if query.want_crop {
                Some(encode_crop(&answer.crop)?)
            } else {
                None
            },
            hits: answer
                .hits
                .into_iter()
                .map(|h| self.hit(h, answer.metric))
                .collect(),
            inference_ms: (timings.decode + timings.embed + timings.search) * 1000.0,
        })
    }

    fn similar(&self, category: &str, product: u64, k: usize) -> Result<Vec<Hit>, BackendError> {
        let metric = self.engine.metric();
        let hits = self
            .engine
            .similar(category, product, k, None)
            .map_err(backend_error)?;
        Ok(hits.into_iter().map(|h| self.hit(h, metric)).collect())
    }

    fn photo(&self, photo: u64) -> Option<Vec<u8>> {
        // Only ids of the index are served, and the path is built from the number alone.
        if !self.photo_ids.contains(&photo) {
            return None;
        }
        std::fs::read(photo_path(&self.photos, wtb_dataset::PhotoId(photo))).ok()
    }
}

/// Where the catalogue comes from and how it is embedded.
#[derive(Debug, Clone)]
pub struct CatalogueConfig {
    /// The index file (built when missing).
    pub index: PathBuf,
    /// The shop photos folder.
    pub photos: PathBuf,
    /// The street2shop label folder (used only to build the index).
    pub labels: PathBuf,
    /// Optional `products.csv` with names and metadata.
    pub products: Option<PathBuf>,
    /// The model.
    pub embedder: wtb_embed::EmbedderConfig,
    /// Categories to index when building (empty: all).
    pub categories: Vec<String>,
    /// Exclusion file honoured when building.
    pub exclusions: Option<PathBuf>,
    /// Photos per model batch when building.
    pub batch_size: usize,
    /// Pixel cap of query photos.
    pub max_pixels: u64,
    /// Whether this is the built-in demo catalogue (see `demo_catalogue`).
    pub demo: bool,
}

/// Loads the model, builds the index when it is missing (progress in the log and in
/// `readiness`'s phase), opens it with the product metadata, and returns the backend.
pub fn load_backend(
    config: &CatalogueConfig,
    readiness: &crate::Readiness,
) -> anyhow::Result<PipelineBackend> {
    use anyhow::Context as _;
    readiness.set_phase(format!("loading model {}", config.embedder.model));
    let embedder = wtb_embed::Embedder::load(&config.embedder)
        .with_context(|| format!("loading model {}", config.embedder.model))?;
    let mut options =
        wtb_pipeline::BuildOptions::new(&config.labels, &config.photos, &config.index);
    options.categories = config.categories.clone();
    options.exclusions = config.exclusions.clone();
    options.batch_size = config.batch_size;
    let last_logged = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let progress = |done: usize, total: usize| {
        let percent = done * 100 / total.max(1);
        readiness.set_phase(format!("building the index: {done}/{total} photos"));
        // One log line per 5 % is enough to follow a long build.
        if last_logged.swap(percent / 5, std::sync::atomic::Ordering::Relaxed) != percent / 5 {
            tracing::info!(done, total, "building the index: {percent}%");
        }
    };
    let built = wtb_pipeline::ensure_index(&embedder, &options, &progress).with_context(|| {
        format!(
            "building index {} from labels {} and photos {}",
            config.index.display(),
            config.labels.display(),
            config.photos.display()
        )
    })?;
    if let Some(report) = built {
        tracing::info!(
            photos = report.photos,
            products = report.products,
            resumed = report.resumed,
            skipped = report.skipped.len(),
            excluded = report.excluded,
            multi_product_photos = report.multi_product_photos,
            "index built"
        );
        for (photo, reason) in report.skipped.iter().take(20) {
            tracing::warn!(photo, %reason, "photo skipped");
        }
    }
    readiness.set_phase("opening the index");
    let limits = wtb_dataset::DecodeLimits {
        max_pixels: config.max_pixels,
        ..wtb_dataset::DecodeLimits::default()
    };
    let engine = QueryEngine::open(embedder, &config.index)
        .with_context(|| format!("opening index {}", config.index.display()))?
        .with_limits(limits);
    let catalog = match &config.products {
        Some(path) => Some(
            Catalog::load(path)
                .map_err(|problems| anyhow::anyhow!("{problems}"))
                .with_context(|| format!("reading product metadata {}", path.display()))?,
        ),
        None => None,
    };
    let mut backend = PipelineBackend::new(engine, config.photos.clone(), catalog);
    if config.demo {
        backend = backend.into_demo();
    }
    tracing::info!(
        photos = backend.photo_ids.len(),
        categories = backend.products.len(),
        model = %backend.model,
        "catalogue ready"
    );
    Ok(backend)
}

//! The state every handler shares: whether the catalogue is loaded (and its backend), the
//! inference pool, the metrics and the limits; and the two searches handlers run through it.

use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::{Backend, SearchOutcome, SearchQuery};
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::pool::WorkerPool;
use crate::upload::{check_k, sniff_image_type, Limits};

/// Whether the store can answer searches yet: the catalogue and model are loaded once, possibly
/// after building the index, while the server already answers `/healthz` and `/readyz`.
#[derive(Default)]
pub struct Readiness {
    backend: OnceLock<Arc<dyn Backend>>,
    phase: Mutex<String>,
}

impl Readiness {
    /// Not ready, phase "starting".
    pub fn new() -> Arc<Readiness> {
        let readiness = Readiness::default();
        readiness.set_phase("starting");
        Arc::new(readiness)
    }

    /// A ready state around an already loaded backend.
    pub fn ready(backend: Arc<dyn Backend>) -> Arc<Readiness> {
        let readiness = Readiness::new();
        readiness.set_ready(backend);
        readiness
    }

    /// Describes what the store is doing while not ready (shown by `/readyz`).
    pub fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.into();
    }

    /// Marks the store ready with this backend (only the first call counts).
    pub fn set_ready(&self, backend: Arc<dyn Backend>) {
        if self.backend.set(backend).is_ok() {
            self.set_phase("ready");
        }
    }

    /// The backend, once ready.
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.backend.get().cloned()
    }

    /// The current phase.
    pub fn phase(&self) -> String {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// State shared by every handler.
pub(crate) struct AppState {
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) pool: WorkerPool,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
}

impl AppState {
    /// The backend, or 503 while starting.
    pub(crate) fn backend(&self) -> Result<Arc<dyn Backend>, StoreError> {
        self.readiness
            .backend()
            .ok_or_else(|| StoreError::not_ready(&self.readiness.phase()))
    }

    /// Validates a query, then runs it on the worker pool.
    pub(crate) async fn search(&self, query: SearchQuery) -> Result<SearchOutcome, StoreError> {
        if query.image.is_empty() {
            return Err(StoreError::bad_request(
                "the image field is missing or empty",
            ));
        }
        if sniff_image_type(&query.image).is_none() {
            return Err(StoreError::new(
                actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_type",
                "the upload is not a JPEG, PNG, GIF, WebP or BMP image",
            ));
        }
        check_k(query.k, self.limits.max_k)?;
        let backend = self.backend()?;
        let job = self
            .pool
            .submit(move || backend.search(&query))
            .inspect_err(|_| self.metrics.record_rejected())?;
        let outcome = job.await??;
        self.metrics.record_inference(outcome.inference_ms / 1000.0);
        Ok(outcome)
    }

    /// Item-to-item search on the worker pool.
    pub(crate) async fn similar(
        &self,
        category: String,
        product: u64,
        k: usize,
    ) -> Result<Vec<crate::Hit>, StoreError> {
        check_k(k, self.limits.max_k)?;
        let backend = self.backend()?;
        let job = self
            .pool
            .submit(move || backend.similar(&category, product, k))
            .inspect_err(|_| self.metrics.record_rejected())?;
        Ok(job.await??)
    }
}

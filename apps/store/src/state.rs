//! The state every handler shares: whether the catalogue is loaded (and its backend), the
//! inference pool, the metrics and the limits; and the two searches handlers run through it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use actix_multipart::Multipart;
use wtb_dataset::{read_header, DecodeLimits};

use crate::backend::{Backend, CropBox, SearchOutcome, SearchQuery};
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::pool::{Ticket, WorkerPool, SEARCH_BASE_COST};
use crate::upload::{check_k, read_search_form, sniff_image_type, Limits, SearchForm};

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

/// The client a request counts against: its peer address.
pub(crate) fn client_of(req: &actix_web::HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|addr| addr.ip())
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

    /// Reads a search form ([`read_search_form`]), counting bodies that ran out of time.
    pub(crate) async fn read_form(&self, multipart: Multipart) -> Result<SearchForm, StoreError> {
        read_search_form(multipart, &self.limits)
            .await
            .inspect_err(|e| {
                if e.status == actix_web::http::StatusCode::REQUEST_TIMEOUT {
                    self.metrics.record_body_timeout();
                }
            })
    }

    /// Validates a query, reads its photo's header (refusing a broken or oversized photo
    /// before it takes a worker), then runs it on the worker pool at the cost of the pixels
    /// it decodes.
    pub(crate) async fn search(
        &self,
        query: SearchQuery,
        client: Option<IpAddr>,
    ) -> Result<SearchOutcome, StoreError> {
        if query.image.is_empty() {
            return Err(StoreError::bad_request("the image field is empty"));
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
        let decode_limits = DecodeLimits {
            max_pixels: self.limits.max_pixels,
            max_file_bytes: self.limits.max_upload_bytes as u64,
        };
        let header = read_header(&query.image, &decode_limits)
            .map_err(|e| StoreError::from(crate::backend::photo_error(&e.problem)))?;
        let region = query.bbox.map(CropBox::to_bbox);
        let reduction = header.reduction(backend.source_side(), region.as_ref());
        let ticket = Ticket {
            client,
            cost: SEARCH_BASE_COST + header.decoded_pixels(reduction) / 1_000,
        };
        let job = self.pool.submit(ticket, move || backend.search(&query))?;
        let outcome = job.await??;
        self.metrics.record_inference(outcome.inference_ms / 1000.0);
        Ok(outcome)
    }

    /// Item-to-item search on the worker pool (no decoding: the model's fixed cost).
    pub(crate) async fn similar(
        &self,
        category: String,
        product: u64,
        k: usize,
        client: Option<IpAddr>,
    ) -> Result<Vec<crate::Hit>, StoreError> {
        check_k(k, self.limits.max_k)?;
        let backend = self.backend()?;
        let ticket = Ticket {
            client,
            cost: SEARCH_BASE_COST,
        };
        let job = self
            .pool
            .submit(ticket, move || backend.similar(&category, product, k))?;
        Ok(job.await??)
    }
}

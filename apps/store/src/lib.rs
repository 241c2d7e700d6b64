//! `wtb-store`: the wheretobuy web shop and JSON API.
//!
//! A shopper uploads a street photo, draws a box around the garment and gets the 12 catalogue
//! products that look most like it. The same search is offered as a versioned JSON API.
//!
//! - [`start`] runs the HTTP server on its own thread; [`Readiness`] tells it when the catalogue
//!   and model are loaded (until then `/readyz` and searches answer 503).
//! - Handlers only talk to a [`Backend`]; the shipped one is [`PipelineBackend`], which opens
//!   (or builds) an index with `wtb-pipeline`.
//! - Inference runs on a bounded [`WorkerPool`], never on the async executor. Each search
//!   costs the pixels its photo decodes to; clients are served in fair order by cost, a full
//!   queue is answered 503 with `Retry-After`, a client holding more than its share of the
//!   queue 429, and a search that waits past the deadline 503 without running.
//!
//! ```
//! use std::io::{Read, Write};
//! use wtb_store::{start, Readiness, StoreOptions};
//!
//! let options = StoreOptions { bind: "127.0.0.1:0".to_string(), ..StoreOptions::default() };
//! let store = start(options, Readiness::new()).unwrap();
//! let mut stream = std::net::TcpStream::connect(store.addr()).unwrap();
//! stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
//! let mut answer = String::new();
//! stream.read_to_string(&mut answer).unwrap();
//! // No backend yet: the store is alive but not ready.
//! assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
//! store.stop().unwrap();
//! ```

mod api;
mod backend;
mod demo;
mod error;
mod metrics;
mod openapi;
mod pages;
mod pipeline_backend;
mod pool;
mod render;
mod routing;
mod server;
mod state;
mod upload;

pub use backend::{
    Backend, BackendError, CategoryCount, CropBox, Hit, Product, SearchOutcome, SearchQuery,
};
pub use demo::{cache_dir, demo_catalogue, has_own_catalogue, DEMO_DIR};
pub use error::StoreError;
pub use metrics::Metrics;
pub use pipeline_backend::{load_backend, CatalogueConfig, PipelineBackend};
pub use pool::{PoolCounts, PoolError, QueueLimits, Ticket, WorkerPool, SEARCH_BASE_COST};
pub use server::{start, RunningStore, StoreOptions, CONTENT_SECURITY_POLICY};
pub use state::Readiness;
pub use upload::{sniff_image_type, Limits};

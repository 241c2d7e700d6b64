//! The HTTP server: routes, security headers, metrics middleware, and starting and stopping
//! it on its own thread. Handlers live in `api` and `pages`, their shared state in `state`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{self, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use crate::error::{ApiError, PageError, StoreError};
use crate::metrics::{Metrics, PoolState};
use crate::pool::{QueueLimits, WorkerPool};
use crate::routing::get;
use crate::state::{AppState, Readiness};
use crate::upload::Limits;
use crate::{api, pages};

/// The Content-Security-Policy of every answer: only our own scripts, styles and images (plus
/// `data:` for the query crop and `blob:` for the local preview).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free port).
    pub bind: String,
    /// Upload and query limits.
    pub limits: Limits,
    /// Inference worker threads.
    pub inference_workers: usize,
    /// Inference requests that may wait for a worker before new ones get 503.
    pub queue: usize,
    /// How long a search may wait for a worker before it is answered 503 (without running).
    pub queue_deadline: Duration,
    /// HTTP worker threads (async executors).
    pub http_workers: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            bind: "127.0.0.1:8080".to_string(),
            limits: Limits::default(),
            inference_workers: 1,
            queue: 32,
            queue_deadline: QueueLimits::default().deadline,
            http_workers: 2,
        }
    }
}

/// A server running on its own thread.
pub struct RunningStore {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningStore {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server stops (Ctrl-C or [`RunningStore::stop`]).
    pub fn wait(mut self) -> std::io::Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the server thread panicked"))),
            None => Ok(()),
        }
    }

    /// Stops the server gracefully and waits for it.
    pub fn stop(self) -> std::io::Result<()> {
        let handle = self.handle.clone();
        actix_web::rt::System::new().block_on(handle.stop(true));
        self.wait()
    }
}

/// Starts the server on its own thread and returns once it listens. Searches are answered
/// when `readiness` gets a backend; until then they get 503.
pub fn start(options: StoreOptions, readiness: Arc<Readiness>) -> std::io::Result<RunningStore> {
    let pool = WorkerPool::with_limits(
        options.inference_workers,
        QueueLimits {
            deadline: options.queue_deadline,
            ..QueueLimits::for_jobs(options.queue)
        },
    )?;
    let state = web::Data::new(AppState {
        readiness,
        pool,
        metrics: Metrics::default(),
        limits: options.limits,
    });
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("wtb-http".to_string())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(state.clone())
                        .configure(routes)
                        .wrap(middleware::from_fn(observe))
                        .wrap(middleware::Compress::default())
                })
                .workers(options.http_workers.max(1))
                .shutdown_timeout(5);
                let server = match server.bind(&options.bind) {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = started_tx.send(Err(std::io::Error::new(
                            e.kind(),
                            format!("cannot listen on {}: {e}", options.bind),
                        )));
                        return Err(e);
                    }
                };
                let addr = server.addrs().first().copied();
                let running = server.run();
                let _ = started_tx.send(
                    addr.map(|a| (a, running.handle()))
                        .ok_or_else(|| std::io::Error::other("the server has no address")),
                );
                running.await
            })
        })?;
    match started_rx.recv() {
        Ok(Ok((addr, handle))) => {
            tracing::info!(%addr, "listening");
            Ok(RunningStore {
                addr,
                handle,
                thread: Some(thread),
            })
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(std::io::Error::other(
            "the server thread stopped while starting",
        )),
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    // Page routes answer a bad query string or path with an error page; the API's scope sets
    // its own JSON handlers.
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        PageError::from(StoreError::bad_request(format!("bad query string: {err}"))).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, _| {
        PageError::from(StoreError::not_found(format!("bad path: {err}"))).into()
    }))
    .service(get("/healthz", healthz))
    .service(get("/readyz", readyz))
    .service(get("/metrics", metrics))
    .configure(api::routes)
    .configure(pages::routes)
    .default_service(web::to(not_found));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.readiness.backend() {
        Some(backend) => HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "model": backend.model(),
        })),
        None => HttpResponse::ServiceUnavailable()
            .insert_header((
                header::RETRY_AFTER,
                crate::error::RETRY_AFTER_SECONDS.to_string(),
            ))
            .json(serde_json::json!({ "status": "starting", "detail": state.readiness.phase() })),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&PoolState::of(&state.pool)))
}

async fn not_found(req: HttpRequest) -> actix_web::Result<HttpResponse> {
    let err = StoreError::not_found(format!("there is nothing at {}", req.path()));
    if req.path().starts_with("/api/") {
        Err(ApiError::from(err).into())
    } else {
        Err(PageError::from(err).into())
    }
}

/// Adds the security headers and records the request's metrics and log line.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let seconds = started.elapsed().as_secs_f64();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "(unmatched)".to_string());
    let status = response.status().as_u16();
    if let Some(state) = state {
        state
            .metrics
            .record_request(&method, &route, status, seconds);
    }
    tracing::info!(
        method = %method,
        path = %response.request().path(),
        status,
        ms = seconds * 1000.0,
        "request"
    );
    Ok(response)
}

//! Load bench of the web shop: a real `wtb-store` server on loopback over the whole s2s-dev
//! index, hammered by concurrent clients that each upload street photos with their boxes to
//! `POST /api/v1/search`, one request after another. Bounded in time and in count.
//!
//! Reports throughput, latency percentiles and errors (which must be 0).
//!
//! Settings (environment): `WTB_LOAD_CLIENTS` (8), `WTB_LOAD_SECONDS` (30),
//! `WTB_LOAD_MAX_REQUESTS` (20000), `WTB_LOAD_WORKERS` (inference threads, 1),
//! `WTB_SHARED_DIR` (`../shared`). The index is built on first run and cached under the
//! target folder. The figures are also written to `benches/out/store_load.json`.
//!
//! `cargo bench -p wtb-benches --bench store_load`

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wtb_benches::{street_queries, StreetQuery};
use wtb_embed::{DeviceChoice, EmbedderConfig, ModelKind};
use wtb_store::{load_backend, start, CatalogueConfig, Readiness, StoreOptions};

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn multipart(query: &StreetQuery) -> (String, Vec<u8>) {
    let boundary = "wtbLoadBoundary0123456789";
    let mut body = Vec::with_capacity(query.image.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"street.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&query.image);
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"bbox\"\r\n\r\n{}\r\n--{boundary}--\r\n",
            query.bbox
        )
        .as_bytes(),
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let clients = env_usize("WTB_LOAD_CLIENTS", 8)?.max(1);
    let seconds = env_usize("WTB_LOAD_SECONDS", 30)?.max(1);
    let max_requests = env_usize("WTB_LOAD_MAX_REQUESTS", 20_000)?.max(1);
    let workers = env_usize("WTB_LOAD_WORKERS", 1)?.max(1);
    let Some([data, weights]) = wtb_testdata::shared_paths([
        "data/s2s-dev",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
    ]) else {
        return Ok(());
    };

    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtb-store-bench");
    std::fs::create_dir_all(&cache)?;
    let config = CatalogueConfig {
        index: cache.join("s2s-dev-all.wtbindex"),
        photos: data.join("photos_resized"),
        labels: data.join("labels"),
        products: Some(data.join("products.csv")),
        embedder: EmbedderConfig {
            weights: Some(weights),
            device: DeviceChoice::Cpu,
            ..EmbedderConfig::new(ModelKind::MobileNetV2)
        },
        categories: Vec::new(),
        exclusions: None,
        batch_size: 32,
        max_pixels: 40_000_000,
        demo: false,
    };
    let readiness = Readiness::new();
    let started = Instant::now();
    let backend = load_backend(&config, &readiness)?;
    eprintln!(
        "catalogue ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    readiness.set_ready(Arc::new(backend));
    let options = StoreOptions {
        bind: "127.0.0.1:0".to_string(),
        inference_workers: workers,
        queue: 4 * clients,
        http_workers: 2,
        ..StoreOptions::default()
    };
    let store = start(options, readiness)?;
    let url = format!("http://{}/api/v1/search", store.addr());
    let queries = Arc::new(street_queries(&data)?);
    anyhow::ensure!(
        !queries.is_empty(),
        "no street photos in {}",
        data.display()
    );

    // Warm-up (first-touch allocations, page cache), not measured.
    for query in queries.iter().take(4) {
        let (content_type, body) = multipart(query);
        ureq::post(&url)
            .set("Content-Type", &content_type)
            .send_bytes(&body)?;
    }

    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let run_started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (url, queries, issued) = (url.clone(), Arc::clone(&queries), Arc::clone(&issued));
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let (mut latencies, mut errors) = (Vec::new(), Vec::new());
                let mut i = client * 7;
                while Instant::now() < deadline
                    && issued.fetch_add(1, Ordering::Relaxed) < max_requests
                {
                    let (content_type, body) = multipart(&queries[i % queries.len()]);
                    i += 1;
                    let sent = Instant::now();
                    let result = agent
                        .post(&url)
                        .set("Content-Type", &content_type)
                        .send_bytes(&body)
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.into_string().map_err(|e| e.to_string()));
                    match result {
                        Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Err(e) => errors.push(e),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for thread in threads {
        let (l, e) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        latencies.extend(l);
        errors.extend(e);
    }
    let elapsed = run_started.elapsed().as_secs_f64();
    store.stop()?;

    latencies.sort_by(f64::total_cmp);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = serde_json::json!({
        "clients": clients,
        "seconds": elapsed,
        "requests": latencies.len(),
        "errors": errors.len(),
        "throughput_rps": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 50.0),
        "p90_ms": percentile(&latencies, 90.0),
        "p99_ms": percentile(&latencies, 99.0),
        "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "inference_workers": workers,
        "cores": cores,
        "index_photos": "s2s-dev, all categories",
    });
    println!(
        "store_load: {clients} clients, {elapsed:.1} s, {} requests, {:.1} req/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, errors {} ({cores} cores, {workers} inference worker(s))",
        latencies.len(),
        report["throughput_rps"].as_f64().unwrap_or(0.0),
        report["p50_ms"].as_f64().unwrap_or(f64::NAN),
        report["p90_ms"].as_f64().unwrap_or(f64::NAN),
        report["p99_ms"].as_f64().unwrap_or(f64::NAN),
        report["max_ms"].as_f64().unwrap_or(f64::NAN),
        errors.len()
    );
    for error in errors.iter().take(5) {
        eprintln!("error: {error}");
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("out");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("store_load.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    anyhow::ensure!(errors.is_empty(), "{} requests failed", errors.len());
    Ok(())
}

//! `wtb-store`: runs the web shop. It listens at once (`/healthz`), loads the model, builds the
//! index when it is missing (progress in the log), then reports ready (`/readyz`). Without a
//! catalogue of one's own (no index file, no `retrieval_*.json` labels) it serves the demo
//! catalogue of the repository.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use wtb_embed::{DeviceChoice, EmbedderConfig, Pooling, Preprocess};
use wtb_store::{
    demo_catalogue, has_own_catalogue, load_backend, start, CatalogueConfig, Limits, Readiness,
    StoreOptions,
};

/// The wheretobuy web shop: upload a street photo, get the products that look like it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The index file; built from --labels and --photos when it does not exist.
    #[arg(long, default_value = "shop.wtbindex")]
    index: PathBuf,
    /// The shop photos folder (`<photo>.jpg`).
    #[arg(long, default_value = "photos_resized")]
    photos: PathBuf,
    /// The street2shop label folder, used to build the index.
    #[arg(long, default_value = "labels")]
    labels: PathBuf,
    /// Product names and metadata (`products.csv`); default: `products.csv` here or beside
    /// the label folder, when it exists.
    #[arg(long)]
    products: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Where the model runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The model: mobilenet_v2, efficientnet_lite0, resnet50, vgg16, or an ensemble joined by
    /// + (mobilenet_v2+efficientnet_lite0).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// The weights file (repeat it for each model of an ensemble, in order); default:
    /// `<model>.safetensors` (or a download's `<model>_*.safetensors`) in $WTB_MODELS_DIR or
    /// `models/`, else for MobileNetV2 the weights shipped with wheretobuy.
    #[arg(long, value_name = "FILE")]
    weights: Vec<PathBuf>,
    /// Preprocessing: squash (the best on the dev sets), torchvision or pad.
    #[arg(long, default_value = "squash")]
    preprocess: String,
    /// Pooling: avg, max, gem, gem:P, rmac or rmac:L.
    #[arg(long, default_value = "avg")]
    pooling: String,
    /// A learned head (from `wtb train`) applied to every vector; the index records it and
    /// an index built with another head is refused.
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// Only these categories when building the index (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// Exclusion file (from `wtb dataset clean`) honoured when building the index.
    #[arg(long)]
    exclusions: Option<PathBuf>,
    /// Photos per model batch when building the index.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Inference worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Searches that may wait for a worker before new ones are refused with 503.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Seconds a search may wait for a worker before it is answered 503 (without running).
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    queue_deadline_secs: f64,
    /// Seconds a request body may take to arrive, whole, before it is answered 408.
    #[arg(long, default_value_t = 30.0, value_parser = positive_seconds)]
    body_timeout_secs: f64,
    /// HTTP threads.
    #[arg(long, default_value_t = 2)]
    http_workers: usize,
    /// Largest upload, in MiB.
    #[arg(long, default_value_t = 10)]
    max_upload_mib: usize,
    /// Largest decoded photo, in megapixels.
    #[arg(long, default_value_t = 40)]
    max_megapixels: u64,
    /// Serve the built-in demo catalogue (300 CC0 clothing photos), whatever is in --labels.
    #[arg(long)]
    demo: bool,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 => Ok(seconds),
        _ => Err(format!(
            "expected seconds between 0 and 86400, got {text:?}"
        )),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let embedder = EmbedderConfig {
        preprocess: args.preprocess.parse::<Preprocess>()?,
        pooling: args.pooling.parse::<Pooling>()?,
        device: args.device.parse::<DeviceChoice>()?,
        head: args.head.clone(),
        ..EmbedderConfig::for_models(&args.model, &args.weights)?
    };
    let products = args.products.clone().or_else(|| {
        let beside_labels = args.labels.join("..").join("products.csv");
        [PathBuf::from("products.csv"), beside_labels]
            .into_iter()
            .find(|p| p.is_file())
    });
    let max_pixels = args.max_megapixels.saturating_mul(1_000_000);
    let own = has_own_catalogue(&args.labels, &args.index);
    if args.demo || !own {
        let catalogue = demo_catalogue(embedder, args.batch_size, max_pixels);
        tracing::info!(
            "serving the demo catalogue of {}{}; to serve your own, put its street2shop label \
             files in {} and its photos in {} (or pass --labels, --photos, --index)",
            catalogue.photos.display(),
            if args.demo {
                ""
            } else {
                " (no catalogue of your own found)"
            },
            args.labels.display(),
            args.photos.display()
        );
        return serve(&args, catalogue);
    }
    let catalogue = CatalogueConfig {
        index: args.index.clone(),
        photos: args.photos.clone(),
        labels: args.labels.clone(),
        products,
        embedder,
        categories: args.categories.clone(),
        exclusions: args.exclusions.clone(),
        batch_size: args.batch_size,
        max_pixels,
        demo: false,
    };
    serve(&args, catalogue)
}

/// Starts the server, loads `catalogue` and serves until stopped.
fn serve(args: &Args, catalogue: CatalogueConfig) -> anyhow::Result<()> {
    let limits = Limits {
        max_upload_bytes: args.max_upload_mib.saturating_mul(1024 * 1024),
        max_pixels: catalogue.max_pixels,
        body_timeout: Duration::from_secs_f64(args.body_timeout_secs),
        ..Limits::default()
    };
    let options = StoreOptions {
        bind: args.bind.clone(),
        limits,
        inference_workers: args.workers,
        queue: args.queue,
        queue_deadline: Duration::from_secs_f64(args.queue_deadline_secs),
        http_workers: args.http_workers,
    };

    let readiness = Readiness::new();
    let store = start(options, Arc::clone(&readiness)).context("starting the HTTP server")?;
    tracing::info!(addr = %store.addr(), "wtb-store is up; loading the catalogue");
    match load_backend(&catalogue, &readiness) {
        Ok(backend) => {
            readiness.set_ready(Arc::new(backend));
            tracing::info!(addr = %store.addr(), "ready");
        }
        Err(err) => {
            tracing::error!("cannot load the catalogue: {err:#}");
            let _ = store.stop();
            return Err(err);
        }
    }
    store.wait().context("running the HTTP server")
}

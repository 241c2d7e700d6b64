//! Shared set-up of the store's integration tests: a real server on a loopback port over an
//! index of s2s-dev shop photos (a category subset, cached under the target folder), and a
//! small HTTP client with hand-built multipart bodies.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use wtb_embed::{DeviceChoice, EmbedderConfig, ModelKind};
use wtb_store::{load_backend, start, CatalogueConfig, Readiness, RunningStore, StoreOptions};

/// Categories indexed by the tests: small ones, so the first run builds the index quickly.
pub const TEST_CATEGORIES: [&str; 5] = ["bags", "belts", "eyewear", "hats", "pants"];

pub use wtb_testdata::shared_dir;

/// The s2s-dev folder, or `None` (with a skip message) when the data is missing.
pub fn s2s_dev() -> Option<PathBuf> {
    wtb_testdata::shared_paths([
        "data/s2s-dev",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
    ])
    .map(|[dir, _]| dir)
}

/// A running store and the data behind it.
pub struct TestStore {
    pub addr: SocketAddr,
    pub data: PathBuf,
    _store: RunningStore,
}

impl TestStore {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

static STORE: OnceLock<Option<TestStore>> = OnceLock::new();

/// The store shared by the tests of one test binary (started on first use).
pub fn store() -> Option<&'static TestStore> {
    STORE
        .get_or_init(|| {
            let data = s2s_dev()?;
            let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtb-store-tests");
            std::fs::create_dir_all(&cache).expect("create the index cache folder");
            let config = CatalogueConfig {
                index: cache.join(format!("s2s-dev-{}.wtbindex", TEST_CATEGORIES.join("-"))),
                photos: data.join("photos_resized"),
                labels: data.join("labels"),
                products: Some(data.join("products.csv")),
                embedder: EmbedderConfig {
                    weights: Some(
                        shared_dir().join("models/mobilenet_v2_torchvision_imagenet1k.safetensors"),
                    ),
                    device: DeviceChoice::Cpu,
                    ..EmbedderConfig::new(ModelKind::MobileNetV2)
                },
                categories: TEST_CATEGORIES.iter().map(|c| c.to_string()).collect(),
                exclusions: None,
                batch_size: 32,
                max_pixels: 40_000_000,
                demo: false,
            };
            let store = serve(&config);
            Some(TestStore {
                addr: store.addr(),
                data,
                _store: store,
            })
        })
        .as_ref()
}

/// One record of a label file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Record {
    pub photo: u64,
    pub product: u64,
    pub bbox: Option<BBoxRecord>,
}

/// A label box.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct BBoxRecord {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl BBoxRecord {
    pub fn field(&self) -> String {
        format!(
            "{},{},{},{}",
            self.left.round(),
            self.top.round(),
            self.width.round().max(1.0),
            self.height.round().max(1.0)
        )
    }
}

/// The records of `<kind>_<category>.json`.
pub fn records(data: &Path, kind: &str, category: &str) -> Vec<Record> {
    let path = data.join(format!("labels/{kind}_{category}.json"));
    let text = std::fs::read_to_string(&path).expect("read a label file");
    serde_json::from_str(&text).expect("parse a label file")
}

/// `photo -> kind` from `truth.csv` (shop_original, shop_variant, placeholder, nonwhite, street).
pub fn truth(data: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(data.join("truth.csv")).expect("read truth.csv");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',');
            let photo = fields.next()?.parse().ok()?;
            Some((photo, fields.next()?.to_string()))
        })
        .collect()
}

pub fn photo_bytes(data: &Path, photo: u64) -> Vec<u8> {
    std::fs::read(data.join(format!("photos_resized/{photo}.jpg"))).expect("read a photo")
}

/// A multipart/form-data body: (content type, bytes).
pub fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "wtbTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if *name == "image" {
            body.extend_from_slice(
                b"Content-Disposition: form-data; name=\"image\"; filename=\"upload.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            );
        } else {
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_string();
            Some((name.to_ascii_lowercase(), value))
        })
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("read the body");
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Answer {
    answer(ureq::get(url).call())
}

pub fn post(url: &str, content_type: &str, body: &[u8]) -> Answer {
    answer(
        ureq::post(url)
            .set("Content-Type", content_type)
            .send_bytes(body),
    )
}

/// `POST /api/v1/search` with these fields.
pub fn search(store: &TestStore, fields: &[(&str, &[u8])]) -> Answer {
    let (content_type, body) = multipart(fields);
    post(&store.url("/api/v1/search"), &content_type, &body)
}

/// The (category, product) keys of a search answer, best first.
pub fn products_of(answer: &serde_json::Value) -> Vec<(String, u64)> {
    answer["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    (
                        r["category"].as_str().unwrap_or_default().to_string(),
                        r["product"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A store serving `config` on a loopback port, ready (its index built first when missing).
pub fn serve(config: &CatalogueConfig) -> RunningStore {
    let readiness = Readiness::new();
    let backend = load_backend(config, &readiness).expect("load the catalogue");
    readiness.set_ready(Arc::new(backend));
    let options = StoreOptions {
        bind: "127.0.0.1:0".to_string(),
        inference_workers: 2,
        queue: 64,
        ..StoreOptions::default()
    };
    start(options, readiness).expect("start the store")
}

//! Query latency with and without a learned head, in one process, in alternating turns: the
//! engine `wtb search` and the web shop use (decode, crop, embed, head, query expansion, exact
//! search over the whole s2s-dev gallery with category consensus, one hit per product) against
//! the settings before learned similarity (MobileNetV2, torchvision preprocessing, no head, no
//! category consensus) with the head of `WTB_HEAD`
//! (trained by `wtb train`; its preprocessing is read from the file).
//!
//! Prints per pass the median latency of each side and their ratio, then the median of the
//! per-query paired ratios. Settings (environment): `WTB_HEAD` (required), `WTB_LATENCY_QUERIES`
//! (60), `WTB_LATENCY_PASSES` (3), `WTB_SHARED_DIR`. Indexes are cached under the target folder.
//!
//! `WTB_HEAD=head.safetensors cargo bench -p wtb-benches --bench query_latency`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use wtb_dataset::BBox;
use wtb_embed::{Embedder, EmbedderConfig, Head, ModelKind, Preprocess};
use wtb_pipeline::{ensure_index, BuildOptions, PhotoQuery, QueryEngine};

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Street photos of the test pairs with their boxes.
fn queries(data: &Path, wanted: usize) -> anyhow::Result<Vec<(Vec<u8>, BBox)>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("labels"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("test_pairs_"))
        })
        .collect();
    files.sort();
    for path in files {
        let records: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for record in records.as_array().into_iter().flatten() {
            let photo = record["photo"].as_u64().context("photo id")?;
            let b = &record["bbox"];
            let field = |k: &str| b[k].as_f64().unwrap_or(0.0);
            let bbox = BBox::new(field("left"), field("top"), field("width"), field("height"));
            if bbox.width <= 0.0 || bbox.height <= 0.0 {
                continue;
            }
            let image = std::fs::read(data.join("photos_resized").join(format!("{photo}.jpg")))?;
            out.push((image, bbox));
        }
    }
    // Spread over categories: every n-th query.
    let step = (out.len() / wanted.max(1)).max(1);
    Ok(out.into_iter().step_by(step).take(wanted).collect())
}

fn engine(config: &EmbedderConfig, data: &Path, index: PathBuf) -> anyhow::Result<QueryEngine> {
    let embedder = Embedder::load(config)?;
    let options = BuildOptions::new(data.join("labels"), data.join("photos_resized"), index);
    ensure_index(&embedder, &options, &|_, _| {})?;
    Ok(QueryEngine::open(embedder, &options.index)?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let Some([data, weights]) = wtb_testdata::shared_paths([
        "data/s2s-dev",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
    ]) else {
        return Ok(());
    };
    let Some(head_path) = std::env::var_os("WTB_HEAD").map(PathBuf::from) else {
        eprintln!("skipping: set WTB_HEAD to a head file made by `wtb train`");
        return Ok(());
    };
    let head = Head::load(&head_path)?;
    let n = env_usize("WTB_LATENCY_QUERIES", 60)?;
    let passes = env_usize("WTB_LATENCY_PASSES", 3)?;
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtb-latency-bench");
    std::fs::create_dir_all(&cache)?;

    let today = EmbedderConfig {
        weights: Some(weights.clone()),
        ..EmbedderConfig::new(ModelKind::MobileNetV2)
    };
    let with_head = EmbedderConfig {
        preprocess: head.meta().preprocess.parse::<Preprocess>()?,
        pooling: head.meta().pooling.parse()?,
        head: Some(head_path.clone()),
        ..EmbedderConfig::for_models(&head.meta().model, &[weights])?
    };
    eprintln!("building or opening the two indexes of the s2s-dev gallery...");
    let mut plain = engine(&today, &data, cache.join("plain.wtbindex"))?;
    // Today's default before learned similarity: no category consensus either.
    plain.set_consensus(None)?;
    let learned = engine(
        &with_head,
        &data,
        cache.join(format!("{}.wtbindex", head.id())),
    )?;
    let queries = queries(&data, n)?;
    anyhow::ensure!(!queries.is_empty(), "no test queries in {}", data.display());
    let ask = |engine: &QueryEngine, (image, bbox): &(Vec<u8>, BBox)| -> anyhow::Result<f64> {
        let started = Instant::now();
        let answer = engine.search(&PhotoQuery {
            image,
            bbox: Some(*bbox),
            k: 12,
            categories: Default::default(),
            metric: None,
        })?;
        anyhow::ensure!(answer.hits.len() == 12, "fewer than 12 hits");
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    // Warm-up, not measured.
    for query in queries.iter().take(5) {
        ask(&plain, query)?;
        ask(&learned, query)?;
    }
    println!(
        "query latency, {} queries x {passes} passes, ms (head {}: {} -> {} values)",
        queries.len(),
        head.id(),
        head.input_dim(),
        head.output_dim()
    );
    println!("| pass | today (median) | with head (median) | ratio | paired median |");
    println!("|---:|---:|---:|---:|---:|");
    let mut all_paired = Vec::new();
    for pass in 1..=passes {
        let (mut a, mut b, mut paired) = (Vec::new(), Vec::new(), Vec::new());
        for (i, query) in queries.iter().enumerate() {
            // Alternate which side goes first, so that neither always meets warm caches.
            let (x, y) = if i % 2 == 0 {
                let x = ask(&plain, query)?;
                (x, ask(&learned, query)?)
            } else {
                let y = ask(&learned, query)?;
                (ask(&plain, query)?, y)
            };
            a.push(x);
            b.push(y);
            paired.push(y / x);
        }
        let (ma, mb, mp) = (median(&mut a), median(&mut b), median(&mut paired));
        all_paired.push(mp);
        println!("| {pass} | {ma:.2} | {mb:.2} | {:.3} | {mp:.3} |", mb / ma);
    }
    let ratio = median(&mut all_paired);
    println!("median paired ratio over passes: {ratio:.3}");
    println!("RATIO query_head_vs_plain {ratio:.3}");
    Ok(())
}

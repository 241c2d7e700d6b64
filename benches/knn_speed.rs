//! Exact and approximate k-NN speed of `wtb-search` on clustered random vectors.
//!
//! `cargo bench -p wtb-benches --bench knn_speed -- [--sizes 10000,100000] [--runs R]
//! [--hnsw-size N] [--no-hnsw] [--json FILE]`
//!
//! d = 1280, k = 50, batch Q = 1000 and single queries (20 one-at-a-time calls), f32 and f16
//! storage. The data: 1,000 random unit centres, each point a centre plus Gaussian noise of the
//! same norm, normalised; queries drawn the same way with another seed (fixed seeds). The HNSW
//! part (at `--hnsw-size`, default the largest size) reports build time, single-query time
//! against the exact scan on the same queries, and recall@10 against exact.
//!
//! The reference tools (numpy, faiss) run in the same session through `benches/knn_vs_anchors.sh`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use wtb_search::{
    Gallery, Index, Metric, PhotoRecord, Precision, SearchMode, SearchRequest, VectorSearch,
};

const DIM: usize = 1280;
const K: usize = 50;
const BATCH: usize = 1000;
const SINGLE_CALLS: usize = 20;

struct Options {
    sizes: Vec<usize>,
    runs: usize,
    hnsw_size: Option<usize>,
    json: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        sizes: vec![10_000, 100_000],
        runs: 5,
        hnsw_size: Some(0),
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                options.sizes = args
                    .next()
                    .context("--sizes needs a list")?
                    .split(',')
                    .map(|s| s.parse().context("bad size"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--runs" => options.runs = args.next().context("--runs needs a number")?.parse()?,
            "--hnsw-size" => {
                options.hnsw_size =
                    Some(args.next().context("--hnsw-size needs a number")?.parse()?)
            }
            "--no-hnsw" => options.hnsw_size = None,
            "--json" => options.json = Some(args.next().context("--json needs a path")?.into()),
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if options.hnsw_size == Some(0) {
        options.hnsw_size = options.sizes.iter().max().copied();
    }
    Ok(options)
}

/// SplitMix64 uniform + Box-Muller normals: reproducible on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal_pair(&mut self) -> (f32, f32) {
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        ((r * t.cos()) as f32, (r * t.sin()) as f32)
    }
    fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (a, b) = self.normal_pair();
            out.push(a);
            out.push(b);
        }
        out.truncate(n);
        out
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// `n` clustered unit vectors.
fn clustered(n: usize, centres: &[Vec<f32>], seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let noise = 1.0 / (DIM as f32).sqrt();
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let centre = &centres[(rng.next_u64() % centres.len() as u64) as usize];
        let mut v: Vec<f32> = rng
            .normals(DIM)
            .iter()
            .zip(centre)
            .map(|(z, c)| c + noise * z)
            .collect();
        normalise(&mut v);
        out.extend_from_slice(&v);
    }
    out
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

#[derive(serde::Serialize)]
struct Row {
    bench: String,
    n: usize,
    queries_per_call: usize,
    calls: usize,
    median_s: f64,
    best_s: f64,
    queries_per_s: f64,
    gflops: f64,
    /// Matrix bytes read per single query / time (single-query rows only).
    gb_per_s: Option<f64>,
}

fn row(
    bench: &str,
    n: usize,
    q: usize,
    calls: usize,
    mut times: Vec<f64>,
    bytes_per_value: usize,
) -> Row {
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    let per_query = med / (q * calls) as f64;
    Row {
        bench: bench.to_string(),
        n,
        queries_per_call: q,
        calls,
        median_s: med,
        best_s: best,
        queries_per_s: 1.0 / per_query,
        gflops: 2.0 * (n * DIM) as f64 / per_query / 1e9,
        gb_per_s: (q == 1).then(|| (n * DIM * bytes_per_value) as f64 / per_query / 1e9),
    }
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let max_n = options
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(options.hnsw_size.unwrap_or(0));
    let t = Instant::now();
    let mut rng = Rng(42);
    let centres: Vec<Vec<f32>> = (0..1000)
        .map(|_| {
            let mut c = rng.normals(DIM);
            normalise(&mut c);
            c
        })
        .collect();
    let data = clustered(max_n, &centres, 1);
    let queries = clustered(BATCH, &centres, 2);
    eprintln!(
        "[knn_speed] data {max_n} x {DIM} in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for &n in &options.sizes {
        let values = data[..n * DIM].to_vec();
        let galleries = [
            ("f32", Gallery::new(DIM, values.clone(), Precision::F32)?),
            ("f16", Gallery::new(DIM, values, Precision::F16)?),
        ];
        // Correctness guard: f32 batch (GEMM) and single (kernel) answers hold the same rows, up to
        // near-ties that the two summation orders may swap at the k-th place.
        let batch = galleries[0]
            .1
            .knn_batch(&queries[..4 * DIM], K, Metric::InnerProduct)?;
        for (i, b) in batch.iter().enumerate() {
            let single =
                galleries[0]
                    .1
                    .knn(&queries[i * DIM..(i + 1) * DIM], K, Metric::InnerProduct)?;
            let same = single
                .iter()
                .filter(|s| b.iter().any(|b| b.position == s.position))
                .count();
            if same < K - 2 {
                bail!("batch and single answers differ at N={n}, query {i}: {same}/{K} equal");
            }
        }
        for (name, gallery) in &galleries {
            let bytes = if *name == "f32" { 4 } else { 2 };
            let (mut batch_t, mut single_t) = (Vec::new(), Vec::new());
            // Warm-up, then interleaved runs.
            gallery.knn_batch(&queries, K, Metric::InnerProduct)?;
            for _ in 0..options.runs {
                let t = Instant::now();
                let out = gallery.knn_batch(&queries, K, Metric::InnerProduct)?;
                batch_t.push(t.elapsed().as_secs_f64());
                std::hint::black_box(out);
                let t = Instant::now();
                for i in 0..SINGLE_CALLS {
                    std::hint::black_box(gallery.knn(
                        &queries[i * DIM..(i + 1) * DIM],
                        K,
                        Metric::InnerProduct,
                    )?);
                }
                single_t.push(t.elapsed().as_secs_f64());
            }
            rows.push(row(
                &format!("wtb exact {name}"),
                n,
                BATCH,
                1,
                batch_t,
                bytes,
            ));
            rows.push(row(
                &format!("wtb exact {name}"),
                n,
                1,
                SINGLE_CALLS,
                single_t,
                bytes,
            ));
        }
    }
    for r in &rows {
        println!(
            "{:<18} N={:>7} Q={:>4} x{:<3} median {:>9.4}s best {:>9.4}s  {:>9.1} q/s  {:>6.1} GFLOP/s{}",
            r.bench,
            r.n,
            r.queries_per_call,
            r.calls,
            r.median_s,
            r.best_s,
            r.queries_per_s,
            r.gflops,
            r.gb_per_s.map_or(String::new(), |g| format!("  {g:.1} GB/s"))
        );
    }

    let mut hnsw = BTreeMap::new();
    if let Some(n) = options.hnsw_size {
        let records: Vec<PhotoRecord> = (0..n as u64)
            .map(|photo| PhotoRecord {
                category: "all".into(),
                product: photo,
                photo,
            })
            .collect();
        let mut index = Index::new(DIM, Precision::F32, BTreeMap::new())?;
        index.add(&records, &data[..n * DIM])?;
        let t = Instant::now();
        index.build_approximate()?;
        let build_s = t.elapsed().as_secs_f64();
        let exact = SearchRequest {
            mode: SearchMode::Exact,
            ..SearchRequest::new(10, Metric::Cosine)
        };
        let approximate = SearchRequest {
            mode: SearchMode::Approximate,
            ..exact.clone()
        };
        let n_queries = 200;
        let (mut exact_s, mut approx_s, mut hits) = (0.0, 0.0, 0usize);
        for q in queries.chunks(DIM).take(n_queries) {
            let t = Instant::now();
            let truth = index.search(q, &exact)?;
            exact_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let found = index.search(q, &approximate)?;
            approx_s += t.elapsed().as_secs_f64();
            hits += found
                .iter()
                .filter(|h| truth.iter().any(|t| t.photo == h.photo))
                .count();
        }
        let recall = hits as f64 / (n_queries * 10) as f64;
        let (exact_ms, approx_ms) = (
            exact_s * 1e3 / n_queries as f64,
            approx_s * 1e3 / n_queries as f64,
        );
        println!(
            "HNSW (usearch, M=16, ef_add=128, ef_search=128, f16 graph, exact rescoring) N={n}: build {build_s:.1}s, single query {approx_ms:.3} ms vs exact {exact_ms:.3} ms ({:.1}x), recall@10 {recall:.4}",
            exact_ms / approx_ms
        );
        hnsw.insert("n", n as f64);
        hnsw.insert("build_s", build_s);
        hnsw.insert("approx_ms", approx_ms);
        hnsw.insert("exact_ms", exact_ms);
        hnsw.insert("speedup", exact_ms / approx_ms);
        hnsw.insert("recall_at_10", recall);
    }
    if let Some(path) = options.json {
        let json = serde_json::json!({ "rows": rows, "hnsw": hnsw, "threads": rayon_threads() });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

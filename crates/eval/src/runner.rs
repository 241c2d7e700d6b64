//! Runs a [`Protocol`] for models × preprocessing × pooling × metrics and gathers a
//! [`Report`].
//!
//! Embeddings are computed once per (model, weights sha256, preprocessing, pooling, photo set)
//! and cached on disk in chunks, so an interrupted run resumes where it stopped; a cache file
//! whose metadata does not match is recomputed, never used. Search is exact k-NN through
//! `wtb-search` over the whole gallery of each search group; products are deduplicated by
//! their best photo when scoring.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wtb_embed::{
    load_embeddings, save_embeddings, DeviceChoice, Embedder, EmbedderConfig, EmbeddingMeta,
    ImageJob, ModelKind, Pooling, Preprocess,
};
use wtb_search::{Gallery, Metric, Precision};

use crate::metrics::{
    score_query, summarize, BootstrapConfig, Measure, QueryScore, RankedPhoto, Target,
};
use crate::protocol::{GalleryPhoto, Protocol, Query};
use crate::report::{ConfigLabel, FailureCase, Report, SetResult, SkippedItem};

/// Per evaluation set (by name), the scores of its queries.
type ScoresBySet = Vec<(String, Vec<QueryScore>)>;
use crate::{write_atomic, EvalError};

/// Cut-offs of the original project (5 to 50) plus 1, as the follow-ups report.
pub const DEFAULT_KS: [usize; 7] = [1, 5, 10, 20, 30, 40, 50];

/// Images per embedding cache file: the unit of resumption.
const CACHE_CHUNK: usize = 256;
/// Version of the cache file layout (part of the key).
const CACHE_VERSION: u32 = 1;

/// A model to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The network.
    pub kind: ModelKind,
    /// An explicit weights file; `None` searches the usual places (see `wtb_embed::resolve_weights`).
    pub weights: Option<PathBuf>,
}

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Models.
    pub models: Vec<ModelSpec>,
    /// Preprocessing variants (each model runs with each).
    pub preprocess: Vec<Preprocess>,
    /// Pooling variants (each model runs with each).
    pub pooling: Vec<Pooling>,
    /// Whether vectors are scaled to unit length before search.
    pub l2_normalize: bool,
    /// Distance metrics.
    pub metrics: Vec<Metric>,
    /// Cut-offs for accuracy@k (and hit@k, precision@k).
    pub ks: Vec<usize>,
    /// Margin added around query boxes, as a fraction of the box size on each side.
    pub margin: f64,
    /// Images per model batch.
    pub batch: usize,
    /// Where the model runs.
    pub device: DeviceChoice,
    /// Bootstrap settings.
    pub bootstrap: BootstrapConfig,
    /// Embedding cache folder.
    pub cache_dir: PathBuf,
    /// Failure cases to show (from the configuration with the best first k-measure).
    pub failures: usize,
    /// Folder where failure thumbnails go (the report folder): `failures/` is written in it.
    pub out_dir: PathBuf,
}

/// Progress of a long step: (what, done, total).
pub type Progress<'a> = &'a dyn Fn(&str, usize, usize);

/// What [`run`] produced besides the report.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// The report contents.
    pub report: Report,
    /// (model, weights file, sha256) of every model.
    pub weights: Vec<(String, String, String)>,
    /// Seconds per stage.
    pub timings: Vec<(String, f64)>,
}

/// Runs every configuration of `config` on `protocol`.
pub fn run(
    protocol: &Protocol,
    config: &RunConfig,
    progress: Progress<'_>,
) -> Result<RunOutput, EvalError> {
    if config.ks.is_empty() || config.ks.contains(&0) {
        return Err(EvalError::Config(
            "the cut-offs k must be at least 1".into(),
        ));
    }
    if config.models.is_empty()
        || config.metrics.is_empty()
        || config.preprocess.is_empty()
        || config.pooling.is_empty()
    {
        return Err(EvalError::Config(
            "at least one model, metric, preprocessing and pooling is needed".into(),
        ));
    }
    let measures = if protocol.category_targets {
        Measure::category_measures(&config.ks)
    } else {
        Measure::product_measures(&config.ks)
    };

    let gallery_photos = unique_gallery(protocol);
    let queries = unique_queries(protocol);
    let mut skipped = protocol.skipped.clone();
    let mut results = Vec::new();
    let mut weights = Vec::new();
    let mut timings = Vec::new();
    // (configuration, per-set scores) kept for picking failure cases.
    let mut all_scores: Vec<(ConfigLabel, ScoresBySet)> = Vec::new();

    for model in &config.models {
        for &preprocess in &config.preprocess {
            for &pooling in &config.pooling {
                let variant = format!(
                    "{}/{}/{}",
                    model.kind.name(),
                    preprocess.name(),
                    pooling.name()
                );
                let started = Instant::now();
                let embedder = Embedder::load(&EmbedderConfig {
                    model: model.kind,
                    weights: model.weights.clone(),
                    preprocess,
                    pooling,
                    l2_normalize: config.l2_normalize,
                    device: config.device,
                    engine: wtb_embed::Engine::default(),
                })
                .map_err(|source| EvalError::Embed {
                    source: Box::new(source),
                    what: format!("loading {}", model.kind.name()),
                })?;
                let meta = embedder.meta().clone();
                if !weights
                    .iter()
                    .any(|(m, _, _): &(String, String, String)| *m == meta.model)
                {
                    let file = wtb_embed::resolve_weights(model.kind, model.weights.as_deref())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    weights.push((meta.model.clone(), file, meta.weights_sha256.clone()));
                }
                timings.push((
                    format!("{variant}: load model"),
                    started.elapsed().as_secs_f64(),
                ));

                let started = Instant::now();
                let gallery_jobs: Vec<ImageJob> = gallery_photos
                    .iter()
                    .map(|g| ImageJob {
                        id: g.photo.to_string(),
                        path: g.path.clone(),
                        crop: None,
                    })
                    .collect();
                let label = format!("gallery {variant}");
                let gallery_vectors = embed_cached(
                    &embedder,
                    &meta,
                    &gallery_jobs,
                    "gallery",
                    config,
                    &label,
                    progress,
                )?;
                timings.push((
                    format!("{variant}: embed gallery"),
                    started.elapsed().as_secs_f64(),
                ));

                let started = Instant::now();
                let query_jobs: Vec<ImageJob> = queries
                    .iter()
                    .map(|q| ImageJob {
                        id: q.id.clone(),
                        path: q.path.clone(),
                        crop: q.bbox.map(|b| (b, config.margin)),
                    })
                    .collect();
                let label = format!("queries {variant}");
                let query_vectors = embed_cached(
                    &embedder,
                    &meta,
                    &query_jobs,
                    "queries",
                    config,
                    &label,
                    progress,
                )?;
                timings.push((
                    format!("{variant}: embed queries"),
                    started.elapsed().as_secs_f64(),
                ));
                for (id, reason) in gallery_vectors.skipped.iter() {
                    skipped.push(SkippedItem {
                        item: format!("{variant}: gallery photo {id}"),
                        reason: reason.clone(),
                    });
                }
                for (id, reason) in query_vectors.skipped.iter() {
                    skipped.push(SkippedItem {
                        item: format!("{variant}: query {id}"),
                        reason: reason.clone(),
                    });
                }

                for &metric in &config.metrics {
                    let started = Instant::now();
                    let label = ConfigLabel {
                        model: meta.model.clone(),
                        preprocess: meta.preprocess.clone(),
                        pooling: meta.pooling.clone(),
                        metric: metric.name().to_string(),
                    };
                    let mut per_set = Vec::new();
                    for set in &protocol.sets {
                        let mut scores = Vec::new();
                        let mut gallery_sizes: BTreeMap<
                            String,
                            (usize, std::collections::BTreeSet<u64>),
                        > = BTreeMap::new();
                        for group in &set.groups {
                            let present: Vec<&GalleryPhoto> = group
                                .gallery
                                .iter()
                                .filter(|g| gallery_vectors.get(&g.photo.to_string()).is_some())
                                .collect();
                            for g in &present {
                                let entry = gallery_sizes.entry(g.category.clone()).or_default();
                                entry.0 += 1;
                                entry.1.insert(g.product);
                            }
                            let group_queries: Vec<&Query> = group
                                .queries
                                .iter()
                                .filter(|q| query_vectors.get(&q.id).is_some())
                                .collect();
                            scores.extend(search_group(
                                &present,
                                &group_queries,
                                &gallery_vectors,
                                &query_vectors,
                                metric,
                                &config.ks,
                            )?);
                        }
                        let summary = summarize(&scores, &config.ks, &measures, config.bootstrap);
                        results.push(SetResult {
                            config: label.clone(),
                            set: set.name.clone(),
                            gallery: gallery_sizes
                                .into_iter()
                                .map(|(c, (photos, products))| (c, photos, products.len()))
                                .collect(),
                            summary,
                        });
                        per_set.push((set.name.clone(), scores));
                    }
                    timings.push((
                        format!("{variant}: search and score {}", metric.name()),
                        started.elapsed().as_secs_f64(),
                    ));
                    all_scores.push((label, per_set));
                }
            }
        }
    }

    let started = Instant::now();
    let failures = failure_cases(protocol, config, &results, &all_scores)?;
    timings.push(("failure thumbnails".into(), started.elapsed().as_secs_f64()));

    Ok(RunOutput {
        report: Report {
            protocol: protocol.name.clone(),
            notes: protocol.notes.clone(),
            ks: config.ks.clone(),
            results,
            skipped,
            failures,
        },
        weights,
        timings,
    })
}

/// Every gallery photo of the protocol once, by photo id.
fn unique_gallery(protocol: &Protocol) -> Vec<GalleryPhoto> {
    let mut by_id: BTreeMap<u64, GalleryPhoto> = BTreeMap::new();
    for group in protocol.sets.iter().flat_map(|s| &s.groups) {
        for photo in &group.gallery {
            by_id.entry(photo.photo).or_insert_with(|| photo.clone());
        }
    }
    by_id.into_values().collect()
}

/// Every query of the protocol once, by id.
fn unique_queries(protocol: &Protocol) -> Vec<Query> {
    let mut by_id: BTreeMap<String, Query> = BTreeMap::new();
    for group in protocol.sets.iter().flat_map(|s| &s.groups) {
        for query in &group.queries {
            by_id
                .entry(query.id.clone())
                .or_insert_with(|| query.clone());
        }
    }
    by_id.into_values().collect()
}

/// Vectors by id, with the ids that could not be embedded.
struct Vectors {
    dim: usize,
    rows: HashMap<String, usize>,
    values: Vec<f32>,
    skipped: Vec<(String, String)>,
}

impl Vectors {
    fn get(&self, id: &str) -> Option<&[f32]> {
        self.rows
            .get(id)
            .map(|&r| &self.values[r * self.dim..(r + 1) * self.dim])
    }
}

/// What a cache chunk remembers besides the vectors.
#[derive(Serialize, Deserialize)]
struct ChunkSidecar {
    format: String,
    version: u32,
    key: String,
    skipped: Vec<(String, String)>,
}

fn chunk_key(meta: &EmbeddingMeta, role: &str, jobs: &[ImageJob]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("wtb-eval cache v{CACHE_VERSION}\n{role}\n").as_bytes());
    for (k, v) in meta.to_map() {
        hasher.update(format!("{k}={v}\n").as_bytes());
    }
    for job in jobs {
        hasher.update(format!("{}\t{}", job.id, job.path.display()).as_bytes());
        if let Some((b, margin)) = job.crop {
            for v in [b.left, b.top, b.width, b.height, margin] {
                hasher.update(v.to_le_bytes());
            }
        }
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Embeds `jobs` chunk by chunk, reusing every chunk already in the cache.
fn embed_cached(
    embedder: &Embedder,
    meta: &EmbeddingMeta,
    jobs: &[ImageJob],
    role: &str,
    config: &RunConfig,
    label: &str,
    progress: Progress<'_>,
) -> Result<Vectors, EvalError> {
    let folder = config.cache_dir.join(format!(
        "{}-{}-{}-{}",
        meta.model,
        &meta.weights_sha256.chars().take(12).collect::<String>(),
        meta.preprocess,
        meta.pooling.replace(':', "_")
    ));
    std::fs::create_dir_all(&folder).map_err(|source| EvalError::Io {
        path: folder.clone(),
        source,
    })?;
    let mut out = Vectors {
        dim: meta.dim,
        rows: HashMap::new(),
        values: Vec::new(),
        skipped: Vec::new(),
    };
    let total = jobs.len();
    let mut done = 0;
    progress(label, 0, total);
    for chunk in jobs.chunks(CACHE_CHUNK) {
        let key = chunk_key(meta, role, chunk);
        let vectors_path = folder.join(format!("{role}-{}.safetensors", &key[..24]));
        let sidecar_path = folder.join(format!("{role}-{}.json", &key[..24]));
        let (ids, values, skipped) = match read_chunk(&vectors_path, &sidecar_path, meta, &key) {
            Some(cached) => cached,
            None => {
                let base = done;
                let outcome = embedder
                    .embed_jobs(chunk, config.batch.max(1), &|d, _| {
                        progress(label, base + d, total)
                    })
                    .map_err(|source| EvalError::Embed {
                        source: Box::new(source),
                        what: format!("{label} ({})", chunk.first().map_or("", |j| j.id.as_str())),
                    })?;
                save_embeddings(&vectors_path, meta, &outcome.ids, &outcome.vectors, false)
                    .map_err(|source| EvalError::Embed {
                        source: Box::new(source),
                        what: format!("writing cache {}", vectors_path.display()),
                    })?;
                let sidecar = ChunkSidecar {
                    format: "wtb-eval-cache".into(),
                    version: CACHE_VERSION,
                    key: key.clone(),
                    skipped: outcome.skipped.clone(),
                };
                let text = serde_json::to_vec(&sidecar).map_err(|e| EvalError::Format {
                    path: sidecar_path.clone(),
                    reason: e.to_string(),
                })?;
                write_atomic(&sidecar_path, &text)?;
                (outcome.ids, outcome.vectors, outcome.skipped)
            }
        };
        for (i, id) in ids.into_iter().enumerate() {
            out.rows.insert(id, out.values.len() / meta.dim.max(1));
            out.values
                .extend_from_slice(&values[i * meta.dim..(i + 1) * meta.dim]);
        }
        out.skipped.extend(skipped);
        done += chunk.len();
        progress(label, done, total);
    }
    Ok(out)
}

/// A cached chunk, when both files are present and match `meta` and `key`.
#[allow(clippy::type_complexity)]
fn read_chunk(
    vectors_path: &Path,
    sidecar_path: &Path,
    meta: &EmbeddingMeta,
    key: &str,
) -> Option<(Vec<String>, Vec<f32>, Vec<(String, String)>)> {
    let sidecar: ChunkSidecar = serde_json::from_slice(&std::fs::read(sidecar_path).ok()?).ok()?;
    if sidecar.key != key || sidecar.version != CACHE_VERSION {
        return None;
    }
    let (_, ids, values) = load_embeddings(vectors_path, Some(meta)).ok()?;
    if values.len() != ids.len() * meta.dim {
        return None;
    }
    Some((ids, values, sidecar.skipped))
}

/// Searches one group's queries against its gallery and scores them.
fn search_group(
    gallery: &[&GalleryPhoto],
    queries: &[&Query],
    gallery_vectors: &Vectors,
    query_vectors: &Vectors,
    metric: Metric,
    ks: &[usize],
) -> Result<Vec<QueryScore>, EvalError> {
    let search_error = |source| EvalError::Search {
        source: Box::new(source),
        what: format!("{} queries against {} photos", queries.len(), gallery.len()),
    };
    let dim = gallery_vectors.dim;
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    if gallery.is_empty() {
        return Ok(queries
            .iter()
            .map(|q| score_query(&q.id, &q.category, &q.target, &[], ks))
            .collect());
    }
    let mut values = Vec::with_capacity(gallery.len() * dim);
    for photo in gallery {
        values.extend_from_slice(gallery_vectors.get(&photo.photo.to_string()).unwrap_or(&[]));
    }
    let matrix = Gallery::new(dim, values, Precision::F32).map_err(search_error)?;
    let mut query_values = Vec::with_capacity(queries.len() * dim);
    for query in queries {
        query_values.extend_from_slice(query_vectors.get(&query.id).unwrap_or(&[]));
    }
    // The whole gallery is ranked: MRR and mAP need every rank, and galleries are small.
    let neighbours = matrix
        .knn_batch(&query_values, gallery.len(), metric)
        .map_err(search_error)?;
    Ok(queries
        .iter()
        .zip(neighbours)
        .map(|(query, found)| {
            let ranking: Vec<RankedPhoto> = found
                .iter()
                .filter_map(|n| {
                    gallery.get(n.position).map(|photo| RankedPhoto {
                        photo: photo.photo,
                        product: photo.product,
                        category: photo.category.clone(),
                        score: n.score,
                    })
                })
                .collect();
            score_query(&query.id, &query.category, &query.target, &ranking, ks)
        })
        .collect())
}

/// The worst-ranked queries of the configuration with the best micro value of the first
/// measure on the last set, with thumbnails written under `out_dir/failures/`.
fn failure_cases(
    protocol: &Protocol,
    config: &RunConfig,
    results: &[SetResult],
    all_scores: &[(ConfigLabel, ScoresBySet)],
) -> Result<Vec<FailureCase>, EvalError> {
    if config.failures == 0 {
        return Ok(Vec::new());
    }
    let Some(last_set) = protocol.sets.last() else {
        return Ok(Vec::new());
    };
    let best = results
        .iter()
        .filter(|r| r.set == last_set.name)
        .max_by(|a, b| {
            let value = |r: &SetResult| r.summary.micro.first().map_or(0.0, |e| e.value);
            value(a)
                .total_cmp(&value(b))
                .then_with(|| b.config.cmp(&a.config))
        });
    let Some(best) = best else {
        return Ok(Vec::new());
    };
    let Some(scores) = all_scores
        .iter()
        .find(|(label, _)| *label == best.config)
        .and_then(|(_, sets)| sets.iter().find(|(set, _)| *set == last_set.name))
        .map(|(_, scores)| scores)
    else {
        return Ok(Vec::new());
    };

    let mut worst: Vec<&QueryScore> = scores
        .iter()
        .filter(|s| s.first_relevant_rank != Some(1))
        .collect();
    // Not ranked at all first, then by rank descending; ids break ties.
    worst.sort_by(|a, b| {
        let key = |s: &QueryScore| s.first_relevant_rank.unwrap_or(usize::MAX);
        key(b).cmp(&key(a)).then_with(|| a.query.cmp(&b.query))
    });
    worst.truncate(config.failures);

    let queries: HashMap<&str, &Query> = last_set
        .groups
        .iter()
        .flat_map(|g| &g.queries)
        .map(|q| (q.id.as_str(), q))
        .collect();
    let photos: HashMap<u64, &GalleryPhoto> = last_set
        .groups
        .iter()
        .flat_map(|g| &g.gallery)
        .map(|g| (g.photo, g))
        .collect();
    let folder = config.out_dir.join("failures");
    std::fs::create_dir_all(&folder).map_err(|source| EvalError::Io {
        path: folder.clone(),
        source,
    })?;

    let mut cases = Vec::new();
    for (n, score) in worst.iter().enumerate() {
        let Some(query) = queries.get(score.query.as_str()) else {
            continue;
        };
        let query_image = thumbnail(
            &query.path,
            query.bbox.map(|b| (b, config.margin)),
            &folder.join(format!("{n:03}-query.jpg")),
        )
        .map(|_| format!("failures/{n:03}-query.jpg"));
        let (expected, expected_photo) = match &query.target {
            Target::Product(product) => (
                format!("product {product}"),
                last_set
                    .groups
                    .iter()
                    .flat_map(|g| &g.gallery)
                    .find(|g| g.product == *product && g.category == query.category),
            ),
            Target::Category(category) => (format!("category {category}"), None),
        };
        let expected_image = expected_photo.and_then(|photo| {
            thumbnail(
                &photo.path,
                None,
                &folder.join(format!("{n:03}-expected.jpg")),
            )
            .map(|_| format!("failures/{n:03}-expected.jpg"))
        });
        let returned = score
            .top
            .iter()
            .enumerate()
            .map(|(i, hit)| {
                let image = photos.get(&hit.photo).and_then(|photo| {
                    thumbnail(
                        &photo.path,
                        None,
                        &folder.join(format!("{n:03}-top{}.jpg", i + 1)),
                    )
                    .map(|_| format!("failures/{n:03}-top{}.jpg", i + 1))
                });
                let category = photos.get(&hit.photo).map_or("", |p| p.category.as_str());
                (
                    format!(
                        "product {} ({category}, photo {}, score {:.4})",
                        hit.product, hit.photo, hit.score
                    ),
                    image,
                    hit.relevant,
                )
            })
            .collect();
        cases.push(FailureCase {
            config: best.config.clone(),
            set: last_set.name.clone(),
            query: score.query.clone(),
            category: score.category.clone(),
            expected,
            rank: score.first_relevant_rank,
            query_image,
            expected_image,
            returned,
        });
    }
    Ok(cases)
}

/// Writes a JPEG thumbnail (longest side 200 px) of a photo or a crop of it; `None` when the
/// photo cannot be read (the page then shows a placeholder).
fn thumbnail(source: &Path, crop: Option<(wtb_dataset::BBox, f64)>, target: &Path) -> Option<()> {
    let image = wtb_dataset::load_rgb(source, &wtb_dataset::DecodeLimits::default()).ok()?;
    let image = match crop {
        Some((bbox, margin)) => wtb_dataset::crop(&image, &bbox, margin).ok()?,
        None => image,
    };
    let scale = (200.0 / f64::from(image.width().max(image.height()).max(1))).min(1.0);
    let width = ((f64::from(image.width()) * scale).round() as u32).max(1);
    let height = ((f64::from(image.height()) * scale).round() as u32).max(1);
    let small = image::imageops::thumbnail(&image, width, height);
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(small)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .ok()?;
    write_atomic(target, &bytes).ok()
}

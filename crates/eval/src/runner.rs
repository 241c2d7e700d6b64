//! Runs a [`Protocol`] for models × preprocessing × pooling × metrics and gathers a
//! [`Report`].
//!
//! Embeddings are computed once per (model, weights sha256, preprocessing, pooling, photo set)
//! and cached on disk in chunks, so an interrupted run resumes where it stopped; a cache file
//! whose metadata does not match is recomputed, never used. Search is exact k-NN through
//! `wtb-search` over the whole gallery of each search group; products are deduplicated by
//! their best photo when scoring.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wtb_embed::{
    CachedVectors as Vectors, DeviceChoice, Embedder, EmbedderConfig, ImageJob, ModelKind, Pooling,
    Preprocess,
};
use wtb_search::consensus::Consensus;
use wtb_search::rerank::{self, Expansion, Reciprocal};
use wtb_search::{Gallery, Metric, Precision};

use crate::metrics::{
    score_query, summarize, BootstrapConfig, Measure, QueryScore, RankedPhoto, Target,
};
use crate::protocol::{GalleryPhoto, Protocol, Query};
use crate::results::{ConfigLabel, FailureCase, Report, SetResult, SkippedItem};

/// Per evaluation set (by name), the scores of its queries.
type ScoresBySet = Vec<(String, Vec<QueryScore>)>;
use crate::{write_atomic, EvalError};

/// Cut-offs of the original project (5 to 50) plus 1, as the follow-ups report.
pub const DEFAULT_KS: [usize; 7] = [1, 5, 10, 20, 30, 40, 50];

/// Retrieval steps applied on top of the backbone's vectors; each is a switch and a row of
/// the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Steps {
    /// The learned head of [`RunConfig::head`].
    pub head: bool,
    /// Each photo's vector averaged with its mirror image's.
    pub flip: bool,
    /// Multi-scale descriptors: each photo's pooled features averaged over the input scales
    /// of [`RunConfig::scales`].
    pub ms: bool,
    /// Database-side augmentation of the gallery (see `wtb_search::rerank`).
    pub dba: bool,
    /// α-weighted query expansion.
    pub qe: bool,
    /// Shop photos cropped to their garment (`wtb_dataset::foreground_box`).
    pub trim: bool,
    /// k-reciprocal re-ranking (`wtb_search::rerank::k_reciprocal`, the paper's settings) of
    /// cosine distances.
    pub krr: bool,
    /// Category consensus (`wtb_search::consensus`): candidates of the categories that the
    /// first products agree on move up.
    pub cat: bool,
}

impl Steps {
    /// `none`, or the steps joined by `+` (`head+flip+dba+qe`).
    pub fn name(&self) -> String {
        let names: Vec<&str> = [
            (self.head, "head"),
            (self.flip, "flip"),
            (self.ms, "ms"),
            (self.dba, "dba"),
            (self.qe, "qe"),
            (self.trim, "trim"),
            (self.krr, "krr"),
            (self.cat, "cat"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name)
        .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join("+")
        }
    }

    /// The default of the shop and `wtb search` with a head: the head, shop photos cropped
    /// to their garment, query expansion, category consensus.
    pub const DEFAULT_WITH_HEAD: Steps = Steps {
        head: true,
        flip: false,
        ms: false,
        dba: false,
        qe: true,
        trim: true,
        krr: false,
        cat: true,
    };

    /// The ablation: no step, each step alone, then (with a head) the head alone, with the
    /// garment crop, with each other step on top, the default and everything.
    pub fn ablation(with_head: bool) -> Vec<Steps> {
        let none = Steps::default();
        let mut out = vec![
            none,
            Steps { flip: true, ..none },
            Steps { ms: true, ..none },
            Steps { dba: true, ..none },
            Steps { qe: true, ..none },
            Steps { trim: true, ..none },
            Steps { krr: true, ..none },
            Steps { cat: true, ..none },
        ];
        if with_head {
            let head = Steps { head: true, ..none };
            let trimmed = Steps { trim: true, ..head };
            out.extend([
                head,
                trimmed,
                Steps {
                    flip: true,
                    ..trimmed
                },
                Steps {
                    ms: true,
                    ..trimmed
                },
                Steps {
                    dba: true,
                    ..trimmed
                },
                Steps {
                    krr: true,
                    ..trimmed
                },
                Steps {
                    cat: false,
                    ..Steps::DEFAULT_WITH_HEAD
                },
                Steps::DEFAULT_WITH_HEAD,
                Steps {
                    flip: true,
                    ..Steps::DEFAULT_WITH_HEAD
                },
            ]);
        }
        // The default's steps without the head: what the head itself adds.
        out.push(Steps {
            head: false,
            ..Steps::DEFAULT_WITH_HEAD
        });
        if !with_head {
            out.push(Steps {
                flip: true,
                qe: true,
                trim: true,
                ..none
            });
        }
        out
    }
}

impl std::str::FromStr for Steps {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut steps = Steps::default();
        for part in s.split('+').map(str::trim) {
            match part {
                "none" | "" => {}
                "head" => steps.head = true,
                "flip" => steps.flip = true,
                "ms" => steps.ms = true,
                "dba" => steps.dba = true,
                "qe" => steps.qe = true,
                "trim" => steps.trim = true,
                "krr" => steps.krr = true,
                "cat" => steps.cat = true,
                other => {
                    return Err(EvalError::Config(format!(
                        "unknown retrieval step {other:?} in {s:?}; expected none or head, flip, ms, dba, qe, trim, krr, cat joined by +"
                    )))
                }
            }
        }
        Ok(steps)
    }
}

/// A model to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The network.
    pub kind: ModelKind,
    /// An explicit weights file; `None` searches the usual places (see `wtb_embed::resolve_weights`).
    pub weights: Option<PathBuf>,
    /// The other models of an ensemble, with their weights files (see
    /// `wtb_embed::EmbedderConfig::ensemble`).
    pub ensemble: Vec<(ModelKind, Option<PathBuf>)>,
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
    /// The learned head file of the steps that use one.
    pub head: Option<PathBuf>,
    /// Retrieval step combinations, each evaluated (default: none).
    pub steps: Vec<Steps>,
    /// Neighbours and weighting of query expansion and database-side augmentation.
    pub expansion: Expansion,
    /// Settings of k-reciprocal re-ranking.
    pub reciprocal: Reciprocal,
    /// Settings of category consensus.
    pub consensus: Consensus,
    /// Input scales of multi-scale descriptors (the `ms` step).
    pub scales: Vec<f32>,
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
    /// (head file, head id) of the head used, if any.
    pub heads: Vec<(String, String)>,
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
    let steps_list = if config.steps.is_empty() {
        vec![Steps::default()]
    } else {
        config.steps.clone()
    };
    let head = match (&config.head, steps_list.iter().any(|s| s.head)) {
        (Some(path), _) => {
            Some(
                wtb_embed::Head::load(path).map_err(|source| EvalError::Embed {
                    what: "reading the head".into(),
                    source: Box::new(source),
                })?,
            )
        }
        (None, true) => {
            return Err(EvalError::Config(
                "a retrieval step uses the learned head, but no head file was given".into(),
            ))
        }
        (None, false) => None,
    };
    let heads: Vec<(String, String)> = match (&config.head, &head) {
        (Some(path), Some(head)) => vec![(path.display().to_string(), head.id())],
        _ => Vec::new(),
    };
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
                let kinds: Vec<ModelKind> = model.ensemble.iter().map(|(k, _)| *k).collect();
                let model_name = wtb_embed::models_name(model.kind, &kinds);
                let variant = format!("{model_name}/{}/{}", preprocess.name(), pooling.name());
                let started = Instant::now();
                let embedder = Embedder::load(&EmbedderConfig {
                    model: model.kind,
                    weights: model.weights.clone(),
                    preprocess,
                    pooling,
                    l2_normalize: config.l2_normalize,
                    device: config.device,
                    engine: wtb_embed::Engine::default(),
                    head: None,
                    ensemble: model.ensemble.clone(),
                })
                .map_err(|source| EvalError::Embed {
                    source: Box::new(source),
                    what: format!("loading {model_name}"),
                })?;
                let meta = embedder.meta().clone();
                if !weights
                    .iter()
                    .any(|(m, _, _): &(String, String, String)| *m == meta.model)
                {
                    let files: Vec<String> = std::iter::once((model.kind, model.weights.clone()))
                        .chain(model.ensemble.iter().cloned())
                        .map(|(kind, file)| {
                            wtb_embed::resolve_weights(kind, file.as_deref())
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        })
                        .collect();
                    weights.push((
                        meta.model.clone(),
                        files.join("+"),
                        meta.weights_sha256.clone(),
                    ));
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
                        flip: false,
                        trim: false,
                    })
                    .collect();
                let label = format!("gallery {variant}");
                let gallery_vectors = embed_cached(
                    &embedder,
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
                        flip: false,
                        trim: false,
                    })
                    .collect();
                let label = format!("queries {variant}");
                let query_vectors =
                    embed_cached(&embedder, &query_jobs, "queries", config, &label, progress)?;
                timings.push((
                    format!("{variant}: embed queries"),
                    started.elapsed().as_secs_f64(),
                ));
                // The other views the steps need: mirrored photos, trimmed shop photos, several
                // input scales (through a second embedder of the same model).
                let multi_scale = match steps_list.iter().any(|s| s.ms) {
                    true => Some(
                        Embedder::load(embedder.config())
                            .and_then(|e| e.with_scales(&config.scales))
                            .map_err(|source| EvalError::Embed {
                                source: Box::new(source),
                                what: format!("loading {model_name} for multi-scale descriptors"),
                            })?,
                    ),
                    false => None,
                };
                let variant_jobs = |jobs: &[ImageJob], flip: bool, trim: bool| -> Vec<ImageJob> {
                    jobs.iter()
                        .map(|j| ImageJob {
                            flip,
                            trim,
                            ..j.clone()
                        })
                        .collect()
                };
                let mut views: HashMap<(&str, bool, bool, bool), Vectors> = HashMap::new();
                for steps in &steps_list {
                    let ms = steps.ms;
                    let mut wanted = vec![
                        ("gallery", false, steps.trim, ms),
                        ("queries", false, false, ms),
                    ];
                    if steps.flip {
                        wanted.push(("gallery", true, steps.trim, ms));
                        wanted.push(("queries", true, false, ms));
                    }
                    for (role, flip, trim, ms) in wanted {
                        if (!flip && !trim && !ms) || views.contains_key(&(role, flip, trim, ms)) {
                            continue;
                        }
                        let view_embedder = match (ms, &multi_scale) {
                            (true, Some(multi)) => multi,
                            _ => &embedder,
                        };
                        let started = Instant::now();
                        let jobs = if role == "gallery" {
                            &gallery_jobs
                        } else {
                            &query_jobs
                        };
                        let name = format!(
                            "{role}{}{}{}",
                            if flip { "-flip" } else { "" },
                            if trim { "-trim" } else { "" },
                            if ms { "-ms" } else { "" }
                        );
                        let vectors = embed_cached(
                            view_embedder,
                            &variant_jobs(jobs, flip, trim),
                            &name,
                            config,
                            &format!("{name} {variant}"),
                            progress,
                        )?;
                        timings.push((
                            format!("{variant}: embed {name}"),
                            started.elapsed().as_secs_f64(),
                        ));
                        views.insert((role, flip, trim, ms), vectors);
                    }
                }
                if let Some(head) = &head {
                    if let Some(path) = &config.head {
                        head.check_backbone(&meta, path)
                            .map_err(|source| EvalError::Embed {
                                what: format!("applying the head to {variant}"),
                                source: Box::new(source),
                            })?;
                    }
                }
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

                for (steps, metric) in steps_list
                    .iter()
                    .flat_map(|s| config.metrics.iter().map(move |m| (*s, *m)))
                {
                    let started = Instant::now();
                    let gallery_base = views
                        .get(&("gallery", false, steps.trim, steps.ms))
                        .unwrap_or(&gallery_vectors);
                    let query_base = views
                        .get(&("queries", false, false, steps.ms))
                        .unwrap_or(&query_vectors);
                    let mirrored = steps.flip.then(|| {
                        (
                            views.get(&("gallery", true, steps.trim, steps.ms)),
                            views.get(&("queries", true, false, steps.ms)),
                        )
                    });
                    let (gallery_vectors, query_vectors) = prepare_vectors(
                        gallery_base,
                        query_base,
                        mirrored.and_then(|(g, _)| g),
                        mirrored.and_then(|(_, q)| q),
                        head.as_ref().filter(|_| steps.head),
                    )?;
                    let (gallery_vectors, query_vectors) = (&gallery_vectors, &query_vectors);
                    let label = ConfigLabel {
                        model: meta.model.clone(),
                        preprocess: meta.preprocess.clone(),
                        pooling: meta.pooling.clone(),
                        metric: metric.name().to_string(),
                        steps: steps.name(),
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
                                gallery_vectors,
                                query_vectors,
                                (
                                    metric,
                                    steps,
                                    config.expansion,
                                    config.reciprocal,
                                    config.consensus,
                                ),
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
                        format!(
                            "{variant}: search and score {} ({})",
                            metric.name(),
                            steps.name()
                        ),
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
        heads,
    })
}

/// The vectors one step combination searches with: mirrored views averaged in when given,
/// then the head applied when given.
fn prepare_vectors(
    gallery: &Vectors,
    queries: &Vectors,
    mirrored_gallery: Option<&Vectors>,
    mirrored_queries: Option<&Vectors>,
    head: Option<&wtb_embed::Head>,
) -> Result<(Vectors, Vectors), EvalError> {
    let one = |vectors: &Vectors, mirrored: Option<&Vectors>| -> Result<Vectors, EvalError> {
        let mut out = vectors.clone();
        if let Some(mirrored) = mirrored {
            for (id, &row) in &vectors.rows {
                if let Some(other) = mirrored.get(id) {
                    let dim = vectors.dim;
                    out.values[row * dim..(row + 1) * dim]
                        .iter_mut()
                        .zip(other)
                        .for_each(|(v, m)| *v = 0.5 * (*v + m));
                }
            }
        }
        if let Some(head) = head {
            out.values = head.apply(&out.values).map_err(|source| EvalError::Embed {
                what: "applying the head".into(),
                source: Box::new(source),
            })?;
            out.dim = head.output_dim();
        }
        Ok(out)
    };
    Ok((
        one(gallery, mirrored_gallery)?,
        one(queries, mirrored_queries)?,
    ))
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

/// Embeds `jobs` through the chunked cache of `config.cache_dir`.
fn embed_cached(
    embedder: &Embedder,
    jobs: &[ImageJob],
    role: &str,
    config: &RunConfig,
    label: &str,
    progress: Progress<'_>,
) -> Result<Vectors, EvalError> {
    wtb_embed::embed_cached(
        embedder,
        jobs,
        role,
        &config.cache_dir,
        config.batch,
        &|done, total| progress(label, done, total),
    )
    .map_err(|source| EvalError::Embed {
        source: Box::new(source),
        what: format!("{label} ({} images)", jobs.len()),
    })
}

/// Searches one group's queries against its gallery and scores them.
fn search_group(
    gallery: &[&GalleryPhoto],
    queries: &[&Query],
    gallery_vectors: &Vectors,
    query_vectors: &Vectors,
    (metric, steps, expansion, reciprocal, consensus): (
        Metric,
        Steps,
        Expansion,
        Reciprocal,
        Consensus,
    ),
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
    if steps.dba {
        values = rerank::augment_database(&values, dim, expansion).map_err(search_error)?;
    }
    let mut query_values = Vec::with_capacity(queries.len() * dim);
    for query in queries {
        query_values.extend_from_slice(query_vectors.get(&query.id).unwrap_or(&[]));
    }
    if steps.qe {
        query_values =
            rerank::expand_queries(&query_values, &values, dim, expansion).map_err(search_error)?;
    }
    // The whole gallery is ranked: MRR and mAP need every rank, and galleries are small.
    let mut neighbours: Vec<Vec<(usize, f32)>> = if steps.krr {
        let distances =
            rerank::k_reciprocal(&query_values, &values, dim, reciprocal).map_err(search_error)?;
        distances
            .chunks(gallery.len())
            .map(|row| {
                let mut order: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                order.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                order
            })
            .collect()
    } else {
        Gallery::new(dim, values, Precision::F32)
            .and_then(|matrix| matrix.knn_batch(&query_values, gallery.len(), metric))
            .map_err(search_error)?
            .into_iter()
            .map(|found| found.into_iter().map(|n| (n.position, n.score)).collect())
            .collect()
    };
    if steps.cat {
        // k-reciprocal distances are smaller-is-better, with one vote each.
        let vote = |score: f32| match steps.krr {
            true => 1.0,
            false => wtb_search::consensus::vote(metric, score),
        };
        let higher_is_better = !steps.krr && metric.higher_is_better();
        for found in &mut neighbours {
            apply_consensus(found, gallery, consensus, &vote, higher_is_better);
        }
    }
    Ok(queries
        .iter()
        .zip(neighbours)
        .map(|(query, found)| {
            let ranking: Vec<RankedPhoto> = found
                .iter()
                .filter_map(|&(position, score)| {
                    gallery.get(position).map(|photo| RankedPhoto {
                        photo: photo.photo,
                        product: photo.product,
                        category: photo.category.clone(),
                        score,
                    })
                })
                .collect();
            score_query(&query.id, &query.category, &query.target, &ranking, ks)
        })
        .collect())
}

/// Re-ranks one query's `found` (gallery position, score; best first) by category consensus,
/// as `wtb_search::consensus::search` does for an index: the first distinct products vote.
fn apply_consensus(
    found: &mut [(usize, f32)],
    gallery: &[&GalleryPhoto],
    consensus: Consensus,
    vote: &dyn Fn(f32) -> f32,
    higher_is_better: bool,
) {
    let mut voters: Vec<(&str, f32)> = Vec::new();
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    for &(position, score) in found.iter() {
        if voters.len() >= consensus.k {
            break;
        }
        if let Some(photo) = gallery.get(position) {
            if seen.insert((photo.category.as_str(), photo.product)) {
                voters.push((photo.category.as_str(), vote(score)));
            }
        }
    }
    let shares = consensus.shares(voters);
    for (position, score) in found.iter_mut() {
        if let Some(photo) = gallery.get(*position) {
            let boost = consensus.boost(&shares, &photo.category);
            *score = if higher_is_better {
                *score + boost
            } else {
                *score - boost
            };
        }
    }
    // Stable: ties keep the original order.
    found.sort_by(|a, b| {
        let order = a.1.total_cmp(&b.1);
        if higher_is_better {
            order.reverse()
        } else {
            order
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_name_round_trip() {
        let steps: Steps = "head+ms+qe+trim+cat".parse().unwrap();
        assert!(steps.head && steps.ms && steps.qe && steps.trim && steps.cat);
        assert!(!steps.flip && !steps.dba && !steps.krr);
        assert_eq!(steps.name(), "head+ms+qe+trim+cat");
        assert_eq!("none".parse::<Steps>().unwrap(), Steps::default());
        let err = "head+zoom".parse::<Steps>().unwrap_err().to_string();
        assert!(err.contains("\"zoom\"") && err.contains("cat"), "{err}");
    }

    #[test]
    fn the_ablation_has_each_step_once_and_the_default() {
        for with_head in [false, true] {
            let rows = Steps::ablation(with_head);
            let names: HashSet<String> = rows.iter().map(Steps::name).collect();
            assert_eq!(names.len(), rows.len(), "a repeated row: {rows:?}");
            for step in ["flip", "ms", "dba", "qe", "trim", "krr", "cat"] {
                assert!(names.contains(step), "{step} alone is missing");
            }
            // The default's steps without the head, to show what the head adds.
            assert!(names.contains("qe+trim+cat"));
            assert_eq!(
                names.contains(&Steps::DEFAULT_WITH_HEAD.name()),
                with_head,
                "{names:?}"
            );
        }
    }
}

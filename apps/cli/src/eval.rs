//! `wtb eval`: accuracy@k evaluations with reports, plots and confidence intervals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use wtb_embed::{DeviceChoice, ModelKind, Pooling, Preprocess, MULTI_SCALES};
use wtb_eval::metrics::BootstrapConfig;
use wtb_eval::protocol::{self, ORIGINAL_SEED};
use wtb_eval::report::{write_report, Manifest};
use wtb_eval::runner::{self, ModelSpec, RunConfig, Steps, DEFAULT_KS};
use wtb_search::consensus::{Consensus, DEFAULT_CONSENSUS};
use wtb_search::rerank::{Expansion, Reciprocal};
use wtb_search::Metric;

use crate::progress;

/// Which queries search which gallery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolName {
    /// The original project's: single-item dresses and tops street photos, products split with
    /// --seed into validation and test halves, each half searching its own products' shop photos.
    Original,
    /// Every category: test_pairs queries against all shop photos of their category.
    Full,
    /// Category benchmark: --queries CSV (path,category) against --gallery CSV
    /// (path,product,category); a hit is a product of the query's category.
    Category,
}

/// Arguments of `wtb eval`.
#[derive(Args, Debug)]
#[command(
    about = "Evaluate retrieval accuracy (accuracy@k, MRR, mAP with 95% bootstrap intervals) and write a report folder",
    long_about = "Evaluate retrieval accuracy and write a report folder.\n\n\
        Every combination of --models x --preprocess x --pooling x --metrics is evaluated. Street \
        photos are cropped to their box (plus --margin), embedded, and every shop photo of the \
        gallery is ranked; a query is a hit at k when its product is among the first k distinct \
        products. Numbers come per category, micro- and macro-averaged, each with a seeded 95% \
        bootstrap interval.\n\n\
        The --out folder receives report.md (tables), results.csv, results.json, manifest.json \
        (inputs, seeds, versions, weights checksums, machine, timings), plots/*.svg and *.png \
        (accuracy@k curves), and failures.html (worst queries with images). Embeddings are \
        cached (default: OUT/cache); rerunning the same command after an interruption resumes \
        from the cache.",
    after_help = "Examples:\n  \
        wtb eval --protocol original --labels data/labels --photos data/photos_resized \\\n      \
        --models mobilenet_v2,efficientnet_lite0 --metrics cosine,euclidean,chebyshev \\\n      \
        --weights-dir models --out reports/original\n  \
        wtb eval --protocol category --queries xdomain/queries.csv --gallery xdomain/gallery.csv \\\n      \
        --models mobilenet_v2 --out reports/xdomain"
)]
pub struct EvalArgs {
    /// Evaluation protocol.
    #[arg(long, value_enum)]
    protocol: ProtocolName,
    /// Folder of street2shop label files ({train,test}_pairs_<cat>.json, retrieval_<cat>.json); original and full.
    #[arg(long, value_name = "DIR", required_if_eq_any([("protocol", "original"), ("protocol", "full")]))]
    labels: Option<PathBuf>,
    /// Folder of photos named <photo id>.jpg; original and full.
    #[arg(long, value_name = "DIR", required_if_eq_any([("protocol", "original"), ("protocol", "full")]))]
    photos: Option<PathBuf>,
    /// Query list CSV with columns path,category (paths relative to the CSV); category protocol.
    #[arg(long, value_name = "FILE", required_if_eq("protocol", "category"))]
    queries: Option<PathBuf>,
    /// Gallery list CSV with columns path,product,category (paths relative to the CSV); category protocol.
    #[arg(long, value_name = "FILE", required_if_eq("protocol", "category"))]
    gallery: Option<PathBuf>,
    /// Exclusion file written by dataset cleaning (`wtb-exclusions` JSON): its photos leave the gallery; full protocol.
    #[arg(long, value_name = "FILE")]
    exclude: Option<PathBuf>,
    /// Models, comma-separated: mobilenet_v2, efficientnet_lite0, resnet50, vgg16, or an
    /// ensemble of models sharing an input size joined by + (mobilenet_v2+efficientnet_lite0).
    #[arg(long, value_delimiter = ',', default_value = "mobilenet_v2")]
    models: Vec<String>,
    /// Weights file of a model, as MODEL=FILE (repeatable); overrides --weights-dir.
    #[arg(long = "weights", value_name = "MODEL=FILE")]
    weights: Vec<String>,
    /// Folder searched for <model>.safetensors or a single <model>_*.safetensors / .pth (else
    /// $WTB_MODELS_DIR and ./models are searched).
    #[arg(long, value_name = "DIR")]
    weights_dir: Option<PathBuf>,
    /// Distance metrics, comma-separated: cosine, euclidean, sqeuclidean, inner_product, manhattan, chebyshev.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cosine,euclidean,chebyshev"
    )]
    metrics: Vec<String>,
    /// Preprocessing variants, comma-separated: squash (the original's plain resize), torchvision, pad.
    #[arg(long, value_delimiter = ',', default_value = "squash")]
    preprocess: Vec<String>,
    /// Pooling variants, comma-separated: avg, max, gem, gem:P.
    #[arg(long, value_delimiter = ',', default_value = "avg")]
    pooling: Vec<String>,
    /// Scale every vector to unit length before search (the original did not).
    #[arg(long)]
    l2_normalize: bool,
    /// Margin around query boxes, as a fraction of the box size added on each side.
    #[arg(long, default_value_t = 0.0)]
    margin: f64,
    /// Cut-offs k, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_KS)]
    ks: Vec<usize>,
    /// Seed of the validation/test split (original protocol).
    #[arg(long, default_value_t = ORIGINAL_SEED)]
    seed: u64,
    /// Bootstrap replicates for the 95% intervals (0: no intervals).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 2018)]
    bootstrap_seed: u64,
    /// Embedding cache folder (default: OUT/cache).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Images per model batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Where the models run: cpu, cuda, cuda:N, auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Number of failure examples in failures.html.
    #[arg(long, default_value_t = 12)]
    failures: usize,
    /// A learned head (from `wtb train`) for the retrieval steps that use it; the manifest
    /// records it.
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// Retrieval step combinations to evaluate, comma-separated, each `none` or steps joined
    /// by `+`: head (the learned head), flip (average with the mirror image), ms (multi-scale
    /// descriptors, see --ms-scales), dba
    /// (database-side augmentation), qe (query expansion), trim (shop photos cropped to their
    /// garment), krr (k-reciprocal re-ranking), cat (category consensus). Default: with
    /// --head, what `wtb search` does with it (head+qe+cat, and trim when the head was trained
    /// so), else none.
    #[arg(long, value_delimiter = ',', value_name = "STEPS")]
    steps: Vec<String>,
    /// Evaluate every step alone and the combination (one row each): the ablation table.
    #[arg(long, conflicts_with = "steps")]
    ablation: bool,
    /// Neighbours added by query expansion and database-side augmentation.
    #[arg(long, default_value_t = 2)]
    expansion_k: usize,
    /// Exponent of the cosine weights of query expansion and database-side augmentation.
    #[arg(long, default_value_t = 3.0)]
    expansion_alpha: f32,
    /// k-reciprocal re-ranking: neighbours whose reciprocity is checked (k1).
    #[arg(long, default_value_t = Reciprocal::default().k1)]
    krr_k1: usize,
    /// k-reciprocal re-ranking: neighbours of the local query expansion (k2).
    #[arg(long, default_value_t = Reciprocal::default().k2)]
    krr_k2: usize,
    /// k-reciprocal re-ranking: weight of the original distance (lambda).
    #[arg(long, default_value_t = Reciprocal::default().lambda)]
    krr_lambda: f32,
    /// Category consensus: distinct products that vote for their category.
    #[arg(long, default_value_t = DEFAULT_CONSENSUS.k)]
    consensus_k: usize,
    /// Category consensus: similarity gained by a candidate whose category has every vote.
    #[arg(long, default_value_t = DEFAULT_CONSENSUS.weight)]
    consensus_weight: f32,
    /// Input scales averaged by the ms step (multi-scale descriptors), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = MULTI_SCALES)]
    ms_scales: Vec<f32>,
    /// Report folder (created; existing report files are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Finds a weights file for `model` in `dir` (see `wtb_embed::weights_in_dir`).
fn weights_in(dir: &Path, model: ModelKind) -> anyhow::Result<Option<PathBuf>> {
    anyhow::ensure!(
        dir.is_dir(),
        "--weights-dir {}: no such folder",
        dir.display()
    );
    Ok(wtb_embed::weights_in_dir(dir, model)?)
}

fn model_specs(args: &EvalArgs) -> anyhow::Result<Vec<ModelSpec>> {
    let mut explicit = Vec::new();
    for entry in &args.weights {
        let (model, file) = entry
            .split_once('=')
            .with_context(|| format!("--weights {entry:?}: expected MODEL=FILE"))?;
        let kind: ModelKind = model
            .trim()
            .parse()
            .with_context(|| format!("--weights {entry:?}"))?;
        explicit.push((kind, PathBuf::from(file.trim())));
    }
    let weights_of = |kind: ModelKind| -> anyhow::Result<Option<PathBuf>> {
        Ok(match explicit.iter().find(|(k, _)| *k == kind) {
            Some((_, file)) => Some(file.clone()),
            None => match &args.weights_dir {
                Some(dir) => weights_in(dir, kind)?,
                None => None,
            },
        })
    };
    let mut specs = Vec::new();
    for name in &args.models {
        let (kind, others) =
            wtb_embed::parse_models(name).with_context(|| format!("--models {name:?}"))?;
        let ensemble = others
            .into_iter()
            .map(|k| Ok((k, weights_of(k)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        specs.push(ModelSpec {
            kind,
            weights: weights_of(kind)?,
            ensemble,
        });
    }
    Ok(specs)
}

fn parse_list<T: std::str::FromStr>(values: &[String], option: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    values
        .iter()
        .map(|v| {
            v.trim()
                .parse::<T>()
                .with_context(|| format!("{option} {v:?}"))
        })
        .collect()
}

fn hardware() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("cpu".into(), cpu),
        ("threads".into(), threads.to_string()),
        (
            "os".into(),
            format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        ),
    ]
}

/// Runs `wtb eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let models = model_specs(&args)?;
    let metrics: Vec<Metric> = parse_list(&args.metrics, "--metrics")?;
    let preprocess: Vec<Preprocess> = parse_list(&args.preprocess, "--preprocess")?;
    let pooling: Vec<Pooling> = parse_list(&args.pooling, "--pooling")?;
    let device: DeviceChoice = args.device.parse().context("--device")?;
    if !(args.margin.is_finite() && args.margin >= 0.0) {
        bail!("--margin {} must be a finite number >= 0", args.margin);
    }

    let mut data = Vec::new();
    let protocol = match args.protocol {
        ProtocolName::Original | ProtocolName::Full => {
            let (Some(labels), Some(photos)) = (&args.labels, &args.photos) else {
                bail!("--labels and --photos are required for this protocol");
            };
            data.push(("labels".to_string(), labels.display().to_string()));
            data.push(("photos".to_string(), photos.display().to_string()));
            if args.protocol == ProtocolName::Original {
                protocol::original(labels, photos, args.seed)?
            } else {
                let exclusions = match &args.exclude {
                    Some(path) => {
                        data.push(("exclude".to_string(), path.display().to_string()));
                        Some(wtb_dataset::Exclusions::load(path)?)
                    }
                    None => None,
                };
                protocol::full(labels, photos, exclusions.as_ref())?
            }
        }
        ProtocolName::Category => {
            let (Some(queries), Some(gallery)) = (&args.queries, &args.gallery) else {
                bail!("--queries and --gallery are required for the category protocol");
            };
            data.push(("queries".to_string(), queries.display().to_string()));
            data.push(("gallery".to_string(), gallery.display().to_string()));
            protocol::category(queries, gallery)?
        }
    };
    let n_queries: usize = protocol
        .sets
        .iter()
        .flat_map(|s| &s.groups)
        .map(|g| g.queries.len())
        .sum();
    if n_queries == 0 {
        bail!(
            "the {} protocol found no queries in the given data",
            protocol.name
        );
    }
    eprintln!(
        "protocol {}: {} sets, {n_queries} queries, {} records skipped",
        protocol.name,
        protocol.sets.len(),
        protocol.skipped.len()
    );

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let steps: Vec<Steps> = if args.ablation {
        Steps::ablation(args.head.is_some())
    } else if args.steps.is_empty() {
        match &args.head {
            // The default of `wtb search` and the shop with this head.
            Some(path) => {
                let head = wtb_embed::Head::load(path)?;
                vec![Steps {
                    trim: head.meta().shop_trim,
                    ..Steps::DEFAULT_WITH_HEAD
                }]
            }
            None => vec![Steps::default()],
        }
    } else {
        parse_list(&args.steps, "--steps")?
    };
    if let Some(head) = &args.head {
        data.push(("head".to_string(), head.display().to_string()));
    }
    let consensus = Consensus {
        k: args.consensus_k,
        weight: args.consensus_weight,
    };
    consensus.validate()?;
    let config = RunConfig {
        head: args.head.clone(),
        steps,
        expansion: Expansion {
            k: args.expansion_k,
            alpha: args.expansion_alpha,
        },
        reciprocal: Reciprocal {
            k1: args.krr_k1,
            k2: args.krr_k2,
            lambda: args.krr_lambda,
        },
        consensus,
        scales: args.ms_scales.clone(),
        models,
        preprocess,
        pooling,
        l2_normalize: args.l2_normalize,
        metrics,
        ks: args.ks.clone(),
        margin: args.margin,
        batch: args.batch,
        device,
        bootstrap: BootstrapConfig {
            replicates: args.bootstrap,
            seed: args.bootstrap_seed,
        },
        cache_dir: args.cache.clone().unwrap_or_else(|| args.out.join("cache")),
        failures: args.failures,
        out_dir: args.out.clone(),
    };

    let bars: Mutex<Option<(String, ProgressBar)>> = Mutex::new(None);
    let on_progress = |what: &str, done: usize, total: usize| {
        let Ok(mut current) = bars.lock() else { return };
        if current.as_ref().is_none_or(|(name, _)| name != what) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            *current = Some((what.to_string(), progress::bar(total as u64, what)));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_position(done as u64);
        }
    };
    let output = runner::run(&protocol, &config, &on_progress)?;
    if let Ok(mut current) = bars.lock() {
        if let Some((_, bar)) = current.take() {
            bar.finish();
        }
    }

    let mut timings = output.timings.clone();
    timings.push(("total".into(), started.elapsed().as_secs_f64()));
    let manifest = Manifest {
        command: std::env::args().collect(),
        data,
        seeds: vec![
            ("split".into(), args.seed),
            ("bootstrap".into(), args.bootstrap_seed),
        ],
        versions: vec![
            ("wtb".into(), env!("CARGO_PKG_VERSION").into()),
            (
                "results format".into(),
                wtb_eval::report::RESULTS_FORMAT_VERSION.to_string(),
            ),
        ],
        weights: output.weights.clone(),
        heads: output.heads.clone(),
        hardware: hardware(),
        timings,
    };
    let files = write_report(&args.out, &output.report, &manifest)?;
    if let Some(reason) = &files.png_skipped {
        eprintln!("note: PNG plots skipped: {reason}");
    }
    let skipped = output.report.skipped.len();
    if skipped > 0 {
        eprintln!("{skipped} items skipped (listed in report.md)");
    }
    eprintln!(
        "report written to {} in {:.1} s",
        args.out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

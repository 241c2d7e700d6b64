//! `wtb index build|add|remove|compact|info`: the searchable index of a shop's gallery.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use wtb_embed::{DeviceChoice, Embedder, EmbedderConfig, EmbeddingMeta, Pooling, Preprocess};
use wtb_pipeline::{add_to_index, build_index, BuildOptions, BuildReport, Progress};
use wtb_search::{Index, Precision, VectorSearch};

use crate::progress;

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Embed a gallery and write a new index; rerun the same command to resume after an
    /// interruption (finished photos are kept in `<out>.partial`).
    Build(BuildArgs),
    /// Embed the gallery photos that are not in the index yet and add them as a new segment.
    Add(AddArgs),
    /// Delete products or photos (tombstones; `compact` reclaims the space).
    Remove(RemoveArgs),
    /// Rewrite the index as one segment without deleted rows.
    Compact(FileArgs),
    /// Print what an index holds.
    Info(InfoArgs),
}

/// Where the gallery comes from.
#[derive(Args)]
pub struct GalleryArgs {
    /// Label folder (retrieval_<cat>.json files list the shop photos).
    #[arg(long, value_name = "DIR")]
    labels: PathBuf,
    /// Photo folder (<photo>.jpg).
    #[arg(long, value_name = "DIR")]
    photos: PathBuf,
    /// Only these categories (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// An exclusion file written by `wtb dataset clean`; its photos are left out.
    #[arg(long, value_name = "FILE")]
    exclude: Option<PathBuf>,
    /// Images per model batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    gallery: GalleryArgs,
    /// The model: mobilenet_v2, efficientnet_lite0, resnet50, vgg16, or an ensemble of models
    /// sharing an input size joined by + (mobilenet_v2+efficientnet_lite0).
    #[arg(long)]
    model: String,
    /// The weights file (repeat it for each model of an ensemble, in order); by default
    /// searched in $WTB_MODELS_DIR and models/.
    #[arg(long, value_name = "FILE")]
    weights: Vec<PathBuf>,
    /// Where the model runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Preprocessing: squash (the best on the dev sets), torchvision or pad.
    #[arg(long, default_value = "squash")]
    preprocess: Preprocess,
    /// Pooling: avg, max, gem or gem:P.
    #[arg(long, default_value = "avg")]
    pooling: Pooling,
    /// A learned head (from `wtb train`) applied to every vector; the index records it.
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// The index file to write.
    #[arg(long)]
    out: PathBuf,
    /// Store vectors as f16 (half the size and memory traffic).
    #[arg(long)]
    f16: bool,
    /// Also build the HNSW graph for approximate search (worth it from ~50,000 photos).
    #[arg(long)]
    hnsw: bool,
    /// Photos embedded between two checkpoints.
    #[arg(long, default_value_t = 256)]
    checkpoint_every: usize,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    gallery: GalleryArgs,
    /// The index to update (rewritten atomically).
    #[arg(long)]
    index: PathBuf,
    /// The weights file(s) the index was built with, in model order.
    #[arg(long, value_name = "FILE")]
    weights: Vec<PathBuf>,
    /// The learned head the index was built with (`wtb index build --head`).
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// The index to update (rewritten atomically).
    #[arg(long)]
    index: PathBuf,
    /// Products to delete, as CATEGORY:ID (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    product: Vec<String>,
    /// Photos to delete (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    photo: Vec<u64>,
}

#[derive(Args)]
pub struct FileArgs {
    /// The index file.
    #[arg(long)]
    index: PathBuf,
}

#[derive(Args)]
pub struct InfoArgs {
    /// The index file.
    #[arg(long)]
    index: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: IndexCommand) -> anyhow::Result<ExitCode> {
    match command {
        IndexCommand::Build(args) => build(args),
        IndexCommand::Add(args) => add(args),
        IndexCommand::Remove(args) => remove(args),
        IndexCommand::Compact(args) => {
            let mut index = load(&args.index)?;
            let before = index.info().segments.len();
            index.compact().context("compacting")?;
            save(&index, &args.index)?;
            println!(
                "compacted {} segment(s) into one: {} photos",
                before,
                index.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        IndexCommand::Info(args) => {
            let info = load(&args.index)?.info();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "{}: format v{}, {}-d {:?}",
                    args.index.display(),
                    info.format_version,
                    info.dim,
                    info.precision
                );
                println!(
                    "photos {} (deleted, awaiting compaction: {}), products {}",
                    info.photos, info.deleted, info.products
                );
                for (category, n) in &info.photos_per_category {
                    println!("  {category:<12} {n}");
                }
                println!(
                    "segments: {}",
                    info.segments
                        .iter()
                        .map(|s| format!("{} rows ({} deleted)", s.rows, s.deleted))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                for (k, v) in &info.meta {
                    println!("  {k} = {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Index> {
    Index::load(path, None).with_context(|| format!("opening index {}", path.display()))
}

fn save(index: &Index, path: &Path) -> anyhow::Result<()> {
    index
        .save(path)
        .with_context(|| format!("writing index {}", path.display()))
}

/// The embedder that produced an index's vectors, checked against the index's metadata.
pub(crate) fn embedder_for(
    index: &Index,
    weights: &[PathBuf],
    head: Option<PathBuf>,
    device: DeviceChoice,
) -> anyhow::Result<Embedder> {
    let meta = EmbeddingMeta::from_map(index.meta()).map_err(|e| anyhow!("index metadata: {e}"))?;
    let models = EmbedderConfig::for_models(&meta.model, weights)
        .map_err(|e| anyhow!("index metadata: {e}"))?;
    let config = EmbedderConfig {
        preprocess: meta
            .preprocess
            .parse()
            .map_err(|e| anyhow!("index metadata: {e}"))?,
        pooling: meta
            .pooling
            .parse()
            .map_err(|e| anyhow!("index metadata: {e}"))?,
        l2_normalize: meta.l2_normalized,
        device,
        engine: wtb_embed::Engine::default(),
        head: head.clone(),
        ..models
    };
    match (&meta.head, &head) {
        (Some(id), None) => {
            bail!("the index was built with the learned head {id}: pass that head file with --head")
        }
        (None, Some(file)) => bail!(
            "the index was built without a learned head, but --head {} was given",
            file.display()
        ),
        _ => {}
    }
    let embedder = Embedder::load(&config).with_context(|| format!("loading {}", config.model))?;
    let differences = meta.differences(embedder.meta());
    if !differences.is_empty() {
        bail!(
            "the index was built with another embedding (index vs now): {}",
            differences.join("; ")
        );
    }
    Ok(embedder)
}

impl GalleryArgs {
    /// The pipeline's build options for this gallery and index file.
    fn options(&self, index: &Path) -> BuildOptions {
        BuildOptions {
            categories: self.categories.clone(),
            exclusions: self.exclude.clone(),
            batch_size: self.batch,
            ..BuildOptions::new(&self.labels, &self.photos, index)
        }
    }
}

/// Runs a pipeline build step under a progress bar.
fn with_bar<T>(what: &str, work: impl FnOnce(Progress<'_>) -> T) -> T {
    let bar = progress::bar(0, what);
    let result = work(&|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    result
}

fn print_report(report: &BuildReport, index: &Path) {
    println!(
        "{}: {} photos of {} products ({} rows); embedded {} now, {} already there",
        index.display(),
        report.photos,
        report.products,
        report.rows,
        report.embedded,
        report.resumed
    );
    if report.excluded > 0 {
        println!("left out {} excluded record(s)", report.excluded);
    }
    if !report.skipped.is_empty() {
        println!("skipped {} photo(s):", report.skipped.len());
        for (photo, reason) in &report.skipped {
            println!("  {photo}: {reason}");
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let config = EmbedderConfig {
        preprocess: args.preprocess,
        pooling: args.pooling,
        device: args.device,
        head: args.head.clone(),
        ..EmbedderConfig::for_models(&args.model, &args.weights)?
    };
    let embedder = Embedder::load(&config).with_context(|| format!("loading {}", config.model))?;
    let options = BuildOptions {
        precision: if args.f16 {
            Precision::F16
        } else {
            Precision::F32
        },
        approximate: args.hnsw,
        checkpoint_every: args.checkpoint_every,
        ..args.gallery.options(&args.out)
    };
    let checkpoint = options.checkpoint_path();
    if checkpoint.exists() {
        println!(
            "resuming: the photos embedded so far are in {}",
            checkpoint.display()
        );
    }
    let report = with_bar("indexing", |progress| {
        build_index(&embedder, &options, progress)
    })
    .with_context(|| format!("building {}", args.out.display()))?;
    print_report(&report, &args.out);
    Ok(ExitCode::SUCCESS)
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let index = load(&args.index)?;
    let embedder = embedder_for(&index, &args.weights, args.head.clone(), DeviceChoice::Cpu)?;
    drop(index);
    let options = args.gallery.options(&args.index);
    let report = with_bar("adding", |progress| {
        add_to_index(&embedder, &options, progress)
    })
    .with_context(|| format!("adding to {}", args.index.display()))?;
    print_report(&report, &args.index);
    Ok(ExitCode::SUCCESS)
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    if args.product.is_empty() && args.photo.is_empty() {
        bail!("give --product CATEGORY:ID and/or --photo ID");
    }
    let keys: Vec<(String, u64)> = args
        .product
        .iter()
        .map(|p| {
            let (category, id) = p
                .split_once(':')
                .with_context(|| format!("--product {p:?} is not CATEGORY:ID"))?;
            let id: u64 = id
                .parse()
                .with_context(|| format!("--product {p:?}: {id:?} is not a number"))?;
            Ok((category.to_string(), id))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut index = load(&args.index)?;
    let by_product = index.remove_products(&keys).context("removing products")?;
    let by_photo = index
        .remove_photos(&args.photo)
        .context("removing photos")?;
    save(&index, &args.index)?;
    println!(
        "removed {} row(s); {} photos left in {}",
        by_product + by_photo,
        index.len(),
        args.index.display()
    );
    Ok(ExitCode::SUCCESS)
}

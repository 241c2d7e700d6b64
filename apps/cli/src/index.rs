//! `wtb index build|add|remove|compact|info`: the searchable index of a shop's gallery.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use wtb_dataset::{photo_path, Category, Exclusions, Labels, PhotoId, ProductKey};
use wtb_embed::{
    DeviceChoice, Embedder, EmbedderConfig, EmbeddingMeta, ImageJob, ModelKind, Pooling, Preprocess,
};
use wtb_search::{Index, PhotoRecord, Precision, VectorSearch};

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
    /// The model: mobilenet_v2, efficientnet_lite0, resnet50 or vgg16.
    #[arg(long)]
    model: ModelKind,
    /// The weights file; by default searched in $WTB_MODELS_DIR and models/.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the model runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Preprocessing: torchvision, squash or pad.
    #[arg(long, default_value = "torchvision")]
    preprocess: Preprocess,
    /// Pooling: avg, max, gem or gem:P.
    #[arg(long, default_value = "avg")]
    pooling: Pooling,
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
    /// The weights file (must be the one the index was built with).
    #[arg(long)]
    weights: Option<PathBuf>,
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
    weights: Option<PathBuf>,
    device: DeviceChoice,
) -> anyhow::Result<Embedder> {
    let meta = EmbeddingMeta::from_map(index.meta()).map_err(|e| anyhow!("index metadata: {e}"))?;
    let config = EmbedderConfig {
        model: meta
            .model
            .parse()
            .map_err(|e| anyhow!("index metadata: {e}"))?,
        weights,
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
    };
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

/// Distinct gallery photos with every product each one shows.
fn gallery_photos(args: &GalleryArgs) -> anyhow::Result<BTreeMap<PhotoId, Vec<ProductKey>>> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let labels = Labels::load(&args.labels)
        .with_context(|| format!("reading labels in {}", args.labels.display()))?;
    let categories = if args.categories.is_empty() {
        None
    } else {
        let set: BTreeSet<Category> = args
            .categories
            .iter()
            .map(|c| Category::new(c).with_context(|| format!("category {c:?}")))
            .collect::<anyhow::Result<_>>()?;
        for category in &set {
            if labels.category(category).is_none() {
                bail!(
                    "no labels for category {category} in {}",
                    args.labels.display()
                );
            }
        }
        Some(set)
    };
    let exclusions = match &args.exclude {
        Some(path) => {
            Some(Exclusions::load(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let gallery = labels.gallery(categories.as_ref(), exclusions.as_ref());
    let mut photos: BTreeMap<PhotoId, Vec<ProductKey>> = BTreeMap::new();
    for item in gallery.items {
        photos.entry(item.photo).or_default().push(item.product);
    }
    if photos.is_empty() {
        bail!("the gallery is empty (check --labels, --categories and --exclude)");
    }
    Ok(photos)
}

/// Embeds `todo` (the photos of `photos` not indexed yet) in chunks, adding each chunk to
/// `index` and calling `checkpoint` after it.
/// Returns the photos skipped with their reasons.
fn embed_into(
    index: &mut Index,
    embedder: &Embedder,
    gallery: &GalleryArgs,
    photos: &BTreeMap<PhotoId, Vec<ProductKey>>,
    todo: &[PhotoId],
    chunk: usize,
    checkpoint: &mut dyn FnMut(&Index) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<(String, String)>> {
    let already = photos.len().saturating_sub(todo.len());
    let bar = progress::bar(photos.len() as u64, "indexing");
    bar.set_position(already as u64);
    let mut skipped = Vec::new();
    let mut finished = already;
    for part in todo.chunks(chunk.max(1)) {
        let jobs: Vec<ImageJob> = part
            .iter()
            .map(|photo| ImageJob {
                id: photo.0.to_string(),
                path: photo_path(&gallery.photos, *photo),
                crop: None,
            })
            .collect();
        let outcome = embedder
            .embed_jobs(&jobs, gallery.batch, &|done, _| {
                bar.set_position((finished + done) as u64)
            })
            .context("embedding")?;
        let mut records = Vec::new();
        let mut vectors = Vec::new();
        for (i, id) in outcome.ids.iter().enumerate() {
            let photo: u64 = id.parse().with_context(|| format!("photo id {id}"))?;
            let row = &outcome.vectors[i * outcome.dim..(i + 1) * outcome.dim];
            // A photo showing several products is one row per product.
            for product in photos
                .get(&PhotoId(photo))
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                records.push(PhotoRecord {
                    category: product.category.as_str().to_string(),
                    product: product.product.0,
                    photo,
                });
                vectors.extend_from_slice(row);
            }
        }
        index
            .add(&records, &vectors)
            .context("adding to the index")?;
        skipped.extend(outcome.skipped);
        finished += part.len();
        checkpoint(index)?;
    }
    bar.finish_and_clear();
    Ok(skipped)
}

fn report_skipped(skipped: &[(String, String)]) {
    if !skipped.is_empty() {
        println!("skipped {} photo(s):", skipped.len());
        for (id, reason) in skipped {
            println!("  {id}: {reason}");
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let photos = gallery_photos(&args.gallery)?;
    let config = EmbedderConfig {
        model: args.model,
        weights: args.weights.clone(),
        preprocess: args.preprocess,
        pooling: args.pooling,
        l2_normalize: false,
        device: args.device,
        engine: wtb_embed::Engine::default(),
    };
    let embedder = Embedder::load(&config).with_context(|| format!("loading {}", config.model))?;
    let meta = embedder.meta().to_map();
    let precision = if args.f16 {
        Precision::F16
    } else {
        Precision::F32
    };
    let mut partial_name = args
        .out
        .file_name()
        .context("--out has no file name")?
        .to_os_string();
    partial_name.push(".partial");
    let partial = args.out.with_file_name(partial_name);
    let mut index = if partial.exists() {
        let index = Index::load(&partial, Some(&meta)).with_context(|| {
            format!(
                "resuming from {} (delete it to start over)",
                partial.display()
            )
        })?;
        if index.precision() != precision {
            bail!(
                "{} was started with {:?} storage; rerun with the same options or delete it",
                partial.display(),
                index.precision()
            );
        }
        index
    } else {
        Index::new(embedder.meta().dim, precision, meta).context("creating the index")?
    };
    let done = index.live_photos();
    let todo: Vec<PhotoId> = photos
        .keys()
        .filter(|p| !done.contains(&p.0))
        .copied()
        .collect();
    let already = photos.len() - todo.len();
    if already > 0 {
        println!(
            "resuming: {already} of {} photos already embedded in {}",
            photos.len(),
            partial.display()
        );
    }
    let skipped = embed_into(
        &mut index,
        &embedder,
        &args.gallery,
        &photos,
        &todo,
        args.checkpoint_every,
        &mut |index| save(index, &partial),
    )?;
    index.compact().context("compacting")?;
    if args.hnsw {
        eprintln!("building the HNSW graph of {} photos...", index.len());
        index
            .build_approximate()
            .context("building the HNSW graph")?;
    }
    save(&index, &args.out)?;
    if partial.exists() {
        std::fs::remove_file(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    let info = index.info();
    println!(
        "indexed {} photos of {} products ({} rows) with {} into {}",
        photos.len() - skipped.len(),
        info.products,
        info.photos,
        args.model,
        args.out.display()
    );
    report_skipped(&skipped);
    Ok(ExitCode::SUCCESS)
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let photos = gallery_photos(&args.gallery)?;
    let mut index = load(&args.index)?;
    let embedder = embedder_for(&index, args.weights.clone(), DeviceChoice::Cpu)?;
    let done = index.live_photos();
    let todo: Vec<PhotoId> = photos
        .keys()
        .filter(|p| !done.contains(&p.0))
        .copied()
        .collect();
    if todo.is_empty() {
        println!(
            "nothing to add: every gallery photo is in {}",
            args.index.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let before = index.len();
    let skipped = embed_into(
        &mut index,
        &embedder,
        &args.gallery,
        &photos,
        &todo,
        todo.len(),
        &mut |_| Ok(()),
    )?;
    save(&index, &args.index)?;
    println!(
        "added {} row(s) for {} new photo(s) to {}",
        index.len() - before,
        todo.len() - skipped.len(),
        args.index.display()
    );
    report_skipped(&skipped);
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

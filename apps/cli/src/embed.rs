//! `wtb embed` and `wtb classify`: embedding image folders or lists into an embeddings file,
//! and the ImageNet sanity check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use wtb_embed::{
    imagenet_class_name, save_embeddings, DeviceChoice, Embedder, EmbedderConfig, Engine, ImageJob,
    ModelKind, Pooling, Preprocess,
};

use crate::progress;

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "gif", "webp"];

/// Model options shared by `embed` and `classify`.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The model: mobilenet_v2, efficientnet_lite0, resnet50 or vgg16.
    #[arg(long)]
    model: ModelKind,
    /// The weights file (safetensors or .pth); by default searched in $WTB_MODELS_DIR and models/.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where the model runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Preprocessing: torchvision, squash or pad.
    #[arg(long, default_value = "torchvision")]
    preprocess: Preprocess,
    /// CPU implementation: fast (fused kernels; MobileNetV2, EfficientNet-Lite0, ResNet50) or
    /// candle (stock ops, the reference).
    #[arg(long, default_value = "fast")]
    engine: Engine,
}

impl ModelArgs {
    fn config(&self) -> EmbedderConfig {
        EmbedderConfig {
            model: self.model,
            weights: self.weights.clone(),
            preprocess: self.preprocess,
            pooling: Pooling::Avg,
            l2_normalize: false,
            device: self.device,
            engine: self.engine,
            head: None,
            ensemble: Vec::new(),
        }
    }
}

/// Arguments of `wtb embed`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["images", "list"])))]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A folder of images (searched recursively; ids are paths relative to it).
    #[arg(long)]
    images: Option<PathBuf>,
    /// A file listing one image path per line (relative to the list's folder; `#` starts a
    /// comment); ids are the paths as written.
    #[arg(long)]
    list: Option<PathBuf>,
    /// A learned head (from `wtb train`) applied to every vector.
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// The embeddings file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Images per model batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Pooling of the last feature map: avg, max, gem or gem:P.
    #[arg(long, default_value = "avg")]
    pooling: Pooling,
    /// Scale every vector to unit L2 norm.
    #[arg(long)]
    l2: bool,
    /// Store the vectors as f16 instead of f32.
    #[arg(long)]
    f16: bool,
}

/// Arguments of `wtb classify`.
#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// The image to classify.
    image: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// How many classes to print.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

pub fn run_embed(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let jobs = match (&args.images, &args.list) {
        (Some(dir), _) => jobs_from_dir(dir)?,
        (None, Some(list)) => jobs_from_list(list)?,
        (None, None) => bail!("give --images DIR or --list FILE"),
    };
    if jobs.is_empty() {
        bail!("no images to embed");
    }
    let mut config = args.model.config();
    config.pooling = args.pooling;
    config.l2_normalize = args.l2;
    config.head = args.head.clone();
    let embedder = Embedder::load(&config).with_context(|| format!("loading {}", config.model))?;
    let bar = progress::bar(jobs.len() as u64, "embedding");
    let outcome = embedder
        .embed_jobs(&jobs, args.batch, &|done, _total| {
            bar.set_position(done as u64)
        })
        .context("embedding")?;
    bar.finish_and_clear();
    save_embeddings(
        &args.out,
        embedder.meta(),
        &outcome.ids,
        &outcome.vectors,
        args.f16,
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "embedded {} of {} images with {} ({}-d) into {}",
        outcome.ids.len(),
        jobs.len(),
        config.model,
        outcome.dim,
        args.out.display()
    );
    if !outcome.skipped.is_empty() {
        println!("skipped {}:", outcome.skipped.len());
        for (id, reason) in &outcome.skipped {
            println!("  {id}: {reason}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_classify(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let embedder = Embedder::load(&args.model.config())
        .with_context(|| format!("loading {}", args.model.model))?;
    let image = wtb_dataset::load_rgb(&args.image, &wtb_dataset::DecodeLimits::default())
        .with_context(|| format!("reading {}", args.image.display()))?;
    let top = embedder.classify(&image, args.top)?;
    for (rank, (class, probability)) in top.iter().enumerate() {
        let name = imagenet_class_name(*class).unwrap_or("?");
        println!(
            "{:>2}. {:>6.2}%  {name} ({class})",
            rank + 1,
            probability * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

fn jobs_from_dir(root: &Path) -> anyhow::Result<Vec<ImageJob>> {
    let mut paths = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading folder {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading folder {}", dir.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if is_image(&path) {
                paths.push(path);
            }
        }
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| ImageJob {
            id: path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned(),
            path,
            crop: None,
            flip: false,
            trim: false,
        })
        .collect())
}

fn jobs_from_list(list: &Path) -> anyhow::Result<Vec<ImageJob>> {
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("reading list {}", list.display()))?;
    let base = list.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|line| ImageJob {
            id: line.to_string(),
            path: base.join(line),
            crop: None,
            flip: false,
            trim: false,
        })
        .collect())
}

//! `wtb train`: learns a similarity head on a label folder's training pairs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use wtb_embed::{DeviceChoice, Embedder, EmbedderConfig, Pooling, Preprocess};
use wtb_train::{features, train, DataOptions, TrainConfig, TrainingSet};

use crate::progress;

/// Arguments of `wtb train`.
#[derive(Args, Debug)]
#[command(
    about = "Learn a similarity head on street-to-shop training pairs",
    long_about = "Learn a similarity head on street-to-shop training pairs.\n\n\
        The street photos of train_pairs_<category>.json (cropped to their box) and the shop photos \
        of their products are embedded by the frozen backbone (as is, mirrored, and with jittered \
        boxes; cached), a seeded part of the products is held out for validation, and a \
        projection is learned: closed-form learned whitening, then metric learning from there. \
        Products of test_pairs, and every photo of one, are never used. The epoch with the best \
        validation figures is kept. A checkpoint beside --out is written after every epoch; \
        rerunning the same command after an interruption resumes from it.\n\n\
        Use the head with --head in wtb embed, index build, search, eval and wtb-store.",
    after_help = "Example:\n  \
        wtb train --labels labels --photos photos_resized --model mobilenet_v2 --out head.safetensors"
)]
pub struct TrainArgs {
    /// Folder of street2shop label files.
    #[arg(long, value_name = "DIR")]
    labels: PathBuf,
    /// Folder of photos named <photo id>.jpg.
    #[arg(long, value_name = "DIR")]
    photos: PathBuf,
    /// Exclusion file from `wtb dataset clean`: its photos are not trained on.
    #[arg(long, value_name = "FILE")]
    exclude: Option<PathBuf>,
    /// The backbone: mobilenet_v2, efficientnet_lite0, resnet50, vgg16, or an ensemble of
    /// models sharing an input size joined by + (mobilenet_v2+efficientnet_lite0).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// The weights file (repeat it for each model of an ensemble, in order); by default
    /// searched in $WTB_MODELS_DIR and models/.
    #[arg(long, value_name = "FILE")]
    weights: Vec<PathBuf>,
    /// Preprocessing: squash, torchvision or pad.
    #[arg(long, default_value = "squash")]
    preprocess: Preprocess,
    /// Pooling: avg, max, gem or gem:P.
    #[arg(long, default_value = "avg")]
    pooling: Pooling,
    /// Where the backbone runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// The head file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Feature cache folder (default: .wtb-cache beside --out).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Images per backbone batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed of the validation split, the jitter, batching and mining.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Fraction of the training products held out for validation.
    #[arg(long, default_value_t = DataOptions::default().validation_fraction)]
    validation_fraction: f64,
    /// Dimension of the learned part of the descriptor.
    #[arg(long, default_value_t = TrainConfig::default().whitening.dim)]
    dim: usize,
    /// Epochs of metric learning (0: the closed-form learned whitening alone).
    #[arg(long, default_value_t = TrainConfig::default().head.epochs)]
    epochs: usize,
    /// Learning rate.
    #[arg(long, default_value_t = TrainConfig::default().head.learning_rate)]
    learning_rate: f64,
    /// Softmax temperature of the contrastive terms.
    #[arg(long, default_value_t = TrainConfig::default().head.temperature)]
    temperature: f64,
    /// Weight of the raw backbone features in the served similarity, in [0, 1).
    #[arg(long, default_value_t = TrainConfig::default().head.raw_weight)]
    raw_weight: f32,
    /// Weight of the category-level contrastive term.
    #[arg(long, default_value_t = TrainConfig::default().head.category_weight)]
    category_weight: f64,
    /// Weight of the distillation toward the raw features' similarities.
    #[arg(long, default_value_t = TrainConfig::default().head.distill_weight)]
    distill_weight: f64,
    /// Extra shop photos of other products per batch, as negatives.
    #[arg(long, default_value_t = TrainConfig::default().head.negatives)]
    negatives: usize,
    /// Do not crop shop photos to their garment (by default their plain light background is
    /// trimmed, here and in every gallery embedded for the head).
    #[arg(long)]
    no_trim: bool,
    /// Do not use shop photos of products in no pairs file as negatives.
    #[arg(long)]
    no_distractors: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        let defaults = TrainConfig::default();
        let mut config = TrainConfig {
            data: DataOptions {
                validation_fraction: self.validation_fraction,
                seed: self.seed,
                distractors: !self.no_distractors,
            },
            ..defaults
        };
        config.views.seed = self.seed;
        config.views.trim_shop = !self.no_trim;
        config.whitening.dim = self.dim;
        config.head.seed = self.seed;
        config.head.epochs = self.epochs;
        config.head.learning_rate = self.learning_rate;
        config.head.temperature = self.temperature;
        config.head.raw_weight = self.raw_weight;
        config.head.category_weight = self.category_weight;
        config.head.distill_weight = self.distill_weight;
        config.head.negatives = self.negatives;
        config
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let config = args.config();
    let labels = wtb_dataset::Labels::load(&args.labels)
        .map_err(|problems| anyhow::anyhow!("{problems}"))
        .with_context(|| format!("reading the label folder {}", args.labels.display()))?;
    let exclusions = match &args.exclude {
        Some(path) => Some(
            wtb_dataset::Exclusions::load(path)
                .with_context(|| format!("reading exclusions {}", path.display()))?,
        ),
        None => None,
    };
    let set = TrainingSet::from_labels(&labels, &args.photos, exclusions.as_ref(), &config.data)?;
    let embedder = Embedder::load(&EmbedderConfig {
        preprocess: args.preprocess,
        pooling: args.pooling,
        device: args.device,
        ..EmbedderConfig::for_models(&args.model, &args.weights)?
    })
    .with_context(|| format!("loading {}", args.model))?;
    let out_dir = match args.out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| out_dir.join(".wtb-cache"));
    let bar = progress::bar(0, "embedding training photos");
    let features = features::extract(
        &embedder,
        &set,
        &config.views,
        &cache,
        args.batch,
        &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if !features.skipped.is_empty() && !args.json {
        eprintln!("skipped {} unreadable view(s):", features.skipped.len());
        for (id, reason) in features.skipped.iter().take(20) {
            eprintln!("  {id}: {reason}");
        }
    }
    let checkpoint = args.out.with_extension("checkpoint.json");
    let json = args.json;
    let (head, summary) = train(
        &set,
        &features,
        embedder.meta(),
        &config,
        Some(&checkpoint),
        &|log| {
            if !json && log.validation.queries > 0 {
                eprintln!(
                    "epoch {:>3}: loss {:.4}  validation acc@1 {:.3} acc@10 {:.3} category prec@10 {:.3}",
                    log.epoch,
                    log.loss,
                    log.validation.acc1,
                    log.validation.acc10,
                    log.validation.category_precision10
                );
            } else if !json {
                eprintln!("epoch {:>3}: loss {:.4}", log.epoch, log.loss);
            }
            true
        },
    )?;
    head.save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    if json {
        let value = serde_json::json!({
            "head": args.out,
            "id": head.id(),
            "output_dim": head.output_dim(),
            "skipped": features.skipped,
            "summary": summary,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let line = |name: &str, s: &wtb_train::Scores| {
            println!(
                "  {name:<10} acc@1 {:.3}  acc@10 {:.3}  category prec@10 {:.3}",
                s.acc1, s.acc10, s.category_precision10
            )
        };
        println!(
            "{}: head {} ({} -> {} values), {} training products, {:.0} s",
            args.out.display(),
            head.id(),
            head.input_dim(),
            head.output_dim(),
            summary.products,
            summary.seconds
        );
        if summary.best.queries == 0 {
            println!(
                "no validation: every training product was learned from \
                 (--validation-fraction F holds some out and reports on them)"
            );
        } else {
            println!(
                "validation ({} held-out street crops):",
                summary.best.queries
            );
            line("raw", &summary.raw);
            line("whitening", &summary.whitening);
            line(&format!("epoch {}", summary.best_epoch), &summary.best);
        }
    }
    Ok(ExitCode::SUCCESS)
}

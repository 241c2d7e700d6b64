//! `wtb-train`: learned similarity for street-to-shop retrieval.
//!
//! A head ([`wtb_embed::Head`]) sits on top of a frozen backbone's pooled features. Training:
//!
//! 1. [`TrainingSet::from_labels`]: the street photos of `train_pairs` (cropped to their box)
//!    and the shop photos of their products, split by product into training and validation
//!    with a seed; shop-only products serve as negatives. No product of `test_pairs`, and no
//!    photo of one, ever enters it.
//! 2. [`features::extract`]: backbone features of every item, mirrored, and street crops with
//!    jittered boxes, cached per model, weights checksum, preprocessing and pooling.
//! 3. [`train`]: learned whitening in closed form ([`whiten`]), then metric learning of the
//!    projection from there (InfoNCE with mined hard negatives, a category-level term, the
//!    served similarity mixing raw and learned cosines), keeping the epoch with the best
//!    validation figures; checkpoints after every epoch make an interrupted run resume and
//!    end with the same head, bit for bit.
//!
//! ```
//! use wtb_embed::EmbeddingMeta;
//! use wtb_train::{train, Features, TrainConfig, TrainingSet};
//! use wtb_train::data::{ItemKind, Part, TrainItem};
//! use wtb_dataset::{Category, ProductId, ProductKey};
//!
//! // Four products in two categories; each has a street crop and a shop photo whose
//! // features are its own direction plus noise shared by all street crops.
//! let mut items = Vec::new();
//! let mut values = Vec::new();
//! for p in 0..4u64 {
//!     let product = ProductKey::new(Category::new(if p < 2 { "tops" } else { "bags" })?, ProductId(p));
//!     for kind in [ItemKind::Street, ItemKind::Shop] {
//!         let mut v = vec![0.1f32; 8];
//!         v[p as usize] += 1.0;
//!         if kind == ItemKind::Street { v[7] += 0.8; }
//!         values.extend(v);
//!         items.push(TrainItem {
//!             id: format!("{kind:?}/{p}"), path: "unused.jpg".into(), bbox: None,
//!             product: product.clone(), kind, part: Part::Train,
//!         });
//!     }
//! }
//! let set = TrainingSet { items, test_products: Default::default(), left_out: vec![] };
//! let features = Features {
//!     dim: 8, values, item: (0..8).collect(), view: vec![0; 8], skipped: vec![],
//! };
//! let backbone = EmbeddingMeta {
//!     model: "mobilenet_v2".into(), weights_sha256: "ab".into(), preprocess: "squash".into(),
//!     pooling: "avg".into(), l2_normalized: false, dim: 8, head: None,
//! };
//! let mut config = TrainConfig::default();
//! config.whitening.dim = 4;
//! config.head.epochs = 3;
//! config.head.negatives = 0;
//! let (head, summary) = train(&set, &features, &backbone, &config, None, &|_| true)?;
//! // The served descriptor: the raw features (half the cosine by default) and the 4 learned values.
//! assert_eq!((head.input_dim(), head.output_dim()), (8, 8 + 4));
//! assert_eq!(summary.epochs.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use wtb_embed::{EmbeddingMeta, Head, HeadMeta};

pub mod data;
pub mod features;
mod trainer;
mod validate;
pub mod whiten;

pub use data::{DataOptions, TrainingSet};
pub use features::{Features, ViewOptions};
pub use trainer::{EpochLog, HeadOptions};
pub use validate::Scores;
pub use whiten::WhiteningOptions;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Settings that cannot work (a dimension too large, a fraction out of range...).
    #[error("invalid training settings: {0}")]
    Config(String),
    /// The label folder has no usable `train_pairs` record.
    #[error(
        "no training pairs in {0}: a head learns from train_pairs_<category>.json records \
         (street photo, box, product) whose products have shop photos in retrieval_<category>.json"
    )]
    NoTrainingPairs(PathBuf),
    /// Embedding the training photos failed.
    #[error("{what}: {source}")]
    Embed {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: Box<wtb_embed::EmbedError>,
    },
    /// A tensor operation failed.
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The caller asked training to stop after an epoch; the checkpoint (if any) holds it.
    #[error("training stopped after epoch {0}; rerun to resume from the checkpoint")]
    Interrupted(usize),
    /// A checkpoint could not be read or written, or belongs to another run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// All training settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Choice of the training data.
    pub data: DataOptions,
    /// Views embedded per item.
    pub views: ViewOptions,
    /// The closed-form whitening the projection starts from.
    pub whitening: WhiteningOptions,
    /// The metric learning.
    pub head: HeadOptions,
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Items by kind and part (`street/train`: n...).
    pub items: Vec<(String, usize)>,
    /// Training products with street and shop photos.
    pub products: usize,
    /// Matching pairs the whitening learned from.
    pub whitening_pairs: usize,
    /// Validation figures of the raw features.
    pub raw: Scores,
    /// Validation figures of the whitening alone.
    pub whitening: Scores,
    /// Per epoch: loss and validation figures.
    pub epochs: Vec<EpochLog>,
    /// The epoch kept (0: the whitening alone).
    pub best_epoch: usize,
    /// Validation figures of the head kept.
    pub best: Scores,
    /// Epochs taken from a checkpoint instead of being run.
    pub resumed_epochs: usize,
    /// Fingerprint of the training data.
    pub training_data: String,
    /// Seconds spent.
    pub seconds: f64,
}

const CHECKPOINT_FORMAT: &str = "wtb-train-checkpoint";
const CHECKPOINT_VERSION: u32 = 1;

/// A checkpoint: the state after an epoch and the run it belongs to.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: String,
    version: u32,
    run: String,
    epoch: usize,
    projection: Vec<f32>,
    first_moment: Vec<f32>,
    second_moment: Vec<f32>,
    rng: u64,
    best_epoch: usize,
    best: Vec<f32>,
    log: Vec<EpochLog>,
}

fn checkpoint_error(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn save_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), TrainError> {
    let bytes =
        serde_json::to_vec(checkpoint).map_err(|e| checkpoint_error(path, e.to_string()))?;
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        checkpoint_error(path, e.to_string())
    })
}

/// The checkpoint of this run, if `path` holds one; a checkpoint of another run (other data,
/// backbone or settings) is an error, never silently reused.
fn load_checkpoint(path: &Path, run: &str) -> Result<Option<Checkpoint>, TrainError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(checkpoint_error(path, e.to_string())),
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
        checkpoint_error(path, format!("unreadable ({e}); delete it to start over"))
    })?;
    if checkpoint.format != CHECKPOINT_FORMAT || checkpoint.version != CHECKPOINT_VERSION {
        return Err(checkpoint_error(
            path,
            format!(
                "format {} version {}, expected {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION}",
                checkpoint.format, checkpoint.version
            ),
        ));
    }
    if checkpoint.run != run {
        return Err(checkpoint_error(
            path,
            "it belongs to a run with other data, backbone or settings; delete it to start over",
        ));
    }
    Ok(Some(checkpoint))
}

/// Trains a head on `features` of `set`, made by the backbone `backbone`. With `checkpoint`,
/// the state is saved there after every epoch and a run interrupted earlier resumes from it;
/// it is removed when training ends. `on_epoch` sees each epoch's log and returns whether to
/// go on: `false` stops training after that epoch's checkpoint with [`TrainError::Interrupted`].
pub fn train(
    set: &TrainingSet,
    features: &Features,
    backbone: &EmbeddingMeta,
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    on_epoch: &dyn Fn(&EpochLog) -> bool,
) -> Result<(Head, TrainSummary), TrainError> {
    let started = Instant::now();
    if backbone.head.is_some() {
        return Err(TrainError::Config(
            "the features already went through a head; train on the bare backbone".into(),
        ));
    }
    if features.dim != backbone.dim {
        return Err(TrainError::Config(format!(
            "features have {} values, the backbone {}",
            features.dim, backbone.dim
        )));
    }
    let options = &config.head;
    if !(0.0..1.0).contains(&options.raw_weight) || options.temperature <= 0.0 {
        return Err(TrainError::Config(
            "the raw weight must be in [0, 1) and the temperature positive".into(),
        ));
    }
    let rows = trainer::Rows::new(set, features);
    if rows.products() == 0 {
        return Err(TrainError::Config(
            "no training product has both a street photo and a shop photo".into(),
        ));
    }
    let input = features.dim;
    let blocks = backbone.blocks();
    let transformed =
        whiten::transform_rows(&features.values, input, &blocks, config.whitening.power);
    let pairs = rows.matching_pairs(features);
    let whitening = whiten::fit(&transformed, input, &pairs, &config.whitening)?;

    let device = Device::Cpu;
    let n = features.len();
    let raw = whiten::transform_rows(&features.values, input, &blocks, 1.0);
    let validation = validate::ValidationSplit::new(set, features);
    let problem = trainer::Problem {
        set,
        features,
        inputs: Tensor::from_vec(transformed, (n, input), &device)?,
        raw: Tensor::from_vec(raw.clone(), (n, input), &device)?,
        mean: Tensor::from_slice(&whitening.mean, (1, input), &device)?,
        rows: &rows,
        validation: &validation,
    };
    let raw_scores = validation.score(set, features, &raw, input);
    let whitening_projection =
        Tensor::from_slice(&whitening.projection, (whitening.dim, input), &device)?;
    let whitening_scores = trainer::validate(&problem, &whitening_projection, 0.0)?;

    let training_data = set.fingerprint();
    let run_key = {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(training_data.as_bytes());
        for (k, v) in backbone.to_map() {
            hasher.update(format!("{k}={v}\n").as_bytes());
        }
        hasher.update(serde_json::to_vec(config).unwrap_or_default());
        hasher.update(features.values.len().to_le_bytes());
        hex::encode(hasher.finalize())
    };
    let zeros = vec![0f32; whitening.projection.len()];
    let mut state = trainer::TrainState {
        epoch: 0,
        projection: whitening.projection.clone(),
        first_moment: zeros.clone(),
        second_moment: zeros,
        rng: options.seed,
        best: (0, whitening.projection.clone()),
        log: Vec::new(),
    };
    let mut resumed_epochs = 0;
    if let Some(path) = checkpoint {
        if let Some(saved) = load_checkpoint(path, &run_key)? {
            resumed_epochs = saved.epoch;
            for log in &saved.log {
                let _ = on_epoch(log);
            }
            state = trainer::TrainState {
                epoch: saved.epoch,
                projection: saved.projection,
                first_moment: saved.first_moment,
                second_moment: saved.second_moment,
                rng: saved.rng,
                best: (saved.best_epoch, saved.best),
                log: saved.log,
            };
        }
    }
    let mut after_epoch = |state: &trainer::TrainState| -> Result<(), TrainError> {
        let go_on = state.log.last().is_none_or(on_epoch);
        if let Some(path) = checkpoint {
            save_checkpoint(
                path,
                &Checkpoint {
                    format: CHECKPOINT_FORMAT.into(),
                    version: CHECKPOINT_VERSION,
                    run: run_key.clone(),
                    epoch: state.epoch,
                    projection: state.projection.clone(),
                    first_moment: state.first_moment.clone(),
                    second_moment: state.second_moment.clone(),
                    rng: state.rng,
                    best_epoch: state.best.0,
                    best: state.best.1.clone(),
                    log: state.log.clone(),
                },
            )?;
        }
        if go_on {
            Ok(())
        } else {
            Err(TrainError::Interrupted(state.epoch))
        }
    };
    let state = trainer::run(&problem, &whitening, options, state, &mut after_epoch)?;
    let (best_epoch, projection) = state.best;
    let best = if best_epoch == 0 {
        trainer::validate(&problem, &whitening_projection, options.raw_weight)?
    } else {
        state
            .log
            .iter()
            .find(|l| l.epoch == best_epoch)
            .map(|l| l.validation)
            .unwrap_or_default()
    };

    let mut items: Vec<(String, usize)> = set
        .counts()
        .into_iter()
        .map(|((kind, part), count)| (format!("{}/{}", kind_name(kind), part_name(part)), count))
        .collect();
    items.sort();
    let summary = TrainSummary {
        items,
        products: rows.products(),
        whitening_pairs: pairs.len(),
        raw: raw_scores,
        whitening: whitening_scores,
        epochs: state.log,
        best_epoch,
        best,
        resumed_epochs,
        training_data: training_data.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let details = serde_json::json!({
        "config": config,
        "best_epoch": best_epoch,
        "validation": best,
        "validation_whitening": whitening_scores,
        "validation_raw": raw_scores,
    });
    let meta = HeadMeta {
        kind: if options.epochs == 0 {
            "whitening"
        } else {
            "trained"
        }
        .into(),
        model: backbone.model.clone(),
        weights_sha256: backbone.weights_sha256.clone(),
        preprocess: backbone.preprocess.clone(),
        pooling: backbone.pooling.clone(),
        input_dim: input,
        blocks,
        shop_trim: config.views.trim_shop,
        training_data,
        seed: options.seed,
        details: details.to_string(),
    };
    let head = Head::new(
        meta,
        config.whitening.power,
        options.raw_weight,
        whitening.mean,
        projection,
    )
    .map_err(|source| TrainError::Embed {
        what: "assembling the head".into(),
        source: Box::new(source),
    })?;
    if let Some(path) = checkpoint {
        let _ = std::fs::remove_file(path);
    }
    Ok((head, summary))
}

fn kind_name(kind: data::ItemKind) -> &'static str {
    match kind {
        data::ItemKind::Street => "street",
        data::ItemKind::Shop => "shop",
    }
}

fn part_name(part: data::Part) -> &'static str {
    match part {
        data::Part::Train => "train",
        data::Part::Validation => "validation",
        data::Part::Distractor => "distractor",
    }
}

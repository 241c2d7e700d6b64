//! Training on real data: the s2s-dev benchmark of the shared folder (skipped when absent).
//! Training runs on a small slice (three small categories) to keep the test short.

use std::path::{Path, PathBuf};

use wtb_dataset::{Labels, PairSplit, ProductKey};
use wtb_embed::{Embedder, EmbedderConfig, Head, ModelKind, Preprocess};
use wtb_train::data::ItemKind;
use wtb_train::{features, train, DataOptions, TrainConfig, TrainError, TrainingSet};

const SLICE: [&str; 3] = ["belts", "eyewear", "hats"];

fn shared() -> Option<[PathBuf; 3]> {
    wtb_testdata::shared_paths([
        "data/s2s-dev/labels",
        "data/s2s-dev/photos_resized",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
    ])
}

/// A label folder with the slice's categories only.
fn slice_labels(labels: &Path, into: &Path) {
    for category in SLICE {
        for kind in ["retrieval", "train_pairs", "test_pairs"] {
            let name = format!("{kind}_{category}.json");
            std::fs::copy(labels.join(&name), into.join(&name)).unwrap();
        }
    }
}

#[test]
fn no_test_product_or_photo_of_one_is_trained_on() {
    let Some([labels, photos, _]) = shared() else {
        return;
    };
    let labels = Labels::load(&labels).unwrap();
    let set = TrainingSet::from_labels(&labels, &photos, None, &DataOptions::default()).unwrap();
    let mut test_photos = std::collections::BTreeSet::new();
    let mut test_products = std::collections::BTreeSet::new();
    for (category, cat) in &labels.categories {
        for pair in cat.pairs(PairSplit::Test) {
            test_photos.insert(pair.photo.0);
            test_products.insert(ProductKey::new(category.clone(), pair.product));
        }
        for record in &cat.retrieval {
            if test_products.contains(&ProductKey::new(category.clone(), record.product)) {
                test_photos.insert(record.photo.0);
            }
        }
    }
    assert!(!test_products.is_empty());
    assert_eq!(set.test_products, test_products);
    let street = set
        .items
        .iter()
        .filter(|i| i.kind == ItemKind::Street)
        .count();
    assert!(street > 700, "{street} street crops");
    for item in &set.items {
        assert!(!test_products.contains(&item.product), "{}", item.id);
        let photo: u64 = item
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(
            !test_photos.contains(&photo),
            "{} shows a test product",
            item.id
        );
    }
}

#[test]
fn training_is_deterministic_resumable_and_beats_raw_features() {
    let Some([labels, photos, weights]) = shared() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sliced = dir.path().join("labels");
    std::fs::create_dir_all(&sliced).unwrap();
    slice_labels(&labels, &sliced);
    let labels = Labels::load(&sliced).unwrap();
    let mut config = TrainConfig::default();
    config.head.epochs = 4;
    config.whitening.dim = 128;
    config.data.validation_fraction = 0.3;
    let set = TrainingSet::from_labels(&labels, &photos, None, &config.data).unwrap();
    let embedder = Embedder::load(&EmbedderConfig {
        weights: Some(weights.clone()),
        preprocess: Preprocess::Squash,
        ..EmbedderConfig::new(ModelKind::MobileNetV2)
    })
    .unwrap();
    let cache = dir.path().join("cache");
    let features =
        features::extract(&embedder, &set, &config.views, &cache, 32, &|_, _| {}).unwrap();
    assert!(features.skipped.is_empty(), "{:?}", features.skipped);
    let backbone = embedder.meta();

    let (head, summary) = train(&set, &features, backbone, &config, None, &|_| true).unwrap();
    assert_eq!(summary.epochs.len(), 4);
    assert!(
        summary.best.acc1 > summary.raw.acc1,
        "validation acc@1: raw {:.3}, head {:.3}",
        summary.raw.acc1,
        summary.best.acc1
    );
    let first = dir.path().join("a.safetensors");
    head.save(&first).unwrap();

    // Interrupted after epoch 2, then resumed: the same head, bit for bit.
    let checkpoint = dir.path().join("b.checkpoint.json");
    let err = train(
        &set,
        &features,
        backbone,
        &config,
        Some(&checkpoint),
        &|log| log.epoch < 2,
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted(2)), "{err}");
    assert!(checkpoint.is_file());
    let (resumed, summary) = train(
        &set,
        &features,
        backbone,
        &config,
        Some(&checkpoint),
        &|_| true,
    )
    .unwrap();
    assert_eq!(summary.resumed_epochs, 2);
    assert!(!checkpoint.exists(), "the checkpoint is removed at the end");
    let second = dir.path().join("b.safetensors");
    resumed.save(&second).unwrap();
    assert!(
        std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
        "an interrupted and resumed run wrote another head file"
    );

    // The cached features are reused: the same set embeds to the same values.
    let again = features::extract(&embedder, &set, &config.views, &cache, 32, &|_, _| {}).unwrap();
    assert_eq!(again, features);

    // The head plugs into the embedder, which refuses it for another preprocessing.
    let with_head = Embedder::load(&EmbedderConfig {
        weights: Some(weights.clone()),
        preprocess: Preprocess::Squash,
        head: Some(first.clone()),
        ..EmbedderConfig::new(ModelKind::MobileNetV2)
    })
    .unwrap();
    assert_eq!(with_head.meta().dim, head.output_dim());
    assert_eq!(with_head.meta().head, Some(head.id()));
    let err = Embedder::load(&EmbedderConfig {
        weights: Some(weights),
        preprocess: Preprocess::Torchvision,
        head: Some(first.clone()),
        ..EmbedderConfig::new(ModelKind::MobileNetV2)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("preprocess") && err.contains("a.safetensors"),
        "{err}"
    );
    assert_eq!(Head::load(&first).unwrap().id(), head.id());

    // A checkpoint of another run is refused, not silently reused.
    std::fs::write(&checkpoint, br#"{"format":"wtb-train-checkpoint","version":1,"run":"other","epoch":1,"projection":[],"first_moment":[],"second_moment":[],"rng":0,"best_epoch":0,"best":[],"log":[]}"#).unwrap();
    let err = train(
        &set,
        &features,
        backbone,
        &config,
        Some(&checkpoint),
        &|_| true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("another run") || err.contains("other data"),
        "{err}"
    );
}

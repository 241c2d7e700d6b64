//! Golden tests: the models against reference outputs in `shared/` (real weights for
//! MobileNetV2 and EfficientNet-Lite0, the synthetic-weights recipe for ResNet50 and VGG16).
//! Each skips with a message when the reference files are absent.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use wtb_embed::{
    imagenet_class_name, Embedder, EmbedderConfig, Engine, ModelKind, IMAGENET_MEAN, IMAGENET_STD,
};

use wtb_testdata::shared_path as shared_file;

use wtb_testdata::tensors::{load, max_abs_diff, rel_l2, rel_max};

/// Both CPU implementations must meet every golden tolerance.
const ENGINES: [Engine; 2] = [Engine::Fast, Engine::Candle];

fn real_weights_embedder(model: ModelKind, file: &str, engine: Engine) -> Option<Embedder> {
    let weights = shared_file(&format!("models/{file}"))?;
    let mut config = EmbedderConfig::new(model);
    config.weights = Some(weights);
    config.engine = engine;
    Some(Embedder::load(&config).unwrap())
}

#[test]
fn mobilenet_v2_matches_reference_embedding_and_logits() {
    for engine in ENGINES {
        let (Some(reference), Some(embedder)) = (
            shared_file("models/reference_cat_224.safetensors"),
            real_weights_embedder(
                ModelKind::MobileNetV2,
                "mobilenet_v2_torchvision_imagenet1k.safetensors",
                engine,
            ),
        ) else {
            return;
        };
        let reference = load(&reference);
        let input = &reference["input"];
        let embedding = embedder.embed_tensor(input).unwrap();
        let diff = max_abs_diff(&embedding, &reference["mobilenet_v2.embedding"]);
        assert!(diff <= 1e-3, "{engine}: embedding max abs diff {diff}");
        let logits = embedder.logits_tensor(input).unwrap();
        let diff = max_abs_diff(&logits, &reference["mobilenet_v2.logits"]);
        assert!(diff <= 1e-3, "{engine}: logits max abs diff {diff}");
    }
}

#[test]
fn shipped_half_precision_weights_match_the_float32_golden() {
    let Some(reference) = shared_file("models/reference_cat_224.safetensors") else {
        return;
    };
    let reference = load(&reference);
    let input = &reference["input"];
    for engine in ENGINES {
        let mut config = EmbedderConfig::new(ModelKind::MobileNetV2);
        config.weights = Some(wtb_embed::SHIPPED_MOBILENET_V2.into());
        config.engine = engine;
        let embedder = Embedder::load(&config).unwrap();
        let ours: Vec<f32> = embedder
            .embed_tensor(input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let golden: Vec<f32> = reference["mobilenet_v2.embedding"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let dot: f32 = ours.iter().zip(&golden).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(&ours) * norm(&golden));
        println!("{engine}: shipped fp16 weights vs float32 golden embedding of cat.bmp: cosine {cosine:.6}");
        assert!(cosine >= 0.999, "{engine}: cosine {cosine}");
        // And it still sees the cat.
        let logits = embedder.logits_tensor(input).unwrap();
        let top: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let best = (0..top.len())
            .max_by(|&a, &b| top[a].total_cmp(&top[b]))
            .unwrap();
        assert_eq!(imagenet_class_name(best), Some("Egyptian cat"), "{engine}");
    }
}

#[test]
fn efficientnet_lite0_matches_reference_logits() {
    for engine in ENGINES {
        let (Some(reference), Some(embedder)) = (
            shared_file("models/reference_cat_224.safetensors"),
            real_weights_embedder(
                ModelKind::EfficientNetLite0,
                "efficientnet_lite0_imagenet1k.safetensors",
                engine,
            ),
        ) else {
            return;
        };
        let reference = load(&reference);
        let logits = embedder.logits_tensor(&reference["input"]).unwrap();
        let diff = max_abs_diff(&logits, &reference["efficientnet_lite0.logits"]);
        assert!(diff <= 1e-3, "{engine}: logits max abs diff {diff}");
    }
}

#[test]
fn cat_bmp_through_torchvision_preprocessing_is_an_egyptian_cat() {
    let Some(cat) = shared_file("models/cat.bmp") else {
        return;
    };
    let image = image::open(&cat).unwrap().to_rgb8();
    for (model, file) in [
        (
            ModelKind::MobileNetV2,
            "mobilenet_v2_torchvision_imagenet1k.safetensors",
        ),
        (
            ModelKind::EfficientNetLite0,
            "efficientnet_lite0_imagenet1k.safetensors",
        ),
    ] {
        let Some(embedder) = real_weights_embedder(model, file, Engine::Fast) else {
            return;
        };
        let top = embedder.classify(&image, 5).unwrap();
        assert_eq!(
            imagenet_class_name(top[0].0),
            Some("Egyptian cat"),
            "{model}: {top:?}"
        );
    }
}

#[test]
fn torchvision_preprocessing_reproduces_the_reference_input() {
    let (Some(cat), Some(reference)) = (
        shared_file("models/cat.bmp"),
        shared_file("models/reference_cat_224.safetensors"),
    ) else {
        return;
    };
    let image = image::open(&cat).unwrap().to_rgb8();
    let ours = wtb_embed::preprocess_image(
        &image,
        wtb_embed::Preprocess::Torchvision,
        ModelKind::MobileNetV2,
    )
    .unwrap();
    let ours = Tensor::from_vec(ours, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let reference = load(&reference);
    let rel_l2 = rel_l2(&ours, &reference["input"]);
    // The resize is bit-exact with Pillow's, so only float rounding of the normalisation remains.
    eprintln!("preprocessing vs reference input: relative L2 {rel_l2:.2e}");
    assert!(rel_l2 < 1e-6, "relative L2 {rel_l2}");
}

/// The normalised synthetic input of a golden case: the recipe's stream "input" with `seed`.
fn golden_input(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    fn fnv1a64(s: &str) -> u64 {
        s.bytes().fold(0xcbf29ce484222325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
    }
    let (n, c, h, w) = shape;
    let mut state = seed ^ fnv1a64("input");
    let values: Vec<f32> = (0..n * c * h * w)
        .map(|i| {
            state = state.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / 16777216.0;
            let channel = (i / (h * w)) % 3;
            ((u - IMAGENET_MEAN[channel] as f64) / IMAGENET_STD[channel] as f64) as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A golden case: its name, the NCHW input shape and the input's seed.
type Case = (&'static str, (usize, usize, usize, usize), u64);

const CASES: [Case; 3] = [
    ("case1", (2, 3, 224, 224), 2),
    ("case2", (1, 3, 160, 96), 3),
    ("case3", (1, 3, 99, 75), 4),
];

fn assert_close(what: &str, ours: &Tensor, golden: &Tensor) {
    let (rel_l2, rel_max) = (rel_l2(ours, golden), rel_max(ours, golden));
    assert!(
        rel_l2 <= 1e-4 && rel_max <= 1e-4,
        "{what}: relative L2 {rel_l2:.2e}, relative max {rel_max:.2e}"
    );
}

#[test]
fn resnet50_with_synthetic_weights_matches_torchvision() {
    let Some(golden) = shared_file("golden/golden_resnet50_vgg16.safetensors") else {
        return;
    };
    let golden = load(&golden);
    for engine in ENGINES {
        let config = EmbedderConfig {
            engine,
            ..EmbedderConfig::new(ModelKind::ResNet50)
        };
        let embedder = Embedder::with_synthetic_weights(&config).unwrap();
        resnet50_matches_golden(&embedder, &golden);
    }
}

fn resnet50_matches_golden(embedder: &Embedder, golden: &HashMap<String, Tensor>) {
    let engine = embedder.config().engine;
    for (case, shape, seed) in CASES {
        let input = golden_input(shape, seed);
        let map = embedder.feature_map(&input).unwrap();
        let want_shape: Vec<i64> = golden[&format!("resnet50.layer4_shape.{case}")]
            .to_vec1()
            .unwrap();
        let got_shape: Vec<i64> = map.dims().iter().map(|d| *d as i64).collect();
        assert_eq!(got_shape, want_shape, "{case} layer4 shape");
        if let Some(full) = golden.get(&format!("resnet50.layer4.{case}")) {
            assert_close(&format!("{engine} resnet50 layer4 {case}"), &map, full);
        }
        let pooled = embedder.embed_tensor(&input).unwrap();
        assert_close(
            &format!("{engine} resnet50 pooled {case}"),
            &pooled,
            &golden[&format!("resnet50.pooled.{case}")],
        );
        let logits = embedder.logits_tensor(&input).unwrap();
        assert_close(
            &format!("{engine} resnet50 logits {case}"),
            &logits,
            &golden[&format!("resnet50.logits.{case}")],
        );
    }
}

#[test]
fn vgg16_with_synthetic_weights_matches_torchvision() {
    let Some(golden) = shared_file("golden/golden_resnet50_vgg16.safetensors") else {
        return;
    };
    let golden = load(&golden);
    let embedder =
        Embedder::with_synthetic_weights(&EmbedderConfig::new(ModelKind::Vgg16)).unwrap();
    for (case, shape, seed) in CASES {
        let input = golden_input(shape, seed);
        let map = embedder.feature_map(&input).unwrap();
        let want_shape: Vec<i64> = golden[&format!("vgg16.features_shape.{case}")]
            .to_vec1()
            .unwrap();
        let got_shape: Vec<i64> = map.dims().iter().map(|d| *d as i64).collect();
        assert_eq!(got_shape, want_shape, "{case} features shape");
        if let Some(full) = golden.get(&format!("vgg16.features.{case}")) {
            assert_close(&format!("vgg16 features {case}"), &map, full);
        }
        let pooled = embedder.embed_tensor(&input).unwrap();
        assert_close(
            &format!("vgg16 pooled {case}"),
            &pooled,
            &golden[&format!("vgg16.pooled.{case}")],
        );
    }
}

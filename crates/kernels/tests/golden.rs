//! Golden tests: the fast plan (and the plain reference) against the reference outputs in
//! ../shared (real MobileNetV2 / EfficientNet-Lite0 weights; ResNet50 synthetic recipe).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;
use wtb_kernels::{Plan, Reference};

fn vb_from(path: &std::path::Path) -> VarBuilder<'static> {
    VarBuilder::from_tensors(load(path), DType::F32, &Device::Cpu)
}

#[test]
fn mobilenet_v2_fast_and_plain_match_the_golden_cat() {
    let (Some(weights), Some(golden)) = (
        shared_file("models/mobilenet_v2_torchvision_imagenet1k.safetensors"),
        shared_file("models/reference_cat_224.safetensors"),
    ) else {
        return;
    };
    let g = load(&golden);
    let input = &g["input"];
    let plan = Plan::mobilenet_v2(vb_from(&weights)).unwrap();
    let reference = Reference::mobilenet_v2(vb_from(&weights)).unwrap();
    for (path, emb, logits) in [
        (
            "fast",
            plan.features(input).unwrap(),
            plan.logits(input).unwrap(),
        ),
        (
            "plain",
            reference.features(input).unwrap(),
            reference.logits(input).unwrap(),
        ),
    ] {
        let d_emb = max_abs_diff(&emb, &g["mobilenet_v2.embedding"]);
        let d_log = max_abs_diff(&logits, &g["mobilenet_v2.logits"]);
        eprintln!("mobilenet_v2 {path}: embedding max|diff| {d_emb:.2e}, logits {d_log:.2e}");
        assert!(d_emb <= 1e-3, "{path} embedding max|diff| {d_emb}");
        assert!(d_log <= 1e-3, "{path} logits max|diff| {d_log}");
        let top = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        assert_eq!(top, 285, "{path}: top-1 should be Egyptian cat");
    }
    // A batch gives every image the single-image result.
    let batch = Tensor::cat(&[input, &input.affine(0.5, 0.1).unwrap(), input], 0).unwrap();
    let b = plan.features(&batch).unwrap();
    let d = max_abs_diff(&b.narrow(0, 2, 1).unwrap(), &g["mobilenet_v2.embedding"]);
    assert!(d <= 1e-3, "batch row 2 max|diff| {d}");
}

#[test]
fn efficientnet_lite0_fast_and_plain_match_the_golden_cat() {
    let (Some(weights), Some(golden)) = (
        shared_file("models/efficientnet_lite0_imagenet1k.safetensors"),
        shared_file("models/reference_cat_224.safetensors"),
    ) else {
        return;
    };
    let g = load(&golden);
    let input = &g["input"];
    let plan = Plan::efficientnet_lite0(vb_from(&weights)).unwrap();
    let reference = Reference::efficientnet_lite0(vb_from(&weights)).unwrap();
    for (path, logits) in [
        ("fast", plan.logits(input).unwrap()),
        ("plain", reference.logits(input).unwrap()),
    ] {
        let d = max_abs_diff(&logits, &g["efficientnet_lite0.logits"]);
        eprintln!("efficientnet_lite0 {path}: logits max|diff| {d:.2e}");
        assert!(d <= 1e-3, "{path} logits max|diff| {d}");
        let top = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        assert_eq!(top, 285, "{path}: top-1 should be Egyptian cat");
    }
}

fn resnet50_recipe_vb(names_shapes: &std::path::Path) -> VarBuilder<'static> {
    let tensors = recipe_names(names_shapes, "resnet50")
        .into_iter()
        .map(|(name, shape)| {
            let t = recipe_tensor(&name, &shape);
            (name, t)
        })
        .collect();
    VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
}

#[test]
fn resnet50_fast_plan_matches_the_synthetic_golden_outputs() {
    let (Some(names), Some(golden)) = (
        shared_file("golden/names_shapes.txt"),
        shared_file("golden/golden_resnet50_vgg16.safetensors"),
    ) else {
        return;
    };
    let g = load(&golden);
    let plan = Plan::resnet50(resnet50_recipe_vb(&names)).unwrap();
    let cases = [
        (1, 2, [2, 3, 224, 224]),
        (2, 3, [1, 3, 160, 96]),
        (3, 4, [1, 3, 99, 75]),
    ];
    for (case, seed, shape) in cases {
        let input = recipe_input(seed, shape);
        let head = g[&format!("input.case{case}.head16")]
            .to_dtype(DType::F32)
            .unwrap();
        let ours = input.flatten_all().unwrap().narrow(0, 0, 16).unwrap();
        assert!(
            max_abs_diff(&ours, &head) < 1e-6,
            "case{case}: input recipe differs"
        );
        let map = plan.feature_map(&input).unwrap();
        let pooled = plan.features(&input).unwrap();
        let logits = plan.logits(&input).unwrap();
        let mut checks = vec![
            (
                "pooled",
                pooled,
                g[&format!("resnet50.pooled.case{case}")].clone(),
            ),
            (
                "logits",
                logits,
                g[&format!("resnet50.logits.case{case}")].clone(),
            ),
        ];
        if case > 1 {
            checks.push((
                "layer4",
                map,
                g[&format!("resnet50.layer4.case{case}")].clone(),
            ));
        }
        for (what, ours, want) in checks {
            let (l2, mx) = (rel_l2(&ours, &want), rel_max(&ours, &want));
            eprintln!("resnet50 case{case} {what}: rel L2 {l2:.2e}, rel max {mx:.2e}");
            assert!(
                l2 <= 1e-4 && mx <= 1e-4,
                "case{case} {what}: rel L2 {l2}, rel max {mx}"
            );
        }
    }
}

#[test]
fn resnet50_plain_reference_matches_the_synthetic_golden_outputs() {
    let (Some(names), Some(golden)) = (
        shared_file("golden/names_shapes.txt"),
        shared_file("golden/golden_resnet50_vgg16.safetensors"),
    ) else {
        return;
    };
    let g = load(&golden);
    let reference = Reference::resnet50(resnet50_recipe_vb(&names)).unwrap();
    let input = recipe_input(4, [1, 3, 99, 75]);
    let map = reference.feature_map(&input).unwrap();
    let want = &g["resnet50.layer4.case3"];
    let l2 = rel_l2(&map, want);
    eprintln!("resnet50 plain case3 layer4: rel L2 {l2:.2e}");
    assert!(l2 <= 1e-4, "rel L2 {l2}");
}

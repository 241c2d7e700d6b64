//! Randomised checks: each fast kernel against stock candle ops on random inputs and
//! weights (strides 1 and 2, odd sizes, batch 1 and > 1), and whole fast plans against the
//! plain candle path with random weights. Tolerance: relative L2 ≤ 1e-4.

mod common;

use candle_core::{DType, Device, Module, ModuleT, Tensor, D};
use candle_nn::VarBuilder;
use common::*;
use wtb_kernels::kernels::{self, Activation, Nhwc, PackedWeights, Window};
use wtb_kernels::{fold_batch_norm, Plan, Reference};

const TOL: f64 = 1e-4;

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn nchw_to_nhwc(t: &Tensor) -> (Vec<f32>, Nhwc) {
    let (n, c, h, w) = t.dims4().unwrap();
    (
        to_vec(&t.permute((0, 2, 3, 1)).unwrap()),
        Nhwc { n, h, w, c },
    )
}

fn nhwc_tensor(v: Vec<f32>, d: Nhwc) -> Tensor {
    Tensor::from_vec(v, (d.n, d.h, d.w, d.c), &Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
}

fn act(x: Tensor, a: Activation) -> Tensor {
    match a {
        Activation::Identity => x,
        Activation::Relu => x.relu().unwrap(),
        Activation::Relu6 => x.clamp(0f32, 6f32).unwrap(),
    }
}

struct Bn {
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
}

fn random_bn(tag: &str, c: usize) -> Bn {
    Bn {
        gamma: uniform(&format!("{tag}.g"), 7, &[c], 0.5, 1.5),
        beta: uniform(&format!("{tag}.b"), 7, &[c], -0.5, 0.5),
        mean: uniform(&format!("{tag}.m"), 7, &[c], -0.5, 0.5),
        var: uniform(&format!("{tag}.v"), 7, &[c], 0.3, 2.0),
    }
}

fn candle_bn(x: &Tensor, bn: &Bn, eps: f64) -> Tensor {
    let m = candle_nn::BatchNorm::new(
        bn.gamma.dims1().unwrap(),
        bn.mean.clone(),
        bn.var.clone(),
        bn.gamma.clone(),
        bn.beta.clone(),
        eps,
    )
    .unwrap();
    m.forward_t(x, false).unwrap()
}

/// Folds `bn` into PyTorch-layout weights; returns (weights, bias).
fn folded(w: &Tensor, bn: &Bn, eps: f64) -> (Vec<f32>, Vec<f32>) {
    let mut wv = to_vec(w);
    let c = bn.gamma.dims1().unwrap();
    let bias = fold_batch_norm(
        &mut wv,
        &vec![0.0; c],
        &to_vec(&bn.gamma),
        &to_vec(&bn.beta),
        &to_vec(&bn.mean),
        &to_vec(&bn.var),
        eps,
    );
    (wv, bias)
}

fn check(what: &str, ours: &Tensor, want: &Tensor) {
    let l2 = rel_l2(ours, want);
    assert!(l2 <= TOL, "{what}: relative L2 {l2:.3e}");
}

#[test]
fn depthwise_matches_candle_grouped_conv_with_batch_norm() {
    for (i, &(n, c, h, w, k, s)) in [
        (1, 32, 17, 13, 3, 1),
        (3, 96, 15, 16, 3, 2),
        (2, 144, 9, 11, 5, 2),
        (1, 40, 7, 7, 5, 1),
        (2, 19, 6, 5, 3, 2),
        (1, 83, 4, 3, 3, 1),
    ]
    .iter()
    .enumerate()
    {
        let tag = format!("dw{i}");
        let x = uniform(&format!("{tag}.x"), 1, &[n, c, h, w], -2.0, 2.0);
        let wt = uniform(&format!("{tag}.w"), 1, &[c, 1, k, k], -0.6, 0.6);
        let bn = random_bn(&tag, c);
        let want = act(
            candle_bn(&x.conv2d(&wt, k / 2, s, 1, c).unwrap(), &bn, 1e-3),
            Activation::Relu6,
        );
        let (wv, bias) = folded(&wt, &bn, 1e-3);
        let mut taps = vec![0.0; k * k * c];
        for ch in 0..c {
            for t in 0..k * k {
                taps[t * c + ch] = wv[ch * k * k + t];
            }
        }
        let (xv, d) = nchw_to_nhwc(&x);
        let win = Window::symmetric(h, w, k, s, k / 2).unwrap();
        let od = Nhwc {
            n,
            h: win.out_h,
            w: win.out_w,
            c,
        };
        let mut out = vec![0.0; od.len()];
        kernels::depthwise_conv(&xv, d, win, &taps, &bias, Activation::Relu6, &mut out).unwrap();
        check(
            &format!("depthwise {n}x{c}x{h}x{w} k{k} s{s}"),
            &nhwc_tensor(out, od),
            &want,
        );
    }
}

/// PyTorch `[cout, cin, k, k]` → `[(ky, kx, cin), cout]`.
fn dense_layout(w: &[f32], cout: usize, cin: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0; k * k * cin * cout];
    for o in 0..cout {
        for i in 0..cin {
            for tap in 0..k * k {
                t[(tap * cin + i) * cout + o] = w[(o * cin + i) * k * k + tap];
            }
        }
    }
    t
}

#[test]
fn dense_and_pointwise_convs_match_candle_conv_with_batch_norm_and_residual() {
    for (i, &(n, cin, cout, h, w, k, s, p, a, with_residual)) in [
        (1, 3, 32, 31, 27, 3, 2, 1, Activation::Relu6, false), // MobileNet stem, odd size
        (2, 3, 64, 37, 29, 7, 2, 3, Activation::Relu, false),  // ResNet stem
        (3, 16, 24, 9, 7, 3, 1, 1, Activation::Relu, false),   // ResNet 3×3
        (2, 24, 40, 11, 9, 3, 2, 1, Activation::Relu, false),  // strided 3×3
        (2, 32, 48, 9, 13, 1, 2, 0, Activation::Identity, false), // downsample 1×1 s2
        (1, 40, 24, 13, 11, 1, 1, 0, Activation::Identity, true), // project + residual
        (4, 24, 144, 7, 5, 1, 1, 0, Activation::Relu6, false), // expand
        (2, 64, 256, 3, 3, 1, 1, 0, Activation::Relu, true),   // bottleneck conv3 + add + ReLU
    ]
    .iter()
    .enumerate()
    {
        let tag = format!("conv{i}");
        let x = uniform(&format!("{tag}.x"), 2, &[n, cin, h, w], -2.0, 2.0);
        let bound = (6.0 / (cin * k * k) as f64).sqrt();
        let wt = uniform(&format!("{tag}.w"), 2, &[cout, cin, k, k], -bound, bound);
        let bn = random_bn(&tag, cout);
        let mut pre = candle_bn(&x.conv2d(&wt, p, s, 1, 1).unwrap(), &bn, 1e-5);
        let od_shape = pre.dims4().unwrap();
        let residual = with_residual.then(|| {
            uniform(
                &format!("{tag}.r"),
                2,
                &[od_shape.0, od_shape.1, od_shape.2, od_shape.3],
                -1.0,
                1.0,
            )
        });
        if let Some(r) = &residual {
            pre = (pre + r).unwrap();
        }
        let want = act(pre, a);

        let (wv, bias) = folded(&wt, &bn, 1e-5);
        let wl = PackedWeights::new(&dense_layout(&wv, cout, cin, k), k * k * cin, cout).unwrap();
        let (xv, d) = nchw_to_nhwc(&x);
        let win = Window::symmetric(h, w, k, s, p).unwrap();
        let od = Nhwc {
            n,
            h: win.out_h,
            w: win.out_w,
            c: cout,
        };
        let mut out = match &residual {
            Some(r) => nchw_to_nhwc(r).0,
            None => vec![0.0; od.len()],
        };
        let acc = residual.is_some();
        if k == 1 && s == 1 {
            kernels::pointwise_conv(&xv, n * h * w, cin, &wl, &bias, a, acc, &mut out).unwrap();
        } else {
            kernels::dense_conv(&xv, d, win, &wl, &bias, a, acc, &mut out).unwrap();
        }
        check(
            &format!("conv {n}x{cin}x{h}x{w} -> {cout} k{k} s{s} p{p} residual {acc}"),
            &nhwc_tensor(out, od),
            &want,
        );
    }
}

#[test]
fn pooling_matches_candle() {
    for &(n, c, h, w) in &[(1, 64, 25, 19), (2, 8, 56, 56), (3, 5, 7, 4)] {
        let x = uniform(&format!("pool{n}{c}{h}{w}"), 3, &[n, c, h, w], -3.0, 3.0);
        let (xv, d) = nchw_to_nhwc(&x);
        // Max pool 3×3 s2 p1 (ResNet); padding with -inf is exact for max.
        let neg = |t: Tensor, dim: usize| {
            let mut shape = t.dims().to_vec();
            shape[dim] = 1;
            let pad = Tensor::full(f32::NEG_INFINITY, shape, &Device::Cpu).unwrap();
            Tensor::cat(&[&pad, &t, &pad], dim).unwrap()
        };
        let want = neg(neg(x.clone(), 2), 3)
            .max_pool2d_with_stride(3, 2)
            .unwrap();
        let win = Window::symmetric(h, w, 3, 2, 1).unwrap();
        let od = Nhwc {
            n,
            h: win.out_h,
            w: win.out_w,
            c,
        };
        let mut out = vec![0.0; od.len()];
        kernels::max_pool(&xv, d, win, &mut out).unwrap();
        check("max pool", &nhwc_tensor(out, od), &want);

        let want = x.mean(D::Minus1).unwrap().mean(D::Minus1).unwrap();
        let mut out = vec![0.0; n * c];
        kernels::global_avg_pool(&xv, d, &mut out).unwrap();
        check(
            "global avg pool",
            &Tensor::from_vec(out, (n, c), &Device::Cpu).unwrap(),
            &want,
        );
    }
}

#[test]
fn classifier_gemm_matches_candle_linear() {
    let (n, cin, cout) = (5, 1280, 1000);
    let x = uniform("fc.x", 4, &[n, cin], -1.0, 1.0);
    let w = uniform("fc.w", 4, &[cout, cin], -0.05, 0.05);
    let b = uniform("fc.b", 4, &[cout], -0.1, 0.1);
    let want = candle_nn::Linear::new(w.clone(), Some(b.clone()))
        .forward(&x)
        .unwrap();
    let wt = to_vec(&w.t().unwrap().contiguous().unwrap());
    let mut out = vec![0.0; n * cout];
    kernels::pointwise_conv(
        &to_vec(&x),
        n,
        cin,
        &PackedWeights::new(&wt, cin, cout).unwrap(),
        &to_vec(&b),
        Activation::Identity,
        false,
        &mut out,
    )
    .unwrap();
    check(
        "classifier",
        &Tensor::from_vec(out, (n, cout), &Device::Cpu).unwrap(),
        &want,
    );
}

fn random_vb(weights_rel: &str, seed: u64) -> Option<VarBuilder<'static>> {
    let path = shared_file(weights_rel)?;
    let real = load(&path);
    Some(VarBuilder::from_tensors(
        randomised_like(&real, seed),
        DType::F32,
        &Device::Cpu,
    ))
}

#[test]
fn mobilenet_v2_fast_plan_matches_plain_candle_with_random_weights() {
    let Some(vb) = random_vb("models/mobilenet_v2_torchvision_imagenet1k.safetensors", 11) else {
        return;
    };
    let plan = Plan::mobilenet_v2(vb.clone()).unwrap();
    let reference = Reference::mobilenet_v2(vb).unwrap();
    for (i, shape) in [[1, 3, 224, 224], [3, 3, 97, 131]].into_iter().enumerate() {
        let x = uniform(&format!("mnv2.x{i}"), 5, &shape, -2.0, 2.0);
        check(
            "mobilenet_v2 map",
            &plan.feature_map(&x).unwrap(),
            &reference.feature_map(&x).unwrap(),
        );
        check(
            "mobilenet_v2 logits",
            &plan.logits(&x).unwrap(),
            &reference.logits(&x).unwrap(),
        );
    }
}

#[test]
fn efficientnet_lite0_fast_plan_matches_plain_candle_with_random_weights() {
    let Some(vb) = random_vb("models/efficientnet_lite0_imagenet1k.safetensors", 12) else {
        return;
    };
    let plan = Plan::efficientnet_lite0(vb.clone()).unwrap();
    let reference = Reference::efficientnet_lite0(vb).unwrap();
    for (i, shape) in [[2, 3, 160, 128], [1, 3, 75, 99]].into_iter().enumerate() {
        let x = uniform(&format!("effl0.x{i}"), 6, &shape, -2.0, 2.0);
        check(
            "efficientnet_lite0 map",
            &plan.feature_map(&x).unwrap(),
            &reference.feature_map(&x).unwrap(),
        );
        check(
            "efficientnet_lite0 logits",
            &plan.logits(&x).unwrap(),
            &reference.logits(&x).unwrap(),
        );
    }
}

#[test]
fn resnet50_fast_plan_matches_plain_candle_with_random_weights() {
    let Some(names) = shared_file("golden/names_shapes.txt") else {
        return;
    };
    // The recipe's names and shapes, with a different random stream (seed 13) for values.
    let real: std::collections::HashMap<String, Tensor> = recipe_names(&names, "resnet50")
        .into_iter()
        .map(|(name, shape)| {
            let t = recipe_tensor(&name, &shape);
            (name, t)
        })
        .collect();
    let mut tensors = randomised_like(&real, 13);
    // Keep the recipe's damped last BN so activations stay bounded through 16 residual blocks.
    for (name, t) in &real {
        if name.ends_with(".bn3.weight") {
            tensors.insert(name.clone(), t.clone());
        }
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let plan = Plan::resnet50(vb.clone()).unwrap();
    let reference = Reference::resnet50(vb).unwrap();
    // Odd sizes; layer 1's 33×26 maps have enough tiles (ragged at the edges) for the
    // Winograd 3×3 path, the smaller ones later run im2col.
    let x = uniform("resnet.x", 8, &[2, 3, 131, 101], -2.0, 2.0);
    check(
        "resnet50 map",
        &plan.feature_map(&x).unwrap(),
        &reference.feature_map(&x).unwrap(),
    );
    check(
        "resnet50 logits",
        &plan.logits(&x).unwrap(),
        &reference.logits(&x).unwrap(),
    );
    // The per-layer profile accounts for every multiply-add, on the one-image path (layers
    // split across threads) and the batch path (an image per thread) alike.
    let macs = plan.macs_per_image(131, 101).unwrap();
    for images in [1, 2] {
        let profile = plan.profile(&x.narrow(0, 0, images).unwrap(), 2).unwrap();
        let counted: u64 = profile.layers.iter().map(|l| l.macs * l.calls as u64).sum();
        assert_eq!(counted, macs * images as u64 * 2, "batch {images}");
        assert!(profile.to_string().contains("slowest layers"));
    }
}

#[test]
fn plans_refuse_bad_inputs_and_missing_tensors() {
    let Some(path) = shared_file("models/mobilenet_v2_torchvision_imagenet1k.safetensors") else {
        return;
    };
    let mut tensors = load(&path);
    let plan = Plan::mobilenet_v2(VarBuilder::from_tensors(
        tensors.clone(),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap();
    let gray = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(plan.features(&gray).is_err());
    let flat = Tensor::zeros((3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(plan.features(&flat).is_err());
    // A 1×1 image still runs (padding keeps every stage at ≥ 1 pixel).
    let tiny = Tensor::zeros((1, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(plan.features(&tiny).unwrap().dims(), &[1, 1280]);

    tensors.remove("features.5.conv.1.1.running_var");
    let err = Plan::mobilenet_v2(VarBuilder::from_tensors(
        tensors.clone(),
        DType::F32,
        &Device::Cpu,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("features.5.conv.1.1.running_var"), "{err}");
    tensors.remove("classifier.1.weight");
    tensors.remove("classifier.1.bias");
    tensors.insert(
        "features.5.conv.1.1.running_var".into(),
        Tensor::ones(7, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Plan::mobilenet_v2(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("features.5.conv.1.1.running_var"),
        "misshapen: {err}"
    );
}

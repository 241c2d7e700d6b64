//! Helpers shared by the integration tests: locating ../shared, comparing tensors,
//! deterministic random values and the synthetic-weight recipe of shared/golden/README.md.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

pub use wtb_testdata::shared_path as shared_file;
pub use wtb_testdata::tensors::{load, max_abs_diff, rel_l2, rel_max};

/// SplitMix64 stream of `[0, 1)` values (top 24 bits), the golden recipe's generator.
pub fn stream_u(name: &str, seed: u64, n: usize) -> Vec<f64> {
    let mut h = 0xcbf29ce484222325u64;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut st = seed ^ h;
    (0..n)
        .map(|_| {
            st = st.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = st;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^= z >> 31;
            (z >> 40) as f64 / 16777216.0
        })
        .collect()
}

/// Uniform values in `[lo, hi)` from a named stream, as an f32 tensor.
pub fn uniform(name: &str, seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = stream_u(name, seed, n)
        .into_iter()
        .map(|u| (lo + (hi - lo) * u) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// One synthetic tensor of shared/golden/README.md §2.
pub fn recipe_tensor(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let u = stream_u(name, 1, n);
    let last = name.rsplit('.').next().unwrap_or("");
    let vals: Vec<f32> = match (last, shape.len()) {
        ("weight", 4) => {
            let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
            u.iter()
                .map(|u| ((2.0 * u - 1.0) * (6.0 / fan_in).sqrt()) as f32)
                .collect()
        }
        ("weight", 2) => {
            let fan_in = shape[1] as f64;
            u.iter()
                .map(|u| ((2.0 * u - 1.0) * (3.0 / fan_in).sqrt()) as f32)
                .collect()
        }
        ("weight", 1) if name.ends_with(".bn3.weight") => {
            u.iter().map(|u| (0.2 + 0.1 * u) as f32).collect()
        }
        ("weight", 1) => u.iter().map(|u| (1.0 + 0.2 * (u - 0.5)) as f32).collect(),
        ("bias", _) | ("running_mean", _) => {
            u.iter().map(|u| (0.1 * (2.0 * u - 1.0)) as f32).collect()
        }
        ("running_var", _) => u.iter().map(|u| (0.5 + u) as f32).collect(),
        _ => panic!("no recipe for {name}"),
    };
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
}

/// `(name, shape)` of every tensor of one model section of names_shapes.txt.
pub fn recipe_names(names_shapes: &Path, model: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(names_shapes).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.split_whitespace().next().unwrap_or("").to_string();
            continue;
        }
        if line.starts_with('#')
            || line.trim().is_empty()
            || section != model
            || line.contains("NOT_GENERATED")
        {
            continue;
        }
        let mut cols = line.split('\t');
        let name = cols.next().unwrap().to_string();
        let shape: Vec<usize> = cols
            .next()
            .unwrap()
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| s.trim().parse().unwrap())
            .collect();
        out.push((name, shape));
    }
    out
}

/// The golden input of case `seed` (README §3), `[n, 3, h, w]`.
pub fn recipe_input(seed: u64, shape: [usize; 4]) -> Tensor {
    const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
    const STD: [f64; 3] = [0.229, 0.224, 0.225];
    let hw = shape[2] * shape[3];
    let n = shape.iter().product();
    let v: Vec<f32> = stream_u("input", seed, n)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let c = (i / hw) % 3;
            ((p - MEAN[c]) / STD[c]) as f32
        })
        .collect();
    Tensor::from_vec(v, &shape, &Device::Cpu).unwrap()
}

/// The same names and shapes as a real weights file, filled with random values scaled like
/// trained weights (He-uniform convs, BN statistics near their usual ranges).
pub fn randomised_like(real: &HashMap<String, Tensor>, seed: u64) -> HashMap<String, Tensor> {
    real.iter()
        .map(|(name, t)| {
            let shape = t.dims().to_vec();
            let v = if name.ends_with("running_var") {
                uniform(name, seed, &shape, 0.5, 1.5)
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                uniform(name, seed, &shape, -0.1, 0.1)
            } else if shape.len() == 1 {
                uniform(name, seed, &shape, 0.8, 1.2)
            } else {
                let fan_in = shape[1..].iter().product::<usize>() as f64;
                let a = (6.0 / fan_in).sqrt();
                uniform(name, seed, &shape, -a, a)
            };
            (name.clone(), v)
        })
        .collect()
}

//! Reading golden tensors and measuring how far an output is from them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

/// Every tensor of a safetensors file, on the CPU. Panics (it is for tests) naming the file.
pub fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap_or_else(|e| panic!("cannot read a tensor of shape {:?}: {e}", t.dims()))
}

/// `max |a - b|`; panics when the shapes differ.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `‖a − b‖ / ‖b‖`; panics when the shapes differ.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (values(a), values(b));
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// `max |a − b| / max |b|`; panics when the shapes differ.
pub fn rel_max(a: &Tensor, b: &Tensor) -> f64 {
    let peak = values(b).iter().map(|v| v.abs()).fold(0.0, f64::max);
    max_abs_diff(a, b) / peak.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_of_known_tensors() {
        let a = Tensor::new(&[1.0f32, 2.0, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.0f32, 2.0, 4.0], &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 2.0);
        assert!((rel_l2(&a, &b) - 2.0 / 21f64.sqrt()).abs() < 1e-12);
        assert_eq!(rel_max(&a, &b), 0.5);
    }
}

//! Learned whitening (Radenović, Tolias and Chum, *Fine-tuning CNN image retrieval with no
//! human annotation*, TPAMI 2018, section 3.3): the inverse square root of the covariance of
//! the differences of matching pairs, then a PCA of the whitened data, in closed form.

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::TrainError;

/// Settings of the closed-form whitening.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WhiteningOptions {
    /// Output dimension (at most the input's).
    pub dim: usize,
    /// Shrinkage of the within-pair covariance toward a scaled identity, in [0, 1].
    pub shrinkage: f64,
    /// Exponent of the signed power applied to inputs before normalisation (0.5: square root).
    pub power: f32,
}

impl Default for WhiteningOptions {
    fn default() -> Self {
        WhiteningOptions {
            dim: 512,
            shrinkage: 0.2,
            power: 0.5,
        }
    }
}

/// The learned mean and projection (`dim × input`, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// Mean of the transformed training vectors.
    pub mean: Vec<f32>,
    /// Projection rows, most discriminative first.
    pub projection: Vec<f32>,
    /// Output dimension.
    pub dim: usize,
}

/// Signed power then L2 normalisation of each row of `values` (`n × dim`), each of `blocks`
/// (the parts of an ensemble's vectors) to unit length and the row to unit length: the input
/// transform shared by the whitening and the head (see `wtb_embed::Head`).
pub fn transform_rows(values: &[f32], dim: usize, blocks: &[usize], power: f32) -> Vec<f32> {
    let mut out: Vec<f32> = values
        .iter()
        .map(|&v| {
            if power == 1.0 {
                v
            } else {
                v.signum() * v.abs().powf(power)
            }
        })
        .collect();
    let scale = 1.0 / (blocks.len().max(1) as f32).sqrt();
    for row in out.chunks_mut(dim) {
        let mut start = 0;
        for &len in blocks {
            let block = &mut row[start..start + len];
            let norm = block.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            block.iter_mut().for_each(|v| *v = *v / norm * scale);
            start += len;
        }
    }
    out
}

fn gram(rows: &[f32], n: usize, dim: usize) -> Result<DMatrix<f64>, TrainError> {
    // X^T X through candle's GEMM (the O(n·d²) part), accumulated in f32 then read as f64.
    let x = Tensor::from_slice(rows, (n, dim), &Device::Cpu)?;
    let g = x.t()?.matmul(&x)?;
    let values: Vec<f32> = g.flatten_all()?.to_vec1()?;
    Ok(DMatrix::from_iterator(
        dim,
        dim,
        values.into_iter().map(f64::from),
    ))
}

/// Fits the whitening on `vectors` (`n × input`, already transformed by [`transform_rows`])
/// and matching `pairs` of row indices.
pub fn fit(
    vectors: &[f32],
    input: usize,
    pairs: &[(usize, usize)],
    options: &WhiteningOptions,
) -> Result<Whitening, TrainError> {
    let n = vectors.len() / input.max(1);
    if pairs.is_empty() || n < 2 {
        return Err(TrainError::Config(
            "learned whitening needs at least one matching pair".into(),
        ));
    }
    if options.dim == 0 || options.dim > input {
        return Err(TrainError::Config(format!(
            "whitening dimension {} is not in 1..={input}",
            options.dim
        )));
    }
    if !(0.0..=1.0).contains(&options.shrinkage) {
        return Err(TrainError::Config(format!(
            "shrinkage {} is not in [0, 1]",
            options.shrinkage
        )));
    }
    let mut mean = vec![0f64; input];
    for row in vectors.chunks(input) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += f64::from(*v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);

    // Within-pair covariance.
    let mut differences = Vec::with_capacity(pairs.len() * input);
    for &(a, b) in pairs {
        let (ra, rb) = (
            &vectors[a * input..(a + 1) * input],
            &vectors[b * input..(b + 1) * input],
        );
        differences.extend(ra.iter().zip(rb).map(|(x, y)| x - y));
    }
    let mut within = gram(&differences, pairs.len(), input)? / pairs.len() as f64;
    let trace = within.trace() / input as f64;
    within *= 1.0 - options.shrinkage;
    for i in 0..input {
        within[(i, i)] += options.shrinkage * trace + 1e-9;
    }
    let eigen = SymmetricEigen::new(within);
    let floor = eigen.eigenvalues.max() * 1e-9;
    let inverse_root =
        DMatrix::from_diagonal(&eigen.eigenvalues.map(|l| 1.0 / l.max(floor).sqrt()));
    let whiten = &eigen.eigenvectors * inverse_root * eigen.eigenvectors.transpose();

    // PCA of the whitened, centred data.
    let centred: Vec<f32> = vectors
        .chunks(input)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(v, m)| (f64::from(*v) - m) as f32)
        })
        .collect();
    let data_cov = gram(&centred, n, input)? / n as f64;
    let whitened_cov = &whiten * data_cov * whiten.transpose();
    let pca = SymmetricEigen::new(whitened_cov);
    let mut order: Vec<usize> = (0..input).collect();
    order.sort_by(|&a, &b| {
        pca.eigenvalues[b]
            .total_cmp(&pca.eigenvalues[a])
            .then(a.cmp(&b))
    });
    let mut projection = Vec::with_capacity(options.dim * input);
    for &component in order.iter().take(options.dim) {
        let mut axis = pca.eigenvectors.column(component).into_owned();
        // Eigenvectors are defined up to sign: fix it so that the same data gives the same file.
        let largest = axis
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()).then(b.0.cmp(&a.0)))
            .map_or(0, |(i, _)| i);
        if axis[largest] < 0.0 {
            axis.neg_mut();
        }
        let row = axis.transpose() * &whiten;
        projection.extend(row.iter().map(|v| *v as f32));
    }
    Ok(Whitening {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        projection,
        dim: options.dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SplitMix64;

    #[test]
    fn whitening_separates_pairs_from_noise() {
        // Items are points in 8-d; the matching pairs differ only along axis 0 (a nuisance
        // such as lighting), so after whitening axis 0 must be crushed.
        let mut rng = SplitMix64(1);
        let (dim, items) = (8, 40);
        let mut vectors = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..items {
            let base: Vec<f32> = (0..dim).map(|_| rng.next_f64() as f32).collect();
            for _ in 0..2 {
                let mut v = base.clone();
                v[0] += (rng.next_f64() as f32 - 0.5) * 10.0;
                vectors.extend(v);
            }
            pairs.push((2 * i, 2 * i + 1));
        }
        let options = WhiteningOptions {
            dim: 4,
            shrinkage: 0.0,
            power: 1.0,
        };
        let w = fit(&vectors, dim, &pairs, &options).unwrap();
        assert_eq!(w.projection.len(), 4 * dim);
        let project = |v: &[f32]| -> Vec<f32> {
            w.projection
                .chunks(dim)
                .map(|r| {
                    r.iter()
                        .zip(v)
                        .zip(&w.mean)
                        .map(|((a, x), m)| a * (x - m))
                        .sum()
                })
                .collect()
        };
        let distance = |a: &[f32], b: &[f32]| -> f32 {
            a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>()
        };
        let (mut matching, mut other) = (0.0, 0.0);
        for i in 0..items {
            let a = project(&vectors[2 * i * dim..(2 * i + 1) * dim]);
            let b = project(&vectors[(2 * i + 1) * dim..(2 * i + 2) * dim]);
            let j = (i + 1) % items;
            let c = project(&vectors[2 * j * dim..(2 * j + 1) * dim]);
            matching += distance(&a, &b);
            other += distance(&a, &c);
        }
        assert!(matching * 100.0 < other, "{matching} vs {other}");
        // Same inputs, same output bit for bit.
        assert_eq!(fit(&vectors, dim, &pairs, &options).unwrap(), w);
    }

    #[test]
    fn bad_settings_are_refused() {
        let v = vec![0.5f32; 8];
        assert!(fit(&v, 4, &[], &WhiteningOptions::default()).is_err());
        let options = WhiteningOptions {
            dim: 5,
            ..WhiteningOptions::default()
        };
        assert!(fit(&v, 4, &[(0, 1)], &options).is_err());
    }
}

//! Query-time and gallery-side steps that refine descriptors with their neighbours, from the
//! instance-retrieval literature (Radenović, Tolias and Chum, TPAMI 2018, section 3.4):
//!
//! - **α-weighted query expansion** (αQE): a query is replaced by the normalised sum of itself
//!   and its `k` nearest gallery vectors, each weighted by its cosine raised to `α`;
//! - **database-side augmentation** (DBA): the same applied to every gallery vector with its
//!   own nearest neighbours in the gallery, done once when the gallery is built.
//!
//! - **k-reciprocal re-ranking** ([`k_reciprocal`]): distances that also count how much two
//!   vectors' mutual-neighbour sets overlap.
//!
//! All work on cosine similarity (vectors are normalised first).
//!
//! ```
//! use wtb_search::rerank::{augment_database, expand_queries, Expansion};
//!
//! // Two tight clusters in 2-d; a query between them leans to its nearest cluster.
//! let gallery = [1.0, 0.0, 0.95, 0.31, 0.0, 1.0, 0.31, 0.95];
//! let expansion = Expansion { k: 2, alpha: 3.0 };
//! let augmented = augment_database(&gallery, 2, expansion)?;
//! assert_eq!(augmented.len(), gallery.len());
//! let query = expand_queries(&[0.8, 0.6], &augmented, 2, expansion)?;
//! assert!(query[0] > query[1]);
//! # Ok::<(), wtb_search::SearchError>(())
//! ```

use crate::gallery::check_rows;
use crate::{Filter, Gallery, Index, Metric, Precision, SearchError};

/// The query expansion used by default with a learned head: the two nearest shop photos,
/// weighted by their cosine cubed (the best setting on the dev sets).
pub const DEFAULT_EXPANSION: Expansion = Expansion { k: 2, alpha: 3.0 };

/// αQE against an index: `query` plus its `expansion.k` nearest photos among those `filter`
/// allows, by cosine.
pub fn expand_in_index(
    index: &Index,
    query: &[f32],
    expansion: Expansion,
    filter: &Filter,
) -> Result<Vec<f32>, SearchError> {
    if expansion.k == 0 {
        return Ok(normalized(query, query.len().max(1)));
    }
    let neighbours = index.nearest_photos(query, expansion.k, Metric::Cosine, filter)?;
    let weighted: Vec<(f32, &[f32])> = neighbours
        .iter()
        // Cosine distances: 1 - cosine.
        .map(|(_, distance, vector)| (1.0 - distance, vector.as_slice()))
        .collect();
    Ok(expand_one(query, &weighted, expansion.alpha))
}

/// How many neighbours and how sharply their weights fall with the cosine.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Expansion {
    /// Neighbours added (0: the step does nothing).
    pub k: usize,
    /// Exponent of the cosine weights (0: plain average).
    pub alpha: f32,
}

fn normalized(values: &[f32], dim: usize) -> Vec<f32> {
    let mut out = values.to_vec();
    for row in out.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// `query` plus `neighbours` (cosine, vector) weighted by cosine^α, normalised: one
/// expansion, as [`expand_queries`] does for each of its queries.
pub fn expand_one(query: &[f32], neighbours: &[(f32, &[f32])], alpha: f32) -> Vec<f32> {
    let mut out = normalized(query, query.len().max(1));
    for (similarity, neighbour) in neighbours {
        let weight = similarity.max(0.0).powf(alpha);
        let norm = neighbour.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut()
                .zip(*neighbour)
                .for_each(|(v, g)| *v += weight * g / norm);
        }
    }
    normalized(&out, out.len().max(1))
}

/// Adds to each row of `targets` its neighbours among `gallery` (skipping `skip_self` when
/// the targets are the gallery itself), weighted by cosine^α, and normalises.
fn expand(
    targets: &[f32],
    gallery: &[f32],
    dim: usize,
    expansion: Expansion,
    skip_self: bool,
) -> Result<Vec<f32>, SearchError> {
    let targets = normalized(targets, dim);
    let gallery = normalized(gallery, dim);
    let n_gallery = gallery.len() / dim;
    if expansion.k == 0 || n_gallery == 0 || targets.is_empty() {
        return Ok(targets);
    }
    let matrix = Gallery::new(dim, gallery.clone(), Precision::F32)?;
    let wanted = (expansion.k + usize::from(skip_self)).min(n_gallery);
    let neighbours = matrix.knn_batch(&targets, wanted, Metric::InnerProduct)?;
    let mut out = targets.clone();
    for (t, found) in neighbours.iter().enumerate() {
        let row = &mut out[t * dim..(t + 1) * dim];
        let mut added = 0;
        for n in found {
            if added == expansion.k {
                break;
            }
            if skip_self && n.position == t {
                continue;
            }
            added += 1;
            // The inner product of unit vectors: their cosine.
            let similarity = n.score.max(0.0);
            let weight = similarity.powf(expansion.alpha);
            let neighbour = &gallery[n.position * dim..(n.position + 1) * dim];
            row.iter_mut()
                .zip(neighbour)
                .for_each(|(v, g)| *v += weight * g);
        }
    }
    Ok(normalized(&out, dim))
}

/// αQE: each query (row of `queries`) plus its `k` nearest rows of `gallery`.
pub fn expand_queries(
    queries: &[f32],
    gallery: &[f32],
    dim: usize,
    expansion: Expansion,
) -> Result<Vec<f32>, SearchError> {
    check_rows(queries, dim)?;
    check_rows(gallery, dim)?;
    expand(queries, gallery, dim, expansion, false)
}

/// DBA: each gallery row plus its `k` nearest other rows.
pub fn augment_database(
    gallery: &[f32],
    dim: usize,
    expansion: Expansion,
) -> Result<Vec<f32>, SearchError> {
    check_rows(gallery, dim)?;
    expand(gallery, gallery, dim, expansion, true)
}

/// Settings of k-reciprocal re-ranking.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reciprocal {
    /// Neighbours whose reciprocity is checked (`k1`).
    pub k1: usize,
    /// Neighbours averaged in the local query expansion (`k2`; 1: none).
    pub k2: usize,
    /// Weight of the original distance in the final one (`λ`).
    pub lambda: f32,
}

impl Default for Reciprocal {
    /// The paper's settings: k1 = 20, k2 = 6, λ = 0.3.
    fn default() -> Self {
        Reciprocal {
            k1: 20,
            k2: 6,
            lambda: 0.3,
        }
    }
}

/// k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, CVPR 2017): the distance of a query to
/// a gallery vector mixes their original distance with the Jaccard distance of their
/// k-reciprocal neighbourhoods, computed over queries and gallery together. Returns the final
/// distances, `queries × gallery` row-major, smaller is better.
pub fn k_reciprocal(
    queries: &[f32],
    gallery: &[f32],
    dim: usize,
    settings: Reciprocal,
) -> Result<Vec<f32>, SearchError> {
    check_rows(queries, dim)?;
    check_rows(gallery, dim)?;
    let (nq, ng) = (queries.len() / dim, gallery.len() / dim);
    let mut all = normalized(queries, dim);
    all.extend(normalized(gallery, dim));
    let n = nq + ng;
    if nq == 0 || ng == 0 {
        return Ok(Vec::new());
    }
    // Squared euclidean distances of unit vectors, each column scaled by its largest.
    let matrix = Gallery::new(dim, all.clone(), Precision::F32)?;
    let mut distance = vec![0f32; n * n];
    for (i, found) in matrix
        .knn_batch(&all, n, Metric::InnerProduct)?
        .into_iter()
        .enumerate()
    {
        for neighbour in found {
            distance[i * n + neighbour.position] = (2.0 - 2.0 * neighbour.score).max(0.0);
        }
    }
    for column in 0..n {
        let largest = (0..n)
            .map(|row| distance[row * n + column])
            .fold(0f32, f32::max)
            .max(1e-12);
        for row in 0..n {
            distance[row * n + column] /= largest;
        }
    }
    let row = |i: usize| &distance[i * n..(i + 1) * n];
    let k1 = settings.k1.clamp(1, n - 1);
    let half = (k1 as f32 / 2.0).round() as usize;
    let rank: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let d = row(i);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| d[a].total_cmp(&d[b]).then(a.cmp(&b)));
            order.truncate(k1 + 1);
            order
        })
        .collect();
    let reciprocal = |i: usize, k: usize| -> Vec<usize> {
        rank[i][..(k + 1).min(rank[i].len())]
            .iter()
            .copied()
            .filter(|&c| rank[c][..(k + 1).min(rank[c].len())].contains(&i))
            .collect()
    };
    // Sparse neighbourhood weights, one map per vector.
    let mut weights: Vec<Vec<(usize, f32)>> = Vec::with_capacity(n);
    for i in 0..n {
        let mut set = reciprocal(i, k1);
        for &candidate in set.clone().iter() {
            let around = reciprocal(candidate, half);
            let shared = around.iter().filter(|c| set.contains(c)).count();
            if shared as f32 > 2.0 / 3.0 * around.len() as f32 {
                set.extend(around);
            }
        }
        set.sort_unstable();
        set.dedup();
        let mut entries: Vec<(usize, f32)> = set.iter().map(|&j| (j, (-row(i)[j]).exp())).collect();
        let total: f32 = entries.iter().map(|e| e.1).sum::<f32>().max(1e-12);
        entries.iter_mut().for_each(|e| e.1 /= total);
        weights.push(entries);
    }
    // Local query expansion: each neighbourhood averaged with those of its k2 nearest.
    if settings.k2 > 1 {
        let expanded: Vec<Vec<(usize, f32)>> = (0..n)
            .map(|i| {
                let neighbours = &rank[i][..settings.k2.min(rank[i].len())];
                let mut dense: std::collections::BTreeMap<usize, f32> = Default::default();
                for &j in neighbours {
                    for &(k, w) in &weights[j] {
                        *dense.entry(k).or_default() += w / neighbours.len() as f32;
                    }
                }
                dense.into_iter().collect()
            })
            .collect();
        weights = expanded;
    }
    let mut out = vec![0f32; nq * ng];
    let mut dense = vec![0f32; n];
    for q in 0..nq {
        dense.iter_mut().for_each(|v| *v = 0.0);
        for &(k, w) in &weights[q] {
            dense[k] = w;
        }
        for g in 0..ng {
            let shared: f32 = weights[nq + g].iter().map(|&(k, w)| w.min(dense[k])).sum();
            let jaccard = 1.0 - shared / (2.0 - shared);
            out[q * ng + g] = (1.0 - settings.lambda) * jaccard + settings.lambda * row(q)[nq + g];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_reciprocal_separates_neighbourhoods() {
        // Two tight clusters of three; the query lies in cluster A.
        let gallery = [
            1.0, 0.0, 0.99, 0.14, 0.98, 0.2, // A
            0.0, 1.0, 0.14, 0.99, 0.2, 0.98, // B
        ];
        let query = [0.995, 0.1];
        let settings = Reciprocal {
            k1: 3,
            k2: 1,
            lambda: 0.0,
        };
        let d = k_reciprocal(&query, &gallery, 2, settings).unwrap();
        assert_eq!(d.len(), 6);
        assert!(d.iter().all(|v| (0.0..=1.0).contains(v)), "{d:?}");
        // Cluster B shares no neighbour with the query: Jaccard distance 1.
        assert!(d[3..].iter().all(|&v| (v - 1.0).abs() < 1e-6), "{d:?}");
        assert!(d[..3].iter().all(|&v| v < 0.9), "{d:?}");

        // With λ = 1 the original distances come back, each column scaled by its largest.
        let plain = k_reciprocal(
            &query,
            &gallery,
            2,
            Reciprocal {
                lambda: 1.0,
                ..settings
            },
        )
        .unwrap();
        let all: Vec<[f32; 2]> = std::iter::once([query[0], query[1]])
            .chain(gallery.chunks(2).map(|c| [c[0], c[1]]))
            .map(|v| {
                let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
                [v[0] / n, v[1] / n]
            })
            .collect();
        let squared = |a: [f32; 2], b: [f32; 2]| (2.0 - 2.0 * (a[0] * b[0] + a[1] * b[1])).max(0.0);
        for g in 0..6 {
            let largest = all
                .iter()
                .map(|&x| squared(x, all[g + 1]))
                .fold(0f32, f32::max);
            let expected = squared(all[0], all[g + 1]) / largest;
            assert!(
                (plain[g] - expected).abs() < 1e-5,
                "{g}: {} vs {expected}",
                plain[g]
            );
        }
        assert!(k_reciprocal(&query[..1], &gallery, 2, settings).is_err());
    }

    #[test]
    fn zero_k_only_normalises() {
        let out =
            expand_queries(&[3.0, 4.0], &[1.0, 0.0], 2, Expansion { k: 0, alpha: 1.0 }).unwrap();
        assert_eq!(out, vec![0.6, 0.8]);
    }

    #[test]
    fn expansion_weights_neighbours_by_cosine_power() {
        let gallery = [1.0, 0.0, 0.0, 1.0];
        let out = expand_queries(&[0.6, 0.8], &gallery, 2, Expansion { k: 2, alpha: 1.0 }).unwrap();
        // q + 0.6·e1 + 0.8·e2 = (1.2, 1.6), normalised.
        assert!((out[0] - 0.6).abs() < 1e-6 && (out[1] - 0.8).abs() < 1e-6);
        let out = expand_queries(&[0.6, 0.8], &gallery, 2, Expansion { k: 1, alpha: 1.0 }).unwrap();
        // q + 0.8·e2 = (0.6, 1.6).
        let norm = (0.36f32 + 2.56).sqrt();
        assert!((out[0] - 0.6 / norm).abs() < 1e-6 && (out[1] - 1.6 / norm).abs() < 1e-6);
    }

    #[test]
    fn augmentation_skips_each_vector_itself() {
        let gallery = [1.0, 0.0, 0.0, 1.0];
        let out = augment_database(&gallery, 2, Expansion { k: 1, alpha: 1.0 }).unwrap();
        // Orthogonal neighbours weigh 0: nothing changes.
        assert_eq!(out, gallery.to_vec());
        let err = augment_database(&gallery[..3], 2, Expansion { k: 1, alpha: 1.0 });
        assert!(err.is_err());
    }
}

//! Query-time and gallery-side steps that refine descriptors with their neighbours, from the
//! instance-retrieval literature (Radenović, Tolias and Chum, TPAMI 2018, section 3.4):
//!
//! - **α-weighted query expansion** (αQE): a query is replaced by the normalised sum of itself
//!   and its `k` nearest gallery vectors, each weighted by its cosine raised to `α`;
//! - **database-side augmentation** (DBA): the same applied to every gallery vector with its
//!   own nearest neighbours in the gallery, done once when the gallery is built.
//!
//! Both work on cosine similarity (vectors are normalised first).
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

fn check(values: &[f32], dim: usize) -> Result<(), SearchError> {
    if dim == 0 {
        return Err(SearchError::ZeroDimension);
    }
    if !values.len().is_multiple_of(dim) {
        return Err(SearchError::RaggedMatrix {
            values: values.len(),
            dim,
        });
    }
    Ok(())
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
    check(queries, dim)?;
    check(gallery, dim)?;
    expand(queries, gallery, dim, expansion, false)
}

/// DBA: each gallery row plus its `k` nearest other rows.
pub fn augment_database(
    gallery: &[f32],
    dim: usize,
    expansion: Expansion,
) -> Result<Vec<f32>, SearchError> {
    check(gallery, dim)?;
    expand(gallery, gallery, dim, expansion, true)
}

#[cfg(test)]
mod tests {
    use super::*;

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

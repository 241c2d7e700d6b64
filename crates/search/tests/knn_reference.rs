//! Exact k-NN and per-product dedup against naive references (property tests).

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use wtb_search::{
    rank_key, Filter, Gallery, Index, Metric, PhotoRecord, Precision, SearchMode, SearchRequest,
    VectorSearch,
};

/// Plain sequential formulas of scipy's cdist (and the inner product), independent of the
/// crate's kernels.
fn naive_score(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let sq: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    match metric {
        Metric::Cosine => {
            let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            if na == 0.0 || nb == 0.0 {
                1.0
            } else {
                1.0 - dot / (na * nb)
            }
        }
        Metric::Euclidean => sq.sqrt(),
        Metric::SqEuclidean => sq,
        Metric::InnerProduct => dot,
        Metric::Manhattan => a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum(),
        Metric::Chebyshev => a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max),
    }
}

/// Full sort of every row by (rank key, position), then the first k.
fn naive_knn(metric: Metric, rows: &[Vec<f32>], query: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut all: Vec<(u32, usize, f32)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = naive_score(metric, query, r);
            (rank_key(metric, s), i, s)
        })
        .collect();
    all.sort_by_key(|&(key, pos, _)| (key, pos));
    all.into_iter()
        .take(k)
        .map(|(_, pos, s)| (pos, s))
        .collect()
}

fn metric_strategy() -> impl Strategy<Value = Metric> {
    prop::sample::select(Metric::ALL.to_vec())
}

/// Small integers: every sum is exact in f32 (and every value exact in f16), so the fast paths
/// must agree with the reference bit for bit, and ties, duplicates and zero vectors are common.
fn int_matrix(
    max_rows: usize,
    max_dim: usize,
) -> impl Strategy<Value = (usize, Vec<Vec<f32>>, Vec<Vec<f32>>)> {
    (1..=max_dim, 0..=max_rows, 1..=6usize).prop_flat_map(|(dim, n, q)| {
        let row = prop::collection::vec((-3i8..=3).prop_map(f32::from), dim);
        (
            Just(dim),
            prop::collection::vec(row.clone(), n),
            prop::collection::vec(row, q),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn exact_knn_equals_naive_on_integer_data(
        (dim, rows, queries) in int_matrix(80, 24),
        metric in metric_strategy(),
        k in 0usize..100,
        half in any::<bool>(),
    ) {
        let precision = if half { Precision::F16 } else { Precision::F32 };
        let gallery = Gallery::new(dim, rows.concat(), precision).unwrap();
        let found = gallery.knn_batch(&queries.concat(), k, metric).unwrap();
        prop_assert_eq!(found.len(), queries.len());
        for (query, got) in queries.iter().zip(&found) {
            let want = naive_knn(metric, &rows, query, k);
            let got: Vec<(usize, f32)> = got.iter().map(|n| (n.position, n.score)).collect();
            prop_assert_eq!(got, want);
        }
        // A single query gives the same answer as the same query inside a batch.
        let single = gallery.knn(&queries[0], k, metric).unwrap();
        let single: Vec<usize> = single.iter().map(|n| n.position).collect();
        let batched: Vec<usize> = found[0].iter().map(|n| n.position).collect();
        prop_assert_eq!(single, batched);
    }

    #[test]
    fn exact_knn_scores_match_naive_on_float_data(
        dim in 1usize..70,
        n in 0usize..600,
        q in 1usize..6,
        metric in metric_strategy(),
        k in 1usize..20,
        seed in any::<u64>(),
    ) {
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let rows: Vec<Vec<f32>> = (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let queries: Vec<Vec<f32>> = (0..q).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let gallery = Gallery::new(dim, rows.concat(), Precision::F32).unwrap();
        let found = gallery.knn_batch(&queries.concat(), k, metric).unwrap();
        for (query, got) in queries.iter().zip(&found) {
            let want = naive_knn(metric, &rows, query, k);
            prop_assert_eq!(got.len(), want.len());
            for (g, (pos, score)) in got.iter().zip(&want) {
                // Summation order differs (GEMM blocks, vector lanes): compare with tolerance,
                // and check the returned row really has the score it claims.
                let tol = 1e-4 * (1.0 + score.abs()) * (dim as f32).sqrt();
                prop_assert!((g.score - score).abs() <= tol, "rank score {} vs {} (row {pos})", g.score, score);
                let own = naive_score(metric, query, &rows[g.position]);
                prop_assert!((g.score - own).abs() <= tol);
            }
        }
    }

    #[test]
    fn dedup_equals_full_sort_then_first_photo_per_product(
        (dim, rows, queries) in int_matrix(70, 8),
        products in prop::collection::vec((0u8..2, 0u64..6), 70),
        metric in metric_strategy(),
        k in 0usize..15,
        only_category in prop::option::of(0u8..2),
    ) {
        let categories = ["bags", "hats"];
        let records: Vec<PhotoRecord> = (0..rows.len())
            .map(|i| PhotoRecord {
                category: categories[products[i].0 as usize].to_string(),
                product: products[i].1,
                photo: 1000 + i as u64,
            })
            .collect();
        let mut index = Index::new(dim, Precision::F32, BTreeMap::new()).unwrap();
        // Two segments, to cover merging across segments.
        let half = rows.len() / 2;
        index.add(&records[..half], &rows[..half].concat()).unwrap();
        index.add(&records[half..], &rows[half..].concat()).unwrap();
        let mut filter = Filter::default();
        if let Some(c) = only_category {
            filter.categories.insert(categories[c as usize].to_string());
        }
        let request = SearchRequest { k, metric, filter: filter.clone(), mode: SearchMode::Exact };
        for query in &queries {
            let hits = index.search(query, &request).unwrap();
            let mut seen = HashSet::new();
            let want: Vec<(String, u64, u64, f32)> = naive_knn(metric, &rows, query, rows.len())
                .into_iter()
                .filter(|(pos, _)| filter.allows(&records[*pos].category, records[*pos].product))
                .filter(|(pos, _)| seen.insert((records[*pos].category.clone(), records[*pos].product)))
                .take(k)
                .map(|(pos, s)| (records[pos].category.clone(), records[pos].product, records[pos].photo, s))
                .collect();
            let got: Vec<(String, u64, u64, f32)> = hits
                .into_iter()
                .map(|h| (h.category, h.product, h.photo, h.score))
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn rejects_bad_shapes_without_panicking() {
    assert!(Gallery::new(0, vec![], Precision::F32).is_err());
    assert!(Gallery::new(3, vec![1.0; 7], Precision::F32).is_err());
    let gallery = Gallery::new(3, vec![1.0; 9], Precision::F32).unwrap();
    assert!(gallery.knn(&[1.0, 2.0], 3, Metric::Cosine).is_err());
    assert!(gallery
        .knn(&[1.0, 2.0, 3.0], 0, Metric::Cosine)
        .unwrap()
        .is_empty());
}

#[test]
fn nan_rows_rank_last() {
    let gallery = Gallery::new(2, vec![f32::NAN, 0.0, 1.0, 1.0, 5.0, 5.0], Precision::F32).unwrap();
    for metric in Metric::ALL {
        for queries in [vec![1.0, 1.0], [1.0f32, 1.0].repeat(5)] {
            let found = gallery.knn_batch(&queries, 3, metric).unwrap();
            assert_eq!(found[0][2].position, 0, "{metric}");
            assert!(found[0][2].score.is_nan(), "{metric}");
        }
    }
}

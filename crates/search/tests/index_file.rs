//! Index life cycle: segments, tombstones, compaction, files, refusal of bad files, HNSW.

use std::collections::BTreeMap;
use std::path::Path;

use wtb_search::{
    Filter, Index, Metric, PhotoRecord, Precision, ProductHit, SearchError, SearchMode,
    SearchRequest, VectorSearch,
};

const DIM: usize = 16;

fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("model".to_string(), "mobilenet_v2".to_string()),
        ("dim".to_string(), DIM.to_string()),
        ("weights_sha256".to_string(), "b0353104".to_string()),
    ])
}

/// Deterministic small-integer vectors (exact arithmetic, so every path gives equal scores).
fn vector(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DIM)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 9) as f32 - 4.0
        })
        .collect()
}

fn photos(range: std::ops::Range<u64>) -> (Vec<PhotoRecord>, Vec<f32>) {
    let records = range
        .clone()
        .map(|photo| PhotoRecord {
            category: if photo % 3 == 0 { "bags" } else { "hats" }.to_string(),
            product: photo / 4,
            photo,
        })
        .collect();
    let vectors = range.flat_map(vector).collect();
    (records, vectors)
}

fn all_answers(index: &Index) -> Vec<Vec<ProductHit>> {
    let queries: Vec<f32> = (5000..5020).flat_map(vector).collect();
    let mut answers = Vec::new();
    for metric in Metric::ALL {
        let request = SearchRequest {
            k: 7,
            metric,
            filter: Filter::default(),
            mode: SearchMode::Exact,
        };
        answers.extend(index.search_batch(&queries, &request).unwrap());
        let mut filtered = request.clone();
        filtered.filter.categories.insert("bags".to_string());
        answers.push(index.search(&queries[..DIM], &filtered).unwrap());
    }
    answers
}

#[test]
fn add_remove_compact_reload_equals_fresh_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gallery.wtbindex");
    let mut index = Index::new(DIM, Precision::F32, meta()).unwrap();
    let (r1, v1) = photos(0..300);
    let (r2, v2) = photos(300..700);
    index.add(&r1, &v1).unwrap();
    index.add(&r2, &v2).unwrap();
    let removed_products: Vec<(String, u64)> = vec![
        ("hats".into(), 10),
        ("bags".into(), 90),
        ("bags".into(), 11),
    ];
    let removed = index.remove_products(&removed_products).unwrap();
    assert!(removed > 0);
    assert_eq!(index.remove_photos(&[5, 6, 650]).unwrap(), 3);
    index.save(&path).unwrap();

    let keep = |r: &PhotoRecord| {
        !removed_products.contains(&(r.category.clone(), r.product))
            && ![5, 6, 650].contains(&r.photo)
    };
    let (all_records, all_vectors) = photos(0..700);
    let mut fresh = Index::new(DIM, Precision::F32, meta()).unwrap();
    let kept: Vec<usize> = (0..700).filter(|&i| keep(&all_records[i])).collect();
    let records: Vec<PhotoRecord> = kept.iter().map(|&i| all_records[i].clone()).collect();
    let vectors: Vec<f32> = kept
        .iter()
        .flat_map(|&i| all_vectors[i * DIM..(i + 1) * DIM].to_vec())
        .collect();
    fresh.add(&records, &vectors).unwrap();
    let expected = all_answers(&fresh);

    assert_eq!(all_answers(&index), expected, "in memory, with tombstones");
    let reloaded = Index::load(&path, Some(&meta())).unwrap();
    assert_eq!(reloaded.len(), kept.len());
    assert_eq!(reloaded.info().segments.len(), 2);
    assert_eq!(
        all_answers(&reloaded),
        expected,
        "reloaded, with tombstones"
    );

    let mut compacted = reloaded;
    compacted.compact().unwrap();
    assert_eq!(compacted.info().segments.len(), 1);
    assert_eq!(compacted.info().deleted, 0);
    compacted.save(&path).unwrap();
    let reloaded = Index::load(&path, Some(&meta())).unwrap();
    assert_eq!(all_answers(&reloaded), expected, "compacted and reloaded");
    assert_eq!(reloaded.records(), records);
}

#[test]
fn f16_storage_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.wtbindex");
    let (records, vectors) = photos(0..100);
    let mut index = Index::new(DIM, Precision::F16, meta()).unwrap();
    index.add(&records, &vectors).unwrap();
    index.save(&path).unwrap();
    let reloaded = Index::load(&path, None).unwrap();
    assert_eq!(reloaded.precision(), Precision::F16);
    assert_eq!(all_answers(&reloaded), all_answers(&index));
}

#[test]
fn duplicate_photos_are_refused() {
    let (records, vectors) = photos(0..10);
    let mut index = Index::new(DIM, Precision::F32, meta()).unwrap();
    index.add(&records, &vectors).unwrap();
    let err = index
        .add(&records[3..4], &vectors[3 * DIM..4 * DIM])
        .unwrap_err();
    assert!(
        matches!(err, SearchError::DuplicatePhoto { photo: 3, .. }),
        "{err}"
    );
    assert!(index.add(&records[..2], &vectors[..DIM]).is_err());
    assert_eq!(index.len(), 10);
}

fn saved(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("index.wtbindex");
    let (records, vectors) = photos(0..50);
    let mut index = Index::new(DIM, Precision::F32, meta()).unwrap();
    index.add(&records, &vectors).unwrap();
    index.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn load_error(path: &Path) -> String {
    Index::load(path, Some(&meta())).unwrap_err().to_string()
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = saved(dir.path());
    for len in [0, 10, 40, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let message = load_error(&path);
        assert!(
            message.contains("not a valid index file"),
            "{len}: {message}"
        );
        assert!(message.contains("index.wtbindex"), "{message}");
        assert!(message.contains("truncated"), "{len}: {message}");
    }
}

#[test]
fn corrupted_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = saved(dir.path());
    let mut flipped = bytes.clone();
    let at = bytes.len() / 2; // inside the matrix
    flipped[at] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(load_error(&path).contains("checksum mismatch"));

    let mut other_version = bytes.clone();
    other_version[8] = 99;
    std::fs::write(&path, &other_version).unwrap();
    assert!(load_error(&path).contains("format version 99"));

    std::fs::write(&path, b"this is not an index file at all, just text").unwrap();
    assert!(load_error(&path).contains("signature"));
}

#[test]
fn model_mismatch_is_refused_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved(dir.path());
    let mut expected = meta();
    expected.insert("model".into(), "resnet50".into());
    expected.insert("pooling".into(), "gap".into());
    let err = Index::load(&path, Some(&expected)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SearchError::MetadataMismatch { .. }));
    assert!(
        message.contains(r#"model: index has "mobilenet_v2", expected "resnet50""#),
        "{message}"
    );
    assert!(
        message.contains(r#"pooling: index has <none>, expected "gap""#),
        "{message}"
    );
    assert!(!message.contains("weights_sha256"), "{message}");
}

/// Clustered float vectors: centres plus noise.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..20)
        .map(|_| (0..dim).map(|_| next()).collect())
        .collect();
    (0..n)
        .flat_map(|i| {
            let c = &centres[i % centres.len()];
            c.iter().map(|x| x + 0.3 * next()).collect::<Vec<f32>>()
        })
        .collect()
}

#[test]
fn hnsw_is_kept_in_step_through_add_remove_compact_reload() {
    let dim = 32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ann.wtbindex");
    let vectors = clustered(3000, dim, 9);
    let records: Vec<PhotoRecord> = (0..3000u64)
        .map(|photo| PhotoRecord {
            category: "tops".into(),
            product: photo,
            photo,
        })
        .collect();
    let mut index = Index::new(dim, Precision::F32, meta()).unwrap();
    index.add(&records[..2000], &vectors[..2000 * dim]).unwrap();
    index.build_approximate().unwrap();
    index.add(&records[2000..], &vectors[2000 * dim..]).unwrap();
    let gone: Vec<(String, u64)> = (0..3000)
        .step_by(3)
        .map(|p| ("tops".to_string(), p))
        .collect();
    index.remove_products(&gone).unwrap();

    let recall = |index: &Index| {
        let queries = clustered(50, dim, 77);
        let exact = SearchRequest {
            mode: SearchMode::Exact,
            ..SearchRequest::new(10, Metric::Cosine)
        };
        let approximate = SearchRequest {
            mode: SearchMode::Approximate,
            ..exact.clone()
        };
        let mut hits = 0;
        for q in queries.chunks(dim) {
            let truth = index.search(q, &exact).unwrap();
            let found = index.search(q, &approximate).unwrap();
            assert!(
                found.iter().all(|h| h.product % 3 != 0),
                "removed product returned"
            );
            hits += found.iter().filter(|h| truth.contains(h)).count();
        }
        hits as f64 / 500.0
    };
    assert!(recall(&index) >= 0.95, "recall {}", recall(&index));
    index.compact().unwrap();
    assert!(
        recall(&index) >= 0.95,
        "after compaction: {}",
        recall(&index)
    );
    index.save(&path).unwrap();
    let reloaded = Index::load(&path, Some(&meta())).unwrap();
    assert!(reloaded.has_approximate());
    assert!(
        recall(&reloaded) >= 0.95,
        "after reload: {}",
        recall(&reloaded)
    );
    let manhattan = SearchRequest {
        mode: SearchMode::Approximate,
        ..SearchRequest::new(10, Metric::Manhattan)
    };
    assert!(reloaded.search(&vectors[..dim], &manhattan).is_err());
}

#[test]
fn product_vectors_come_back_from_every_segment_but_not_once_deleted() {
    let mut index = Index::new(DIM, Precision::F32, meta()).unwrap();
    let (records, vectors) = photos(0..40);
    index.add(&records, &vectors).unwrap();
    let (records, vectors) = photos(40..80);
    index.add(&records, &vectors).unwrap();
    let want = |photos: &[u64]| -> Vec<(u64, Vec<f32>)> {
        photos.iter().map(|&p| (p, vector(p))).collect()
    };
    // Product 9 (photos 36..40, every third a bag) ends the first segment.
    assert_eq!(index.product_vectors("hats", 9), want(&[37, 38]));
    assert_eq!(index.product_vectors("bags", 9), want(&[36, 39]));
    // Product 10 (photos 40..44) is in the second segment.
    assert_eq!(index.product_vectors("hats", 10), want(&[40, 41, 43]));
    assert_eq!(index.product_vectors("bags", 10), want(&[42]));
    index.remove_photos(&[41]).unwrap();
    assert_eq!(index.product_vectors("hats", 10), want(&[40, 43]));
    assert!(index.product_vectors("shoes", 10).is_empty());
    assert!(index.product_vectors("hats", 999).is_empty());
}

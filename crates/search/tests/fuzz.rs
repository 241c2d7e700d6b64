//! Fuzzing of the index file reader: random bytes, truncations and bit flips of a real index
//! file (caught by the checksum), the same mutations with the checksum recomputed (so that
//! they reach the section readers), and headers whose numbers are set to extreme values. Each
//! file must load or be refused with an error; a loaded index must answer searches. Never a
//! panic or a runaway allocation. `WTB_FUZZ_SECONDS` makes a long run
//! (`benches/fuzz_long.sh`).

use std::collections::BTreeMap;

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use wtb_search::{
    Filter, Index, Metric, PhotoRecord, Precision, SearchMode, SearchRequest, VectorSearch,
};
use wtb_testdata::fuzz::{fuzz, mutate, mutations};

const CASES: u32 = 256;
const DIM: usize = 8;
const ALIGN: usize = 64;

/// A small index file with two segments, a tombstone and an HNSW graph.
fn index_file(precision: Precision) -> Vec<u8> {
    let meta = BTreeMap::from([("model".to_string(), "fuzz".to_string())]);
    let mut index = Index::new(DIM, precision, meta).unwrap();
    for segment in 0..2u64 {
        let records: Vec<PhotoRecord> = (0..40u64)
            .map(|i| PhotoRecord {
                category: ["bags", "hats", "belts"][(i % 3) as usize].to_string(),
                product: (segment * 40 + i) / 3,
                photo: segment * 40 + i,
            })
            .collect();
        let vectors: Vec<f32> = (0..40 * DIM)
            .map(|i| ((i as u64 * 2_654_435_761 + segment) % 17) as f32 - 8.0)
            .collect();
        index.add(&records, &vectors).unwrap();
    }
    index.remove_photos(&[3]).unwrap();
    index.build_approximate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.wtbindex");
    index.save(&path).unwrap();
    std::fs::read(&path).unwrap()
}

/// Recomputes the checksum (the last 32 bytes) of a mutated file.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() < 32 {
        return bytes;
    }
    let body = bytes.len() - 32;
    let digest = Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&digest);
    bytes
}

/// The file with one number of its JSON header (the `pick`-th, in document order) replaced by
/// `value`, the header re-laid out and the file length and checksum made consistent, so that
/// only the changed number can be wrong.
fn with_header_number(file: &[u8], pick: usize, value: u64) -> Vec<u8> {
    let header_len = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let data_start = (16 + header_len).div_ceil(ALIGN) * ALIGN;
    let mut header: serde_json::Value = serde_json::from_slice(&file[16..16 + header_len]).unwrap();
    let mut numbers = Vec::new();
    collect_number_paths(&header, &mut Vec::new(), &mut numbers);
    let path = &numbers[pick % numbers.len()];
    if path.last().map(String::as_str) != Some("file_len") {
        *pointer(&mut header, path) = serde_json::Value::from(value);
    }
    let data = &file[data_start..];
    for extra_blocks in 0..8 {
        let new_start = data_start + extra_blocks * ALIGN;
        let total = new_start + data.len();
        header["file_len"] = serde_json::Value::from(total);
        let mut json = serde_json::to_vec(&header).unwrap();
        if 16 + json.len() > new_start {
            continue;
        }
        json.resize(new_start - 16, b' ');
        let mut out = file[..12].to_vec();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(data);
        return reseal(out);
    }
    unreachable!("a header grows by far less than 8 alignment blocks")
}

fn collect_number_paths(
    value: &serde_json::Value,
    at: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    match value {
        serde_json::Value::Number(_) => out.push(at.clone()),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                at.push(i.to_string());
                collect_number_paths(item, at, out);
                at.pop();
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, item) in fields {
                at.push(key.clone());
                collect_number_paths(item, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn pointer<'a>(value: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    path.iter().fold(value, |v, key| match v {
        serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
        other => &mut other[key.as_str()],
    })
}

/// Loads `bytes` as an index file; a loaded index must answer every kind of search.
fn check(dir: &std::path::Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("mutated.wtbindex");
    std::fs::write(&path, bytes).unwrap();
    match Index::load(&path, None) {
        Ok(index) => {
            let query = vec![0.5f32; index.info().dim];
            for mode in [SearchMode::Exact, SearchMode::Approximate] {
                let request = SearchRequest {
                    k: 5,
                    metric: Metric::Cosine,
                    filter: Filter::default(),
                    mode,
                };
                let _ = index.search(&query, &request);
            }
            let _ = index.records();
        }
        Err(error) => prop_assert!(error.to_string().contains("mutated.wtbindex"), "{error}"),
    }
    Ok(())
}

#[test]
fn index_files_with_random_damage() {
    let dir = tempfile::tempdir().unwrap();
    let files = [index_file(Precision::F32), index_file(Precision::F16)];
    fuzz(
        "index file (raw damage)",
        CASES,
        (0..2usize, mutations()),
        |(which, changes)| check(dir.path(), &mutate(&files[which], &changes)),
    );
}

#[test]
fn index_files_with_damage_past_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let files = [index_file(Precision::F32), index_file(Precision::F16)];
    fuzz(
        "index file (resealed damage)",
        CASES,
        (0..2usize, mutations()),
        |(which, changes)| check(dir.path(), &reseal(mutate(&files[which], &changes))),
    );
}

#[test]
fn index_files_with_extreme_header_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let files = [index_file(Precision::F32), index_file(Precision::F16)];
    let extreme = prop_oneof![
        Just(0u64),
        Just(1),
        Just(63),
        Just(1 << 31),
        Just(1 << 32),
        Just(1 << 61),
        Just(u64::MAX / 8 + 1),
        Just(u64::MAX),
        0u64..100_000,
    ];
    fuzz(
        "index file (header numbers)",
        CASES,
        (0..2usize, any::<usize>(), extreme),
        |(which, pick, value)| check(dir.path(), &with_header_number(&files[which], pick, value)),
    );
}

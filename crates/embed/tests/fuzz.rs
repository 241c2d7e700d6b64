//! Fuzzing of the embeddings and head file readers: random damage anywhere in a real file and
//! damage confined to its safetensors header (where counts, shapes and offsets live). Each file
//! must load or be refused with an error naming it; a loaded head must apply without a panic.
//! `WTB_FUZZ_SECONDS` makes a long run (`benches/fuzz_long.sh`).

use proptest::prelude::*;
use wtb_embed::{load_embeddings, save_embeddings, EmbeddingMeta, Head, HeadMeta};
use wtb_testdata::fuzz::{fuzz, mutate, mutations, Mutation};

const CASES: u32 = 256;
const DIM: usize = 12;

fn embedding_meta() -> EmbeddingMeta {
    EmbeddingMeta {
        model: "mobilenet_v2".into(),
        weights_sha256: "b0353104".into(),
        preprocess: "squash".into(),
        pooling: "avg".into(),
        l2_normalized: true,
        dim: DIM,
        head: None,
    }
}

fn embeddings_file(f16: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.safetensors");
    let ids: Vec<String> = (0..5).map(|i| format!("photo-{i}")).collect();
    let vectors: Vec<f32> = (0..5 * DIM).map(|i| (i % 7) as f32 / 7.0).collect();
    save_embeddings(&path, &embedding_meta(), &ids, &vectors, f16).unwrap();
    std::fs::read(&path).unwrap()
}

fn head_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    let meta = HeadMeta {
        kind: "whitening".into(),
        model: "mobilenet_v2".into(),
        weights_sha256: "b0353104".into(),
        preprocess: "squash".into(),
        pooling: "avg".into(),
        input_dim: DIM,
        blocks: vec![DIM],
        shop_trim: true,
        training_data: "fuzz".into(),
        seed: 7,
        details: "{}".into(),
    };
    let mean: Vec<f32> = (0..DIM).map(|i| i as f32 / 100.0).collect();
    let projection: Vec<f32> = (0..6 * DIM).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
    Head::new(meta, 0.5, 0.25, mean, projection)
        .unwrap()
        .save(&path)
        .unwrap();
    std::fs::read(&path).unwrap()
}

/// The length of a safetensors file's header (its 8-byte length plus the JSON).
fn header_span(file: &[u8]) -> usize {
    let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    (8 + len).min(file.len())
}

/// Mutations confined to the first `span` bytes.
fn in_header(changes: &[Mutation], span: usize) -> Vec<Mutation> {
    changes
        .iter()
        .map(|m| match m {
            Mutation::FlipBits(flips) => {
                Mutation::FlipBits(flips.iter().map(|(p, b)| (p % span, *b)).collect())
            }
            Mutation::Overwrite(p, bytes) => Mutation::Overwrite(p % span, bytes.clone()),
            Mutation::Insert(p, bytes) => Mutation::Insert(p % span, bytes.clone()),
            Mutation::Extreme(p, v) => Mutation::Extreme(p % span, *v),
            other => other.clone(),
        })
        .collect()
}

#[test]
fn embeddings_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated.safetensors");
    let files = [embeddings_file(false), embeddings_file(true)];
    let expected = embedding_meta();
    fuzz(
        "embeddings file",
        CASES,
        (0..2usize, mutations(), any::<bool>()),
        |(which, changes, header_only)| {
            let base = &files[which];
            let changes = if header_only {
                in_header(&changes, header_span(base))
            } else {
                changes
            };
            std::fs::write(&path, mutate(base, &changes)).unwrap();
            for expected in [None, Some(&expected)] {
                match load_embeddings(&path, expected) {
                    Ok((meta, ids, vectors)) => {
                        prop_assert_eq!(vectors.len(), ids.len() * meta.dim)
                    }
                    Err(e) => prop_assert!(e.to_string().contains("mutated"), "{}", e),
                }
            }
            Ok(())
        },
    );
}

#[test]
fn head_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated.safetensors");
    let base = head_file();
    let span = header_span(&base);
    fuzz(
        "head file",
        CASES,
        (mutations(), any::<bool>()),
        |(changes, header_only)| {
            let changes = if header_only {
                in_header(&changes, span)
            } else {
                changes
            };
            std::fs::write(&path, mutate(&base, &changes)).unwrap();
            match Head::load(&path) {
                Ok(head) => {
                    let vectors = vec![0.25f32; head.input_dim() * 2];
                    let _ = head.apply(&vectors);
                }
                Err(e) => prop_assert!(e.to_string().contains("mutated"), "{}", e),
            }
            Ok(())
        },
    );
}

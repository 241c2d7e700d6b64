//! An on-disk cache of embeddings, in chunks: a long embedding run that is interrupted resumes
//! from the chunks already written, and a rerun with the same model, weights, preprocessing,
//! pooling and images reads them instead of running the model. A chunk whose key (all of
//! those, the images, their boxes and flips) does not match is recomputed, never used.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{load_embeddings, save_embeddings, EmbedError, Embedder, EmbeddingMeta, ImageJob};

/// Images per cache file: the unit of resumption.
const CACHE_CHUNK: usize = 256;
/// Version of the cache file layout (part of the key).
const CACHE_VERSION: u32 = 1;

/// Vectors by id, with the ids that could not be embedded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachedVectors {
    /// Vector length.
    pub dim: usize,
    /// Row of each id in `values`.
    pub rows: HashMap<String, usize>,
    /// Row-major vectors.
    pub values: Vec<f32>,
    /// Ids that could not be embedded, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl CachedVectors {
    /// The vector of `id`, if it was embedded.
    pub fn get(&self, id: &str) -> Option<&[f32]> {
        self.rows
            .get(id)
            .map(|&r| &self.values[r * self.dim..(r + 1) * self.dim])
    }
}

/// What a cache chunk remembers besides the vectors.
#[derive(Serialize, Deserialize)]
struct ChunkSidecar {
    format: String,
    version: u32,
    key: String,
    skipped: Vec<(String, String)>,
}

fn chunk_key(meta: &EmbeddingMeta, role: &str, jobs: &[ImageJob]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("wtb-eval cache v{CACHE_VERSION}\n{role}\n").as_bytes());
    for (k, v) in meta.to_map() {
        hasher.update(format!("{k}={v}\n").as_bytes());
    }
    for job in jobs {
        hasher.update(format!("{}\t{}", job.id, job.path.display()).as_bytes());
        if let Some((b, margin)) = job.crop {
            for v in [b.left, b.top, b.width, b.height, margin] {
                hasher.update(v.to_le_bytes());
            }
        }
        // Only flipped jobs add to the key, so caches written before flips existed still match.
        if job.flip {
            hasher.update(b"\tflip");
        }
        if job.trim {
            hasher.update(b"\ttrim");
        }
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Embeds `jobs` with `embedder`, chunk by chunk, reusing every chunk already cached under
/// `cache_dir` (one subfolder per model, weights, preprocessing and pooling). `role` names the
/// set (`gallery`, `queries`...) in file names and keys. `progress(done, total)` follows.
pub fn embed_cached(
    embedder: &Embedder,
    jobs: &[ImageJob],
    role: &str,
    cache_dir: &Path,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<CachedVectors, EmbedError> {
    let meta = embedder.meta();
    let mut folder_name = format!(
        "{}-{}-{}-{}",
        meta.model,
        &meta.weights_sha256.chars().take(12).collect::<String>(),
        meta.preprocess,
        meta.pooling.replace(':', "_")
    );
    if let Some(head) = &meta.head {
        folder_name.push('-');
        folder_name.push_str(head);
    }
    let folder = cache_dir.join(folder_name);
    std::fs::create_dir_all(&folder).map_err(|source| EmbedError::Io {
        path: folder.clone(),
        source,
    })?;
    let mut out = CachedVectors {
        dim: meta.dim,
        ..CachedVectors::default()
    };
    let total = jobs.len();
    let mut done = 0;
    progress(0, total);
    for chunk in jobs.chunks(CACHE_CHUNK) {
        let key = chunk_key(meta, role, chunk);
        let vectors_path = folder.join(format!("{role}-{}.safetensors", &key[..24]));
        let sidecar_path = folder.join(format!("{role}-{}.json", &key[..24]));
        let (ids, values, skipped) = match read_chunk(&vectors_path, &sidecar_path, meta, &key) {
            Some(cached) => cached,
            None => {
                let base = done;
                let outcome =
                    embedder.embed_jobs(chunk, batch.max(1), &|d, _| progress(base + d, total))?;
                save_embeddings(&vectors_path, meta, &outcome.ids, &outcome.vectors, false)?;
                let sidecar = ChunkSidecar {
                    format: "wtb-eval-cache".into(),
                    version: CACHE_VERSION,
                    key: key.clone(),
                    skipped: outcome.skipped.clone(),
                };
                let text = serde_json::to_vec(&sidecar)
                    .map_err(|e| EmbedError::InvalidArgument(format!("cache sidecar: {e}")))?;
                crate::store::write_atomically(&sidecar_path, &text)?;
                (outcome.ids, outcome.vectors, outcome.skipped)
            }
        };
        for (i, id) in ids.into_iter().enumerate() {
            out.rows.insert(id, out.values.len() / meta.dim.max(1));
            out.values
                .extend_from_slice(&values[i * meta.dim..(i + 1) * meta.dim]);
        }
        out.skipped.extend(skipped);
        done += chunk.len();
        progress(done, total);
    }
    Ok(out)
}

/// A cached chunk, when both files are present and match `meta` and `key`.
#[allow(clippy::type_complexity)]
fn read_chunk(
    vectors_path: &Path,
    sidecar_path: &Path,
    meta: &EmbeddingMeta,
    key: &str,
) -> Option<(Vec<String>, Vec<f32>, Vec<(String, String)>)> {
    let sidecar: ChunkSidecar = serde_json::from_slice(&std::fs::read(sidecar_path).ok()?).ok()?;
    if sidecar.key != key || sidecar.version != CACHE_VERSION {
        return None;
    }
    let (_, ids, values) = load_embeddings(vectors_path, Some(meta)).ok()?;
    if values.len() != ids.len() * meta.dim {
        return None;
    }
    Some((ids, values, sidecar.skipped))
}

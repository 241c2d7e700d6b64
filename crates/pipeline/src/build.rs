//! Building a catalogue index from label files and shop photos, resumable after interruption.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use wtb_dataset::{photo_path, Category, Exclusions, Labels, PhotoId, ProductKey};
use wtb_embed::{load_embeddings, save_embeddings, Embedder, ImageJob};
use wtb_search::{Index, PhotoRecord, Precision};

use crate::PipelineError;

/// What to index and how.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// The street2shop label folder (`retrieval_<category>.json` files).
    pub labels: PathBuf,
    /// The photo folder (`<photo>.jpg`).
    pub photos: PathBuf,
    /// The index file to write.
    pub index: PathBuf,
    /// Only these categories (empty: every category of the labels).
    pub categories: Vec<String>,
    /// Shop photos to leave out: an exclusion file written by `wtb-dataset`
    /// ([`Exclusions::save`](wtb_dataset::Exclusions::save)).
    pub exclusions: Option<PathBuf>,
    /// Photos per model batch.
    pub batch_size: usize,
    /// Photos embedded between two checkpoints.
    pub checkpoint_every: usize,
    /// Where partial work (an embeddings file) is saved; `None`: the index path with
    /// `.partial` appended.
    pub checkpoint: Option<PathBuf>,
    /// How vectors are stored.
    pub precision: Precision,
}

impl BuildOptions {
    /// Defaults for these folders and index file: every category, no exclusions, batches of
    /// 32, a checkpoint every 512 photos beside the index, f32 storage.
    pub fn new(
        labels: impl Into<PathBuf>,
        photos: impl Into<PathBuf>,
        index: impl Into<PathBuf>,
    ) -> Self {
        BuildOptions {
            labels: labels.into(),
            photos: photos.into(),
            index: index.into(),
            categories: Vec::new(),
            exclusions: None,
            batch_size: 32,
            checkpoint_every: 512,
            checkpoint: None,
            precision: Precision::F32,
        }
    }

    /// The checkpoint file actually used.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint.clone().unwrap_or_else(|| {
            let mut name = self.index.clone().into_os_string();
            name.push(".partial");
            PathBuf::from(name)
        })
    }
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildReport {
    /// Photos in the written index.
    pub indexed: usize,
    /// Of those, photos taken from a checkpoint of an interrupted build.
    pub resumed: usize,
    /// Photos embedded by this run.
    pub embedded: usize,
    /// Photos that could not be embedded (missing, corrupt...), with the reason.
    pub skipped: Vec<(u64, String)>,
    /// Photos listed for more than one product: indexed under the first (category, product)
    /// in sorted order, with the others listed here.
    pub shared_photos: Vec<(u64, String)>,
    /// Retrieval records left out by the exclusion list.
    pub excluded: usize,
}

/// Progress of a build: photos done (including resumed ones) out of the total.
pub type Progress<'a> = &'a dyn Fn(usize, usize);

/// Builds the index of `options` with `embedder`: reads the labels, embeds every shop photo of
/// the chosen categories (skipping and reporting those that fail), and writes the index file
/// atomically. Partial work is checkpointed every `checkpoint_every` photos; a later call with
/// the same options and model resumes from the checkpoint, and a checkpoint made with another
/// model is ignored. `progress(done, total)` follows the photos.
pub fn build_index(
    embedder: &Embedder,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<BuildReport, PipelineError> {
    let labels = Labels::load(&options.labels).map_err(|problems| PipelineError::Labels {
        dir: options.labels.clone(),
        problems,
    })?;
    let categories = parse_categories(&options.categories)?;
    // A category the labels do not have is a typo, not an empty selection.
    if let Some(unknown) = categories
        .iter()
        .flatten()
        .find(|category| labels.category(category).is_none())
    {
        return Err(PipelineError::UnknownCategory(unknown.to_string()));
    }
    let exclusions = match &options.exclusions {
        Some(path) => Some(
            Exclusions::load(path).map_err(|e| PipelineError::Exclusions {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let gallery = labels.gallery(categories.as_ref(), exclusions.as_ref());
    let mut report = BuildReport {
        excluded: gallery.excluded_records,
        ..BuildReport::default()
    };
    let mut photos: BTreeMap<PhotoId, ProductKey> = BTreeMap::new();
    for item in gallery.items {
        match photos.entry(item.photo) {
            std::collections::btree_map::Entry::Occupied(_) => report
                .shared_photos
                .push((item.photo.0, item.product.to_string())),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(item.product);
            }
        }
    }
    if photos.is_empty() {
        return Err(PipelineError::EmptyGallery {
            labels: options.labels.clone(),
        });
    }

    let meta = embedder.meta().clone();
    let checkpoint = options.checkpoint_path();
    // The checkpoint is an embeddings file: the photos done so far and their vectors. One made
    // with another model, or a damaged one, is ignored and the work starts afresh.
    let (mut ids, mut vectors) = match load_embeddings(&checkpoint, Some(&meta)) {
        Ok((_, ids, vectors)) => (ids, vectors),
        Err(_) => (Vec::new(), Vec::new()),
    };
    // Photos no longer in the gallery (e.g. newly excluded) must not survive from the checkpoint.
    let dim = meta.dim;
    let mut kept_ids = Vec::with_capacity(ids.len());
    let mut kept_vectors = Vec::with_capacity(vectors.len());
    let mut seen = BTreeSet::new();
    for (id, vector) in ids.iter().zip(vectors.chunks_exact(dim)) {
        let known = id
            .parse::<u64>()
            .is_ok_and(|photo| photos.contains_key(&PhotoId(photo)));
        if known && seen.insert(id.clone()) {
            kept_ids.push(id.clone());
            kept_vectors.extend_from_slice(vector);
        }
    }
    (ids, vectors) = (kept_ids, kept_vectors);
    let done: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let total = photos.len();
    let todo: Vec<PhotoId> = photos
        .keys()
        .filter(|photo| !done.contains(photo.0.to_string().as_str()))
        .copied()
        .collect();
    report.resumed = total - todo.len();
    progress(report.resumed, total);

    for chunk in todo.chunks(options.checkpoint_every.max(1)) {
        let jobs: Vec<ImageJob> = chunk
            .iter()
            .map(|photo| ImageJob {
                id: photo.0.to_string(),
                path: photo_path(&options.photos, *photo),
                crop: None,
            })
            .collect();
        let base = report.resumed + report.embedded + report.skipped.len();
        let outcome = embedder.embed_jobs(&jobs, options.batch_size, &|done, _| {
            progress(base + done, total)
        })?;
        report.embedded += outcome.ids.len();
        ids.extend(outcome.ids);
        vectors.extend_from_slice(&outcome.vectors);
        report.skipped.extend(
            outcome
                .skipped
                .into_iter()
                .map(|(id, reason)| (id.parse().unwrap_or(0), reason)),
        );
        save_embeddings(&checkpoint, &meta, &ids, &vectors, false)?;
    }

    if ids.is_empty() {
        return Err(PipelineError::NothingEmbedded {
            photos: total,
            first: report
                .skipped
                .first()
                .map(|(photo, reason)| format!("photo {photo}: {reason}"))
                .unwrap_or_default(),
        });
    }
    let records: Vec<PhotoRecord> = ids
        .iter()
        .map(|id| {
            let photo = id.parse::<u64>().unwrap_or(0);
            let key = &photos[&PhotoId(photo)];
            PhotoRecord {
                category: key.category.to_string(),
                product: key.product.0,
                photo,
            }
        })
        .collect();
    let mut index = Index::new(dim, options.precision, meta.to_map())?;
    index.add(&records, &vectors)?;
    report.indexed = records.len();
    // The vectors beside the index serve item-to-item searches without re-embedding.
    save_embeddings(&vectors_path(&options.index), &meta, &ids, &vectors, false)?;
    index.save(&options.index)?;
    // The finished index supersedes the checkpoint; a leftover one would only be ignored.
    let _ = std::fs::remove_file(&checkpoint);
    Ok(report)
}

/// The file beside an index that holds its photos' vectors: the index path with `.vectors`
/// appended (an embeddings file of `wtb-embed`).
pub fn vectors_path(index: &Path) -> PathBuf {
    let mut name = index.as_os_str().to_owned();
    name.push(".vectors");
    PathBuf::from(name)
}

/// Builds the index of `options` with [`build_index`] unless its file (and the vectors beside
/// it) already exist. Returns the build report when it built.
pub fn ensure_index(
    embedder: &Embedder,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<Option<BuildReport>, PipelineError> {
    if options.index.exists() && vectors_path(&options.index).exists() {
        return Ok(None);
    }
    build_index(embedder, options, progress).map(Some)
}

fn parse_categories(names: &[String]) -> Result<Option<BTreeSet<Category>>, PipelineError> {
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|name| Category::new(name).map_err(|_| PipelineError::UnknownCategory(name.clone())))
        .collect::<Result<BTreeSet<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_category_names_are_refused_by_name() {
        let err = parse_categories(&["tops".into(), "Socks!".into()]).unwrap_err();
        assert!(err.to_string().contains("Socks!"));
        assert_eq!(parse_categories(&[]).unwrap(), None);
    }

    #[test]
    fn the_checkpoint_sits_beside_the_index() {
        let options = BuildOptions::new("l", "p", "out/shop.idx");
        assert_eq!(
            options.checkpoint_path(),
            PathBuf::from("out/shop.idx.partial")
        );
    }
}

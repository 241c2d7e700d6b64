//! Building and extending a catalogue index from label files and shop photos, resumable after
//! interruption.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use wtb_dataset::{photo_path, Category, Exclusions, Labels, PhotoId, ProductKey};
use wtb_embed::{Embedder, ImageJob};
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
    /// How vectors are stored.
    pub precision: Precision,
    /// Also build the HNSW graph for approximate search (worth it from ~50,000 photos).
    pub approximate: bool,
}

impl BuildOptions {
    /// Defaults for these folders and index file: every category, no exclusions, batches of
    /// 32, a checkpoint every 256 photos, f32 storage, exact search only.
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
            checkpoint_every: 256,
            precision: Precision::F32,
            approximate: false,
        }
    }

    /// The checkpoint of an unfinished build: the index path with `.partial` appended, itself
    /// an index file holding the photos embedded so far.
    pub fn checkpoint_path(&self) -> PathBuf {
        let mut name = self.index.clone().into_os_string();
        name.push(".partial");
        PathBuf::from(name)
    }
}

/// What a build or an update did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildReport {
    /// Distinct photos in the written index.
    pub photos: usize,
    /// Rows in the written index: a photo that shows several products is one row per product.
    pub rows: usize,
    /// Distinct products in the written index.
    pub products: usize,
    /// Photos that were already in the index or its checkpoint (resumed or kept).
    pub resumed: usize,
    /// Photos embedded by this run.
    pub embedded: usize,
    /// Photos that could not be embedded (missing, corrupt...), with the reason.
    pub skipped: Vec<(u64, String)>,
    /// Photos of the gallery listed for more than one product.
    pub multi_product_photos: usize,
    /// Retrieval records left out by the exclusion list.
    pub excluded: usize,
}

/// Progress of a build: photos done (including resumed ones) out of the total.
pub type Progress<'a> = &'a dyn Fn(usize, usize);

/// The shop photos to index, each with every product it shows.
struct GalleryPhotos {
    photos: BTreeMap<PhotoId, Vec<ProductKey>>,
    excluded: usize,
}

fn gallery_photos(options: &BuildOptions) -> Result<GalleryPhotos, PipelineError> {
    if options.batch_size == 0 {
        return Err(PipelineError::BadOption(
            "the batch size must be at least 1".to_string(),
        ));
    }
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
    let mut photos: BTreeMap<PhotoId, Vec<ProductKey>> = BTreeMap::new();
    for item in gallery.items {
        let products = photos.entry(item.photo).or_default();
        if !products.contains(&item.product) {
            products.push(item.product);
        }
    }
    if photos.is_empty() {
        return Err(PipelineError::EmptyGallery {
            labels: options.labels.clone(),
        });
    }
    Ok(GalleryPhotos {
        photos,
        excluded: gallery.excluded_records,
    })
}

/// Builds the index of `options` with `embedder`: reads the labels, embeds every shop photo of
/// the chosen categories (skipping and reporting those that fail; a photo showing several
/// products becomes one row per product), and writes the index file atomically.
///
/// Partial work is checkpointed every `checkpoint_every` photos in
/// [`BuildOptions::checkpoint_path`]; a later call with the same options resumes from it, and
/// a checkpoint made with another model, settings or precision is refused by name (delete it
/// to start over). `progress(done, total)` follows the photos.
pub fn build_index(
    embedder: &Embedder,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<BuildReport, PipelineError> {
    let _lock = BuildLock::take(&options.index)?;
    build_locked(embedder, options, progress)
}

/// An exclusive lock on `<index>.lock`, held while an index is built, so that two processes
/// building the same index (two shops started at once on one cache) take turns instead of
/// writing one checkpoint together. The operating system releases it if the process dies.
struct BuildLock {
    _held: std::fs::File,
}

impl BuildLock {
    /// Creates the index's folder when needed and waits for the lock.
    fn take(index: &Path) -> Result<BuildLock, PipelineError> {
        let failed = |what: &str, err: std::io::Error| PipelineError::Output {
            path: index.to_path_buf(),
            reason: format!("{what}: {err}"),
        };
        if let Some(dir) = index.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| failed(&format!("cannot create folder {}", dir.display()), e))?;
        }
        let mut name = index.as_os_str().to_owned();
        name.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .map_err(|e| failed("cannot open its build lock", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    "index {}: another process is building it; waiting",
                    index.display()
                );
                file.lock()
                    .map_err(|e| failed("cannot take its build lock", e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(failed("cannot take its build lock", e))
            }
        }
        remove_stale_temporaries(index);
        Ok(BuildLock { _held: file })
    }
}

/// Removes the temporary files a killed writer of `index` or of its checkpoint left behind
/// (`.<index>.tmp<pid>`, `.<index>.partial.tmp<pid>`, as `wtb_search::Index::save` names
/// them). Only the holder of the build lock writes
/// them, so none of them is in use.
fn remove_stale_temporaries(index: &Path) {
    let (Some(dir), Some(name)) = (index.parent(), index.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let Some(rest) = file
            .strip_prefix('.')
            .and_then(|f| f.strip_prefix(name.as_ref()))
        else {
            continue;
        };
        let pid = rest
            .strip_prefix(".tmp")
            .or_else(|| rest.strip_prefix(".partial.tmp"));
        if pid.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    "removed {}, left by an interrupted write",
                    entry.path().display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

fn build_locked(
    embedder: &Embedder,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<BuildReport, PipelineError> {
    let gallery = gallery_photos(options)?;
    let meta = embedder.meta().to_map();
    let checkpoint = options.checkpoint_path();
    let mut index = if checkpoint.exists() {
        let index =
            Index::load(&checkpoint, Some(&meta)).map_err(|source| PipelineError::Checkpoint {
                path: checkpoint.clone(),
                reason: source.to_string(),
            })?;
        if index.precision() != options.precision {
            return Err(PipelineError::Checkpoint {
                path: checkpoint.clone(),
                reason: format!(
                    "it stores {:?} vectors, this build asks for {:?}",
                    index.precision(),
                    options.precision
                ),
            });
        }
        index
    } else {
        Index::new(embedder.meta().dim, options.precision, meta)?
    };
    // A checkpoint may hold photos that have since left the gallery (newly excluded, or
    // another category selection): the build defines the index, so they go.
    prune(&mut index, &gallery)?;
    let mut report = extend(
        &mut index,
        embedder,
        options,
        &gallery,
        &mut |index| index.save(&checkpoint),
        progress,
    )?;
    index.compact()?;
    if options.approximate {
        index.build_approximate()?;
    }
    index.save(&options.index)?;
    // The finished index supersedes the checkpoint; a leftover one would only be resumed from.
    let _ = std::fs::remove_file(&checkpoint);
    report.excluded = gallery.excluded;
    Ok(report)
}

/// Adds to the existing index of `options` the gallery photos it does not hold yet (new
/// products, or photos skipped earlier), as a new segment, and rewrites it atomically (an
/// interrupted add leaves the old index, and rerunning it does the whole add). Photos
/// of the index outside this gallery stay (adding one category keeps the others). The index
/// keeps its precision; its model and settings must be `embedder`'s.
pub fn add_to_index(
    embedder: &Embedder,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<BuildReport, PipelineError> {
    let gallery = gallery_photos(options)?;
    // The same lock as a build: two writers of one index take turns.
    let _lock = BuildLock::take(&options.index)?;
    let mut index = Index::load(&options.index, Some(&embedder.meta().to_map()))?;
    let mut report = extend(
        &mut index,
        embedder,
        options,
        &gallery,
        &mut |_| Ok(()),
        progress,
    )?;
    if report.embedded > 0 {
        if index.has_approximate() {
            index.build_approximate()?;
        }
        index.save(&options.index)?;
    }
    report.excluded = gallery.excluded;
    Ok(report)
}

/// Builds the index of `options` with [`build_index`] unless its file already exists.
/// Returns the build report when it built.
pub fn ensure_index(
    embedder: &Embedder,
    options: &BuildOptions,
    progress: Progress<'_>,
) -> Result<Option<BuildReport>, PipelineError> {
    if options.index.exists() {
        return Ok(None);
    }
    let _lock = BuildLock::take(&options.index)?;
    // Another process may have built it while this one waited for the lock.
    if options.index.exists() {
        return Ok(None);
    }
    build_locked(embedder, options, progress).map(Some)
}

/// Removes the rows of photos that are not in the gallery.
fn prune(index: &mut Index, gallery: &GalleryPhotos) -> Result<(), PipelineError> {
    let gone: Vec<u64> = index
        .live_photos()
        .into_iter()
        .filter(|photo| !gallery.photos.contains_key(&PhotoId(*photo)))
        .collect();
    if !gone.is_empty() {
        index.remove_photos(&gone)?;
    }
    Ok(())
}

/// Embeds the gallery photos `index` lacks, `checkpoint_every` at a time, adding each chunk
/// as a segment and calling `checkpoint` after it.
fn extend(
    index: &mut Index,
    embedder: &Embedder,
    options: &BuildOptions,
    gallery: &GalleryPhotos,
    checkpoint: &mut dyn FnMut(&Index) -> Result<(), wtb_search::SearchError>,
    progress: Progress<'_>,
) -> Result<BuildReport, PipelineError> {
    let photos = &gallery.photos;
    let present = index.live_photos();
    let todo: Vec<PhotoId> = photos
        .keys()
        .filter(|photo| !present.contains(&photo.0))
        .copied()
        .collect();
    let total = photos.len();
    let mut report = BuildReport {
        resumed: total - todo.len(),
        multi_product_photos: photos.values().filter(|p| p.len() > 1).count(),
        ..BuildReport::default()
    };
    progress(report.resumed, total);
    // A head trained on shop photos cropped to their garment sees the gallery the same way.
    let trim = embedder.head().is_some_and(|head| head.meta().shop_trim);
    for chunk in todo.chunks(options.checkpoint_every.max(1)) {
        let jobs: Vec<ImageJob> = chunk
            .iter()
            .map(|photo| ImageJob {
                id: photo.0.to_string(),
                path: photo_path(&options.photos, *photo),
                crop: None,
                flip: false,
                trim,
            })
            .collect();
        let base = report.resumed + report.embedded + report.skipped.len();
        let outcome = embedder.embed_jobs(&jobs, options.batch_size, &|done, _| {
            progress(base + done, total)
        })?;
        let mut records = Vec::new();
        let mut vectors = Vec::new();
        for (id, vector) in outcome
            .ids
            .iter()
            .zip(outcome.vectors.chunks_exact(outcome.dim))
        {
            // Ids are the photo ids the jobs were made from.
            let photo: u64 = id.parse().unwrap_or_default();
            for product in photos.get(&PhotoId(photo)).into_iter().flatten() {
                records.push(PhotoRecord {
                    category: product.category.to_string(),
                    product: product.product.0,
                    photo,
                });
                vectors.extend_from_slice(vector);
            }
        }
        if !records.is_empty() {
            index.add(&records, &vectors)?;
        }
        report.embedded += outcome.ids.len();
        report.skipped.extend(
            outcome
                .skipped
                .into_iter()
                .map(|(id, reason)| (id.parse().unwrap_or_default(), reason)),
        );
        checkpoint(index)?;
    }
    progress(total, total);
    let info = index.info();
    if info.photos == 0 {
        return Err(PipelineError::NothingEmbedded {
            photos: total,
            first: report
                .skipped
                .first()
                .map(|(photo, reason)| format!("photo {photo}: {reason}"))
                .unwrap_or_default(),
        });
    }
    report.photos = index.live_photos().len();
    report.rows = info.photos;
    report.products = info.products;
    Ok(report)
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
    fn stale_temporaries_of_the_index_alone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("shop.wtbindex");
        let names = [
            ".shop.wtbindex.tmp123",
            ".shop.wtbindex.partial.tmp9",
            "shop.wtbindex.partial",
            ".shop.wtbindex.tmpx",
            ".other.wtbindex.tmp123",
            "shop.wtbindex.tmp123",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let _lock = BuildLock::take(&index).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".other.wtbindex.tmp123",
                ".shop.wtbindex.tmpx",
                "shop.wtbindex.lock",
                "shop.wtbindex.partial",
                "shop.wtbindex.tmp123"
            ]
        );
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

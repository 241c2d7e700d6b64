//! Cleaning the shop photos: placeholders and photos without a plain light background.
//!
//! The original project dropped such photos by comparing pixel sums; here both detectors are
//! explicit, configurable and scored (see the crate docs for the figures on s2s-dev).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{Category, PhotoId, ProductKey};
use crate::labels::Labels;
use crate::photo::{load_rgb, photo_path, DecodeLimits};
use crate::problem::Problem;

/// Thresholds of the two detectors.
///
/// The non-white detector looks at the four edges of a photo. In a strip along each edge
/// (`border_fraction` of the shorter side), a pixel is *plain light* when it is light (darkest
/// channel at least `light_level`), neutral (channels within `max_chroma` of each other) and
/// smooth (its luminance within `max_gradient` of each 4-neighbour). The photo's statistic is
/// the plain-light fraction of its best edge: a catalog photo shows a plain white or light
/// grey background along at least one whole edge, while magazine pages, street shots and
/// fabric close-ups do not. A photo below `min_plain_fraction` is non-white.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CleanConfig {
    /// A decoded content (SHA-256 of the RGB pixels) that appears under at least this many
    /// distinct products is a placeholder ("image not available"). Default 3.
    pub placeholder_min_products: usize,
    /// Width of each edge strip, as a fraction of the photo's shorter side (at least one
    /// pixel). Default 0.02.
    pub border_fraction: f64,
    /// Darkest channel of a light pixel. Default 180.
    pub light_level: u8,
    /// Largest channel spread of a neutral pixel. Default 12.
    pub max_chroma: u8,
    /// Largest luminance step to a 4-neighbour of a smooth pixel. Default 2.
    pub max_gradient: u8,
    /// A photo whose best edge has a smaller plain-light fraction is non-white. Default 0.6.
    pub min_plain_fraction: f64,
}

impl Default for CleanConfig {
    fn default() -> Self {
        CleanConfig {
            placeholder_min_products: 3,
            border_fraction: 0.02,
            light_level: 180,
            max_chroma: 12,
            max_gradient: 2,
            min_plain_fraction: 0.6,
        }
    }
}

/// The border statistic of the non-white detector: the plain-light fraction of the photo's
/// best edge (see [`CleanConfig`]), in `[0, 1]`.
pub fn border_plain_fraction(image: &RgbImage, config: &CleanConfig) -> f64 {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return 0.0;
    }
    let strip = ((w.min(h) as f64 * config.border_fraction).round() as u32).clamp(1, w.min(h));
    let lum = |x: u32, y: u32| -> i32 {
        let p = image.get_pixel(x, y).0;
        (p[0] as i32 * 299 + p[1] as i32 * 587 + p[2] as i32 * 114 + 500) / 1000
    };
    let max_gradient = config.max_gradient as i32;
    let plain = |x: u32, y: u32| -> bool {
        let p = image.get_pixel(x, y).0;
        let min = p[0].min(p[1]).min(p[2]);
        let max = p[0].max(p[1]).max(p[2]);
        if min < config.light_level || max - min > config.max_chroma {
            return false;
        }
        let l = lum(x, y);
        let near = |nx: u32, ny: u32| (l - lum(nx, ny)).abs() <= max_gradient;
        (x == 0 || near(x - 1, y))
            && (x + 1 >= w || near(x + 1, y))
            && (y == 0 || near(x, y - 1))
            && (y + 1 >= h || near(x, y + 1))
    };
    // Edges: top and bottom rows span the full width; left and right columns the rows between.
    let mut best = 0.0f64;
    let rows = |y0: u32, y1: u32, x0: u32, x1: u32| {
        let (mut good, mut total) = (0u64, 0u64);
        for y in y0..y1 {
            for x in x0..x1 {
                total += 1;
                good += plain(x, y) as u64;
            }
        }
        if total == 0 {
            0.0
        } else {
            good as f64 / total as f64
        }
    };
    let inner = (strip, h.saturating_sub(strip).max(strip));
    for fraction in [
        rows(0, strip, 0, w),
        rows(h - strip, h, 0, w),
        rows(inner.0, inner.1, 0, strip),
        rows(inner.0, inner.1, w - strip, w),
    ] {
        best = best.max(fraction);
    }
    best
}

/// SHA-256 of a decoded image (dimensions and RGB pixels), as lowercase hex.
pub fn content_hash(image: &RgbImage) -> String {
    let mut hasher = Sha256::new();
    hasher.update(image.width().to_le_bytes());
    hasher.update(image.height().to_le_bytes());
    hasher.update(image.as_raw());
    hex::encode(hasher.finalize())
}

/// What was measured on one shop photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhotoScan {
    /// The photo.
    pub photo: PhotoId,
    /// [`content_hash`].
    pub hash: String,
    /// [`border_plain_fraction`].
    pub plain_fraction: f64,
}

/// Why a photo is excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionReason {
    /// Identical content under many products.
    Placeholder,
    /// No plain light background.
    NonWhite,
    /// Missing or undecodable.
    Unreadable,
}

/// Counts of one category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanCounts {
    /// Distinct shop photos of the category.
    pub shop_photos: usize,
    /// Of which placeholders.
    pub placeholders: usize,
    /// Of which non-white.
    pub non_white: usize,
    /// Of which missing or undecodable.
    pub unreadable: usize,
    /// Of which kept.
    pub kept: usize,
}

/// A group of identical photos found under many products.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaceholderGroup {
    /// [`content_hash`] of the content.
    pub hash: String,
    /// The photos with that content.
    pub photos: Vec<PhotoId>,
    /// The number of distinct products they are attached to.
    pub products: usize,
}

/// The result of [`clean`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanReport {
    /// The thresholds used.
    pub config: CleanConfig,
    /// Distinct shop photos in the retrieval files.
    pub shop_photos: usize,
    /// Placeholder photos, sorted.
    pub placeholders: Vec<PhotoId>,
    /// Non-white photos (placeholders excluded), sorted.
    pub non_white: Vec<PhotoId>,
    /// Missing or undecodable photos, sorted.
    pub unreadable: Vec<PhotoId>,
    /// The groups of identical photos behind `placeholders`.
    pub placeholder_groups: Vec<PlaceholderGroup>,
    /// Counts per category.
    pub categories: BTreeMap<Category, CleanCounts>,
    /// What went wrong reading photos (one problem per unreadable photo).
    pub problems: Vec<Problem>,
}

impl CleanReport {
    /// The exclusions to honour in later steps.
    pub fn exclusions(&self) -> Exclusions {
        let mut photos = BTreeMap::new();
        for &p in &self.unreadable {
            photos.insert(p, ExclusionReason::Unreadable);
        }
        for &p in &self.non_white {
            photos.insert(p, ExclusionReason::NonWhite);
        }
        for &p in &self.placeholders {
            photos.insert(p, ExclusionReason::Placeholder);
        }
        Exclusions {
            photos,
            config: Some(self.config),
        }
    }
}

/// Scans every shop photo of `labels` in `photos` (in parallel) and finds placeholders and
/// non-white photos. Street photos are not examined. Missing or undecodable photos are
/// reported and counted as unreadable, never a panic.
pub fn clean(
    labels: &Labels,
    photos: &Path,
    config: &CleanConfig,
    limits: &DecodeLimits,
) -> CleanReport {
    let shop = labels.shop_photos();
    let ids: Vec<PhotoId> = shop.keys().copied().collect();
    let results: Vec<Result<PhotoScan, Problem>> = ids
        .par_iter()
        .map(|&photo| {
            let path = photo_path(photos, photo);
            match load_rgb(&path, limits) {
                Ok(image) => Ok(PhotoScan {
                    photo,
                    hash: content_hash(&image),
                    plain_fraction: border_plain_fraction(&image, config),
                }),
                Err(e) => Err(Problem::error(&path, e.problem.to_string()).photo(photo)),
            }
        })
        .collect();
    let mut scans = Vec::with_capacity(results.len());
    let mut problems = Vec::new();
    for r in results {
        match r {
            Ok(scan) => scans.push(scan),
            Err(p) => problems.push(p),
        }
    }
    classify(&shop, scans, problems, config)
}

/// Turns per-photo measurements into a report (the decision part of [`clean`]).
pub fn classify(
    shop: &BTreeMap<PhotoId, BTreeSet<ProductKey>>,
    scans: Vec<PhotoScan>,
    problems: Vec<Problem>,
    config: &CleanConfig,
) -> CleanReport {
    let mut by_hash: HashMap<&str, Vec<&PhotoScan>> = HashMap::new();
    for s in &scans {
        by_hash.entry(s.hash.as_str()).or_default().push(s);
    }
    let mut placeholders = BTreeSet::new();
    let mut groups = Vec::new();
    for (hash, members) in &by_hash {
        let products: BTreeSet<&ProductKey> = members
            .iter()
            .filter_map(|s| shop.get(&s.photo))
            .flatten()
            .collect();
        if members.len() > 1 && products.len() >= config.placeholder_min_products {
            let mut photos: Vec<PhotoId> = members.iter().map(|s| s.photo).collect();
            photos.sort();
            placeholders.extend(photos.iter().copied());
            groups.push(PlaceholderGroup {
                hash: hash.to_string(),
                photos,
                products: products.len(),
            });
        }
    }
    groups.sort_by(|a, b| {
        b.photos
            .len()
            .cmp(&a.photos.len())
            .then(a.hash.cmp(&b.hash))
    });
    let non_white: BTreeSet<PhotoId> = scans
        .iter()
        .filter(|s| {
            !placeholders.contains(&s.photo) && s.plain_fraction < config.min_plain_fraction
        })
        .map(|s| s.photo)
        .collect();
    let unreadable: BTreeSet<PhotoId> = problems.iter().filter_map(|p| p.photo).collect();
    let mut categories: BTreeMap<Category, CleanCounts> = BTreeMap::new();
    for (photo, keys) in shop {
        let cats: BTreeSet<&Category> = keys.iter().map(|k| &k.category).collect();
        for c in cats {
            let counts = categories.entry(c.clone()).or_default();
            counts.shop_photos += 1;
            if placeholders.contains(photo) {
                counts.placeholders += 1;
            } else if non_white.contains(photo) {
                counts.non_white += 1;
            } else if unreadable.contains(photo) {
                counts.unreadable += 1;
            } else {
                counts.kept += 1;
            }
        }
    }
    CleanReport {
        config: *config,
        shop_photos: shop.len(),
        placeholders: placeholders.into_iter().collect(),
        non_white: non_white.into_iter().collect(),
        unreadable: unreadable.into_iter().collect(),
        placeholder_groups: groups,
        categories,
        problems,
    }
}

/// The format tag of an exclusion file.
pub const EXCLUSIONS_FORMAT: &str = "wtb-exclusions";
/// The version of the exclusion file format written by this crate.
pub const EXCLUSIONS_VERSION: u32 = 1;

/// Photos that later steps (galleries, embeddings, indexes) must leave out, with the reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exclusions {
    /// Excluded photos and why.
    pub photos: BTreeMap<PhotoId, ExclusionReason>,
    /// The thresholds that produced them, when they came from [`clean`].
    pub config: Option<CleanConfig>,
}

#[derive(Serialize, Deserialize)]
struct ExclusionFile {
    format: String,
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<CleanConfig>,
    excluded: Vec<ExclusionEntry>,
}

#[derive(Serialize, Deserialize)]
struct ExclusionEntry {
    photo: PhotoId,
    reason: ExclusionReason,
}

/// An exclusion file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExclusionsError {
    /// File system error.
    #[error("exclusion file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("exclusion file {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// A different format or a newer version.
    #[error("exclusion file {path}: expected format {EXCLUSIONS_FORMAT:?} version {EXCLUSIONS_VERSION}, found {format:?} version {version}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its format tag.
        format: String,
        /// Its version.
        version: u32,
    },
}

impl Exclusions {
    /// True when `photo` is excluded.
    pub fn contains(&self, photo: PhotoId) -> bool {
        self.photos.contains_key(&photo)
    }

    /// Number of excluded photos.
    pub fn len(&self) -> usize {
        self.photos.len()
    }

    /// True when nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.photos.is_empty()
    }

    /// The JSON text of the file: `{"format": "wtb-exclusions", "version": 1, "config": {...},
    /// "excluded": [{"photo": 12, "reason": "placeholder"}, ...]}`.
    pub fn to_json(&self) -> String {
        let file = ExclusionFile {
            format: EXCLUSIONS_FORMAT.to_string(),
            version: EXCLUSIONS_VERSION,
            config: self.config,
            excluded: self
                .photos
                .iter()
                .map(|(&photo, &reason)| ExclusionEntry { photo, reason })
                .collect(),
        };
        serde_json::to_string_pretty(&file).expect("exclusions serialise")
    }

    /// Writes the file atomically: a temporary file in the same folder, synced, then renamed
    /// over `path`, so a reader never sees a half-written file.
    pub fn save(&self, path: &Path) -> Result<(), ExclusionsError> {
        let io = |source| ExclusionsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("exclusions");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.to_json().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// Reads a file written by [`Exclusions::save`], refusing another format or version.
    pub fn load(path: &Path) -> Result<Exclusions, ExclusionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExclusionsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json = |source| ExclusionsError::Json {
            path: path.to_path_buf(),
            source,
        };
        let head: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        let format = head.get("format").and_then(|v| v.as_str()).unwrap_or("");
        let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if format != EXCLUSIONS_FORMAT || version != EXCLUSIONS_VERSION {
            return Err(ExclusionsError::Version {
                path: path.to_path_buf(),
                format: format.to_string(),
                version,
            });
        }
        let file: ExclusionFile = serde_json::from_value(head).map_err(json)?;
        Ok(Exclusions {
            photos: file
                .excluded
                .into_iter()
                .map(|e| (e.photo, e.reason))
                .collect(),
            config: file.config,
        })
    }
}

//! `check`: every problem of a label folder (and optionally its photos), not only the first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use image::ImageDecoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::crop::BBox;
use crate::ids::{PhotoId, ProductKey};
use crate::labels::{LabelFileKind, Labels, PairSplit};
use crate::photo::{load_rgb, photo_path, DecodeLimits};
use crate::problem::{Problem, Severity};
use crate::ratios::RatioIssue;
use crate::stats::DatasetStats;

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Every problem found, errors and warnings, in a stable order.
    pub problems: Vec<Problem>,
    /// Statistics of what could be read.
    pub stats: DatasetStats,
    /// Photos decoded (0 without a photo folder).
    pub photos_checked: usize,
}

impl CheckReport {
    /// True when there is no error (warnings allowed).
    pub fn passed(&self) -> bool {
        self.errors() == 0
    }

    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .count()
    }
}

/// Checks a label folder and, when `photos` is given, that every photo it names exists and
/// decodes (in parallel) and that every box keeps a non-zero area inside its photo.
///
/// Errors: unreadable or malformed label files, bad fields, unexpected file names, pairs of a
/// category without retrieval file, a bad ratio file, missing or undecodable photos.
/// Warnings: zero-area boxes, photos without a usable ratio, products of the pairs files
/// without any shop photo, photo ids used both as street and shop photos.
pub fn check(labels_dir: &Path, photos: Option<&Path>, limits: &DecodeLimits) -> CheckReport {
    let (labels, mut problems) = Labels::load_lenient(labels_dir);
    let stats = DatasetStats::compute(&labels);
    check_records(&labels, &mut problems);
    let mut photos_checked = 0;
    if let Some(dir) = photos {
        photos_checked = check_photos(&labels, dir, limits, &mut problems);
    }
    CheckReport {
        problems,
        stats,
        photos_checked,
    }
}

fn check_records(labels: &Labels, problems: &mut Vec<Problem>) {
    let shop = labels.shop_photos();
    let mut with_shop: BTreeSet<ProductKey> = BTreeSet::new();
    for keys in shop.values() {
        with_shop.extend(keys.iter().cloned());
    }
    let mut reported_products = BTreeSet::new();
    let mut reported_shared = BTreeSet::new();
    for (category, l) in &labels.categories {
        for split in [PairSplit::Train, PairSplit::Test] {
            let file = labels
                .dir
                .join(LabelFileKind::from(split).file_name(category));
            for (i, r) in l.pairs(split).iter().enumerate() {
                let key = ProductKey::new(category.clone(), r.product);
                if !with_shop.contains(&key) && reported_products.insert(key.clone()) {
                    problems.push(
                        Problem::warning(
                            &file,
                            format!("product {key} has no shop photo in the retrieval file"),
                        )
                        .at(i)
                        .field("product"),
                    );
                }
                if shop.contains_key(&r.photo) && reported_shared.insert(r.photo) {
                    problems.push(
                        Problem::warning(&file, "photo id is also used as a shop photo")
                            .at(i)
                            .field("photo")
                            .photo(r.photo),
                    );
                }
                let bbox = match &labels.aspect_ratios {
                    None => r.bbox,
                    Some(ratios) => match ratios.rescale(r.photo, &r.bbox) {
                        Ok(b) => b,
                        Err(issue @ (RatioIssue::Missing | RatioIssue::Corrupted)) => {
                            problems.push(
                                Problem::warning(&file, format!("{issue}; record skipped"))
                                    .at(i)
                                    .photo(r.photo),
                            );
                            continue;
                        }
                    },
                };
                if bbox.width <= 0.0 || bbox.height <= 0.0 {
                    problems.push(
                        Problem::warning(
                            &file,
                            format!(
                                "zero-area box (product {}, width {}, height {}); record skipped",
                                r.product, r.bbox.width, r.bbox.height
                            ),
                        )
                        .at(i)
                        .field("bbox")
                        .photo(r.photo),
                    );
                }
            }
        }
    }
}

/// A photo's dimensions, or why it could not be decoded.
type Decoded = Result<(u32, u32), Problem>;

/// Where a photo is used, for reporting boxes that vanish when clipped.
struct BoxUse {
    file: std::path::PathBuf,
    record: usize,
    bbox: BBox,
}

fn check_photos(
    labels: &Labels,
    dir: &Path,
    limits: &DecodeLimits,
    problems: &mut Vec<Problem>,
) -> usize {
    let mut boxes: BTreeMap<PhotoId, Vec<BoxUse>> = BTreeMap::new();
    let mut all: BTreeSet<PhotoId> = labels.shop_photos().keys().copied().collect();
    for (category, l) in &labels.categories {
        for split in [PairSplit::Train, PairSplit::Test] {
            let file = labels
                .dir
                .join(LabelFileKind::from(split).file_name(category));
            for (i, r) in l.pairs(split).iter().enumerate() {
                all.insert(r.photo);
                let bbox = match &labels.aspect_ratios {
                    None => r.bbox,
                    Some(ratios) => match ratios.rescale(r.photo, &r.bbox) {
                        Ok(b) => b,
                        Err(_) => continue, // reported by check_records
                    },
                };
                if bbox.width > 0.0 && bbox.height > 0.0 {
                    boxes.entry(r.photo).or_default().push(BoxUse {
                        file: file.clone(),
                        record: i,
                        bbox,
                    });
                }
            }
        }
    }
    let ids: Vec<PhotoId> = all.into_iter().collect();
    let found: Vec<(PhotoId, Decoded)> = ids
        .par_iter()
        .map(|&photo| {
            let path = photo_path(dir, photo);
            let result = load_rgb(&path, limits)
                .map(|img| img.dimensions())
                .map_err(|e| Problem::error(&path, e.problem.to_string()).photo(photo));
            (photo, result)
        })
        .collect();
    for (photo, result) in found {
        match result {
            Err(p) => problems.push(p),
            Ok((w, h)) => {
                for u in boxes.get(&photo).map(Vec::as_slice).unwrap_or(&[]) {
                    if u.bbox.pixel_rect(0.0, w, h).is_err() {
                        problems.push(
                            Problem::warning(
                                &u.file,
                                format!(
                                    "box ({}) has zero area inside the {w}x{h} photo; record skipped",
                                    u.bbox
                                ),
                            )
                            .at(u.record)
                            .field("bbox")
                            .photo(photo),
                        );
                    }
                }
            }
        }
    }
    ids.len()
}

/// Reads only the header of a photo file: its format and dimensions, without decoding pixels.
pub fn photo_dimensions(path: &Path) -> Result<(u32, u32), crate::photo::PhotoError> {
    let with_path = |problem| crate::photo::PhotoError {
        path: Some(path.to_path_buf()),
        problem,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| {
            with_path(if e.kind() == std::io::ErrorKind::NotFound {
                crate::photo::PhotoProblem::Missing
            } else {
                crate::photo::PhotoProblem::Io(e)
            })
        })?
        .with_guessed_format()
        .map_err(|e| with_path(crate::photo::PhotoProblem::Io(e)))?;
    if reader.format().is_none() {
        return Err(with_path(crate::photo::PhotoProblem::UnknownFormat));
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| with_path(crate::photo::PhotoProblem::Decode(e)))?;
    Ok(decoder.dimensions())
}

//! The original project's `aspect_ratios.csv`: per-photo resize ratios used to bring boxes from
//! the photos as downloaded into `photos_resized`.

use std::collections::HashMap;
use std::path::Path;

use crate::crop::BBox;
use crate::ids::PhotoId;
use crate::problem::{Problem, Problems};

/// One row of the ratio file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ratio {
    /// `stored size = downloaded size * factor`; boxes are multiplied by it.
    Factor(f64),
    /// The original download was corrupt (`ratio` = `corrupted`); its boxes cannot be used.
    Corrupted,
}

/// Why a box could not be rescaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RatioIssue {
    /// The photo has no row in the ratio file.
    #[error("no row in aspect_ratios.csv")]
    Missing,
    /// The photo's row says `corrupted`.
    #[error("aspect_ratios.csv marks the photo as corrupted")]
    Corrupted,
}

/// The ratio file: `img,ratio` with `img` like `1234.jpg` and `ratio` a positive number or the
/// word `corrupted`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AspectRatios {
    ratios: HashMap<PhotoId, Ratio>,
}

impl AspectRatios {
    /// Reads a ratio file; every bad line is reported (file, line number, field).
    pub fn load(path: &Path) -> Result<AspectRatios, Problems> {
        let mut problems = Vec::new();
        let mut reader = match csv::ReaderBuilder::new().has_headers(true).from_path(path) {
            Ok(reader) => reader,
            Err(e) => {
                return Err(Problems(vec![Problem::error(
                    path,
                    format!("cannot read: {e}"),
                )]))
            }
        };
        match reader.headers() {
            Ok(headers) if headers.iter().map(str::trim).eq(["img", "ratio"]) => {}
            Ok(headers) => {
                return Err(Problems(vec![Problem::error(
                    path,
                    format!(
                        "expected the header img,ratio, found {:?}",
                        headers.iter().collect::<Vec<_>>()
                    ),
                )
                .at(1)]))
            }
            Err(e) => {
                return Err(Problems(vec![Problem::error(
                    path,
                    format!("cannot read header: {e}"),
                )
                .at(1)]))
            }
        }
        let mut ratios = HashMap::new();
        for (i, row) in reader.records().enumerate() {
            let line = i + 2;
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    problems.push(Problem::error(path, format!("bad CSV row: {e}")).at(line));
                    continue;
                }
            };
            let img = row.get(0).unwrap_or("").trim();
            let value = row.get(1).unwrap_or("").trim();
            let photo = match img.strip_suffix(".jpg").unwrap_or(img).parse::<u64>() {
                Ok(id) => PhotoId(id),
                Err(_) => {
                    problems.push(
                        Problem::error(path, format!("expected <photo id>.jpg, found {img:?}"))
                            .at(line)
                            .field("img"),
                    );
                    continue;
                }
            };
            let ratio = if value.eq_ignore_ascii_case("corrupted") {
                Ratio::Corrupted
            } else {
                match value.parse::<f64>() {
                    Ok(f) if f.is_finite() && f > 0.0 => Ratio::Factor(f),
                    _ => {
                        problems.push(
                            Problem::error(
                                path,
                                format!(
                                    "expected a positive number or 'corrupted', found {value:?}"
                                ),
                            )
                            .at(line)
                            .field("ratio"),
                        );
                        continue;
                    }
                }
            };
            ratios.insert(photo, ratio);
        }
        if problems.is_empty() {
            Ok(AspectRatios { ratios })
        } else {
            Err(Problems(problems))
        }
    }

    /// Builds ratios from pairs (for tests and synthetic data).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (PhotoId, Ratio)>) -> Self {
        AspectRatios {
            ratios: pairs.into_iter().collect(),
        }
    }

    /// The row of a photo.
    pub fn get(&self, photo: PhotoId) -> Option<Ratio> {
        self.ratios.get(&photo).copied()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ratios.len()
    }

    /// True when the file has no rows.
    pub fn is_empty(&self) -> bool {
        self.ratios.is_empty()
    }

    /// Number of rows marked `corrupted`.
    pub fn corrupted(&self) -> usize {
        self.ratios
            .values()
            .filter(|r| **r == Ratio::Corrupted)
            .count()
    }

    /// The box of `photo` brought into stored-photo pixels (multiplied by the photo's factor).
    pub fn rescale(&self, photo: PhotoId, bbox: &BBox) -> Result<BBox, RatioIssue> {
        match self.get(photo) {
            Some(Ratio::Factor(f)) => Ok(bbox.scaled(f)),
            Some(Ratio::Corrupted) => Err(RatioIssue::Corrupted),
            None => Err(RatioIssue::Missing),
        }
    }
}

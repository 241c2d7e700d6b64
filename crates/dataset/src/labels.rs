//! Reading a street2shop label folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crop::BBox;
use crate::ids::{Category, PhotoId, ProductId, ProductKey};
use crate::problem::{Problem, Problems};
use crate::ratios::AspectRatios;

/// The name of the optional ratio file inside a label folder.
pub const ASPECT_RATIOS_FILE: &str = "aspect_ratios.csv";

/// The three kinds of label files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelFileKind {
    /// `retrieval_<cat>.json`: shop photos.
    Retrieval,
    /// `train_pairs_<cat>.json`: street photos of the training split.
    TrainPairs,
    /// `test_pairs_<cat>.json`: street photos of the test split.
    TestPairs,
}

impl LabelFileKind {
    /// The file name for a category, e.g. `train_pairs_bags.json`.
    pub fn file_name(self, category: &Category) -> String {
        match self {
            LabelFileKind::Retrieval => format!("retrieval_{category}.json"),
            LabelFileKind::TrainPairs => format!("train_pairs_{category}.json"),
            LabelFileKind::TestPairs => format!("test_pairs_{category}.json"),
        }
    }
}

/// The dataset's own split of the street photos, i.e. which pairs file a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSplit {
    /// `train_pairs_<cat>.json`.
    Train,
    /// `test_pairs_<cat>.json`.
    Test,
}

/// A label file name that does not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// Not `retrieval_<cat>.json`, `train_pairs_<cat>.json` or `test_pairs_<cat>.json`.
    #[error("unexpected file name {0:?}: expected retrieval_<category>.json, train_pairs_<category>.json or test_pairs_<category>.json")]
    Unexpected(String),
    /// The pattern matches but the category part is not a valid name.
    #[error("file name {name:?}: {source}")]
    BadCategory {
        /// The file name.
        name: String,
        /// Why the category is invalid.
        source: crate::ids::InvalidCategory,
    },
}

/// Parses a label file name into its kind and category.
pub fn parse_label_file_name(name: &str) -> Result<(LabelFileKind, Category), FileNameError> {
    let stem = name
        .strip_suffix(".json")
        .ok_or_else(|| FileNameError::Unexpected(name.to_string()))?;
    let (kind, category) = if let Some(c) = stem.strip_prefix("retrieval_") {
        (LabelFileKind::Retrieval, c)
    } else if let Some(c) = stem.strip_prefix("train_pairs_") {
        (LabelFileKind::TrainPairs, c)
    } else if let Some(c) = stem.strip_prefix("test_pairs_") {
        (LabelFileKind::TestPairs, c)
    } else {
        return Err(FileNameError::Unexpected(name.to_string()));
    };
    let category = Category::new(category).map_err(|source| FileNameError::BadCategory {
        name: name.to_string(),
        source,
    })?;
    Ok((kind, category))
}

/// One record of a `retrieval_<cat>.json` file: a shop photo of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RetrievalRecord {
    /// The shop photo.
    pub photo: PhotoId,
    /// The product it shows.
    pub product: ProductId,
}

/// One record of a pairs file: a street photo, the product it shows, and the garment's box in
/// the coordinates of the photo as originally downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// The street photo.
    pub photo: PhotoId,
    /// The product worn in it.
    pub product: ProductId,
    /// The garment's box, as written in the file.
    pub bbox: BBox,
}

/// The three label files of one category (a missing pairs file reads as empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CategoryLabels {
    /// `retrieval_<cat>.json`, in file order.
    pub retrieval: Vec<RetrievalRecord>,
    /// `train_pairs_<cat>.json`, in file order.
    pub train: Vec<PairRecord>,
    /// `test_pairs_<cat>.json`, in file order.
    pub test: Vec<PairRecord>,
}

impl CategoryLabels {
    /// The pairs of one split.
    pub fn pairs(&self, split: PairSplit) -> &[PairRecord] {
        match split {
            PairSplit::Train => &self.train,
            PairSplit::Test => &self.test,
        }
    }
}

/// A label folder, read and validated.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// The categories found in the file names, each with its records.
    pub categories: BTreeMap<Category, CategoryLabels>,
    /// The folder's `aspect_ratios.csv`, when present.
    pub aspect_ratios: Option<AspectRatios>,
}

impl Labels {
    /// Reads a label folder. Any problem of severity error (unreadable or non-JSON file, wrong
    /// type, negative or missing field, unexpected file name, pairs for a category without a
    /// retrieval file, bad ratio file) fails the load; all of them are returned.
    pub fn load(dir: &Path) -> Result<Labels, Problems> {
        let (labels, problems) = Labels::load_lenient(dir);
        let errors: Vec<Problem> = problems.into_iter().filter(|p| p.is_error()).collect();
        if errors.is_empty() {
            Ok(labels)
        } else {
            Err(Problems(errors))
        }
    }

    /// Reads what can be read of a label folder and returns every problem found (errors and
    /// warnings). A file with an error contributes only its valid records.
    pub fn load_lenient(dir: &Path) -> (Labels, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut labels = Labels {
            dir: dir.to_path_buf(),
            ..Labels::default()
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(Problem::error(
                    dir,
                    format!("cannot read label folder: {e}"),
                ));
                return (labels, problems);
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut seen_kinds: BTreeMap<Category, BTreeSet<LabelFileKind>> = BTreeMap::new();
        for path in &files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == ASPECT_RATIOS_FILE {
                match AspectRatios::load(path) {
                    Ok(ratios) => labels.aspect_ratios = Some(ratios),
                    Err(errors) => problems.extend(errors.0),
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue; // READMEs, CSV files and the like belong to the folder but not to us
            }
            let (kind, category) = match parse_label_file_name(name) {
                Ok(parsed) => parsed,
                Err(e) => {
                    problems.push(Problem::error(path, e.to_string()));
                    continue;
                }
            };
            seen_kinds.entry(category.clone()).or_default().insert(kind);
            let entry = labels.categories.entry(category).or_default();
            match kind {
                LabelFileKind::Retrieval => {
                    entry.retrieval = read_retrieval_file(path, &mut problems);
                }
                LabelFileKind::TrainPairs => entry.train = read_pairs_file(path, &mut problems),
                LabelFileKind::TestPairs => entry.test = read_pairs_file(path, &mut problems),
            }
        }
        for (category, kinds) in &seen_kinds {
            if kinds.contains(&LabelFileKind::Retrieval) {
                continue;
            }
            let retrieval = LabelFileKind::Retrieval.file_name(category);
            for kind in kinds {
                problems.push(Problem::error(
                    dir.join(kind.file_name(category)),
                    format!(
                        "unknown category {:?}: there is no {retrieval} beside it, so its products have no shop photos",
                        category.as_str()
                    ),
                ));
            }
            labels.categories.remove(category);
        }
        if labels.categories.is_empty() && !problems.iter().any(|p| p.is_error()) {
            problems.push(Problem::error(
                dir,
                "no label files (retrieval_<category>.json, ...) in this folder",
            ));
        }
        (labels, problems)
    }

    /// The categories, in name order.
    pub fn category_names(&self) -> impl Iterator<Item = &Category> {
        self.categories.keys()
    }

    /// The labels of one category.
    pub fn category(&self, category: &Category) -> Option<&CategoryLabels> {
        self.categories.get(category)
    }

    /// Every shop photo with the product it shows, over all categories (one entry per
    /// distinct (photo, product key)).
    pub fn shop_photos(&self) -> BTreeMap<PhotoId, BTreeSet<ProductKey>> {
        let mut out: BTreeMap<PhotoId, BTreeSet<ProductKey>> = BTreeMap::new();
        for (category, labels) in &self.categories {
            for r in &labels.retrieval {
                out.entry(r.photo)
                    .or_default()
                    .insert(ProductKey::new(category.clone(), r.product));
            }
        }
        out
    }

    /// How many pair records (over all categories and both splits) each street photo has.
    pub fn items_per_street_photo(&self) -> BTreeMap<PhotoId, usize> {
        let mut out: BTreeMap<PhotoId, usize> = BTreeMap::new();
        for labels in self.categories.values() {
            for r in labels.train.iter().chain(&labels.test) {
                *out.entry(r.photo).or_default() += 1;
            }
        }
        out
    }
}

/// Reads and parses a JSON file into a top-level array, or records why not.
fn read_array(path: &Path, problems: &mut Vec<Problem>) -> Option<Vec<Value>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            problems.push(Problem::error(path, format!("cannot read: {e}")));
            return None;
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => {
            let what = if e.is_eof() {
                "truncated JSON"
            } else {
                "invalid JSON"
            };
            problems.push(Problem::error(
                path,
                format!("{what} at line {} column {}: {e}", e.line(), e.column()),
            ));
            return None;
        }
    };
    match value {
        Value::Array(items) => Some(items),
        other => {
            problems.push(Problem::error(
                path,
                format!(
                    "expected a JSON array of records, found {}",
                    type_name(&other)
                ),
            ));
            None
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number with a fraction",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a record is an object and returns it.
fn as_record<'a>(
    path: &Path,
    index: usize,
    value: &'a Value,
    problems: &mut Vec<Problem>,
) -> Option<&'a serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        other => {
            problems.push(
                Problem::error(
                    path,
                    format!("expected an object, found {}", type_name(other)),
                )
                .at(index),
            );
            None
        }
    }
}

/// A required non-negative integer field (ids).
fn id_field(
    path: &Path,
    index: usize,
    map: &serde_json::Map<String, Value>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    let problem = |message: String| Problem::error(path, message).at(index).field(field);
    match map.get(field) {
        None => {
            problems.push(problem("missing".into()));
            None
        }
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Some(v)
            } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
                problems.push(problem(format!("must not be negative, found {n}")));
                None
            } else {
                problems.push(problem(format!("expected an integer id, found {n}")));
                None
            }
        }
        Some(other) => {
            problems.push(problem(format!(
                "expected a non-negative integer, found {}",
                type_name(other)
            )));
            None
        }
    }
}

/// A required non-negative number field (box coordinates).
fn coord_field(
    path: &Path,
    index: usize,
    map: &serde_json::Map<String, Value>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<f64> {
    let name = format!("bbox.{field}");
    let problem = |message: String| Problem::error(path, message).at(index).field(name.clone());
    match map.get(field) {
        None => {
            problems.push(problem("missing".into()));
            None
        }
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Some(v),
            Some(v) if v < 0.0 => {
                problems.push(problem(format!("must not be negative, found {n}")));
                None
            }
            _ => {
                problems.push(problem(format!("not a finite number: {n}")));
                None
            }
        },
        Some(other) => {
            problems.push(problem(format!(
                "expected a non-negative number, found {}",
                type_name(other)
            )));
            None
        }
    }
}

fn warn_unknown_fields(
    path: &Path,
    index: usize,
    map: &serde_json::Map<String, Value>,
    known: &[&str],
    prefix: &str,
    problems: &mut Vec<Problem>,
) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(
                Problem::warning(path, "unknown field, ignored")
                    .at(index)
                    .field(format!("{prefix}{key}")),
            );
        }
    }
}

/// Reads a `retrieval_<cat>.json` file; every problem goes to `problems`, with the file, the
/// record index and the field. Returns the valid records.
pub fn read_retrieval_file(path: &Path, problems: &mut Vec<Problem>) -> Vec<RetrievalRecord> {
    let Some(items) = read_array(path, problems) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(map) = as_record(path, index, item, problems) else {
            continue;
        };
        let photo = id_field(path, index, map, "photo", problems);
        let product = id_field(path, index, map, "product", problems);
        warn_unknown_fields(path, index, map, &["photo", "product"], "", problems);
        if let (Some(photo), Some(product)) = (photo, product) {
            out.push(RetrievalRecord {
                photo: PhotoId(photo),
                product: ProductId(product),
            });
        }
    }
    out
}

/// Reads a `{train,test}_pairs_<cat>.json` file; every problem goes to `problems`, with the
/// file, the record index and the field. Returns the valid records.
pub fn read_pairs_file(path: &Path, problems: &mut Vec<Problem>) -> Vec<PairRecord> {
    let Some(items) = read_array(path, problems) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(map) = as_record(path, index, item, problems) else {
            continue;
        };
        let photo = id_field(path, index, map, "photo", problems);
        let product = id_field(path, index, map, "product", problems);
        warn_unknown_fields(
            path,
            index,
            map,
            &["photo", "product", "bbox"],
            "",
            problems,
        );
        let bbox = match map.get("bbox") {
            None => {
                problems.push(Problem::error(path, "missing").at(index).field("bbox"));
                None
            }
            Some(Value::Object(b)) => {
                let left = coord_field(path, index, b, "left", problems);
                let top = coord_field(path, index, b, "top", problems);
                let width = coord_field(path, index, b, "width", problems);
                let height = coord_field(path, index, b, "height", problems);
                warn_unknown_fields(
                    path,
                    index,
                    b,
                    &["left", "top", "width", "height"],
                    "bbox.",
                    problems,
                );
                match (left, top, width, height) {
                    (Some(left), Some(top), Some(width), Some(height)) => Some(BBox {
                        left,
                        top,
                        width,
                        height,
                    }),
                    _ => None,
                }
            }
            Some(other) => {
                problems.push(
                    Problem::error(
                        path,
                        format!("expected an object, found {}", type_name(other)),
                    )
                    .at(index)
                    .field("bbox"),
                );
                None
            }
        };
        if let (Some(photo), Some(product), Some(bbox)) = (photo, product, bbox) {
            out.push(PairRecord {
                photo: PhotoId(photo),
                product: ProductId(product),
                bbox,
            });
        }
    }
    out
}

//! Evaluation protocols: which queries are searched against which gallery.
//!
//! - [`original`]: the original project's. Street photos of dresses and tops that show a
//!   single item, their products split with a seed into a validation and a test half; each
//!   half's queries search the shop photos of that half's products.
//! - [`full`]: every category; queries are the `test_pairs` records, the gallery is every shop
//!   photo of the category (distractor products included), less an optional exclusion list.
//! - [`category`]: `queries.csv` (path, category) against `gallery.csv` (path, product,
//!   category); a hit is a gallery photo of the query's category.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wtb_dataset::BBox;

use crate::metrics::{SplitMix64, Target};
use crate::report::SkippedItem;
use crate::EvalError;

/// The seed of the original project's split.
pub const ORIGINAL_SEED: u64 = 2018;
/// The categories the original project evaluated.
pub const ORIGINAL_CATEGORIES: [&str; 2] = ["dresses", "tops"];

/// One query: an image (or a box of it) and what counts as a correct answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Unique id within its protocol (`category/photo/product` or the CSV path).
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// The box to crop to, if any.
    pub bbox: Option<BBox>,
    /// The query's category (the reporting stratum).
    pub category: String,
    /// The correct answer.
    pub target: Target,
}

/// One gallery photo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GalleryPhoto {
    /// Photo id (unique within the protocol).
    pub photo: u64,
    /// Product shown.
    pub product: u64,
    /// Product category.
    pub category: String,
    /// The image file.
    pub path: PathBuf,
}

/// Queries that all search the same gallery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchGroup {
    /// Group name (the category, or `all`).
    pub name: String,
    /// The queries.
    pub queries: Vec<Query>,
    /// The gallery they search.
    pub gallery: Vec<GalleryPhoto>,
}

/// One evaluation set (for example the validation or the test half), reported separately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSet {
    /// Set name.
    pub name: String,
    /// Its search groups.
    pub groups: Vec<SearchGroup>,
}

/// A protocol made concrete on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    /// `original`, `full` or `category`.
    pub name: String,
    /// What the protocol does and how it differs from the original, for the report.
    pub notes: Vec<String>,
    /// The sets, each reported separately.
    pub sets: Vec<EvalSet>,
    /// Records left out, with the reason.
    pub skipped: Vec<SkippedItem>,
    /// True for category benchmarks (hit = same category).
    pub category_targets: bool,
}

#[derive(Deserialize)]
struct PairRecord {
    photo: u64,
    product: u64,
    bbox: JsonBox,
}

#[derive(Deserialize)]
struct JsonBox {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

#[derive(Deserialize)]
struct ShopRecord {
    photo: u64,
    product: u64,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| EvalError::Format {
        path: path.to_path_buf(),
        reason: format!("not a street2shop label file: {e}"),
    })
}

/// The label files present in `labels`: (kind, category) → path, kind in `train_pairs`,
/// `test_pairs`, `retrieval`.
fn label_files(labels: &Path) -> Result<BTreeMap<(String, String), PathBuf>, EvalError> {
    let entries = std::fs::read_dir(labels).map_err(|source| EvalError::Io {
        path: labels.to_path_buf(),
        source,
    })?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        for kind in ["train_pairs", "test_pairs", "retrieval"] {
            if let Some(category) = stem.strip_prefix(kind).and_then(|s| s.strip_prefix('_')) {
                files.insert((kind.to_string(), category.to_string()), entry.path());
            }
        }
    }
    if files.is_empty() {
        return Err(EvalError::Format {
            path: labels.to_path_buf(),
            reason:
                "no street2shop label files ({train,test}_pairs_<cat>.json, retrieval_<cat>.json)"
                    .into(),
        });
    }
    Ok(files)
}

fn photo_file(photos: &Path, photo: u64) -> PathBuf {
    wtb_dataset::photo_path(photos, wtb_dataset::PhotoId(photo))
}

/// Whether a box can be cropped at all (finite, positive size).
fn usable_box(b: &JsonBox) -> bool {
    [b.left, b.top, b.width, b.height]
        .iter()
        .all(|v| v.is_finite())
        && b.width > 0.0
        && b.height > 0.0
}

fn to_query(category: &str, record: &PairRecord, photos: &Path) -> Query {
    Query {
        id: format!("{category}/{}/{}", record.photo, record.product),
        path: photo_file(photos, record.photo),
        bbox: Some(BBox {
            left: record.bbox.left,
            top: record.bbox.top,
            width: record.bbox.width,
            height: record.bbox.height,
        }),
        category: category.to_string(),
        target: Target::Product(record.product),
    }
}

fn shop_photos(
    files: &BTreeMap<(String, String), PathBuf>,
    category: &str,
    photos: &Path,
    excluded: &HashSet<u64>,
    skipped: &mut Vec<SkippedItem>,
) -> Result<Vec<GalleryPhoto>, EvalError> {
    let Some(path) = files.get(&("retrieval".to_string(), category.to_string())) else {
        return Ok(Vec::new());
    };
    let mut seen = HashSet::new();
    let mut gallery = Vec::new();
    for record in read_json::<ShopRecord>(path)? {
        if excluded.contains(&record.photo) {
            continue;
        }
        if !seen.insert(record.photo) {
            skipped.push(SkippedItem {
                item: format!("{category} shop photo {}", record.photo),
                reason: "listed twice in the retrieval file; kept once".into(),
            });
            continue;
        }
        gallery.push(GalleryPhoto {
            photo: record.photo,
            product: record.product,
            category: category.to_string(),
            path: photo_file(photos, record.photo),
        });
    }
    Ok(gallery)
}

/// The original protocol: dresses and tops street photos showing a single item (a photo with
/// exactly one record across all pairs files of all categories), train and test pairs
/// together (no model is trained here); each category's products, sorted by id, are
/// shuffled with `seed` and split in half (validation gets the extra one); each half's
/// queries search that half's shop photos.
pub fn original(labels: &Path, photos: &Path, seed: u64) -> Result<Protocol, EvalError> {
    let files = label_files(labels)?;
    let mut records_per_photo: HashMap<u64, usize> = HashMap::new();
    let mut pairs: BTreeMap<String, Vec<PairRecord>> = BTreeMap::new();
    for ((kind, category), path) in &files {
        if kind == "retrieval" {
            continue;
        }
        let records: Vec<PairRecord> = read_json(path)?;
        for r in &records {
            *records_per_photo.entry(r.photo).or_default() += 1;
        }
        if ORIGINAL_CATEGORIES.contains(&category.as_str()) {
            pairs.entry(category.clone()).or_default().extend(records);
        }
    }

    let mut skipped = Vec::new();
    let mut validation = Vec::new();
    let mut test = Vec::new();
    for category in ORIGINAL_CATEGORIES {
        let mut queries: Vec<Query> = Vec::new();
        for record in pairs.get(category).map(Vec::as_slice).unwrap_or_default() {
            if records_per_photo.get(&record.photo).copied().unwrap_or(0) != 1 {
                continue;
            }
            if !usable_box(&record.bbox) {
                skipped.push(SkippedItem {
                    item: format!("query {category}/{}/{}", record.photo, record.product),
                    reason: "box has no area".into(),
                });
                continue;
            }
            queries.push(to_query(category, record, photos));
        }
        queries.sort_by(|a, b| a.id.cmp(&b.id));
        queries.dedup_by(|a, b| a.id == b.id);

        let products: BTreeSet<u64> = queries
            .iter()
            .filter_map(|q| match q.target {
                Target::Product(p) => Some(p),
                Target::Category(_) => None,
            })
            .collect();
        let mut products: Vec<u64> = products.into_iter().collect();
        shuffle(&mut products, seed);
        let half = products.len().div_ceil(2);
        let validation_products: HashSet<u64> = products[..half].iter().copied().collect();

        let gallery = shop_photos(&files, category, photos, &HashSet::new(), &mut skipped)?;
        for (name, sets) in [("validation", &mut validation), ("test", &mut test)] {
            let in_half = |p: u64| validation_products.contains(&p) == (name == "validation");
            sets.push(SearchGroup {
                name: category.to_string(),
                queries: queries
                    .iter()
                    .filter(|q| matches!(q.target, Target::Product(p) if in_half(p)))
                    .cloned()
                    .collect(),
                gallery: gallery
                    .iter()
                    .filter(|g| in_half(g.product))
                    .cloned()
                    .collect(),
            });
        }
    }
    let notes = vec![
        format!(
            "Protocol `original`: street photos of {} that show a single item, their products split \
             with seed {seed} into a validation and a test half; each half's queries are cropped to \
             their box and searched against the shop photos of that half's products only; hits are \
             counted over distinct products.",
            ORIGINAL_CATEGORIES.join(" and ")
        ),
        "Differences from the original that cannot be removed: the original shuffled with \
         Python's generator, whose permutation is not reproduced here (we use SplitMix64 \
         Fisher-Yates over the sorted product ids), so the halves hold different products; its \
         label JSON is rebuilt (record order differs); train and test pairs are both used as \
         queries because no model is trained; a street photo counts as single-item when it has \
         exactly one record across all categories' pairs files."
            .to_string(),
    ];
    Ok(Protocol {
        name: "original".into(),
        notes,
        sets: vec![
            EvalSet {
                name: "validation".into(),
                groups: validation,
            },
            EvalSet {
                name: "test".into(),
                groups: test,
            },
        ],
        skipped,
        category_targets: false,
    })
}

/// The full protocol: for every category with a `test_pairs` file, every test record is a
/// query (cropped to its box) searched against all shop photos of that category in the
/// retrieval file, distractors included, less the photo ids in `excluded` (a cleaning list).
pub fn full(labels: &Path, photos: &Path, excluded: &HashSet<u64>) -> Result<Protocol, EvalError> {
    let files = label_files(labels)?;
    let mut skipped = Vec::new();
    let mut groups = Vec::new();
    for ((kind, category), path) in &files {
        if kind != "test_pairs" {
            continue;
        }
        let mut queries = Vec::new();
        let mut seen = HashSet::new();
        for record in read_json::<PairRecord>(path)? {
            let item = format!("query {category}/{}/{}", record.photo, record.product);
            if !usable_box(&record.bbox) {
                skipped.push(SkippedItem {
                    item,
                    reason: "box has no area".into(),
                });
                continue;
            }
            if !seen.insert((record.photo, record.product)) {
                skipped.push(SkippedItem {
                    item,
                    reason: "duplicate record".into(),
                });
                continue;
            }
            queries.push(to_query(category, &record, photos));
        }
        queries.sort_by(|a, b| a.id.cmp(&b.id));
        let gallery = shop_photos(&files, category, photos, excluded, &mut skipped)?;
        groups.push(SearchGroup {
            name: category.clone(),
            queries,
            gallery,
        });
    }
    let notes = vec![format!(
        "Protocol `full`: every category; queries are the `test_pairs` records cropped to their box; \
         each searches all shop photos of its category in the retrieval file, distractor products \
         included{}.",
        if excluded.is_empty() {
            String::from(" (no exclusion list given: junk photos stay in the gallery)")
        } else {
            format!(", less {} excluded photos", excluded.len())
        }
    )];
    Ok(Protocol {
        name: "full".into(),
        notes,
        sets: vec![EvalSet {
            name: "test".into(),
            groups,
        }],
        skipped,
        category_targets: false,
    })
}

/// Reads an exclusion list: one photo id per line in the first comma-separated column; blank
/// lines, `#` comments and a non-numeric header line are ignored.
pub fn read_exclusions(path: &Path) -> Result<HashSet<u64>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut ids = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = line.split(',').next().unwrap_or_default().trim();
        match field.parse::<u64>() {
            Ok(id) => {
                ids.insert(id);
            }
            Err(_) if index == 0 => {}
            Err(_) => {
                return Err(EvalError::Format {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {field:?} is not a photo id", index + 1),
                })
            }
        }
    }
    Ok(ids)
}

fn read_csv(path: &Path, columns: &[&str]) -> Result<Vec<Vec<String>>, EvalError> {
    let bad = |reason: String| EvalError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let positions: Vec<usize> = columns
        .iter()
        .map(|c| {
            headers.iter().position(|h| h.trim() == *c).ok_or_else(|| {
                bad(format!(
                    "no column {c:?} (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("record {}: {e}", index + 1)))?;
        rows.push(
            positions
                .iter()
                .map(|&p| record.get(p).unwrap_or_default().trim().to_string())
                .collect(),
        );
    }
    Ok(rows)
}

/// The category benchmark: every row of `queries` (columns `path`, `category`) searches every
/// row of `gallery` (columns `path`, `product`, `category`); paths are relative to the CSV's
/// folder. Gallery photo ids are row numbers (from 1). Rows with an empty path or category or
/// a bad product id are skipped and reported.
pub fn category(queries: &Path, gallery: &Path) -> Result<Protocol, EvalError> {
    let base = |csv: &Path| csv.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut skipped = Vec::new();
    let mut photos = Vec::new();
    for (index, row) in read_csv(gallery, &["path", "product", "category"])?
        .into_iter()
        .enumerate()
    {
        let item = format!("{} row {}", gallery.display(), index + 1);
        let product = row[1].parse::<u64>();
        match product {
            Ok(product) if !row[0].is_empty() && !row[2].is_empty() => photos.push(GalleryPhoto {
                photo: index as u64 + 1,
                product,
                category: row[2].clone(),
                path: base(gallery).join(&row[0]),
            }),
            _ => skipped.push(SkippedItem {
                item,
                reason: "empty path or category, or product is not a number".into(),
            }),
        }
    }
    let mut query_list = Vec::new();
    let mut seen = HashSet::new();
    for (index, row) in read_csv(queries, &["path", "category"])?
        .into_iter()
        .enumerate()
    {
        let item = format!("{} row {}", queries.display(), index + 1);
        if row[0].is_empty() || row[1].is_empty() {
            skipped.push(SkippedItem {
                item,
                reason: "empty path or category".into(),
            });
            continue;
        }
        if !seen.insert(row[0].clone()) {
            skipped.push(SkippedItem {
                item,
                reason: format!("duplicate query {}", row[0]),
            });
            continue;
        }
        query_list.push(Query {
            id: row[0].clone(),
            path: base(queries).join(&row[0]),
            bbox: None,
            category: row[1].clone(),
            target: Target::Category(row[1].clone()),
        });
    }
    let notes = vec![format!(
        "Protocol `category`: {} queries ({}) against {} gallery photos ({}); a hit is a gallery \
         product of the query's category; queries are not cropped.",
        query_list.len(),
        queries.display(),
        photos.len(),
        gallery.display()
    )];
    Ok(Protocol {
        name: "category".into(),
        notes,
        sets: vec![EvalSet {
            name: "all".into(),
            groups: vec![SearchGroup {
                name: "all".into(),
                queries: query_list,
                gallery: photos,
            }],
        }],
        skipped,
        category_targets: true,
    })
}

/// Fisher-Yates with SplitMix64: the same permutation for the same seed on every platform.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn pair(photo: u64, product: u64) -> String {
        format!(
            r#"{{"photo":{photo},"product":{product},"bbox":{{"left":1,"top":2,"width":10,"height":20}}}}"#
        )
    }

    fn labels() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Photo 100 shows two items (dress and top): not single-item.
        let dresses: Vec<String> = (0..6)
            .map(|i| pair(10 + i, 1 + i))
            .chain([pair(100, 1)])
            .collect();
        write(
            d,
            "train_pairs_dresses.json",
            &format!("[{}]", dresses.join(",")),
        );
        write(
            d,
            "test_pairs_dresses.json",
            &format!("[{}]", [pair(20, 2), pair(21, 9)].join(",")),
        );
        write(
            d,
            "test_pairs_tops.json",
            &format!("[{}]", [pair(30, 50), pair(100, 51)].join(",")),
        );
        let shop: Vec<String> = (1..=7)
            .map(|p| format!(r#"{{"photo":{},"product":{p}}}"#, 1000 + p))
            .chain([r#"{"photo":2000,"product":1}"#.to_string()])
            .collect();
        write(
            d,
            "retrieval_dresses.json",
            &format!("[{}]", shop.join(",")),
        );
        write(
            d,
            "retrieval_tops.json",
            r#"[{"photo":3000,"product":50},{"photo":3001,"product":77}]"#,
        );
        dir
    }

    #[test]
    fn original_splits_single_item_dress_and_top_queries_by_product() {
        let dir = labels();
        let p = original(dir.path(), Path::new("photos"), ORIGINAL_SEED).unwrap();
        assert_eq!(p.sets.len(), 2);
        let dresses: Vec<&SearchGroup> = p.sets.iter().map(|s| &s.groups[0]).collect();
        let products = |g: &SearchGroup| -> BTreeSet<u64> {
            g.queries
                .iter()
                .map(|q| match q.target {
                    Target::Product(p) => p,
                    Target::Category(_) => 0,
                })
                .collect()
        };
        let (v, t) = (products(dresses[0]), products(dresses[1]));
        // Products 1..=6 and 9 (photo 100 excluded as two-item; product 1 still has photo 10).
        assert_eq!(v.len() + t.len(), 7);
        assert_eq!(v.len(), 4);
        assert!(v.is_disjoint(&t));
        // Galleries hold exactly their half's products.
        for (group, half) in [(dresses[0], &v), (dresses[1], &t)] {
            assert!(group.gallery.iter().all(|g| half.contains(&g.product)));
        }
        // Photo 100 never appears as a query.
        assert!(p
            .sets
            .iter()
            .flat_map(|s| &s.groups)
            .flat_map(|g| &g.queries)
            .all(|q| !q.id.contains("/100/")));
        // Deterministic, and the seed matters.
        assert_eq!(
            original(dir.path(), Path::new("photos"), ORIGINAL_SEED).unwrap(),
            p
        );
        let other: Vec<Protocol> = (0..5)
            .map(|s| original(dir.path(), Path::new("photos"), s).unwrap())
            .collect();
        assert!(other.iter().any(|o| o.sets != p.sets));
        assert_eq!(
            dresses[0].queries[0].path,
            Path::new("photos").join(format!(
                "{}.jpg",
                dresses[0].queries[0].id.split('/').nth(1).unwrap()
            ))
        );
    }

    #[test]
    fn full_uses_test_pairs_and_all_shop_photos_less_exclusions() {
        let dir = labels();
        let excluded: HashSet<u64> = [2000].into_iter().collect();
        let p = full(dir.path(), Path::new("photos"), &excluded).unwrap();
        let groups = &p.sets[0].groups;
        assert_eq!(
            groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["dresses", "tops"]
        );
        assert_eq!(groups[0].queries.len(), 2);
        assert_eq!(groups[0].gallery.len(), 7);
        // Two-item photos stay in `full`: each record is a query; distractor 77 is in the gallery.
        assert_eq!(groups[1].queries.len(), 2);
        assert!(groups[1].gallery.iter().any(|g| g.product == 77));
    }

    #[test]
    fn zero_area_boxes_are_skipped_and_reported() {
        let dir = labels();
        write(
            dir.path(),
            "test_pairs_hats.json",
            r#"[{"photo":5,"product":6,"bbox":{"left":1,"top":2,"width":0,"height":0}}]"#,
        );
        let p = full(dir.path(), Path::new("photos"), &HashSet::new()).unwrap();
        assert!(p.skipped.iter().any(|s| s.item == "query hats/5/6"));
    }

    #[test]
    fn bad_label_file_names_the_file() {
        let dir = labels();
        write(dir.path(), "test_pairs_bags.json", "{not json");
        let err = full(dir.path(), Path::new("photos"), &HashSet::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("test_pairs_bags.json"), "{err}");
    }

    #[test]
    fn category_protocol_reads_csvs() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "queries.csv",
            "path,category\nq/a.jpg,tops\nq/b.jpg,\nq/a.jpg,tops\n",
        );
        write(
            dir.path(),
            "gallery.csv",
            "path,product,category\ng/1.jpg,1,tops\ng/2.jpg,x,tops\ng/3.jpg,3,pants\n",
        );
        let p = category(
            &dir.path().join("queries.csv"),
            &dir.path().join("gallery.csv"),
        )
        .unwrap();
        let group = &p.sets[0].groups[0];
        assert_eq!(group.queries.len(), 1);
        assert_eq!(group.queries[0].path, dir.path().join("q/a.jpg"));
        assert_eq!(group.gallery.len(), 2);
        assert_eq!(p.skipped.len(), 3);
        assert!(p.category_targets);
        write(dir.path(), "bad.csv", "file,category\n");
        let err = category(&dir.path().join("bad.csv"), &dir.path().join("gallery.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.csv") && err.contains("\"path\""), "{err}");
    }

    #[test]
    fn exclusion_lists_parse() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ex.csv",
            "photo,reason\n12,placeholder\n# note\n\n13\n",
        );
        let ids = read_exclusions(&dir.path().join("ex.csv")).unwrap();
        assert_eq!(ids, [12, 13].into_iter().collect());
        write(dir.path(), "bad.csv", "12\nabc\n");
        assert!(read_exclusions(&dir.path().join("bad.csv"))
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}

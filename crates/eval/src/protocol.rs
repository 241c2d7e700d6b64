//! Evaluation protocols: which queries are searched against which gallery.
//!
//! - [`original`]: the original project's. Street photos of dresses and tops that show a
//!   single item, their products split with a seed into a validation and a test half; each
//!   half's queries search the shop photos of that half's products.
//! - [`full`]: every category; queries are the `test_pairs` records, the gallery is every shop
//!   photo of the category (distractor products included), less an optional exclusion list.
//! - [`category`]: `queries.csv` (path, category) against `gallery.csv` (path, product,
//!   category); a hit is a gallery photo of the query's category.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wtb_dataset::{
    photo_path, BBox, Category, Exclusions, Labels, PairSplit, ProductKey, ProductSplit,
    QueryOptions,
};

pub use wtb_dataset::{ORIGINAL_CATEGORIES, ORIGINAL_SEED};

use crate::metrics::Target;
use crate::results::SkippedItem;
use crate::EvalError;

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

fn load_labels(labels: &Path) -> Result<Labels, EvalError> {
    Labels::load(labels).map_err(|problems| EvalError::Format {
        path: labels.to_path_buf(),
        reason: problems.to_string(),
    })
}

fn to_query(query: &wtb_dataset::Query, photos: &Path) -> Query {
    let category = query.product.category.as_str();
    Query {
        id: format!("{category}/{}/{}", query.photo.0, query.product.product.0),
        path: photo_path(photos, query.photo),
        bbox: Some(query.bbox),
        category: category.to_string(),
        target: Target::Product(query.product.product.0),
    }
}

fn to_gallery(item: &wtb_dataset::GalleryItem, photos: &Path) -> GalleryPhoto {
    GalleryPhoto {
        photo: item.photo.0,
        product: item.product.product.0,
        category: item.product.category.as_str().to_string(),
        path: photo_path(photos, item.photo),
    }
}

fn skipped_queries(queries: &wtb_dataset::Queries) -> Vec<SkippedItem> {
    queries
        .skipped
        .iter()
        .map(|s| SkippedItem {
            item: format!(
                "query {}/{}/{} ({:?} pairs record {})",
                s.product.category, s.photo.0, s.product.product.0, s.split, s.record
            ),
            reason: format!("{:?}", s.reason),
        })
        .collect()
}

fn categories(names: &[&str]) -> Result<BTreeSet<Category>, EvalError> {
    names
        .iter()
        .map(|n| Category::new(n).map_err(|e| EvalError::Config(e.to_string())))
        .collect()
}

/// The original protocol: the `test_pairs` street photos of dresses and tops that show a
/// single item (one pair record over all categories and files), their products split with
/// `seed` into a validation and a test half (`wtb_dataset::ProductSplit`); each half's
/// queries search the shop photos of that half's products, per category.
pub fn original(labels: &Path, photos: &Path, seed: u64) -> Result<Protocol, EvalError> {
    let labels = load_labels(labels)?;
    let wanted = categories(&ORIGINAL_CATEGORIES)?;
    let queries = labels.queries(&QueryOptions {
        categories: Some(wanted.clone()),
        splits: vec![PairSplit::Test],
        single_item_only: true,
    });
    let split =
        ProductSplit::new(seed, &[0.5, 0.5]).map_err(|e| EvalError::Config(e.to_string()))?;
    let halves = split.split_queries(&queries.queries);
    let gallery = labels.gallery(Some(&wanted), None);

    let mut sets = Vec::new();
    for (name, half) in ["validation", "test"].iter().zip(&halves) {
        let products: HashSet<&ProductKey> = half.iter().map(|q| &q.product).collect();
        let groups = wanted
            .iter()
            .map(|category| SearchGroup {
                name: category.as_str().to_string(),
                queries: half
                    .iter()
                    .filter(|q| q.product.category == *category)
                    .map(|q| to_query(q, photos))
                    .collect(),
                gallery: gallery
                    .items
                    .iter()
                    .filter(|g| g.product.category == *category && products.contains(&g.product))
                    .map(|g| to_gallery(g, photos))
                    .collect(),
            })
            .collect();
        sets.push(EvalSet {
            name: name.to_string(),
            groups,
        });
    }
    let notes = vec![
        format!(
            "Protocol `original`: `test_pairs` street photos of {} that show a single item, their \
             products split with seed {seed} into a validation and a test half; each half's queries \
             are cropped to their box and searched against the shop photos of that half's products \
             only; hits are counted over distinct products.",
            ORIGINAL_CATEGORIES.join(" and ")
        ),
        "Differences from the original that cannot be removed: the original shuffled with \
         Python's generator, whose permutation is not reproduced here (SplitMix64 Fisher-Yates \
         over the sorted product keys instead), so the halves hold different products; the \
         label JSON is rebuilt (record order differs); a street photo counts as single-item \
         when it has exactly one pair record across all categories and both pairs files."
            .to_string(),
    ];
    Ok(Protocol {
        name: "original".into(),
        notes,
        sets,
        skipped: skipped_queries(&queries)
            .into_iter()
            .filter(|s| !s.reason.starts_with("MultipleItems"))
            .collect(),
        category_targets: false,
    })
}

/// The full protocol: for every category, every `test_pairs` record is a query (cropped to
/// its box) searched against all shop photos of that category, distractors included, less
/// the photos of `exclusions` (the output of dataset cleaning).
pub fn full(
    labels: &Path,
    photos: &Path,
    exclusions: Option<&Exclusions>,
) -> Result<Protocol, EvalError> {
    let labels = load_labels(labels)?;
    let queries = labels.queries(&QueryOptions {
        categories: None,
        splits: vec![PairSplit::Test],
        single_item_only: false,
    });
    let gallery = labels.gallery(None, exclusions);
    let mut groups = Vec::new();
    for category in labels.category_names() {
        let group_queries: Vec<Query> = queries
            .queries
            .iter()
            .filter(|q| q.product.category == *category)
            .map(|q| to_query(q, photos))
            .collect();
        if group_queries.is_empty() {
            continue;
        }
        groups.push(SearchGroup {
            name: category.as_str().to_string(),
            queries: group_queries,
            gallery: gallery
                .items
                .iter()
                .filter(|g| g.product.category == *category)
                .map(|g| to_gallery(g, photos))
                .collect(),
        });
    }
    let notes = vec![format!(
        "Protocol `full`: every category; queries are the `test_pairs` records cropped to their box; \
         each searches all shop photos of its category, distractor products included{}.",
        match exclusions {
            None => String::from(" (no exclusion file given: junk photos stay in the gallery)"),
            Some(e) => format!(", less the {} photos of the exclusion file ({} records)", e.len(), gallery.excluded_records),
        }
    )];
    Ok(Protocol {
        name: "full".into(),
        notes,
        sets: vec![EvalSet {
            name: "test".into(),
            groups,
        }],
        skipped: skipped_queries(&queries),
        category_targets: false,
    })
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
        // Photo 100 shows two items (a dress and a top): not single-item.
        let dresses: Vec<String> = (0..6)
            .map(|i| pair(10 + i, 1 + i))
            .chain([pair(100, 1)])
            .collect();
        write(
            d,
            "test_pairs_dresses.json",
            &format!("[{}]", dresses.join(",")),
        );
        write(d, "train_pairs_dresses.json", &format!("[{}]", pair(40, 9)));
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

    fn target_products(group: &SearchGroup) -> BTreeSet<u64> {
        group
            .queries
            .iter()
            .map(|q| match q.target {
                Target::Product(p) => p,
                Target::Category(_) => 0,
            })
            .collect()
    }

    #[test]
    fn original_splits_single_item_dress_and_top_test_queries_by_product() {
        let dir = labels();
        let p = original(dir.path(), Path::new("photos"), ORIGINAL_SEED).unwrap();
        assert_eq!(p.sets.len(), 2);
        let mut halves = Vec::new();
        for set in &p.sets {
            assert_eq!(
                set.groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>(),
                ["dresses", "tops"]
            );
            let mut products = BTreeSet::new();
            for group in &set.groups {
                let targets = target_products(group);
                // A half's gallery holds exactly its own products' photos.
                assert!(
                    group.gallery.iter().all(|g| targets.contains(&g.product)),
                    "{group:?}"
                );
                products.extend(targets.into_iter().map(|t| (group.name.clone(), t)));
            }
            halves.push(products);
        }
        // Dresses 1..=6 and top 50; photo 100 (two items) and train photo 40 are not queries.
        assert_eq!(halves[0].len() + halves[1].len(), 7);
        assert_eq!(halves[0].len(), 4);
        assert!(halves[0].is_disjoint(&halves[1]));
        let all_queries = p
            .sets
            .iter()
            .flat_map(|s| &s.groups)
            .flat_map(|g| &g.queries);
        assert!(all_queries
            .clone()
            .all(|q| !q.id.contains("/100/") && !q.id.contains("/40/")));
        let q = all_queries.clone().next().unwrap();
        let photo = q.id.split('/').nth(1).unwrap();
        assert_eq!(q.path, Path::new("photos").join(format!("{photo}.jpg")));
        // Deterministic, and the seed matters.
        assert_eq!(
            original(dir.path(), Path::new("photos"), ORIGINAL_SEED).unwrap(),
            p
        );
        let others: Vec<Protocol> = (0..6)
            .map(|s| original(dir.path(), Path::new("photos"), s).unwrap())
            .collect();
        assert!(others.iter().any(|o| o.sets != p.sets));
    }

    #[test]
    fn full_uses_test_pairs_and_all_shop_photos_less_exclusions() {
        let dir = labels();
        let elsewhere = tempfile::tempdir().unwrap();
        write(
            elsewhere.path(),
            "exclusions.json",
            r#"{"format":"wtb-exclusions","version":1,"config":null,"excluded":[{"photo":2000,"reason":"placeholder"}]}"#,
        );
        let exclusions = Exclusions::load(&elsewhere.path().join("exclusions.json")).unwrap();
        let p = full(dir.path(), Path::new("photos"), Some(&exclusions)).unwrap();
        let groups = &p.sets[0].groups;
        assert_eq!(
            groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["dresses", "tops"]
        );
        // Every test record is a query, two-item photos included; train records are not.
        assert_eq!(groups[0].queries.len(), 7);
        assert_eq!(groups[0].gallery.len(), 7);
        assert_eq!(groups[1].queries.len(), 2);
        // Distractor product 77 (no street photo) is in the gallery.
        assert!(groups[1].gallery.iter().any(|g| g.product == 77));
        let without = full(dir.path(), Path::new("photos"), None).unwrap();
        assert_eq!(without.sets[0].groups[0].gallery.len(), 8);
    }

    #[test]
    fn zero_area_boxes_are_skipped_and_reported() {
        let dir = labels();
        write(
            dir.path(),
            "test_pairs_hats.json",
            r#"[{"photo":5,"product":6,"bbox":{"left":1,"top":2,"width":0,"height":0}}]"#,
        );
        write(
            dir.path(),
            "retrieval_hats.json",
            r#"[{"photo":6000,"product":6}]"#,
        );
        let p = full(dir.path(), Path::new("photos"), None).unwrap();
        assert!(
            p.skipped
                .iter()
                .any(|s| s.item.starts_with("query hats/5/6")),
            "{:?}",
            p.skipped
        );
    }

    #[test]
    fn bad_label_file_names_the_file() {
        let dir = labels();
        write(dir.path(), "test_pairs_tops.json", "{not json");
        let err = full(dir.path(), Path::new("photos"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("test_pairs_tops.json"), "{err}");
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
}

//! Acceptance tests on the reference data of `../shared` (found through `WTB_SHARED_DIR`,
//! default `../shared` beside the project). Each test skips with a message when its folder is
//! absent.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use wtb_dataset::*;

fn data(name: &str) -> Option<PathBuf> {
    wtb_testdata::shared_path(&format!("data/{name}"))
}

/// The per-category table of `../shared/README.md`: train records, test records, unique street
/// photos, products in pairs, retrieval records.
const STREET2SHOP_TABLE: [(&str, usize, usize, usize, usize, usize); 11] = [
    ("bags", 579, 174, 707, 367, 1971),
    ("belts", 235, 89, 300, 65, 192),
    ("dresses", 12875, 3292, 12273, 4428, 19549),
    ("eyewear", 358, 138, 455, 62, 237),
    ("footwear", 6486, 2178, 4969, 2057, 8687),
    ("hats", 400, 86, 256, 124, 312),
    ("leggings", 1641, 517, 1442, 377, 950),
    ("outerwear", 1945, 666, 2389, 679, 3218),
    ("pants", 600, 130, 469, 172, 723),
    ("skirts", 3337, 604, 2058, 569, 2274),
    ("tops", 2173, 763, 2639, 1450, 6085),
];

#[test]
fn street2shop_stats_match_the_readme() {
    let Some(dir) = data("street2shop-labels") else {
        return;
    };
    let labels = Labels::load(&dir).expect("the real label files load");
    let stats = DatasetStats::compute(&labels);
    assert_eq!(stats.totals.unique_street_photos, 20357);
    assert_eq!(stats.totals.pair_records, 39266);
    assert_eq!(stats.totals.retrieval_records, 44198);
    assert_eq!(stats.totals.train_records, 30629);
    assert_eq!(stats.totals.test_records, 8637);
    assert_eq!(stats.totals.products_in_pairs, 10350);
    assert_eq!(stats.categories.len(), 11);
    for (name, train, test, street, products, retrieval) in STREET2SHOP_TABLE {
        let c = &stats.categories[&Category::new(name).unwrap()];
        assert_eq!(
            (
                c.train_records,
                c.test_records,
                c.unique_street_photos,
                c.products_in_pairs,
                c.retrieval_records
            ),
            (train, test, street, products, retrieval),
            "{name}"
        );
        assert_eq!(c.pair_records, train + test, "{name}");
    }
    // The ratio file covers every street photo.
    let ratios = labels
        .aspect_ratios
        .as_ref()
        .expect("aspect_ratios.csv is read");
    assert_eq!(ratios.len(), 20357);
}

#[test]
fn street2shop_zero_area_box_is_reported_and_skipped() {
    let Some(dir) = data("street2shop-labels") else {
        return;
    };
    let report = check(&dir, None, &DecodeLimits::default());
    assert!(
        report.passed(),
        "{:?}",
        report.problems.iter().find(|p| p.is_error())
    );
    assert!(report
        .problems
        .iter()
        .any(|p| { p.photo == Some(PhotoId(8288)) && p.message.contains("zero-area box") }));
    let labels = Labels::load(&dir).unwrap();
    let queries = labels.queries(&QueryOptions::default());
    assert!(queries
        .skipped
        .iter()
        .any(|s| s.photo == PhotoId(8288) && s.product.product == ProductId(4916)));
    assert!(queries.queries.iter().all(|q| q.bbox.area() > 0.0));
    // The original split: dresses and tops test queries, 50/50 by product, seed 2018.
    let categories: BTreeSet<Category> = ORIGINAL_CATEGORIES
        .iter()
        .map(|c| Category::new(c).unwrap())
        .collect();
    let test = labels.queries(&QueryOptions {
        categories: Some(categories),
        splits: vec![PairSplit::Test],
        single_item_only: true,
    });
    let parts = ProductSplit::original().split_queries(&test.queries);
    assert_eq!(parts.len(), 2);
    let products = |q: &[Query]| q.iter().map(|q| q.product.clone()).collect::<BTreeSet<_>>();
    assert!(products(&parts[0]).is_disjoint(&products(&parts[1])));
    let (a, b) = (products(&parts[0]).len(), products(&parts[1]).len());
    assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
}

fn s2s_truth(dir: &std::path::Path) -> HashMap<PhotoId, String> {
    let text = std::fs::read_to_string(dir.join("truth.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (photo, kind) = (
        header.iter().position(|h| *h == "photo").unwrap(),
        header.iter().position(|h| *h == "kind").unwrap(),
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (PhotoId(f[photo].parse().unwrap()), f[kind].to_string())
        })
        .collect()
}

fn precision_recall(found: &[PhotoId], truth: &BTreeSet<PhotoId>) -> (f64, f64) {
    let tp = found.iter().filter(|p| truth.contains(p)).count() as f64;
    (
        tp / found.len().max(1) as f64,
        tp / truth.len().max(1) as f64,
    )
}

#[test]
fn s2s_dev_check_passes() {
    let Some(dir) = data("s2s-dev") else {
        return;
    };
    let report = check(
        &dir.join("labels"),
        Some(&dir.join("photos_resized")),
        &DecodeLimits::default(),
    );
    let errors: Vec<String> = report
        .problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(report.photos_checked, 4867);
    let catalog = Catalog::load(&dir.join("products.csv")).expect("products.csv loads");
    assert_eq!(catalog.len(), 2088);
}

#[test]
fn s2s_dev_clean_finds_the_planted_junk() {
    let Some(dir) = data("s2s-dev") else {
        return;
    };
    let truth = s2s_truth(&dir);
    let labels = Labels::load(&dir.join("labels")).unwrap();
    let report = clean(
        &labels,
        &dir.join("photos_resized"),
        &CleanConfig::default(),
        &DecodeLimits::default(),
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let of_kind = |k: &str| -> BTreeSet<PhotoId> {
        labels
            .shop_photos()
            .keys()
            .filter(|p| truth.get(p).map(String::as_str) == Some(k))
            .copied()
            .collect()
    };
    let (pp, pr) = precision_recall(&report.placeholders, &of_kind("placeholder"));
    let (np, nr) = precision_recall(&report.non_white, &of_kind("nonwhite"));
    eprintln!(
        "shop photos {}; placeholders: found {} precision {pp:.3} recall {pr:.3}; non-white: found {} precision {np:.3} recall {nr:.3}",
        report.shop_photos,
        report.placeholders.len(),
        report.non_white.len()
    );
    assert!(
        pp >= 0.95 && pr >= 0.95,
        "placeholders: precision {pp}, recall {pr}"
    );
    assert!(
        np >= 0.95 && nr >= 0.95,
        "non-white: precision {np}, recall {nr}"
    );
    // The exclusions are honoured by the gallery.
    let exclusions = report.exclusions();
    let gallery = labels.gallery(None, Some(&exclusions));
    assert!(gallery.items.iter().all(|i| !exclusions.contains(i.photo)));
    assert!(gallery.excluded_records > 0);
}

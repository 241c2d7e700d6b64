//! Queries, splits, galleries, exclusions, ratios and catalogs on small hand-made folders.

use std::collections::BTreeSet;
use std::path::Path;

use wtb_dataset::*;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn cat(name: &str) -> Category {
    Category::new(name).unwrap()
}

/// bags and tops; product 7 exists in both categories; street photo 20 shows two items.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "retrieval_bags.json",
        r#"[{"photo": 1, "product": 7}, {"photo": 2, "product": 7}, {"photo": 3, "product": 8}]"#,
    );
    write(
        dir.path(),
        "retrieval_tops.json",
        r#"[{"photo": 4, "product": 7}, {"photo": 5, "product": 9}]"#,
    );
    let b = r#""bbox": {"left": 10, "top": 20, "width": 30, "height": 40}"#;
    write(
        dir.path(),
        "train_pairs_bags.json",
        &format!(r#"[{{"photo": 20, "product": 7, {b}}}, {{"photo": 21, "product": 8, {b}}}]"#),
    );
    write(
        dir.path(),
        "test_pairs_tops.json",
        &format!(r#"[{{"photo": 20, "product": 7, {b}}}, {{"photo": 22, "product": 9, {b}}}]"#),
    );
    dir
}

#[test]
fn stats_count_unique_photos_and_product_keys() {
    let dir = folder();
    let labels = Labels::load(dir.path()).unwrap();
    let stats = DatasetStats::compute(&labels);
    assert_eq!(stats.totals.unique_street_photos, 3); // 20 is counted once
    assert_eq!(stats.totals.pair_records, 4);
    assert_eq!(stats.totals.retrieval_records, 5);
    assert_eq!(stats.totals.products_in_pairs, 4); // bags/7, bags/8, tops/7, tops/9
    assert_eq!(stats.totals.retrieval_products, 4);
    assert_eq!(stats.categories[&cat("bags")].unique_street_photos, 2);
    assert_eq!(stats.categories[&cat("tops")].test_records, 2);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["totals"]["unique_street_photos"], 3);
    assert_eq!(json["categories"]["bags"]["retrieval_records"], 3);
}

#[test]
fn queries_single_item_and_categories() {
    let dir = folder();
    let labels = Labels::load(dir.path()).unwrap();
    let all = labels.queries(&QueryOptions::default());
    assert_eq!(all.queries.len(), 4);
    assert_eq!(
        all.queries[0].product,
        ProductKey::new(cat("bags"), ProductId(7))
    );
    assert_eq!(all.queries[0].split, PairSplit::Train);
    let single = labels.queries(&QueryOptions {
        single_item_only: true,
        ..QueryOptions::default()
    });
    let photos: Vec<PhotoId> = single.queries.iter().map(|q| q.photo).collect();
    assert_eq!(photos, vec![PhotoId(21), PhotoId(22)]);
    assert_eq!(single.skipped.len(), 2);
    assert_eq!(
        single.skipped[0].reason,
        SkipReason::MultipleItems { items: 2 }
    );
    let tops_test = labels.queries(&QueryOptions {
        categories: Some(BTreeSet::from([cat("tops")])),
        splits: vec![PairSplit::Test],
        single_item_only: false,
    });
    assert_eq!(tops_test.queries.len(), 2);
}

#[test]
fn ratios_rescale_boxes() {
    let dir = folder();
    write(
        dir.path(),
        "aspect_ratios.csv",
        "img,ratio\n20.jpg,0.5\n21.jpg,corrupted\n",
    );
    let labels = Labels::load(dir.path()).unwrap();
    let q = labels.queries(&QueryOptions::default());
    assert_eq!(q.queries.len(), 2); // photo 20 twice
    assert_eq!(q.queries[0].bbox, BBox::new(5.0, 10.0, 15.0, 20.0));
    let reasons: Vec<&SkipReason> = q.skipped.iter().map(|s| &s.reason).collect();
    assert_eq!(
        reasons,
        vec![&SkipReason::CorruptedRatio, &SkipReason::NoRatio]
    );
    let report = check(dir.path(), None, &DecodeLimits::default());
    assert!(report.passed());
    assert_eq!(report.warnings(), 2);
}

#[test]
fn splits_are_deterministic_and_product_level() {
    let products: Vec<ProductKey> = (0..101)
        .map(|i| ProductKey::new(cat("dresses"), ProductId(i)))
        .collect();
    let split = ProductSplit::original();
    let a = split.assign(&products);
    let b = split.assign(products.iter().rev());
    assert_eq!(a, b, "input order does not matter");
    let first = a.values().filter(|p| **p == 0).count();
    assert_eq!(first, 51); // round(0.5 * 101)
    let other = ProductSplit::new(7, &[0.5, 0.5]).unwrap().assign(&products);
    assert_ne!(a, other, "the seed matters");
    // Pinned: the assignment never changes across versions.
    let zeros: Vec<u64> = a
        .iter()
        .filter(|(_, p)| **p == 0)
        .map(|(k, _)| k.product.0)
        .take(5)
        .collect();
    assert_eq!(zeros, PINNED_FIRST_VALIDATION);
    let three = ProductSplit::new(1, &[0.6, 0.2, 0.2])
        .unwrap()
        .assign(&products);
    let sizes: Vec<usize> = (0..3)
        .map(|i| three.values().filter(|p| **p == i).count())
        .collect();
    assert_eq!(sizes, vec![61, 20, 20]);
    assert!(ProductSplit::new(1, &[0.6, 0.6]).is_err());
    assert!(ProductSplit::new(1, &[-0.5, 1.5]).is_err());
}

const PINNED_FIRST_VALIDATION: [u64; 5] = [0, 3, 5, 7, 8];

#[test]
fn gallery_honours_exclusions_from_a_file() {
    let dir = folder();
    let labels = Labels::load(dir.path()).unwrap();
    let full = labels.gallery(None, None);
    assert_eq!(full.items.len(), 5);
    let bags = labels.gallery(Some(&BTreeSet::from([cat("bags")])), None);
    assert_eq!(bags.photos(), vec![PhotoId(1), PhotoId(2), PhotoId(3)]);

    let mut exclusions = Exclusions::default();
    exclusions
        .photos
        .insert(PhotoId(2), ExclusionReason::Placeholder);
    exclusions
        .photos
        .insert(PhotoId(5), ExclusionReason::NonWhite);
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("exclusions.json");
    exclusions.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"format\": \"wtb-exclusions\"") && text.contains("\"version\": 1"));
    let loaded = Exclusions::load(&path).unwrap();
    assert_eq!(loaded, exclusions);
    // Only the file itself is left in the folder (no temporary files).
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);

    let g = labels.gallery(None, Some(&loaded));
    assert_eq!(g.photos(), vec![PhotoId(1), PhotoId(3), PhotoId(4)]);
    assert_eq!(g.excluded_records, 2);
    assert_eq!(g.products().len(), 3);

    write(
        out.path(),
        "future.json",
        r#"{"format": "wtb-exclusions", "version": 99, "excluded": []}"#,
    );
    assert!(matches!(
        Exclusions::load(&out.path().join("future.json")),
        Err(ExclusionsError::Version { version: 99, .. })
    ));
}

#[test]
fn catalog_reads_products_csv() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "products.csv",
        "product,category,articleType,baseColour,gender,name,source_image\n\
         7,bags,Handbags,Green,Women,\"Baggit Green Handbag, large\",x/1.jpg\n\
         7,tops,Tshirts,Black,Men,Black Tee,x/2.jpg\n",
    );
    let catalog = Catalog::load(&dir.path().join("products.csv")).unwrap();
    assert_eq!(catalog.len(), 2);
    let bag = catalog
        .get(&ProductKey::new(cat("bags"), ProductId(7)))
        .unwrap();
    assert_eq!(bag.name, "Baggit Green Handbag, large");
    assert_eq!(bag.base_colour, "Green");

    write(
        dir.path(),
        "bad.csv",
        "product,category,articleType,baseColour,gender,name,source_image\n\
         x,bags,a,b,c,d,e\n\
         1,Bags,a,b,c,d,e\n\
         2,bags,a,b,c,d,e\n\
         2,bags,a,b,c,d,e\n",
    );
    let errors = Catalog::load(&dir.path().join("bad.csv")).unwrap_err().0;
    let shown: Vec<String> = errors.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(shown[0].contains("line 2: field product"));
    assert!(shown[1].contains("line 3: field category"));
    assert!(shown[2].contains("line 5") && shown[2].contains("duplicate product bags/2"));
}

#[test]
fn placeholder_needs_many_products() {
    // Two photos with the same content under two products is not enough by default (3).
    let key = |c: &str, p: u64| ProductKey::new(cat(c), ProductId(p));
    let mut shop = std::collections::BTreeMap::new();
    for (photo, k) in [
        (1, key("bags", 1)),
        (2, key("bags", 2)),
        (3, key("tops", 1)),
    ] {
        shop.insert(PhotoId(photo), BTreeSet::from([k]));
    }
    let scan = |photo: u64, hash: &str| PhotoScan {
        photo: PhotoId(photo),
        hash: hash.into(),
        plain_fraction: 1.0,
    };
    let config = CleanConfig::default();
    let two = classify(
        &shop,
        vec![scan(1, "h"), scan(2, "h"), scan(3, "g")],
        vec![],
        &config,
    );
    assert!(two.placeholders.is_empty());
    let three = classify(
        &shop,
        vec![scan(1, "h"), scan(2, "h"), scan(3, "h")],
        vec![],
        &config,
    );
    assert_eq!(three.placeholders.len(), 3);
    assert_eq!(three.placeholder_groups[0].products, 3);
    assert_eq!(three.categories[&cat("bags")].placeholders, 2);
}

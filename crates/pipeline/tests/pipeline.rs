//! Building, resuming and querying a small synthetic catalogue (synthetic model weights, so no
//! shared data is needed), plus one real end-to-end check on s2s-dev when it is present.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use wtb_dataset::BBox;
use wtb_embed::{Embedder, EmbedderConfig, ModelKind, Pooling};
use wtb_pipeline::{
    add_to_index, build_index, BuildOptions, PhotoQuery, PipelineError, QueryEngine,
};
use wtb_search::{Index, VectorSearch};

/// A catalogue of `n` products with one distinct photo each (bags), plus three label records
/// whose photo files are missing, not an image, or truncated.
fn catalogue(dir: &Path, n: u64) -> (PathBuf, PathBuf) {
    let labels = dir.join("labels");
    let photos = dir.join("photos");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::create_dir_all(&photos).unwrap();
    let mut records = Vec::new();
    for i in 1..=n {
        records.push(format!(r#"{{"photo": {i}, "product": {}}}"#, 100 + i));
        let image = image::RgbImage::from_fn(48, 64, |x, y| {
            image::Rgb([
                ((x * (i as u32 + 1) * 5) % 256) as u8,
                ((y * 7 + i as u32 * 40) % 256) as u8,
                ((i * 23) % 256) as u8,
            ])
        });
        image.save(photos.join(format!("{i}.jpg"))).unwrap();
    }
    // Photo 900 is missing, photo 901 is not an image, photo 902 is a JPEG cut short.
    records.push(r#"{"photo": 900, "product": 1}"#.to_string());
    records.push(r#"{"photo": 901, "product": 2}"#.to_string());
    records.push(r#"{"photo": 902, "product": 3}"#.to_string());
    std::fs::write(photos.join("901.jpg"), b"not a jpeg").unwrap();
    let whole = std::fs::read(photos.join("1.jpg")).unwrap();
    std::fs::write(photos.join("902.jpg"), &whole[..whole.len() - 10]).unwrap();
    std::fs::write(
        labels.join("retrieval_bags.json"),
        format!("[{}]", records.join(",")),
    )
    .unwrap();
    (labels, photos)
}

fn embedder() -> Embedder {
    Embedder::with_synthetic_weights(&EmbedderConfig::new(ModelKind::MobileNetV2)).unwrap()
}

#[test]
fn an_interrupted_build_resumes_and_equals_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, photos) = catalogue(dir.path(), 9);
    let embedder = embedder();

    let mut options = BuildOptions::new(&labels, &photos, dir.path().join("shop.idx"));
    options.batch_size = 2;
    options.checkpoint_every = 4;
    // Interrupt the build after the first checkpoint: the progress callback panics.
    let interrupted = catch_unwind(AssertUnwindSafe(|| {
        build_index(&embedder, &options, &|done, _| {
            if done > 5 {
                panic!("interrupted");
            }
        })
    }));
    assert!(interrupted.is_err());
    assert!(
        options.checkpoint_path().exists(),
        "no checkpoint left behind"
    );
    assert!(!options.index.exists());

    let report = build_index(&embedder, &options, &|_, _| {}).unwrap();
    assert_eq!(report.resumed, 4);
    assert_eq!(report.photos, 9);
    assert_eq!(report.embedded, 5);
    let mut skipped: Vec<u64> = report.skipped.iter().map(|(p, _)| *p).collect();
    skipped.sort();
    assert_eq!(skipped, vec![900, 901, 902]);
    let truncated = report.skipped.iter().find(|(p, _)| *p == 902).unwrap();
    assert!(truncated.1.contains("truncated"), "{}", truncated.1);
    assert!(
        !options.checkpoint_path().exists(),
        "checkpoint not removed"
    );

    let mut fresh = options.clone();
    fresh.index = dir.path().join("fresh.idx");
    let fresh_report = build_index(&embedder, &fresh, &|_, _| {}).unwrap();
    assert_eq!(fresh_report.resumed, 0);
    let resumed = Index::load(&options.index, None).unwrap();
    let fresh = Index::load(&fresh.index, None).unwrap();
    let mut records = resumed.records();
    records.sort_by_key(|r| r.photo);
    let mut fresh_records = fresh.records();
    fresh_records.sort_by_key(|r| r.photo);
    assert_eq!(records, fresh_records);
    for record in &records {
        let a = resumed.product_vectors(&record.category, record.product);
        let b = fresh.product_vectors(&record.category, record.product);
        assert_eq!(a.len(), b.len());
        for ((photo_a, va), (photo_b, vb)) in a.iter().zip(&b) {
            assert_eq!(photo_a, photo_b);
            let diff = va
                .iter()
                .zip(vb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "photo {photo_a} differs by {diff}");
        }
    }
}

#[test]
fn a_photo_of_several_products_is_a_row_per_product_and_add_fills_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, photos) = catalogue(dir.path(), 4);
    // Photo 2 also shows a hat; photo 4 is not there yet.
    std::fs::write(
        labels.join("retrieval_hats.json"),
        r#"[{"photo": 2, "product": 700}]"#,
    )
    .unwrap();
    let photo_4 = photos.join("4.jpg");
    let moved = dir.path().join("4.jpg");
    std::fs::rename(&photo_4, &moved).unwrap();
    let embedder = embedder();
    let options = BuildOptions::new(&labels, &photos, dir.path().join("shop.idx"));
    let report = build_index(&embedder, &options, &|_, _| {}).unwrap();
    assert_eq!((report.photos, report.rows), (3, 4));
    assert_eq!(report.multi_product_photos, 1);
    let skipped: Vec<u64> = report.skipped.iter().map(|(p, _)| *p).collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}"); // 4, 900, 901, 902
    let index = Index::load(&options.index, None).unwrap();
    let hat = index.product_vectors("hats", 700);
    let bag = index.product_vectors("bags", 102);
    assert_eq!((hat.len(), bag.len()), (1, 1));
    assert_eq!(hat[0], bag[0]);

    // The photo arrives: `add_to_index` embeds it and only it.
    std::fs::rename(&moved, &photo_4).unwrap();
    let added = add_to_index(&embedder, &options, &|_, _| {}).unwrap();
    assert_eq!((added.embedded, added.resumed), (1, 3));
    assert_eq!((added.photos, added.rows), (4, 5));
    let index = Index::load(&options.index, None).unwrap();
    assert_eq!(index.product_vectors("bags", 104).len(), 1);

    // Adding one category's photos leaves the other categories alone.
    let hats_only = BuildOptions {
        categories: vec!["hats".into()],
        ..options.clone()
    };
    let added = add_to_index(&embedder, &hats_only, &|_, _| {}).unwrap();
    assert_eq!((added.embedded, added.photos, added.rows), (0, 4, 5));
}

#[test]
fn queries_answer_and_refuse_bad_input_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, photos) = catalogue(dir.path(), 5);
    let options = BuildOptions::new(&labels, &photos, dir.path().join("shop.idx"));
    build_index(&embedder(), &options, &|_, _| {}).unwrap();
    let engine = QueryEngine::open(embedder(), &options.index).unwrap();
    assert_eq!(engine.index().len(), 5);

    let bytes = std::fs::read(photos.join("3.jpg")).unwrap();
    let query = |bbox, k| PhotoQuery {
        image: &bytes,
        bbox,
        k,
        categories: Default::default(),
        metric: None,
    };
    let answer = engine.search(&query(None, 3)).unwrap();
    assert_eq!(answer.hits.len(), 3);
    assert_eq!((answer.hits[0].product, answer.hits[0].photo), (103, 3));
    let boxed = engine
        .search(&query(Some(BBox::new(4.0, 8.0, 20.0, 30.0)), 3))
        .unwrap();
    assert_eq!(boxed.crop.dimensions(), (20, 30));

    let outside = engine.search(&query(Some(BBox::new(500.0, 500.0, 10.0, 10.0)), 3));
    assert!(
        matches!(outside, Err(PipelineError::BadBox(_))),
        "{outside:?}"
    );
    assert!(matches!(
        engine.search(&query(None, 0)),
        Err(PipelineError::BadQuery(_))
    ));
    let not_image = PhotoQuery {
        image: b"hello",
        bbox: None,
        k: 3,
        categories: Default::default(),
        metric: None,
    };
    assert!(matches!(
        engine.search(&not_image),
        Err(PipelineError::BadPhoto(_))
    ));

    let similar = engine.similar("bags", 103, 10, None).unwrap();
    assert_eq!(similar.len(), 4);
    assert!(similar.iter().all(|h| h.product != 103));
    assert!(matches!(
        engine.similar("bags", 999, 3, None),
        Err(PipelineError::UnknownProduct { .. })
    ));
}

#[test]
fn an_index_made_with_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, photos) = catalogue(dir.path(), 3);
    let options = BuildOptions::new(&labels, &photos, dir.path().join("shop.idx"));
    build_index(&embedder(), &options, &|_, _| {}).unwrap();
    let mut config = EmbedderConfig::new(ModelKind::MobileNetV2);
    config.pooling = Pooling::Max;
    let other = Embedder::with_synthetic_weights(&config).unwrap();
    let err = QueryEngine::open(other, &options.index)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("pooling"), "{err}");
}

#[test]
fn categories_the_labels_lack_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, photos) = catalogue(dir.path(), 2);
    let mut options = BuildOptions::new(&labels, &photos, dir.path().join("shop.idx"));
    options.categories = vec!["socks".into()];
    let err = build_index(&embedder(), &options, &|_, _| {}).unwrap_err();
    assert!(
        matches!(err, PipelineError::UnknownCategory(ref c) if c == "socks"),
        "{err}"
    );
    // A valid category name that these labels do not have is refused the same way.
    options.categories = vec!["hats".into()];
    let err = build_index(&embedder(), &options, &|_, _| {}).unwrap_err();
    assert!(
        matches!(err, PipelineError::UnknownCategory(ref c) if c == "hats"),
        "{err}"
    );
}

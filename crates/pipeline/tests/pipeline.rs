//! Building, resuming and querying a small synthetic catalogue (synthetic model weights, so no
//! shared data is needed), plus one real end-to-end check on s2s-dev when it is present.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use wtb_dataset::BBox;
use wtb_embed::{Embedder, EmbedderConfig, ModelKind, Pooling};
use wtb_pipeline::{
    build_index, vectors_path, BuildOptions, PhotoQuery, PipelineError, QueryEngine,
};
use wtb_search::VectorSearch;

/// A catalogue of `n` products with one distinct photo each (bags), plus `extra` label records
/// whose photo files are missing or corrupt.
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
    // Photo 900 is missing, photo 901 is not an image.
    records.push(r#"{"photo": 900, "product": 1}"#.to_string());
    records.push(r#"{"photo": 901, "product": 2}"#.to_string());
    std::fs::write(photos.join("901.jpg"), b"not a jpeg").unwrap();
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
    assert_eq!(report.indexed, 9);
    assert_eq!(report.embedded, 5);
    let mut skipped: Vec<u64> = report.skipped.iter().map(|(p, _)| *p).collect();
    skipped.sort();
    assert_eq!(skipped, vec![900, 901]);
    assert!(
        !options.checkpoint_path().exists(),
        "checkpoint not removed"
    );

    let mut fresh = options.clone();
    fresh.index = dir.path().join("fresh.idx");
    let fresh_report = build_index(&embedder, &fresh, &|_, _| {}).unwrap();
    assert_eq!(fresh_report.resumed, 0);
    let resumed_vectors = wtb_embed::load_embeddings(&vectors_path(&options.index), None).unwrap();
    let fresh_vectors = wtb_embed::load_embeddings(&vectors_path(&fresh.index), None).unwrap();
    let sorted = |(_, ids, vectors): (wtb_embed::EmbeddingMeta, Vec<String>, Vec<f32>)| {
        let dim = vectors.len() / ids.len();
        let mut rows: Vec<(String, Vec<f32>)> = ids
            .into_iter()
            .zip(vectors.chunks(dim).map(<[f32]>::to_vec))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    let (a, b) = (sorted(resumed_vectors), sorted(fresh_vectors));
    assert_eq!(a.len(), b.len());
    for ((id_a, va), (id_b, vb)) in a.iter().zip(&b) {
        assert_eq!(id_a, id_b);
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "photo {id_a} differs by {diff}");
    }
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

//! The batched pipeline: skipping and reporting bad images, order, batch independence, crops.

use std::sync::Mutex;

use image::{Rgb, RgbImage};
use wtb_embed::{Embedder, EmbedderConfig, ImageJob, ModelKind, Preprocess};

fn embedder() -> Embedder {
    let mut config = EmbedderConfig::new(ModelKind::MobileNetV2);
    config.preprocess = Preprocess::Squash;
    Embedder::with_synthetic_weights(&config).unwrap()
}

fn picture(i: u32) -> RgbImage {
    RgbImage::from_fn(30 + i, 20 + 3 * i, |x, y| {
        Rgb([(x * 7 + i * 20) as u8, (y * 5) as u8, (i * 30) as u8])
    })
}

#[test]
fn bad_images_are_skipped_and_reported_the_rest_embedded_in_order() {
    let embedder = embedder();
    let ids: Vec<String> = (0..10).map(|i| format!("img{i}")).collect();
    let calls = Mutex::new(Vec::new());
    let outcome = embedder
        .embed_with_loader(
            &ids,
            |i| match i {
                2 => Err("corrupt header".to_string()),
                5 => panic!("decoder bug"),
                7 => Ok(RgbImage::new(0, 0)),
                _ => Ok(picture(i as u32)),
            },
            4,
            &|done, total| calls.lock().unwrap().push((done, total)),
        )
        .unwrap();
    let kept = [0, 1, 3, 4, 6, 8, 9];
    assert_eq!(outcome.ids, kept.map(|i| format!("img{i}")).to_vec());
    let skipped: Vec<&str> = outcome.skipped.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(skipped, ["img2", "img5", "img7"]);
    assert!(outcome.skipped[0].1.contains("corrupt header"));
    assert!(outcome.skipped[1].1.contains("panicked"));
    assert_eq!(*calls.lock().unwrap(), [(4, 10), (8, 10), (10, 10)]);
    // Each vector is what a batch of one gives for that image.
    assert_eq!(outcome.vectors.len(), kept.len() * 1280);
    for (row, i) in kept.iter().enumerate() {
        let alone = &embedder.embed_images(&[picture(*i as u32)]).unwrap()[0];
        let pipelined = &outcome.vectors[row * 1280..(row + 1) * 1280];
        let diff = alone
            .iter()
            .zip(pipelined)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = alone.iter().map(|a| a.abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5 * scale.max(1.0), "img{i}: {diff}");
    }
}

#[test]
fn jobs_read_files_and_crop() {
    let dir = tempfile::tempdir().unwrap();
    let full = picture(9);
    let path = dir.path().join("photo.png");
    full.save(&path).unwrap();
    std::fs::write(dir.path().join("broken.png"), b"not an image").unwrap();
    let bbox = wtb_dataset::BBox {
        left: 4.0,
        top: 6.0,
        width: 20.0,
        height: 25.0,
    };
    let jobs = vec![
        ImageJob {
            id: "full".into(),
            path: path.clone(),
            crop: None,
            flip: false,
            trim: false,
        },
        ImageJob {
            id: "crop".into(),
            path: path.clone(),
            crop: Some((bbox, 0.0)),
            flip: false,
            trim: false,
        },
        ImageJob {
            id: "broken".into(),
            path: dir.path().join("broken.png"),
            crop: None,
            flip: false,
            trim: false,
        },
        ImageJob {
            id: "missing".into(),
            path: dir.path().join("missing.png"),
            crop: None,
            flip: false,
            trim: false,
        },
    ];
    let embedder = embedder();
    let outcome = embedder.embed_jobs(&jobs, 3, &|_, _| {}).unwrap();
    assert_eq!(outcome.ids, ["full", "crop"]);
    assert_eq!(outcome.skipped.len(), 2);
    let cropped = wtb_dataset::crop(&full, &bbox, 0.0).unwrap();
    let want = embedder.embed_images(&[full, cropped]).unwrap();
    for (row, want) in want.iter().enumerate() {
        let got = &outcome.vectors[row * 1280..(row + 1) * 1280];
        let diff = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-4, "row {row}: {diff}");
    }
    assert_ne!(outcome.vectors[..1280], outcome.vectors[1280..]);
}

/// A batch with bad images fails on the first of them in input order, by index.
#[test]
fn a_batch_names_its_first_bad_image() {
    let embedder = embedder();
    let images = [
        picture(1),
        RgbImage::new(0, 4),
        picture(2),
        RgbImage::new(3, 0),
    ];
    for _ in 0..5 {
        match embedder.embed_images(&images) {
            Err(wtb_embed::EmbedError::BadImage { index, reason }) => {
                assert_eq!(index, 1);
                assert!(reason.contains("empty image"), "{reason}");
            }
            other => panic!("expected BadImage, got {other:?}"),
        }
    }
}

#[test]
fn multi_scale_descriptors_average_the_scales_and_say_so() {
    let images: Vec<RgbImage> = (0..2).map(picture).collect();
    let single = embedder().embed_images(&images).unwrap();
    let same = embedder()
        .with_scales(&[1.0])
        .unwrap()
        .embed_images(&images)
        .unwrap();
    assert_eq!(single, same);
    assert_eq!(
        embedder().with_scales(&[1.0]).unwrap().meta().pooling,
        "avg"
    );

    let multi = embedder().with_scales(&wtb_embed::MULTI_SCALES).unwrap();
    assert_eq!(multi.meta().pooling, "avg@0.707+1+1.414");
    let vectors = multi.embed_images(&images).unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (m, s) in vectors.iter().zip(&single) {
        // Without normalisation: the mean of unit-length parts.
        assert!(norm(m) > 0.5 && norm(m) <= 1.0 + 1e-5, "{}", norm(m));
        let cosine: f32 = m.iter().zip(s).map(|(a, b)| a * b).sum::<f32>() / (norm(m) * norm(s));
        assert!(
            cosine < 0.99999,
            "other scales change the vector ({cosine})"
        );
        assert!(
            cosine > 0.5,
            "but it stays close to the single-scale one ({cosine})"
        );
    }
    // A bigger scale alone is a different descriptor.
    let bigger = embedder().with_scales(&[1.5]).unwrap();
    assert_eq!(bigger.meta().pooling, "avg@1.5");
    assert_ne!(bigger.embed_images(&images).unwrap(), single);

    for bad in [&[][..], &[0.1][..], &[1.0, 1.0][..], &[f32::NAN][..]] {
        let err = embedder().with_scales(bad).err().expect("refused");
        assert!(err.to_string().contains("scale"), "{err}");
    }
}

//! Fuzzing of every reader of user files in this crate: label JSON, the ratio CSV, and photo
//! decoding of mutated real and generated photos. Each input must give a value or an error,
//! never a panic or a runaway allocation. `WTB_FUZZ_SECONDS` makes a long run
//! (`benches/fuzz_long.sh`).

mod common;

use common::{encode, picture, FORMATS};
use proptest::prelude::*;
use wtb_dataset::*;
use wtb_testdata::fuzz::{fuzz, mutate, mutations};

/// Inputs per target in the test suite.
const CASES: u32 = 256;

#[test]
fn label_files() {
    let dir = tempfile::tempdir().unwrap();
    let retrieval = br#"[{"photo": 1, "product": 7}, {"photo": 2, "product": 8}]"#;
    let pairs = br#"[{"photo": 10, "product": 7, "bbox": {"left": 1.5, "top": 2, "width": 30, "height": 40}}]"#;
    fuzz(
        "label JSON",
        CASES,
        (mutations(), any::<bool>()),
        |(changes, in_pairs)| {
            let (retrieval, pairs) = if in_pairs {
                (retrieval.to_vec(), mutate(pairs, &changes))
            } else {
                (mutate(retrieval, &changes), pairs.to_vec())
            };
            std::fs::write(dir.path().join("retrieval_bags.json"), &retrieval).unwrap();
            std::fs::write(dir.path().join("test_pairs_bags.json"), &pairs).unwrap();
            let (_, problems) = Labels::load_lenient(dir.path());
            match Labels::load(dir.path()) {
                Ok(labels) => prop_assert!(labels.category_names().count() <= 1),
                Err(Problems(errors)) => {
                    prop_assert!(!errors.is_empty());
                    prop_assert!(!problems.is_empty());
                    for error in &errors {
                        prop_assert!(!error.to_string().is_empty());
                    }
                }
            }
            Ok(())
        },
    );
}

#[test]
fn ratio_csv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aspect_ratios.csv");
    let base = b"img,ratio\n1.jpg,0.5\n2.jpg,corrupted\n3.jpg,1.25\n";
    fuzz("ratio CSV", CASES, mutations(), |changes| {
        std::fs::write(&path, mutate(base, &changes)).unwrap();
        match AspectRatios::load(&path) {
            Ok(ratios) => {
                let bbox = BBox::new(10.0, 10.0, 20.0, 20.0);
                for photo in 0..5 {
                    let _ = ratios.rescale(PhotoId(photo), &bbox);
                }
            }
            Err(Problems(errors)) => prop_assert!(!errors.is_empty()),
        }
        Ok(())
    });
}

/// Photos to mutate: a real shop photo when the shared data is there, and one generated
/// photo of each format.
fn base_photos() -> Vec<Vec<u8>> {
    let mut photos = Vec::new();
    if let Some([dir]) = wtb_testdata::shared_paths(["data/s2s-dev/photos_resized"]) {
        if let Some(entry) = std::fs::read_dir(dir).unwrap().flatten().next() {
            photos.push(std::fs::read(entry.path()).unwrap());
        }
    }
    let image = picture(96, 64);
    for format in FORMATS {
        photos.push(encode(&image, format));
    }
    photos
}

#[test]
fn photo_decoding() {
    let photos = base_photos();
    // Caps small enough that a mutated header claiming a huge image is refused, as the store
    // and the indexer refuse one over theirs.
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_file_bytes: 1 << 20,
    };
    fuzz(
        "photo decoding",
        CASES,
        (0..photos.len(), mutations(), 0u32..64),
        |(which, changes, min_side)| {
            let bytes = mutate(&photos[which], &changes);
            let full = decode_rgb(&bytes, &limits);
            let header = read_header(&bytes, &limits);
            if let Ok(image) = &full {
                prop_assert!(u64::from(image.width()) * u64::from(image.height()) <= 4_000_000);
                prop_assert!(header.is_ok());
            }
            if let Ok((image, reduction)) = decode_rgb_reduced(&bytes, &limits, min_side, None) {
                prop_assert!([1, 2, 4, 8].contains(&reduction));
                prop_assert!(image.width() > 0 && image.height() > 0);
            }
            Ok(())
        },
    );
}

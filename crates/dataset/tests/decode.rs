//! Decoding edge cases of uploads: truncated files of every format are errors (not grey
//! fill), and photos much larger than the model needs are decoded at reduced scale with the
//! same content.

mod common;

use common::{encode, picture, FORMATS};
use image::ImageEncoder;
use wtb_dataset::*;

#[test]
fn truncated_photos_of_every_format_are_refused() {
    let limits = DecodeLimits::default();
    let image = picture(160, 120);
    for format in FORMATS {
        let bytes = encode(&image, format);
        assert!(decode_rgb(&bytes, &limits).is_ok(), "{format:?} whole");
        for keep in [0.2, 0.5, 0.9] {
            let cut = &bytes[..(bytes.len() as f64 * keep) as usize];
            let result = decode_rgb(cut, &limits);
            assert!(
                result.is_err(),
                "{format:?} cut to {} of {} bytes was decoded",
                cut.len(),
                bytes.len()
            );
            assert!(read_header(cut, &limits).is_err() || format != image::ImageFormat::Jpeg);
        }
    }
}

#[test]
fn a_real_photo_cut_short_names_the_truncation() {
    let Some([dir]) = wtb_testdata::shared_paths(["data/s2s-dev/photos_resized"]) else {
        return;
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap().take(20) {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if bytes.len() < 3000 {
            continue;
        }
        let limits = DecodeLimits::default();
        assert!(decode_rgb(&bytes, &limits).is_ok());
        let e = decode_rgb(&bytes[..1000], &limits).unwrap_err();
        assert!(matches!(e.problem, PhotoProblem::Truncated), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} photos checked");
}

#[test]
fn jpeg_trailing_data_and_thumbnails_do_not_fool_the_check() {
    let limits = DecodeLimits::default();
    let mut bytes = encode(&picture(200, 100), image::ImageFormat::Jpeg);
    // Bytes after the end of the image (some cameras append data) are fine.
    bytes.extend_from_slice(b"trailing data");
    assert!(decode_rgb(&bytes, &limits).is_ok());
    // A thumbnail inside an APP1 segment carries its own end marker; the main image cut short
    // is still refused.
    let thumbnail = encode(&picture(16, 8), image::ImageFormat::Jpeg);
    let main = encode(&picture(200, 100), image::ImageFormat::Jpeg);
    let mut with_thumbnail = main[..2].to_vec();
    let length = (thumbnail.len() + 2) as u16;
    with_thumbnail.extend_from_slice(&[0xFF, 0xE1]);
    with_thumbnail.extend_from_slice(&length.to_be_bytes());
    with_thumbnail.extend_from_slice(&thumbnail);
    with_thumbnail.extend_from_slice(&main[2..]);
    assert!(decode_rgb(&with_thumbnail, &limits).is_ok());
    let cut = &with_thumbnail[..with_thumbnail.len() - 200];
    let e = decode_rgb(cut, &limits).unwrap_err();
    assert!(matches!(e.problem, PhotoProblem::Truncated), "{e}");
}

#[test]
fn large_jpegs_decode_at_reduced_scale_with_the_same_content() {
    let limits = DecodeLimits::default();
    let full = picture(2000, 1200);
    let bytes = encode(&full, image::ImageFormat::Jpeg);
    let header = read_header(&bytes, &limits).unwrap();
    assert_eq!(
        (header.width, header.height, header.scalable),
        (2000, 1200, true)
    );
    // 224 pixels needed on the shorter side: 1200 / 4 = 300 is enough, 1200 / 8 = 150 not.
    assert_eq!(header.reduction(224, None), 4);
    assert_eq!(header.decoded_pixels(4), 500 * 300);
    let (image, reduction) = decode_rgb_reduced(&bytes, &limits, 224, None).unwrap();
    assert_eq!(reduction, 4);
    assert_eq!(image.dimensions(), (500, 300));
    // The reduced decode shows the same picture as a full decode scaled down.
    let reference = image::imageops::resize(
        &decode_rgb(&bytes, &limits).unwrap(),
        500,
        300,
        image::imageops::FilterType::Triangle,
    );
    let mean_error = image
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum::<f64>()
        / image.as_raw().len() as f64;
    assert!(mean_error < 4.0, "mean error {mean_error}");

    // A small box keeps full resolution; a box of 600x600 allows a reduction of 2.
    let small = BBox::new(100.0, 100.0, 300.0, 300.0);
    assert_eq!(header.reduction(224, Some(&small)), 1);
    let (image, reduction) = decode_rgb_reduced(&bytes, &limits, 224, Some(&small)).unwrap();
    assert_eq!((reduction, image.dimensions()), (1, (2000, 1200)));
    let medium = BBox::new(0.0, 0.0, 600.0, 600.0);
    assert_eq!(header.reduction(224, Some(&medium)), 2);
    // A box that misses the photo is left to the crop to refuse, at full scale.
    let outside = BBox::new(5000.0, 5000.0, 900.0, 900.0);
    assert_eq!(header.reduction(224, Some(&outside)), 1);

    // Other formats cannot be reduced while decoding.
    let png = encode(&picture(1000, 800), image::ImageFormat::Png);
    let header = read_header(&png, &limits).unwrap();
    assert!(!header.scalable);
    assert_eq!(header.reduction(224, None), 1);
    let (image, reduction) = decode_rgb_reduced(&png, &limits, 224, None).unwrap();
    assert_eq!((reduction, image.dimensions()), (1, (1000, 800)));
}

#[test]
fn grey_jpegs_reduce_too_and_headers_apply_the_caps() {
    let grey = image::GrayImage::from_fn(1600, 1600, |x, y| image::Luma([((x + y) % 256) as u8]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .write_image(grey.as_raw(), 1600, 1600, image::ExtendedColorType::L8)
        .unwrap();
    let limits = DecodeLimits::default();
    let (image, reduction) = decode_rgb_reduced(&bytes, &limits, 256, None).unwrap();
    assert_eq!((reduction, image.dimensions()), (4, (400, 400)));
    let pixel = image.get_pixel(10, 10);
    assert_eq!(pixel[0], pixel[1]);
    let tight = DecodeLimits {
        max_pixels: 1_000_000,
        ..DecodeLimits::default()
    };
    let e = read_header(&bytes, &tight).unwrap_err();
    assert!(
        matches!(e.problem, PhotoProblem::TooManyPixels { .. }),
        "{e}"
    );
}

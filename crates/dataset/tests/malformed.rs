//! Each malformed input gives a clear error, or is skipped and reported; never a panic. The
//! test images are made here (encoded with the image crate, `jpeg-encoder` for CMYK, or crafted
//! byte by byte).

use std::io::Cursor;
use std::path::Path;

use image::{ImageEncoder, RgbImage};
use wtb_dataset::*;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A small valid label folder: bags with one shop photo (1) and one street photo (10).
fn valid_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "retrieval_bags.json",
        r#"[{"photo": 1, "product": 7}]"#,
    );
    write(
        dir.path(),
        "train_pairs_bags.json",
        r#"[{"photo": 10, "product": 7, "bbox": {"left": 1, "top": 2, "width": 3, "height": 4}}]"#,
    );
    write(dir.path(), "test_pairs_bags.json", "[]");
    dir
}

fn errors_of(dir: &Path) -> Vec<Problem> {
    match Labels::load(dir) {
        Ok(_) => panic!("expected the load to fail"),
        Err(Problems(problems)) => problems,
    }
}

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

#[test]
fn valid_folder_loads() {
    let dir = valid_folder();
    let labels = Labels::load(dir.path()).unwrap();
    assert_eq!(labels.categories.len(), 1);
    assert!(check(dir.path(), None, &DecodeLimits::default()).passed());
}

#[test]
fn truncated_json_names_the_file() {
    let dir = valid_folder();
    write(
        dir.path(),
        "retrieval_bags.json",
        r#"[{"photo": 1, "product""#,
    );
    let errors = errors_of(dir.path());
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert!(e.file.as_ref().unwrap().ends_with("retrieval_bags.json"));
    assert!(e.message.contains("truncated JSON"), "{e}");
    assert!(e.to_string().contains("retrieval_bags.json"), "{e}");

    write(dir.path(), "retrieval_bags.json", "not json at all");
    let errors = errors_of(dir.path());
    assert!(
        errors[0].message.contains("invalid JSON at line 1"),
        "{}",
        errors[0]
    );

    write(
        dir.path(),
        "retrieval_bags.json",
        r#"{"photo": 1, "product": 7}"#,
    );
    let errors = errors_of(dir.path());
    assert!(
        errors[0].message.contains("expected a JSON array"),
        "{}",
        errors[0]
    );
}

#[test]
fn wrong_types_name_the_record_and_field() {
    let dir = valid_folder();
    write(
        dir.path(),
        "retrieval_bags.json",
        r#"[{"photo": 1, "product": 7}, {"photo": "2", "product": 7}, {"product": 7}, {"photo": 4, "product": -5}, {"photo": 5.5, "product": 1}, 17]"#,
    );
    write(
        dir.path(),
        "train_pairs_bags.json",
        r#"[{"photo": 10, "product": 7, "bbox": {"left": 1, "top": 2, "width": "3", "height": 4}},
            {"product": 7, "photo": 11, "bbox": {"height": 4, "width": -3, "top": 0, "left": 0}},
            {"photo": 12, "product": 7, "bbox": [1, 2, 3, 4]},
            {"photo": 13, "product": 7}]"#,
    );
    let errors = errors_of(dir.path());
    let find = |file: &str, record: usize, field: Option<&str>| {
        errors
            .iter()
            .find(|p| {
                p.file.as_ref().unwrap().ends_with(file)
                    && p.record == Some(record)
                    && p.field.as_deref() == field
            })
            .unwrap_or_else(|| {
                panic!("no problem for {file} record {record} {field:?}: {errors:#?}")
            })
    };
    let r = "retrieval_bags.json";
    assert!(find(r, 1, Some("photo")).message.contains("found a string"));
    assert_eq!(find(r, 2, Some("photo")).message, "missing");
    assert!(find(r, 3, Some("product"))
        .message
        .contains("must not be negative"));
    assert!(find(r, 4, Some("photo"))
        .message
        .contains("expected an integer"));
    assert!(find(r, 5, None)
        .message
        .contains("expected an object, found an integer"));
    let t = "train_pairs_bags.json";
    assert!(find(t, 0, Some("bbox.width"))
        .message
        .contains("found a string"));
    assert!(find(t, 1, Some("bbox.width"))
        .message
        .contains("must not be negative"));
    assert!(find(t, 2, Some("bbox")).message.contains("found an array"));
    assert_eq!(find(t, 3, Some("bbox")).message, "missing");
    // The display says where.
    let shown = find(t, 0, Some("bbox.width")).to_string();
    assert!(
        shown.contains("train_pairs_bags.json: record 0: field bbox.width"),
        "{shown}"
    );
    // Lenient loading keeps the valid records.
    let (labels, _) = Labels::load_lenient(dir.path());
    let bags = &labels.categories[&Category::new("bags").unwrap()];
    assert_eq!(bags.retrieval.len(), 1);
    assert!(bags.train.is_empty());
}

#[test]
fn unknown_category_files_are_errors() {
    let dir = valid_folder();
    write(dir.path(), "train_pairs_socks.json", "[]");
    write(dir.path(), "validation_pairs_bags.json", "[]");
    write(dir.path(), "retrieval_Bags.json", "[]");
    write(dir.path(), "README.md", "not a label file, ignored");
    let errors = errors_of(dir.path());
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let messages: Vec<String> = errors.iter().map(|p| p.to_string()).collect();
    assert!(messages
        .iter()
        .any(|m| m.contains("train_pairs_socks.json") && m.contains("unknown category \"socks\"")));
    assert!(messages
        .iter()
        .any(|m| m.contains("validation_pairs_bags.json") && m.contains("unexpected file name")));
    assert!(messages
        .iter()
        .any(|m| m.contains("retrieval_Bags.json") && m.contains("invalid category name")));
}

#[test]
fn check_lists_every_problem() {
    let dir = valid_folder();
    write(
        dir.path(),
        "retrieval_bags.json",
        r#"[{"photo": "x", "product": "y"}]"#,
    );
    write(dir.path(), "test_pairs_bags.json", "[");
    write(dir.path(), "hats.json", "[]");
    let report = check(dir.path(), None, &DecodeLimits::default());
    assert!(!report.passed());
    // Two bad fields, one truncated file, one unexpected name.
    assert_eq!(report.errors(), 4, "{:#?}", report.problems);
}

#[test]
fn zero_area_box_is_reported_and_skipped() {
    let dir = valid_folder();
    write(
        dir.path(),
        "train_pairs_bags.json",
        r#"[{"photo": 10, "product": 7, "bbox": {"left": 5, "top": 5, "width": 0, "height": 0}},
            {"photo": 11, "product": 7, "bbox": {"left": 1, "top": 1, "width": 2, "height": 2}}]"#,
    );
    let labels = Labels::load(dir.path()).unwrap();
    let queries = labels.queries(&QueryOptions::default());
    assert_eq!(queries.queries.len(), 1);
    assert_eq!(queries.skipped.len(), 1);
    assert_eq!(queries.skipped[0].reason, SkipReason::ZeroArea);
    assert_eq!(queries.skipped[0].photo, PhotoId(10));
    let report = check(dir.path(), None, &DecodeLimits::default());
    assert!(report.passed());
    assert!(report
        .problems
        .iter()
        .any(|p| p.photo == Some(PhotoId(10)) && p.message.contains("zero-area box")));
    let image = RgbImage::new(20, 20);
    let bbox = labels.categories.values().next().unwrap().train[0].bbox;
    assert!(matches!(
        crop(&image, &bbox, 0.1),
        Err(CropError::ZeroArea { .. })
    ));
}

#[test]
fn box_outside_the_photo_is_reported_by_check() {
    let dir = valid_folder();
    write(
        dir.path(),
        "train_pairs_bags.json",
        r#"[{"photo": 10, "product": 7, "bbox": {"left": 500, "top": 5, "width": 10, "height": 10}}]"#,
    );
    let photos = tempfile::tempdir().unwrap();
    for id in [1, 10] {
        std::fs::write(
            photos.path().join(format!("{id}.jpg")),
            jpeg(&RgbImage::new(40, 30)),
        )
        .unwrap();
    }
    let report = check(dir.path(), Some(photos.path()), &DecodeLimits::default());
    assert!(report.passed(), "{:#?}", report.problems);
    assert_eq!(report.photos_checked, 2);
    assert!(report
        .problems
        .iter()
        .any(|p| p.photo == Some(PhotoId(10)) && p.message.contains("zero area inside")));
}

#[test]
fn missing_photo_is_reported() {
    let dir = valid_folder();
    let photos = tempfile::tempdir().unwrap();
    // Only the street photo exists; the shop photo 1 is missing.
    std::fs::write(photos.path().join("10.jpg"), jpeg(&RgbImage::new(40, 30))).unwrap();
    let report = check(dir.path(), Some(photos.path()), &DecodeLimits::default());
    assert_eq!(report.errors(), 1, "{:#?}", report.problems);
    let p = report.problems.iter().find(|p| p.is_error()).unwrap();
    assert_eq!(p.photo, Some(PhotoId(1)));
    assert!(
        p.to_string().contains("1.jpg") && p.message.contains("missing"),
        "{p}"
    );

    let e = load_rgb(&photos.path().join("1.jpg"), &DecodeLimits::default()).unwrap_err();
    assert!(e.is_missing());
    assert!(e.to_string().contains("1.jpg"), "{e}");

    // Cleaning skips and reports it.
    let labels = Labels::load(dir.path()).unwrap();
    let report = clean(
        &labels,
        photos.path(),
        &CleanConfig::default(),
        &DecodeLimits::default(),
    );
    assert_eq!(report.unreadable, vec![PhotoId(1)]);
    assert_eq!(report.problems.len(), 1);
    assert_eq!(
        report.exclusions().photos.get(&PhotoId(1)),
        Some(&ExclusionReason::Unreadable)
    );
}

#[test]
fn corrupt_jpeg_is_an_error() {
    let limits = DecodeLimits::default();
    let good = jpeg(&RgbImage::from_pixel(64, 48, image::Rgb([200, 10, 10])));
    assert_eq!(decode_rgb(&good, &limits).unwrap().dimensions(), (64, 48));

    // A JPEG start followed by garbage.
    let mut garbage = vec![0xFF, 0xD8, 0xFF];
    garbage.extend((0..500u32).map(|i| (i * 37 % 251) as u8));
    let e = decode_rgb(&garbage, &limits).unwrap_err();
    assert!(matches!(e.problem, PhotoProblem::Decode(_)), "{e}");

    // Cut inside the headers.
    let e = decode_rgb(&good[..100], &limits).unwrap_err();
    assert!(
        matches!(e.problem, PhotoProblem::Decode(_) | PhotoProblem::Io(_)),
        "{e}"
    );

    // Cut further on: decoders fill a cut scan with grey and only warn; we refuse it.
    for cut in [good.len() / 2, good.len() - 10, good.len() - 2] {
        let e = decode_rgb(&good[..cut], &limits).unwrap_err();
        assert!(
            matches!(e.problem, PhotoProblem::Truncated | PhotoProblem::Decode(_)),
            "{e}"
        );
    }

    // Not an image at all.
    let e = decode_rgb(b"hello, world", &limits).unwrap_err();
    assert!(matches!(e.problem, PhotoProblem::UnknownFormat), "{e}");

    // From a file, the error names it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("99.jpg");
    std::fs::write(&path, &garbage).unwrap();
    let e = load_rgb(&path, &limits).unwrap_err();
    assert!(
        e.to_string().contains("99.jpg") && e.to_string().contains("cannot decode"),
        "{e}"
    );
}

#[test]
fn cmyk_jpeg_decodes_to_rgb() {
    // 8x8 CMYK: left half pure cyan (C=255), right half pure yellow (Y=255).
    let (w, h) = (8u16, 8u16);
    let mut cmyk = Vec::new();
    for _y in 0..h {
        for x in 0..w {
            if x < 4 {
                cmyk.extend_from_slice(&[255, 0, 0, 0]);
            } else {
                cmyk.extend_from_slice(&[0, 0, 255, 0]);
            }
        }
    }
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 100)
        .encode(&cmyk, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let rgb = decode_rgb(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(rgb.dimensions(), (8, 8));
    let cyan = rgb.get_pixel(1, 4).0;
    let yellow = rgb.get_pixel(6, 4).0;
    assert!(
        cyan[0] < 60 && cyan[1] > 190 && cyan[2] > 190,
        "cyan {cyan:?}"
    );
    assert!(
        yellow[0] > 190 && yellow[1] > 190 && yellow[2] < 60,
        "yellow {yellow:?}"
    );
}

#[test]
fn sixteen_bit_png_decodes_to_rgb8() {
    let image: image::ImageBuffer<image::Rgb<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(5, 3, |x, _| image::Rgb([x as u16 * 16000, 65535, 0]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb16(image)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let rgb = decode_rgb(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(rgb.dimensions(), (5, 3));
    assert_eq!(rgb.get_pixel(0, 0).0, [0, 255, 0]);
    assert_eq!(rgb.get_pixel(4, 2).0, [249, 255, 0]); // 64000 / 257 = 249.03
}

#[test]
fn grayscale_and_alpha_become_rgb_on_white() {
    let gray = image::GrayImage::from_pixel(4, 4, image::Luma([77]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageLuma8(gray)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(
        decode_rgb(&bytes, &DecodeLimits::default())
            .unwrap()
            .get_pixel(2, 2)
            .0,
        [77, 77, 77]
    );

    let rgba = image::RgbaImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            image::Rgba([0, 0, 0, 0]) // fully transparent: white
        } else {
            image::Rgba([0, 0, 255, 128]) // half blue over white
        }
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(rgba)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let rgb = decode_rgb(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
    assert_eq!(rgb.get_pixel(1, 0).0, [127, 127, 255]);
}

/// A TIFF/EXIF block holding only an orientation tag.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut e = b"MM\0\x2a\0\0\0\x08".to_vec();
    e.extend_from_slice(&1u16.to_be_bytes()); // one entry
    e.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    e.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    e.extend_from_slice(&1u32.to_be_bytes()); // count
    e.extend_from_slice(&value.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    e
}

#[test]
fn exif_orientation_is_applied() {
    // 4 wide, 2 high; the top-left pixel is red.
    let image = RgbImage::from_fn(4, 2, |x, y| {
        if (x, y) == (0, 0) {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    // PNG (lossless) with an eXIf chunk: orientation 6 = rotate 90 degrees clockwise.
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    encoder.set_exif_metadata(exif_orientation(6)).unwrap();
    encoder
        .write_image(image.as_raw(), 4, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    let rgb = decode_rgb(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(rgb.dimensions(), (2, 4));
    assert_eq!(rgb.get_pixel(1, 0).0, [255, 0, 0]); // top-left went to top-right

    // JPEG with an APP1 EXIF segment.
    let big = RgbImage::from_fn(32, 16, |x, _| {
        if x < 8 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
    encoder.set_exif_metadata(exif_orientation(6)).unwrap();
    encoder
        .write_image(big.as_raw(), 32, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let rgb = decode_rgb(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(rgb.dimensions(), (16, 32));
    assert!(
        rgb.get_pixel(8, 2).0[0] > 200,
        "the white left band is now on top"
    );
    assert!(rgb.get_pixel(8, 28).0[0] < 50);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG whose header claims `width x height` RGB8 pixels, with a tiny (bogus) data stream.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn decompression_bomb_is_refused_before_allocation() {
    let bomb = png_claiming(30000, 30000);
    let e = decode_rgb(&bomb, &DecodeLimits::default()).unwrap_err();
    match e.problem {
        PhotoProblem::TooManyPixels { width, height, max } => {
            assert_eq!((width, height, max), (30000, 30000, 50_000_000));
        }
        other => panic!("expected TooManyPixels, got {other}"),
    }
    assert!(e.to_string().contains("30000x30000"), "{e}");

    // The cap is configurable, and so is the file size cap.
    let small = jpeg(&RgbImage::new(20, 20));
    let tight = DecodeLimits {
        max_pixels: 399,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_rgb(&small, &tight).unwrap_err().problem,
        PhotoProblem::TooManyPixels { .. }
    ));
    let tiny_files = DecodeLimits {
        max_file_bytes: 10,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_rgb(&small, &tiny_files).unwrap_err().problem,
        PhotoProblem::FileTooLarge { .. }
    ));
    // Check reports it against the file.
    let dir = valid_folder();
    let photos = tempfile::tempdir().unwrap();
    std::fs::write(photos.path().join("1.jpg"), &bomb).unwrap();
    std::fs::write(photos.path().join("10.jpg"), &small).unwrap();
    let report = check(dir.path(), Some(photos.path()), &DecodeLimits::default());
    assert_eq!(report.errors(), 1);
    assert!(report.problems[0].message.contains("more than the limit"));
}

#[test]
fn bad_ratio_file_lines_are_reported() {
    let dir = valid_folder();
    write(
        dir.path(),
        "aspect_ratios.csv",
        "img,ratio\n10.jpg,0.5\n11.jpg,corrupted\nx.jpg,0.3\n12.jpg,-1\n",
    );
    let errors = errors_of(dir.path());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0]
        .to_string()
        .contains("aspect_ratios.csv: line 4: field img"));
    assert!(errors[1].to_string().contains("line 5: field ratio"));
}

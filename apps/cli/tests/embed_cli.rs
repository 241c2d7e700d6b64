//! End-to-end tests of `wtb models`, `wtb classify` and `wtb embed`.

use std::process::Command;

use wtb_testdata::shared_path as shared_file;

/// A 24-bit BMP of `width` × `height` with pixel (x, y) = `color(x, y)`, encoded by hand so
/// that the test needs no image encoder.
fn bmp(width: u32, height: u32, color: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let row = (3 * width).div_ceil(4) * 4;
    let size = 54 + row * height;
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(width as i32).to_le_bytes());
    out.extend_from_slice(&(height as i32).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * height, 2835, 2835, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for y in (0..height).rev() {
        let start = out.len();
        for x in 0..width {
            let [r, g, b] = color(x, y);
            out.extend_from_slice(&[b, g, r]);
        }
        out.resize(start + row as usize, 0);
    }
    out
}

fn wtb() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wtb"));
    // Never reach for the network from tests.
    command.env("HF_HUB_OFFLINE", "1");
    command
}

#[test]
fn classify_cat_bmp_prints_egyptian_cat_first() {
    let (Some(cat), Some(weights)) = (
        shared_file("models/cat.bmp"),
        shared_file("models/mobilenet_v2_torchvision_imagenet1k.safetensors"),
    ) else {
        return;
    };
    let output = wtb()
        .args([
            "classify",
            cat.to_str().unwrap(),
            "--model",
            "mobilenet_v2",
            "--weights",
        ])
        .arg(&weights)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let first = stdout.lines().next().unwrap_or("");
    assert!(first.contains("Egyptian cat"), "{stdout}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
}

#[test]
fn embed_skips_and_reports_corrupt_images() {
    let Some(weights) = shared_file("models/mobilenet_v2_torchvision_imagenet1k.safetensors")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for i in 0..64u32 {
        let path = images.join(format!("img{i:02}.bmp"));
        if [5, 31, 60].contains(&i) {
            std::fs::write(&path, b"this is not a bmp").unwrap();
        } else {
            let bytes = bmp(40 + i, 30 + 2 * i, |x, y| {
                [(x * 5 + i) as u8, (y * 3) as u8, (i * 4) as u8]
            });
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let out = dir.path().join("emb.safetensors");
    let output = wtb()
        .args([
            "embed",
            "--model",
            "mobilenet_v2",
            "--batch",
            "16",
            "--images",
        ])
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .arg("--weights")
        .arg(&weights)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("embedded 61 of 64"), "{stdout}");
    assert!(stdout.contains("skipped 3"), "{stdout}");
    for bad in ["img05.bmp", "img31.bmp", "img60.bmp"] {
        assert!(stdout.contains(bad), "{bad} not reported: {stdout}");
    }
    let (meta, ids, vectors) = wtb_embed::load_embeddings(&out, None).unwrap();
    assert_eq!(ids.len(), 61);
    assert_eq!(meta.model, "mobilenet_v2");
    assert_eq!(vectors.len(), 61 * 1280);
    assert!(!ids.contains(&"img05.bmp".to_string()) && ids.contains(&"img06.bmp".to_string()));
    assert!(vectors.iter().all(|v| v.is_finite()));
}

#[test]
fn models_list_shows_every_model() {
    let empty = tempfile::tempdir().unwrap();
    let output = wtb()
        .args(["models", "list"])
        .env("WTB_MODELS_DIR", empty.path())
        .current_dir(empty.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for (name, dim) in [
        ("mobilenet_v2", "1280"),
        ("efficientnet_lite0", "1280"),
        ("resnet50", "2048"),
        ("vgg16", "512"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {stdout}"));
        assert!(line.contains(dim), "{line}");
    }
}

#[test]
fn missing_weights_error_says_where_to_put_them() {
    let empty = tempfile::tempdir().unwrap();
    let image = empty.path().join("x.bmp");
    std::fs::write(&image, bmp(8, 8, |_, _| [0, 0, 0])).unwrap();
    let output = wtb()
        .args([
            "classify",
            image.to_str().unwrap(),
            "--model",
            "efficientnet_lite0",
        ])
        .env("WTB_MODELS_DIR", empty.path())
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("efficientnet_lite0.safetensors")
            && stderr.contains(&empty.path().display().to_string()),
        "{stderr}"
    );
}

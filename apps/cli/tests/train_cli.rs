//! End-to-end tests of `wtb train` and of a head used by `wtb index build` and `wtb search`,
//! on a small slice of the s2s-dev benchmark (skipped without the shared folder).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SLICE: [&str; 2] = ["belts", "eyewear"];

fn wtb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wtb"))
}

fn output(command: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("wtb runs");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn inputs() -> Option<[PathBuf; 3]> {
    wtb_testdata::shared_paths([
        "data/s2s-dev/labels",
        "data/s2s-dev/photos_resized",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
    ])
}

fn slice(labels: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for category in SLICE {
        for kind in ["retrieval", "train_pairs", "test_pairs"] {
            let name = format!("{kind}_{category}.json");
            std::fs::copy(labels.join(&name), into.join(&name)).unwrap();
        }
    }
}

fn train(labels: &Path, photos: &Path, weights: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut command = wtb();
    command
        .arg("train")
        .arg("--labels")
        .arg(labels)
        .arg("--photos")
        .arg(photos)
        .arg("--weights")
        .arg(weights)
        .arg("--out")
        .arg(out)
        .args(["--epochs", "2", "--dim", "64", "--json"])
        .args(extra);
    command
}

#[test]
fn train_then_index_and_search_with_the_head() {
    let Some([labels, photos, weights]) = inputs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sliced = dir.path().join("labels");
    slice(&labels, &sliced);
    let head = dir.path().join("head.safetensors");
    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = output(&mut train(&sliced, &photos, &weights, &head, &[]));
    assert!(ok, "{stdout}\n{stderr}");
    let first_run = started.elapsed();
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["summary"]["epochs"].as_array().unwrap().len(), 2);
    assert!(summary["id"].as_str().unwrap().starts_with("trained-"));
    assert!(head.is_file());
    // Same inputs and seed: the same file, bit for bit (the features come from the cache),
    // also when runs before were killed with SIGKILL: a head file is whole or absent.
    let again = dir.path().join("again.safetensors");
    for delay in wtb_testdata::crash::kill_points(5, 3, first_run.mul_f64(0.5)) {
        wtb_testdata::crash::kill_after(&mut train(&sliced, &photos, &weights, &again, &[]), delay);
        if again.exists() {
            assert_eq!(
                std::fs::read(&again).unwrap(),
                std::fs::read(&head).unwrap()
            );
        }
    }
    let (ok, _, stderr) = output(&mut train(&sliced, &photos, &weights, &again, &[]));
    assert!(ok, "{stderr}");
    assert!(
        std::fs::read(&head).unwrap() == std::fs::read(&again).unwrap(),
        "the same inputs and seed wrote another head file"
    );

    let index = dir.path().join("shop.wtbindex");
    let (ok, stdout, stderr) = output(
        wtb()
            .args([
                "index",
                "build",
                "--model",
                "mobilenet_v2",
                "--preprocess",
                "squash",
            ])
            .arg("--labels")
            .arg(&sliced)
            .arg("--photos")
            .arg(&photos)
            .arg("--weights")
            .arg(&weights)
            .arg("--head")
            .arg(&head)
            .arg("--out")
            .arg(&index),
    );
    assert!(ok, "{stdout}\n{stderr}");

    let belts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sliced.join("retrieval_belts.json")).unwrap(),
    )
    .unwrap();
    let photo = belts[0]["photo"].as_u64().unwrap();
    let product = belts[0]["product"].as_u64().unwrap();
    let image = photos.join(format!("{photo}.jpg"));
    let search = |head: Option<&Path>, extra: &[&str]| {
        let mut command = wtb();
        command
            .arg("search")
            .arg(&image)
            .arg("--index")
            .arg(&index)
            .arg("--weights")
            .arg(&weights)
            .args(["-k", "3", "--json"])
            .args(extra);
        if let Some(head) = head {
            command.arg("--head").arg(head);
        }
        output(&mut command)
    };
    let (ok, stdout, stderr) = search(Some(&head), &[]);
    assert!(ok, "{stdout}\n{stderr}");
    let hits: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = &hits["hits"][0];
    assert_eq!(first["product"].as_u64(), Some(product), "{hits}");

    // Category consensus (on by default) takes only sensible weights.
    let (ok, _, stderr) = search(Some(&head), &["--consensus-weight=-1"]);
    assert!(!ok);
    assert!(stderr.contains("consensus weight -1"), "{stderr}");

    // Without the head, or with another head, the index is refused with a clear reason.
    let (ok, _, stderr) = search(None, &[]);
    assert!(!ok);
    assert!(stderr.contains("--head"), "{stderr}");
    let other = dir.path().join("other.safetensors");
    let (ok, _, stderr) = output(&mut train(
        &sliced,
        &photos,
        &weights,
        &other,
        &["--seed", "8"],
    ));
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = search(Some(&other), &[]);
    assert!(!ok);
    assert!(stderr.contains("head"), "{stderr}");

    // A corrupted head file names the file and the problem.
    let mut bytes = std::fs::read(&head).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    let broken = dir.path().join("broken.safetensors");
    std::fs::write(&broken, &bytes).unwrap();
    let (ok, _, stderr) = search(Some(&broken), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("broken.safetensors") && stderr.contains("checksum"),
        "{stderr}"
    );
}

#[test]
fn train_refuses_a_folder_without_training_pairs() {
    let Some([labels, photos, weights]) = inputs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("labels");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(
        labels.join("retrieval_belts.json"),
        empty.join("retrieval_belts.json"),
    )
    .unwrap();
    std::fs::write(empty.join("train_pairs_belts.json"), "[]").unwrap();
    std::fs::write(empty.join("test_pairs_belts.json"), "[]").unwrap();
    let head = dir.path().join("head.safetensors");
    let (ok, _, stderr) = output(&mut train(&empty, &photos, &weights, &head, &[]));
    assert!(!ok);
    assert!(stderr.contains("no training pairs"), "{stderr}");
    assert!(!head.exists());
}

//! End-to-end tests of `wtb index` and `wtb search` on the s2s-dev benchmark photos.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wtb_testdata::crash::{kill_after, kill_repeatedly};

const CATEGORIES: &str = "belts,eyewear";

/// (labels, photos, weights, truth.csv), or None after printing why the test is skipped.
fn inputs() -> Option<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let [labels, photos, weights, truth] = wtb_testdata::shared_paths([
        "data/s2s-dev/labels",
        "data/s2s-dev/photos_resized",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
        "data/s2s-dev/truth.csv",
    ])?;
    Some((labels, photos, weights, truth))
}

fn wtb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wtb"))
}

fn build_command(labels: &Path, photos: &Path, weights: &Path, out: &Path) -> Command {
    build_with(labels, photos, weights, out, CATEGORIES, 32)
}

fn build_with(
    labels: &Path,
    photos: &Path,
    weights: &Path,
    out: &Path,
    categories: &str,
    checkpoint_every: usize,
) -> Command {
    let mut command = wtb();
    command
        .args([
            "index",
            "build",
            "--model",
            "mobilenet_v2",
            "--categories",
            categories,
        ])
        .arg("--labels")
        .arg(labels)
        .arg("--photos")
        .arg(photos)
        .arg("--weights")
        .arg(weights)
        .arg("--out")
        .arg(out)
        .args(["--checkpoint-every", &checkpoint_every.to_string()])
        .args(["--batch", "8"]);
    command
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("wtb runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "wtb failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn search_json(index: &Path, image: &Path, weights: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        wtb()
            .arg("search")
            .arg(image)
            .arg("--index")
            .arg(index)
            .arg("--weights")
            .arg(weights)
            .args(["-k", "5", "--json"])
            .args(extra),
    );
    serde_json::from_str(&out).expect("search prints JSON")
}

/// Shop photos that are catalog originals (not placeholders or consumer photos) of the tested
/// categories: (photo, product, category).
fn original_shop_photos(truth: &Path) -> Vec<(u64, u64, String)> {
    let text = std::fs::read_to_string(truth).expect("truth.csv readable");
    let wanted: Vec<&str> = CATEGORIES.split(',').collect();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f.len() > 3 && f[1] == "shop_original" && wanted.contains(&f[3]))
                .then(|| Some((f[0].parse().ok()?, f[2].parse().ok()?, f[3].to_string())))
                .flatten()
        })
        .collect()
}

#[test]
fn interrupted_build_resumes_and_search_finds_the_photos_own_product() {
    let Some((labels, photos, weights, truth)) = inputs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let resumed = dir.path().join("resumed.wtbindex");
    let partial = dir.path().join("resumed.wtbindex.partial");

    // Kill the first build once it has written a checkpoint.
    let mut child = build_command(&labels, &photos, &weights, &resumed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !partial.exists() && start.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().unwrap();
    assert!(
        partial.exists(),
        "no checkpoint was written before the kill"
    );
    assert!(
        !resumed.exists(),
        "the build finished before it could be interrupted"
    );

    let log = run_ok(&mut build_command(&labels, &photos, &weights, &resumed));
    assert!(log.contains("resuming: "), "{log}");
    assert!(!partial.exists(), "checkpoint left behind");

    let fresh = dir.path().join("fresh.wtbindex");
    run_ok(&mut build_command(&labels, &photos, &weights, &fresh));
    let info = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&run_ok(
            wtb().args(["index", "info", "--json", "--index"]).arg(path),
        ))
        .unwrap()
    };
    let (resumed_info, fresh_info) = (info(&resumed), info(&fresh));
    assert_eq!(resumed_info["photos"], fresh_info["photos"]);
    assert_eq!(resumed_info["products"], fresh_info["products"]);
    assert_eq!(
        resumed_info["photos_per_category"],
        fresh_info["photos_per_category"]
    );
    assert_eq!(resumed_info["photos"], 250, "{resumed_info}");

    let originals = original_shop_photos(&truth);
    assert!(
        originals.len() >= 20,
        "too few catalog originals in truth.csv"
    );
    for (photo, product, category) in originals.iter().step_by(originals.len() / 8) {
        let image = photos.join(format!("{photo}.jpg"));
        let hits = search_json(&resumed, &image, &weights, &[]);
        let first = &hits["hits"][0];
        assert_eq!(first["product"], *product, "photo {photo}: {hits}");
        assert_eq!(
            first["category"],
            category.as_str(),
            "photo {photo}: {hits}"
        );
        assert_eq!(first["photo"], *photo, "photo {photo}: {hits}");
        assert!(first["score"].as_f64().unwrap() < 1e-4, "{hits}");
        assert_eq!(
            hits,
            search_json(&fresh, &image, &weights, &[]),
            "resumed and fresh indexes disagree"
        );
    }

    // Remove that product, then the photo must no longer find it; compact keeps the answer.
    let (photo, product, category) = &originals[0];
    let image = photos.join(format!("{photo}.jpg"));
    run_ok(
        wtb()
            .args([
                "index",
                "remove",
                "--product",
                &format!("{category}:{product}"),
                "--index",
            ])
            .arg(&resumed),
    );
    let after = search_json(&resumed, &image, &weights, &[]);
    assert!(after["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["product"] != *product || h["category"] != category.as_str()));
    run_ok(wtb().args(["index", "compact", "--index"]).arg(&resumed));
    assert_eq!(search_json(&resumed, &image, &weights, &[]), after);

    // Category filter and box crop are accepted.
    let only_belts = search_json(
        &fresh,
        &image,
        &weights,
        &["--category", "belts", "--bbox", "10,10,200,200"],
    );
    assert!(only_belts["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["category"] == "belts"));
}

#[test]
fn bad_index_files_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.wtbindex");
    std::fs::write(&path, b"definitely not an index").unwrap();
    let output = wtb()
        .args(["index", "info", "--index"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("garbage.wtbindex") && stderr.contains("not a valid index file"),
        "{stderr}"
    );
}

/// A command's wall time, and the command run to completion.
fn timed_run(command: &mut Command) -> Duration {
    let started = Instant::now();
    run_ok(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    started.elapsed()
}

/// Files of `dir` other than the given ones (the lock file excepted).
fn leftovers(dir: &Path, expected: &[&Path]) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !expected.contains(&p.as_path()))
        .filter(|p| p.extension().is_none_or(|e| e != "lock"))
        .collect()
}

#[test]
fn sigkill_at_random_points_leaves_the_old_or_the_new_index_and_a_rerun_finishes_it() {
    let Some((labels, photos, weights, _)) = inputs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let build =
        |out: &Path, categories: &str| build_with(&labels, &photos, &weights, out, categories, 8);
    let add = |index: &Path| {
        let mut command = wtb();
        command
            .args(["index", "add", "--categories", "eyewear,hats"])
            .arg("--labels")
            .arg(&labels)
            .arg("--photos")
            .arg(&photos)
            .arg("--weights")
            .arg(&weights)
            .arg("--index")
            .arg(index)
            .args(["--batch", "8"]);
        command
    };

    // Uninterrupted references: a build of eyewear, and that index with hats added.
    let fresh = dir.path().join("fresh.wtbindex");
    let build_time = timed_run(&mut build(&fresh, "eyewear"));
    let fresh_bytes = std::fs::read(&fresh).unwrap();
    let added = dir.path().join("added.wtbindex");
    std::fs::copy(&fresh, &added).unwrap();
    let add_time = timed_run(&mut add(&added));
    let added_bytes = std::fs::read(&added).unwrap();
    assert_ne!(fresh_bytes, added_bytes, "the add changed nothing");

    // `wtb index build`: after a kill there is no index or the finished one, and any
    // checkpoint loads; the rerun resumes and writes the same bytes as an uninterrupted build.
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join("shop.wtbindex");
    let partial = work.join("shop.wtbindex.partial");
    let (build_killed, build_runs) = kill_repeatedly(16, 6, build_time, |i, delay| {
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&partial);
        // Every other point kills a resumed build, which starts from a checkpoint.
        let mut killed = true;
        if i % 2 == 1 {
            killed &= kill_after(&mut build(&out, "eyewear"), delay.mul_f64(0.5));
        }
        killed &= kill_after(&mut build(&out, "eyewear"), delay.mul_f64(0.6));
        if out.exists() {
            assert_eq!(std::fs::read(&out).unwrap(), fresh_bytes, "kill point {i}");
        }
        if partial.exists() {
            run_ok(wtb().args(["index", "info", "--index"]).arg(&partial));
        }
        run_ok(&mut build(&out, "eyewear"));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            fresh_bytes,
            "kill point {i} ({delay:?}): the resumed index differs"
        );
        assert_eq!(
            leftovers(&work, &[&out]),
            Vec::<PathBuf>::new(),
            "kill point {i}"
        );
        killed
    });

    // `wtb index add`: after a kill the index is the old one or the new one, never anything
    // else; the rerun gives the same bytes as an uninterrupted add.
    let (add_killed, add_runs) = kill_repeatedly(61, 16, add_time, |i, delay| {
        std::fs::copy(&fresh, &out).unwrap();
        let killed = kill_after(&mut add(&out), delay);
        let now = std::fs::read(&out).unwrap();
        assert!(
            now == fresh_bytes || now == added_bytes,
            "add kill point {i}: the index is neither the old nor the new one"
        );
        run_ok(&mut add(&out));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            added_bytes,
            "add kill point {i}"
        );
        assert_eq!(
            leftovers(&work, &[&out]),
            Vec::<PathBuf>::new(),
            "add kill point {i}"
        );
        killed
    });
    let killed = build_killed + add_killed;
    let runs = build_runs + add_runs;
    eprintln!(
        "SIGKILL: {killed} kill points in {runs} tries (build {build_time:?}, add {add_time:?}); \
         every index old or new, every rerun identical to the uninterrupted run"
    );
    assert!(
        killed >= 20,
        "only {killed} runs were killed before they finished"
    );
}

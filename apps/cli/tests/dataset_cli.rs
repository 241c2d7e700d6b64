//! End-to-end tests of `wtb dataset stats|check|clean`, on the reference data of `shared/data`
//! (skipped with a message where absent) and on small malformed folders made here.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn data(name: &str) -> Option<PathBuf> {
    wtb_testdata::shared_path(&format!("data/{name}"))
}

fn wtb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wtb"))
        .args(args)
        .output()
        .expect("the wtb binary runs")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The per-category table of `shared/README.md`: unique street photos, train + test records,
/// retrieval records.
const TABLE: [(&str, u64, u64, u64); 11] = [
    ("bags", 707, 579 + 174, 1971),
    ("belts", 300, 235 + 89, 192),
    ("dresses", 12273, 12875 + 3292, 19549),
    ("eyewear", 455, 358 + 138, 237),
    ("footwear", 4969, 6486 + 2178, 8687),
    ("hats", 256, 400 + 86, 312),
    ("leggings", 1442, 1641 + 517, 950),
    ("outerwear", 2389, 1945 + 666, 3218),
    ("pants", 469, 600 + 130, 723),
    ("skirts", 2058, 3337 + 604, 2274),
    ("tops", 2639, 2173 + 763, 6085),
];

#[test]
fn stats_json_on_the_real_labels() {
    let Some(dir) = data("street2shop-labels") else {
        return;
    };
    let out = wtb(&["dataset", "stats", "--labels", path(&dir), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["totals"]["unique_street_photos"], 20357);
    assert_eq!(v["totals"]["pair_records"], 39266);
    assert_eq!(v["totals"]["retrieval_records"], 44198);
    let categories = v["categories"].as_object().unwrap();
    assert_eq!(categories.len(), 11);
    for (name, street, pairs, retrieval) in TABLE {
        let c = &categories[name];
        assert_eq!(c["unique_street_photos"], street, "{name}");
        assert_eq!(c["pair_records"], pairs, "{name}");
        assert_eq!(c["retrieval_records"], retrieval, "{name}");
    }

    // The table form has the same totals.
    let out = wtb(&["dataset", "stats", "--labels", path(&dir)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .lines()
        .find(|l| l.starts_with("total (unique)"))
        .unwrap();
    for n in ["20357", "39266", "44198"] {
        assert!(total.contains(n), "{total}");
    }
    assert!(text.contains("aspect_ratios.csv: 20357 photos"), "{text}");
}

#[test]
fn check_passes_on_s2s_dev() {
    let Some(dir) = data("s2s-dev") else {
        return;
    };
    let labels = dir.join("labels");
    let photos = dir.join("photos_resized");
    let out = wtb(&[
        "dataset",
        "check",
        "--labels",
        path(&labels),
        "--photos",
        path(&photos),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("check passed") && text.contains("4867 photos decoded"),
        "{text}"
    );

    let out = wtb(&[
        "dataset",
        "check",
        "--labels",
        path(&labels),
        "--photos",
        path(&photos),
        "--json",
    ]);
    let v = stdout_json(&out);
    assert_eq!(v["passed"], true);
    assert_eq!(v["errors"], 0);
}

#[test]
fn clean_finds_the_planted_junk_of_s2s_dev() {
    let Some(dir) = data("s2s-dev") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let exclusions = tmp.path().join("exclusions.json");
    let out = wtb(&[
        "dataset",
        "clean",
        "--labels",
        path(&dir.join("labels")),
        "--photos",
        path(&dir.join("photos_resized")),
        "--exclusions",
        path(&exclusions),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let ids = |key: &str| -> BTreeSet<u64> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is a list"))
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let truth_text = std::fs::read_to_string(dir.join("truth.csv")).unwrap();
    let truth: HashMap<u64, String> = truth_text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].to_string())
        })
        .collect();
    for (key, kind) in [("placeholders", "placeholder"), ("non_white", "nonwhite")] {
        let found = ids(key);
        let planted: BTreeSet<u64> = truth
            .iter()
            .filter(|(_, k)| k.as_str() == kind)
            .map(|(p, _)| *p)
            .collect();
        let tp = found.intersection(&planted).count() as f64;
        let precision = tp / found.len().max(1) as f64;
        let recall = tp / planted.len() as f64;
        eprintln!(
            "{key}: found {} precision {precision:.3} recall {recall:.3}",
            found.len()
        );
        assert!(
            precision >= 0.95 && recall >= 0.95,
            "{key}: {precision} {recall}"
        );
    }
    // The exclusion file lists exactly the excluded photos.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&exclusions).unwrap()).unwrap();
    assert_eq!(file["format"], "wtb-exclusions");
    assert_eq!(file["version"], 1);
    let excluded: BTreeSet<u64> = file["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["photo"].as_u64().unwrap())
        .collect();
    let expected: BTreeSet<u64> = ids("placeholders")
        .union(&ids("non_white"))
        .copied()
        .collect();
    assert_eq!(excluded, expected);
}

fn malformed_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w(
        "retrieval_bags.json",
        r#"[{"photo": 1, "product": 7}, {"photo": "2", "product": 7}]"#,
    );
    w(
        "train_pairs_bags.json",
        r#"[{"photo": 10, "product": 7, "bbox": {"left": 0, "top": 0, "width": -4, "height": 3}}]"#,
    );
    w("test_pairs_bags.json", r#"[{"photo": 11, "product": 7"#);
    w("train_pairs_socks.json", "[]");
    dir
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = malformed_folder();
    let out = wtb(&["dataset", "check", "--labels", path(dir.path())]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "retrieval_bags.json: record 1: field photo: expected a non-negative integer, found a string",
        "train_pairs_bags.json: record 0: field bbox.width: must not be negative",
        "test_pairs_bags.json: truncated JSON",
        "train_pairs_socks.json: unknown category \"socks\"",
        "check FAILED",
        "4 errors",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let out = wtb(&["dataset", "check", "--labels", path(dir.path()), "--json"]);
    assert!(!out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["passed"], false);
    assert_eq!(v["errors"], 4);
    assert_eq!(v["problems"][0]["severity"], "error");

    // stats refuses malformed labels with a clear message, not a panic.
    let out = wtb(&["dataset", "stats", "--labels", path(dir.path())]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the labels") && err.contains("4 errors"),
        "{err}"
    );
}

#[test]
fn clean_reports_missing_photos_and_writes_nothing_with_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels");
    std::fs::create_dir(&labels).unwrap();
    std::fs::create_dir(dir.path().join("photos_resized")).unwrap();
    std::fs::write(
        labels.join("retrieval_bags.json"),
        r#"[{"photo": 1, "product": 7}]"#,
    )
    .unwrap();
    // The photo folder defaults to photos_resized beside the labels.
    let out = wtb(&[
        "dataset",
        "clean",
        "--labels",
        path(&labels),
        "--no-write",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["unreadable"], serde_json::json!([1]));
    assert_eq!(v["placeholders"], serde_json::json!([]));
    assert_eq!(v["non_white"], serde_json::json!([]));
    assert!(v["problems"][0]["message"]
        .as_str()
        .unwrap()
        .contains("missing"));
    assert!(v["exclusions_file"].is_null());
}

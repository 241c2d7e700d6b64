//! End-to-end tests of `wtb eval` on a few dozen real photos of `shared/data`.

use std::path::{Path, PathBuf};
use std::process::Command;

use wtb_testdata::{present as need, shared_dir};

fn wtb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wtb"))
        .args(args)
        .output()
        .expect("the wtb binary runs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks the report folder: every file exists and parses; returns results.json.
fn check_report(out: &Path, expected_rows_min: usize) -> serde_json::Value {
    let md = read(&out.join("report.md"));
    assert!(md.starts_with("# Evaluation report"), "{md}");
    assert!(
        md.contains("| model | preprocess | pooling | metric |"),
        "{md}"
    );

    let csv = read(&out.join("results.csv"));
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    assert_eq!(header[0], "set");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.len() >= expected_rows_min, "{} rows", rows.len());
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let value: f64 = row[column("value")].parse().unwrap();
        let (low, high): (f64, f64) = (
            row[column("ci_low")].parse().unwrap(),
            row[column("ci_high")].parse().unwrap(),
        );
        assert!(
            (0.0..=1.0).contains(&value) && low <= value + 1e-9 && value <= high + 1e-9,
            "{row:?}"
        );
    }

    let results: serde_json::Value =
        serde_json::from_str(&read(&out.join("results.json"))).unwrap();
    assert_eq!(results["format"], "wtb-eval-results");
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&out.join("manifest.json"))).unwrap();
    assert_eq!(manifest["format"], "wtb-eval-manifest");
    assert!(
        manifest["manifest"]["weights"][0][2]
            .as_str()
            .unwrap()
            .len()
            == 64
    );

    let html = read(&out.join("failures.html"));
    assert!(html.contains("<html") && html.ends_with("</html>\n"));
    let plots: Vec<PathBuf> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let svgs: Vec<&PathBuf> = plots
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    assert!(!svgs.is_empty());
    for svg in svgs {
        assert!(read(svg).contains("<svg"), "{}", svg.display());
    }
    for png in plots
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
    {
        assert!(std::fs::read(png).unwrap().starts_with(b"\x89PNG"));
    }
    results
}

#[test]
fn full_protocol_on_a_few_dozen_photos_writes_a_complete_report_and_resumes_from_cache() {
    let data = shared_dir().join("data/s2s-dev");
    let weights = shared_dir().join("models/mobilenet_v2_torchvision_imagenet1k.safetensors");
    if !need(&[data.join("labels/test_pairs_dresses.json"), weights.clone()]) {
        return;
    }
    // A small label folder: the dresses test queries and every dresses shop photo (~60 photos).
    let labels = tempfile::tempdir().unwrap();
    for file in ["test_pairs_dresses.json", "retrieval_dresses.json"] {
        std::fs::copy(data.join("labels").join(file), labels.path().join(file)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let weights_arg = format!("mobilenet_v2={}", weights.display());
    let photos = data.join("photos_resized");
    let args = [
        "eval",
        "--protocol",
        "full",
        "--labels",
        labels.path().to_str().unwrap(),
        "--photos",
        photos.to_str().unwrap(),
        "--models",
        "mobilenet_v2",
        "--weights",
        &weights_arg,
        "--metrics",
        "cosine,chebyshev",
        "--bootstrap",
        "200",
        "--failures",
        "3",
        "--out",
        out.path().to_str().unwrap(),
    ];
    let started = std::time::Instant::now();
    let first = wtb(&args);
    let first_run = started.elapsed();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let results = check_report(out.path(), 2 * 9);
    assert_eq!(results["protocol"], "full");
    assert_eq!(results["results"].as_array().unwrap().len(), 2);
    assert!(out.path().join("failures/000-query.jpg").is_file());

    // Second run: everything comes from the cache and the numbers are identical.
    let before = read(&out.path().join("results.json"));
    let second = wtb(&args);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(read(&out.path().join("results.json")), before);

    // Runs killed with SIGKILL at seeded points leave a cache and report that the next run
    // resumes from, to the same numbers.
    std::fs::remove_dir_all(out.path()).unwrap();
    let (killed, tried) = wtb_testdata::crash::kill_repeatedly(9, 3, first_run, |_, delay| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wtb"));
        command.args(args);
        let killed = wtb_testdata::crash::kill_after(&mut command, delay);
        let results = out.path().join("results.json");
        if results.exists() {
            serde_json::from_str::<serde_json::Value>(&read(&results))
                .expect("a report left by a killed run is whole");
            // Start the next try from the cache alone.
            std::fs::remove_file(&results).unwrap();
        }
        killed
    });
    assert_eq!(killed, 3, "{tried} runs, {killed} killed");
    let resumed = wtb(&args);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(read(&out.path().join("results.json")), before);
    eprintln!(
        "eval: {killed} runs killed mid-way ({tried} tried), then resumed to the same report"
    );
}

#[test]
fn category_protocol_reads_csv_lists() {
    let data = shared_dir().join("data/xdomain-dev");
    let weights = shared_dir().join("models/mobilenet_v2_torchvision_imagenet1k.safetensors");
    if !need(&[
        data.join("queries.csv"),
        data.join("gallery.csv"),
        weights.clone(),
    ]) {
        return;
    }
    // Ten queries and thirty gallery photos, paths made absolute so the CSVs can live elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let absolute = |line: &str| format!("{}/{line}", data.display());
    let queries: Vec<String> = read(&data.join("queries.csv"))
        .lines()
        .skip(1)
        .take(10)
        .map(absolute)
        .collect();
    let gallery: Vec<String> = read(&data.join("gallery.csv"))
        .lines()
        .skip(1)
        .take(30)
        .map(absolute)
        .collect();
    std::fs::write(
        dir.path().join("q.csv"),
        format!("path,category\n{}\n", queries.join("\n")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("g.csv"),
        format!("path,product,category\n{}\n", gallery.join("\n")),
    )
    .unwrap();
    let out = dir.path().join("report");
    let weights_arg = format!("mobilenet_v2={}", weights.display());
    let output = wtb(&[
        "eval",
        "--protocol",
        "category",
        "--queries",
        dir.path().join("q.csv").to_str().unwrap(),
        "--gallery",
        dir.path().join("g.csv").to_str().unwrap(),
        "--weights",
        &weights_arg,
        "--metrics",
        "cosine",
        "--preprocess",
        "torchvision",
        "--ks",
        "1,5",
        "--bootstrap",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = check_report(&out, 6);
    assert_eq!(results["protocol"], "category");
    let measures = &results["results"][0]["summary"]["measures"];
    assert!(measures.to_string().contains("HitAt"), "{measures}");
}

#[test]
fn help_documents_the_options_and_bad_input_is_a_clear_error() {
    let help = wtb(&["eval", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--protocol",
        "--labels",
        "--photos",
        "--queries",
        "--gallery",
        "--models",
        "--metrics",
        "--out",
        "report.md",
    ] {
        assert!(text.contains(option), "{option} missing from:\n{text}");
    }
    let out = tempfile::tempdir().unwrap();
    let missing = wtb(&[
        "eval",
        "--protocol",
        "full",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--labels"));

    let labels = tempfile::tempdir().unwrap();
    std::fs::write(
        labels.path().join("test_pairs_tops.json"),
        "[{\"photo\": 1}]",
    )
    .unwrap();
    let bad = wtb(&[
        "eval",
        "--protocol",
        "full",
        "--labels",
        labels.path().to_str().unwrap(),
        "--photos",
        labels.path().to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("test_pairs_tops.json"), "{stderr}");
}

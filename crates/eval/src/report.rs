//! The report folder of a run: `report.md`, `results.csv`, `results.json`, `manifest.json`,
//! accuracy@k plots (`plots/*.png`, `plots/*.svg`) and `failures.html`.
//!
//! Everything except the manifest (which holds timings and the machine) is a pure function of
//! the results, so two runs on the same data give byte-identical files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::metrics::{Estimate, Measure};
use crate::plot;
pub use crate::results::{ConfigLabel, FailureCase, Manifest, Report, SetResult, SkippedItem};
use crate::{write_atomic, EvalError};

/// Version of the `results.json` layout.
pub const RESULTS_FORMAT_VERSION: u32 = 2;
/// Version of the `manifest.json` layout.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// Every file written, relative to the report folder.
    pub files: Vec<PathBuf>,
    /// Why PNG plots were not drawn, when they were not.
    pub png_skipped: Option<String>,
}

/// Writes `report.md`, `results.csv`, `results.json`, `manifest.json`, `failures.html` and the
/// plots into `dir` (created if needed), each file atomically.
pub fn write_report(
    dir: &Path,
    report: &Report,
    manifest: &Manifest,
) -> Result<ReportFiles, EvalError> {
    std::fs::create_dir_all(dir.join("plots")).map_err(|source| EvalError::Io {
        path: dir.join("plots"),
        source,
    })?;
    let mut files = Vec::new();

    let plots = plot::draw_all(&dir.join("plots"), report)?;
    for file in &plots.files {
        files.push(Path::new("plots").join(file));
    }

    let markdown = render_markdown(report, &plots);
    write_atomic(&dir.join("report.md"), markdown.as_bytes())?;
    files.push("report.md".into());

    write_atomic(&dir.join("results.csv"), render_csv(report).as_bytes())?;
    files.push("results.csv".into());

    let json = serde_json::json!({
        "format": "wtb-eval-results",
        "format_version": RESULTS_FORMAT_VERSION,
        "protocol": report.protocol,
        "ks": report.ks,
        "notes": report.notes,
        "results": report.results,
        "skipped": report.skipped,
    });
    write_json(&dir.join("results.json"), &json)?;
    files.push("results.json".into());

    let manifest_json = serde_json::json!({
        "format": "wtb-eval-manifest",
        "format_version": MANIFEST_FORMAT_VERSION,
        "manifest": manifest,
    });
    write_json(&dir.join("manifest.json"), &manifest_json)?;
    files.push("manifest.json".into());

    write_atomic(
        &dir.join("failures.html"),
        render_failures(report).as_bytes(),
    )?;
    files.push("failures.html".into());

    Ok(ReportFiles {
        files,
        png_skipped: plots.png_skipped,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), EvalError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| EvalError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// `41.6 [38.2, 45.0]`: a fraction shown as a percentage with its interval.
fn percent(estimate: &Estimate) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * estimate.value,
        100.0 * estimate.ci_low,
        100.0 * estimate.ci_high
    )
}

/// The rows of one table: (stratum label, query count, absent count, estimates) per result.
fn strata(result: &SetResult) -> Vec<(String, usize, usize, &[Estimate])> {
    let s = &result.summary;
    let mut rows: Vec<(String, usize, usize, &[Estimate])> = s
        .categories
        .iter()
        .map(|c| {
            (
                c.category.clone(),
                c.n_queries,
                c.n_target_absent,
                c.estimates.as_slice(),
            )
        })
        .collect();
    let absent: usize = s.categories.iter().map(|c| c.n_target_absent).sum();
    if s.categories.len() > 1 {
        rows.push((
            "all (micro)".to_string(),
            s.n_queries,
            absent,
            s.micro.as_slice(),
        ));
        rows.push((
            "all (macro)".to_string(),
            s.n_queries,
            absent,
            s.macro_avg.as_slice(),
        ));
    }
    rows
}

fn render_markdown(report: &Report, plots: &plot::PlotFiles) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation report: protocol `{}`\n", report.protocol);
    for note in &report.notes {
        let _ = writeln!(md, "{note}\n");
    }
    let _ = writeln!(
        md,
        "Numbers are percentages over queries, with a 95% bootstrap interval in brackets \
         (queries resampled within their category). A query whose product has no photo in the \
         gallery counts as a miss; the `absent` column counts them. Ties count against the query.\n"
    );

    let mut sets: Vec<&str> = report.results.iter().map(|r| r.set.as_str()).collect();
    sets.dedup();
    for set in sets {
        let in_set: Vec<&SetResult> = report.results.iter().filter(|r| r.set == set).collect();
        let Some(first) = in_set.first() else {
            continue;
        };
        let _ = writeln!(md, "## Set `{set}`\n");
        let gallery: Vec<String> = first
            .gallery
            .iter()
            .map(|(c, photos, products)| format!("{c}: {photos} photos / {products} products"))
            .collect();
        let _ = writeln!(md, "Gallery: {}.\n", gallery.join("; "));
        let labels: Vec<String> = first.summary.measures.iter().map(Measure::name).collect();
        let stratum_names: Vec<String> = strata(first).into_iter().map(|row| row.0).collect();
        for stratum in stratum_names {
            let mut header_written = false;
            for result in &in_set {
                let Some((_, n, absent, estimates)) =
                    strata(result).into_iter().find(|row| row.0 == stratum)
                else {
                    continue;
                };
                if !header_written {
                    let _ = writeln!(
                        md,
                        "### {stratum} ({n} queries, {absent} absent from the gallery)\n"
                    );
                    let _ = writeln!(
                        md,
                        "| model | preprocess | pooling | metric | steps | {} |",
                        labels.join(" | ")
                    );
                    let _ = writeln!(md, "|---|---|---|---|---|{}", "---|".repeat(labels.len()));
                    header_written = true;
                }
                let cells: Vec<String> = estimates.iter().map(percent).collect();
                let c = &result.config;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    c.model,
                    c.preprocess,
                    c.pooling,
                    c.metric,
                    c.steps,
                    cells.join(" | ")
                );
            }
            md.push('\n');
        }
    }

    let _ = writeln!(md, "## Plots\n");
    if plots.files.is_empty() {
        let _ = writeln!(md, "No plots were drawn (no results).\n");
    }
    for file in plots
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "svg"))
    {
        let _ = writeln!(md, "![{}](plots/{})\n", file.display(), file.display());
    }
    if let Some(reason) = &plots.png_skipped {
        let _ = writeln!(md, "PNG plots were not drawn: {reason}. The SVG plots carry no text; their lines are, in order:\n");
        for (i, (name, colour)) in plots.legend.iter().enumerate() {
            let _ = writeln!(md, "{}. `{name}`: {colour}", i + 1);
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Skipped\n");
    if report.skipped.is_empty() {
        let _ = writeln!(md, "Nothing was skipped.\n");
    } else {
        let _ = writeln!(md, "{} items were left out:\n", report.skipped.len());
        for item in report.skipped.iter().take(50) {
            let _ = writeln!(md, "- {}: {}", item.item, item.reason);
        }
        if report.skipped.len() > 50 {
            let _ = writeln!(
                md,
                "- ... and {} more (see results.json)",
                report.skipped.len() - 50
            );
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "See `results.csv` / `results.json` for every number, `manifest.json` for inputs, seeds, \
         versions, weights and timings, and `failures.html` for failure examples."
    );
    md
}

fn render_csv(report: &Report) -> String {
    let mut out = String::from(
        "set,stratum,model,preprocess,pooling,metric,steps,measure,value,ci_low,ci_high,n_queries,n_target_absent\n",
    );
    for result in &report.results {
        let c = &result.config;
        for (stratum, n, absent, estimates) in strata(result) {
            for (measure, e) in result.summary.measures.iter().zip(estimates) {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{},{}",
                    csv_field(&result.set),
                    csv_field(&stratum),
                    csv_field(&c.model),
                    csv_field(&c.preprocess),
                    csv_field(&c.pooling),
                    csv_field(&c.metric),
                    csv_field(&c.steps),
                    measure.name(),
                    e.value,
                    e.ci_low,
                    e.ci_high,
                    n,
                    absent
                );
            }
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn image_cell(path: &Option<String>, caption: &str, class: &str) -> String {
    match path {
        Some(path) => format!(
            "<figure class=\"{class}\"><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
            html_escape(path),
            html_escape(caption),
            html_escape(caption)
        ),
        None => format!(
            "<figure class=\"{class}\"><div class=\"missing\">no image</div><figcaption>{}</figcaption></figure>",
            html_escape(caption)
        ),
    }
}

fn render_failures(report: &Report) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Top failures</title>\n<style>\
         body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;text-align:center;vertical-align:top}\
         img{max-height:160px;max-width:160px}.query img{border:3px solid #36c}.expected img{border:3px solid #2a2}\
         .hit img{border:3px solid #2a2}.miss img{border:3px solid #c33}.missing{width:120px;height:120px;background:#eee}\
         figcaption{font-size:12px;max-width:160px}</style></head><body>\n",
    );
    let _ = writeln!(
        html,
        "<h1>Top failures: protocol {}</h1>",
        html_escape(&report.protocol)
    );
    let _ = writeln!(
        html,
        "<p>For each configuration, the queries ranked worst: the query crop (blue), a photo of \
         the expected product (green) and the top returned products (red: wrong, green: right).</p>"
    );
    if report.failures.is_empty() {
        let _ = writeln!(html, "<p>No failures.</p>");
    }
    for case in &report.failures {
        let rank = case
            .rank
            .map_or("not ranked".to_string(), |r| format!("rank {r}"));
        let _ = writeln!(
            html,
            "<section><h3>{} · set {} · query {} ({}) · expected {} · {}</h3>",
            html_escape(&case.config.short()),
            html_escape(&case.set),
            html_escape(&case.query),
            html_escape(&case.category),
            html_escape(&case.expected),
            rank
        );
        html.push_str(&image_cell(
            &case.query_image,
            &format!("query {}", case.query),
            "query",
        ));
        html.push_str(&image_cell(
            &case.expected_image,
            &format!("expected {}", case.expected),
            "expected",
        ));
        for (i, (label, image, relevant)) in case.returned.iter().enumerate() {
            let class = if *relevant { "hit" } else { "miss" };
            html.push_str(&image_cell(image, &format!("#{} {label}", i + 1), class));
        }
        html.push_str("</section>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{score_query, summarize, BootstrapConfig, RankedPhoto, Target};

    pub(crate) fn sample_report() -> Report {
        let ks = vec![1, 2];
        let measures = Measure::product_measures(&ks);
        let ranking = vec![
            RankedPhoto {
                photo: 1,
                product: 10,
                category: "tops".into(),
                score: 0.1,
            },
            RankedPhoto {
                photo: 2,
                product: 11,
                category: "tops".into(),
                score: 0.2,
            },
        ];
        let scores = vec![
            score_query("q1", "tops", &Target::Product(10), &ranking, &ks),
            score_query("q2", "tops", &Target::Product(11), &ranking, &ks),
            score_query("q3", "dresses", &Target::Product(10), &ranking, &ks),
        ];
        let summary = summarize(
            &scores,
            &ks,
            &measures,
            BootstrapConfig {
                replicates: 50,
                seed: 1,
            },
        );
        let config = ConfigLabel {
            model: "m".into(),
            preprocess: "squash".into(),
            pooling: "avg".into(),
            metric: "cosine".into(),
            steps: "none".into(),
        };
        Report {
            protocol: "test, with \"quotes\"".into(),
            notes: vec!["A note.".into()],
            ks,
            results: vec![SetResult {
                config: config.clone(),
                set: "test".into(),
                gallery: vec![("tops".into(), 2, 2)],
                summary,
            }],
            skipped: vec![SkippedItem {
                item: "query 9".into(),
                reason: "empty box".into(),
            }],
            failures: vec![FailureCase {
                config,
                set: "test".into(),
                query: "q2".into(),
                category: "tops".into(),
                expected: "product 11".into(),
                rank: Some(2),
                query_image: Some("failures/q2.jpg".into()),
                expected_image: None,
                returned: vec![("product 10".into(), None, false)],
            }],
        }
    }

    #[test]
    fn report_files_are_written_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let report = sample_report();
        let manifest = Manifest {
            command: vec!["wtb".into()],
            data: vec![],
            seeds: vec![("bootstrap".into(), 1)],
            versions: vec![],
            weights: vec![],
            heads: vec![],
            hardware: vec![],
            timings: vec![("total".into(), 1.5)],
        };
        let written = write_report(dir.path(), &report, &manifest).unwrap();
        for file in &written.files {
            assert!(dir.path().join(file).is_file(), "{}", file.display());
        }
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(
            md.contains("| m | squash | avg | cosine | none | 50.0 ["),
            "{md}"
        );
        assert!(md.contains("all (micro) (3 queries"), "{md}");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["format_version"], RESULTS_FORMAT_VERSION);
        let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        // (tops, dresses, micro, macro) x (acc@1, acc@2, mrr, map)
        assert_eq!(rows.len(), 16);
        let html = std::fs::read_to_string(dir.path().join("failures.html")).unwrap();
        assert!(
            html.contains("failures/q2.jpg") && html.contains("with &quot;quotes&quot;"),
            "{html}"
        );

        // Deterministic: writing again gives the same bytes.
        let again = tempfile::tempdir().unwrap();
        write_report(again.path(), &report, &manifest).unwrap();
        for file in ["report.md", "results.csv", "results.json", "failures.html"] {
            assert_eq!(
                std::fs::read(dir.path().join(file)).unwrap(),
                std::fs::read(again.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }
}

//! `wtb dataset stats|check|clean`: inspect, validate and clean a street2shop dataset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use wtb_dataset::{
    check, clean, photo_path, CleanConfig, Counts, DatasetStats, DecodeLimits, Labels, Problem,
};

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Per-category counts (street photos, pair records, products, shop photos) and unique
    /// totals.
    Stats(StatsArgs),
    /// Validate the label files (and the photos, with --photos); lists every problem found.
    /// Exits with status 1 when there is an error.
    Check(CheckArgs),
    /// Find placeholder and non-white shop photos; write a report and an exclusion file.
    Clean(CleanArgs),
}

/// Where the dataset is.
#[derive(Args)]
pub struct DatasetArgs {
    /// Label folder (retrieval_<cat>.json, train_pairs_<cat>.json, test_pairs_<cat>.json,
    /// optional aspect_ratios.csv).
    #[arg(long, value_name = "DIR", default_value = "labels")]
    labels: PathBuf,
    /// Photo folder (<photo>.jpg) [default for clean: photos_resized beside the label folder].
    #[arg(long, value_name = "DIR")]
    photos: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Refuse photos with more pixels than this (checked from the header, before decoding).
    #[arg(long, value_name = "N", default_value_t = DecodeLimits::default().max_pixels)]
    max_pixels: u64,
}

impl DatasetArgs {
    fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.max_pixels,
            ..DecodeLimits::default()
        }
    }
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
}

#[derive(Args)]
pub struct CleanArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Where to write the exclusion file that later steps honour (written atomically).
    #[arg(long, value_name = "FILE", default_value = "exclusions.json")]
    exclusions: PathBuf,
    /// Do not write the exclusion file; only report.
    #[arg(long)]
    no_write: bool,
    /// Identical content under at least this many products is a placeholder.
    #[arg(long, value_name = "N", default_value_t = CleanConfig::default().placeholder_min_products)]
    placeholder_min_products: usize,
    /// Edge strip width, as a fraction of the photo's shorter side.
    #[arg(long, value_name = "F", default_value_t = CleanConfig::default().border_fraction)]
    border_fraction: f64,
    /// Darkest channel of a light border pixel.
    #[arg(long, value_name = "V", default_value_t = CleanConfig::default().light_level)]
    light_level: u8,
    /// Largest channel spread of a neutral border pixel.
    #[arg(long, value_name = "V", default_value_t = CleanConfig::default().max_chroma)]
    max_chroma: u8,
    /// Largest luminance step between a smooth border pixel and its neighbours.
    #[arg(long, value_name = "V", default_value_t = CleanConfig::default().max_gradient)]
    max_gradient: u8,
    /// A photo whose best edge has a smaller plain-light fraction is non-white.
    #[arg(long, value_name = "F", default_value_t = CleanConfig::default().min_plain_fraction)]
    min_plain_fraction: f64,
}

pub fn run(command: DatasetCommand) -> anyhow::Result<ExitCode> {
    match command {
        DatasetCommand::Stats(args) => stats(args),
        DatasetCommand::Check(args) => run_check(args),
        DatasetCommand::Clean(args) => run_clean(args),
    }
}

fn load(labels: &Path) -> anyhow::Result<Labels> {
    Labels::load(labels).map_err(|problems| {
        let mut text = format!(
            "cannot read the labels in {} ({} errors; `wtb dataset check` lists them all):",
            labels.display(),
            problems.0.len()
        );
        for p in problems.0.iter().take(20) {
            text.push_str(&format!("\n  {p}"));
        }
        if problems.0.len() > 20 {
            text.push_str(&format!("\n  ... and {} more", problems.0.len() - 20));
        }
        anyhow::anyhow!(text)
    })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let labels = load(&args.dataset.labels)?;
    let stats = DatasetStats::compute(&labels);
    // With --photos, also count which referenced photos exist on disk.
    let photos = args.dataset.photos.as_deref().map(|dir| {
        let mut ids: Vec<_> = labels.shop_photos().keys().copied().collect();
        ids.extend(labels.items_per_street_photo().keys().copied());
        ids.sort();
        ids.dedup();
        let present = ids
            .iter()
            .filter(|id| photo_path(dir, **id).is_file())
            .count();
        (present, ids.len() - present)
    });
    if args.dataset.json {
        let mut value = serde_json::to_value(&stats)?;
        if let Some((present, missing)) = photos {
            value["photos"] = json!({"present": present, "missing": missing});
        }
        print_json(&value)?;
    } else {
        print_stats_table(&stats);
        if let Some((present, missing)) = photos {
            println!("\nphotos: {present} present, {missing} missing");
        }
        if let Some(ratios) = &labels.aspect_ratios {
            println!(
                "aspect_ratios.csv: {} photos ({} marked corrupted)",
                ratios.len(),
                ratios.corrupted()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats_table(stats: &DatasetStats) {
    let header = [
        "category",
        "train",
        "test",
        "pairs",
        "street photos",
        "products in pairs",
        "retrieval",
        "shop photos",
        "shop products",
    ];
    let row = |name: &str, c: &Counts| {
        vec![
            name.to_string(),
            c.train_records.to_string(),
            c.test_records.to_string(),
            c.pair_records.to_string(),
            c.unique_street_photos.to_string(),
            c.products_in_pairs.to_string(),
            c.retrieval_records.to_string(),
            c.unique_shop_photos.to_string(),
            c.retrieval_products.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = stats
        .categories
        .iter()
        .map(|(name, c)| row(name.as_str(), c))
        .collect();
    rows.push(row("total (unique)", &stats.totals));
    print_table(&header, &rows);
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let d = &args.dataset;
    if let Some(photos) = &d.photos {
        anyhow::ensure!(
            photos.is_dir(),
            "photo folder {} does not exist",
            photos.display()
        );
    }
    let report = check(&d.labels, d.photos.as_deref(), &d.limits());
    if d.json {
        print_json(&json!({
            "passed": report.passed(),
            "errors": report.errors(),
            "warnings": report.warnings(),
            "photos_checked": report.photos_checked,
            "problems": report.problems,
            "stats": report.stats,
        }))?;
    } else {
        for p in &report.problems {
            println!("{p}");
        }
        let totals = &report.stats.totals;
        println!(
            "{}: {} categories, {} pair records, {} retrieval records, {} photos decoded; {} errors, {} warnings",
            if report.passed() { "check passed" } else { "check FAILED" },
            report.stats.categories.len(),
            totals.pair_records,
            totals.retrieval_records,
            report.photos_checked,
            report.errors(),
            report.warnings()
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_clean(args: CleanArgs) -> anyhow::Result<ExitCode> {
    let d = &args.dataset;
    let photos = match &d.photos {
        Some(p) => p.clone(),
        None => d
            .labels
            .parent()
            .unwrap_or(Path::new("."))
            .join("photos_resized"),
    };
    anyhow::ensure!(
        photos.is_dir(),
        "photo folder {} does not exist (pass --photos DIR)",
        photos.display()
    );
    let config = CleanConfig {
        placeholder_min_products: args.placeholder_min_products,
        border_fraction: args.border_fraction,
        light_level: args.light_level,
        max_chroma: args.max_chroma,
        max_gradient: args.max_gradient,
        min_plain_fraction: args.min_plain_fraction,
    };
    anyhow::ensure!(
        config.border_fraction > 0.0 && config.border_fraction <= 0.5,
        "--border-fraction must be in (0, 0.5]"
    );
    let labels = load(&d.labels)?;
    let report = clean(&labels, &photos, &config, &d.limits());
    let written = if args.no_write {
        None
    } else {
        report
            .exclusions()
            .save(&args.exclusions)
            .with_context(|| "writing the exclusion file (or pass --no-write)")?;
        Some(args.exclusions.clone())
    };
    if d.json {
        print_json(&json!({
            "shop_photos": report.shop_photos,
            "placeholders": report.placeholders,
            "non_white": report.non_white,
            "unreadable": report.unreadable,
            "categories": report.categories,
            "placeholder_groups": report.placeholder_groups,
            "config": report.config,
            "exclusions_file": written,
            "problems": report.problems,
        }))?;
    } else {
        let header = [
            "category",
            "shop photos",
            "placeholders",
            "non-white",
            "unreadable",
            "kept",
        ];
        let mut rows: Vec<Vec<String>> = report
            .categories
            .iter()
            .map(|(name, c)| {
                vec![
                    name.to_string(),
                    c.shop_photos.to_string(),
                    c.placeholders.to_string(),
                    c.non_white.to_string(),
                    c.unreadable.to_string(),
                    c.kept.to_string(),
                ]
            })
            .collect();
        let excluded = report.placeholders.len() + report.non_white.len() + report.unreadable.len();
        rows.push(vec![
            "total (unique)".into(),
            report.shop_photos.to_string(),
            report.placeholders.len().to_string(),
            report.non_white.len().to_string(),
            report.unreadable.len().to_string(),
            (report.shop_photos - excluded).to_string(),
        ]);
        print_table(&header, &rows);
        let list = |ids: &[wtb_dataset::PhotoId]| {
            ids.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!();
        for g in &report.placeholder_groups {
            println!(
                "placeholder group {} ({} photos under {} products): {}",
                &g.hash[..12],
                g.photos.len(),
                g.products,
                list(&g.photos)
            );
        }
        println!("non-white: {}", list(&report.non_white));
        print_problems(&report.problems);
        match written {
            Some(path) => println!("exclusion file: {} ({} photos)", path.display(), excluded),
            None => println!("exclusion file not written (--no-write)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_problems(problems: &[Problem]) {
    for p in problems {
        println!("{p}");
    }
}

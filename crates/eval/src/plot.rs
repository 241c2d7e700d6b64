//! accuracy@k curves (one line per configuration) per evaluation set and category, drawn with
//! `plotters` as SVG and PNG.
//!
//! Text needs a TrueType font, read at run time: `$WTB_FONT` or one of [`FONT_CANDIDATES`]
//! (Debian: package `fonts-dejavu-core`). Without one the SVG plots are drawn without text and
//! the PNG plots are skipped; the report then lists the line colours instead of a legend.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::Measure;
use crate::results::{Report, SetResult};
use crate::{write_atomic, EvalError};

/// Font files tried, in order, when `$WTB_FONT` is not set.
pub const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

const WIDTH: u32 = 900;
const HEIGHT: u32 = 600;

/// What [`draw_all`] produced.
pub(crate) struct PlotFiles {
    /// File names inside the plot folder.
    pub files: Vec<PathBuf>,
    /// Why the PNG plots were skipped.
    pub png_skipped: Option<String>,
    /// (configuration, colour) in line order, for text-free plots.
    pub legend: Vec<(String, String)>,
}

/// Registers the plot font once per process; `Err` says why there is none.
fn font() -> &'static Result<PathBuf, String> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("WTB_FONT") {
            Some(path) => vec![PathBuf::from(path)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        for path in &candidates {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            // plotters keeps fonts for the whole process; one small file, loaded once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(path.clone());
            }
        }
        Err(format!(
            "no TrueType font found (tried {}; set WTB_FONT or install fonts-dejavu-core)",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// One curve: a configuration's value (in %) at each k.
struct Curve {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A plot: title, file stem and its curves.
struct Figure {
    title: String,
    stem: String,
    y_label: String,
    curves: Vec<Curve>,
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The k-curve measure of a summary: accuracy@k, or hit@k for category benchmarks.
fn curve_points(result: &SetResult, estimates: &[crate::metrics::Estimate]) -> Vec<(f64, f64)> {
    result
        .summary
        .measures
        .iter()
        .zip(estimates)
        .filter_map(|(m, e)| match m {
            Measure::AccuracyAt(k) | Measure::HitAt(k) => Some((*k as f64, 100.0 * e.value)),
            _ => None,
        })
        .collect()
}

fn figures(report: &Report) -> Vec<Figure> {
    let mut figures: Vec<Figure> = Vec::new();
    for result in &report.results {
        let s = &result.summary;
        let y_label = if s.measures.iter().any(|m| matches!(m, Measure::HitAt(_))) {
            "category hit@k (%)"
        } else {
            "accuracy@k (%)"
        };
        let mut strata: Vec<(String, &[crate::metrics::Estimate])> = s
            .categories
            .iter()
            .map(|c| (c.category.clone(), c.estimates.as_slice()))
            .collect();
        if s.categories.len() > 1 {
            strata.push(("all (micro)".into(), s.micro.as_slice()));
            strata.push(("all (macro)".into(), s.macro_avg.as_slice()));
        }
        for (stratum, estimates) in strata {
            let stem = format!("{}_{}", slug(&result.set), slug(&stratum));
            let curve = Curve {
                name: result.config.short(),
                points: curve_points(result, estimates),
            };
            match figures.iter_mut().find(|f| f.stem == stem) {
                Some(figure) => figure.curves.push(curve),
                None => figures.push(Figure {
                    title: format!("{} · set {} · {}", report.protocol, result.set, stratum),
                    stem,
                    y_label: y_label.to_string(),
                    curves: vec![curve],
                }),
            }
        }
    }
    figures
}

fn colour(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
    with_text: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let x_max = figure
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if with_text {
        builder
            .caption(&figure.title, ("sans-serif", 22))
            .x_label_area_size(45)
            .y_label_area_size(55);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max * 1.04, 0f64..100f64)
        .map_err(err)?;
    if with_text {
        chart
            .configure_mesh()
            .x_desc("k (distinct products)")
            .y_desc(figure.y_label.as_str())
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(err)?;
    } else {
        for y in (0..=100).step_by(10) {
            let y = f64::from(y);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, y), (x_max * 1.04, y)],
                    RGBColor(220, 220, 220),
                )))
                .map_err(err)?;
        }
    }
    for (i, curve) in figure.curves.iter().enumerate() {
        let c = colour(i);
        let series = chart
            .draw_series(LineSeries::new(
                curve.points.iter().copied(),
                c.stroke_width(2),
            ))
            .map_err(err)?;
        if with_text {
            series.label(curve.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
        chart
            .draw_series(curve.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    if with_text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Draws every figure of `report` into `dir` (SVG always, PNG when a font is available).
pub(crate) fn draw_all(dir: &Path, report: &Report) -> Result<PlotFiles, EvalError> {
    let font = font();
    let with_text = font.is_ok();
    let mut files = Vec::new();
    let figures = figures(report);
    for figure in &figures {
        let plot_error = |path: &Path, reason: String| EvalError::Plot {
            path: path.to_path_buf(),
            reason,
        };
        let svg_path = dir.join(format!("{}.svg", figure.stem));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
            draw(&root, figure, with_text).map_err(|e| plot_error(&svg_path, e))?;
        }
        write_atomic(&svg_path, svg.as_bytes())?;
        files.push(PathBuf::from(format!("{}.svg", figure.stem)));

        if with_text {
            let png_path = dir.join(format!("{}.png", figure.stem));
            let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
            {
                let root =
                    BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
                draw(&root, figure, true).map_err(|e| plot_error(&png_path, e))?;
            }
            let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
                .ok_or_else(|| plot_error(&png_path, "pixel buffer has the wrong size".into()))?;
            let mut png = Vec::new();
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| plot_error(&png_path, e.to_string()))?;
            write_atomic(&png_path, &png)?;
            files.push(PathBuf::from(format!("{}.png", figure.stem)));
        }
    }
    let legend = figures
        .first()
        .map(|f| {
            f.curves
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let RGBColor(r, g, b) = colour(i);
                    (c.name.clone(), format!("#{r:02x}{g:02x}{b:02x}"))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(PlotFiles {
        files,
        png_skipped: font.as_ref().err().cloned(),
        legend,
    })
}

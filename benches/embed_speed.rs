//! Images per second of each model's forward pass (preprocessed input to pooled embedding) on
//! the CPU, at batch 1 and 32.
//!
//! `cargo bench -p wtb-benches --bench embed_speed -- [--models a,b] [--batches 1,32]
//! [--engines fast,candle] [--min-seconds S] [--json FILE] [--device cpu|cuda[:N]] [--parity]`
//!
//! `--engines` picks the CPU implementations to time: `fast` (the fused kernels of
//! `wtb-kernels`, the default of `wtb-embed`) and `candle` (stock candle ops). VGG16 has no fast
//! plan, so it is timed once, as `candle`.
//!
//! `--paired TURNS` times the two engines against each other instead: for each model and
//! batch, TURNS alternating turns (stock candle once, then the fast engine for about as
//! long), so that a drift of the machine's speed hits both alike. It reports each engine's
//! median and the paired speed-up (median over turns of the turn's ratio); the JSON rows
//! then carry `candle_images_per_s`, `fast_images_per_s`, `speedup` and `paired_speedup`.
//!
//! `--pipeline DIR TURNS` times decoding included against the model alone, MobileNetV2, fast
//! engine, batch 32: TURNS alternating turns of [`wtb_embed::Embedder::embed_jobs`] (what
//! `wtb embed` runs: decode, resize, normalise, model) over the next 320 `.jpg` photos of DIR,
//! then the model alone on a synthetic batch for about as long. It reports both rates and the
//! paired ratio (median over turns of each turn's ratio).
//!
//! `--parity` also embeds each batch on the CPU and fails unless the device's vectors are within
//! relative L2 1e-3 of them (used by `benches/cuda_check.sh`; build with
//! `--features wtb-embed/cuda` for CUDA).
//!
//! MobileNetV2 and EfficientNet-Lite0 use their real weights (from `$WTB_SHARED_DIR/models`, or
//! wherever `wtb_embed::resolve_weights` finds them); ResNet50 and VGG16 use the synthetic
//! golden-test weights (same arithmetic, meaningless vectors). Compare against a reference
//! tool in the same run with `benches/embed_vs_onnx.sh`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use wtb_embed::candle_core::{Device, Tensor};
use wtb_embed::{DeviceChoice, Embedder, EmbedderConfig, Engine, ModelKind};

struct Options {
    models: Vec<ModelKind>,
    batches: Vec<usize>,
    engines: Vec<Engine>,
    min_seconds: f64,
    json: Option<PathBuf>,
    device: DeviceChoice,
    parity: bool,
    paired: Option<usize>,
    pipeline: Option<(PathBuf, usize)>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        models: ModelKind::ALL.to_vec(),
        batches: vec![1, 32],
        engines: vec![Engine::Fast, Engine::Candle],
        min_seconds: 3.0,
        json: None,
        device: DeviceChoice::Cpu,
        parity: false,
        paired: None,
        pipeline: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--models" => {
                options.models = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--batches" => {
                options.batches = value()?
                    .split(',')
                    .map(|b| b.parse().with_context(|| format!("batch {b:?}")))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--engines" => {
                options.engines = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--min-seconds" => options.min_seconds = value()?.parse().context("--min-seconds")?,
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "--device" => options.device = value()?.parse()?,
            "--parity" => options.parity = true,
            "--paired" => options.paired = Some(value()?.parse().context("--paired")?),
            "--pipeline" => {
                let dir = PathBuf::from(value()?);
                let turns = args
                    .next()
                    .context("--pipeline needs DIR and TURNS")?
                    .parse()
                    .context("--pipeline TURNS")?;
                options.pipeline = Some((dir, turns));
            }
            // cargo bench passes --bench to harness=false binaries.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(options)
}

use wtb_testdata::shared_dir;

/// The embedder and a note saying which weights it runs.
fn embedder(
    model: ModelKind,
    device: DeviceChoice,
    engine: Engine,
) -> anyhow::Result<(Embedder, String)> {
    let mut config = EmbedderConfig::new(model);
    config.device = device;
    config.engine = engine;
    let shared = match model {
        ModelKind::MobileNetV2 => Some("mobilenet_v2_torchvision_imagenet1k.safetensors"),
        ModelKind::EfficientNetLite0 => Some("efficientnet_lite0_imagenet1k.safetensors"),
        ModelKind::ResNet50 | ModelKind::Vgg16 => None,
    };
    if let Some(file) = shared {
        let path = shared_dir().join("models").join(file);
        config.weights = path.is_file().then_some(path);
        if config.weights.is_some()
            || wtb_embed::find_local_weights(model, &wtb_embed::weight_search_dirs()).is_some()
        {
            return Ok((Embedder::load(&config)?, "real".to_string()));
        }
    }
    Ok((
        Embedder::with_synthetic_weights(&config)?,
        "synthetic".to_string(),
    ))
}

/// A deterministic preprocessed batch (values in the normalised range).
fn input(batch: usize, side: usize) -> anyhow::Result<Tensor> {
    let n = batch * 3 * side * side;
    let mut state = 0x2545f4914f6cdd1du64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / 16777216.0 * 4.0 - 2.0
        })
        .collect();
    Ok(Tensor::from_vec(
        values,
        (batch, 3, side, side),
        &Device::Cpu,
    )?)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per call of `embedder` on `x`, each call forced to finish.
fn time_calls(embedder: &Embedder, x: &Tensor, calls: usize) -> anyhow::Result<Vec<f64>> {
    (0..calls)
        .map(|_| {
            let t = Instant::now();
            embedder.embed_tensor(x)?.to_vec2::<f32>()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Fast engine against stock candle in alternating turns (see the module docs).
fn paired(options: &Options, turns: usize) -> anyhow::Result<()> {
    println!("| model | weights | batch | stock candle img/s | fast img/s | speed-up | paired speed-up | turns |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for &model in options.models.iter().filter(|&&m| m != ModelKind::Vgg16) {
        let (candle, weights) = embedder(model, options.device, Engine::Candle)?;
        let (fast, _) = embedder(model, options.device, Engine::Fast)?;
        for &batch in &options.batches {
            let x = input(batch, 224)?;
            time_calls(&candle, &x, 1)?; // warm-up
            time_calls(&fast, &x, 2)?;
            let (mut candle_times, mut fast_times, mut ratios) = (vec![], vec![], vec![]);
            for _ in 0..turns.max(1) {
                let slow = time_calls(&candle, &x, 1)?[0];
                // About as long on the fast engine: its first call says how many fit.
                let first = time_calls(&fast, &x, 1)?[0];
                let more = ((slow / first.max(1e-9)) as usize).clamp(1, 200);
                let mut quick = time_calls(&fast, &x, more)?;
                quick.push(first);
                let quick_median = median(&quick);
                ratios.push(slow / quick_median);
                candle_times.push(slow);
                fast_times.extend(quick);
            }
            let candle_rate = batch as f64 / median(&candle_times);
            let fast_rate = batch as f64 / median(&fast_times);
            let paired_speedup = median(&ratios);
            println!(
                "| {} | {weights} | {batch} | {candle_rate:.1} | {fast_rate:.1} | {:.1}x | {paired_speedup:.1}x | {} |",
                model.name(),
                fast_rate / candle_rate,
                ratios.len()
            );
            results.push(serde_json::json!({
                "model": model.name(), "weights": weights, "batch": batch,
                "candle_images_per_s": candle_rate, "fast_images_per_s": fast_rate,
                "speedup": fast_rate / candle_rate, "paired_speedup": paired_speedup,
                "turns": ratios.len(),
            }));
        }
    }
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// Decoding included against the model alone, in alternating turns (see the module docs).
fn pipeline(options: &Options, dir: &std::path::Path, turns: usize) -> anyhow::Result<()> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "jpg"))
        .collect();
    photos.sort();
    if photos.is_empty() {
        bail!("no .jpg photos in {}", dir.display());
    }
    let (embedder, weights) = embedder(ModelKind::MobileNetV2, options.device, Engine::Fast)?;
    let jobs: Vec<wtb_embed::ImageJob> = photos
        .iter()
        .map(|path| wtb_embed::ImageJob {
            id: path.display().to_string(),
            path: path.clone(),
            crop: None,
            flip: false,
            trim: false,
        })
        .collect();
    const PER_TURN: usize = 320;
    let x = input(32, 224)?;
    time_calls(&embedder, &x, 2)?; // warm-up
    let (mut with_decoding, mut model_only, mut ratios) = (vec![], vec![], vec![]);
    let mut next = 0;
    for _ in 0..turns.max(1) {
        let slice: Vec<_> = (0..PER_TURN)
            .map(|i| jobs[(next + i) % jobs.len()].clone())
            .collect();
        next = (next + PER_TURN) % jobs.len();
        let t = Instant::now();
        let outcome = embedder.embed_jobs(&slice, 32, &|_, _| {})?;
        let seconds = t.elapsed().as_secs_f64();
        let pipeline_rate = outcome.ids.len() as f64 / seconds;
        let calls = ((seconds / time_calls(&embedder, &x, 1)?[0]) as usize).clamp(1, 100);
        let model_rate = 32.0 / median(&time_calls(&embedder, &x, calls)?);
        with_decoding.push(pipeline_rate);
        model_only.push(model_rate);
        ratios.push(pipeline_rate / model_rate);
    }
    println!(
        "pipeline ({} photos in {}, {weights} MobileNetV2 weights, batch 32, {} turns of {PER_TURN}): \
         decoding included {:.1} img/s, model alone {:.1} img/s, ratio {:.2}, paired {:.2}",
        photos.len(),
        dir.display(),
        ratios.len(),
        median(&with_decoding),
        median(&model_only),
        median(&with_decoding) / median(&model_only),
        median(&ratios)
    );
    if let Some(path) = &options.json {
        let row = serde_json::json!({
            "photos": photos.len(), "turns": ratios.len(),
            "decoding_included_images_per_s": median(&with_decoding),
            "model_only_images_per_s": median(&model_only),
            "paired_ratio": median(&ratios),
        });
        std::fs::write(path, serde_json::to_string_pretty(&row)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "embed_speed: device {}, {threads} CPU threads, forward pass only (224x224 input)",
        options.device
    );
    if let Some(turns) = options.paired {
        return paired(&options, turns);
    }
    if let Some((dir, turns)) = &options.pipeline {
        return pipeline(&options, dir, *turns);
    }
    println!("| model | engine | weights | batch | images/s | ms/image | runs |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let mut results = Vec::new();
    let runs = options.models.iter().flat_map(|&model| {
        options
            .engines
            .iter()
            .filter(move |&&engine| !(model == ModelKind::Vgg16 && engine == Engine::Fast))
            .map(move |&engine| (model, engine))
    });
    for (model, engine) in runs {
        let (embedder, weights) = embedder(model, options.device, engine)?;
        let reference = if options.parity {
            Some(self::embedder(model, DeviceChoice::Cpu, Engine::Candle)?.0)
        } else {
            None
        };
        for &batch in &options.batches {
            let x = input(batch, 224)?;
            let first = embedder.embed_tensor(&x)?.to_vec2::<f32>()?; // also the warm-up
            if let Some(reference) = &reference {
                let want = reference.embed_tensor(&x)?.to_vec2::<f32>()?;
                let (mut diff, mut norm) = (0f64, 0f64);
                for (a, b) in first.iter().flatten().zip(want.iter().flatten()) {
                    diff += ((a - b) as f64).powi(2);
                    norm += (*b as f64).powi(2);
                }
                let relative = (diff / norm).sqrt();
                println!(
                    "parity {} batch {batch}: {} vs cpu relative L2 {relative:.2e}",
                    model.name(),
                    options.device
                );
                if relative.is_nan() || relative > 1e-3 {
                    bail!(
                        "{} on {}: relative L2 {relative:.2e} > 1e-3",
                        model.name(),
                        options.device
                    );
                }
            }
            let mut times = Vec::new();
            let started = Instant::now();
            while times.len() < 2 || started.elapsed().as_secs_f64() < options.min_seconds {
                let t = Instant::now();
                let out = embedder.embed_tensor(&x)?;
                out.to_vec2::<f32>()?; // forces the result
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let per_second = batch as f64 / median;
            println!(
                "| {} | {engine} | {weights} | {batch} | {per_second:.1} | {:.2} | {} |",
                model.name(),
                1000.0 * median / batch as f64,
                times.len()
            );
            results.push(serde_json::json!({
                "model": model.name(), "engine": engine.name(), "weights": weights, "batch": batch,
                "images_per_s": per_second, "median_s": median, "runs": times.len(),
            }));
        }
    }
    if let Some(path) = options.json {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

//! Speed of the fast CPU plans (wtb-kernels), measured against references in the same run:
//!
//! 1. the machine's f32 GEMM floor (`gemm` crate, 1024³, all rayon threads);
//! 2. MobileNetV2 fast plan vs ONNX Runtime on the same weights, interleaved, `--passes`
//!    passes, batch 1 and 32, with achieved GFLOP/s (0.599 GFLOP per image);
//! 3. each fast plan vs the stock candle path (same weights, same process, alternating turns,
//!    with the paired speed-up: the median over turns of each turn's ratio), batch 1 and 8;
//! 4. with `--profile`: time per layer type of both paths.
//!
//! Run it through `benches/kernels_vs_onnx.sh`, which builds the ONNX model and sets the
//! priority. Options: `--passes N` (3), `--onnx FILE` + `--python EXE` (skip ORT without),
//! `--ort-threads N` (rayon's thread count), `--quick`, `--profile`, `--skip-stock`,
//! `--ab-gemm ROUNDS` / `--ab-fuse ROUNDS` (A/B of one optimisation, nothing else runs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use wtb_kernels::{Plan, Reference};

struct Args {
    passes: usize,
    onnx: Option<PathBuf>,
    python: String,
    ort_threads: usize,
    quick: bool,
    profile: bool,
    skip_stock: bool,
    ab: Option<(String, usize)>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        passes: 3,
        onnx: None,
        python: "python3".into(),
        ort_threads: rayon::current_num_threads(),
        quick: false,
        profile: false,
        skip_stock: false,
        ab: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |what: &str| it.next().with_context(|| format!("{what} needs a value"));
        match arg.as_str() {
            "--passes" => a.passes = value("--passes")?.parse()?,
            "--onnx" => a.onnx = Some(value("--onnx")?.into()),
            "--python" => a.python = value("--python")?,
            "--ort-threads" => a.ort_threads = value("--ort-threads")?.parse()?,
            "--quick" => a.quick = true,
            "--profile" => a.profile = true,
            "--skip-stock" => a.skip_stock = true,
            "--ab-gemm" => a.ab = Some(("gemm".into(), value("--ab-gemm")?.parse()?)),
            "--ab-fuse" => a.ab = Some(("fuse".into(), value("--ab-fuse")?.parse()?)),
            "--ab-gemm-resnet" => {
                a.ab = Some(("gemm-resnet".into(), value("--ab-gemm-resnet")?.parse()?))
            }
            "--bench" => {} // passed by `cargo bench`
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

use wtb_testdata::shared_dir;

/// Deterministic pseudo-normalised input `[n, 3, h, w]` in about [-2, 2].
fn input(n: usize, h: usize, w: usize) -> Result<Tensor> {
    let mut state = 0x2545f4914f6cdd1du64;
    let v: Vec<f32> = (0..n * 3 * h * w)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / 16777216.0) * 4.0 - 2.0
        })
        .collect();
    Ok(Tensor::from_vec(v, (n, 3, h, w), &Device::Cpu)?)
}

/// Median and best seconds per call of `f` over `runs` timed calls after `warmup`.
fn time<F: FnMut() -> Result<()>>(warmup: usize, runs: usize, mut f: F) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0]))
}

fn gemm_floor() -> Result<f64> {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let (median, _) = time(2, 10, || {
        // SAFETY: all three buffers hold n×n values, row-major.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        };
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / median / 1e9)
}

/// The plan's own GEMM (`pointwise_conv`, AVX-512 micro-kernel where present) at 1024³.
fn own_gemm_rate() -> Result<f64> {
    use wtb_kernels::kernels::{pointwise_conv, Activation, PackedWeights};
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let w = PackedWeights::new(&vec![0.5f32; n * n], n, n)?;
    let bias = vec![0.0f32; n];
    let mut c = vec![0.0f32; n * n];
    let (median, _) = time(2, 10, || {
        pointwise_conv(&a, n, n, &w, &bias, Activation::Identity, false, &mut c)?;
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / median / 1e9)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// ONNX Runtime in a persistent Python worker (`kernels_ort_worker.py --serve`).
struct OrtWorker {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl OrtWorker {
    fn start(args: &Args, onnx: &Path) -> Result<Self> {
        use std::process::Stdio;
        let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels_ort_worker.py");
        let mut child = Command::new(&args.python)
            .arg(worker)
            .arg(onnx)
            .arg("--serve")
            .arg(args.ort_threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {worker}", args.python))?;
        let input = child.stdin.take().context("worker stdin")?;
        let output = std::io::BufReader::new(child.stdout.take().context("worker stdout")?);
        Ok(Self {
            child,
            input,
            output,
        })
    }

    /// Seconds of each of `runs` timed ORT calls at `batch`.
    fn times(&mut self, batch: usize, runs: usize) -> Result<Vec<f64>> {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{batch} {runs}").context("writing to the ORT worker")?;
        self.input.flush()?;
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            bail!("the ORT worker exited (see its error above)");
        }
        let v: serde_json::Value = serde_json::from_str(&line).context("ORT worker output")?;
        Ok(v["times"]
            .as_array()
            .context("no times")?
            .iter()
            .filter_map(|t| t.as_f64())
            .collect())
    }
}

impl Drop for OrtWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load_vb(path: &Path) -> Result<VarBuilder<'static>> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

/// ResNet50 with random weights on the tensor names of shared/golden/names_shapes.txt
/// (no real ResNet weights exist here; speed does not depend on the values).
fn resnet50_vb(names_shapes: &Path) -> Result<VarBuilder<'static>> {
    let text = std::fs::read_to_string(names_shapes)
        .with_context(|| format!("reading {}", names_shapes.display()))?;
    let mut tensors = HashMap::new();
    let mut in_resnet = false;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_resnet = h.starts_with("resnet50");
            continue;
        }
        if !in_resnet
            || line.starts_with('#')
            || line.trim().is_empty()
            || line.contains("NOT_GENERATED")
        {
            continue;
        }
        let mut cols = line.split('\t');
        let name = cols.next().context("name")?;
        let shape: Vec<usize> = cols
            .next()
            .context("shape")?
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?;
        let numel: usize = shape.iter().product();
        // Deterministic values; the speed does not depend on them.
        let t = if name.ends_with("running_var") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
            let scale = if shape.len() > 1 {
                (3.0 / fan_in).sqrt()
            } else {
                0.1
            };
            let mut state = 0x9e3779b97f4a7c15u64 ^ numel as u64 ^ (tensors.len() as u64) << 32;
            let v: Vec<f32> = (0..numel)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (((state >> 40) as f64 / 16777216.0 * 2.0 - 1.0) * scale) as f32
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        };
        tensors.insert(name.to_string(), t);
    }
    Ok(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

/// `--ab-gemm ROUNDS` / `--ab-fuse ROUNDS`: MobileNetV2 with a change and without it,
/// interleaved in one process: the own AVX-512 GEMM vs the `gemm`-crate path, or fused
/// inverted-residual blocks vs layer by layer. Median wall time per call.
fn ab(mnv2_path: &Path, resnet_names: &Path, what: &str, rounds: usize, quick: bool) -> Result<()> {
    use wtb_kernels::{fuse_blocks, kernels::force_portable_gemm};
    let build = || -> Result<Plan> {
        Ok(match what {
            "gemm-resnet" => Plan::resnet50(resnet50_vb(resnet_names)?)?,
            _ => Plan::mobilenet_v2(load_vb(mnv2_path)?)?,
        })
    };
    let with = build()?;
    fuse_blocks(what != "fuse");
    let without = build()?;
    fuse_blocks(true);
    let what = if what == "gemm-resnet" { "gemm" } else { what };
    let (on, off) = match what {
        "gemm" => ("own AVX-512 GEMM", "gemm crate"),
        _ => ("fused blocks", "layer by layer"),
    };
    println!("## A/B: {on} vs {off} (median ms per call)\n");
    println!("| round | batch | {on} | {off} | ratio |");
    println!("|---|---|---|---|---|");
    for round in 1..=rounds {
        for batch in [1usize, 32] {
            let x = input(batch, 224, 224)?;
            let runs = match (batch, quick) {
                (1, false) => 40,
                (1, true) => 15,
                (_, false) => 5,
                (_, true) => 2,
            };
            let timed = |plan: &Plan, portable: bool| -> Result<f64> {
                force_portable_gemm(portable);
                let (median, _) = time(2, runs, || {
                    plan.features(&x)?;
                    Ok(())
                })?;
                force_portable_gemm(false);
                Ok(median * 1e3)
            };
            let (a, b) = if what == "gemm" {
                (timed(&with, false)?, timed(&with, true)?)
            } else {
                (timed(&with, false)?, timed(&without, false)?)
            };
            println!("| {round} | {batch} | {a:.2} | {b:.2} | {:.2}x |", b / a);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let shared = shared_dir();
    let threads = rayon::current_num_threads();
    let runs = |batch: usize| -> usize {
        let base = if batch >= 32 { 5 } else { 30 };
        if args.quick {
            base / 3 + 1
        } else {
            base
        }
    };
    println!("# wtb-kernels speed");
    println!(
        "rayon threads (fast plan and stock candle): {threads}; ORT intra_op threads: {}",
        args.ort_threads
    );
    let floor = gemm_floor()?;
    println!("f32 GEMM floor (gemm crate 0.19, 1024^3, {threads} threads): {floor:.1} GFLOP/s");
    println!(
        "own GEMM (wtb-kernels pointwise_conv, 1024^3, {threads} threads): {:.1} GFLOP/s\n",
        own_gemm_rate()?
    );

    let mnv2_path = shared.join("models/mobilenet_v2_torchvision_imagenet1k.safetensors");
    let mnv2 = Plan::mobilenet_v2(load_vb(&mnv2_path)?)?;
    let gflop = 2.0 * mnv2.macs_per_image(224, 224).context("macs")? as f64 / 1e9;
    println!("MobileNetV2 features: {gflop:.4} GFLOP per image (224x224)\n");

    if let Some((what, rounds)) = &args.ab {
        return ab(
            &mnv2_path,
            &shared.join("golden/names_shapes.txt"),
            what,
            *rounds,
            args.quick,
        );
    }

    // 1. MobileNetV2 fast plan vs ONNX Runtime: per pass and batch, short turns of each
    //    alternate (ORT in a persistent worker), so that a drift of the machine's speed hits
    //    both sides alike; "paired" is the median over turns of the two rates' ratio.
    println!("## MobileNetV2: fast plan vs ONNX Runtime (median img/s per pass)\n");
    println!(
        "| pass | batch | fast img/s | fast GFLOP/s | ORT img/s | ORT GFLOP/s | fast / ORT | paired |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ort = match &args.onnx {
        Some(onnx) => Some(OrtWorker::start(&args, onnx)?),
        None => None,
    };
    for pass in 1..=args.passes {
        for batch in [1usize, 32] {
            let x = input(batch, 224, 224)?;
            let (turns, per_turn) = match (batch, args.quick) {
                (1, false) => (10, 4),
                (1, true) => (4, 4),
                (_, false) => (5, 1),
                (_, true) => (2, 1),
            };
            mnv2.features(&x)?;
            let (mut fast_times, mut ort_times, mut paired) = (Vec::new(), Vec::new(), Vec::new());
            // Both runtimes' idle threads spin for a while after a call: a pause before each
            // turn keeps one side's spinning off the other's timed calls. After a pause this
            // machine runs slow for a while (both sides alike), so each turn starts with one
            // untimed call on each side: the figures are throughput while busy.
            let settle = std::time::Duration::from_millis(40);
            for _ in 0..turns {
                std::thread::sleep(settle);
                mnv2.features(&x)?;
                let mut turn = Vec::new();
                for _ in 0..per_turn {
                    let t = Instant::now();
                    mnv2.features(&x)?;
                    turn.push(t.elapsed().as_secs_f64());
                }
                if let Some(worker) = ort.as_mut() {
                    std::thread::sleep(settle);
                    let theirs = worker.times(batch, per_turn)?;
                    paired.push(median(&theirs) / median(&turn));
                    ort_times.extend(theirs);
                }
                fast_times.extend(turn);
            }
            let fast = batch as f64 / median(&fast_times);
            let (ort_s, ort_g, ratio, pair) = if ort_times.is_empty() {
                ("-".into(), "-".into(), "-".into(), "-".into())
            } else {
                let o = batch as f64 / median(&ort_times);
                (
                    format!("{o:.1}"),
                    format!("{:.1}", o * gflop),
                    format!("{:.2}x", fast / o),
                    format!("{:.2}x", median(&paired)),
                )
            };
            println!(
                "| {pass} | {batch} | {fast:.1} | {:.1} | {ort_s} | {ort_g} | {ratio} | {pair} |",
                fast * gflop
            );
        }
    }
    drop(ort);

    // 2. Fast plans vs the stock candle path.
    let effl0_path = shared.join("models/efficientnet_lite0_imagenet1k.safetensors");
    let resnet_names = shared.join("golden/names_shapes.txt");
    type Builder = fn(VarBuilder<'static>) -> wtb_kernels::Result<Plan>;
    type RefBuilder = fn(VarBuilder<'static>) -> wtb_kernels::Result<Reference>;
    let models: Vec<(&str, VarBuilder<'static>, Builder, RefBuilder)> = vec![
        (
            "mobilenet_v2",
            load_vb(&mnv2_path)?,
            Plan::mobilenet_v2,
            Reference::mobilenet_v2,
        ),
        (
            "efficientnet_lite0",
            load_vb(&effl0_path)?,
            Plan::efficientnet_lite0,
            Reference::efficientnet_lite0,
        ),
        (
            "resnet50",
            resnet50_vb(&resnet_names)?,
            Plan::resnet50,
            Reference::resnet50,
        ),
    ];
    if !args.skip_stock {
        println!(
            "\n## Fast plan vs stock candle (same weights, same process, alternating turns, median img/s)\n"
        );
        println!("| model | batch | stock candle img/s | fast img/s | speed-up | paired | fast GFLOP/s |");
        println!("|---|---|---|---|---|---|---|");
        let turns = if args.quick { 2 } else { 5 };
        for (name, vb, plan_of, reference_of) in &models {
            let plan = plan_of(vb.clone())?;
            let reference = reference_of(vb.clone())?;
            let g = 2.0 * plan.macs_per_image(224, 224).context("macs")? as f64 / 1e9;
            for batch in [1usize, 8] {
                let x = input(batch, 224, 224)?;
                reference.features(&x)?;
                plan.features(&x)?;
                // Turns of one stock call, then the fast plan for about as long, so that a
                // drift of the machine's speed hits both sides alike.
                let (mut stock_times, mut fast_times, mut paired) = (vec![], vec![], vec![]);
                for _ in 0..turns {
                    let (stock, _) = time(0, 1, || {
                        reference.features(&x)?;
                        Ok(())
                    })?;
                    let (first, _) = time(0, 1, || {
                        plan.features(&x)?;
                        Ok(())
                    })?;
                    let more = ((stock / first) as usize).clamp(1, runs(batch));
                    let (fast, _) = time(0, more, || {
                        plan.features(&x)?;
                        Ok(())
                    })?;
                    paired.push(stock / fast);
                    stock_times.push(stock);
                    fast_times.push(fast);
                }
                let (s, f) = (
                    batch as f64 / median(&stock_times),
                    batch as f64 / median(&fast_times),
                );
                println!(
                    "| {name} | {batch} | {s:.1} | {f:.1} | {:.1}x | {:.1}x | {:.1} |",
                    f / s,
                    median(&paired),
                    f * g
                );
            }
        }
    }

    // 3. Time per layer type.
    if args.profile {
        println!("\n## Profiles (time per layer type)\n");
        for (_, vb, plan_of, reference_of) in &models {
            let plan = plan_of(vb.clone())?;
            let reference = reference_of(vb.clone())?;
            for batch in [1usize, 32] {
                let x = input(batch, 224, 224)?;
                plan.features(&x)?;
                println!(
                    "batch {batch}:\n{}",
                    plan.profile(&x, if batch == 1 { 20 } else { 3 })?
                );
            }
            let x = input(8, 224, 224)?;
            println!("batch 8:\n{}", reference.profile(&x, 1)?);
        }
    }
    Ok(())
}

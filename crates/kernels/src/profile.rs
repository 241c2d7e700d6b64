//! Time per layer type, for the fast plan and the plain candle reference alike.

use std::fmt;
use std::time::{Duration, Instant};

/// A kind of work a forward pass spends time on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Dense k×k convolutions (the stem, ResNet 3×3 and 7×7).
    Dense,
    /// 3×3 stride-1 convolutions run by Winograd F(4×4, 3×3) or F(2×2, 3×3).
    Winograd,
    /// 1×1 stride-1 convolutions.
    Pointwise,
    /// 1×1 convolutions with stride (ResNet downsample).
    StridedPointwise,
    /// Depthwise convolutions.
    Depthwise,
    /// Inverted-residual blocks run fused (1×1 expand, depthwise, 1×1 project together).
    FusedBlock,
    /// BatchNorm (folded away in the fast plan).
    BatchNorm,
    /// Activations (fused in the fast plan).
    Activation,
    /// Residual additions (fused in the fast plan).
    ResidualAdd,
    /// Max pooling (and its padding).
    MaxPool,
    /// Global average pooling.
    GlobalPool,
    /// The fully connected classifier.
    Classifier,
    /// Layout changes (NCHW → NHWC of the input, padding copies).
    Layout,
    /// Allocation or lookup of the activation buffers.
    Alloc,
}

impl Stage {
    /// Human-readable name.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Dense => "dense conv (stem, 3x3, 7x7)",
            Stage::Winograd => "3x3 conv, Winograd",
            Stage::Pointwise => "1x1 conv",
            Stage::StridedPointwise => "1x1 conv, strided",
            Stage::Depthwise => "depthwise conv",
            Stage::FusedBlock => "fused block (1x1+dw+1x1)",
            Stage::BatchNorm => "batch norm",
            Stage::Activation => "activation",
            Stage::ResidualAdd => "residual add",
            Stage::MaxPool => "max pool",
            Stage::GlobalPool => "global avg pool",
            Stage::Classifier => "classifier",
            Stage::Layout => "layout change",
            Stage::Alloc => "buffers / allocation",
        }
    }
}

/// How many layers the report lists.
const SLOWEST_LAYERS: usize = 16;

/// Accumulated time per [`Stage`] over `runs` forward passes.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Network name.
    pub network: String,
    /// Which path was profiled.
    pub path: String,
    /// Completed forward passes.
    pub runs: usize,
    /// `(stage, total time, calls)`, in first-seen order.
    pub stages: Vec<(Stage, Duration, usize)>,
    /// True when a batch ran several images at once: stage times are then summed over
    /// the threads (CPU time), not wall time.
    pub images_in_parallel: bool,
    /// Time per layer of the fast plan, in plan order (empty for the reference path).
    pub layers: Vec<LayerTime>,
    enabled: bool,
}

/// The accumulated time of one layer (one step of a plan).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTime {
    /// The step's position in the plan.
    pub step: usize,
    /// What it is: kind, channels, kernel, stride and output size.
    pub label: String,
    /// Multiply-adds per call.
    pub macs: u64,
    /// Total time over all calls.
    pub time: Duration,
    /// Calls.
    pub calls: usize,
}

impl Profile {
    pub(crate) fn enabled(network: &str, path: &str) -> Self {
        Self {
            network: network.to_string(),
            path: path.to_string(),
            runs: 0,
            stages: Vec::new(),
            images_in_parallel: false,
            layers: Vec::new(),
            enabled: true,
        }
    }

    pub(crate) fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::enabled("", "")
        }
    }

    /// Adds the time since `start` to `stage`.
    pub(crate) fn add(&mut self, stage: Stage, start: Instant) {
        if !self.enabled {
            return;
        }
        self.add_duration(stage, start.elapsed(), 1);
    }

    /// Adds the time since `start` to `stage` and to layer `step`, which `describe` names
    /// (with its multiply-adds per call) the first time.
    pub(crate) fn add_layer(
        &mut self,
        stage: Stage,
        step: usize,
        start: Instant,
        describe: impl FnOnce() -> (String, u64),
    ) {
        if !self.enabled {
            return;
        }
        let d = start.elapsed();
        self.add_duration(stage, d, 1);
        match self.layers.iter_mut().find(|l| l.step == step) {
            Some(layer) => {
                layer.time += d;
                layer.calls += 1;
            }
            None => {
                let (label, macs) = describe();
                self.layers.push(LayerTime {
                    step,
                    label,
                    macs,
                    time: d,
                    calls: 1,
                });
            }
        }
    }

    fn add_duration(&mut self, stage: Stage, d: Duration, calls: usize) {
        match self.stages.iter_mut().find(|(s, _, _)| *s == stage) {
            Some(entry) => {
                entry.1 += d;
                entry.2 += calls;
            }
            None => self.stages.push((stage, d, calls)),
        }
    }

    /// An empty profile for one image of a batch, merged back with [`Profile::merge`].
    pub(crate) fn child(&self) -> Self {
        Self {
            stages: Vec::new(),
            layers: Vec::new(),
            runs: 0,
            images_in_parallel: false,
            ..self.clone()
        }
    }

    /// Adds another profile's stage times (an image run on another thread).
    pub(crate) fn merge(&mut self, other: &Profile) {
        if !self.enabled {
            return;
        }
        self.images_in_parallel = true;
        for &(stage, d, calls) in &other.stages {
            self.add_duration(stage, d, calls);
        }
        for layer in &other.layers {
            match self.layers.iter_mut().find(|l| l.step == layer.step) {
                Some(mine) => {
                    mine.time += layer.time;
                    mine.calls += layer.calls;
                }
                None => self.layers.push(layer.clone()),
            }
        }
        self.layers.sort_by_key(|l| l.step);
    }

    /// Total time of all stages divided by the number of runs.
    pub fn per_run(&self) -> Duration {
        let total: Duration = self.stages.iter().map(|(_, d, _)| *d).sum();
        total / self.runs.max(1) as u32
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs = self.runs.max(1) as f64;
        let total: f64 = self.stages.iter().map(|(_, d, _)| d.as_secs_f64()).sum();
        writeln!(
            f,
            "{} / {}: {:.2} ms per run over {} runs",
            self.network,
            self.path,
            total * 1e3 / runs,
            self.runs
        )?;
        if self.images_in_parallel {
            writeln!(
                f,
                "  (images ran in parallel: times are summed over threads)"
            )?;
        }
        writeln!(
            f,
            "  {:<30} {:>10} {:>7} {:>8}",
            "stage", "ms/run", "share", "calls/run"
        )?;
        let mut rows = self.stages.clone();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (stage, d, calls) in rows {
            let s = d.as_secs_f64();
            writeln!(
                f,
                "  {:<30} {:>10.3} {:>6.1}% {:>8.1}",
                stage.label(),
                s * 1e3 / runs,
                100.0 * s / total.max(f64::MIN_POSITIVE),
                calls as f64 / runs
            )?;
        }
        if !self.layers.is_empty() {
            writeln!(
                f,
                "  slowest layers:\n  {:>4} {:<40} {:>8} {:>6} {:>8}",
                "step", "layer", "ms/run", "share", "GFLOP/s"
            )?;
            let mut layers: Vec<&LayerTime> = self.layers.iter().collect();
            layers.sort_by_key(|l| std::cmp::Reverse(l.time));
            for layer in layers.iter().take(SLOWEST_LAYERS) {
                let s = layer.time.as_secs_f64();
                writeln!(
                    f,
                    "  {:>4} {:<40} {:>8.3} {:>5.1}% {:>8.1}",
                    layer.step,
                    layer.label,
                    s * 1e3 / runs,
                    100.0 * s / total.max(f64::MIN_POSITIVE),
                    2.0 * layer.macs as f64 * layer.calls as f64 / s.max(f64::MIN_POSITIVE) / 1e9
                )?;
            }
        }
        Ok(())
    }
}

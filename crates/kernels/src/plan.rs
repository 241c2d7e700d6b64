//! The compiled inference plan: folded weights, a step list over reusable NHWC buffers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::arch::{self, Arch, ConvSpec, Node};
use crate::buffer::AlignedBuf;
use crate::error::{KernelError, Result};
use crate::fused;
use crate::kernels::{self, Activation, Nhwc, PackedWeights, Window};
use crate::profile::{Profile, Stage};
use crate::winograd::{self, WinogradWeights};

/// How a convolution runs, with its weights in that kernel's layout.
enum ConvKind {
    /// 1×1, stride 1: one GEMM over packed `[cin, cout]` weights.
    Pointwise(PackedWeights),
    /// One filter per channel: the direct kernel over `[k·k, c]` taps.
    Depthwise(Vec<f32>),
    /// Anything else: im2col + GEMM over packed `[k·k·cin, cout]` weights.
    Dense(PackedWeights),
    /// 3×3, stride 1: Winograd F(4×4, 3×3) or F(2×2, 3×3) where it beats im2col
    /// ([`winograd::worthwhile`]), else im2col over the packed weights.
    Winograd(PackedWeights, WinogradWeights),
}

/// A convolution with BatchNorm folded in.
struct ConvLayer {
    spec: ConvSpec,
    kind: ConvKind,
    bias: Vec<f32>,
}

/// What a step does with the residual it adds.
#[derive(Clone, Copy, Debug)]
enum Residual {
    None,
    /// The destination buffer already holds the residual (it dies here).
    InPlace,
    /// Copy the residual from this buffer into the destination first.
    Copy(usize),
}

/// One step of the plan over the nodes `node..=last` of the architecture (`src` and `dst`
/// are buffer indices).
#[derive(Clone, Copy, Debug)]
enum Step {
    Conv {
        node: usize,
        layer: usize,
        src: usize,
        dst: usize,
        residual: Residual,
    },
    MaxPool {
        node: usize,
        src: usize,
        dst: usize,
    },
    /// An inverted-residual block (`[expand →] depthwise → project [+ residual]`) run in
    /// bands of rows by [`fused::inverted_residual`]; its intermediates get no buffer.
    Block {
        /// The first node (the expand, or the depthwise when there is none).
        node: usize,
        expand: Option<usize>,
        depthwise: usize,
        project: usize,
        src: usize,
        dst: usize,
        /// Buffer of the residual (never `dst`: bands of one image run in parallel).
        residual: Option<usize>,
    },
}

/// Buffers and shapes for one batch size and input size, reused by every call with them
/// (batch 1 for plans with fused blocks, which run one image per thread).
struct Workspace {
    /// Images, input height and width.
    key: (usize, usize, usize),
    buffers: Vec<AlignedBuf>,
    /// NHWC shape of each value.
    dims: Vec<Nhwc>,
    /// Window of each node.
    windows: Vec<Window>,
    /// Expanded and depthwise activations of the blocks that run layer by layer when one
    /// image is split across threads (see [`LAYERED_BELOW_ROWS`]).
    scratch: [Vec<f32>; 2],
}

/// Blocks whose output has fewer rows than this run layer by layer when one image is split
/// across threads: bands of so few rows would recompute too many shared expanded rows, and
/// their activations fit in cache anyway. (A batch runs every block fused, one image per
/// thread.)
const LAYERED_BELOW_ROWS: usize = 28;

/// What one image of a batch gives: its `finish` output and feature-map shape.
type ImageOutput = Result<(Vec<f32>, Nhwc)>;

/// A compiled CPU inference plan for one network.
///
/// Built once from the same `VarBuilder` weights as the candle model (same tensor names):
/// BatchNorm is folded into the convolution weights, bias/activation/residual are fused into
/// the producing kernel, activations are NHWC so that 1×1 convolutions are GEMMs, depthwise
/// convolutions run a direct vectorised kernel, and activation buffers are planned once per
/// input shape and reused.
pub struct Plan {
    arch: Arch,
    layers: Vec<ConvLayer>,
    /// `[cin, cout]` classifier weights and bias.
    head: Option<(PackedWeights, Vec<f32>)>,
    /// Buffer index of each value (value 0 = the NHWC copy of the input).
    value_buffer: Vec<usize>,
    buffer_count: usize,
    steps: Vec<Step>,
    /// Idle workspaces, one per image in flight at most.
    workspaces: Mutex<Vec<Workspace>>,
}

fn weight(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    let read = || -> candle_core::Result<Vec<f32>> {
        vb.get(shape, name)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
    };
    read().map_err(|source| KernelError::Weight {
        tensor: name.to_string(),
        source,
    })
}

/// Folds `bn` (and the conv bias) into `[cout, rest]` weights; returns the new bias.
fn fold(vb: &VarBuilder, spec: &ConvSpec, w: &mut [f32]) -> Result<Vec<f32>> {
    let cout = spec.cout;
    let conv_bias = match &spec.bias {
        Some(name) => weight(vb, &[cout], name)?,
        None => vec![0.0; cout],
    };
    let Some(bn) = &spec.bn else {
        return Ok(conv_bias);
    };
    let gamma = weight(vb, &[cout], &format!("{bn}.weight"))?;
    let beta = weight(vb, &[cout], &format!("{bn}.bias"))?;
    let mean = weight(vb, &[cout], &format!("{bn}.running_mean"))?;
    let var = weight(vb, &[cout], &format!("{bn}.running_var"))?;
    Ok(fold_batch_norm(
        w, &conv_bias, &gamma, &beta, &mean, &var, spec.eps,
    ))
}

/// Folds an inference-mode BatchNorm into the preceding convolution.
///
/// `weights` is `[cout, …]` (PyTorch order) and is scaled in place by
/// `γ / sqrt(var + eps)`; the returned bias is `β + (conv_bias − mean)·γ / sqrt(var + eps)`.
/// Arithmetic is in f64, rounded once to f32.
pub fn fold_batch_norm(
    weights: &mut [f32],
    conv_bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> Vec<f32> {
    let cout = gamma.len();
    let per_out = weights.len() / cout.max(1);
    (0..cout)
        .map(|o| {
            let scale = gamma[o] as f64 / (var[o] as f64 + eps).sqrt();
            for v in &mut weights[o * per_out..(o + 1) * per_out] {
                *v = (*v as f64 * scale) as f32;
            }
            (beta[o] as f64 + (conv_bias[o] as f64 - mean[o] as f64) * scale) as f32
        })
        .collect()
}

fn load_layer(vb: &VarBuilder, spec: &ConvSpec) -> Result<ConvLayer> {
    let k = spec.k;
    let (cin, cout) = (spec.cin, spec.cout);
    let per_filter = if spec.depthwise { 1 } else { cin };
    let mut w = weight(vb, &[cout, per_filter, k, k], &spec.weight)?;
    let bias = fold(vb, spec, &mut w)?;
    // PyTorch `[cout, cin, ky, kx]` → kernel layouts.
    let kind = if spec.depthwise {
        let mut taps = vec![0.0; k * k * cout];
        for c in 0..cout {
            for tap in 0..k * k {
                taps[tap * cout + c] = w[c * k * k + tap];
            }
        }
        ConvKind::Depthwise(taps)
    } else {
        let mut t = vec![0.0; k * k * cin * cout];
        for o in 0..cout {
            for i in 0..cin {
                for tap in 0..k * k {
                    t[(tap * cin + i) * cout + o] = w[(o * cin + i) * k * k + tap];
                }
            }
        }
        let packed = PackedWeights::new(&t, k * k * cin, cout)?;
        if k == 1 && spec.stride == 1 && spec.pad == 0 {
            ConvKind::Pointwise(packed)
        } else if k == 3 && spec.stride == 1 {
            ConvKind::Winograd(packed, WinogradWeights::new(&t, cin, cout)?)
        } else {
            ConvKind::Dense(packed)
        }
    };
    Ok(ConvLayer {
        spec: spec.clone(),
        kind,
        bias,
    })
}

/// Read when a plan is built; see [`fuse_blocks`].
static FUSE_BLOCKS: AtomicBool = AtomicBool::new(true);

/// Whether plans built from now on run inverted-residual blocks fused (the default) or
/// layer by layer. For A/B benchmarks and profiles that split the time by layer type.
#[doc(hidden)]
pub fn fuse_blocks(on: bool) {
    FUSE_BLOCKS.store(on, Ordering::Relaxed);
}

/// `Some((has_expand, node_count))` when the nodes from `i` on form an inverted-residual
/// block that can run fused: `[1×1 expand →] depthwise → 1×1 project`, each intermediate
/// read by the next node only, no residual before the project.
fn fusable_block(
    nodes: &[Node],
    layers: &[ConvLayer],
    layer_of_node: &[usize],
    last_use: &[usize],
    i: usize,
) -> Option<(bool, usize)> {
    let conv = |n: usize| match nodes.get(n) {
        Some(Node::Conv { src, residual, .. }) => {
            Some((&layers[layer_of_node[n]], *src, *residual))
        }
        _ => None,
    };
    // Node n's output (value n + 1) is read by node n + 1 alone, as its input.
    let chained = |n: usize| {
        last_use[n + 1] == n + 1
            && conv(n + 1).is_some_and(|(_, src, residual)| src == n + 1 && residual != Some(n + 1))
    };
    let pointwise = |l: &ConvLayer| matches!(l.kind, ConvKind::Pointwise(_));
    let depthwise = |l: &ConvLayer| matches!(l.kind, ConvKind::Depthwise(_));
    let (first, _, first_residual) = conv(i)?;
    if first_residual.is_some() || !FUSE_BLOCKS.load(Ordering::Relaxed) {
        return None;
    }
    if depthwise(first) {
        let (project, ..) = conv(i + 1)?;
        return (pointwise(project) && chained(i)).then_some((false, 2));
    }
    let (dw, _, dw_residual) = conv(i + 1)?;
    let (project, ..) = conv(i + 2)?;
    (pointwise(first)
        && depthwise(dw)
        && dw_residual.is_none()
        && pointwise(project)
        && chained(i)
        && chained(i + 1))
    .then_some((true, 3))
}

/// An inverted-residual block run layer by layer, each kernel split across the threads.
/// `dw_dims` are the depthwise input and output shapes.
#[allow(clippy::too_many_arguments)]
fn layered_block(
    input: &[f32],
    dims: Nhwc,
    expand: Option<&fused::Pointwise>,
    dw: &fused::Depthwise,
    (dw_in, dw_out): (Nhwc, Nhwc),
    project: &fused::Pointwise,
    residual: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut [Vec<f32>; 2],
    profile: &mut Profile,
) -> Result<()> {
    let [expanded, depthwise] = scratch;
    let t = Instant::now();
    let dw_input = match expand {
        Some(e) => {
            let expanded = &mut expanded[..dw_in.len()];
            let rows = dims.h * dims.w;
            kernels::pointwise_conv(
                input, rows, dims.c, e.weights, e.bias, e.act, false, expanded,
            )?;
            profile.add(Stage::Pointwise, t);
            &*expanded
        }
        None => input,
    };
    let t = Instant::now();
    let depthwise = &mut depthwise[..dw_out.len()];
    kernels::depthwise_conv(dw_input, dw_in, dw.win, dw.taps, dw.bias, dw.act, depthwise)?;
    profile.add(Stage::Depthwise, t);
    let t = Instant::now();
    if let Some(r) = residual {
        out.copy_from_slice(r);
    }
    let rows = dw_out.h * dw_out.w;
    kernels::pointwise_conv(
        depthwise,
        rows,
        dw_out.c,
        project.weights,
        project.bias,
        project.act,
        residual.is_some(),
        out,
    )?;
    profile.add(Stage::Pointwise, t);
    Ok(())
}

/// Two distinct buffers, one to read and one to write.
fn split_pair(buffers: &mut [AlignedBuf], read: usize, write: usize) -> (&[f32], &mut [f32]) {
    debug_assert_ne!(read, write);
    if read < write {
        let (a, b) = buffers.split_at_mut(write);
        (&a[read], &mut b[0])
    } else {
        let (a, b) = buffers.split_at_mut(read);
        (&b[0], &mut a[write])
    }
}

impl Plan {
    /// torchvision MobileNetV2 1.0 (`features.*`, `classifier.1.*` if present).
    pub fn mobilenet_v2(vb: VarBuilder) -> Result<Self> {
        let head = vb.contains_tensor("classifier.1.weight");
        Self::build(arch::mobilenet_v2(head), vb)
    }

    /// EfficientNet-Lite0 in the lukemelas key layout (`_conv_stem`, `_blocks.i.*`, `_fc` if present).
    pub fn efficientnet_lite0(vb: VarBuilder) -> Result<Self> {
        let head = vb.contains_tensor("_fc.weight");
        Self::build(arch::efficientnet_lite0(head), vb)
    }

    /// torchvision ResNet50 (`conv1`, `layer1..4`, `fc` if present).
    pub fn resnet50(vb: VarBuilder) -> Result<Self> {
        let head = vb.contains_tensor("fc.weight");
        Self::build(arch::resnet50(head), vb)
    }

    fn build(arch: Arch, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut layer_of_node = Vec::new();
        for node in &arch.nodes {
            match node {
                Node::Conv { spec, .. } => {
                    layer_of_node.push(layers.len());
                    layers.push(load_layer(&vb, spec)?);
                }
                Node::MaxPool { .. } => layer_of_node.push(usize::MAX),
            }
        }
        let head = match &arch.head {
            Some(h) => {
                let w = weight(&vb, &[h.cout, h.cin], &h.weight)?;
                let b = weight(&vb, &[h.cout], &h.bias)?;
                let mut t = vec![0.0; h.cin * h.cout];
                for o in 0..h.cout {
                    for i in 0..h.cin {
                        t[i * h.cout + o] = w[o * h.cin + i];
                    }
                }
                Some((PackedWeights::new(&t, h.cin, h.cout)?, b))
            }
            None => None,
        };

        // Liveness: the last node reading each value; the feature map lives to the end.
        let values = arch.nodes.len() + 1;
        let mut last_use = vec![0usize; values];
        for (i, node) in arch.nodes.iter().enumerate() {
            for v in node.inputs() {
                last_use[v] = i;
            }
        }
        last_use[values - 1] = usize::MAX;

        // Greedy buffer assignment over groups of nodes (one node, or a fused block); a
        // residual that dies at a single convolution's add is accumulated in place.
        let mut holder: Vec<Option<usize>> = vec![Some(0)];
        let mut value_buffer = vec![usize::MAX; values];
        value_buffer[0] = 0;
        let mut steps = Vec::with_capacity(arch.nodes.len());
        let mut i = 0;
        while i < arch.nodes.len() {
            let block = fusable_block(&arch.nodes, &layers, &layer_of_node, &last_use, i);
            let last = block.map_or(i, |(_, len)| i + len - 1);
            let out = last + 1;
            let src = match &arch.nodes[i] {
                Node::Conv { src, .. } | Node::MaxPool { src, .. } => *src,
            };
            let residual = match &arch.nodes[last] {
                Node::Conv { residual, .. } => *residual,
                Node::MaxPool { .. } => None,
            };
            let dead_before = |v: usize| last_use[v] < i;
            let free = |holder: &mut Vec<Option<usize>>| {
                holder
                    .iter()
                    .position(|h| h.is_none_or(&dead_before))
                    .unwrap_or_else(|| {
                        holder.push(None);
                        holder.len() - 1
                    })
            };
            let src_buffer = value_buffer[src];
            let step = match (&arch.nodes[i], block) {
                (_, Some((expand, _))) => {
                    let dst = free(&mut holder);
                    let layer = |n: usize| layer_of_node[n];
                    Step::Block {
                        node: i,
                        expand: expand.then(|| layer(i)),
                        depthwise: layer(last - 1),
                        project: layer(last),
                        src: src_buffer,
                        dst,
                        residual: residual.map(|r| value_buffer[r]),
                    }
                }
                (Node::Conv { .. }, None) => {
                    let (dst, mode) = match residual {
                        Some(r) if last_use[r] == i && r != src => {
                            (value_buffer[r], Residual::InPlace)
                        }
                        _ => {
                            let mode = match residual {
                                Some(r) => Residual::Copy(value_buffer[r]),
                                None => Residual::None,
                            };
                            (free(&mut holder), mode)
                        }
                    };
                    Step::Conv {
                        node: i,
                        layer: layer_of_node[i],
                        src: src_buffer,
                        dst,
                        residual: mode,
                    }
                }
                (Node::MaxPool { .. }, None) => Step::MaxPool {
                    node: i,
                    src: src_buffer,
                    dst: free(&mut holder),
                },
            };
            let dst = match step {
                Step::Conv { dst, .. } | Step::MaxPool { dst, .. } | Step::Block { dst, .. } => dst,
            };
            holder[dst] = Some(out);
            value_buffer[out] = dst;
            steps.push(step);
            i = last + 1;
        }
        Ok(Self {
            buffer_count: holder.len(),
            arch,
            layers,
            head,
            value_buffer,
            steps,
            workspaces: Mutex::new(Vec::new()),
        })
    }

    /// The network's name (`mobilenet_v2`, `efficientnet_lite0`, `resnet50`).
    pub fn name(&self) -> &'static str {
        self.arch.name
    }

    /// Channels of the feature map (= length of the pooled feature vector).
    pub fn feature_dim(&self) -> usize {
        self.arch.feature_dim()
    }

    /// True when the weights held a classifier head, so [`Plan::logits`] works.
    pub fn has_classifier(&self) -> bool {
        self.head.is_some()
    }

    /// Multiply-accumulates per image of the feature extractor at `h × w` input
    /// (None when the input is too small for the network).
    pub fn macs_per_image(&self, h: usize, w: usize) -> Option<u64> {
        arch::count_macs(&self.arch, h, w)
    }

    /// The pre-pooling feature map, `[N, C, H, W]`, of a normalised `[N, 3, H, W]` input.
    pub fn feature_map(&self, input: &Tensor) -> Result<Tensor> {
        let (values, dims) = self.run(input, &mut Profile::disabled(), |last, dims, _| {
            let mut nchw = vec![0.0; dims.len()];
            kernels::nhwc_to_nchw(last, dims, &mut nchw)?;
            Ok(nchw)
        })?;
        let n = input.dim(0)?;
        Ok(Tensor::from_vec(
            values,
            (n, dims.c, dims.h, dims.w),
            &Device::Cpu,
        )?)
    }

    /// Globally average-pooled features, `[N, C]`, of a normalised `[N, 3, H, W]` input.
    pub fn features(&self, input: &Tensor) -> Result<Tensor> {
        let mut profile = Profile::disabled();
        self.pooled(input, &mut profile)
    }

    /// Classifier logits, `[N, classes]`; an error if the weights had no classifier.
    pub fn logits(&self, input: &Tensor) -> Result<Tensor> {
        self.logits_profiled(input, &mut Profile::disabled())
    }

    /// Runs `logits` (or `features` without a head) `runs` times and returns the time spent
    /// per stage. The first run also sizes the buffers; call once before to exclude that.
    pub fn profile(&self, input: &Tensor, runs: usize) -> Result<Profile> {
        let mut profile = Profile::enabled(self.name(), "fast plan");
        for _ in 0..runs {
            if self.head.is_some() {
                self.logits_profiled(input, &mut profile)?;
            } else {
                self.pooled(input, &mut profile)?;
            }
            profile.runs += 1;
        }
        Ok(profile)
    }

    fn pooled(&self, input: &Tensor, profile: &mut Profile) -> Result<Tensor> {
        let (values, dims) = self.run(input, profile, |last, dims, profile| {
            let t = Instant::now();
            let mut pooled = vec![0.0; dims.c];
            kernels::global_avg_pool(last, dims, &mut pooled)?;
            profile.add(Stage::GlobalPool, t);
            Ok(pooled)
        })?;
        Ok(Tensor::from_vec(
            values,
            (input.dim(0)?, dims.c),
            &Device::Cpu,
        )?)
    }

    fn logits_profiled(&self, input: &Tensor, profile: &mut Profile) -> Result<Tensor> {
        let Some((w, b)) = &self.head else {
            return Err(KernelError::NoClassifier(self.name()));
        };
        let pooled = self.pooled(input, profile)?;
        let t = Instant::now();
        let (n, c) = pooled.dims2()?;
        let x = pooled.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0.0; n * b.len()];
        kernels::pointwise_conv(&x, n, c, w, b, Activation::Identity, false, &mut out)?;
        let logits = Tensor::from_vec(out, (n, b.len()), &Device::Cpu)?;
        profile.add(Stage::Classifier, t);
        Ok(logits)
    }

    /// Runs every image through every step and `finish` on its feature map (NHWC, batch 1);
    /// returns the images' `finish` outputs, concatenated, and the feature map's shape.
    ///
    /// A batch runs one image per rayon thread, each on its own workspace, so that each
    /// core works through one image's activations in its own cache and no core waits for
    /// the other between layers; the kernels still split their work, so an idle thread
    /// (one image, or the last of an odd batch) helps the busy one.
    fn run(
        &self,
        input: &Tensor,
        profile: &mut Profile,
        finish: impl Fn(&[f32], Nhwc, &mut Profile) -> Result<Vec<f32>> + Sync,
    ) -> Result<(Vec<f32>, Nhwc)> {
        let (n, c, h, w) = input.dims4().map_err(|_| {
            KernelError::Input(format!(
                "expected [N, 3, H, W], got shape {:?}",
                input.dims()
            ))
        })?;
        if c != 3 {
            return Err(KernelError::Input(format!(
                "expected 3 channels (RGB), got shape {:?}",
                input.dims()
            )));
        }
        if !input.device().is_cpu() {
            return Err(KernelError::Input(
                "the fast plan runs on CPU tensors only".into(),
            ));
        }
        let t = Instant::now();
        let x = input.to_dtype(DType::F32)?.contiguous()?;
        profile.add(Stage::Layout, t);
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(KernelError::Input(
                "the fast plan runs on CPU tensors only".into(),
            ));
        };
        let data = cpu.as_slice::<f32>()?;
        let image_len = 3 * h * w;
        let start = layout.start_offset();
        let images = &data[start..start + n * image_len];
        // One image alone is split into bands across the threads; a batch runs an image per thread.
        let bands = if n == 1 {
            rayon::current_num_threads()
        } else {
            1
        };
        // `count` images through one workspace, then `finish` on each image's feature map.
        let run_images =
            |images: &[f32], count: usize, profile: &mut Profile| -> Result<(Vec<f32>, Nhwc)> {
                let t = Instant::now();
                let mut ws = self.take_workspace(count, h, w)?;
                profile.add(Stage::Alloc, t);
                let result = self
                    .execute(images, &mut ws, bands, profile)
                    .and_then(|()| {
                        let last = self.value_buffer[self.arch.nodes.len()];
                        let dims = ws.dims[self.arch.nodes.len()];
                        let one = Nhwc { n: 1, ..dims };
                        let mut values = Vec::new();
                        for image in ws.buffers[last][..dims.len()].chunks_exact(one.len().max(1)) {
                            values.extend(finish(image, one, profile)?);
                        }
                        Ok((values, one))
                    });
                if let Ok(mut idle) = self.workspaces.lock() {
                    idle.push(ws);
                }
                result
            };
        // Networks without fused blocks (ResNet50) as well: a core streams ResNet50's 100 MB
        // of weights per image at about 1 GB/s, far below memory bandwidth, while a whole
        // batch through each layer at once spills its activations (100 MB per layer at
        // batch 32) out of the caches. Measured at batch 16, interleaved: 41.3 against
        // 46.5 ms per image (mean of 8 turns each, paired median 1.11x).
        if n == 1 {
            // The whole pass runs on a pool thread: each kernel's parallel loop is then a
            // fork-join inside the pool, not an injection from outside that puts the calling
            // thread to sleep and wakes it again (two context switches per layer).
            return rayon::scope(|_| run_images(images, n, profile));
        }
        let outputs: Vec<(ImageOutput, Profile)> = images
            .par_chunks(image_len)
            .with_max_len(1)
            .map(|image| {
                let mut own = profile.child();
                (run_images(image, 1, &mut own), own)
            })
            .collect();
        let mut values = Vec::new();
        let mut dims = None;
        for (output, own) in outputs {
            profile.merge(&own);
            let (v, d) = output?;
            values.extend_from_slice(&v);
            dims = Some(d);
        }
        let dims = dims.ok_or_else(|| KernelError::Input("empty batch".into()))?;
        Ok((values, dims))
    }

    /// An idle workspace for an `h × w` image, or a new one.
    fn take_workspace(&self, n: usize, h: usize, w: usize) -> Result<Workspace> {
        let idle = self.workspaces.lock().ok().and_then(|mut idle| {
            // Workspaces of another input size will not be used again soon.
            idle.retain(|ws| ws.key == (n, h, w));
            idle.pop()
        });
        match idle {
            Some(ws) => Ok(ws),
            None => self.workspace_for(n, h, w),
        }
    }

    fn workspace_for(&self, n: usize, h: usize, w: usize) -> Result<Workspace> {
        let mut dims = vec![Nhwc { n, h, w, c: 3 }];
        let mut windows = Vec::with_capacity(self.arch.nodes.len());
        for node in &self.arch.nodes {
            let (window, c) = match node {
                Node::Conv { spec, src, .. } => {
                    let d = dims[*src];
                    (arch::window_for(spec, d.h, d.w), spec.cout)
                }
                Node::MaxPool {
                    src,
                    k,
                    stride,
                    pad,
                } => {
                    let d = dims[*src];
                    (Window::symmetric(d.h, d.w, *k, *stride, *pad), d.c)
                }
            };
            let window = window.map_err(|e| {
                KernelError::Input(format!(
                    "3x{h}x{w} is too small for {}: {e}",
                    self.arch.name
                ))
            })?;
            dims.push(Nhwc {
                n,
                h: window.out_h,
                w: window.out_w,
                c,
            });
            windows.push(window);
        }
        let mut sizes = vec![0usize; self.buffer_count];
        for (v, d) in dims.iter().enumerate() {
            // Values inside fused blocks have no buffer.
            if let Some(size) = sizes.get_mut(self.value_buffer[v]) {
                *size = (*size).max(d.len());
            }
        }
        let mut scratch = [0usize; 2];
        for step in &self.steps {
            if let Step::Block { node, expand, .. } = *step {
                let dw_node = node + usize::from(expand.is_some());
                if dims[dw_node + 2].h < LAYERED_BELOW_ROWS {
                    scratch[0] = scratch[0].max(dims[dw_node].len());
                    scratch[1] = scratch[1].max(dims[dw_node + 1].len());
                }
            }
        }
        Ok(Workspace {
            key: (n, h, w),
            buffers: sizes.into_iter().map(AlignedBuf::zeroed).collect(),
            dims,
            windows,
            scratch: scratch.map(|len| vec![0.0; len]),
        })
    }

    /// Runs the steps on NCHW images (`run` passes one at a time; the workspace fixes the count).
    /// `bands` > 1 runs each fused block in that many bands of rows in parallel.
    fn execute(
        &self,
        image: &[f32],
        ws: &mut Workspace,
        bands: usize,
        profile: &mut Profile,
    ) -> Result<()> {
        let t = Instant::now();
        let dims = ws.dims[0];
        kernels::nchw_to_nhwc(
            image,
            dims,
            &mut ws.buffers[self.value_buffer[0]][..dims.len()],
        )?;
        profile.add(Stage::Layout, t);
        let node_src = |node: usize| match &self.arch.nodes[node] {
            Node::Conv { src, .. } | Node::MaxPool { src, .. } => *src,
        };
        for (index, step) in self.steps.iter().enumerate() {
            let t = Instant::now();
            match *step {
                Step::Conv {
                    node,
                    layer,
                    src,
                    dst,
                    residual,
                } => {
                    let in_dims = ws.dims[node_src(node)];
                    let out_dims = ws.dims[node + 1];
                    let l = &self.layers[layer];
                    if let Residual::Copy(from) = residual {
                        let (r, d) = split_pair(&mut ws.buffers, from, dst);
                        d[..out_dims.len()].copy_from_slice(&r[..out_dims.len()]);
                    }
                    let accumulate = !matches!(residual, Residual::None);
                    let (x, y) = split_pair(&mut ws.buffers, src, dst);
                    let x = &x[..in_dims.len()];
                    let y = &mut y[..out_dims.len()];
                    let act = l.spec.act;
                    let win = ws.windows[node];
                    let stage = match &l.kind {
                        ConvKind::Pointwise(weights) => {
                            let rows = in_dims.n * in_dims.h * in_dims.w;
                            kernels::pointwise_conv(
                                x, rows, in_dims.c, weights, &l.bias, act, accumulate, y,
                            )?;
                            Stage::Pointwise
                        }
                        ConvKind::Depthwise(taps) => {
                            kernels::depthwise_conv(x, in_dims, win, taps, &l.bias, act, y)?;
                            Stage::Depthwise
                        }
                        ConvKind::Dense(weights) => {
                            kernels::dense_conv(
                                x, in_dims, win, weights, &l.bias, act, accumulate, y,
                            )?;
                            if l.spec.k == 1 {
                                Stage::StridedPointwise
                            } else {
                                Stage::Dense
                            }
                        }
                        ConvKind::Winograd(im2col, tiles) => {
                            if winograd::worthwhile(in_dims, win, tiles) {
                                winograd::conv(
                                    x, in_dims, win, tiles, &l.bias, act, accumulate, y,
                                )?;
                                Stage::Winograd
                            } else {
                                kernels::dense_conv(
                                    x, in_dims, win, im2col, &l.bias, act, accumulate, y,
                                )?;
                                Stage::Dense
                            }
                        }
                    };
                    profile.add_layer(stage, index, t, || {
                        let s = &l.spec;
                        let kind = match &l.kind {
                            ConvKind::Winograd(..) if stage == Stage::Winograd => "winograd",
                            ConvKind::Depthwise(_) => "depthwise",
                            _ if s.k == 1 => "1x1",
                            _ => "im2col",
                        };
                        let per_output = if s.depthwise {
                            s.k * s.k
                        } else {
                            s.k * s.k * s.cin
                        };
                        let label = format!(
                            "{kind} {}x{}/{} {}->{} out {}x{}x{}",
                            s.k, s.k, s.stride, s.cin, s.cout, out_dims.n, out_dims.h, out_dims.w
                        );
                        (label, (per_output * out_dims.len()) as u64)
                    });
                }
                Step::MaxPool { node, src, dst } => {
                    let in_dims = ws.dims[node_src(node)];
                    let out_dims = ws.dims[node + 1];
                    let win = ws.windows[node];
                    let (x, y) = split_pair(&mut ws.buffers, src, dst);
                    kernels::max_pool(&x[..in_dims.len()], in_dims, win, &mut y[..out_dims.len()])?;
                    profile.add(Stage::MaxPool, t);
                }
                Step::Block {
                    node,
                    expand,
                    depthwise,
                    project,
                    src,
                    dst,
                    residual,
                } => {
                    let dw_node = node + usize::from(expand.is_some());
                    let in_dims = ws.dims[node_src(node)];
                    let out_dims = ws.dims[dw_node + 2];
                    let pointwise = |layer: usize| match &self.layers[layer].kind {
                        ConvKind::Pointwise(weights) => Ok(fused::Pointwise {
                            weights,
                            bias: &self.layers[layer].bias,
                            act: self.layers[layer].spec.act,
                        }),
                        _ => Err(KernelError::Input("fused block without 1x1 layer".into())),
                    };
                    let expand = expand.map(pointwise).transpose()?;
                    let project = pointwise(project)?;
                    let ConvKind::Depthwise(taps) = &self.layers[depthwise].kind else {
                        return Err(KernelError::Input("fused block without depthwise".into()));
                    };
                    let dw = fused::Depthwise {
                        taps,
                        bias: &self.layers[depthwise].bias,
                        act: self.layers[depthwise].spec.act,
                        win: ws.windows[dw_node],
                    };
                    // The output buffer is taken out so the input and residual can be read.
                    let mut out = std::mem::take(&mut ws.buffers[dst]);
                    let x = &ws.buffers[src][..in_dims.len()];
                    let residual = residual.map(|r| &ws.buffers[r][..out_dims.len()]);
                    let y = &mut out[..out_dims.len()];
                    if bands > 1 && out_dims.h < LAYERED_BELOW_ROWS {
                        let dw_dims = (ws.dims[dw_node], ws.dims[dw_node + 1]);
                        layered_block(
                            x,
                            in_dims,
                            expand.as_ref(),
                            &dw,
                            dw_dims,
                            &project,
                            residual,
                            y,
                            &mut ws.scratch,
                            profile,
                        )?;
                    } else {
                        fused::inverted_residual(
                            x,
                            in_dims,
                            expand.as_ref(),
                            &dw,
                            &project,
                            residual,
                            y,
                            bands,
                        );
                        profile.add(Stage::FusedBlock, t);
                    }
                    ws.buffers[dst] = out;
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("name", &self.arch.name)
            .field("layers", &self.layers.len())
            .field("buffers", &self.buffer_count)
            .field("classifier", &self.head.is_some())
            .finish()
    }
}

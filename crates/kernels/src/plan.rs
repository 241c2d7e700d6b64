//! The compiled inference plan: folded weights, a step list over reusable NHWC buffers.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::arch::{self, Arch, ConvSpec, Node};
use crate::error::{KernelError, Result};
use crate::kernels::{self, Activation, Nhwc, PackedWeights, Window};
use crate::profile::{Profile, Stage};

/// How a convolution runs, with its weights in that kernel's layout.
enum ConvKind {
    /// 1×1, stride 1: one GEMM over packed `[cin, cout]` weights.
    Pointwise(PackedWeights),
    /// One filter per channel: the direct kernel over `[k·k, c]` taps.
    Depthwise(Vec<f32>),
    /// Anything else: im2col + GEMM over packed `[k·k·cin, cout]` weights.
    Dense(PackedWeights),
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

#[derive(Clone, Copy, Debug)]
enum Step {
    Conv {
        layer: usize,
        src: usize,
        dst: usize,
        residual: Residual,
    },
    MaxPool {
        src: usize,
        dst: usize,
    },
}

/// Buffers and shapes for one image of one input size, reused by every call with that size.
struct Workspace {
    /// Input height and width.
    key: (usize, usize),
    buffers: Vec<Vec<f32>>,
    /// NHWC shape of each value (batch 1).
    dims: Vec<Nhwc>,
    /// Window of each node.
    windows: Vec<Window>,
}

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

/// The window a convolution uses on an `h × w` input.
pub(crate) fn window_for(spec: &ConvSpec, h: usize, w: usize) -> Result<Window> {
    Window::symmetric(h, w, spec.k, spec.stride, spec.pad)
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

/// Two distinct buffers, one to read and one to write.
fn split_pair(buffers: &mut [Vec<f32>], read: usize, write: usize) -> (&[f32], &mut [f32]) {
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

        // Greedy buffer assignment; a residual that dies at its add is accumulated in place.
        let mut holder: Vec<Option<usize>> = vec![Some(0)];
        let mut value_buffer = vec![0usize; values];
        let mut steps = Vec::with_capacity(arch.nodes.len());
        for (i, node) in arch.nodes.iter().enumerate() {
            let out = i + 1;
            let src = match node {
                Node::Conv { src, .. } | Node::MaxPool { src, .. } => *src,
            };
            let residual = match node {
                Node::Conv { residual, .. } => *residual,
                Node::MaxPool { .. } => None,
            };
            let dead_before = |v: usize| last_use[v] < i;
            let (dst, mode) = match residual {
                Some(r) if last_use[r] == i && r != src => (value_buffer[r], Residual::InPlace),
                _ => {
                    let free = holder
                        .iter()
                        .position(|h| h.is_none_or(&dead_before))
                        .unwrap_or_else(|| {
                            holder.push(None);
                            holder.len() - 1
                        });
                    let mode = match residual {
                        Some(r) => Residual::Copy(value_buffer[r]),
                        None => Residual::None,
                    };
                    (free, mode)
                }
            };
            holder[dst] = Some(out);
            value_buffer[out] = dst;
            let src_buffer = value_buffer[src];
            steps.push(match node {
                Node::Conv { .. } => Step::Conv {
                    layer: layer_of_node[i],
                    src: src_buffer,
                    dst,
                    residual: mode,
                },
                Node::MaxPool { .. } => Step::MaxPool {
                    src: src_buffer,
                    dst,
                },
            });
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
        let one = |image: &[f32], profile: &mut Profile| -> Result<(Vec<f32>, Nhwc)> {
            let t = Instant::now();
            let mut ws = self.take_workspace(h, w)?;
            profile.add(Stage::Alloc, t);
            let result = self.execute(image, &mut ws, profile).and_then(|()| {
                let last = self.value_buffer[self.arch.nodes.len()];
                let dims = ws.dims[self.arch.nodes.len()];
                Ok((
                    finish(&ws.buffers[last][..dims.len()], dims, profile)?,
                    dims,
                ))
            });
            if let Ok(mut idle) = self.workspaces.lock() {
                idle.push(ws);
            }
            result
        };
        if n == 1 {
            return one(images, profile);
        }
        let outputs: Vec<(ImageOutput, Profile)> = images
            .par_chunks(image_len)
            .with_max_len(1)
            .map(|image| {
                let mut own = profile.child();
                (one(image, &mut own), own)
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
    fn take_workspace(&self, h: usize, w: usize) -> Result<Workspace> {
        let idle = self.workspaces.lock().ok().and_then(|mut idle| {
            // Workspaces of another input size will not be used again soon.
            idle.retain(|ws| ws.key == (h, w));
            idle.pop()
        });
        match idle {
            Some(ws) => Ok(ws),
            None => self.workspace_for(h, w),
        }
    }

    fn workspace_for(&self, h: usize, w: usize) -> Result<Workspace> {
        let n = 1;
        let mut dims = vec![Nhwc { n, h, w, c: 3 }];
        let mut windows = Vec::with_capacity(self.arch.nodes.len());
        for node in &self.arch.nodes {
            let (window, c) = match node {
                Node::Conv { spec, src, .. } => {
                    let d = dims[*src];
                    (window_for(spec, d.h, d.w), spec.cout)
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
            let b = self.value_buffer[v];
            sizes[b] = sizes[b].max(d.len());
        }
        Ok(Workspace {
            key: (h, w),
            buffers: sizes.into_iter().map(|s| vec![0.0; s]).collect(),
            dims,
            windows,
        })
    }

    /// Runs the steps on one NCHW image.
    fn execute(&self, image: &[f32], ws: &mut Workspace, profile: &mut Profile) -> Result<()> {
        let t = Instant::now();
        let dims = ws.dims[0];
        kernels::nchw_to_nhwc(
            image,
            dims,
            &mut ws.buffers[self.value_buffer[0]][..dims.len()],
        )?;
        profile.add(Stage::Layout, t);
        for (i, step) in self.steps.iter().enumerate() {
            let t = Instant::now();
            let in_dims = ws.dims[match &self.arch.nodes[i] {
                Node::Conv { src, .. } | Node::MaxPool { src, .. } => *src,
            }];
            let out_dims = ws.dims[i + 1];
            match *step {
                Step::Conv {
                    layer,
                    src,
                    dst,
                    residual,
                } => {
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
                    let win = ws.windows[i];
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
                    };
                    profile.add(stage, t);
                }
                Step::MaxPool { src, dst } => {
                    let win = ws.windows[i];
                    let (x, y) = split_pair(&mut ws.buffers, src, dst);
                    kernels::max_pool(&x[..in_dims.len()], in_dims, win, &mut y[..out_dims.len()])?;
                    profile.add(Stage::MaxPool, t);
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

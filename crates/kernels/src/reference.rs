//! The plain candle path: the same networks run with stock candle ops (NCHW `conv2d` with
//! groups, `BatchNorm`, `relu`/`clamp`, `max_pool2d`, `Linear`), op by op, nothing fused.
//! It is the yardstick for the fast plan's speed and, with random weights, for its numerics.

use std::time::Instant;

use candle_core::{Module, ModuleT, Tensor, D};
use candle_nn::VarBuilder;

use crate::arch::{self, Arch, Node};
use crate::error::{KernelError, Result};
use crate::kernels::Activation;
use crate::profile::{Profile, Stage};

struct RefConv {
    weight: Tensor,
    bias: Option<Tensor>,
    bn: Option<candle_nn::BatchNorm>,
}

/// A network evaluated with plain candle ops (see the module docs).
pub struct Reference {
    arch: Arch,
    /// One entry per node (None for pooling).
    convs: Vec<Option<RefConv>>,
    head: Option<candle_nn::Linear>,
}

fn named<T>(name: &str, r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|source| KernelError::Weight {
        tensor: name.to_string(),
        source,
    })
}

impl Reference {
    /// torchvision MobileNetV2 1.0.
    pub fn mobilenet_v2(vb: VarBuilder) -> Result<Self> {
        let head = vb.contains_tensor("classifier.1.weight");
        Self::build(arch::mobilenet_v2(head), vb)
    }

    /// EfficientNet-Lite0, lukemelas keys.
    pub fn efficientnet_lite0(vb: VarBuilder) -> Result<Self> {
        let head = vb.contains_tensor("_fc.weight");
        Self::build(arch::efficientnet_lite0(head), vb)
    }

    /// torchvision ResNet50.
    pub fn resnet50(vb: VarBuilder) -> Result<Self> {
        let head = vb.contains_tensor("fc.weight");
        Self::build(arch::resnet50(head), vb)
    }

    fn build(arch: Arch, vb: VarBuilder) -> Result<Self> {
        let mut convs = Vec::with_capacity(arch.nodes.len());
        for node in &arch.nodes {
            convs.push(match node {
                Node::Conv { spec, .. } => {
                    let per_filter = if spec.depthwise { 1 } else { spec.cin };
                    let shape = (spec.cout, per_filter, spec.k, spec.k);
                    let weight = named(&spec.weight, vb.get(shape, &spec.weight))?;
                    let bias = match &spec.bias {
                        Some(b) => Some(named(b, vb.get(spec.cout, b))?),
                        None => None,
                    };
                    let bn = match &spec.bn {
                        Some(p) => Some(named(
                            p,
                            candle_nn::batch_norm(spec.cout, spec.eps, vb.pp(p)),
                        )?),
                        None => None,
                    };
                    Some(RefConv { weight, bias, bn })
                }
                Node::MaxPool { .. } => None,
            });
        }
        let head = match &arch.head {
            Some(h) => {
                let w = named(&h.weight, vb.get((h.cout, h.cin), &h.weight))?;
                let b = named(&h.bias, vb.get(h.cout, &h.bias))?;
                Some(candle_nn::Linear::new(w, Some(b)))
            }
            None => None,
        };
        Ok(Self { arch, convs, head })
    }

    /// The pre-pooling feature map, `[N, C, H, W]`.
    pub fn feature_map(&self, input: &Tensor) -> Result<Tensor> {
        self.forward(input, &mut Profile::disabled())
    }

    /// Globally average-pooled features, `[N, C]`.
    pub fn features(&self, input: &Tensor) -> Result<Tensor> {
        let map = self.forward(input, &mut Profile::disabled())?;
        Ok(map.mean(D::Minus1)?.mean(D::Minus1)?)
    }

    /// Classifier logits; an error without a head.
    pub fn logits(&self, input: &Tensor) -> Result<Tensor> {
        self.logits_profiled(input, &mut Profile::disabled())
    }

    /// Time per stage over `runs` passes of `logits` (or pooled features without a head).
    pub fn profile(&self, input: &Tensor, runs: usize) -> Result<Profile> {
        let mut profile = Profile::enabled(self.arch.name, "plain candle");
        for _ in 0..runs {
            if self.head.is_some() {
                self.logits_profiled(input, &mut profile)?;
            } else {
                let map = self.forward(input, &mut profile)?;
                let t = Instant::now();
                map.mean(D::Minus1)?.mean(D::Minus1)?;
                profile.add(Stage::GlobalPool, t);
            }
            profile.runs += 1;
        }
        Ok(profile)
    }

    fn logits_profiled(&self, input: &Tensor, profile: &mut Profile) -> Result<Tensor> {
        let Some(head) = &self.head else {
            return Err(KernelError::NoClassifier(self.arch.name));
        };
        let map = self.forward(input, profile)?;
        let t = Instant::now();
        let pooled = map.mean(D::Minus1)?.mean(D::Minus1)?;
        profile.add(Stage::GlobalPool, t);
        let t = Instant::now();
        let logits = head.forward(&pooled)?;
        profile.add(Stage::Classifier, t);
        Ok(logits)
    }

    fn forward(&self, input: &Tensor, profile: &mut Profile) -> Result<Tensor> {
        let mut values: Vec<Option<Tensor>> = vec![Some(input.clone())];
        let mut last_use = vec![0usize; self.arch.nodes.len() + 1];
        for (i, node) in self.arch.nodes.iter().enumerate() {
            for v in node.inputs() {
                last_use[v] = i;
            }
        }
        for (i, node) in self.arch.nodes.iter().enumerate() {
            let get = |v: usize| -> Result<Tensor> {
                values[v]
                    .clone()
                    .ok_or_else(|| KernelError::Input(format!("value {v} used after release")))
            };
            let out = match node {
                Node::Conv {
                    spec,
                    src,
                    residual,
                } => {
                    let conv = self.convs[i]
                        .as_ref()
                        .ok_or_else(|| KernelError::Input(format!("node {i} has no weights")))?;
                    let mut x = get(*src)?;
                    let t = Instant::now();
                    let groups = if spec.depthwise { spec.cin } else { 1 };
                    x = x.conv2d(&conv.weight, spec.pad, spec.stride, 1, groups)?;
                    if let Some(b) = &conv.bias {
                        x = x.broadcast_add(&b.reshape((1, spec.cout, 1, 1))?)?;
                    }
                    profile.add(
                        if spec.depthwise {
                            Stage::Depthwise
                        } else if spec.k == 1 && spec.stride == 1 {
                            Stage::Pointwise
                        } else if spec.k == 1 {
                            Stage::StridedPointwise
                        } else {
                            Stage::Dense
                        },
                        t,
                    );
                    if let Some(bn) = &conv.bn {
                        let t = Instant::now();
                        x = bn.forward_t(&x, false)?;
                        profile.add(Stage::BatchNorm, t);
                    }
                    if let Some(r) = residual {
                        let t = Instant::now();
                        x = (x + get(*r)?)?;
                        profile.add(Stage::ResidualAdd, t);
                    }
                    let t = Instant::now();
                    x = match spec.act {
                        Activation::Identity => x,
                        Activation::Relu => x.relu()?,
                        Activation::Relu6 => x.clamp(0f32, 6f32)?,
                    };
                    if spec.act != Activation::Identity {
                        profile.add(Stage::Activation, t);
                    }
                    x
                }
                Node::MaxPool {
                    src,
                    k,
                    stride,
                    pad,
                } => {
                    let t = Instant::now();
                    // Edge replication is exact for max pooling: the copied values are in the window.
                    let x = get(*src)?
                        .pad_with_same(2, *pad, *pad)?
                        .pad_with_same(3, *pad, *pad)?
                        .max_pool2d_with_stride(*k, *stride)?;
                    profile.add(Stage::MaxPool, t);
                    x
                }
            };
            for v in node.inputs() {
                if last_use[v] == i {
                    values[v] = None;
                }
            }
            values.push(Some(out));
        }
        values
            .pop()
            .flatten()
            .ok_or_else(|| KernelError::Input("empty network".into()))
    }
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reference")
            .field("name", &self.arch.name)
            .field("nodes", &self.arch.nodes.len())
            .finish()
    }
}

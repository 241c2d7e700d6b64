//! Network wiring shared by the fast plan and the plain candle reference: which weight
//! tensors form which layer, and how layers connect. Both paths are built from one
//! description, so they cannot disagree on wiring; the golden tests check the wiring itself.

use crate::error::Result;
use crate::kernels::{Activation, Window};

/// One convolution with its (optional) BatchNorm and activation.
#[derive(Clone, Debug)]
pub(crate) struct ConvSpec {
    /// Key of the `[cout, cin/groups, k, k]` weight.
    pub weight: String,
    /// Key of the conv's own bias, if any.
    pub bias: Option<String>,
    /// Prefix of the BatchNorm (`.weight`, `.bias`, `.running_mean`, `.running_var`).
    pub bn: Option<String>,
    pub eps: f64,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    /// Zero padding on all four sides (PyTorch `padding=`).
    pub pad: usize,
    /// One filter per channel (cin == cout == groups).
    pub depthwise: bool,
    pub act: Activation,
}

/// One node; node `i` produces value `i + 1`, value 0 is the input image.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// `act(bn(conv(src)) + residual)`.
    Conv {
        spec: ConvSpec,
        src: usize,
        residual: Option<usize>,
    },
    /// Max pooling with symmetric padding.
    MaxPool {
        src: usize,
        k: usize,
        stride: usize,
        pad: usize,
    },
}

impl Node {
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Node::Conv { src, residual, .. } => std::iter::once(*src).chain(*residual).collect(),
            Node::MaxPool { src, .. } => vec![*src],
        }
    }
}

/// Fully connected classifier on the pooled features.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub weight: String,
    pub bias: String,
    pub cin: usize,
    pub cout: usize,
}

/// A whole network: nodes in execution order, feature map = the last value.
#[derive(Clone, Debug)]
pub(crate) struct Arch {
    pub name: &'static str,
    pub nodes: Vec<Node>,
    pub head: Option<Head>,
}

impl Arch {
    /// Channels of the final feature map.
    pub fn feature_dim(&self) -> usize {
        self.nodes
            .iter()
            .rev()
            .find_map(|n| match n {
                Node::Conv { spec, .. } => Some(spec.cout),
                Node::MaxPool { .. } => None,
            })
            .unwrap_or(3)
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        src: usize,
        weight: String,
        bn: String,
        eps: f64,
        (cin, cout): (usize, usize),
        (k, stride): (usize, usize),
        depthwise: bool,
        act: Activation,
        residual: Option<usize>,
    ) -> usize {
        self.nodes.push(Node::Conv {
            spec: ConvSpec {
                weight,
                bias: None,
                bn: Some(bn),
                eps,
                cin,
                cout,
                k,
                stride,
                pad: k / 2,
                depthwise,
                act,
            },
            src,
            residual,
        });
        self.nodes.len()
    }
}

/// torchvision MobileNetV2 1.0 (stages (t, c, n, s) of the paper).
pub(crate) fn mobilenet_v2(with_head: bool) -> Arch {
    const STAGES: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    const EPS: f64 = 1e-5;
    let r6 = Activation::Relu6;
    let mut b = Builder::default();
    let mut x = b.conv(
        0,
        "features.0.0.weight".into(),
        "features.0.1".into(),
        EPS,
        (3, 32),
        (3, 2),
        false,
        r6,
        None,
    );
    let mut c = 32;
    let mut idx = 1;
    for (t, cout, n, s) in STAGES {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("features.{idx}.conv");
            let hidden = c * t;
            let mut y = x;
            let mut j = 0;
            if t != 1 {
                y = b.conv(
                    y,
                    format!("{p}.0.0.weight"),
                    format!("{p}.0.1"),
                    EPS,
                    (c, hidden),
                    (1, 1),
                    false,
                    r6,
                    None,
                );
                j = 1;
            }
            y = b.conv(
                y,
                format!("{p}.{j}.0.weight"),
                format!("{p}.{j}.1"),
                EPS,
                (hidden, hidden),
                (3, stride),
                true,
                r6,
                None,
            );
            let residual = (stride == 1 && c == cout).then_some(x);
            x = b.conv(
                y,
                format!("{p}.{}.weight", j + 1),
                format!("{p}.{}", j + 2),
                EPS,
                (hidden, cout),
                (1, 1),
                false,
                Activation::Identity,
                residual,
            );
            c = cout;
            idx += 1;
        }
    }
    b.conv(
        x,
        "features.18.0.weight".into(),
        "features.18.1".into(),
        EPS,
        (c, 1280),
        (1, 1),
        false,
        r6,
        None,
    );
    Arch {
        name: "mobilenet_v2",
        nodes: b.nodes,
        head: with_head.then(|| Head {
            weight: "classifier.1.weight".into(),
            bias: "classifier.1.bias".into(),
            cin: 1280,
            cout: 1000,
        }),
    }
}

/// EfficientNet-Lite0 in the lukemelas key layout (ReLU6, no squeeze-excite, BN eps 1e-3).
/// Padding is PyTorch-symmetric `k / 2` (TF "SAME" padding misses the golden logits by 1.3).
pub(crate) fn efficientnet_lite0(with_head: bool) -> Arch {
    // (kernel, stride, expansion, out channels, repeats)
    const STAGES: [(usize, usize, usize, usize, usize); 7] = [
        (3, 1, 1, 16, 1),
        (3, 2, 6, 24, 2),
        (5, 2, 6, 40, 2),
        (3, 2, 6, 80, 3),
        (5, 1, 6, 112, 3),
        (5, 2, 6, 192, 4),
        (3, 1, 6, 320, 1),
    ];
    const EPS: f64 = 1e-3;
    let r6 = Activation::Relu6;
    let mut b = Builder::default();
    let mut x = b.conv(
        0,
        "_conv_stem.weight".into(),
        "_bn0".into(),
        EPS,
        (3, 32),
        (3, 2),
        false,
        r6,
        None,
    );
    let mut c = 32;
    let mut idx = 0;
    for (k, s, e, cout, n) in STAGES {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let p = format!("_blocks.{idx}");
            let hidden = c * e;
            let mut y = x;
            if e != 1 {
                y = b.conv(
                    y,
                    format!("{p}._expand_conv.weight"),
                    format!("{p}._bn0"),
                    EPS,
                    (c, hidden),
                    (1, 1),
                    false,
                    r6,
                    None,
                );
            }
            y = b.conv(
                y,
                format!("{p}._depthwise_conv.weight"),
                format!("{p}._bn1"),
                EPS,
                (hidden, hidden),
                (k, stride),
                true,
                r6,
                None,
            );
            let residual = (stride == 1 && c == cout).then_some(x);
            x = b.conv(
                y,
                format!("{p}._project_conv.weight"),
                format!("{p}._bn2"),
                EPS,
                (hidden, cout),
                (1, 1),
                false,
                Activation::Identity,
                residual,
            );
            c = cout;
            idx += 1;
        }
    }
    b.conv(
        x,
        "_conv_head.weight".into(),
        "_bn1".into(),
        EPS,
        (c, 1280),
        (1, 1),
        false,
        r6,
        None,
    );
    Arch {
        name: "efficientnet_lite0",
        nodes: b.nodes,
        head: with_head.then(|| Head {
            weight: "_fc.weight".into(),
            bias: "_fc.bias".into(),
            cin: 1280,
            cout: 1000,
        }),
    }
}

/// torchvision ResNet50 (v1.5: the stride sits on the 3×3 conv).
pub(crate) fn resnet50(with_head: bool) -> Arch {
    const EPS: f64 = 1e-5;
    let relu = Activation::Relu;
    let mut b = Builder::default();
    let stem = b.conv(
        0,
        "conv1.weight".into(),
        "bn1".into(),
        EPS,
        (3, 64),
        (7, 2),
        false,
        relu,
        None,
    );
    b.nodes.push(Node::MaxPool {
        src: stem,
        k: 3,
        stride: 2,
        pad: 1,
    });
    let mut x = b.nodes.len();
    let mut c = 64;
    for (li, (planes, blocks, stride)) in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
        .into_iter()
        .enumerate()
    {
        for bi in 0..blocks {
            let p = format!("layer{}.{bi}", li + 1);
            let s = if bi == 0 { stride } else { 1 };
            let out = planes * 4;
            let y = b.conv(
                x,
                format!("{p}.conv1.weight"),
                format!("{p}.bn1"),
                EPS,
                (c, planes),
                (1, 1),
                false,
                relu,
                None,
            );
            let y = b.conv(
                y,
                format!("{p}.conv2.weight"),
                format!("{p}.bn2"),
                EPS,
                (planes, planes),
                (3, s),
                false,
                relu,
                None,
            );
            let shortcut = if bi == 0 {
                b.conv(
                    x,
                    format!("{p}.downsample.0.weight"),
                    format!("{p}.downsample.1"),
                    EPS,
                    (c, out),
                    (1, s),
                    false,
                    Activation::Identity,
                    None,
                )
            } else {
                x
            };
            x = b.conv(
                y,
                format!("{p}.conv3.weight"),
                format!("{p}.bn3"),
                EPS,
                (planes, out),
                (1, 1),
                false,
                relu,
                Some(shortcut),
            );
            c = out;
        }
    }
    Arch {
        name: "resnet50",
        nodes: b.nodes,
        head: with_head.then(|| Head {
            weight: "fc.weight".into(),
            bias: "fc.bias".into(),
            cin: 2048,
            cout: 1000,
        }),
    }
}

/// Multiply-accumulates per image of the convolutions (head excluded) for an `h × w` input.
pub(crate) fn count_macs(arch: &Arch, h: usize, w: usize) -> Option<u64> {
    let mut dims = vec![(h, w, 3usize)];
    let mut macs = 0u64;
    for node in &arch.nodes {
        let (ih, iw, ic) = dims[match node {
            Node::Conv { src, .. } | Node::MaxPool { src, .. } => *src,
        }];
        let next = match node {
            Node::Conv { spec, .. } => {
                let win = window_for(spec, ih, iw).ok()?;
                let per_out = if spec.depthwise {
                    spec.k * spec.k
                } else {
                    spec.k * spec.k * spec.cin
                };
                macs += (win.out_h * win.out_w * spec.cout * per_out) as u64;
                (win.out_h, win.out_w, spec.cout)
            }
            Node::MaxPool { k, stride, pad, .. } => {
                let win = crate::kernels::Window::symmetric(ih, iw, *k, *stride, *pad).ok()?;
                (win.out_h, win.out_w, ic)
            }
        };
        dims.push(next);
    }
    Some(macs)
}

/// The window a convolution uses on an `h × w` input.
pub(crate) fn window_for(spec: &ConvSpec, h: usize, w: usize) -> Result<Window> {
    Window::symmetric(h, w, spec.k, spec.stride, spec.pad)
}

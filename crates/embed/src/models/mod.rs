//! The networks, each a feature extractor returning the last feature map (N×C×H×W), plus the
//! ImageNet classifier head where the checkpoint has one.
//!
//! Each file mirrors the weight names of its checkpoint layout: a `VarBuilder` path per module.

use candle_core::{Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, Module, ModuleT, VarBuilder};

pub(crate) mod efficientnet_lite0;
pub(crate) mod fast;
pub(crate) mod mobilenet_v2;
pub(crate) mod resnet;
pub(crate) mod vgg;

/// A feature extractor with an optional classifier over its average-pooled features.
pub(crate) trait Backbone: Send + Sync {
    /// The last feature map, N×C×H×W, before any pooling.
    fn features(&self, x: &Tensor) -> Result<Tensor>;
    /// The linear ImageNet classifier applied to average-pooled features, when loaded.
    fn classifier(&self) -> Option<&Linear>;
}

/// The activation after a convolution + batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::None => Ok(x.clone()),
            Act::Relu => x.relu(),
            Act::Relu6 => x.clamp(0f32, 6f32),
        }
    }
}

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
}

impl ConvSpec {
    pub(crate) fn new(cin: usize, cout: usize, kernel: usize, stride: usize) -> Self {
        ConvSpec {
            cin,
            cout,
            kernel,
            stride,
            groups: 1,
        }
    }

    /// A depthwise convolution over `channels`.
    pub(crate) fn depthwise(channels: usize, kernel: usize, stride: usize) -> Self {
        ConvSpec {
            cin: channels,
            cout: channels,
            kernel,
            stride,
            groups: channels,
        }
    }

    fn config(self) -> Conv2dConfig {
        Conv2dConfig {
            padding: self.kernel / 2,
            stride: self.stride,
            groups: self.groups,
            ..Default::default()
        }
    }
}

/// Convolution without bias, eval-mode batch norm, activation.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    act: Act,
}

impl ConvBn {
    /// `conv_vb` holds `weight`; `bn_vb` holds `weight`, `bias`, `running_mean`, `running_var`.
    pub(crate) fn new(
        spec: ConvSpec,
        eps: f64,
        act: Act,
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
    ) -> Result<Self> {
        let conv =
            candle_nn::conv2d_no_bias(spec.cin, spec.cout, spec.kernel, spec.config(), conv_vb)?;
        let bn = candle_nn::batch_norm(spec.cout, eps, bn_vb)?;
        Ok(ConvBn { conv, bn, act })
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv.forward(x)?;
        let x = self.bn.forward_t(&x, false)?;
        self.act.apply(&x)
    }
}

/// The (convolution, batch norm) weight prefixes of an inverted residual block's layers.
pub(crate) struct BlockNames<'a> {
    /// The 1×1 expansion, absent when the block does not expand.
    pub expand: Option<(&'a str, &'a str)>,
    pub depthwise: (&'a str, &'a str),
    pub project: (&'a str, &'a str),
}

/// Geometry of an inverted residual block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expansion: usize,
    pub eps: f64,
}

/// MobileNetV2's inverted residual, which is also EfficientNet-Lite's MBConv (no
/// squeeze-excite): 1×1 expansion + ReLU6, depthwise k×k + ReLU6, linear 1×1 projection, and
/// the identity shortcut when the shape is kept.
#[derive(Debug, Clone)]
pub(crate) struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    pub(crate) fn new(spec: BlockSpec, names: BlockNames, vb: VarBuilder) -> Result<Self> {
        let hidden = spec.cin * spec.expansion;
        let layer = |conv: ConvSpec, act, (weights, bn): (&str, &str)| {
            ConvBn::new(conv, spec.eps, act, vb.pp(weights), vb.pp(bn))
        };
        let expand = match names.expand {
            Some(expand) if spec.expansion != 1 => Some(layer(
                ConvSpec::new(spec.cin, hidden, 1, 1),
                Act::Relu6,
                expand,
            )?),
            _ => None,
        };
        let depthwise = layer(
            ConvSpec::depthwise(hidden, spec.kernel, spec.stride),
            Act::Relu6,
            names.depthwise,
        )?;
        let project = layer(
            ConvSpec::new(hidden, spec.cout, 1, 1),
            Act::None,
            names.project,
        )?;
        Ok(InvertedResidual {
            expand,
            depthwise,
            project,
            residual: spec.stride == 1 && spec.cin == spec.cout,
        })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(expand) => expand.forward(x)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y)?;
        y = self.project.forward(&y)?;
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

/// The classifier head when the checkpoint has it; a missing head is not an error (embedding
/// does not need it), but a misshapen one is.
pub(crate) fn optional_linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<Option<Linear>> {
    if vb.contains_tensor("weight") || vb.contains_tensor("bias") {
        candle_nn::linear(cin, cout, vb).map(Some)
    } else {
        Ok(None)
    }
}

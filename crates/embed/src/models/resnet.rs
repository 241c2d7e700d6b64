//! ResNet50 (v1.5, stride on the 3×3 convolution) in the torchvision layout, which timm's
//! `resnet50` shares.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::{optional_linear, Act, Backbone, ConvBn, ConvSpec};

const EPS: f64 = 1e-5;
const EXPANSION: usize = 4;

#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(cin: usize, width: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let cout = width * EXPANSION;
        let conv1 = ConvBn::new(
            ConvSpec::new(cin, width, 1, 1),
            EPS,
            Act::Relu,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let conv2 = ConvBn::new(
            ConvSpec::new(width, width, 3, stride),
            EPS,
            Act::Relu,
            vb.pp("conv2"),
            vb.pp("bn2"),
        )?;
        let conv3 = ConvBn::new(
            ConvSpec::new(width, cout, 1, 1),
            EPS,
            Act::None,
            vb.pp("conv3"),
            vb.pp("bn3"),
        )?;
        let downsample = if stride != 1 || cin != cout {
            Some(ConvBn::new(
                ConvSpec::new(cin, cout, 1, stride),
                EPS,
                Act::None,
                vb.pp("downsample.0"),
                vb.pp("downsample.1"),
            )?)
        } else {
            None
        };
        Ok(Bottleneck {
            conv1,
            conv2,
            conv3,
            downsample,
        })
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(x)?;
        let y = self.conv2.forward(&y)?;
        let y = self.conv3.forward(&y)?;
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward(x)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// ResNet50 feature extractor: the output of `layer4` (2048 channels).
#[derive(Debug, Clone)]
pub(crate) struct ResNet50 {
    stem: ConvBn,
    blocks: Vec<Bottleneck>,
    classifier: Option<Linear>,
}

impl ResNet50 {
    pub(crate) fn new(vb: VarBuilder) -> Result<Self> {
        let stem = ConvBn::new(
            ConvSpec::new(3, 64, 7, 2),
            EPS,
            Act::Relu,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (layer, (repeats, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
            .into_iter()
            .enumerate()
        {
            let layer_vb = vb.pp(format!("layer{}", layer + 1));
            for i in 0..repeats {
                let stride = if i == 0 && layer > 0 { 2 } else { 1 };
                blocks.push(Bottleneck::new(cin, width, stride, layer_vb.pp(i))?);
                cin = width * EXPANSION;
            }
        }
        let classifier = optional_linear(2048, 1000, vb.pp("fc"))?;
        Ok(ResNet50 {
            stem,
            blocks,
            classifier,
        })
    }
}

impl Backbone for ResNet50 {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward(x)?;
        // Max-pool 3×3, stride 2, padding 1, floor mode. Zero padding is exact: the input is
        // post-ReLU, so it is never below the padding.
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut x = x.max_pool2d_with_stride(3, 2)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    fn classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }
}

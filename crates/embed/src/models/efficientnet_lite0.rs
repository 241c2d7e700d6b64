//! EfficientNet-Lite0 in the lukemelas key layout (`_conv_stem`, `_blocks.i.*`, `_conv_head`,
//! `_fc`): ReLU6, no squeeze-excite, batch-norm eps 1e-3, stem and head not scaled.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::{
    optional_linear, Act, Backbone, BlockNames, BlockSpec, ConvBn, ConvSpec, InvertedResidual,
};

const EPS: f64 = 1e-3;
/// (repeats, kernel, first stride, expansion, in channels, out channels) of EfficientNet-B0.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// The lukemelas names of an MBConv block's layers.
const MBCONV_NAMES: BlockNames<'static> = BlockNames {
    expand: Some(("_expand_conv", "_bn0")),
    depthwise: ("_depthwise_conv", "_bn1"),
    project: ("_project_conv", "_bn2"),
};

/// EfficientNet-Lite0 feature extractor: the head output (1280 channels, after ReLU6).
#[derive(Debug, Clone)]
pub(crate) struct EfficientNetLite0 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    classifier: Option<Linear>,
}

impl EfficientNetLite0 {
    pub(crate) fn new(vb: VarBuilder) -> Result<Self> {
        let stem = ConvBn::new(
            ConvSpec::new(3, 32, 3, 2),
            EPS,
            Act::Relu6,
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
        )?;
        let mut blocks = Vec::new();
        let blocks_vb = vb.pp("_blocks");
        for (repeats, kernel, stride, expansion, cin, cout) in STAGES {
            for i in 0..repeats {
                let (block_in, block_stride) = if i == 0 { (cin, stride) } else { (cout, 1) };
                let index = blocks.len();
                let spec = BlockSpec {
                    cin: block_in,
                    cout,
                    kernel,
                    stride: block_stride,
                    expansion,
                    eps: EPS,
                };
                blocks.push(InvertedResidual::new(
                    spec,
                    MBCONV_NAMES,
                    blocks_vb.pp(index),
                )?);
            }
        }
        let head = ConvBn::new(
            ConvSpec::new(320, 1280, 1, 1),
            EPS,
            Act::Relu6,
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
        )?;
        let classifier = optional_linear(1280, 1000, vb.pp("_fc"))?;
        Ok(EfficientNetLite0 {
            stem,
            blocks,
            head,
            classifier,
        })
    }
}

impl Backbone for EfficientNetLite0 {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(x)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.head.forward(&x)
    }

    fn classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }
}

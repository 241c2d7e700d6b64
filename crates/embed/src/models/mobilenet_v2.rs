//! MobileNetV2 1.0 in the torchvision layout (`features.*`, `classifier.1`).

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::{
    optional_linear, Act, Backbone, BlockNames, BlockSpec, ConvBn, ConvSpec, InvertedResidual,
};

const EPS: f64 = 1e-5;
/// (expansion t, out channels c, repeats n, first stride s), as in the paper and torchvision.
pub(crate) const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// The torchvision names of a block's layers, below `features.<i>.conv`: the first block does
/// not expand, so its layers sit one index lower.
const EXPANDING_BLOCK: BlockNames<'static> = BlockNames {
    expand: Some(("0.0", "0.1")),
    depthwise: ("1.0", "1.1"),
    project: ("2", "3"),
};
const NON_EXPANDING_BLOCK: BlockNames<'static> = BlockNames {
    expand: None,
    depthwise: ("0.0", "0.1"),
    project: ("1", "2"),
};

/// MobileNetV2 feature extractor: the output of `features` (1280 channels, after ReLU6).
#[derive(Debug, Clone)]
pub(crate) struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    classifier: Option<Linear>,
}

impl MobileNetV2 {
    pub(crate) fn new(vb: VarBuilder) -> Result<Self> {
        let features = vb.pp("features");
        let stem = ConvBn::new(
            ConvSpec::new(3, 32, 3, 2),
            EPS,
            Act::Relu6,
            features.pp("0.0"),
            features.pp("0.1"),
        )?;
        let mut blocks = Vec::new();
        let mut cin = 32;
        let mut index = 1;
        for (t, c, n, s) in STAGES {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let spec = BlockSpec {
                    cin,
                    cout: c,
                    kernel: 3,
                    stride,
                    expansion: t,
                    eps: EPS,
                };
                let names = if t == 1 {
                    NON_EXPANDING_BLOCK
                } else {
                    EXPANDING_BLOCK
                };
                blocks.push(InvertedResidual::new(
                    spec,
                    names,
                    features.pp(index).pp("conv"),
                )?);
                cin = c;
                index += 1;
            }
        }
        let head = ConvBn::new(
            ConvSpec::new(cin, 1280, 1, 1),
            EPS,
            Act::Relu6,
            features.pp(format!("{index}.0")),
            features.pp(format!("{index}.1")),
        )?;
        let classifier = optional_linear(1280, 1000, vb.pp("classifier.1"))?;
        Ok(MobileNetV2 {
            stem,
            blocks,
            head,
            classifier,
        })
    }
}

impl Backbone for MobileNetV2 {
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

/// Maps a torchvision MobileNetV2 key to timm's `mobilenetv2_100` key (as published on the
/// Hugging Face hub); keys outside the network are returned unchanged.
pub(crate) fn timm_name(torchvision: &str) -> String {
    if let Some(rest) = torchvision.strip_prefix("classifier.1.") {
        return format!("classifier.{rest}");
    }
    let Some(rest) = torchvision.strip_prefix("features.") else {
        return torchvision.to_string();
    };
    let Some((index, rest)) = rest.split_once('.') else {
        return torchvision.to_string();
    };
    let Ok(index) = index.parse::<usize>() else {
        return torchvision.to_string();
    };
    let last = 1 + STAGES.iter().map(|stage| stage.2).sum::<usize>();
    let module = |prefix: &str, map: &[(&str, &str)]| -> Option<String> {
        map.iter().find_map(|(tv, timm)| {
            rest.strip_prefix(tv)
                .and_then(|param| param.strip_prefix('.'))
                .map(|param| format!("{prefix}{timm}.{param}"))
        })
    };
    let mapped = if index == 0 {
        module("", &[("0", "conv_stem"), ("1", "bn1")])
    } else if index == last {
        module("", &[("0", "conv_head"), ("1", "bn2")])
    } else {
        // features.k is block j of stage s in timm's `blocks.s.j`.
        let mut remaining = index - 1;
        let mut stage = 0;
        while stage < STAGES.len() && remaining >= STAGES[stage].2 {
            remaining -= STAGES[stage].2;
            stage += 1;
        }
        let prefix = format!("blocks.{stage}.{remaining}.");
        if stage == 0 {
            module(
                &prefix,
                &[
                    ("conv.0.0", "conv_dw"),
                    ("conv.0.1", "bn1"),
                    ("conv.1", "conv_pw"),
                    ("conv.2", "bn2"),
                ],
            )
        } else {
            module(
                &prefix,
                &[
                    ("conv.0.0", "conv_pw"),
                    ("conv.0.1", "bn1"),
                    ("conv.1.0", "conv_dw"),
                    ("conv.1.1", "bn2"),
                    ("conv.2", "conv_pwl"),
                    ("conv.3", "bn3"),
                ],
            )
        }
    };
    mapped.unwrap_or_else(|| torchvision.to_string())
}

#[cfg(test)]
mod tests {
    use super::timm_name;

    #[test]
    fn timm_names() {
        assert_eq!(timm_name("features.0.0.weight"), "conv_stem.weight");
        assert_eq!(timm_name("features.0.1.running_var"), "bn1.running_var");
        assert_eq!(
            timm_name("features.1.conv.0.0.weight"),
            "blocks.0.0.conv_dw.weight"
        );
        assert_eq!(timm_name("features.1.conv.2.bias"), "blocks.0.0.bn2.bias");
        assert_eq!(
            timm_name("features.2.conv.0.0.weight"),
            "blocks.1.0.conv_pw.weight"
        );
        assert_eq!(
            timm_name("features.3.conv.1.1.weight"),
            "blocks.1.1.bn2.weight"
        );
        assert_eq!(
            timm_name("features.17.conv.2.weight"),
            "blocks.6.0.conv_pwl.weight"
        );
        assert_eq!(timm_name("features.16.conv.3.bias"), "blocks.5.2.bn3.bias");
        assert_eq!(timm_name("features.18.0.weight"), "conv_head.weight");
        assert_eq!(timm_name("features.18.1.weight"), "bn2.weight");
        assert_eq!(timm_name("classifier.1.bias"), "classifier.bias");
    }
}

//! VGG16 `features` (13 convolutions with ReLU, 5 max-pools) in the torchvision layout, which
//! timm's `vgg16` shares for these keys. Built headless: the embedding is the pooled `features`
//! output, so there is no classifier.

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, VarBuilder};

use super::Backbone;

/// Output channels of each convolution; `None` is a 2×2 max-pool.
const LAYERS: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    MaxPool,
}

/// VGG16 feature extractor: the output of pool5 (512 channels).
#[derive(Debug, Clone)]
pub(crate) struct Vgg16 {
    layers: Vec<Layer>,
}

impl Vgg16 {
    pub(crate) fn new(vb: VarBuilder) -> Result<Self> {
        let features = vb.pp("features");
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut layers = Vec::new();
        let mut cin = 3;
        // torchvision numbers every module of `features`, the ReLUs included.
        let mut index = 0;
        for layer in LAYERS {
            match layer {
                Some(cout) => {
                    layers.push(Layer::Conv(candle_nn::conv2d(
                        cin,
                        cout,
                        3,
                        config,
                        features.pp(index),
                    )?));
                    cin = cout;
                    index += 2;
                }
                None => {
                    layers.push(Layer::MaxPool);
                    index += 1;
                }
            }
        }
        Ok(Vgg16 { layers })
    }
}

impl Backbone for Vgg16 {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(&x)?.relu()?,
                Layer::MaxPool => x.max_pool2d(2)?,
            };
        }
        Ok(x)
    }

    fn classifier(&self) -> Option<&Linear> {
        None
    }
}

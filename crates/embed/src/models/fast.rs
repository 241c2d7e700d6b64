//! The CPU fast path: a [`wtb_kernels::Plan`] (BatchNorm folded, NHWC, fused GEMM and depthwise
//! kernels) behind the same [`Backbone`] interface as the stock candle models.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use wtb_kernels::Plan;

use super::{optional_linear, Backbone};
use crate::ModelKind;

/// A compiled plan for the feature extractor plus the classifier head as a candle layer, so that
/// logits and pooling variants work exactly as on the stock path.
pub(crate) struct FastBackbone {
    plan: Plan,
    classifier: Option<Linear>,
}

impl FastBackbone {
    /// The fast path for `model`, or `None` when the kernels crate has no plan for it (VGG16).
    pub(crate) fn new(model: ModelKind, vb: VarBuilder) -> Option<Result<Self>> {
        let (plan, head) = match model {
            ModelKind::MobileNetV2 => (Plan::mobilenet_v2(vb.clone()), "classifier.1"),
            ModelKind::EfficientNetLite0 => (Plan::efficientnet_lite0(vb.clone()), "_fc"),
            ModelKind::ResNet50 => (Plan::resnet50(vb.clone()), "fc"),
            ModelKind::Vgg16 => return None,
        };
        let build = || -> Result<Self> {
            let plan = plan.map_err(candle_core::Error::wrap)?;
            let classifier = optional_linear(plan.feature_dim(), 1000, vb.pp(head))?;
            Ok(FastBackbone { plan, classifier })
        };
        Some(build())
    }
}

impl Backbone for FastBackbone {
    fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.plan.feature_map(x).map_err(candle_core::Error::wrap)
    }

    fn classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }
}

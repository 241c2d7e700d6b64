//! What to embed with: model, preprocessing, pooling, normalisation and device.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use candle_core::Device;

use crate::EmbedError;

/// The feature extractors this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// torchvision MobileNetV2 1.0, 1280-d.
    MobileNetV2,
    /// EfficientNet-Lite0 (lukemelas key layout), 1280-d.
    EfficientNetLite0,
    /// torchvision ResNet50 (v1.5), 2048-d.
    ResNet50,
    /// The 13 convolutions and 5 max-pools of torchvision VGG16 `features`, 512-d.
    Vgg16,
}

impl ModelKind {
    /// Every model, in the order `wtb models list` shows them.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::MobileNetV2,
        ModelKind::EfficientNetLite0,
        ModelKind::ResNet50,
        ModelKind::Vgg16,
    ];

    /// The name used on the command line, in file names and in embedding metadata.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::MobileNetV2 => "mobilenet_v2",
            ModelKind::EfficientNetLite0 => "efficientnet_lite0",
            ModelKind::ResNet50 => "resnet50",
            ModelKind::Vgg16 => "vgg16",
        }
    }

    /// The length of the embedding vector.
    pub fn dim(self) -> usize {
        match self {
            ModelKind::MobileNetV2 | ModelKind::EfficientNetLite0 => 1280,
            ModelKind::ResNet50 => 2048,
            ModelKind::Vgg16 => 512,
        }
    }

    /// The side of the square input of the `squash` and `pad` preprocessing (the original
    /// project fed 250×250 crops to ResNet50 and VGG16).
    pub fn squash_size(self) -> u32 {
        match self {
            ModelKind::MobileNetV2 | ModelKind::EfficientNetLite0 => 224,
            ModelKind::ResNet50 | ModelKind::Vgg16 => 250,
        }
    }

    /// The weight key layouts accepted for this model.
    pub fn layouts(self) -> &'static [&'static str] {
        match self {
            ModelKind::MobileNetV2 | ModelKind::ResNet50 | ModelKind::Vgg16 => {
                &["torchvision", "timm"]
            }
            ModelKind::EfficientNetLite0 => &["lukemelas"],
        }
    }

    /// Whether the model has an ImageNet classifier head (VGG16 is built headless).
    pub fn has_classifier(self) -> bool {
        !matches!(self, ModelKind::Vgg16)
    }

    fn expected() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| EmbedError::UnknownName {
                what: "model",
                value: s.to_string(),
                expected: Self::expected(),
            })
    }
}

/// How an image becomes the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preprocess {
    /// Shorter side to 256 (bilinear, antialiased like PIL), centre crop 224, ImageNet mean/std.
    Torchvision,
    /// The original project's: a plain resize to a square (224, or 250 for ResNet50/VGG16).
    Squash,
    /// Letterbox: fit the longer side into the square, centred on white.
    Pad,
}

impl Preprocess {
    /// The name used on the command line and in embedding metadata.
    pub fn name(self) -> &'static str {
        match self {
            Preprocess::Torchvision => "torchvision",
            Preprocess::Squash => "squash",
            Preprocess::Pad => "pad",
        }
    }
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preprocess {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "torchvision" => Ok(Preprocess::Torchvision),
            "squash" => Ok(Preprocess::Squash),
            "pad" => Ok(Preprocess::Pad),
            _ => Err(EmbedError::UnknownName {
                what: "preprocessing",
                value: s.to_string(),
                expected: "torchvision, squash, pad".to_string(),
            }),
        }
    }
}

/// How the last feature map is reduced to one vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pooling {
    /// Global average pooling (what the classifiers were trained with).
    Avg,
    /// Global max pooling.
    Max,
    /// Generalised mean pooling with exponent p: `(mean(max(x, 1e-6)^p))^(1/p)`.
    Gem(f32),
    /// Regional maximum activations of convolutions (R-MAC; Tolias, Sicre and Jégou, ICLR
    /// 2016) over this many scales of square regions (about 40% overlap): each region
    /// max-pooled and L2-normalised, then summed with the whole map's.
    Rmac(u8),
}

/// The scales of regions of `rmac` without a number.
pub const RMAC_DEFAULT_LEVELS: u8 = 3;

impl Pooling {
    /// The name used on the command line and in embedding metadata: `avg`, `max`, `gem:P`,
    /// `rmac:L`.
    pub fn name(self) -> String {
        match self {
            Pooling::Avg => "avg".to_string(),
            Pooling::Max => "max".to_string(),
            Pooling::Gem(p) => format!("gem:{p}"),
            Pooling::Rmac(levels) => format!("rmac:{levels}"),
        }
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Pooling {
    type Err = EmbedError;
    /// Accepts `avg`, `max`, `gem` (p = 3), `gem:P` with a finite P > 0, `rmac` (3 scales) and
    /// `rmac:L` with L in 1..=5.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EmbedError::UnknownName {
            what: "pooling",
            value: s.to_string(),
            expected: "avg, max, gem, gem:P (P > 0), rmac, rmac:L (L in 1..=5)".to_string(),
        };
        match s {
            "avg" => Ok(Pooling::Avg),
            "max" => Ok(Pooling::Max),
            "gem" => Ok(Pooling::Gem(3.0)),
            "rmac" => Ok(Pooling::Rmac(RMAC_DEFAULT_LEVELS)),
            _ if s.starts_with("rmac:") => match s["rmac:".len()..].parse::<u8>() {
                Ok(levels @ 1..=5) => Ok(Pooling::Rmac(levels)),
                _ => Err(bad()),
            },
            _ => {
                let p: f32 = s
                    .strip_prefix("gem:")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if p.is_finite() && p > 0.0 {
                    Ok(Pooling::Gem(p))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU (default).
    Cpu,
    /// The CUDA GPU with this ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// CUDA 0 where available, else the CPU.
    Auto,
}

impl DeviceChoice {
    /// Opens the device.
    pub fn open(self) -> Result<Device, EmbedError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => {
                Device::new_cuda(ordinal).map_err(|source| EmbedError::Device {
                    device: self.to_string(),
                    source,
                })
            }
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(device) = Device::new_cuda(0) {
                        return Ok(device);
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EmbedError::UnknownName {
            what: "device",
            value: s.to_string(),
            expected: "cpu, cuda, cuda:N, auto".to_string(),
        };
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "auto" => Ok(DeviceChoice::Auto),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(bad),
        }
    }
}

/// Which implementation runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// On the CPU, the fused and vectorised kernels of `wtb-kernels` (BatchNorm folded into the
    /// convolutions, NHWC layout, GEMM and depthwise kernels) for MobileNetV2,
    /// EfficientNet-Lite0 and ResNet50; stock candle ops for VGG16 and on a GPU. The vectors
    /// match the candle path to about 1e-5.
    #[default]
    Fast,
    /// Stock candle ops everywhere: the reference the fast path is tested against.
    Candle,
}

impl Engine {
    /// The name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fast => "fast",
            Engine::Candle => "candle",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Engine::Fast),
            "candle" => Ok(Engine::Candle),
            _ => Err(EmbedError::UnknownName {
                what: "engine",
                value: s.to_string(),
                expected: "fast, candle".to_string(),
            }),
        }
    }
}

/// Everything needed to build an [`Embedder`](crate::Embedder).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderConfig {
    /// The model.
    pub model: ModelKind,
    /// An explicit weights file (safetensors or PyTorch `.pth`); `None` searches the usual places
    /// (see [`resolve_weights`](crate::resolve_weights)).
    pub weights: Option<PathBuf>,
    /// The preprocessing.
    pub preprocess: Preprocess,
    /// The pooling of the last feature map.
    pub pooling: Pooling,
    /// Whether each vector is scaled to unit L2 norm.
    pub l2_normalize: bool,
    /// Where the model runs.
    pub device: DeviceChoice,
    /// Which implementation runs it on the CPU.
    pub engine: Engine,
    /// A learned head file (made by `wtb train`) applied after pooling; it must have been
    /// trained on this model, weights, preprocessing and pooling.
    pub head: Option<PathBuf>,
    /// Further models (with their weights files, `None`: searched for) run on the same input,
    /// their pooled features appended to the main model's: an ensemble. Each model's part is
    /// scaled to unit length so that every model weighs the same. The models must share the
    /// input size of the preprocessing.
    pub ensemble: Vec<(ModelKind, Option<PathBuf>)>,
}

/// Parses `model` or an ensemble `model+model+…` into the main model and the others.
pub fn parse_models(text: &str) -> Result<(ModelKind, Vec<ModelKind>), EmbedError> {
    let mut kinds = text
        .split('+')
        .map(|name| name.trim().parse::<ModelKind>())
        .collect::<Result<Vec<_>, _>>()?;
    let main = kinds.remove(0);
    Ok((main, kinds))
}

/// The name of a model or ensemble (`mobilenet_v2+efficientnet_lite0`), as in embedding
/// metadata.
pub fn models_name(main: ModelKind, ensemble: &[ModelKind]) -> String {
    std::iter::once(main)
        .chain(ensemble.iter().copied())
        .map(ModelKind::name)
        .collect::<Vec<_>>()
        .join("+")
}

impl EmbedderConfig {
    /// The defaults for a model or an ensemble named as `model+model+…` (see
    /// [`parse_models`]), with weights files given in the same order (missing ones are
    /// searched for). More weights files than models is an error.
    pub fn for_models(models: &str, weights: &[PathBuf]) -> Result<Self, EmbedError> {
        let (main, others) = parse_models(models)?;
        if weights.len() > 1 + others.len() {
            return Err(EmbedError::InvalidArgument(format!(
                "{} weights files for the {} model(s) of {models:?}",
                weights.len(),
                1 + others.len()
            )));
        }
        let mut config = EmbedderConfig::new(main);
        config.weights = weights.first().cloned();
        config.ensemble = others
            .into_iter()
            .enumerate()
            .map(|(i, kind)| (kind, weights.get(i + 1).cloned()))
            .collect();
        Ok(config)
    }

    /// The defaults for a model: weights searched for, `torchvision` preprocessing, average
    /// pooling, no normalisation, CPU, fast kernels.
    pub fn new(model: ModelKind) -> Self {
        EmbedderConfig {
            model,
            weights: None,
            preprocess: Preprocess::Torchvision,
            pooling: Pooling::Avg,
            l2_normalize: false,
            device: DeviceChoice::Cpu,
            engine: Engine::Fast,
            head: None,
            ensemble: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in ModelKind::ALL {
            assert_eq!(kind.name().parse::<ModelKind>().unwrap(), kind);
        }
        for p in [Preprocess::Torchvision, Preprocess::Squash, Preprocess::Pad] {
            assert_eq!(p.name().parse::<Preprocess>().unwrap(), p);
        }
        for p in [
            Pooling::Avg,
            Pooling::Max,
            Pooling::Gem(2.5),
            Pooling::Rmac(2),
        ] {
            assert_eq!(p.name().parse::<Pooling>().unwrap(), p);
        }
        for d in [DeviceChoice::Cpu, DeviceChoice::Cuda(3), DeviceChoice::Auto] {
            assert_eq!(d.to_string().parse::<DeviceChoice>().unwrap(), d);
        }
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!("gem".parse::<Pooling>().unwrap(), Pooling::Gem(3.0));
        assert_eq!("rmac".parse::<Pooling>().unwrap(), Pooling::Rmac(3));
        for bad in ["rmac:0", "rmac:6", "rmac:x", "rmac:"] {
            assert!(bad.parse::<Pooling>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_names_are_errors_listing_the_choices() {
        let err = "resnet51".parse::<ModelKind>().unwrap_err().to_string();
        assert!(
            err.contains("resnet51") && err.contains("mobilenet_v2"),
            "{err}"
        );
        assert!("gem:-1".parse::<Pooling>().is_err());
        assert!("gem:nan".parse::<Pooling>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("bicubic".parse::<Preprocess>().is_err());
    }
}

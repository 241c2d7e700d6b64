//! Fast CPU inference for the embedding CNNs (MobileNetV2, EfficientNet-Lite0, ResNet50).
//!
//! A [`Plan`] is compiled once from the same `VarBuilder` weights (same tensor names) as the
//! candle models: BatchNorm is folded into the convolution weights, bias, ReLU/ReLU6 and the
//! residual add are fused into the kernel that produces them, activations are NHWC so that
//! every 1×1 convolution is one GEMM over weights packed at load time (an own AVX-512
//! micro-kernel with the epilogue fused; the `gemm` crate elsewhere), 3×3 stride-1
//! convolutions run Winograd F(4×4, 3×3) or F(2×2, 3×3) (one GEMM per point of the
//! transformed tiles, a quarter or 4/9 of the multiplies) where that beats im2col, other
//! dense convolutions run as im2col + GEMM per block, depthwise convolutions run a direct
//! vectorised kernel, and activation buffers (like the packed weights: aligned, on huge
//! pages when large) are planned once per input shape and reused.
//!
//! Inverted-residual blocks (1×1 expand → depthwise → 1×1 project) run fused, a few rows at
//! a time, so their expanded activations never go out to memory whole. A batch runs one
//! image per thread, each on its own buffers; a single image is split across the threads
//! (bands of rows for the large blocks, each kernel's rows and columns for the small ones).
//!
//! [`Reference`] runs the same networks with stock candle ops, op by op; both have a
//! `profile` that reports time per layer type ([`Profile`]).
//!
//! The kernels are public too ([`kernels`]):
//!
//! ```
//! use wtb_kernels::kernels::{depthwise_conv, Activation, Nhwc, Window};
//!
//! // One 4×4 image with 2 channels, a 3×3 depthwise filter that sums its window, stride 2.
//! let dims = Nhwc { n: 1, h: 4, w: 4, c: 2 };
//! let input = vec![1.0f32; dims.len()];
//! let win = Window::symmetric(4, 4, 3, 2, 1)?;
//! let weights = vec![1.0f32; 9 * 2]; // [tap, channel]
//! let mut out = vec![0.0f32; 2 * 2 * 2];
//! depthwise_conv(&input, dims, win, &weights, &[0.5, -100.0], Activation::Relu, &mut out)?;
//! // Top-left output sees a 2×2 corner of ones (+0.5); channel 1 is clipped by the ReLU.
//! assert_eq!(&out[..2], &[4.5, 0.0]);
//! # Ok::<(), wtb_kernels::KernelError>(())
//! ```
//!
//! With real weights (runs when `../shared` is present):
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use wtb_kernels::Plan;
//!
//! let path = "../../../shared/models/mobilenet_v2_torchvision_imagenet1k.safetensors";
//! if std::path::Path::new(path).exists() {
//!     let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)? };
//!     let plan = Plan::mobilenet_v2(vb)?;
//!     let images = Tensor::zeros((2, 3, 224, 224), DType::F32, &Device::Cpu)?;
//!     assert_eq!(plan.features(&images)?.dims(), &[2, 1280]);
//!     assert_eq!(plan.logits(&images)?.dims(), &[2, 1000]);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod activation;
mod arch;
mod buffer;
mod error;
mod fused;
pub mod kernels;
mod matmul;
mod plan;
mod profile;
mod reference;
mod winograd;

pub use error::{KernelError, Result};
#[doc(hidden)]
pub use plan::fuse_blocks;
pub use plan::{fold_batch_norm, Plan};
pub use profile::{LayerTime, Profile, Stage};
pub use reference::Reference;

//! The activations the kernels fuse into their outputs: one home for the kernels, the GEMM
//! epilogues and the network descriptions.

/// The activation fused into a kernel's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// No activation.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

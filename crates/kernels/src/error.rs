//! Errors of the kernels crate.

/// Everything that can go wrong while building or running an inference plan.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A weight tensor is missing, misshapen or unreadable; `tensor` is its full name.
    #[error("weight tensor `{tensor}`: {source}")]
    Weight {
        /// Full state-dict name of the tensor.
        tensor: String,
        /// What candle reported.
        #[source]
        source: candle_core::Error,
    },
    /// The input tensor cannot be run through the plan.
    #[error("input tensor: {0}")]
    Input(String),
    /// A buffer handed to a kernel has the wrong length.
    #[error("{kernel}: `{buffer}` holds {got} values, expected {expected}")]
    BufferSize {
        /// The kernel that checked the buffer.
        kernel: &'static str,
        /// Which argument.
        buffer: &'static str,
        /// Length the shapes call for.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// Kernel window arguments that cannot describe a convolution or pooling.
    #[error("{kernel}: invalid window: {reason}")]
    Window {
        /// The kernel that checked the window.
        kernel: &'static str,
        /// Why the window was refused.
        reason: String,
    },
    /// `logits` was asked of a plan built without a classifier head.
    #[error("the {0} plan has no classifier head")]
    NoClassifier(&'static str),
    /// A candle operation on an output or reference tensor failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

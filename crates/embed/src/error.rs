//! The error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model, preprocessing, embedding or reading and
/// writing embedding files. Each variant names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A name (model, preprocessing, pooling, device) that is not one of the accepted values.
    #[error("unknown {what} {value:?}; expected one of: {expected}")]
    UnknownName {
        /// What kind of name it is ("model", "preprocessing", ...).
        what: &'static str,
        /// The name that was given.
        value: String,
        /// The accepted values, comma separated.
        expected: String,
    },
    /// No weights file was found in any of the places searched.
    #[error("no weights for {model}; searched:\n{searched}\n{hint}")]
    WeightsNotFound {
        /// The model whose weights are missing.
        model: String,
        /// One line per place searched, with what was tried there.
        searched: String,
        /// What file to put where.
        hint: String,
    },
    /// The weights file does not hold the tensors the model needs (or has them in an unexpected
    /// shape). The message of candle names the tensor.
    #[error("weights {path}: {source}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// The candle error, which names the missing or misshapen tensor.
        #[source]
        source: candle_core::Error,
    },
    /// The weights file holds neither of the key layouts accepted for the model.
    #[error("weights {path}: unrecognised key layout for {model}: {detail}")]
    UnknownLayout {
        /// The weights file.
        path: PathBuf,
        /// The model being loaded.
        model: String,
        /// Which marker tensors were looked for.
        detail: String,
    },
    /// A failure of the tensor library while running a model.
    #[error("model {model}: {source}")]
    Model {
        /// The model that failed.
        model: String,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
    /// The requested device could not be opened.
    #[error("device {device}: {source}")]
    Device {
        /// The device that was asked for.
        device: String,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
    /// The model was loaded without a classifier head, so it cannot classify.
    #[error("model {model} has no classifier head ({reason})")]
    NoClassifier {
        /// The model.
        model: String,
        /// Why there is no head.
        reason: String,
    },
    /// An input image that cannot be used (for example, an empty image or one whose crop is empty).
    #[error("image {index}: {reason}")]
    BadImage {
        /// Its index in the batch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An embeddings file is malformed.
    #[error("embeddings file {path}: {reason}")]
    BadEmbeddingsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An embeddings file was made with a different model or settings than the caller expects.
    #[error("embeddings file {path} does not match: {differences}")]
    MetaMismatch {
        /// The file.
        path: PathBuf,
        /// Every differing field, as `field: file has X, expected Y`.
        differences: String,
    },
    /// A head file is malformed, of another format version, or corrupted.
    #[error("head file {path}: {reason}")]
    BadHeadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A head was trained on another backbone (model, weights, preprocessing, pooling or
    /// dimension) than the vectors it is applied to.
    #[error("head file {path} does not fit these vectors: {differences}")]
    HeadMismatch {
        /// The head file.
        path: PathBuf,
        /// Every differing field.
        differences: String,
    },
    /// Arguments that do not fit together (for example vectors whose length is not ids × dim).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl EmbedError {
    pub(crate) fn model(model: &str) -> impl FnOnce(candle_core::Error) -> EmbedError + '_ {
        move |source| EmbedError::Model {
            model: model.to_string(),
            source,
        }
    }
}

//! One error type for the whole crate. Library code never panics on user input: every
//! check on shapes, ids, sizes and files ends up as one of these variants.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No adapter could be found on the backends that were tried.
    #[error("no GPU adapter found (backends tried: {backends}). {hint}")]
    NoAdapter { backends: String, hint: String },

    /// `WGPU_ADAPTER_NAME` (or the option) named an adapter that does not exist.
    #[error("no adapter name contains {wanted:?}; available adapters: {available}")]
    AdapterNotFound { wanted: String, available: String },

    /// The adapter refused to create a device.
    #[error("could not open a device on {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },

    /// A tensor has the wrong shape for an operation.
    #[error("{op}: {what} has shape {found:?}, expected {expected}")]
    Shape {
        op: &'static str,
        what: &'static str,
        expected: String,
        found: Vec<usize>,
    },

    /// A tensor has the wrong element type.
    #[error("{op}: {what} has dtype {found:?}, expected {expected:?}")]
    DType {
        op: &'static str,
        what: &'static str,
        expected: crate::DType,
        found: crate::DType,
    },

    /// Host data and the declared shape disagree.
    #[error("{what}: {len} values given for shape {shape:?} ({expected} values)")]
    DataLength {
        what: &'static str,
        len: usize,
        shape: Vec<usize>,
        expected: usize,
    },

    /// A tensor or dispatch is larger than the adapter allows.
    #[error("{what} needs {needed} but the adapter's limit is {limit} ({limit_name})")]
    OverLimit {
        what: String,
        needed: u64,
        limit: u64,
        limit_name: &'static str,
    },

    /// A token id is not below the vocabulary size.
    #[error("token id {id} at position {position} is out of range (vocabulary size {vocab})")]
    TokenOutOfRange {
        id: u32,
        position: usize,
        vocab: usize,
    },

    /// A class label is neither a valid class nor the ignore index.
    #[error("label {label} at position {position} is out of range (classes 0..{classes}, ignore index {ignore_index})")]
    LabelOutOfRange {
        label: i32,
        position: usize,
        classes: usize,
        ignore_index: i32,
    },

    /// A kernel and the host code launching it disagree: a binding that is missing, unknown
    /// or of the wrong kind, a parameter block of the wrong size, a variant whose text is
    /// not in the source, WGSL that does not parse. A bug in the kernel or its launcher
    /// (yours, for a custom kernel), reported instead of compiling something else.
    #[error("kernel {kernel}: {message}")]
    Kernel { kernel: String, message: String },

    /// Any other invalid argument.
    #[error("{0}")]
    InvalidArgument(String),

    /// The GPU reported an error (validation, out of memory, internal) or the device was lost.
    #[error("GPU error during {during}: {message}")]
    Gpu {
        during: &'static str,
        message: String,
    },

    /// Training produced an infinity or NaN. The optimizer skipped the step, so the model
    /// holds the weights from before it and no checkpoint was written for it.
    #[error("step {step}: non-finite values, first in {tensor} ({during}); the update was skipped and the last checkpoint is intact")]
    NonFinite {
        step: u64,
        tensor: String,
        during: String,
    },

    /// Waiting for the GPU took longer than the context's timeout.
    #[error("GPU work did not finish within {0:?}")]
    Timeout(std::time::Duration),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A file's contents are not what they claim to be.
    #[error("{path}: {message}")]
    Format { path: String, message: String },
}

impl Error {
    pub(crate) fn shape(
        op: &'static str,
        what: &'static str,
        expected: impl fmt::Display,
        found: &[usize],
    ) -> Self {
        Error::Shape {
            op,
            what,
            expected: expected.to_string(),
            found: found.to_vec(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

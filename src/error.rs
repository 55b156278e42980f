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
    NoAdapter {
        /// The backends that were searched.
        backends: String,
        /// How to install one.
        hint: String,
    },

    /// `WGPU_ADAPTER_NAME` (or the option) named an adapter that does not exist.
    #[error("no adapter name contains {wanted:?}; available adapters: {available}")]
    AdapterNotFound {
        /// The name asked for.
        wanted: String,
        /// The adapters there are.
        available: String,
    },

    /// The adapter refused to create a device.
    #[error("could not open a device on {adapter}: {message}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        message: String,
    },

    /// A tensor has the wrong shape for an operation.
    #[error("{op}: {what} has shape {found:?}, expected {expected}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// Which of its tensors.
        what: &'static str,
        /// What it needs.
        expected: String,
        /// The shape given.
        found: Vec<usize>,
    },

    /// A tensor has the wrong element type.
    #[error("{op}: {what} has dtype {found:?}, expected {expected:?}")]
    DType {
        /// The operation.
        op: &'static str,
        /// Which of its tensors.
        what: &'static str,
        /// The type it needs.
        expected: crate::DType,
        /// The type given.
        found: crate::DType,
    },

    /// Host data and the declared shape disagree.
    #[error("{what}: {len} values given for shape {shape:?} ({expected} values)")]
    DataLength {
        /// What was being filled.
        what: &'static str,
        /// Values given.
        len: usize,
        /// The shape they were for.
        shape: Vec<usize>,
        /// Values that shape holds.
        expected: usize,
    },

    /// A tensor or dispatch is larger than the adapter allows.
    #[error("{what} needs {needed} but the adapter's limit is {limit} ({limit_name})")]
    OverLimit {
        /// What was too large.
        what: String,
        /// What it needs.
        needed: u64,
        /// What the adapter allows.
        limit: u64,
        /// The limit's name in wgpu (and what to do about it).
        limit_name: &'static str,
    },

    /// A token id is not below the vocabulary size.
    #[error("token id {id} at position {position} is out of range (vocabulary size {vocab})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Its position in the ids given.
        position: usize,
        /// The vocabulary size.
        vocab: usize,
    },

    /// A class label is neither a valid class nor the ignore index.
    #[error("label {label} at position {position} is out of range (classes 0..{classes}, ignore index {ignore_index})")]
    LabelOutOfRange {
        /// The label.
        label: i32,
        /// Its position in the labels given.
        position: usize,
        /// The number of classes.
        classes: usize,
        /// The label that means "no label".
        ignore_index: i32,
    },

    /// A kernel and the host code launching it disagree: a binding that is missing, unknown
    /// or of the wrong kind, a parameter block of the wrong size, a variant whose text is
    /// not in the source, WGSL that does not parse. A bug in the kernel or its launcher
    /// (yours, for a custom kernel), reported instead of compiling something else.
    #[error("kernel {kernel}: {message}")]
    Kernel {
        /// `shader::entry`.
        kernel: String,
        /// What disagrees.
        message: String,
    },

    /// The work needs a device feature the adapter does not offer (e.g. f16 tensors without
    /// `SHADER_F16`, which wgpu's GL backend never offers).
    #[error("{what} needs the device feature {feature}, which {adapter} does not offer")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// wgpu's name for the missing feature.
        feature: &'static str,
        /// The adapter, with its backend.
        adapter: String,
    },

    /// Any other invalid argument.
    #[error("{0}")]
    InvalidArgument(String),

    /// The GPU reported an error (validation, out of memory, internal) or the device was lost.
    #[error("GPU error during {during}: {message}")]
    Gpu {
        /// What the library was doing.
        during: &'static str,
        /// wgpu's message.
        message: String,
    },

    /// Training produced an infinity or NaN. The optimizer skipped the step, so the model
    /// holds the weights from before it and no checkpoint was written for it.
    #[error("step {step}: non-finite values, first in {tensor} ({during}); the update was skipped and the last checkpoint is intact")]
    NonFinite {
        /// The training step.
        step: u64,
        /// The first tensor that held an infinity or NaN.
        tensor: String,
        /// The call that wrote it.
        during: String,
    },

    /// Waiting for the GPU took longer than the context's timeout.
    #[error("GPU work did not finish within {0:?}")]
    Timeout(std::time::Duration),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file's contents are not what they claim to be.
    #[error("{path}: {message}")]
    Format {
        /// The file (and tensor, where one is at fault).
        path: String,
        /// What is wrong.
        message: String,
    },
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

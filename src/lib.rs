//! # roformer-wgpu
//!
//! Train and run RoFormer transformers on any GPU through WebGPU. WGSL compute shaders
//! implement every op forward and backward; a [`Context`] owns the device and the compiled
//! pipelines, [`Tensor`]s hold the data, and each op builds [`Dispatch`]es that can be run
//! once (the eager functions) or recorded and replayed.

pub mod check;
mod context;
mod dispatch;
mod error;
pub mod ops;
mod tensor;

#[cfg(test)]
mod testing;

pub use context::{Capabilities, Context, ContextOptions, Shader};
pub use dispatch::Dispatch;
pub use error::{Error, Result};
pub use tensor::{DType, Element, Tensor};

// Re-exported so applications can hand us their own device without a version mismatch.
pub use wgpu;

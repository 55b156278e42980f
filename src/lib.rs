// The README is the crate documentation, so its examples are compiled and run as doctests.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod check;
mod context;
mod dispatch;
mod error;
mod family;
pub mod graph;
pub mod io;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
#[cfg(feature = "text")]
pub mod pipelines;
pub mod readback;
pub mod shader;
mod tensor;
#[cfg(feature = "text")]
pub mod text;
pub mod timing;
pub mod train;

#[cfg(test)]
mod testing;

pub use context::{Capabilities, Context, ContextOptions, SetupCosts};
pub use dispatch::{Dispatch, DispatchBuilder, Work};
pub use error::{Error, Result};
pub use family::{one_form, KernelFamily, ParamBlock, Variant};
pub use shader::Shader;
pub use tensor::{DType, Element, Tensor};

// Re-exported so applications can hand us their own device without a version mismatch.
pub use wgpu;

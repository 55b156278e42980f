// The README is the crate documentation, so its example is compiled and run as a doctest.
#![doc = include_str!("../README.md")]

pub mod check;
mod context;
mod dispatch;
mod error;
pub mod graph;
pub mod io;
pub mod listops;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod profile;
mod tensor;
pub mod train;
pub mod verify;

#[cfg(test)]
mod testing;

pub use context::{Capabilities, Context, ContextOptions, SetupCosts, Shader};
pub use dispatch::Dispatch;
pub use error::{Error, Result};
pub use tensor::{DType, Element, Tensor};

// Re-exported so applications can hand us their own device without a version mismatch.
pub use wgpu;

//! The examples' shared code, kept out of the library: ListOps data, Pathfinder and Path-X
//! data, the ListOps trainer with its checkpoints, the fixture check behind `verify`, the
//! cost model and the adapter ceilings behind `bench`, the benchmark inputs, and the
//! examples' command-line and plot helpers. The examples, `bench`, the browser example and
//! the integration tests use it; the library (`roformer-wgpu`) never does.

#[cfg(not(target_arch = "wasm32"))]
pub mod args;
pub mod cost_model;
#[cfg(not(target_arch = "wasm32"))]
pub mod fonts;
pub mod inputs;
pub mod listops;
pub mod pathfinder;
#[cfg(not(target_arch = "wasm32"))]
pub mod profile;
pub mod train;
pub mod verify;

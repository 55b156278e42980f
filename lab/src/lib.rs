//! The examples' shared code, kept out of the library: ListOps, Pathfinder and Path-X data,
//! the LRA tasks as datasets of the library's trainer (`roformer_wgpu::train`), the fixture
//! check behind `verify`, the cost model and the adapter ceilings behind `bench`, the
//! benchmark inputs, and the examples' command-line and plot helpers. The examples, `bench`,
//! the browser example and the integration tests use it; the library (`roformer-wgpu`) never
//! does.

#[cfg(not(target_arch = "wasm32"))]
pub mod args;
pub mod cost_model;
#[cfg(not(target_arch = "wasm32"))]
pub mod fonts;
pub mod inputs;
pub mod listops;
pub mod lra;
pub mod pathfinder;
#[cfg(not(target_arch = "wasm32"))]
pub mod profile;
pub mod verify;

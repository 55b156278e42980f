//! The example applications' own code: ListOps data, the trainer with its checkpoints, the
//! fixture check behind `verify`, the adapter ceilings behind `bench`, and the relative L2
//! error every test uses. Public so the examples and integration tests can share it, and
//! hidden from the documentation: it is not the library's API and may change with the
//! examples. The library is everything else (context, tensors, kernels, graph, model,
//! optimizer, io).

pub mod check;
pub mod cost_model;
pub mod listops;
#[cfg(not(target_arch = "wasm32"))]
pub mod profile;
pub mod train;
pub mod verify;

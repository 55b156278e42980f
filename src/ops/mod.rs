//! Kernel families. Each module owns one WGSL file in `shaders/`: its pipelines, its
//! forward and backward entry points, a plain CPU reference in f64 (`reference`), and the
//! tests that hold the GPU to that reference.

pub mod elementwise;

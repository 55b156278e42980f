//! Kernel families. Each module owns one WGSL file in `shaders/`: its pipelines, its
//! forward and backward entry points, a plain CPU reference in f64 (`reference`), and the
//! tests that hold the GPU to that reference.

pub mod adamw;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod gelu;
pub mod heads;
pub mod layernorm;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod softmax;

//! Benchmark inputs, shared by `examples/bench` and `benches/kernels.rs` (`#[path]`-included).

use roformer_wgpu::{Context, DType, Tensor};

/// Deterministic values in [-0.5, 0.5): no randomness needed to time a kernel.
pub fn filled(ctx: &Context, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_slice(ctx, &data, shape).unwrap()
}

pub fn zeros(ctx: &Context, shape: &[usize]) -> Tensor {
    Tensor::zeros(ctx, shape, DType::F32).unwrap()
}

//! Benchmark inputs, shared by `examples/bench` and `benches/kernels.rs`.

use roformer_wgpu::{Context, DType, Tensor};

/// Deterministic values in [-0.5, 0.5): no randomness needed to time a kernel.
pub fn filled(ctx: &Context, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_slice(ctx, &data, shape).unwrap()
}

/// Zeros of `shape` (f32).
pub fn zeros(ctx: &Context, shape: &[usize]) -> Tensor {
    Tensor::zeros(ctx, shape, DType::F32).unwrap()
}

/// [`filled`]'s values stored as `dtype` (f32, or f16 rounded to nearest).
pub fn filled_as(ctx: &Context, shape: &[usize], dtype: DType) -> Tensor {
    let t = filled(ctx, shape);
    if dtype == DType::F32 {
        return t;
    }
    roformer_wgpu::ops::elementwise::cast(ctx, &t, dtype).unwrap()
}

/// Zeros of `shape` stored as `dtype`.
pub fn zeros_as(ctx: &Context, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(ctx, shape, dtype).unwrap()
}

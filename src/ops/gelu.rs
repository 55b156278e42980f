//! GELU, exact erf form (HF `hidden_act = "gelu"`), forward and backward.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::Result;
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::shader::Shader;
use crate::tensor::Tensor;

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "gelu",
    source: concat!(
        include_str!("../../shaders/gelu.wgsl"),
        include_str!("../../shaders/lib/gelu.wgsl")
    ),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

fn params(n: usize) -> Params {
    Params {
        n: n as u32,
        _p0: 0,
        _p1: 0,
        _p2: 0,
    }
}

/// `y = gelu(x)`.
pub fn plan_forward(ctx: &Context, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    x.expect_float("gelu", "x")?;
    y.expect_shape("gelu", "y", x.shape())?;
    y.expect_dtype("gelu", "y", x.dtype())?;
    DispatchBuilder::family(ctx, &FAMILY, "forward")
        .element_type("T", x.dtype())
        .params(&params(x.numel()))
        .read("x", x)
        .write("y", y)
        .build(ctx.grid_1d((x.numel() as u64).div_ceil(256))?)
}

/// `dx = dy · gelu'(x)`, from the forward input x.
pub fn plan_backward(ctx: &Context, x: &Tensor, dy: &Tensor, dx: &Tensor) -> Result<Dispatch> {
    x.expect_float("gelu backward", "x")?;
    dy.expect_shape("gelu backward", "dy", x.shape())?;
    dx.expect_shape("gelu backward", "dx", x.shape())?;
    dy.expect_dtype("gelu backward", "dy", x.dtype())?;
    dx.expect_dtype("gelu backward", "dx", x.dtype())?;
    DispatchBuilder::family(ctx, &FAMILY, "backward")
        .element_type("T", x.dtype())
        .params(&params(x.numel()))
        .read("x", x)
        .read("dy", dy)
        .write("dx", dx)
        .build(ctx.grid_1d((x.numel() as u64).div_ceil(256))?)
}

/// `gelu(x)` in a new tensor.
pub fn forward(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    let y = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    ctx.submit(&[plan_forward(ctx, x, &y)?])?;
    Ok(y)
}

/// `dx` in a new tensor.
pub fn backward(ctx: &Context, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dx = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    ctx.submit(&[plan_backward(ctx, x, dy, &dx)?])?;
    Ok(dx)
}

/// CPU reference, in f64 (libm's erf).
pub mod reference {
    /// The error function (libm).
    pub fn erf(x: f64) -> f64 {
        libm::erf(x)
    }

    /// `0.5 x (1 + erf(x / √2))`.
    pub fn forward(x: f64) -> f64 {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    }

    /// `dy · gelu'(x)`.
    pub fn backward(x: f64, dy: f64) -> f64 {
        let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        dy * (cdf + x * pdf)
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params { n, _p0, _p1, _p2 }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::DType;

    #[test]
    fn forward_and_backward_match_reference() {
        let ctx = &ctx();
        let mut rng = rng(10);
        for n in [1usize, 7, 33, 129, 5000] {
            let mut x = randn(&mut rng, n);
            // Cover both branches of erf and the tails (where the value is ~0 and a
            // relative error of a lone element means nothing, so not at n = 1).
            for (i, v) in x.iter_mut().enumerate().take(8).filter(|_| n > 1) {
                *v = [-9.0, -3.0, -0.93, -0.5, 0.0, 0.92, 2.5, 12.0][i];
            }
            let dy = randn(&mut rng, n);
            let tx = upload(ctx, &x, &[n]);
            let y = poisoned(ctx, &[n]);
            ctx.run(&[plan_forward(ctx, &tx, &y).unwrap()]).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| reference::forward(v as f64)).collect();
            assert_close(&format!("gelu n={n}"), &download(ctx, &y), &want, 1e-6);
            let dx = poisoned(ctx, &[n]);
            ctx.run(&[plan_backward(ctx, &tx, &upload(ctx, &dy, &[n]), &dx).unwrap()])
                .unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&v, &g)| reference::backward(v as f64, g as f64))
                .collect();
            assert_close(
                &format!("gelu backward n={n}"),
                &download(ctx, &dx),
                &want,
                1e-6,
            );
        }
    }

    #[test]
    fn erf_is_accurate_over_its_range() {
        // Through gelu: dense grid on [-6, 6], checked elementwise against libm. For x < -3,
        // 1 + erf(x/√2) cancels in f32 (as in torch's f32 GELU): the error is absolute, ~1e-7.
        let ctx = &ctx();
        let x: Vec<f32> = (0..4801).map(|i| -6.0 + i as f32 * 0.0025).collect();
        let y = forward(ctx, &upload(ctx, &x, &[x.len()])).unwrap();
        for (v, g) in x.iter().zip(download(ctx, &y)) {
            let want = reference::forward(*v as f64);
            let tol = 2e-7 + 1e-6 * want.abs();
            assert!(
                (g as f64 - want).abs() <= tol,
                "gelu({v}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn f16_forward_and_backward_match_reference() {
        let ctx = &ctx();
        if !has_f16(ctx, "gelu f16") {
            return;
        }
        let mut rng = rng(13);
        for n in [1usize, 7, 33, 129, 5000] {
            let x = round_f16(&randn(&mut rng, n));
            let dy = round_f16(&randn(&mut rng, n));
            let tx = upload_as(ctx, &x, &[n], DType::F16);
            let y = poisoned_as(ctx, &[n], DType::F16);
            ctx.run(&[plan_forward(ctx, &tx, &y).unwrap()]).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| reference::forward(v as f64)).collect();
            assert_close(
                &format!("f16 gelu n={n}"),
                &download_f32(ctx, &y),
                &want,
                1e-3,
            );
            let dx = poisoned_as(ctx, &[n], DType::F16);
            let tdy = upload_as(ctx, &dy, &[n], DType::F16);
            ctx.run(&[plan_backward(ctx, &tx, &tdy, &dx).unwrap()])
                .unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&v, &g)| reference::backward(v as f64, g as f64))
                .collect();
            assert_close(
                &format!("f16 gelu backward n={n}"),
                &download_f32(ctx, &dx),
                &want,
                1e-3,
            );
        }
    }
}

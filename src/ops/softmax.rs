//! Softmax over the last dimension, with a scale, an additive mask (padding) and a causal
//! option, forward and backward. In attention this is `softmax(QKᵀ/√d + mask)`.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock};
use crate::ops::rows;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "softmax",
    source: concat!(
        include_str!("../../shaders/softmax.wgsl"),
        include_str!("../../shaders/lib/rows.wgsl")
    ),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: rows::variants,
    params: param_blocks,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    rows_per_mask: u32,
    has_mask: u32,
    causal: u32,
    tq: u32,
    scale: f32,
    _pad: u32,
}

/// What the softmax is taken of: `softmax(scale · x + mask)`.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxOptions<'a> {
    /// Multiplies x before the mask is added.
    pub scale: f32,
    /// Additive mask `[x.shape[0], n]`, broadcast over every middle dimension
    /// (in attention: `[B, T_k]` for scores `[B, H, T_q, T_k]`).
    pub mask: Option<&'a Tensor>,
    /// Query `q` (second-to-last index) sees keys `j <= q + (n - T_q)` only.
    pub causal: bool,
}

impl Default for SoftmaxOptions<'_> {
    fn default() -> Self {
        SoftmaxOptions {
            scale: 1.0,
            mask: None,
            causal: false,
        }
    }
}

/// `y = softmax(scale · x + mask)` over the last dimension of x; y shaped like x.
pub fn plan_forward(
    ctx: &Context,
    x: &Tensor,
    opts: &SoftmaxOptions<'_>,
    y: &Tensor,
) -> Result<Dispatch> {
    x.expect_float("softmax", "x")?;
    y.expect_shape("softmax", "y", x.shape())?;
    y.expect_dtype("softmax", "y", x.dtype())?;
    let shape = x.shape();
    let n = x.row_len("softmax", "x")?;
    let rows = x.numel() / n;
    let mut rows_per_mask = rows;
    if let Some(mask) = opts.mask {
        mask.expect_dtype("softmax", "mask", DType::F32)?;
        if shape.len() < 2 {
            return Err(Error::shape(
                "softmax",
                "x",
                "at least 2 dimensions with a mask",
                shape,
            ));
        }
        mask.expect_shape("softmax", "mask", &[shape[0], n])?;
        rows_per_mask = rows / shape[0];
    }
    let tq = if shape.len() >= 2 {
        shape[shape.len() - 2]
    } else {
        1
    };
    if opts.causal && tq > n {
        return Err(Error::shape(
            "softmax",
            "x",
            "[..., T_q, T_k] with T_q <= T_k for a causal mask",
            shape,
        ));
    }
    DispatchBuilder::family(ctx, &FAMILY, "forward")
        .element_type("T", x.dtype())
        .variant(rows::variant(ctx, n))
        .params(&Params {
            rows: rows as u32,
            n: n as u32,
            rows_per_mask: rows_per_mask as u32,
            has_mask: opts.mask.is_some() as u32,
            causal: opts.causal as u32,
            tq: tq as u32,
            scale: opts.scale,
            _pad: 0,
        })
        .read("x", x)
        .read_opt("mask", opts.mask)
        .write("y", y)
        .build(ctx.grid_1d(rows as u64)?)
}

/// The softmax in a new tensor.
pub fn forward(ctx: &Context, x: &Tensor, opts: &SoftmaxOptions<'_>) -> Result<Tensor> {
    let y = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    ctx.submit(&[plan_forward(ctx, x, opts, &y)?])?;
    Ok(y)
}

/// `dx = scale · y ⊙ (dy − Σ dy ⊙ y)`, from the forward output y (masks need no gradient).
pub fn plan_backward(
    ctx: &Context,
    y: &Tensor,
    dy: &Tensor,
    scale: f32,
    dx: &Tensor,
) -> Result<Dispatch> {
    y.expect_float("softmax backward", "y")?;
    dy.expect_shape("softmax backward", "dy", y.shape())?;
    dx.expect_shape("softmax backward", "dx", y.shape())?;
    dy.expect_dtype("softmax backward", "dy", y.dtype())?;
    dx.expect_dtype("softmax backward", "dx", y.dtype())?;
    let n = y.row_len("softmax backward", "y")?;
    let rows = y.numel() / n;
    DispatchBuilder::family(ctx, &FAMILY, "backward")
        .element_type("T", y.dtype())
        .variant(rows::variant(ctx, n))
        .params(&Params {
            rows: rows as u32,
            n: n as u32,
            rows_per_mask: rows as u32,
            has_mask: 0,
            causal: 0,
            tq: 1,
            scale,
            _pad: 0,
        })
        .read("y_saved", y)
        .read("dy", dy)
        .write("dx", dx)
        .build(ctx.grid_1d(rows as u64)?)
}

/// `dx` in a new tensor, from the forward's output.
pub fn backward(ctx: &Context, y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    let dx = Tensor::zeros(ctx, y.shape(), y.dtype())?;
    ctx.submit(&[plan_backward(ctx, y, dy, scale, &dx)?])?;
    Ok(dx)
}

/// CPU reference, in f64.
pub mod reference {
    /// Rows of length n; `mask` is `(values, rows_per_mask)`; `causal` gives `T_q`.
    pub fn forward(
        x: &[f64],
        n: usize,
        scale: f64,
        mask: Option<(&[f64], usize)>,
        causal: Option<usize>,
    ) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for (r, (xr, yr)) in x.chunks(n).zip(y.chunks_mut(n)).enumerate() {
            let allowed = causal.map_or(n, |tq| (r % tq + (n - tq) + 1).min(n));
            let s: Vec<f64> = (0..allowed)
                .map(|j| scale * xr[j] + mask.map_or(0.0, |(m, per)| m[(r / per) * n + j]))
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
            for j in 0..allowed {
                yr[j] = (s[j] - max).exp() / sum;
            }
        }
        y
    }

    /// `dx` of rows of `n`, from the output y.
    pub fn backward(y: &[f64], dy: &[f64], n: usize, scale: f64) -> Vec<f64> {
        let mut dx = vec![0.0; y.len()];
        for ((yr, dyr), dxr) in y.chunks(n).zip(dy.chunks(n)).zip(dx.chunks_mut(n)) {
            let d: f64 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
            for j in 0..n {
                dxr[j] = scale * yr[j] * (dyr[j] - d);
            }
        }
        dx
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            rows,
            n,
            rows_per_mask,
            has_mask,
            causal,
            tq,
            scale,
            _pad
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn forward_and_backward_match_reference_with_mask_and_causal() {
        let ctx = &ctx();
        let mut rng = rng(7);
        // [B, H, Tq, Tk]
        for_each_row_layout(ctx, |layout| {
            for &(b, h, tq, tk) in &[
                (1, 1, 1, 1),
                (2, 3, 7, 7),
                (1, 2, 33, 33),
                (2, 1, 5, 129),
                (1, 1, 3, 700),
            ] {
                for causal in [false, true] {
                    for masked in [false, true] {
                        let n = b * h * tq * tk;
                        let x = randn(&mut rng, n);
                        // Padding at the tail of each batch row, as HF does: -3.4e38.
                        let mask: Vec<f32> = (0..b * tk)
                            .map(|i| {
                                if i % tk >= tk - (i / tk) * 2 && tk > 2 {
                                    -f32::MAX
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let tx = upload(ctx, &x, &[b, h, tq, tk]);
                        let tm = upload(ctx, &mask, &[b, tk]);
                        let opts = SoftmaxOptions {
                            scale: 0.37,
                            mask: masked.then_some(&tm),
                            causal,
                        };
                        let y = poisoned(ctx, &[b, h, tq, tk]);
                        ctx.run(&[plan_forward(ctx, &tx, &opts, &y).unwrap()])
                            .unwrap();
                        let m64 = to_f64(&mask);
                        let want = reference::forward(
                            &to_f64(&x),
                            tk,
                            0.37,
                            masked.then_some((&m64[..], h * tq)),
                            causal.then_some(tq),
                        );
                        let what = format!(
                            "softmax [{b},{h},{tq},{tk}] causal={causal} mask={masked}, {layout}"
                        );
                        let got = download(ctx, &y);
                        assert_close(&what, &got, &want, 1e-5);

                        let dy = randn(&mut rng, n);
                        let tdy = upload(ctx, &dy, &[b, h, tq, tk]);
                        let dx = poisoned(ctx, &[b, h, tq, tk]);
                        ctx.run(&[plan_backward(ctx, &y, &tdy, 0.37, &dx).unwrap()])
                            .unwrap();
                        let want_dx = reference::backward(&want, &to_f64(&dy), tk, 0.37);
                        assert_close(
                            &format!("{what} backward"),
                            &download(ctx, &dx),
                            &want_dx,
                            1e-5,
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let ctx = &ctx();
        let x = upload(ctx, &[1000.0, 1001.0, -1000.0, 999.0], &[1, 4]);
        let y = forward(ctx, &x, &SoftmaxOptions::default()).unwrap();
        let want = reference::forward(&[1000.0, 1001.0, -1000.0, 999.0], 4, 1.0, None, None);
        assert_close("large scores", &download(ctx, &y), &want, 1e-6);
    }

    /// A row masked everywhere: with -inf it is all zeros (our rule: nothing to attend to),
    /// with HF's finite -3.4e38 it is uniform, as in PyTorch (the scores tie after rounding).
    #[test]
    fn fully_masked_rows_are_zeros_or_uniform() {
        let ctx = &ctx();
        let n = 300; // over one thread's share of the row, so partial results are combined
        let x = randn(&mut rng(3), 2 * n);
        let mut mask = vec![f32::NEG_INFINITY; n];
        mask.extend(vec![-f32::MAX; n]);
        let tx = upload(ctx, &x, &[2, 1, 1, n]);
        let tm = upload(ctx, &mask, &[2, n]);
        let opts = SoftmaxOptions {
            scale: 0.37,
            mask: Some(&tm),
            causal: false,
        };
        let y = poisoned(ctx, &[2, 1, 1, n]);
        ctx.run(&[plan_forward(ctx, &tx, &opts, &y).unwrap()])
            .unwrap();
        let got = download(ctx, &y);
        let mut want = vec![0.0; n];
        want.extend(vec![1.0 / n as f64; n]);
        assert_close("fully masked rows", &got, &want, 1e-6);
    }

    #[test]
    fn bad_mask_shape_is_an_error() {
        let ctx = &ctx();
        let x = upload(ctx, &[0.0; 12], &[2, 2, 3]);
        let m = upload(ctx, &[0.0; 3], &[1, 3]);
        let opts = SoftmaxOptions {
            mask: Some(&m),
            ..Default::default()
        };
        assert!(matches!(forward(ctx, &x, &opts), Err(Error::Shape { .. })));
    }

    #[test]
    fn f16_tensors_match_reference_with_an_f32_mask() {
        let ctx = &ctx();
        if !has_f16(ctx, "softmax f16") {
            return;
        }
        let mut rng = rng(17);
        let h16 = DType::F16;
        for_each_row_layout(ctx, |layout| {
            for &(b, h, tq, tk, causal) in &[
                (1, 1, 1, 1, false),
                (2, 3, 7, 7, true),
                (1, 2, 33, 33, false),
                (2, 1, 5, 129, true),
                (1, 1, 3, 700, false),
            ] {
                let n = b * h * tq * tk;
                let x = round_f16(
                    &randn(&mut rng, n)
                        .iter()
                        .map(|v| v * 4.0)
                        .collect::<Vec<_>>(),
                );
                // HF's padding value, which f16 could not hold: the mask stays f32.
                let mask: Vec<f32> = (0..b * tk)
                    .map(|i| {
                        if i % tk + 1 == tk && tk > 2 {
                            -f32::MAX
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let tx = upload_as(ctx, &x, &[b, h, tq, tk], h16);
                let tm = upload(ctx, &mask, &[b, tk]);
                let opts = SoftmaxOptions {
                    scale: 0.37,
                    mask: Some(&tm),
                    causal,
                };
                let y = poisoned_as(ctx, &[b, h, tq, tk], h16);
                ctx.run(&[plan_forward(ctx, &tx, &opts, &y).unwrap()])
                    .unwrap();
                let want = reference::forward(
                    &to_f64(&x),
                    tk,
                    0.37,
                    Some((&to_f64(&mask)[..], h * tq)),
                    causal.then_some(tq),
                );
                let what = format!("f16 softmax [{b},{h},{tq},{tk}] causal={causal}, {layout}");
                let got = download_f32(ctx, &y);
                assert_close(&what, &got, &want, 2e-3);

                let dy = round_f16(&randn(&mut rng, n));
                let dx = poisoned_as(ctx, &[b, h, tq, tk], h16);
                let tdy = upload_as(ctx, &dy, &[b, h, tq, tk], h16);
                ctx.run(&[plan_backward(ctx, &y, &tdy, 0.37, &dx).unwrap()])
                    .unwrap();
                // From the f16 probabilities the kernel saved: the backward's own error.
                let want_dx = reference::backward(&to_f64(&got), &to_f64(&dy), tk, 0.37);
                assert_close(
                    &format!("{what} backward"),
                    &download_f32(ctx, &dx),
                    &want_dx,
                    3e-3,
                );
            }
        });
    }
}

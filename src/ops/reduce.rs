//! Column sums (`out[c] = Σ_r x[r, c]`): bias gradients, and summing per-batch gradients.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "reduce",
    source: concat!(
        include_str!("../../shaders/reduce.wgsl"),
        include_str!("../../shaders/lib/columns.wgsl")
    ),
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    beta: f32,
    _pad: u32,
}

/// `out[c] = (accumulate ? out[c] : 0) + Σ_r x[r, c]`, where x is read as `[rows, cols]`
/// with `cols = out.numel()` (x's element count must be a multiple of it).
pub fn plan_sum_rows(
    ctx: &Context,
    x: &Tensor,
    out: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    x.expect_dtype("sum_rows", "x", DType::F32)?;
    out.expect_dtype("sum_rows", "out", DType::F32)?;
    let cols = out.numel();
    if x.numel() % cols != 0 {
        return Err(Error::shape(
            "sum_rows",
            "x",
            format!(
                "a multiple of {cols} elements (out has shape {:?})",
                out.shape()
            ),
            x.shape(),
        ));
    }
    let rows = x.numel() / cols;
    DispatchBuilder::new(ctx, &SHADER, "sum_rows")
        .params(&Params {
            rows: rows as u32,
            cols: cols as u32,
            beta: if accumulate { 1.0 } else { 0.0 },
            _pad: 0,
        })
        .read("x", x)
        .write("out", out)
        // 4 threads per column walk every row
        .serial_steps(rows.div_ceil(4) as u64)
        .build(ctx.grid_1d((cols as u64).div_ceil(64))?)
}

/// Sums `x` (shape `[..., cols]`) over every leading dimension into a new `[cols]` tensor.
pub fn sum_rows(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let out = Tensor::zeros(ctx, &[cols], DType::F32)?;
    ctx.submit(&[plan_sum_rows(ctx, x, &out, false)?])?;
    Ok(out)
}

/// CPU reference, in f64.
pub mod reference {
    /// Column sums of a row-major `[rows, cols]` matrix.
    pub fn sum_rows(x: &[f64], cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; cols];
        for row in x.chunks(cols) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        out
    }
}

/// The host mirror of the shader's parameter block, field by field (for the layout test).
#[cfg(test)]
pub(crate) fn params_layouts() -> Vec<(&'static Shader, &'static str, crate::shader::StructLayout)>
{
    vec![(
        &SHADER,
        "Params",
        crate::host_layout!(Params {
            rows,
            cols,
            beta,
            _pad
        }),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn sum_rows_matches_reference() {
        let ctx = &ctx();
        let mut rng = rng(2);
        for (rows, cols) in [(1, 1), (7, 33), (129, 7), (33, 129), (300, 65)] {
            let x = randn(&mut rng, rows * cols);
            let tx = upload(ctx, &x, &[rows, cols]);
            let out = poisoned(ctx, &[cols]);
            ctx.run(&[plan_sum_rows(ctx, &tx, &out, false).unwrap()])
                .unwrap();
            let want = reference::sum_rows(&to_f64(&x), cols);
            assert_close(
                &format!("sum_rows {rows}x{cols}"),
                &download(ctx, &out),
                &want,
                1e-5,
            );
        }
    }

    #[test]
    fn sum_rows_accumulates() {
        let ctx = &ctx();
        let x = upload(ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let out = upload(ctx, &[10.0, 20.0], &[2]);
        ctx.run(&[plan_sum_rows(ctx, &x, &out, true).unwrap()])
            .unwrap();
        assert_eq!(download(ctx, &out), vec![14.0, 26.0]);
    }
}

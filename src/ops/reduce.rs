//! Column sums (`out[c] = Σ_r x[r, c]`): bias gradients, and summing per-batch gradients.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
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

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    beta: f32,
    rows_per_chunk: u32,
}

/// Workgroups a column sum aims to launch: enough for every multiprocessor of a big GPU
/// several times over (an H200 has 132).
const TARGET_WORKGROUPS: usize = 512;
/// Fewest rows a chunk sums (below it, the partial sums cost more than they save).
const MIN_CHUNK_ROWS: usize = 32;
/// Up to this many rows, one pass (a second would cost more than it saves).
const SINGLE_PASS_ROWS: usize = 256;

/// Chunks to cut `rows` into for `cols` columns: one when the column blocks alone fill the
/// GPU, else enough to reach [`TARGET_WORKGROUPS`].
pub(crate) fn chunks_for(rows: usize, cols: usize) -> usize {
    if rows <= SINGLE_PASS_ROWS {
        return 1;
    }
    let col_blocks = cols.div_ceil(64);
    TARGET_WORKGROUPS
        .div_ceil(col_blocks)
        .min(rows.div_ceil(MIN_CHUNK_ROWS))
        .max(1)
}

/// One pass: each of `chunks` chunks of `rows_per_chunk` rows into its row of `out`.
fn pass(
    ctx: &Context,
    x: &Tensor,
    out: &Tensor,
    (rows, cols): (usize, usize),
    rows_per_chunk: usize,
    beta: f32,
) -> Result<Dispatch> {
    let chunks = rows.div_ceil(rows_per_chunk).max(1);
    let [gx, gy, _] = ctx.grid_1d((cols as u64).div_ceil(64))?;
    let builder = DispatchBuilder::family(ctx, &FAMILY, "sum_rows")
        .element_type("In", x.dtype())
        .element_type("Out", out.dtype())
        .params(&Params {
            rows: rows as u32,
            cols: cols as u32,
            beta,
            rows_per_chunk: rows_per_chunk as u32,
        })
        .read("x", x);
    // beta 0 never loads out: written only.
    let builder = if beta == 0.0 {
        builder.write_only("out", out)
    } else {
        builder.write("out", out)
    };
    builder
        // 4 threads per column walk the chunk's rows
        .serial_steps(rows_per_chunk.min(rows).div_ceil(4) as u64)
        .build([gx, gy, chunks as u32])
}

/// `out[c] = (accumulate ? out[c] : 0) + Σ_r x[r, c]`, where x is read as `[rows, cols]`
/// with `cols = out.numel()` (x's element count must be a multiple of it). Many rows over
/// few columns are cut into chunks summed in parallel into a scratch tensor of partial sums
/// (at most about 512 × 64 floats, f32 whatever x and out hold), then summed again: two
/// dispatches. x and out may each be f32 or f16; the sums are f32.
pub fn plan_sum_rows(
    ctx: &Context,
    x: &Tensor,
    out: &Tensor,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    x.expect_float("sum_rows", "x")?;
    out.expect_float("sum_rows", "out")?;
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
    let beta = if accumulate { 1.0 } else { 0.0 };
    let chunks = chunks_for(rows, cols);
    if chunks == 1 {
        return Ok(vec![pass(ctx, x, out, (rows, cols), rows.max(1), beta)?]);
    }
    let partial = Tensor::zeros(ctx, &[chunks, cols], DType::F32)?;
    let mut plan = vec![pass(
        ctx,
        x,
        &partial,
        (rows, cols),
        rows.div_ceil(chunks),
        0.0,
    )?];
    plan.extend(plan_sum_rows(ctx, &partial, out, accumulate)?);
    Ok(plan)
}

/// Sums `x` (shape `[..., cols]`) over every leading dimension into a new `[cols]` tensor.
pub fn sum_rows(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let out = Tensor::zeros(ctx, &[cols], x.dtype())?;
    ctx.submit(&plan_sum_rows(ctx, x, &out, false)?)?;
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

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            rows,
            cols,
            beta,
            rows_per_chunk
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn sum_rows_matches_reference() {
        let ctx = &ctx();
        let mut rng = rng(2);
        // (4000, 3) and (1025, 65) take two passes, (100000, 1) three
        for (rows, cols) in [
            (1, 1),
            (7, 33),
            (129, 7),
            (33, 129),
            (300, 65),
            (4000, 3),
            (1025, 65),
            (100_000, 1),
        ] {
            let x = randn(&mut rng, rows * cols);
            let tx = upload(ctx, &x, &[rows, cols]);
            let out = poisoned(ctx, &[cols]);
            ctx.run(&plan_sum_rows(ctx, &tx, &out, false).unwrap())
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
        ctx.run(&plan_sum_rows(ctx, &x, &out, true).unwrap())
            .unwrap();
        assert_eq!(download(ctx, &out), vec![14.0, 26.0]);
        // in two passes too
        let x = upload(ctx, &vec![1.0; 4000 * 2], &[4000, 2]);
        ctx.run(&plan_sum_rows(ctx, &x, &out, true).unwrap())
            .unwrap();
        assert_eq!(download(ctx, &out), vec![4014.0, 4026.0]);
    }
}

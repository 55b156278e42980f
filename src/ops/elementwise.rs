//! Elementwise kernels: fill, `out = alpha · a + beta · b` (residual adds, copies),
//! in-place accumulation (gradient sums), and gathering/scattering strided rows (the first
//! token of each sequence). The backward of an add is the identity: no kernel of its own.
//!
//! Every kernel reads and writes f32 or f16, each side its own (a variant per pair), so
//! `axpby` also converts: [`cast`] is `out = 1 · a`.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "elementwise",
    source: include_str!("../../shaders/elementwise.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

const WG: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    value: f32,
    cols: u32,
    stride: u32,
    _p0: u32,
    _p1: u32,
}

impl Params {
    fn n(n: usize) -> Params {
        Params {
            n: n as u32,
            alpha: 1.0,
            beta: 0.0,
            value: 0.0,
            cols: 1,
            stride: 1,
            _p0: 0,
            _p1: 0,
        }
    }
}

/// `out[i] = value` for every element.
pub fn plan_fill(ctx: &Context, out: &Tensor, value: f32) -> Result<Dispatch> {
    out.expect_float("fill", "out")?;
    let n = out.numel();
    DispatchBuilder::family(ctx, &FAMILY, "fill")
        .element_type("Out", out.dtype())
        .params(&Params {
            value,
            ..Params::n(n)
        })
        .write("out", out)
        .build(ctx.grid_1d((n as u64).div_ceil(WG))?)
}

/// Fills `out` with `value` (queued).
pub fn fill(ctx: &Context, out: &Tensor, value: f32) -> Result<()> {
    ctx.submit(&[plan_fill(ctx, out, value)?]).map(drop)
}

/// `out = alpha * a + beta * b`; with `b = None` (or `beta = 0`) b is not read.
pub fn plan_axpby(
    ctx: &Context,
    alpha: f32,
    a: &Tensor,
    beta: f32,
    b: Option<&Tensor>,
    out: &Tensor,
) -> Result<Dispatch> {
    a.expect_float("axpby", "a")?;
    out.expect_float("axpby", "out")?;
    if out.numel() != a.numel() {
        return Err(Error::shape(
            "axpby",
            "out",
            format!("{} elements like a {:?}", a.numel(), a.shape()),
            out.shape(),
        ));
    }
    let beta = match b {
        Some(b) => {
            b.expect_dtype("axpby", "b", a.dtype())?;
            if b.numel() != a.numel() {
                return Err(Error::shape(
                    "axpby",
                    "b",
                    format!("{} elements like a {:?}", a.numel(), a.shape()),
                    b.shape(),
                ));
            }
            beta
        }
        None => 0.0,
    };
    let n = a.numel();
    DispatchBuilder::family(ctx, &FAMILY, "axpby")
        .element_type("In", a.dtype())
        .element_type("Out", out.dtype())
        .params(&Params {
            alpha,
            beta,
            ..Params::n(n)
        })
        .read("a", a)
        .read_opt("b", b.filter(|_| beta != 0.0))
        .write("out", out)
        .build(ctx.grid_1d((n as u64).div_ceil(WG))?)
}

/// `out += alpha · a`, in place.
pub fn plan_accumulate(ctx: &Context, alpha: f32, a: &Tensor, out: &Tensor) -> Result<Dispatch> {
    a.expect_float("accumulate", "a")?;
    out.expect_float("accumulate", "out")?;
    if out.numel() != a.numel() {
        return Err(Error::shape(
            "accumulate",
            "out",
            format!("{} elements like a {:?}", a.numel(), a.shape()),
            out.shape(),
        ));
    }
    let n = a.numel();
    DispatchBuilder::family(ctx, &FAMILY, "accumulate")
        .element_type("In", a.dtype())
        .element_type("Out", out.dtype())
        .params(&Params {
            alpha,
            ..Params::n(n)
        })
        .read("a", a)
        .write("out", out)
        .build(ctx.grid_1d((n as u64).div_ceil(WG))?)
}

/// Checks `rows` is `[R, C]` and `full` is `[R, S, C]`; returns (R, C, S).
fn rows_of(op: &'static str, full: &Tensor, rows: &Tensor) -> Result<(usize, usize, usize)> {
    full.expect_float(op, "full")?;
    rows.expect_dtype(op, "rows", full.dtype())?;
    let (f, r) = (full.shape(), rows.shape());
    if f.len() != 3 || r.len() != 2 || f[0] != r[0] || f[2] != r[1] {
        return Err(Error::shape(
            op,
            "rows",
            format!(
                "[{}, {}] for full {f:?}",
                f.first().unwrap_or(&0),
                f.last().unwrap_or(&0)
            ),
            r,
        ));
    }
    Ok((f[0], f[2], f[1]))
}

/// `rows[b] = full[b, 0]` for `full` `[B, T, C]` and `rows` `[B, C]`.
pub fn plan_gather_first(ctx: &Context, full: &Tensor, rows: &Tensor) -> Result<Dispatch> {
    let (r, c, t) = rows_of("gather_first", full, rows)?;
    DispatchBuilder::family(ctx, &FAMILY, "gather_rows")
        .element_type("In", full.dtype())
        .element_type("Out", rows.dtype())
        .params(&Params {
            cols: c as u32,
            stride: (t * c) as u32,
            ..Params::n(r * c)
        })
        .read("a", full)
        .write("out", rows)
        .build(ctx.grid_1d(((r * c) as u64).div_ceil(WG))?)
}

/// `full[b, 0] = rows[b]` (or `+=` with `accumulate`); the other positions are untouched.
pub fn plan_scatter_first(
    ctx: &Context,
    rows: &Tensor,
    full: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    let (r, c, t) = rows_of("scatter_first", full, rows)?;
    let beta = if accumulate { 1.0 } else { 0.0 };
    let builder = DispatchBuilder::family(ctx, &FAMILY, "scatter_rows")
        .element_type("In", rows.dtype())
        .element_type("Out", full.dtype())
        .params(&Params {
            beta,
            cols: c as u32,
            stride: (t * c) as u32,
            ..Params::n(r * c)
        })
        .read("a", rows);
    // Without accumulate, out is never loaded: written only.
    let builder = if accumulate {
        builder.write("out", full)
    } else {
        builder.write_only("out", full)
    };
    builder.build(ctx.grid_1d(((r * c) as u64).div_ceil(WG))?)
}

/// `rows[b] = full[b, positions[b]]` for `full` `[B, T, C]`, `positions` `[B]` (u32, each
/// below T: a larger one reads position T − 1) and `rows` `[B, C]`. The positions are read
/// when the dispatch runs, so they can change from run to run.
pub fn plan_gather_positions(
    ctx: &Context,
    full: &Tensor,
    positions: &Tensor,
    rows: &Tensor,
) -> Result<Dispatch> {
    let (r, c, t) = rows_of("gather_positions", full, rows)?;
    positions.expect_dtype("gather_positions", "positions", DType::U32)?;
    positions.expect_shape("gather_positions", "positions", &[r])?;
    DispatchBuilder::family(ctx, &FAMILY, "gather_positions")
        .element_type("In", full.dtype())
        .element_type("Out", rows.dtype())
        .params(&Params {
            cols: c as u32,
            stride: (t * c) as u32,
            ..Params::n(r * c)
        })
        .read("a", full)
        .read("positions", positions)
        .write("out", rows)
        .build(ctx.grid_1d(((r * c) as u64).div_ceil(WG))?)
}

/// `a` converted to `dtype` (f32 or f16; rounding to nearest even, overflow to ±inf) in a
/// new tensor.
pub fn cast(ctx: &Context, a: &Tensor, dtype: DType) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, a.shape(), dtype)?;
    ctx.submit(&[plan_axpby(ctx, 1.0, a, 0.0, None, &out)?])?;
    Ok(out)
}

/// `a + b` in a new tensor of a's shape and type.
pub fn add(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, a.shape(), a.dtype())?;
    ctx.submit(&[plan_axpby(ctx, 1.0, a, 1.0, Some(b), &out)?])?;
    Ok(out)
}

/// CPU reference, in f64.
pub mod reference {
    /// `alpha · a + beta · b`.
    pub fn axpby(alpha: f64, a: &[f64], beta: f64, b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| alpha * x + beta * y).collect()
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            n,
            alpha,
            beta,
            value,
            cols,
            stride,
            _p0,
            _p1
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn axpby_matches_reference_at_awkward_sizes() {
        let ctx = &ctx();
        let mut rng = rng(1);
        for n in [1usize, 7, 33, 129, 1000, 65537] {
            let a = randn(&mut rng, n);
            let b = randn(&mut rng, n);
            let ta = upload(ctx, &a, &[n]);
            let tb = upload(ctx, &b, &[n]);
            let out = poisoned(ctx, &[n]);
            ctx.run(&[plan_axpby(ctx, 0.5, &ta, -2.0, Some(&tb), &out).unwrap()])
                .unwrap();
            let want = reference::axpby(0.5, &to_f64(&a), -2.0, &to_f64(&b));
            assert_close(&format!("axpby n={n}"), &download(ctx, &out), &want, 1e-6);
        }
    }

    #[test]
    fn fill_writes_every_element_and_b_is_optional() {
        let ctx = &ctx();
        let out = poisoned(ctx, &[3, 67]);
        fill(ctx, &out, 2.5).unwrap();
        assert!(download(ctx, &out).iter().all(|&v| v == 2.5));
        let a = upload(ctx, &[1.0, -2.0, 3.0], &[3]);
        let copy = poisoned(ctx, &[3]);
        ctx.run(&[plan_axpby(ctx, 2.0, &a, 1.0, None, &copy).unwrap()])
            .unwrap();
        assert_eq!(download(ctx, &copy), vec![2.0, -4.0, 6.0]);
    }

    #[test]
    fn accumulate_and_first_token_rows() {
        let ctx = &ctx();
        let mut rng = rng(18);
        let (b, t, c) = (3, 5, 7);
        let full = randn(&mut rng, b * t * c);
        let tfull = upload(ctx, &full, &[b, t, c]);
        let rows = poisoned(ctx, &[b, c]);
        ctx.run(&[plan_gather_first(ctx, &tfull, &rows).unwrap()])
            .unwrap();
        let want: Vec<f64> = (0..b * c)
            .map(|i| full[(i / c) * t * c + i % c] as f64)
            .collect();
        assert_close("gather first", &download(ctx, &rows), &want, 1e-7);

        // Scatter back into a copy with accumulate: position 0 doubles, the rest stay.
        let copy = upload(ctx, &full, &[b, t, c]);
        ctx.run(&[plan_scatter_first(ctx, &rows, &copy, true).unwrap()])
            .unwrap();
        let want: Vec<f64> = (0..full.len())
            .map(|i| if (i / c) % t == 0 { 2.0 } else { 1.0 } * full[i] as f64)
            .collect();
        assert_close("scatter first", &download(ctx, &copy), &want, 1e-7);

        let acc = upload(ctx, &full, &[b, t, c]);
        ctx.run(&[plan_accumulate(ctx, -0.5, &tfull, &acc).unwrap()])
            .unwrap();
        let want: Vec<f64> = full.iter().map(|&v| 0.5 * v as f64).collect();
        assert_close("accumulate", &download(ctx, &acc), &want, 1e-7);
    }

    #[test]
    fn gather_positions_reads_one_token_per_row_chosen_at_run_time() {
        let ctx = &ctx();
        let mut rng = rng(19);
        let (b, t, c) = (4, 7, 33);
        let full = randn(&mut rng, b * t * c);
        let tfull = upload(ctx, &full, &[b, t, c]);
        let positions = Tensor::from_slice(ctx, &[6u32, 0, 3, 6], &[b]).unwrap();
        let rows = poisoned(ctx, &[b, c]);
        let d = plan_gather_positions(ctx, &tfull, &positions, &rows).unwrap();
        ctx.run(std::slice::from_ref(&d)).unwrap();
        let want = |pos: [usize; 4]| -> Vec<f64> {
            (0..b * c)
                .map(|i| full[((i / c) * t + pos[i / c]) * c + i % c] as f64)
                .collect()
        };
        assert_close(
            "positions",
            &download(ctx, &rows),
            &want([6, 0, 3, 6]),
            1e-7,
        );
        // The same dispatch with new positions (one past the end reads the last token).
        positions.write(ctx, &[1u32, 2, 9, 5]).unwrap();
        ctx.run(&[d]).unwrap();
        assert_close(
            "new positions",
            &download(ctx, &rows),
            &want([1, 2, 6, 5]),
            1e-7,
        );
    }

    #[test]
    fn f16_variants_convert_accumulate_and_move_rows() {
        let ctx = &ctx();
        if !has_f16(ctx, "elementwise f16") {
            return;
        }
        let mut rng = rng(20);
        for n in [1usize, 7, 33, 129, 4099] {
            let a = randn(&mut rng, n);
            let b = randn(&mut rng, n);
            let (a16, b16) = (round_f16(&a), round_f16(&b));
            // f16 in, f16 out: the sum rounds once to f16 (relative error ≤ 2^-11).
            let out = poisoned_as(ctx, &[n], DType::F16);
            let (ta, tb) = (
                upload_as(ctx, &a, &[n], DType::F16),
                upload_as(ctx, &b, &[n], DType::F16),
            );
            ctx.run(&[plan_axpby(ctx, 0.5, &ta, -2.0, Some(&tb), &out).unwrap()])
                .unwrap();
            let want = reference::axpby(0.5, &to_f64(&a16), -2.0, &to_f64(&b16));
            assert_close(
                &format!("f16 axpby n={n}"),
                &download_f32(ctx, &out),
                &want,
                1e-3,
            );
            // f16 → f32 with a scale (unscaling gradients) accumulated into f32: exact
            // inputs, f32 arithmetic.
            let acc = upload(ctx, &b, &[n]);
            ctx.run(&[plan_accumulate(ctx, 1.0 / 1024.0, &ta, &acc).unwrap()])
                .unwrap();
            let want = reference::axpby(1.0 / 1024.0, &to_f64(&a16), 1.0, &to_f64(&b));
            assert_close(
                &format!("f16 → f32 accumulate n={n}"),
                &download(ctx, &acc),
                &want,
                1e-6,
            );
            // f32 → f16 → f32 round trip is f16 rounding, elementwise exact.
            let back = cast(
                ctx,
                &cast(ctx, &upload(ctx, &a, &[n]), DType::F16).unwrap(),
                DType::F32,
            )
            .unwrap();
            assert_eq!(download(ctx, &back), a16, "cast round trip n={n}");
        }
        // Out of f16's range: ±inf, as IEEE rounding says (the overflow loss scaling detects).
        let big = cast(
            ctx,
            &upload(ctx, &[70000.0, -1e6, 65504.0], &[3]),
            DType::F16,
        )
        .unwrap();
        assert_eq!(
            download_f32(ctx, &big),
            [f32::INFINITY, f32::NEG_INFINITY, 65504.0]
        );
        // Rows: gather and scatter in f16.
        let (b, t, c) = (3, 5, 7);
        let full = round_f16(&randn(&mut rng, b * t * c));
        let tfull = upload_as(ctx, &full, &[b, t, c], DType::F16);
        let rows = poisoned_as(ctx, &[b, c], DType::F16);
        ctx.run(&[plan_gather_first(ctx, &tfull, &rows).unwrap()])
            .unwrap();
        let want: Vec<f32> = (0..b * c).map(|i| full[(i / c) * t * c + i % c]).collect();
        assert_eq!(download_f32(ctx, &rows), want);
    }

    #[test]
    fn a_tensor_of_the_wrong_element_type_is_refused() {
        let ctx = &ctx();
        let a = upload(ctx, &[1.0, 2.0], &[2]);
        let ids = Tensor::from_slice(ctx, &[1u32, 2], &[2]).unwrap();
        assert!(matches!(add(ctx, &ids, &a), Err(Error::DType { .. })));
        if ctx.capabilities().shader_f16 {
            // A launcher that forgets to pick the f16 variant: the dispatch refuses it.
            let h = Tensor::zeros(ctx, &[2], DType::F16).unwrap();
            let wrong = DispatchBuilder::family(ctx, &FAMILY, "axpby")
                .params(&Params::n(2))
                .read("a", &h)
                .read_opt("b", None)
                .write("out", &a)
                .build([1, 1, 1]);
            assert!(matches!(wrong, Err(Error::Kernel { .. })), "{wrong:?}");
        } else {
            let err = Tensor::zeros(ctx, &[2], DType::F16).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Unsupported {
                        feature: "SHADER_F16",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let ctx = &ctx();
        let a = upload(ctx, &[1.0, 2.0], &[2]);
        let b = upload(ctx, &[1.0, 2.0, 3.0], &[3]);
        assert!(matches!(add(ctx, &a, &b), Err(Error::Shape { .. })));
    }
}
